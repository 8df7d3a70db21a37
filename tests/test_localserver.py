"""The throwaway OpenSSH server and the fixtures, checked with the system ssh client."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import clean_env, plugin_env, rmtree, ssh, ssh_argv
from sshipit.localserver import KeyPair, LocalServer, generate_key


@pytest.fixture
def private_server(keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """A server of the test's own, to stop or kill without disturbing the session's."""
    root = Path(tempfile.mkdtemp(prefix="sshipit-private-"))
    root.chmod(0o711)
    srv = LocalServer(root / "srv")
    srv.authorize(keys["ed25519"].public_text)
    try:
        yield srv.start()
    finally:
        srv.stop()
        rmtree(root)


def test_key_formats(keys: dict[str, KeyPair]) -> None:
    assert keys["rsa_pem"].private_text.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert keys["ecdsa_pem"].private_text.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert keys["rsa_pem_pass"].private_text.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert "Proc-Type: 4,ENCRYPTED" in keys["rsa_pem_pass"].private_text
    for name in ("rsa_openssh", "ecdsa", "ed25519", "ed25519_pass", "ecdsa_pass"):
        assert keys[name].private_text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----"), name
    # The passphrase is really needed, and really works.
    for name in ("ed25519_pass", "rsa_pem_pass", "ecdsa_pass"):
        key = keys[name]
        assert key.passphrase
        derive = ["ssh-keygen", "-y", "-f", str(key.private_path), "-P"]
        wrong = subprocess.run([*derive, "wrong"], capture_output=True, text=True, check=False)
        assert wrong.returncode != 0, name
        right = subprocess.run([*derive, key.passphrase], capture_output=True, text=True, check=False)
        assert right.returncode == 0, right.stderr
        assert right.stdout.split()[:2] == key.public_text.split()[:2]


@pytest.mark.parametrize("name", ["ed25519", "rsa_pem", "ecdsa_pem", "rsa_openssh"])
def test_key_login_runs_a_command(server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, name: str) -> None:
    result = ssh(server, keys[name], "echo answer=$((6 * 7)); id -un; pwd", tmp_path / "known_hosts")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["answer=42", server.user, str(server.home)]


def test_unauthorized_key_and_wrong_host_key_are_refused(
    server: LocalServer, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    stranger = generate_key(tmp_path, "ed25519")
    result = ssh(server, stranger, "echo SHOULD-NOT-RUN", tmp_path / "known_hosts")
    assert result.returncode == 255
    assert "SHOULD-NOT-RUN" not in result.stdout
    assert "Permission denied" in result.stderr
    # Host key checking is strict: another ed25519 key recorded for this address is a mismatch.
    impostor = generate_key(tmp_path, "ed25519")
    fake = f"[127.0.0.1]:{server.port} " + " ".join(impostor.public_text.split()[:2]) + "\n"
    known_hosts = tmp_path / "fake_known_hosts"
    known_hosts.write_text(fake)
    argv = [*ssh_argv(server, keys["ed25519"], known_hosts), "echo SHOULD-NOT-RUN"]
    refused = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255
    assert "SHOULD-NOT-RUN" not in refused.stdout
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr


def test_fingerprints_and_known_hosts_match_ssh_keyscan(server: LocalServer) -> None:
    scan = subprocess.run(
        ["ssh-keyscan", "-p", str(server.port), "-t", "rsa,ecdsa,ed25519", server.host],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    scanned = sorted(line for line in scan.stdout.splitlines() if line and not line.startswith("#"))
    assert scanned == sorted(server.known_hosts().splitlines())
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"],
        input=scan.stdout,
        capture_output=True,
        text=True,
        check=True,
    )
    from_keygen = {line.split()[1] for line in listed.stdout.splitlines()}
    fingerprints = server.fingerprints()
    assert set(fingerprints) == {"ssh-rsa", "ecdsa-sha2-nistp256", "ssh-ed25519"}
    assert set(fingerprints.values()) == from_keygen
    assert all(fp.startswith("SHA256:") and not fp.endswith("=") for fp in fingerprints.values())


def test_sftp_only_server_refuses_commands_but_serves_sftp(
    sftp_only_server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, remote_dir: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    result = ssh(sftp_only_server, keys["ed25519"], "echo marker-$((40 + 2))", known_hosts)
    assert "marker-42" not in result.stdout + result.stderr
    assert result.returncode != 0
    local = tmp_path / "hello.txt"
    local.write_text("hello over sftp\n")
    argv = ssh_argv(sftp_only_server, keys["ed25519"], known_hosts)
    argv[0] = "sftp"
    argv[argv.index("-p")] = "-P"
    del argv[-3:-1]  # sftp has no -l USER
    argv[-1] = f"{sftp_only_server.user}@{sftp_only_server.host}"
    sftp = subprocess.run(
        [*argv[:1], "-b", "-", *argv[1:]],
        input=f"put {local} {remote_dir}/hello.txt\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sftp.returncode == 0, sftp.stderr
    assert (remote_dir / "hello.txt").read_text() == "hello over sftp\n"


def test_busybox_server_tar_is_busybox(
    busybox_server: LocalServer, server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    command = "tar --help 2>&1 | head -n 3"
    busybox = ssh(busybox_server, keys["ed25519"], command, tmp_path / "known_hosts")
    assert "BusyBox" in busybox.stdout
    gnu = ssh(server, keys["ed25519"], "tar --version", tmp_path / "known_hosts")
    assert gnu.returncode == 0 and "GNU tar" in gnu.stdout
    assert "BusyBox" not in gnu.stdout


def test_remote_dir_is_fresh_and_belongs_to_the_login_user(
    remote_dir: Path, server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    assert remote_dir.parent == server.home
    assert list(remote_dir.iterdir()) == []
    result = ssh(server, keys["ed25519"], f"echo written > {remote_dir}/file", tmp_path / "known_hosts")
    assert result.returncode == 0, result.stderr
    assert (remote_dir / "file").read_text() == "written\n"
    assert (remote_dir / "file").stat().st_uid == (remote_dir.stat().st_uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="password logins need root (chpasswd, /etc/shadow)")
def test_password_login(private_server: LocalServer, tmp_path: Path) -> None:
    private_server.set_password("pa ss word")
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho 'pa ss word'\n")
    askpass.chmod(0o700)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(private_server.known_hosts())
    argv = [
        *ssh_argv(private_server, None, known_hosts, "-o", "PreferredAuthentications=password"),
        "echo logged-in",
    ]
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    ok = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "logged-in\n"
    askpass.write_text("#!/bin/sh\necho wrong\n")
    bad = subprocess.run(
        [*argv[:-1], "-o", "NumberOfPasswordPrompts=1", "echo logged-in"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert bad.returncode == 255
    assert "logged-in" not in bad.stdout


def _session_pids(port: int) -> set[int]:
    """Live processes whose environment says they come from an SSH session on `port`."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and f" 127.0.0.1 {port}\0".encode() in environ + b"\0":
            found.add(int(entry.name))
    return found


