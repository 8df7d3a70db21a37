"""Connecting, against a real OpenSSH server: every key type and format, passwords, credential errors,
authentication failures, host key pinning, connect errors, one connection per host, IPv6 host entries, and
secrets kept out of the output."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pytest

from conftest import RunSshipit
from helpers import Result, one_error, plugin_env, rmtree
from sshipit.errors import SettingsError
from sshipit.hosts import parse_host
from sshipit.localserver import KeyPair, LocalServer, generate_key

UNENCRYPTED = ["rsa_pem", "rsa_openssh", "ecdsa", "ecdsa_pem", "ed25519"]
ENCRYPTED = ["ed25519_pass", "rsa_pem_pass", "ecdsa_pass"]
ALL_KEYS = UNENCRYPTED + ENCRYPTED
HOST_KEY_TYPES = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
WHOAMI = "echo login=$(id -un)"


# ------------------------------------------------------------------------------------------------------ helpers


def log_mark(server: LocalServer) -> int:
    """Where the server's log ends now; pass it to `log_since` to see one run's lines only."""
    return len(server.log_text())


def log_since(server: LocalServer, mark: int) -> str:
    return server.log_text()[mark:]


def accepted(log: str) -> list[str]:
    """The sshd log lines of successful logins."""
    return [line for line in log.splitlines() if line.startswith("Accepted ") and " for " in line]


def key_text_env(server: LocalServer, text: str, passphrase: str | None = None, **settings: object) -> dict[str, str]:
    """PLUGIN_* settings to reach `server` with `text` as PLUGIN_KEY (and `passphrase`, if any)."""
    env = plugin_env(server, None, passphrase=passphrase, **settings)
    env["PLUGIN_KEY"] = text
    return env


def client_fingerprint(key: KeyPair) -> str:
    return asyncssh.import_public_key(key.public_text).get_fingerprint("sha256")


def assert_ok(result: Result) -> None:
    assert result.returncode == 0, result
    assert "Traceback" not in result.output, result
    assert "error:" not in result.stderr, result


def assert_logged_in(result: Result, server: LocalServer) -> None:
    """The run succeeded and `WHOAMI` ran on the server as its login user."""
    assert_ok(result)
    assert f"login={server.user}" in result.stdout.splitlines(), result



def no_ssh_files_written(tmp_path: Path, workspace: Path) -> None:
    """sshipit never writes a known_hosts file (or anything else under ~/.ssh, or next to the workspace)."""
    home = tmp_path / "home"
    assert home.is_dir()
    assert not (home / ".ssh").exists(), sorted(p.name for p in (home / ".ssh").iterdir())
    assert not [p for p in (*home.rglob("*"), *workspace.rglob("*")) if "known_hosts" in p.name]


def methods_tried(line: str) -> str:
    """The `(tried: ...)` part of an authentication failure line."""
    match = re.search(r"\(tried: (.*?)\) \[", line)
    assert match, line
    return match.group(1)


def offered_fingerprints(line: str) -> list[str]:
    return re.findall(r"SHA256:[A-Za-z0-9+/]+", line)


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port of 127.0.0.1 that accepts TCP connections and then never says a word (no SSH banner)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()
    assert held, "sshipit never connected to the silent port"


# --------------------------------------------------------------------------------------- key types and formats


@pytest.mark.parametrize("name", ALL_KEYS)
def test_key_text_logs_in(name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """Every key type and format, encrypted or not, works as PLUGIN_KEY text; sshd saw that very key."""
    key = keys[name]
    assert (key.passphrase is not None) == (name in ENCRYPTED)
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, key, commands=WHOAMI))
    assert_logged_in(result, server)
    logins = accepted(log_since(server, mark))
    assert len(logins) == 1, logins
    assert logins[0].startswith(f"Accepted publickey for {server.user} ")
    assert logins[0].endswith(client_fingerprint(key)), logins


@pytest.mark.parametrize("name", ALL_KEYS)
def test_key_path_logs_in(
    name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, workspace: Path
) -> None:
    """Every key works as `key_path`, a file in the workspace given relative to it."""
    key = keys[name]
    (workspace / "secrets").mkdir()
    (workspace / "secrets" / "deploy_key").write_text(key.private_text)
    mark = log_mark(server)
    env = plugin_env(server, None, key_path="secrets/deploy_key", passphrase=key.passphrase, commands=WHOAMI)
    assert "PLUGIN_KEY" not in env
    result = run_sshipit(env=env)
    assert_logged_in(result, server)
    assert [line for line in accepted(log_since(server, mark)) if line.endswith(client_fingerprint(key))]


@pytest.mark.parametrize("name", ["rsa_openssh", "ecdsa_pem", "ed25519_pass", "rsa_pem_pass"])
def test_flags_alone_upload_and_run(
    name: str,
    server: LocalServer,
    keys: dict[str, KeyPair],
    run_sshipit: RunSshipit,
    workspace: Path,
    remote_dir: Path,
) -> None:
    """Flags alone (no PLUGIN_* at all) connect with --key-path, pin with --fingerprint, upload and run."""
    key = keys[name]
    (workspace / "dist").mkdir()
    (workspace / "dist" / "index.html").write_text(f"<h1>{name}</h1>\n")
    args = [
        "--host", server.host,
        "--port", str(server.port),
        "--username", server.user,
        "--key-path", str(key.private_path),
        "--fingerprint", server.fingerprints()["ssh-ed25519"],
        "--target", str(remote_dir),
        "--source", "dist/index.html",
        "--command", "cat dist/index.html",
        "--command", WHOAMI,
    ]
    if key.passphrase:
        args += ["--passphrase", key.passphrase]
    result = run_sshipit(*args)
    assert_logged_in(result, server)
    assert (remote_dir / "dist" / "index.html").read_text() == f"<h1>{name}</h1>\n"
    assert f"<h1>{name}</h1>" in result.stdout.splitlines()
    assert "(host key verified)" in result.stdout


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def escaped_newlines(text: str) -> str:
    """The key on one line, newlines written as the two characters backslash and n (as some CI UIs store it)."""
    one_line = text.strip().replace("\n", "\\n")
    assert "\n" not in one_line
    return one_line


@pytest.mark.parametrize("mangle", [crlf, escaped_newlines], ids=["crlf", "escaped-newlines"])
@pytest.mark.parametrize("name", ["ed25519", "rsa_pem_pass", "ecdsa_pass"])
def test_pasted_key_text_still_works(
    mangle: Callable[[str], str], name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """A key pasted with CRLF line endings, or with literal \\n escapes on one line, is read all the same."""
    key = keys[name]
    text = mangle(key.private_text)
    assert text != key.private_text
    result = run_sshipit(env=key_text_env(server, text, key.passphrase, commands=WHOAMI))
    assert_logged_in(result, server)


@pytest.mark.parametrize("name", ["ed25519", "rsa_pem"])
def test_crlf_key_file_works(
    name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, workspace: Path
) -> None:
    """A key file with CRLF line endings (saved on Windows) works as key_path."""
    (workspace / "id_key").write_bytes(crlf(keys[name].private_text).encode())
    result = run_sshipit(env=plugin_env(server, None, key_path="id_key", commands=WHOAMI))
    assert_logged_in(result, server)


# -------------------------------------------------------------------------------------------------- passwords


PASSWORD_USER = "sshipit-pwtest"


@pytest.fixture(scope="module")
def password_server() -> Iterator[LocalServer]:
    """An sshd of this module's own, logging in a user of its own: a password is system-wide, and other test
    runs on the machine set the shared login user's password at any time."""
    if os.geteuid() != 0:
        pytest.fail("password logins need root (chpasswd, sshd reading /etc/shadow); CI runs as root, run as root")
    root = Path(tempfile.mkdtemp(prefix="sshipit-pw-"))
    root.chmod(0o711)
    srv = LocalServer(root / "srv", user=PASSWORD_USER)
    try:
        yield srv.start()
    finally:
        srv.stop()
        rmtree(root)


