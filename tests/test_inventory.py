"""Hosts with settings of their own, against real OpenSSH servers: an Ansible inventory (INI and YAML) with a
group selected, per-host ports, users, keys and targets across three servers, host entries written as maps,
agent forwarding (off unless asked for), and `sshipit plan` saying all of it before acting. Pattern selection
and inventory parsing also by properties (Hypothesis)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, rmtree, start_server
from sshipit.errors import SettingsError
from sshipit.inventory import expand_range, inventory_entries, parse_ini, parse_yaml, select
from sshipit.localserver import KeyPair, LocalServer

USERS = ("sshipit-test", "sshipit-inv2", "sshipit-inv3")
KEYS = ("ed25519", "ecdsa", "rsa_openssh")  # each server accepts one key only: per-host keys are needed


@dataclass
class Trio:
    servers: list[LocalServer]

    def fingerprints(self) -> str:
        return ",".join(fp for server in self.servers for fp in server.fingerprints().values())


@pytest.fixture(scope="module")
def trio(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[Trio]:
    """Three sshds with three login users, each accepting one key of its own."""
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(start_server, server_root / f"inv{n}", keys, "", user, (key,))
                   for n, (user, key) in enumerate(zip(USERS, KEYS, strict=True))]
        servers = [future.result() for future in futures]
    yield Trio(servers)
    for server in servers:
        server.stop()


@pytest.fixture
def landing() -> Iterator[str]:
    """A directory name in each login's home, removed afterwards from all three."""
    name = f"inv-{uuid.uuid4().hex[:8]}"
    yield name
    for user in USERS:
        with contextlib.suppress(OSError):
            rmtree(Path(pwd.getpwnam(user).pw_dir) / name)


