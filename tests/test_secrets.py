"""Secrets (the password, the passphrase, the private key) never leave sshipit's memory except towards the server's
authentication: not in what it prints, not in any argv or environment of a process it starts (locally, or on the
server, which shares this machine), not in any file it writes.

Each run is watched while it happens: /proc is sampled every few milliseconds (every process's argv; the
environment of sshipit's child processes and of the server-side session processes), and an audit hook inside the
sshipit process (sys.addaudithook, installed before sshipit is imported) records every file it opens for writing
and every process it starts. Afterwards every file sshipit may have written is searched: its HOME, the workspace,
the remote target, the login's ~/.cache/sshipit, and anything new in /tmp, /var/tmp and /dev/shm. The private key
file is deleted before the runs, so a file holding its text can only have been written by sshipit.

Scenarios: a normal run and `debug: true`, and the error paths: authentication failure, host key mismatch,
command failure, command timeout, connection cut, connect timeout. A command that prints a secret shows ********.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import Result, clean_env, cut_connections, plugin_env, rmtree
from sshipit.localserver import LocalServer, generate_key

USER = "sshipit-secrets"  # a login of this module's own: a password is system-wide

# Runs `python -m sshipit` with an audit hook that logs, NUL-separated, every path opened for writing and every
# process started. The hook is installed before sshipit is imported, so nothing it does escapes it.
BOOTSTRAP = r"""
import os, sys
log = os.open(os.environ.pop("SSHIPIT_TEST_AUDIT_LOG"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def note(kind, what):
    os.write(log, kind + b"\t" + what + b"\0")

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int)
                                                                                and flags & WRITE)
        if writing and isinstance(path, (str, bytes)):
            note(b"write", os.fsencode(path))
    elif event in ("os.rename", "os.replace", "os.link", "os.symlink", "os.truncate", "shutil.copyfile",
                   "shutil.copytree", "shutil.move", "tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir"):
        note(b"write", repr(args).encode("utf-8", "backslashreplace"))
    elif event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork",
                   "os.forkpty", "pty.spawn"):
        # The child's environment too: the one given, else (inherited) this process's own at that moment.
        given = args[-1] if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn") else None
        environment = given if isinstance(given, dict) else dict(os.environ)
        note(b"spawn", repr((event, args, environment)).encode("utf-8", "backslashreplace"))