def test_password_alone_logs_in(password_server: LocalServer, run_sshipit: RunSshipit) -> None:
    """Password authentication with no key at all; the password is never printed."""
    server = password_server
    password = "pw " + secrets.token_urlsafe(16)
    server.set_password(password)
    mark = log_mark(server)
    env = plugin_env(server, None, password=password, commands=WHOAMI)
    assert "PLUGIN_KEY" not in env and "PLUGIN_KEY_PATH" not in env
    result = run_sshipit(env=env)
    assert_logged_in(result, server)
    assert server.user == PASSWORD_USER
    logins = accepted(log_since(server, mark))
    assert len(logins) == 1 and logins[0].startswith(f"Accepted password for {server.user} "), logins
    assert password not in result.output


def test_wrong_password_is_an_authentication_failure(server: LocalServer, run_sshipit: RunSshipit) -> None:
    """A wrong password: one line naming the user and `password` as the method tried; exit 1."""
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, None, password="not-the-password-" + secrets.token_hex(4),
                                        commands=WHOAMI))
    one_error(result, 1, "authentication failed", repr(server.user), "password")
    assert not accepted(log_since(server, mark))


# ------------------------------------------------------------------------------------------ credential errors


@pytest.mark.parametrize("name", ENCRYPTED)
def test_wrong_passphrase(
    name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """A wrong passphrase: one line about the passphrase, exit 2, and the server is never contacted."""
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys[name], passphrase="definitely wrong", commands=WHOAMI))
    line = one_error(result, 2, "passphrase", "[setting: passphrase]")
    assert "could not be read" not in line
    assert "definitely wrong" not in result.output
    assert "Connection from" not in log_since(server, mark)