def home_of(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def key_files(workspace: Path, keys: dict[str, KeyPair]) -> None:
    """The three private keys as files of the repository (as a CI step writes them from secrets)."""
    (workspace / "keys").mkdir()
    for name in KEYS:
        path = workspace / "keys" / name
        path.write_text(keys[name].private_text)
        path.chmod(0o600)


def site(workspace: Path) -> None:
    (workspace / "dist").mkdir()
    (workspace / "dist" / "index.html").write_text("<h1>inventory</h1>\n")


def base_env(trio: Trio, **settings: str) -> dict[str, str]:
    env = {"PLUGIN_FINGERPRINT": trio.fingerprints(), "PLUGIN_SOURCES": "dist", "PLUGIN_STRIP_COMPONENTS": "1"}
    env.update({f"PLUGIN_{name.upper()}": value for name, value in settings.items()})
    return env


def ini_inventory(trio: Trio, landing: str) -> str:
    s1, s2, s3 = trio.servers
    return f"""# two groups; web is deployed to, db is not
[web]
web1 ansible_host=127.0.0.1 ansible_port={s1.port} ansible_user={s1.user} ansible_ssh_private_key_file=keys/ed25519
web2 ansible_host=127.0.0.1 ansible_port={s2.port} ansible_user={s2.user}

[web:vars]
sshipit_target=~/{landing}/web

[db]
db1 ansible_host=127.0.0.1 ansible_port={s3.port} ansible_user={s3.user} ansible_ssh_private_key_file=keys/rsa_openssh

[all:vars]
ansible_ssh_private_key_file=keys/ecdsa
sshipit_target=~/{landing}/all
"""


def assert_ok(result: Result) -> None:
    assert result.returncode == 0, result
    assert "Traceback" not in result.output, result


# ------------------------------------------------------------------------------------------ against servers


def test_ini_inventory_with_two_groups_deploys_to_the_selected_one(
        trio: Trio, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, landing: str) -> None:
    key_files(workspace, keys)
    site(workspace)
    (workspace / "hosts.ini").write_text(ini_inventory(trio, landing))
    result = run_sshipit(env=base_env(trio, inventory="hosts.ini", limit="web",
                                      commands='echo "I am $(id -un)"'))
    assert_ok(result)
    # web1 logs in with its own key (ed25519), web2 with the all:vars key (ecdsa): each server takes only its own.
    for user in USERS[:2]:
        assert (home_of(user) / landing / "web" / "index.html").read_text() == "<h1>inventory</h1>\n"
        assert f"I am {user}" in result.stdout
    assert not (home_of(USERS[2]) / landing).exists(), "db was not selected, yet something landed there"
    assert "db1" not in result.stdout
    assert "summary: 2 hosts, all ok" in result.stdout


def test_yaml_inventory_per_host_ports_users_and_keys_across_three_servers(
        trio: Trio, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, landing: str) -> None:
    key_files(workspace, keys)
    site(workspace)
    hosts = {f"app{n + 1}": {"ansible_host": "127.0.0.1", "ansible_port": server.port, "ansible_user": server.user,
                             "ansible_ssh_private_key_file": f"keys/{KEYS[n]}"}
             for n, server in enumerate(trio.servers)}
    hosts["app3"]["sshipit_target"] = f"~/{landing}/third"  # a host var beats the group's
    inventory = {"all": {"children": {"app": {"hosts": hosts, "vars": {"sshipit_target": f"~/{landing}/app"}}}}}
    (workspace / "inventory.yml").write_text(json.dumps(inventory))  # JSON is YAML
    result = run_sshipit(env=base_env(trio, inventory="inventory.yml", commands="id -un > whoami"))
    assert_ok(result)
    for n, user in enumerate(USERS):
        where = home_of(user) / landing / ("third" if n == 2 else "app")
        assert (where / "index.html").is_file(), result
        assert (where / "whoami").read_text().strip() == user
        assert (where / "index.html").stat().st_uid == pwd.getpwnam(user).pw_uid
    assert "summary: 3 hosts, all ok" in result.stdout


def test_host_maps_carry_their_own_port_user_key_and_target(
        trio: Trio, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, landing: str) -> None:
    key_files(workspace, keys)
    site(workspace)
    s1, s2, s3 = trio.servers
    hosts = [
        f"{s1.user}@127.0.0.1:{s1.port}",  # plain text: the key and target settings
        {"host": "127.0.0.1", "port": s2.port, "username": s2.user, "key_path": "keys/ecdsa",
         "target": f"~/{landing}/two"},
        {"host": f"{s3.user}@127.0.0.1:{s3.port}", "key_path": "keys/rsa_openssh"},
    ]
    env = base_env(trio, host=json.dumps(hosts), target=f"~/{landing}/one", key=keys["ed25519"].private_text)
    result = run_sshipit(env=env)
    assert_ok(result)
    assert (home_of(s1.user) / landing / "one" / "index.html").is_file()
    assert (home_of(s2.user) / landing / "two" / "index.html").is_file()
    assert (home_of(s3.user) / landing / "one" / "index.html").is_file()
    assert not (home_of(s2.user) / landing / "one").exists()


def test_plan_shows_each_host_s_own_settings_and_changes_nothing(
        trio: Trio, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, landing: str) -> None:
    key_files(workspace, keys)
    site(workspace)
    (workspace / "hosts.ini").write_text(ini_inventory(trio, landing))
    result = run_sshipit("plan", env=base_env(trio, inventory="hosts.ini", limit="all:!db1"))
    assert_ok(result)
    out = result.stdout
    assert "[web1] plan: settings from inventory hosts.ini, group web" in out, out
    assert "[web1] plan: logs in with publickey (ed25519 key from keys/ed25519)" in out, out
    assert "[web2] plan: logs in with publickey (ecdsa nistp256 key from keys/ecdsa)" in out, out
    assert f"[web2] plan: target {landing}/web (this host's own)" in out, out
    assert "would upload 1 files" in out
    assert "db1" not in out
    for user in USERS:
        assert not (home_of(user) / landing).exists(), "plan changed a server"


def test_agent_forwarding_is_off_by_default_and_on_when_asked(
        trio: Trio, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, tmp_path: Path) -> None:
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.fail("agent forwarding is tested with OpenSSH's ssh-agent and ssh-add (apt-get install openssh-client)")
    s1 = trio.servers[0]
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        add = subprocess.run(["ssh-add", str(keys["ed25519"].private_path)], env={"SSH_AUTH_SOCK": str(socket_path)},
                             capture_output=True, text=True, check=False)
        assert add.returncode == 0, add.stderr
        key_fp = subprocess.run(["ssh-keygen", "-lf", str(keys["ed25519"].public_path)], capture_output=True,
                                text=True, check=True).stdout.split()[1]
        probe = 'if [ -n "$SSH_AUTH_SOCK" ]; then ssh-add -l; else echo "no agent here"; fi'
        env = {"PLUGIN_HOST": f"{s1.user}@127.0.0.1:{s1.port}", "PLUGIN_FINGERPRINT": trio.fingerprints(),
               "PLUGIN_COMMANDS": probe, "SSH_AUTH_SOCK": str(socket_path)}
        off = run_sshipit(env=env)  # the agent logs in (no key setting), but is not forwarded
        assert_ok(off)
        assert "no agent here" in off.stdout and key_fp not in off.stdout, off
        on = run_sshipit(env={**env, "PLUGIN_FORWARD_AGENT": "true"})
        assert_ok(on)
        assert key_fp in on.stdout, on  # the server's shell listed the key held by our agent
        shown = run_sshipit("plan", env={**env, "PLUGIN_FORWARD_AGENT": "true"})
        assert "agent forwarding ON" in shown.stdout, shown
        # ForwardAgent yes in an ssh_config turns it on for its hosts; forward_agent: false overrides the file.
        (workspace / "ssh_config").write_text("Host 127.0.0.1\n    ForwardAgent yes\n")
        by_file = run_sshipit(env={**env, "PLUGIN_SSH_CONFIG": "ssh_config"})
        assert_ok(by_file)
        assert key_fp in by_file.stdout, by_file
        overridden = run_sshipit(env={**env, "PLUGIN_SSH_CONFIG": "ssh_config", "PLUGIN_FORWARD_AGENT": "false"})
        assert_ok(overridden)
        assert "no agent here" in overridden.stdout and key_fp not in overridden.stdout, overridden
        no_agent = run_sshipit(env={**env, "SSH_AUTH_SOCK": "", "PLUGIN_KEY": keys["ed25519"].private_text,
                                    "PLUGIN_FORWARD_AGENT": "true"})
        assert no_agent.returncode == 2 and "there is no ssh-agent" in no_agent.stderr, no_agent
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait()


@pytest.mark.parametrize(("text", "limit", "needle"), [
    ("[web]\nweb1\n", "webz", "limit: 'webz' matches no group or host"),
    ("[web]\nweb1 ansible_connection=local\n", "web", "ansible_connection=local"),
    ("[web]\nweb1 ansible_port=99999\n", "web", "is not a port number"),
    ("[web:children]\nnope\n", "web", "names child group 'nope'"),
    ("all:\n  hosts:\n    web1:\n      ansible_user: !vault |\n        $ANSIBLE_VAULT;1.1;AES256\n", "all",
     "vault-encrypted"),
])
def test_bad_inventories_are_one_clear_line(workspace: Path, run_sshipit: RunSshipit, text: str, limit: str,
                                            needle: str, keys: dict[str, KeyPair]) -> None:
    (workspace / "hosts").write_text(text)
    result = run_sshipit(env={"PLUGIN_INVENTORY": "hosts", "PLUGIN_LIMIT": limit, "PLUGIN_COMMANDS": "true",
                              "PLUGIN_KEY": keys["ed25519"].private_text})
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result
    assert "Traceback" not in result.output


def test_limit_without_inventory_and_missing_inventory_are_refused(workspace: Path, run_sshipit: RunSshipit,
                                                                   keys: dict[str, KeyPair]) -> None:
    env = {"PLUGIN_COMMANDS": "true", "PLUGIN_KEY": keys["ed25519"].private_text}
    alone = run_sshipit(env={**env, "PLUGIN_HOST": "127.0.0.1", "PLUGIN_LIMIT": "web"})
    assert alone.returncode == 2 and "limit is set but inventory is not" in alone.stderr, alone
    missing = run_sshipit(env={**env, "PLUGIN_INVENTORY": "nope.ini"})
    assert missing.returncode == 2 and "cannot read inventory nope.ini" in missing.stderr, missing


def test_unused_inventory_variables_are_warned_about(workspace: Path, run_sshipit: RunSshipit, trio: Trio,
                                                     keys: dict[str, KeyPair]) -> None:
    s1 = trio.servers[0]
    (workspace / "hosts").write_text(f"[web]\n127.0.0.1 ansible_port={s1.port} ansible_user={s1.user} "
                                     "ansible_become=true\n")
    result = run_sshipit("plan", env={"PLUGIN_INVENTORY": "hosts", "PLUGIN_COMMANDS": "true",
                                      "PLUGIN_FINGERPRINT": trio.fingerprints(),
                                      "PLUGIN_KEY": keys["ed25519"].private_text})
    assert_ok(result)
    assert "ansible_become is not used" in result.stderr + result.stdout, result


# -------------------------------------------------------------------------------------------- pure logic

INI = """
mail.example.com
[web]
web[01:03].example.com
[db]
db-[a:c]
[eu:children]
web
db
[eu:vars]
ansible_user=eu
[web:vars]
ansible_user=web
"""


def test_ini_groups_children_ranges_and_variable_precedence() -> None:
    inventory = parse_ini(INI, "x")
    assert select(inventory, "web") == ["web01.example.com", "web02.example.com", "web03.example.com"]
    assert select(inventory, "eu:!db-b") == [*select(inventory, "web"), "db-a", "db-c"]
    assert select(inventory, "eu:&db") == ["db-a", "db-b", "db-c"]
    assert select(inventory, "*.example.com")[0] == "mail.example.com"
    assert select(inventory, "~^db-[ab]$") == ["db-a", "db-b"]
    warnings: list[str] = []
    users = {e.name: e.username for e in inventory_entries(inventory, "all", warnings)}
    assert users["web01.example.com"] == "web"  # the child group beats its parent
    assert users["db-a"] == "eu"
    assert users["mail.example.com"] is None


def test_yaml_inventory_reads_like_the_ini_one() -> None:
    yaml_text = """
all:
  hosts:
    mail.example.com:
  children:
    eu:
      vars: {ansible_user: eu}
      children:
        web:
          hosts:
            web[01:03].example.com:
          vars: {ansible_user: web}
        db:
          hosts: {db-a: , db-b: , db-c: }
"""
    one, other = parse_ini(INI, "x"), parse_yaml(yaml_text, "y")
    for pattern in ("all", "web", "eu:!db-b", "eu:&db", "db,mail.example.com"):
        assert select(one, pattern) == select(other, pattern), pattern


def test_ssh_common_args_give_proxy_jump_and_command() -> None:
    inventory = parse_ini("[web]\nw1 ansible_ssh_common_args='-o ProxyJump=ops@bastion:2222 -A'\n"
                          "w2 ansible_ssh_common_args='-o ProxyCommand=\"cloudflared access ssh --hostname %h\"'\n",
                          "x")
    warnings: list[str] = []
    w1, w2 = inventory_entries(inventory, "all", warnings)
    assert w1.jump == ["ops@bastion:2222"] and w1.forward_agent is True
    assert w2.proxy_command == "cloudflared access ssh --hostname %h"
    assert warnings == []


names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=1, max_size=8, unique=True)


