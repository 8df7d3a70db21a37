"""Faults against a real OpenSSH server, each checked by what the server holds afterwards.

Every test asserts the exit status, one clear `error:` line (no traceback), and the target's state: in plain mode
the files that were there stay byte for byte and no half-written new file is visible (only a hidden
`.sshipit-upload.*` staging directory may be left); in atomic mode `current` is untouched.

Covered elsewhere, not repeated here (`test_the_other_faults_are_covered_elsewhere` checks they still exist):
- a server that accepts TCP but never speaks SSH: tests/test_connect.py::test_connect_timeout
- a command that never ends (plain mode): tests/test_deploy.py::TestCommands::test_command_timeout_stops_the_run
"""

from __future__ import annotations

import ast
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import REPO, Result, clean_env, cut_connections, one_error, plugin_env, rmtree, start_server
from sshipit.localserver import KeyPair, LocalServer, default_login_user
from sshipit.manifest import plain_manifest_key, user_manifest_path

STAGING = ".sshipit-upload."


# ------------------------------------------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, object]:
    """What a visitor of `root` sees: every path (staging directories left out) with its bytes, link or 'dir'."""
    seen: dict[str, object] = {}
    if not root.exists():
        return seen
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0].startswith(STAGING):
            continue
        if path.is_symlink():
            seen[str(rel)] = ("link", os.readlink(path))
        elif path.is_dir():
            seen[str(rel)] = "dir"
        else:
            seen[str(rel)] = path.read_bytes()
    return seen


def staging_dirs(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.name.startswith(STAGING))
    except FileNotFoundError:
        return []


