"""Helpers shared by the tests: running sshipit, Drone-style settings, the system ssh client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshipit.localserver import KeyPair, LocalServer, default_login_user

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# Variables that CI systems (Drone, Woodpecker, GitHub Actions) set, and that must not leak from
# the environment running pytest into the tool under test.
SCRUBBED_PREFIXES = ("PLUGIN_", "INPUT_", "DRONE", "CI_", "GITHUB_", "SSHIPIT_")
SCRUBBED_NAMES = ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "CI")


@dataclass
class Result:
    """What a finished `python -m sshipit` run returned and printed."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\n[exit code {self.returncode}]\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


def clean_env(home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without CI/plugin variables or the ssh agent, with HOME=`home`, then `env`."""
    result = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(SCRUBBED_PREFIXES) and name not in SCRUBBED_NAMES
    }
    result["HOME"] = str(home)
    result["NO_COLOR"] = "1"
    result.pop("FORCE_COLOR", None)
    pythonpath = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    result["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
    if env:
        result.update(env)
    return result


def run_sshipit(
    *args: str,
    cwd: Path,
    home: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> Result:
    """Run `python -m sshipit ARGS` in a clean environment; fail the test if it outlives `timeout`."""
    argv = [sys.executable, "-m", "sshipit", *args]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=clean_env(home, env),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipes
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            stdout, stderr = "", ""
            proc.wait()
        pytest.fail(
            f"sshipit did not finish within {timeout}s and was killed\n"
            + str(Result(argv, proc.returncode, stdout or "", stderr or "")),
            pytrace=False,
        )
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    return Result(argv, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def setting_value(value: object) -> str:
    """A setting as Drone puts it in the environment: lists comma-joined, maps as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(setting_value(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def plugin_env(server: LocalServer, key: KeyPair | None, **settings: object) -> dict[str, str]:
    """Drone-style PLUGIN_* variables to reach `server` with `key`, plus `settings`.

    Each extra setting becomes PLUGIN_<NAME>; a setting given as None removes that variable.
    """
    env = {
        "PLUGIN_HOST": server.host,
        "PLUGIN_PORT": str(server.port),
        "PLUGIN_USERNAME": server.user,
        "PLUGIN_FINGERPRINT": ",".join(server.fingerprints().values()),
    }
    if key is not None:
        env["PLUGIN_KEY"] = key.private_text
        if key.passphrase:
            env["PLUGIN_PASSPHRASE"] = key.passphrase
    for name, value in settings.items():
        variable = "PLUGIN_" + name.upper()
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = setting_value(value)
    return env


def ssh_argv(server: LocalServer, key: KeyPair | None, known_hosts: Path, *options: str) -> list[str]:
    """The system ssh client's argv to `server` (strict host key checking, no user config)."""
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-p",
        str(server.port),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "LogLevel=ERROR",
    ]
    if key is not None:
        argv += ["-i", str(key.private_path), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    return [*argv, *options, "-l", server.user, server.host]


def ssh(
    server: LocalServer,
    key: KeyPair | None,
    command: str,
    known_hosts: Path,
    *,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command` on `server` with the system ssh client, stdin closed."""
    known_hosts.write_text(server.known_hosts())
    return subprocess.run(
        [*ssh_argv(server, key, known_hosts), command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
        check=False,
    )


def rmtree(path: Path) -> None:
    """Remove a tree even where a test left directories without write or search permission."""

    def fix_and_retry(func: object, failed: str, _exc: object) -> None:
        parent = os.path.dirname(failed)
        for target in (parent, failed):
            with contextlib.suppress(OSError):
                os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            shutil.rmtree(failed, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(failed)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=fix_and_retry)


def one_error(result: Result, status: int, *needles: str) -> str:
    """Exactly one `error:` line, holding every needle; the given exit status; no traceback. Returns the line."""
    assert "Traceback" not in result.output, result
    assert result.returncode == status, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in the error line\n{result}"
    return errors[0]


def server_bin_dir(path: Path) -> Path:
    """A new directory of programs for a test server's PATH (its login user must read and enter it)."""
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


def cut_connections(server: LocalServer) -> list[int]:
    """Kill every sshd process serving a connection (the root monitor and the user's network process), but not
    the listener nor the remote commands: the TCP connection dies as in a network failure, the commands live on.

    Killing the monitor alone (tests/test_release.py::_session_children) is not enough with OpenSSH 9: after
    login the network process carries the connection on its own.
    """
    assert server.pid is not None
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                names[int(entry)] = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    killed: list[int] = []
    todo = list(children.get(server.pid, []))
    while todo:
        pid = todo.pop()
        if names.get(pid, "").startswith("sshd"):
            todo += children.get(pid, [])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def start_server(workdir: Path, keys: dict[str, KeyPair], extra_config: str = "", user: str | None = None,
                 authorize: tuple[str, ...] | None = None) -> LocalServer:
    """A started LocalServer in `workdir` that accepts `keys` (only those named in `authorize`, if given)."""
    server = LocalServer(workdir, extra_config=extra_config, user=user)
    for name, key in keys.items():
        if authorize is None or name in authorize:
            server.authorize(key.public_text)
    return server.start()


def assert_landed(label: str, want: Mapping[str, object], files: Mapping[str, object]) -> None:
    """One host's files (path -> digest) are exactly `want`: none missing, none corrupt, nothing extra."""
    missing = sorted(set(want) - set(files))
    corrupt = sorted(p for p in want if p in files and files[p] != want[p])
    extra = sorted(set(files) - set(want))
    assert not missing and not corrupt and not extra, \
        f"{label}: {len(missing)} missing, {len(corrupt)} corrupt, {len(extra)} extra " \
        f"(first: {(missing + corrupt + extra)[:3]})"


def login_home(path: Path) -> Path:
    """A directory the servers' test login owns (0755): one machine's home, where its commands run."""
    login = default_login_user()
    path.mkdir(parents=True)
    os.chown(path, login.pw_uid, login.pw_gid)
    path.chmod(0o755)
    return path


def at_home(home: Path, first: str = "") -> str:
    """sshd_config lines that run every command in `home` (after `first`, a shell step ending in `; `): servers
    on one machine then act as machines of their own, where one relative target is a different directory."""
    return f'ForceCommand {first}cd {home} && eval "$SSH_ORIGINAL_COMMAND"\n'


class PeakMemory:
    """A process's own peak resident memory in KiB: its VmHWM, read from /proc until it is gone.

    Not wait4's ru_maxrss: that also counts the forked copy of the pytest process before the exec, so late in
    the suite it reports pytest's size (330 MB) instead of the child's. VmHWM belongs to the program's own
    memory (exec resets it) and only grows, so the last reading before the process ends is its peak.
    Start it right after Popen returns (the exec has happened by then)."""

    def __init__(self, pid: int) -> None:
        self.kib = 0
        self._status = f"/proc/{pid}/status"
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                with open(self._status) as handle:
                    hwm = next((line for line in handle if line.startswith("VmHWM:")), None)
            except OSError:
                return
            if hwm is None:  # a zombie: its memory is gone, the peak was read before
                return
            self.kib = max(self.kib, int(hwm.split()[1]))
            time.sleep(0.005)

    def result(self) -> int:
        """The peak, once the process has ended (and been reaped)."""
        self._thread.join(5)
        assert self.kib > 0, "the process's memory was never read"
        return self.kib


def tree(root: Path, skip: Path | None = None) -> dict[str, object]:
    """Every path below `root` (but not below `skip`) with its bytes, link text or 'dir'."""
    seen: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            seen[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            seen[rel] = "dir"
        else:
            seen[rel] = path.read_bytes()
    return seen