@pytest.mark.parametrize("name", ENCRYPTED)
def test_encrypted_key_without_passphrase(
    name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, workspace: Path
) -> None:
    """An encrypted key and no passphrase: the line says the key is encrypted, names passphrase; exit 2."""
    result = run_sshipit(env=plugin_env(server, keys[name], passphrase=None, commands=WHOAMI))
    one_error(result, 2, "key is encrypted", "passphrase")
    (workspace / "k").write_text(keys[name].private_text)
    result = run_sshipit(env=plugin_env(server, None, key_path="k", commands=WHOAMI))
    one_error(result, 2, "key_path is encrypted", "passphrase")


def truncated(text: str) -> str:
    lines = text.strip().splitlines()
    return "\n".join([*lines[: len(lines) // 2], lines[-1]]) + "\n"


MALFORMED = {
    "prose": "this is not a key",
    "empty-armour": "-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----\n",
    "garbage-body": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAnot/base64/at/all!!\n-----END OPENSSH PRIVATE KEY-----\n",
    "pem-garbage": "-----BEGIN RSA PRIVATE KEY-----\nMIIEnotreally\n-----END RSA PRIVATE KEY-----\n",
}


@pytest.mark.parametrize("text", [*MALFORMED.values(), "truncated-ed25519", "truncated-rsa_pem"],
                         ids=[*MALFORMED, "truncated-ed25519", "truncated-rsa_pem"])
def test_malformed_key_names_the_setting(
    text: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """Key text that is no private key: one line naming the setting `key`; exit 2, nothing contacted."""
    if text.startswith("truncated-"):
        text = truncated(keys[text.removeprefix("truncated-")].private_text)
    mark = log_mark(server)
    result = run_sshipit(env=key_text_env(server, text, commands=WHOAMI))
    one_error(result, 2, "[setting: key]")
    assert "Connection from" not in log_since(server, mark)


def test_malformed_key_file_names_key_path(server: LocalServer, run_sshipit: RunSshipit, workspace: Path) -> None:
    """A key_path file that is no key, or that does not exist, names the setting `key_path`."""
    (workspace / "id_key").write_text(MALFORMED["garbage-body"])
    one_error(run_sshipit(env=plugin_env(server, None, key_path="id_key", commands=WHOAMI)), 2,
              "[setting: key_path]")
    one_error(run_sshipit(env=plugin_env(server, None, key_path="missing_key", commands=WHOAMI)), 2,
              "missing_key", "[setting: key_path]")


@pytest.mark.parametrize("name", ["ed25519", "rsa_openssh", "ecdsa"])
def test_public_key_given_as_key(
    name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, workspace: Path
) -> None:
    """The .pub half pasted as key (or given as key_path): a line saying it is a public key."""
    public = keys[name].public_text
    result = run_sshipit(env=key_text_env(server, public, commands=WHOAMI))
    one_error(result, 2, "public key", "[setting: key]")
    result = run_sshipit(env=plugin_env(server, None, key_path=str(keys[name].public_path), commands=WHOAMI))
    one_error(result, 2, "public key", "[setting: key_path]")


def test_missing_credentials(server: LocalServer, run_sshipit: RunSshipit) -> None:
    """No key, no password and no ssh-agent: one clear line, exit 2, the server never contacted."""
    mark = log_mark(server)
    env = plugin_env(server, None, commands=WHOAMI)
    assert not any(name in env for name in ("PLUGIN_KEY", "PLUGIN_PASSWORD", "PLUGIN_KEY_PATH", "SSH_AUTH_SOCK"))
    line = one_error(run_sshipit(env=env), 2, "no credentials")
    assert "key" in line and "password" in line
    assert "Connection from" not in log_since(server, mark)


# ---------------------------------------------------------------------------------------- authentication fails


def test_unauthorized_key(
    server: LocalServer, run_sshipit: RunSshipit, tmp_path: Path, remote_dir: Path
) -> None:
    """A key the server does not know: one line naming the user and the methods tried; exit 1; nothing ran."""
    stranger = generate_key(tmp_path / "stranger", "ed25519")
    mark = log_mark(server)
    marker = remote_dir / "ran"
    result = run_sshipit(env=plugin_env(server, stranger, commands=f"touch {marker}"))
    line = one_error(result, 1, "authentication failed", f"user {server.user!r}", "publickey (ed25519 key from key)")
    assert methods_tried(line) == "publickey (ed25519 key from key)"  # no password given, so none tried
    assert not marker.exists()
    assert not accepted(log_since(server, mark))


def test_unauthorized_key_and_password_lists_both_methods(
    server: LocalServer, run_sshipit: RunSshipit, tmp_path: Path
) -> None:
    """With a refused key and a wrong password the line lists both methods, in the order tried."""
    stranger = generate_key(tmp_path / "stranger", "ecdsa")
    result = run_sshipit(env=plugin_env(server, stranger, password="wrong-" + secrets.token_hex(4),
                                        commands=WHOAMI))
    line = one_error(result, 1, f"user {server.user!r}")
    assert methods_tried(line) == "publickey (ecdsa nistp256 key from key), password"


def test_unknown_user(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """A good key for the wrong user name: the line names the user that was tried."""
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], username="nosuchuser-sshipit", commands=WHOAMI))
    one_error(result, 1, "authentication failed", "'nosuchuser-sshipit'")


# -------------------------------------------------------------------------------------------------- host keys


@pytest.mark.parametrize("key_type", HOST_KEY_TYPES)
def test_fingerprint_of_any_one_host_key_type(
    key_type: str,
    server: LocalServer,
    keys: dict[str, KeyPair],
    run_sshipit: RunSshipit,
    tmp_path: Path,
    workspace: Path,
) -> None:
    """Pinning just one of the server's keys works, whichever type it is (not only the one offered first)."""
    fingerprint = server.fingerprints()[key_type]
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=fingerprint, commands=WHOAMI))
    assert_logged_in(result, server)
    assert "(host key verified)" in result.stdout
    assert "not verified" not in result.output
    assert len(accepted(log_since(server, mark))) == 1
    no_ssh_files_written(tmp_path, workspace)