sys.addaudithook(hook)
sys.argv = ["sshipit", *sys.argv[1:]]
import runpy
runpy.run_module("sshipit", run_name="__main__", alter_sys=True)
"""


# ------------------------------------------------------------------------------------------------------ secrets


@dataclass
class Secrets:
    password: str
    passphrase: str
    key_text: str
    public_text: str

    @property
    def body_lines(self) -> list[str]:
        """The key's base64 body lines. Not: PEM headers, a short last line, and the lines that spell the public
        key, which the OpenSSH format carries in the clear (they are in every authorized_keys file)."""
        lines = [line.strip() for line in self.key_text.splitlines()]
        return [line for line in lines if line and not line.startswith("-----") and ":" not in line
                and len(line) >= 16 and line not in self.public_text]

    def needles(self) -> dict[str, bytes]:
        found = {"password": self.password.encode(), "passphrase": self.passphrase.encode(),
                 "key text": self.key_text.strip().encode()}
        for number, line in enumerate(self.body_lines, 1):
            found[f"key line {number}"] = line.encode()
        return found

    def leaks(self, blob: bytes) -> list[str]:
        return [name for name, needle in self.needles().items() if needle in blob]


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    folder = tmp_path_factory.mktemp("secret-key")
    passphrase = "pp " + secrets.token_urlsafe(18)
    key = generate_key(folder, "rsa", passphrase=passphrase, name="id_secret")
    key.private_path.unlink()  # held in memory only from here on: any file with this text was written by sshipit
    found = Secrets(password="pw " + secrets.token_urlsafe(18), passphrase=passphrase, key_text=key.private_text,
                    public_text=key.public_text)
    assert len(found.body_lines) > 10
    return found


@pytest.fixture(scope="module")
def secret_server(creds: Secrets) -> Iterator[LocalServer]:
    if os.geteuid() != 0:
        pytest.fail("the secrets tests log in with a password (chpasswd, sshd reading /etc/shadow): run as root")
    root = Path(tempfile.mkdtemp(prefix="sshipit-secrets-"))
    root.chmod(0o711)
    srv = LocalServer(root / "srv", user=USER)
    srv.authorize(creds.public_text)
    srv.set_password(creds.password)
    try:
        yield srv.start()
    finally:
        srv.stop()
        rmtree(root)


@pytest.fixture
def target(secret_server: LocalServer) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="target-", dir=secret_server.home))
    shutil.chown(path, USER, USER)
    yield path
    rmtree(path)


# ---------------------------------------------------------------------------------------------------- watching


@dataclass
class Watch:
    """What one sshipit run printed, started and wrote."""

    result: Result
    argvs: set[bytes] = field(default_factory=set)  # every process's argv seen while sshipit ran
    environs: dict[str, bytes] = field(default_factory=dict)  # sshipit's children and the server-side processes
    remote_seen: int = 0  # samples in which server-side session processes were found
    audit: list[tuple[str, bytes]] = field(default_factory=list)  # (write|spawn, what)


def _proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _sample(watch: Watch, sshipit_pid: int, port: int) -> None:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = _proc(pid, "cmdline")
        if argv:
            watch.argvs.add(argv)
        stat = _proc(pid, "stat")
        if stat:
            parents[pid] = int(stat.rsplit(b")", 1)[1].split()[1])
        environ = _proc(pid, "environ") or b""
        if any(v.startswith(b"SSH_CONNECTION=") and v.endswith(f" 127.0.0.1 {port}".encode())
               for v in environ.split(b"\0")):
            watch.environs[f"server-side pid {pid} ({argv!r})"] = environ
            watch.remote_seen += 1
    for pid, parent in parents.items():  # sshipit's descendants: their environment must not carry secrets either
        chain, seen = parent, 0
        while chain not in (0, 1, sshipit_pid) and chain in parents and seen < 64:
            chain, seen = parents[chain], seen + 1
        if chain == sshipit_pid and pid != sshipit_pid:
            watch.environs[f"local child pid {pid}"] = _proc(pid, "environ") or b""


def run_watched(env: dict[str, str], workspace: Path, home: Path, port: int, audit_log: Path,
                during: Callable[[subprocess.Popen[bytes]], None] | None = None, timeout: float = 90) -> Watch:
    full = clean_env(home, env)
    full["SSHIPIT_TEST_AUDIT_LOG"] = str(audit_log)
    proc = subprocess.Popen([sys.executable, "-c", BOOTSTRAP], cwd=workspace, env=full, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    watch = Watch(Result([], 0, "", ""))
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            _sample(watch, proc.pid, port)
            time.sleep(0.01)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        if during is not None:
            during(proc)
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        stop.set()
        thread.join(10)
    watch.result = Result(["sshipit"], proc.returncode, out.decode("utf-8", "replace"),
                          err.decode("utf-8", "replace"))
    for record in audit_log.read_bytes().split(b"\0") if audit_log.exists() else []:
        if record:
            kind, _, what = record.partition(b"\t")
            watch.audit.append((kind.decode(), what))
    return watch


def new_files(roots: list[Path], since: float, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Regular files below `roots` changed since `since` (whole trees, without following symlinks)."""
    for root in roots:
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root):
            if any(Path(folder) == s or s in Path(folder).parents for s in skip):
                dirs[:] = []
                continue
            for name in files:
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    info = path.lstat()
                    if info.st_mtime >= since - 1 and path.is_file() and not path.is_symlink():
                        yield path


def read_small(path: Path, limit: int = 32 << 20) -> bytes:
    with contextlib.suppress(OSError):
        if path.stat().st_size <= limit:
            return path.read_bytes()
    return b""


def assert_no_leak(watch: Watch, creds: Secrets, scanned_roots: list[Path], since: float,
                   skip: tuple[Path, ...] = ()) -> int:
    """Every channel checked; returns how many files were searched (so a test can see the search was real)."""
    result = watch.result
    printed = (result.stdout + result.stderr).encode()
    assert not creds.leaks(printed), f"printed: {creds.leaks(printed)}\n{result}"
    assert "Traceback" not in result.output, result
    assert watch.argvs, "no process was ever sampled"
    for argv in watch.argvs:
        assert not creds.leaks(argv), f"argv {argv[:200]!r} holds {creds.leaks(argv)}"
    for where, environ in watch.environs.items():
        assert not creds.leaks(environ), f"the environment of {where} holds {creds.leaks(environ)}"
    for kind, what in watch.audit:
        assert not creds.leaks(what), f"sshipit's {kind} record holds {creds.leaks(what)}: {what[:200]!r}"
        if kind == "write":
            path = Path(os.fsdecode(what))
            if path.is_absolute() and path.is_file():
                assert not creds.leaks(read_small(path)), f"sshipit wrote {creds.leaks(read_small(path))} to {path}"
    searched = 0
    for path in new_files(scanned_roots, since, skip):
        searched += 1
        content = read_small(path)
        assert not creds.leaks(content), f"{path} holds {creds.leaks(content)}"
    return searched


