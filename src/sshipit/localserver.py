"""A throwaway OpenSSH server on 127.0.0.1 for the demo and the tests.

`LocalServer` runs the system's ``/usr/sbin/sshd`` in the foreground as a child
process, on a free port of 127.0.0.1, with its host keys, config, authorized_keys,
pid file and log all inside a work directory that the caller owns.

As root, logins go to an unprivileged user (``sshipit-test`` by default, created
if missing) and password logins can be enabled with `LocalServer.set_password`.
As any other user, sshd runs as that user and only that user can log in (with
keys only: reading the shadow file needs root).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT
from types import TracebackType

__all__ = [
    "DEFAULT_ROOT_USER",
    "KeyPair",
    "LocalServer",
    "default_login_user",
    "ensure_user",
    "generate_key",
]

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
DEFAULT_ROOT_USER = "sshipit-test"
"""The login user when the server is started by root."""

HOST_KEY_KINDS = ("rsa", "ecdsa", "ed25519")
_START_ATTEMPTS = 10
_START_TIMEOUT = 20.0  # seconds per attempt, generous for a loaded CI machine
_STOP_TIMEOUT = 5.0
_PORT_TAKEN = ": port taken"

# Keywords that LocalServer manages itself and that extra_config may not set globally.
_MANAGED = ("port", "listenaddress", "pidfile")

_user_lock = threading.Lock()


def _is_root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------------------
# keys


@dataclass
class KeyPair:
    """A client key pair written by ssh-keygen."""

    kind: str
    private_path: Path
    private_text: str = field(repr=False)
    public_text: str
    passphrase: str | None = field(default=None, repr=False)

    @property
    def public_path(self) -> Path:
        return self.private_path.with_name(self.private_path.name + ".pub")


def generate_key(
    directory: Path,
    kind: str,
    *,
    passphrase: str | None = None,
    pem: bool = False,
    bits: int | None = None,
    name: str | None = None,
) -> KeyPair:
    """Write a new key pair into `directory` with ssh-keygen and return it.

    `kind` is "rsa", "ecdsa" or "ed25519". `pem=True` writes the traditional PEM
    format ("BEGIN RSA PRIVATE KEY" / "BEGIN EC PRIVATE KEY"), otherwise the
    OpenSSH format. RSA keys are 2048 bits unless `bits` says otherwise. The file
    is named `name` if given, else a fresh unique name.
    """
    if kind not in HOST_KEY_KINDS:
        raise ValueError(f"unknown key kind {kind!r}: expected one of {', '.join(HOST_KEY_KINDS)}")
    if pem and kind == "ed25519":
        raise ValueError("ed25519 keys have no traditional PEM format")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = f"id_{kind}{'_pem' if pem else ''}{'_pass' if passphrase else ''}-{secrets.token_hex(4)}"
    path = directory / name
    if path.exists() or path.with_name(name + ".pub").exists():
        raise FileExistsError(path)
    if bits is None and kind == "rsa":
        bits = 2048
    args = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase or "", "-C", f"sshipit-{name}", "-f", str(path)]
    if bits is not None:
        args += ["-b", str(bits)]
    if pem:
        args += ["-m", "PEM"]
    _run(args)
    return KeyPair(
        kind=kind,
        private_path=path,
        private_text=path.read_text(),
        public_text=path.with_name(name + ".pub").read_text().strip(),
        passphrase=passphrase,
    )


def _run(args: list[str], *, input: str | None = None) -> str:
    proc = subprocess.run(
        args,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed with exit code {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


# ---------------------------------------------------------------------------
# users


def ensure_user(name: str) -> pwd.struct_passwd:
    """Return the passwd entry of `name`, creating the user first if root and missing.

    A created (or locked) account gets the password "*": not locked, so that sshd
    without PAM accepts key logins, yet no password matches until `set_password`.
    The home directory is made to exist, owned by the user and writable by it.
    """
    if not _is_root():
        current = pwd.getpwuid(os.geteuid())
        if name != current.pw_name:
            raise ValueError(
                f"only root can serve logins for another user: running as {current.pw_name!r}, asked for {name!r}"
            )
        return current
    with _user_lock, _file_lock(Path("/tmp/.sshipit-localserver-useradd.lock")):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", name])
            entry = pwd.getpwnam(name)
        if name != "root" and _shadow_password(name).startswith("!"):
            _run(["usermod", "-p", "*", name])
        home = Path(entry.pw_dir)
        home.mkdir(parents=True, exist_ok=True)
        st = home.stat()
        if (st.st_uid, st.st_gid) != (entry.pw_uid, entry.pw_gid):
            os.chown(home, entry.pw_uid, entry.pw_gid)
        if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
            home.chmod(stat.S_IMODE(st.st_mode) | 0o700)
        return entry


def default_login_user() -> pwd.struct_passwd:
    """The user a `LocalServer` logs in as when none is given (created if needed)."""
    if _is_root():
        return ensure_user(DEFAULT_ROOT_USER)
    return pwd.getpwuid(os.geteuid())


def _shadow_password(name: str) -> str:
    try:
        with open("/etc/shadow") as f:
            for line in f:
                parts = line.split(":")
                if parts[0] == name and len(parts) > 1:
                    return parts[1]
    except OSError:
        pass
    return ""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _first_blocked_dir(path: Path, entry: pwd.struct_passwd) -> Path | None:
    """Return the first directory on the way to `path` that `entry`'s user cannot enter."""
    groups = {entry.pw_gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)}
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if entry.pw_uid == 0:
            continue
        if st.st_uid == entry.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return directory
    return None