def test_fingerprint_with_base64_padding(server: LocalServer, keys: dict[str, KeyPair],
                                         run_sshipit: RunSshipit) -> None:
    """A fingerprint copied with its trailing '=' (as some tools print it) matches all the same."""
    fingerprint = server.fingerprints()["ssh-rsa"] + "="
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=fingerprint, commands=WHOAMI))
    assert_logged_in(result, server)


def test_wrong_fingerprint_refused_before_authentication(
    server: LocalServer,
    keys: dict[str, KeyPair],
    run_sshipit: RunSshipit,
    remote_dir: Path,
    tmp_path: Path,
    workspace: Path,
) -> None:
    """A fingerprint the server does not have: refused before logging in, naming what the server offered."""
    wrong = client_fingerprint(keys["ecdsa"])
    marker = remote_dir / "ran"
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=wrong, commands=f"touch {marker}"))
    line = one_error(result, 1, server.host, "host key does not match", "[setting: fingerprint / known_hosts]")
    offered = offered_fingerprints(line)
    assert offered, line
    assert set(offered) <= set(server.fingerprints().values()), line
    assert wrong not in offered
    log = log_since(server, mark)
    assert "Connection from" in log  # it did reach the server...
    assert "Accepted" not in log and "Postponed" not in log  # ...and never got as far as authenticating
    assert not marker.exists()
    no_ssh_files_written(tmp_path, workspace)