# ---------------------------------------------------------------------------------------------------- scenarios


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP (the kernel's backlog) and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def reveal(label: str, secret: str) -> str:
    """A command that prints `label=<secret>` on the server without the secret in its text."""
    encoded = base64.b64encode(secret.encode()).decode()
    return f"printf '%s\\n' \"{label}=$(printf %s {encoded} | base64 -d)\""


SCENARIOS = ["normal", "auth-failure", "host-key-mismatch", "command-failure", "command-timeout",
             "connection-cut", "connect-timeout"]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_leaks(
    scenario: str, debug: bool, creds: Secrets, secret_server: LocalServer, server: LocalServer, target: Path,
    workspace: Path, tmp_path: Path, silent_port: int,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (workspace / "dist").mkdir()
    (workspace / "dist/index.html").write_text("hello\n")
    started = target / "started"
    # The commands print the secrets without holding them (a setting with a secret in it would be the user's own
    # leak): each is decoded from base64 on the server.
    echo = "; ".join(reveal(label, secret) for label, secret in (
        ("pw", creds.password), ("pp", creds.passphrase), ("body", creds.body_lines[2]),
        ("last", creds.body_lines[-1])))
    settings: dict[str, object] = {"target": str(target), "sources": "dist", "debug": debug,
                                   "password": creds.password, "passphrase": creds.passphrase}
    env_server = secret_server
    during: Callable[[subprocess.Popen[bytes]], None] | None = None
    expect_status, expect_error = 0, ""
    if scenario == "normal":
        settings["script"] = f"{echo}; sleep 1.5"
    elif scenario == "auth-failure":
        env_server = server  # the shared server knows neither this key nor this password
        settings["script"] = "true"
        expect_status, expect_error = 1, "authentication failed"
    elif scenario == "host-key-mismatch":
        settings["script"] = "true"
        settings["fingerprint"] = ",".join(server.fingerprints().values())  # another server's keys
        expect_status, expect_error = 1, "host key does not match"
    elif scenario == "command-failure":
        settings["script"] = f"{echo}; sleep 1; exit 3"
        expect_status, expect_error = 3, "exited with status 3"
    elif scenario == "command-timeout":
        settings["script"] = f"{echo}; sleep 60"
        settings["command_timeout"] = "2s"
        expect_status, expect_error = 124, "did not finish within 2s"
    elif scenario == "connection-cut":
        settings["script"] = f"{echo}; touch {started}; sleep 30"
        expect_status, expect_error = 1, "connection was lost"

        def during(proc: subprocess.Popen[bytes]) -> None:
            deadline = time.monotonic() + 60
            while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert started.exists(), "the command never started"
            time.sleep(0.3)  # let the sampler see the remote processes
            assert cut_connections(secret_server)
    elif scenario == "connect-timeout":
        settings.update(script="true", port=silent_port, timeout="2s", retries=0)
        expect_status, expect_error = 1, "no SSH answer within 2s"
    env = plugin_env(env_server, None, **settings)
    env["PLUGIN_KEY"] = creds.key_text
    # The CI report files (Drone's card, GitHub's summary and outputs) are files sshipit writes too.
    for variable in ("DRONE_CARD_PATH", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT"):
        env[variable] = str(tmp_path / variable.lower())

    since = time.time()
    watch = run_watched(env, workspace, home, secret_server.port, tmp_path / "audit.log", during)
    result = watch.result
    assert result.returncode == expect_status, result
    if expect_error:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and expect_error in errors[0], result
    if debug and scenario != "connect-timeout":
        assert "setting password = ********" in result.stdout and "setting key = ********" in result.stdout
        assert "setting passphrase = ********" in result.stdout
    if scenario in ("normal", "command-failure", "command-timeout", "connection-cut"):
        lines = result.stdout.splitlines()
        for label in ("pw", "pp", "body", "last"):
            assert f"{label}=********" in lines, f"{label} not masked\n{result}"
        assert watch.remote_seen > 0, "the server-side processes were never sampled"
    if scenario == "normal":
        cache = secret_server.home / ".cache/sshipit"
        assert (target / "dist/index.html").read_text() == "hello\n"
        assert any(cache.rglob("*.json")), "no manifest in ~/.cache/sshipit: the plain upload's state went elsewhere"

    # This test's own files (the audit log, the workspace it made) hold no secret either, and are searched too.
    roots = [home, workspace, target, secret_server.home, Path(tempfile.gettempdir()), Path("/var/tmp"),
             Path("/dev/shm")]
    searched = assert_no_leak(watch, creds, roots, since)
    assert searched > 0
    assert not (home / ".ssh").exists()
    writes = [Path(os.fsdecode(what)) for kind, what in watch.audit if kind == "write"]
    assert not [p for p in writes if p.is_absolute() and (p == home or home in p.parents)], writes
    spawned = [what for kind, what in watch.audit if kind == "spawn"]
    assert all(b"PLUGIN_PASSWORD" not in what and b"PLUGIN_KEY" not in what for what in spawned), spawned


def test_the_watch_would_see_a_leak(creds: Secrets, workspace: Path, tmp_path: Path, secret_server: LocalServer,
                                    ) -> None:
    """The watching itself works: a process that does put the password in its argv and the key into a file in
    /tmp is caught by the same checks (so a green run above means something)."""
    leak_file = Path(tempfile.gettempdir()) / f"leak-{secrets.token_hex(4)}"
    since = time.time()
    proc = subprocess.Popen(["sh", "-c", "sleep 30", creds.password])
    try:
        leak_file.write_text(creds.key_text)
        watch = Watch(Result(["probe"], 0, "", ""))
        deadline = time.monotonic() + 10
        while not any(creds.password.encode() in argv for argv in watch.argvs) and time.monotonic() < deadline:
            _sample(watch, os.getpid(), secret_server.port)
            time.sleep(0.01)
        with pytest.raises(AssertionError, match="holds"):
            assert_no_leak(watch, creds, [], since)
        clean = Watch(Result(["probe"], 0, "", ""), argvs={b"true\0"})
        with pytest.raises(AssertionError, match=leak_file.name):
            assert_no_leak(clean, creds, [Path(tempfile.gettempdir())], since)
    finally:
        proc.kill()
        proc.wait()
        leak_file.unlink(missing_ok=True)


def key_body_lines(key_text: str, public_text: str) -> list[str]:
    """A key file's secret lines, as Secrets.body_lines tells them."""
    return Secrets("", "", key_text, public_text).body_lines


def test_every_secret_however_given_is_masked(creds: Secrets, secret_server: LocalServer, target: Path,
                                             workspace: Path, tmp_path: Path) -> None:
    """Keys given as files (key_path, and a jump host's proxy_key_path with its own proxy_passphrase) are as
    secret as keys given as text: commands that print both key files, the passphrases and the password show
    ******** for each, never the text (until now only a key given as text was masked)."""
    home = tmp_path / "home"
    home.mkdir()
    proxy_passphrase = "proxy pp " + secrets.token_urlsafe(18)
    proxy = generate_key(tmp_path / "proxy-key", "ecdsa", passphrase=proxy_passphrase, name="id_proxy")
    secret_server.authorize(proxy.public_text)
    key_file = tmp_path / "target-key" / "id_target"
    key_file.parent.mkdir()
    key_file.write_text(creds.key_text)
    key_file.chmod(0o600)
    # The server holds copies of both files, and the commands print them (as a careless `cat` of a deploy key).
    for name, text in (("target.key", creds.key_text), ("proxy.key", proxy.private_text)):
        (target / name).write_text(text)
        shutil.chown(target / name, USER, USER)
    script = "cat target.key; cat proxy.key; " + "; ".join(reveal(label, secret) for label, secret in (
        ("pw", creds.password), ("pp", creds.passphrase), ("proxy-pp", proxy_passphrase)))
    env = plugin_env(secret_server, None, target=str(target), key_path=str(key_file), passphrase=creds.passphrase,
                     password=creds.password, proxy_host=f"{USER}@127.0.0.1:{secret_server.port}",
                     proxy_key_path=str(proxy.private_path), proxy_passphrase=proxy_passphrase,
                     proxy_fingerprint=",".join(secret_server.fingerprints().values()), script=script)
    result = run_watched(env, workspace, home, secret_server.port, tmp_path / "audit.log").result
    assert result.returncode == 0, result  # both keys were read, decrypted and used (the jump, then the target)
    printed = result.stdout + result.stderr
    target_lines = key_body_lines(creds.key_text, creds.public_text)
    proxy_lines = key_body_lines(proxy.private_text, proxy.public_text)
    assert len(target_lines) > 10 and len(proxy_lines) >= 3
    for name, needle in [("password", creds.password), ("passphrase", creds.passphrase),
                         ("proxy passphrase", proxy_passphrase),
                         *((f"key_path line {n}", line) for n, line in enumerate(target_lines, 1)),
                         *((f"proxy_key_path line {n}", line) for n, line in enumerate(proxy_lines, 1))]:
        assert needle not in printed, f"{name} printed\n{result}"
    lines = result.stdout.splitlines()
    for label in ("pw", "pp", "proxy-pp"):
        assert f"{label}=********" in lines, f"{label} not masked\n{result}"
    # The key files were printed: every body line in its place, masked.
    assert lines.count("********") >= len(target_lines) + len(proxy_lines), result