def size(path: Path) -> int:
    """The size of a file that may vanish at any moment (-1: not there)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def current(target: Path) -> str | None:
    link = target / "current"
    return os.readlink(link) if link.is_symlink() else None


def releases(target: Path) -> list[str]:
    folder = target / "releases"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def write_random(path: Path, megabytes: int) -> None:
    """Incompressible content, so that the upload really takes that many bytes on the wire."""
    with open(path, "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))


def site_v1(workspace: Path) -> Path:
    dist = workspace / "dist"
    (dist / "css").mkdir(parents=True)
    (dist / "index.html").write_text("<h1>v1</h1>\n")
    (dist / "css/site.css").write_text("body { color: black }\n")
    (dist / "data.bin").write_bytes(bytes(range(256)) * 64)
    return dist


def site_v2(dist: Path) -> None:
    """Every old file changed, one new file and one new directory."""
    (dist / "index.html").write_text("<h1>v2</h1>\n")
    (dist / "css/site.css").write_text("body { color: red }\n")
    (dist / "data.bin").write_bytes(bytes(reversed(range(256))) * 64)
    (dist / "new").mkdir()
    (dist / "new/page.html").write_text("new\n")


def start_sshipit(workspace: Path, home: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=clean_env(home, env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"sshipit did not finish within {timeout}s after the fault\n{out}\n{err}")
    return Result([str(a) for a in proc.args], proc.returncode, out, err)  # type: ignore[union-attr]


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 60) -> None:
    """Poll until `condition` holds; fail (with sshipit's output) if sshipit ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            result = finish(proc)
            pytest.fail(f"sshipit ended before {what}\n{result}")
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    result = finish(proc)
    pytest.fail(f"timed out waiting for {what}\n{result}")


def session_processes(port: int) -> list[int]:
    """Processes of SSH sessions on `port` (the remote commands), even once reparented."""
    found = []
    marker = f" 127.0.0.1 {port}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if any(v.startswith(b"SSH_CONNECTION=") and v.endswith(marker) for v in environ.split(b"\0")):
            found.append(int(entry))
    return found


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fault_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd of this module's own: these tests kill it, and the session's shared server must live on."""
    srv = start_server(server_root / "faults", keys, authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture
def live_server(fault_server: LocalServer) -> LocalServer:
    """The fault server, started again if the previous test killed it (on the same port)."""
    return fault_server.start()


@pytest.fixture
def home(tmp_path: Path, run_sshipit: RunSshipit) -> Path:
    """The empty HOME of the `run_sshipit` runs, for the runs this module starts itself."""
    return tmp_path / "home"


def settings(server: LocalServer, key: KeyPair, target: Path, **more: object) -> dict[str, str]:
    more.setdefault("sources", "dist")
    return plugin_env(server, key, target=str(target), **more)


# ------------------------------------------------------------------------------------------------ sshd killed


class TestServerKilledDuringUpload:
    def test_plain_keeps_previous_files_and_shows_no_partial_file(
        self, live_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        home: Path, run_sshipit: RunSshipit,
    ) -> None:
        server, key = live_server, keys["ed25519"]
        dist = site_v1(workspace)
        first = run_sshipit(env=settings(server, key, remote_dir))
        assert first.returncode == 0, first
        before = snapshot(remote_dir)
        assert before["dist/index.html"] == b"<h1>v1</h1>\n"

        site_v2(dist)
        write_random(dist / "big.bin", 200)
        proc = start_sshipit(workspace, home, settings(server, key, remote_dir))

        def in_flight() -> bool:
            return any(size(remote_dir / s / "dist/big.bin") > 0 for s in staging_dirs(remote_dir))

        wait_for(in_flight, proc, "the upload to be under way")
        os.kill(proc.pid, signal.SIGSTOP)  # hold the client still, so the kill lands mid-stream for sure
        try:
            assert not (remote_dir / "dist/big.bin").exists(), "the upload finished before the kill"
            server.kill()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        result = finish(proc)

        one_error(result, 1, "connection was lost during", "upload", "[setting: host]")
        assert snapshot(remote_dir) == before  # byte for byte, and no new file visible
        assert not (remote_dir / "dist/big.bin").exists() and not (remote_dir / "dist/new").exists()

        server.start()
        (dist / "big.bin").unlink()
        again = run_sshipit(env=settings(server, key, remote_dir))
        assert again.returncode == 0, again
        after = snapshot(remote_dir)
        assert after["dist/index.html"] == b"<h1>v2</h1>\n"
        assert after["dist/css/site.css"] == b"body { color: red }\n"
        assert after["dist/data.bin"] == bytes(reversed(range(256))) * 64
        assert after["dist/new/page.html"] == b"new\n"
        assert set(after) == {*before, "dist/new", "dist/new/page.html"}

    def test_atomic_keeps_current_and_the_next_deploy_cleans_up(
        self, live_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        home: Path, run_sshipit: RunSshipit,
    ) -> None:
        server, key = live_server, keys["ed25519"]
        dist = site_v1(workspace)
        first = run_sshipit(env=settings(server, key, remote_dir, atomic=True))
        assert first.returncode == 0, first
        good = current(remote_dir)
        assert good is not None
        live_before = snapshot(remote_dir / good)

        site_v2(dist)
        write_random(dist / "big.bin", 200)
        proc = start_sshipit(workspace, home, settings(server, key, remote_dir, atomic=True))

        def in_flight() -> bool:
            return any(size(remote_dir / "releases" / r / "dist/big.bin") > 0 for r in releases(remote_dir)
                       if f"releases/{r}" != good)

        wait_for(in_flight, proc, "the upload to be under way")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            server.kill()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        result = finish(proc)

        one_error(result, 1, "connection was lost", "[setting: host]")
        assert current(remote_dir) == good
        assert snapshot(remote_dir / "current") == live_before
        assert (remote_dir / ".sshipit/lock").is_dir()  # left by the killed deploy; the next one takes it over

        server.start()
        (dist / "big.bin").unlink()
        again = run_sshipit(env=settings(server, key, remote_dir, atomic=True, lock_timeout="10s"))
        assert again.returncode == 0, again
        assert "removed unfinished release" in again.stdout
        assert current(remote_dir) != good
        assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v2</h1>\n"
        assert (remote_dir / "current/dist/new/page.html").read_text() == "new\n"
        assert not (remote_dir / "current/dist/big.bin").exists()
        assert len(releases(remote_dir)) == 2 and not (remote_dir / ".sshipit/lock").exists()


# --------------------------------------------------------------------------------------- cut during commands


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_connection_cut_during_commands(
    atomic: bool, live_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    home: Path, run_sshipit: RunSshipit,
) -> None:
    """The connection dies while a command runs: exit 1, one line saying so and which command had started;
    plain: the upload that finished before is complete; atomic: nothing switched, and the next deploy works."""
    server, key = live_server, keys["ed25519"]
    dist = site_v1(workspace)
    first = run_sshipit(env=settings(server, key, remote_dir, atomic=atomic))
    assert first.returncode == 0, first
    good = current(remote_dir)
    site_v2(dist)
    started = remote_dir / "started"
    script = f'["echo one", "touch {started}; sleep 30; touch {remote_dir}/finished"]'
    proc = start_sshipit(workspace, home, settings(server, key, remote_dir, atomic=atomic, script=script))
    try:
        wait_for(started.exists, proc, "the command to start")
        assert cut_connections(server), "no sshd process served the deploy"
        result = finish(proc)
    finally:
        for pid in session_processes(server.port):  # the orphaned `sleep 30`, so it cannot touch anything later
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    line = one_error(result, 1, "connection was lost while the commands ran", "command 2", "[setting: host]")
    assert "check the server before running the deploy again" in line
    assert not (remote_dir / "finished").exists()
    if not atomic:
        after = snapshot(remote_dir)
        assert after["dist/index.html"] == b"<h1>v2</h1>\n" and after["dist/new/page.html"] == b"new\n"
        assert staging_dirs(remote_dir) == []  # the upload had finished: its staging is gone
        return
    assert current(remote_dir) == good
    assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v1</h1>\n"
    again = run_sshipit(env=settings(server, key, remote_dir, atomic=True, lock_timeout="10s"))
    assert again.returncode == 0, again
    assert "removed unfinished release" in again.stdout
    assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v2</h1>\n"
    assert len(releases(remote_dir)) == 2


# ------------------------------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(remote_dir: Path) -> Iterator[Path]:
    """A 2 MB tmpfs owned by the login user, mounted inside the login's home; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a tmpfs and need root (CI runs as root; run the tests as root)")
    mount = shutil.which("mount")
    if mount is None:
        pytest.fail("the disk-full tests need mount(8) (util-linux)")
    point = remote_dir / "disk"
    point.mkdir()
    user = default_login_user()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size=2m,mode=0755,uid={user.pw_uid},gid={user.pw_gid}",
                           "tmpfs", str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full tests (needs root and mount permission, e.g. "
                    f"a privileged container): {done.stderr.strip()}")
    try:
        shown = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SIZE", str(point)], capture_output=True, text=True,
                               check=False).stdout.split()
        assert shown[:1] == ["tmpfs"], f"findmnt does not show the tmpfs at {point}: {shown}"
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_disk_fills_up_during_the_upload(
    atomic: bool, live_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, small_disk: Path,
    run_sshipit: RunSshipit,
) -> None:
    """More than fits: exit 1, one line saying the disk is full and naming `target`; the old files (plain) or
    `current` (atomic) untouched; no partial file visible; the space is given back, so a deploy that fits works."""
    server, key = live_server, keys["ed25519"]
    target = small_disk / "site"
    dist = site_v1(workspace)
    first = run_sshipit(env=settings(server, key, target, atomic=atomic))
    assert first.returncode == 0, first
    before = snapshot(target)
    good = current(target)
    manifest = server.home / user_manifest_path(plain_manifest_key(str(target)))
    manifest_before = manifest.read_bytes() if not atomic else b""

    site_v2(dist)
    write_random(dist / "big.bin", 3)  # 3 MB of incompressible data into a 2 MB disk
    result = run_sshipit(env=settings(server, key, target, atomic=atomic))
    one_error(result, 1, "disk holding", "is full", "[setting: target]")
    assert snapshot(target) == before
    if atomic:
        assert current(target) == good and releases(target) == [good.split("/")[-1]]
    else:
        assert not (target / "dist/big.bin").exists() and not (target / "dist/new").exists()
        assert staging_dirs(target) == []  # a failed extraction removes its staging: the space is free again
        # The manifest travels in the failed stream: the stored one still describes the files that are there.
        assert manifest.read_bytes() == manifest_before
        assert [p.name for p in manifest.parent.iterdir() if p.name.startswith(manifest.name)] == [manifest.name]

    (dist / "big.bin").unlink()
    write_random(dist / "fits.bin", 1)
    again = run_sshipit(env=settings(server, key, target, atomic=atomic))
    assert again.returncode == 0, again
    root = target / "current" if atomic else target
    assert (root / "dist/index.html").read_text() == "<h1>v2</h1>\n"
    assert (root / "dist/fits.bin").read_bytes() == (dist / "fits.bin").read_bytes()