@pytest.mark.parametrize("lines", ["all", *HOST_KEY_TYPES])
def test_known_hosts_accepted(
    lines: str,
    server: LocalServer,
    keys: dict[str, KeyPair],
    run_sshipit: RunSshipit,
    tmp_path: Path,
    workspace: Path,
) -> None:
    """known_hosts text (all the server's lines, or any single one of them) verifies the host."""
    text = server.known_hosts()
    if lines != "all":
        text = "".join(line + "\n" for line in text.splitlines() if line.split()[1] == lines)
        assert text.count("\n") == 1
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=None, known_hosts=text,
                                        commands=WHOAMI))
    assert_logged_in(result, server)
    assert "(host key verified)" in result.stdout
    assert "not verified" not in result.output
    no_ssh_files_written(tmp_path, workspace)


@pytest.mark.parametrize("case", ["different-key", "different-host"])
def test_known_hosts_mismatch_refused(
    case: str,
    server: LocalServer,
    keys: dict[str, KeyPair],
    run_sshipit: RunSshipit,
    remote_dir: Path,
    tmp_path: Path,
    workspace: Path,
) -> None:
    """known_hosts naming another key for this host, or this host's keys under another name: refused."""
    if case == "different-key":
        algorithm, blob = keys["ed25519"].public_text.split()[:2]
        text = f"[{server.host}]:{server.port} {algorithm} {blob}\n"
    else:
        text = server.known_hosts().replace(f"[{server.host}]", "[web1.example.com]")
    marker = remote_dir / "ran"
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=None, known_hosts=text,
                                        commands=f"touch {marker}"))
    line = one_error(result, 1, "host key does not match")
    assert set(offered_fingerprints(line)) <= set(server.fingerprints().values()), line
    assert "Accepted" not in log_since(server, mark)
    assert not marker.exists()
    no_ssh_files_written(tmp_path, workspace)


def test_unpinned_host_warns_with_the_pin(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, tmp_path: Path, workspace: Path
) -> None:
    """No fingerprint and no known_hosts: it connects, warns with the server's SHA256 and the line to pin it;
    and that pin then verifies."""
    env = plugin_env(server, keys["ed25519"], fingerprint=None, commands=WHOAMI)
    assert "PLUGIN_FINGERPRINT" not in env
    result = run_sshipit(env=env)
    assert_logged_in(result, server)
    assert "(host key verified)" not in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result
    warning = warnings[0]
    assert "not verified" in warning
    fingerprints = offered_fingerprints(warning)
    assert fingerprints and set(fingerprints) <= set(server.fingerprints().values()), warning
    assert f"fingerprint: {fingerprints[0]}" in warning
    known_line = warning.split("known_hosts: ", 1)[1].rstrip(")")
    assert known_line in server.known_hosts().splitlines(), warning
    no_ssh_files_written(tmp_path, workspace)
    # Nothing was remembered: the next run warns again, and the printed pin works.
    assert "not verified" in run_sshipit(env=env).stderr
    pinned = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=fingerprints[0], commands=WHOAMI))
    assert_logged_in(pinned, server)
    assert "(host key verified)" in pinned.stdout
    by_line = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=None, known_hosts=known_line,
                                         commands=WHOAMI))
    assert_logged_in(by_line, server)
    assert "(host key verified)" in by_line.stdout
    no_ssh_files_written(tmp_path, workspace)