def _wait_for(predicate: Callable[[], object], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_detached_session_processes_and_restart_keeps_port_and_keys(
    private_server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    port, fingerprints = private_server.port, private_server.fingerprints()
    # A daemon-like leftover: own session, parent gone, stdio closed. The client returns at once.
    left = ssh(
        private_server,
        keys["ed25519"],
        "setsid sleep 300 </dev/null >/dev/null 2>&1 &",
        tmp_path / "known_hosts",
    )
    assert left.returncode == 0, left.stderr
    assert _wait_for(lambda: _session_pids(port))
    private_server.stop()
    assert not private_server.running
    assert _session_pids(port) == set()
    private_server.start()
    assert private_server.port == port
    assert private_server.fingerprints() == fingerprints
    again = ssh(private_server, keys["ed25519"], "echo back", tmp_path / "known_hosts")
    assert again.stdout == "back\n", again.stderr


def test_kill_drops_live_sessions_at_once(
    private_server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(private_server.known_hosts())
    client = subprocess.Popen(
        [*ssh_argv(private_server, keys["ed25519"], known_hosts), "echo started; sleep 300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "started\n"
        started = time.monotonic()
        private_server.kill()
        assert client.wait(timeout=10) == 255
        assert time.monotonic() - started < 5
        assert _session_pids(private_server.port) == set()
        assert not private_server.running
    finally:
        client.kill()
        client.wait()


def test_plugin_env_and_clean_env(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = plugin_env(server, keys["ed25519_pass"], target="/srv/app", source=["a", "b/*"], debug=True)
    assert env["PLUGIN_PORT"] == str(server.port)
    assert env["PLUGIN_USERNAME"] == server.user
    assert env["PLUGIN_KEY"] == keys["ed25519_pass"].private_text
    assert env["PLUGIN_PASSPHRASE"] == keys["ed25519_pass"].passphrase
    assert sorted(env["PLUGIN_FINGERPRINT"].split(",")) == sorted(server.fingerprints().values())
    assert (env["PLUGIN_TARGET"], env["PLUGIN_SOURCE"], env["PLUGIN_DEBUG"]) == ("/srv/app", "a,b/*", "true")
    assert "PLUGIN_PASSPHRASE" not in plugin_env(server, keys["ed25519"])

    leaked = {"PLUGIN_HOST", "DRONE_BUILD_NUMBER", "CI_REPO", "GITHUB_SHA", "INPUT_HOST", "CI"}
    for name in leaked:
        monkeypatch.setenv(name, "leaked")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    cleaned = clean_env(tmp_path, {"PLUGIN_PORT": "2222"})
    assert not leaked & set(cleaned)
    assert "SSH_AUTH_SOCK" not in cleaned
    assert cleaned["PLUGIN_PORT"] == "2222"
    assert cleaned["HOME"] == str(tmp_path)
    assert cleaned["NO_COLOR"] == "1"
    assert cleaned["PYTHONPATH"].split(os.pathsep)[0].endswith("src")