# --------------------------------------------------------------------------------------- target not writable


@pytest.fixture
def locked_dir() -> Iterator[Path]:
    """A root-owned 0755 directory in the login's home: the login user may enter it but not write there."""
    if os.geteuid() != 0:
        pytest.fail("the not-writable tests need a root-owned directory; run the tests as root")
    user = default_login_user()
    path = Path(tempfile.mkdtemp(prefix="locked-", dir=user.pw_dir))
    path.chmod(0o755)
    assert path.stat().st_uid == 0
    yield path
    rmtree(path)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_target_the_user_may_not_write(
    atomic: bool, live_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, locked_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    server, key = live_server, keys["ed25519"]
    site_v1(workspace)
    (locked_dir / "keep.txt").write_text("root's\n")
    for target in (locked_dir, locked_dir / "sub"):
        result = run_sshipit(env=settings(server, key, target, atomic=atomic, script="touch ran"))
        one_error(result, 1, "permission denied", str(target), f"as {server.user}", "[setting: target / username]")
        assert sorted(p.name for p in locked_dir.iterdir()) == ["keep.txt"]  # nothing created, nothing run
        assert (locked_dir / "keep.txt").read_text() == "root's\n"
    assert pwd.getpwuid(locked_dir.stat().st_uid).pw_name == "root"


# ------------------------------------------------------------------------------------------ command never ends


def test_command_that_never_ends_in_atomic_mode_keeps_current(
    live_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    """command_timeout in atomic mode (plain mode: tests/test_deploy.py): 124, and nothing switched."""
    server, key = live_server, keys["ed25519"]
    dist = site_v1(workspace)
    assert run_sshipit(env=settings(server, key, remote_dir, atomic=True)).returncode == 0
    good = current(remote_dir)
    site_v2(dist)
    started = time.monotonic()
    result = run_sshipit(env=settings(server, key, remote_dir, atomic=True, command_timeout="2s",
                                      script=f'["sleep 300; touch {remote_dir}/late"]'))
    one_error(result, 124, "did not finish within 2s", "[setting: command_timeout]")
    assert time.monotonic() - started < 30
    assert current(remote_dir) == good and releases(remote_dir) == [good.split("/")[-1]]
    assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v1</h1>\n"
    assert not (remote_dir / ".sshipit/lock").exists()


# -------------------------------------------------------------------------------------------- covered elsewhere


@pytest.mark.parametrize("where", [
    "tests/test_connect.py::test_connect_timeout",
    "tests/test_deploy.py::TestCommands::test_command_timeout_stops_the_run",
])
def test_the_other_faults_are_covered_elsewhere(where: str) -> None:
    """The connect timeout and the plain-mode command timeout are tested elsewhere; make sure they still are."""
    path, *names = where.split("::")
    tree = ast.parse((REPO / path).read_text())
    scope: list[ast.stmt] = tree.body
    for name in names:
        found = next((node for node in scope if isinstance(node, ast.FunctionDef | ast.ClassDef)
                      and node.name == name), None)
        assert found is not None, f"{where} is gone: the fault it covered is untested now"
        scope = found.body