# -------------------------------------------------------------------------------------------- connect errors


def test_unresolvable_host(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """A host name that does not resolve: one line naming it; exit 1."""
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], host="nonexistent.invalid", commands=WHOAMI))
    one_error(result, 1, "nonexistent.invalid", "does not resolve", "[setting: host]")


def test_connection_refused(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """A closed port: one line naming host and port, saying the connection was refused; exit 1."""
    port = free_port()
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], port=port, commands=WHOAMI))
    one_error(result, 1, server.host, f"port {port}", "connection refused")


def test_connect_timeout(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, silent_port: int
) -> None:
    """A port that accepts but never speaks SSH: it gives up after `timeout` with one line naming the host."""
    started = time.monotonic()
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], port=silent_port, timeout="2s", commands=WHOAMI),
                         timeout=30)
    elapsed = time.monotonic() - started
    one_error(result, 1, server.host, f"port {silent_port}", "2s", "[setting: timeout]")
    assert 1.5 <= elapsed <= 15, elapsed


@pytest.mark.parametrize("entry", ["[::1", "127.0.0.1:99999", "web1:0", "web1:ssh", "[::1]x", "[not-ipv6]:22",
                                   "user name@web1", "-oProxyCommand=x"])
def test_bad_host_syntax(
    entry: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """A host entry that cannot be parsed: one line quoting it and naming the setting; exit 2."""
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], host=entry, commands=WHOAMI))
    one_error(result, 2, repr(entry), "[setting: host]")
    assert "Connection from" not in log_since(server, mark)


# --------------------------------------------------------------------------------------- one connection a host


def test_one_connection_per_host(
    server: LocalServer,
    keys: dict[str, KeyPair],
    run_sshipit: RunSshipit,
    workspace: Path,
    remote_dir: Path,
) -> None:
    """Upload and three commands use one SSH connection; the commands share one shell (cd and export carry)."""
    (workspace / "dist" / "assets").mkdir(parents=True)
    (workspace / "dist" / "index.html").write_text("<h1>hello</h1>\n")
    (workspace / "dist" / "assets" / "app.js").write_text("console.log(1)\n")
    commands = [
        "mkdir -p releases/one && cd releases/one",
        "export SSHIPIT_CARRIED=from-command-2",
        'echo "where=$(pwd) carried=$SSHIPIT_CARRIED"',
    ]
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist",
                                        commands=json.dumps(commands)))
    assert_ok(result)
    assert (remote_dir / "dist" / "index.html").read_text() == "<h1>hello</h1>\n"
    assert (remote_dir / "dist" / "assets" / "app.js").read_text() == "console.log(1)\n"
    assert f"where={remote_dir}/releases/one carried=from-command-2" in result.stdout.splitlines(), result
    log = log_since(server, mark)
    assert len([line for line in accepted(log) if line.startswith("Accepted publickey")]) == 1, log
    assert log.count("Connection from") == 1, log


def test_one_connection_per_host_with_several_hosts(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, remote_dir: Path
) -> None:
    """Two entries for the same server (different spellings) get one connection each, no more."""
    hosts = [f"{server.host}:{server.port}", f"{server.user}@localhost:{server.port}"]
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], host=hosts, target=str(remote_dir),
                                        commands=json.dumps(["echo one", "echo two", WHOAMI])))
    assert_ok(result)
    assert result.stdout.count(f"login={server.user}") == 2, result
    assert len(accepted(log_since(server, mark))) == 2


# ------------------------------------------------------------------------------------------------------ IPv6


def test_ipv6_host_entry_parses_and_is_tried(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """`[::1]:PORT` is a valid entry: the server listens on 127.0.0.1 only, so ::1 refuses, naming the entry."""
    entry = f"[::1]:{server.port}"
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], host=entry, commands=WHOAMI))
    line = one_error(result, 1, entry, f"::1 port {server.port}")
    assert "connection refused" in line or "cannot connect" in line, line
    assert "not a valid" not in line and "IPv6 address" not in line