@settings(max_examples=60, deadline=None)
@given(web=names, db=names)
def test_selection_is_set_algebra_over_groups(web: list[str], db: list[str]) -> None:
    web = [f"w-{h}" for h in web]
    db = [f"d-{h}" for h in db]
    inventory = parse_ini("[web]\n" + "\n".join(web) + "\n[db]\n" + "\n".join(db) + "\n", "p")
    assert select(inventory, "all") == web + db  # file order
    assert select(inventory, "web") == web
    assert select(inventory, "db:web") == web + db  # union, in file order
    assert select(inventory, "all:!db") == web
    assert select(inventory, "all:&db") == db
    with pytest.raises(SettingsError):
        select(inventory, "web:&db")  # leaves nothing: an error, never an empty deploy


@settings(max_examples=60, deadline=None)
@given(first=st.integers(0, 40), count=st.integers(1, 40), width=st.integers(1, 3))
def test_numeric_ranges_expand_as_ansible_does(first: int, count: int, width: int) -> None:
    last = first + count - 1
    low, high = str(first).zfill(width), str(last).zfill(width)
    expanded = expand_range(f"web[{low}:{high}].x", "p")
    assert len(expanded) == count
    pad = len(low) if low.startswith("0") else 0
    assert expanded[0] == f"web{str(first).zfill(pad)}.x" and expanded[-1] == f"web{str(last).zfill(pad)}.x"