# ---------------------------------------------------------------------------
# processes


def _proc_children(lowest: int = 0) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) < lowest:
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int, *, newer_only: bool = False) -> list[int]:
    """The processes below `pid`, from /proc. `newer_only` looks at higher pids only (where children go between
    pid wrap-arounds): cheaper when sampled often, as the benchmark does."""
    children = _proc_children(pid if newer_only else 0)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _session_processes(port: int) -> list[int]:
    """Processes started by an SSH session on this port, even the ones reparented to init."""
    marker = f" {HOST} {port}".encode()
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(b"SSH_CONNECTION=") and var.endswith(marker):
                found.append(int(entry.name))
                break
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------
# the server

_running: weakref.WeakSet[LocalServer] = weakref.WeakSet()


class LocalServer:
    """A throwaway sshd on 127.0.0.1, configured and logging inside `workdir`.

    `extra_config` is appended to sshd_config. A keyword it sets outside of any
    Match block replaces the default of the same name (sshd would otherwise keep
    the first value), except HostKey, which adds a key; Port, ListenAddress and
    PidFile are managed by the server and may not be set.
    """

    host: str
    port: int
    user: str
    home: Path

    def __init__(self, workdir: Path, *, extra_config: str = "", user: str | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.extra_config = extra_config
        self._check_extra_config()
        entry = ensure_user(user) if user is not None else default_login_user()
        self._entry = entry
        self.host = HOST
        self.port = 0
        self.user = entry.pw_name
        self.home = Path(entry.pw_dir)
        self.config_path = self.workdir / "sshd_config"
        self.authorized_keys_path = self.workdir / "authorized_keys"
        self.pid_path = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._prepare_workdir()

    # -- set-up -------------------------------------------------------------

    def _check_extra_config(self) -> None:
        for keyword in self._global_keywords():
            if keyword in _MANAGED:
                raise ValueError(f"extra_config may not set {keyword!r}: LocalServer manages it")

    def _global_keywords(self) -> set[str]:
        keywords = set()
        for line in self.extra_config.splitlines():
            words = line.strip().replace("=", " ", 1).split()
            if not words or words[0].startswith("#"):
                continue
            if words[0].lower() == "match":
                break
            keywords.add(words[0].lower())
        return keywords

    def host_key_path(self, kind: str) -> Path:
        return self.workdir / f"ssh_host_{kind}_key"

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if _is_root() and self._entry.pw_uid != 0:
            # The user must reach authorized_keys (sshd reads it as the user), not list the dir.
            mode = stat.S_IMODE(self.workdir.stat().st_mode)
            self.workdir.chmod(mode | 0o711)
            blocked = _first_blocked_dir(self.workdir, self._entry)
            if blocked is not None:
                raise ValueError(
                    f"user {self.user!r} cannot reach the server's workdir {self.workdir}: "
                    f"{blocked} is mode {stat.S_IMODE(blocked.stat().st_mode):o}; "
                    "put the workdir somewhere every user can enter (e.g. tempfile.mkdtemp() in /tmp)"
                )
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        missing = [kind for kind in HOST_KEY_KINDS if not self.host_key_path(kind).exists()]
        if missing:
            self._generate_host_keys(missing)
        if not self.authorized_keys_path.exists():
            self.authorized_keys_path.touch()
        self.authorized_keys_path.chmod(0o644)

    def _generate_host_keys(self, kinds: list[str]) -> None:
        procs = []
        for kind in kinds:
            path = self.host_key_path(kind)
            for stale in (path, path.with_name(path.name + ".pub")):
                stale.unlink(missing_ok=True)
            comment = f"sshipit-localserver-{kind}"
            args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
            if kind == "rsa":
                args += ["-b", "2048"]
            procs.append(subprocess.Popen(args, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT))
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"ssh-keygen failed making a host key: {out.decode(errors='replace')}")

    def _config_text(self) -> str:
        overridden = self._global_keywords() - {"hostkey"}
        defaults = [
            ("StrictModes", "no"),
            ("UsePAM", "no"),
            ("PubkeyAuthentication", "yes"),
            ("PasswordAuthentication", "yes"),
            ("KbdInteractiveAuthentication", "no"),
            ("PermitRootLogin", "yes"),
            ("AuthorizedKeysFile", str(self.authorized_keys_path)),
            ("Subsystem", "sftp internal-sftp"),
            ("MaxStartups", "200"),
            ("MaxSessions", "100"),
            ("LogLevel", "VERBOSE"),
            ("PrintMotd", "no"),
            ("PrintLastLog", "no"),
            ("UseDNS", "no"),
        ]
        lines = [
            "# Written by sshipit.localserver: a throwaway server for tests and demos.",
            f"Port {self.port}",
            f"ListenAddress {HOST}",
            *(f"HostKey {self.host_key_path(kind)}" for kind in HOST_KEY_KINDS),
            f"PidFile {self.pid_path}",
            *(f"{key} {value}" for key, value in defaults if key.lower() not in overridden),
        ]
        if self.extra_config.strip():
            lines += ["", "# extra_config", self.extra_config.rstrip("\n")]
        return "\n".join(lines) + "\n"

    # -- life cycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the listening sshd, while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> LocalServer:
        """Start sshd and wait until it answers the SSH banner; return self.

        A restart tries the previous port first, so clients can reconnect.
        """
        with self._lock:
            if self.running:
                return self
            failures: list[str] = []
            previous = self.port
            for attempt in range(_START_ATTEMPTS):
                port = previous if attempt == 0 and previous else _free_port()
                outcome = self._try_start(port)
                if outcome is None:
                    _running.add(self)
                    return self
                failures.append(outcome)
                if not outcome.endswith(_PORT_TAKEN):
                    break
            raise RuntimeError(
                f"sshd did not start (after {len(failures)} attempt(s)); last failure: {failures[-1]}\n"
                f"--- tail of {self.log_path} ---\n{self._log_tail()}"
            )

    def _try_start(self, port: int) -> str | None:
        """Start sshd on `port`; return None once it is ready, else why it failed."""
        self.port = port
        self.config_path.write_text(self._config_text())
        self.pid_path.unlink(missing_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [SSHD, "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._proc = proc
        listening = f"Server listening on {HOST} port {port}."
        deadline = time.monotonic() + _START_TIMEOUT
        delay = 0.005
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                new = self._log_since(offset)
                taken = "Address already in use" in new or "Cannot bind any address" in new
                return f"sshd exited with code {proc.returncode}" + (_PORT_TAKEN if taken else "")
            if listening in self._log_since(offset) and self._banner_ok(port):
                if proc.poll() is None:
                    return None
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self._terminate([proc.pid])
        return f"sshd did not answer on {HOST}:{port} within {_START_TIMEOUT:.0f}s"

    def _banner_ok(self, port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                sock.settimeout(5)
                data = b""
                while b"\n" not in data and len(data) < 1024:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
                sock.sendall(b"SSH-2.0-sshipit_localserver_probe\r\n")
        except OSError:
            return False
        return data.startswith(b"SSH-2.0-OpenSSH")

    def stop(self) -> None:
        """Stop sshd and every process of its sessions (TERM, then KILL). Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            pids = self._all_pids(proc.pid)
            self._terminate(pids)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STOP_TIMEOUT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._proc = None
            _running.discard(self)
            self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the listening sshd and all its session processes at once (for fault tests)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                # Freeze everything first so nothing forks or reaps between finding and killing.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGSTOP)
            seen: set[int] = set()
            for _ in range(5):
                pids = [p for p in self._all_pids(proc.pid) if p not in seen]
                if not pids:
                    break
                _signal_all(pids, signal.SIGSTOP)
                seen.update(pids)
            _signal_all([proc.pid, *seen], signal.SIGKILL)
            proc.wait()
            self._proc = None
            _running.discard(self)

    def _all_pids(self, listener: int) -> list[int]:
        pids = descendants(listener)
        if self.port:
            pids += [p for p in _session_processes(self.port) if p not in pids and p != listener]
        return pids

    def _terminate(self, pids: list[int]) -> None:
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.02)
        _signal_all(pids, signal.SIGKILL)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalServer {self.user}@{self.host}:{self.port} {state} in {self.workdir}>"

    # -- accounts -----------------------------------------------------------

    def authorize(self, public_key_text: str) -> None:
        """Append a public key (one or more authorized_keys lines) to authorized_keys."""
        text = public_key_text.strip()
        if not text:
            raise ValueError("empty public key")
        with self._lock, open(self.authorized_keys_path, "a") as f:
            f.write(text + "\n")

    def set_password(self, password: str) -> None:
        """Set the login user's password (root only; the password never appears in argv)."""
        if not _is_root():
            raise PermissionError("set_password needs root (chpasswd, and sshd reading /etc/shadow)")
        if ":" in password or "\n" in password:
            raise ValueError("chpasswd cannot set a password containing ':' or a newline")
        _run(["chpasswd"], input=f"{self.user}:{password}\n")

    # -- host keys ------------------------------------------------------------

    def _host_public_keys(self) -> list[tuple[str, str]]:
        keys = []
        for kind in HOST_KEY_KINDS:
            path = self.host_key_path(kind)
            fields = path.with_name(path.name + ".pub").read_text().split()
            keys.append((fields[0], fields[1]))
        return keys

    def fingerprints(self) -> dict[str, str]:
        """Key type (e.g. "ssh-ed25519") -> "SHA256:..." of each host key."""
        result = {}
        for key_type, blob in self._host_public_keys():
            digest = hashlib.sha256(base64.b64decode(blob)).digest()
            result[key_type] = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
        return result

    def known_hosts(self) -> str:
        """known_hosts lines "[127.0.0.1]:PORT <type> <base64>" for each host key."""
        if not self.port:
            raise RuntimeError("the server has no port yet: start() it first")
        keys = self._host_public_keys()
        return "".join(f"[{HOST}]:{self.port} {key_type} {blob}\n" for key_type, blob in keys)

    # -- logs -----------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _stop_all_at_exit() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_at_exit)
