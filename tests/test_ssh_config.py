"""An OpenSSH client config file of the repository (`ssh_config`), against real OpenSSH servers: Host blocks with
patterns, HostName, User, Port, IdentityFile; ProxyCommand through a real command (a relay program that logs
the %h %p %r it was given); ProxyJump through a jump sshd; the file's mistakes as one clear line; `sshipit plan`
showing the route before acting. ~/.ssh/config is never read."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, start_server
from sshipit.localserver import KeyPair, LocalServer

# DEBUG1 makes sshd log each direct-tcpip channel, with the host and port it connects to.
JUMP_CONFIG = "AllowTcpForwarding yes\nLogLevel DEBUG1\n"

# A ProxyCommand of our own: connects to argv[1]:argv[2] and relays stdin/stdout, after logging its arguments.
RELAY = textwrap.dedent("""\
    import os, socket, sys, threading
    host, port, user, log = sys.argv[1:5]
    with open(log, "a") as out:
        out.write(f"{host} {port} {user}\\n")
    with open(log + ".pid", "w") as out:
        out.write(str(os.getpid()))
    sock = socket.create_connection((host, int(port)))
    def pump():
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    threading.Thread(target=pump, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)
""")


@dataclass
class Pair:
    jump: LocalServer  # accepts only the ecdsa key
    target: LocalServer  # accepts only ed25519, with a login of its own
    target2: LocalServer  # another machine behind the same jump host (ed25519 only)


@pytest.fixture(scope="module")
def pair(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[Pair]:
    with ThreadPoolExecutor(3) as pool:
        jump = pool.submit(start_server, server_root / "cfg-jump", keys, JUMP_CONFIG, None, ("ecdsa",))
        target = pool.submit(start_server, server_root / "cfg-target", keys, "", "sshipit-cfg", ("ed25519",))
        target2 = pool.submit(start_server, server_root / "cfg-target2", keys, "", None, ("ed25519",))
        servers = Pair(jump.result(), target.result(), target2.result())
    yield servers
    for server in (servers.jump, servers.target, servers.target2):
        server.stop()


def fingerprints(*servers: LocalServer) -> str:
    return ",".join(fp for server in servers for fp in server.fingerprints().values())


def write_keys(workspace: Path, keys: dict[str, KeyPair]) -> None:
    (workspace / "deploy").mkdir(exist_ok=True)
    for name in ("ed25519", "ecdsa"):
        path = workspace / "deploy" / f"{name}.key"
        path.write_text(keys[name].private_text)
        path.chmod(0o600)


def ok(result: Result) -> None:
    assert result.returncode == 0, result
    assert "Traceback" not in result.output, result


def test_proxy_command_carries_the_connection_with_tokens_expanded(
        pair: Pair, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, tmp_path: Path) -> None:
    write_keys(workspace, keys)
    (workspace / "relay.py").write_text(RELAY)
    log = tmp_path / "relay.log"
    target = pair.target
    (workspace / "ssh_config").write_text(textwrap.dedent(f"""\
        # the app servers are reached through a command of our own (as with AWS SSM or Cloudflare Access)
        Host app-*
            HostName 127.0.0.1
            User {target.user}
            Port {target.port}
            IdentityFile deploy/ed25519.key
            ProxyCommand {sys.executable} relay.py %h %p %r {log}
        Host *
            User nobody-else
            StrictHostKeyChecking no
        """))
    env = {"PLUGIN_SSH_CONFIG": "ssh_config", "PLUGIN_HOST": "app-1", "PLUGIN_FINGERPRINT": fingerprints(target),
           "PLUGIN_COMMANDS": 'echo "on $(id -un) via ${SSH_CONNECTION%% *}"'}
    mark = len(target.log_text())
    result = run_sshipit(env=env)
    ok(result)
    assert f"on {target.user} via 127.0.0.1" in result.stdout, result
    # The relay was run with the tokens expanded: %h the HostName, %p the Port, %r the User.
    assert log.read_text() == f"127.0.0.1 {target.port} {target.user}\n"
    # and it did not outlive the deploy
    pid = int(Path(f"{log}.pid").read_text())
    for _ in range(50):
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                break  # ended, not yet reaped by init
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the ProxyCommand (pid {pid}) is still running after the deploy")
    assert "Accepted publickey for sshipit-cfg" in target.log_text()[mark:]
    # StrictHostKeyChecking is not used: said once, not silently dropped.
    assert "not used by sshipit: StrictHostKeyChecking (line 10; host keys are checked against fingerprint" \
        in result.stderr, result
    # plan shows the route before acting
    shown = run_sshipit("plan", env=env)
    ok(shown)
    assert "[app-1] plan: settings from ssh_config ssh_config" in shown.stdout or \
        "plan: settings from ssh_config ssh_config" in shown.stdout, shown
    assert f"plan: reached through ProxyCommand: {sys.executable} relay.py 127.0.0.1 {target.port} " \
           f"{target.user} {log}" in shown.stdout, shown
    assert "plan: logs in with publickey (ed25519 key from deploy/ed25519.key)" in shown.stdout, shown


def test_a_failing_proxy_command_is_one_line_with_its_status_and_words(
        pair: Pair, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit) -> None:
    write_keys(workspace, keys)
    (workspace / "ssh_config").write_text(
        "Host app\n  HostName 127.0.0.1\n"
        "  ProxyCommand sh -c \"echo 'session manager plugin not found for %h' >&2; exit 3\"\n")
    result = run_sshipit(env={"PLUGIN_SSH_CONFIG": "ssh_config", "PLUGIN_HOST": "app", "PLUGIN_COMMANDS": "true",
                              "PLUGIN_KEY": keys["ed25519"].private_text, "PLUGIN_RETRIES": "0"})
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result
    assert "ProxyCommand exited with status 3: session manager plugin not found for 127.0.0.1" in errors[0], result
    assert "Traceback" not in result.output


def test_proxy_jump_from_the_config_file_goes_through_the_jump_sshd(
        pair: Pair, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit) -> None:
    write_keys(workspace, keys)
    jump, target = pair.jump, pair.target
    (workspace / "ssh_config").write_text(textwrap.dedent(f"""\
        Host bastion
            HostName 127.0.0.1
            Port {jump.port}
            User {jump.user}
            IdentityFile deploy/ecdsa.key

        Host web1
            Port {target.port}
            User {target.user}
        Host web2
            Port {pair.target2.port}
            User {pair.target2.user}
        Host web*
            HostName 127.0.0.1
            IdentityFile deploy/ed25519.key
            ProxyJump bastion
        """))
    env = {"PLUGIN_SSH_CONFIG": "ssh_config", "PLUGIN_HOST": "web1,web2",
           "PLUGIN_FINGERPRINT": fingerprints(jump, target, pair.target2),
           "PLUGIN_COMMANDS": 'echo "I am $(id -un) on port ${SSH_CONNECTION##* }"'}
    mark = len(jump.log_text())
    result = run_sshipit(env=env)
    ok(result)
    for server in (target, pair.target2):
        assert f"I am {server.user} on port {server.port}" in result.stdout, result
    log = jump.log_text()[mark:]
    for port in (target.port, pair.target2.port):
        assert re.search(rf"direct_tcpip: originator .*, target 127\.0\.0\.1 port {port}\b", log), log
    # the bastion took its own key (ecdsa), once: both targets share one connection to it
    assert len(re.findall(r"^Accepted publickey for ", log, re.M)) == 1, log
    shown = run_sshipit("plan", env=env)
    ok(shown)
    assert f"plan: reached via jump host {jump.user}@127.0.0.1:{jump.port}" in shown.stdout, shown


def test_the_entry_wins_over_the_file_and_home_config_is_never_read(
        pair: Pair, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, tmp_path: Path) -> None:
    target = pair.target
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "config").write_text("Host *\n  Port 1\n  User nobody\n  ProxyCommand false\n")
    (workspace / "ssh_config").write_text("Host 127.0.0.1\n  Port 1\n  User nobody\n")
    result = run_sshipit(env={"PLUGIN_SSH_CONFIG": "ssh_config",
                              "PLUGIN_HOST": f"{target.user}@127.0.0.1:{target.port}",
                              "PLUGIN_KEY": keys["ed25519"].private_text, "PLUGIN_FINGERPRINT": fingerprints(target),
                              "PLUGIN_COMMANDS": "id -un"})
    ok(result)
    assert target.user in result.stdout


@pytest.mark.parametrize(("text", "needle"), [
    ("Include ~/.ssh/config.d/*\n", "Include is not supported"),
    ("Match exec \"true\"\n  User x\n", "Match exec is not supported"),
    ("Host app\n  HostName 127.0.0.1\n  ProxyJump bastion\n  ProxyCommand nc %h %p\n",
     "both ProxyJump and ProxyCommand"),
    ("Host app\n  Port notaport\n", "ssh_config ssh_config:"),
    ("Host app\n  ForwardAgent /tmp/agent.sock\n",
     "ForwardAgent /tmp/agent.sock (an agent socket) is not supported"),
])
def test_config_mistakes_are_one_clear_line(workspace: Path, run_sshipit: RunSshipit, keys: dict[str, KeyPair],
                                            text: str, needle: str) -> None:
    (workspace / "ssh_config").write_text(text)
    result = run_sshipit(env={"PLUGIN_SSH_CONFIG": "ssh_config", "PLUGIN_HOST": "app", "PLUGIN_COMMANDS": "true",
                              "PLUGIN_KEY": keys["ed25519"].private_text, "SSH_AUTH_SOCK": ""})
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result
    assert "Traceback" not in result.output


def test_a_missing_config_file_is_named(workspace: Path, run_sshipit: RunSshipit, keys: dict[str, KeyPair]) -> None:
    result = run_sshipit(env={"PLUGIN_SSH_CONFIG": "nope/ssh_config", "PLUGIN_HOST": "app", "PLUGIN_COMMANDS": "true",
                              "PLUGIN_KEY": keys["ed25519"].private_text})
    assert result.returncode == 2 and "cannot read ssh_config nope/ssh_config" in result.stderr, result


def test_a_host_map_s_own_jump_host_without_a_config_file(
        pair: Pair, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit) -> None:
    """Per-host jump hosts need no ssh_config: the hop logs in with the plan's key (ecdsa), the target with its
    own key_path (ed25519); a second entry without a jump is reached directly."""
    write_keys(workspace, keys)
    jump, target = pair.jump, pair.target
    hosts = json.dumps([{"host": f"{target.user}@127.0.0.1:{target.port}", "key_path": "deploy/ed25519.key",
                         "jump": f"{jump.user}@127.0.0.1:{jump.port}"}])
    mark = len(jump.log_text())
    result = run_sshipit(env={"PLUGIN_HOST": hosts, "PLUGIN_KEY": keys["ecdsa"].private_text,
                              "PLUGIN_FINGERPRINT": fingerprints(jump, target), "PLUGIN_COMMANDS": "id -un"})
    ok(result)
    assert target.user in result.stdout
    assert re.search(rf"direct_tcpip: originator .*, target 127\.0\.0\.1 port {target.port}\b",
                     jump.log_text()[mark:]), jump.log_text()[mark:]
    # proxy_key is the hop's key for a host's own jump hosts too
    hosts = json.dumps([{"host": f"{target.user}@127.0.0.1:{target.port}",
                         "jump": f"{jump.user}@127.0.0.1:{jump.port}"}])
    result = run_sshipit(env={"PLUGIN_HOST": hosts, "PLUGIN_KEY": keys["ed25519"].private_text,
                              "PLUGIN_PROXY_KEY": keys["ecdsa"].private_text,
                              "PLUGIN_FINGERPRINT": fingerprints(jump, target), "PLUGIN_COMMANDS": "id -un"})
    ok(result)
    assert target.user in result.stdout


def test_a_user_name_a_shell_would_interpret_never_reaches_a_proxy_command(
        workspace: Path, run_sshipit: RunSshipit, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    witness = tmp_path / "ran"  # `true x&touch <witness>` would make it
    (workspace / "ssh_config").write_text(f"Host app\n  HostName 127.0.0.1\n  ProxyCommand true %r {witness}\n")
    result = run_sshipit(env={"PLUGIN_SSH_CONFIG": "ssh_config", "PLUGIN_HOST": "x&touch@app",
                              "PLUGIN_COMMANDS": "true", "PLUGIN_KEY": keys["ed25519"].private_text})
    assert result.returncode == 2, result
    assert "has characters a shell would interpret" in result.stderr, result
    assert not witness.exists()


def test_the_proxy_command_setting_without_a_config_file(
        pair: Pair, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, tmp_path: Path) -> None:
    """Kamal's ssh.proxy_command: one command for every host, tokens expanded per host."""
    (workspace / "relay.py").write_text(RELAY)
    log = tmp_path / "relay.log"
    hosts = [pair.target, pair.target2]
    result = run_sshipit(env={
        "PLUGIN_HOST": ",".join(f"{s.user}@127.0.0.1:{s.port}" for s in hosts),
        "PLUGIN_PROXY_COMMAND": f"{sys.executable} relay.py %h %p %r {log}",
        "PLUGIN_KEY": keys["ed25519"].private_text, "PLUGIN_FINGERPRINT": fingerprints(*hosts),
        "PLUGIN_COMMANDS": "id -un"})
    ok(result)
    assert sorted(log.read_text().splitlines()) == sorted(f"127.0.0.1 {s.port} {s.user}" for s in hosts)
    both = run_sshipit(env={"PLUGIN_HOST": "127.0.0.1", "PLUGIN_PROXY_COMMAND": "true", "PLUGIN_JUMP": "bastion",
                            "PLUGIN_KEY": keys["ed25519"].private_text, "PLUGIN_COMMANDS": "true"})
    assert both.returncode == 2 and "proxy_command and proxy_host / jump both" in both.stderr, both
    unknown = run_sshipit(env={"PLUGIN_HOST": "127.0.0.1", "PLUGIN_PROXY_COMMAND": "nc %x", "PLUGIN_COMMANDS": "true",
                               "PLUGIN_KEY": keys["ed25519"].private_text})
    assert unknown.returncode == 2 and "%x is not a token sshipit expands" in unknown.stderr, unknown