@pytest.mark.parametrize(
    ("entry", "hostname", "port", "user"),
    [
        ("user@[::1]:2222", "::1", 2222, "user"),
        ("::1", "::1", 22, "root"),
        ("[::1]", "::1", 22, "root"),
        ("2001:db8::10", "2001:db8::10", 22, "root"),
        ("[fe80::1%eth0]:22", "fe80::1%eth0", 22, "root"),
        ("web1:2222", "web1", 2222, "root"),
        ("deploy@web1", "web1", 22, "deploy"),
        ("deploy@web1.example.com:2200", "web1.example.com", 2200, "deploy"),
        (" 10.0.0.5 ", "10.0.0.5", 22, "root"),
    ],
)
def test_parse_host(entry: str, hostname: str, port: int, user: str) -> None:
    """Host entries: user@, :port, [IPv6]:port, bare IPv6 (no port), IPv6 with a zone."""
    spec = parse_host(entry, 22, "root")
    assert (spec.hostname, spec.port, spec.username) == (hostname, port, user)
    assert spec.written == entry.strip()


@pytest.mark.parametrize("entry", ["[::1", "[::1]:", "[::1]:70000", "host:99999", "host:", "[zz::1]:22",
                                   "::1::2", "@web1", "-web1", "web 1", "a;b@web1"])
def test_parse_host_refuses(entry: str) -> None:
    """Malformed entries raise a SettingsError for `host`, quoting the entry."""
    with pytest.raises(SettingsError) as caught:
        parse_host(entry, 22, "root")
    assert caught.value.setting == "host"
    assert repr(entry) in caught.value.message


# ------------------------------------------------------------------------------------------ secrets stay secret


def key_body_lines(key: KeyPair) -> list[str]:
    lines = [line for line in key.private_text.splitlines() if line and not line.startswith("-----")]
    lines = [line for line in lines if ":" not in line and len(line) >= 16]  # PEM headers are no secret
    assert lines
    return lines


@pytest.mark.parametrize("form", ["plain", "crlf", "escaped-newlines"])
def test_debug_never_prints_secrets(
    form: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """With debug on, a command that echoes the password, the passphrase and a line of the key prints ********."""
    key = keys["rsa_pem_pass"]
    body = key_body_lines(key)
    key_text = {"plain": key.private_text, "crlf": crlf(key.private_text),
                "escaped-newlines": escaped_newlines(key.private_text)}[form]
    password = "s3cret-" + secrets.token_hex(8)
    assert key.passphrase
    command = f"echo pw={password}; echo pp='{key.passphrase}'; echo body={body[1]}; echo last={body[-1]}"
    result = run_sshipit(env=key_text_env(server, key_text, key.passphrase, password=password, debug="true",
                                          commands=command))
    assert_ok(result)
    assert "setting debug = true" in result.stdout  # debug really was on
    assert "remote script:" in result.stdout
    out = result.output
    assert password not in out
    assert key.passphrase not in out
    for line in body:
        assert line not in out, f"key line {line!r} printed\n{result}"
    for label in ("pw", "pp", "body", "last"):
        assert f"{label}=********" in result.stdout.splitlines(), result
    assert "setting password = ********" in result.stdout
    assert "setting key = ********" in result.stdout
    assert "setting passphrase = ********" in result.stdout


def test_settings_errors_never_print_secrets(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit
) -> None:
    """Failing key reads and failing logins quote no secret, even with debug on."""
    key = keys["ecdsa_pass"]
    result = run_sshipit(env=plugin_env(server, key, passphrase="wrong passphrase here", debug="true",
                                        commands=WHOAMI))
    one_error(result, 2, "passphrase")
    assert "wrong passphrase here" not in result.output
    for line in key_body_lines(key):
        assert line not in result.output
    password = "pw-" + secrets.token_hex(8)
    result = run_sshipit(env=plugin_env(server, None, password=password, debug="true", commands=WHOAMI))
    one_error(result, 1, "authentication failed")
    assert password not in result.output
