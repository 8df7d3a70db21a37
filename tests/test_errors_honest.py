"""Errors that say what happened (issue 14, items 15-18), each against a real OpenSSH server, faults made with
real processes:

- a wrong `fingerprint` against a server with one (or two) host key types: a host key mismatch, at once, never a
  retried "connection reset";
- a local file that cannot be read (a path over 4,096 bytes, a file deleted during the upload): named, with the
  system's reason, never "the connection was lost"; and nothing of that upload placed on the server;
- the connection cut during `post_commands`, after the switch: the summary, `current` and the release's metadata
  all say the new release is live;
- `command_timeout` against a server that stopped answering (its sshd session processes SIGSTOPped): the step
  ends within the timeout plus a small grace, and never claims to have stopped what it could not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, cut_connections, one_error, plugin_env, start_server
from sshipit.errors import local_cause, local_file_error
from sshipit.localserver import KeyPair, LocalServer, generate_key
from test_faults import (
    current,
    finish,
    releases,
    session_processes,
    site_v1,
    site_v2,
    size,
    snapshot,
    staging_dirs,
    start_sshipit,
    wait_for,
    write_random,
)

META = ".sshipit-release.json"


# ------------------------------------------------------------------------------------------------------ helpers


class OneHostKeyServer(LocalServer):
    """A real sshd whose configuration has exactly one HostKey line (ed25519): the only key type it can offer."""

    def _config_text(self) -> str:
        lines = super()._config_text().splitlines()
        kept = [line for line in lines if not line.startswith("HostKey ") or line.endswith("ssh_host_ed25519_key")]
        assert len(kept) == len(lines) - 2, "LocalServer no longer writes one HostKey line per key type"
        return "\n".join(kept) + "\n"


def sshd_children(server: LocalServer) -> list[int]:
    """The sshd processes serving connections (monitor and network process), not the listener."""
    assert server.pid is not None
    found: list[int] = []
    todo = [server.pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if int(fields[1]) == parent and name.startswith("sshd") and fields[0] != "Z":
                found.append(int(entry))
                todo.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stall_when(marker: Path, what: str, proc: subprocess.Popen[str], server: LocalServer,
               stalled: list[int]) -> tuple[Result, float]:
    """Once `marker` exists, SIGSTOP every sshd process serving the deploy (recorded in `stalled`, for the
    caller's clean-up), and wait for sshipit to give up: its result and the seconds it took after the stall."""
    wait_for(marker.exists, proc, what)
    began = time.monotonic()
    stalled += sshd_children(server)
    assert stalled, "no sshd process served the deploy"
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    result = finish(proc, timeout=60)
    return result, time.monotonic() - began


def offered(line: str) -> list[str]:
    return [word.rstrip(",") for word in line.split() if word.startswith("SHA256:")]


def release_result(target: Path, release: str) -> str:
    return str(json.loads((target / "releases" / release / META).read_text())["result"])


def summary_rows(result: Result) -> dict[str, list[str]]:
    """The summary table's rows by host: [result, host, release, ...]."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("summary: "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        cells = line.split()
        rows[cells[1]] = cells
    return rows


@pytest.fixture(scope="module")
def honest_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd of this module's own: these tests stop and kill its session processes."""
    srv = start_server(server_root / "honest", keys, authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture
def live(honest_server: LocalServer) -> LocalServer:
    return honest_server.start()


@pytest.fixture
def home(tmp_path: Path, run_sshipit: RunSshipit) -> Path:
    return tmp_path / "home"


def settings(server: LocalServer, key: KeyPair, target: Path, **more: object) -> dict[str, str]:
    more.setdefault("sources", "dist")
    return plugin_env(server, key, target=str(target), **more)


# ---------------------------------------------------------------------------------- 15: host key mismatch


@pytest.fixture(scope="module")
def one_key_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    workdir = server_root / "one-host-key"
    srv = OneHostKeyServer(workdir)
    srv.authorize(keys["ed25519"].public_text)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def two_key_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    srv = start_server(server_root / "two-host-keys", keys, "HostKeyAlgorithms ssh-ed25519,rsa-sha2-512\n",
                       authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.mark.parametrize(("which", "pin"), [("one HostKey", "fingerprint"), ("two key types", "fingerprint"),
                                           ("one HostKey", "known_hosts")])
def test_wrong_pin_is_a_mismatch_never_a_retried_reset(
    which: str, pin: str, one_key_server: LocalServer, two_key_server: LocalServer, keys: dict[str, KeyPair],
    run_sshipit: RunSshipit, remote_dir: Path, tmp_path: Path,
) -> None:
    server = one_key_server if which == "one HostKey" else two_key_server
    types = ["ssh-ed25519"] if which == "one HostKey" else ["ssh-ed25519", "ssh-rsa"]
    other = generate_key(tmp_path, "ecdsa", name="other").public_text
    if pin == "fingerprint":
        given = {"fingerprint": asyncssh.import_public_key(other).get_fingerprint("sha256")}
    else:
        given = {"fingerprint": None, "known_hosts": f"[{server.host}]:{server.port} {' '.join(other.split()[:2])}"}
    mark = len(server.log_text())
    marker = remote_dir / "ran"
    started = time.monotonic()
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], retries=3, commands=f"touch {marker}", **given))
    elapsed = time.monotonic() - started
    line = one_error(result, 1, "host key does not match: the server offered", "[setting: fingerprint / known_hosts]")
    assert sorted(offered(line)) == sorted(server.fingerprints()[t] for t in types), line
    assert "attempt" not in result.output and "reset" not in result.output.lower(), result
    log = server.log_text()[mark:]
    # One connection per key type family asked for (never a retry of the whole): the first, then the rest.
    assert log.count("Connection from") <= len(types) + 1, log
    assert "Accepted" not in log and not marker.exists()
    assert elapsed < 10, f"{elapsed:.1f}s: a mismatch must not wait for retries\n{result}"


def test_right_fingerprint_on_a_one_key_server_connects(
    one_key_server: LocalServer, two_key_server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    """The fix does not refuse what is right: the one key pinned, or the second type of a two-type server."""
    for server, key_type in ((one_key_server, "ssh-ed25519"), (two_key_server, "ssh-rsa")):
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], fingerprint=server.fingerprints()[key_type],
                                            commands="echo login=$(id -un)"))
        assert result.returncode == 0, result
        assert f"login={server.user}" in result.stdout and "(host key verified)" in result.stdout, result
    # known_hosts with the one key's line, and with lines of all three types (two the server does not offer).
    lines = one_key_server.known_hosts().splitlines()
    for text in ([line for line in lines if " ssh-ed25519 " in line], lines):
        result = run_sshipit(env=plugin_env(one_key_server, keys["ed25519"], fingerprint=None,
                                            known_hosts="\n".join(text), commands="echo login=$(id -un)"))
        assert result.returncode == 0 and "(host key verified)" in result.stdout, result


# ------------------------------------------------------------------------------------------- 16: local errors


def deep_file(root: Path, length: int = 4300) -> str:
    """A real file whose path (from `root`) is longer than `length` bytes, made through directory descriptors
    (no path that long can be opened). Returns its name."""
    part = "d" * 200
    fd = os.open(root, os.O_RDONLY)
    total = len(str(root))
    try:
        while total < length:
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
            total += len(part) + 1
        out = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"deep\n")
        os.close(out)
    finally:
        os.close(fd)
    return "deep.txt"


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_path_over_4096_bytes_is_named_as_a_local_error(
    atomic: bool, live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    server, key = live, keys["ed25519"]
    dist = site_v1(workspace)
    assert run_sshipit(env=settings(server, key, remote_dir, atomic=atomic)).returncode == 0
    before, good = snapshot(remote_dir), current(remote_dir)
    site_v2(dist)
    deep_file(dist / "new")
    result = run_sshipit(env=settings(server, key, remote_dir, atomic=atomic))
    line = one_error(result, 1, "File name too long", "deep.txt", "[setting: sources]")
    assert "connection" not in line, line
    assert len(line) < 1000, "a 4 KiB path is shortened in the error line"
    if atomic:
        assert current(remote_dir) == good and releases(remote_dir) == [good.split("/")[-1]]
        assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v1</h1>\n"
    else:
        assert snapshot(remote_dir) == before and staging_dirs(remote_dir) == []


@pytest.mark.parametrize(("atomic", "compress"), [(False, "none"), (True, "none"), (False, "gzip")],
                         ids=["plain", "atomic", "plain-gzip"])
def test_file_deleted_during_the_upload_is_named_and_nothing_is_placed(
    atomic: bool, compress: str, live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    home: Path, run_sshipit: RunSshipit,
) -> None:
    """dist/z.txt is deleted while dist/m_big.bin (before it in the stream) is on its way: the error names
    z.txt and the system's reason; the files already streamed (a new index.html) are not placed either."""
    server, key = live, keys["ed25519"]
    dist = site_v1(workspace)
    (dist / "z.txt").write_text("z1\n")
    assert run_sshipit(env=settings(server, key, remote_dir, atomic=atomic, compress=compress)).returncode == 0
    before, good = snapshot(remote_dir), current(remote_dir)
    site_v2(dist)
    (dist / "z.txt").write_text("z2\n")
    write_random(dist / "m_big.bin", 64)
    proc = start_sshipit(workspace, home, settings(server, key, remote_dir, atomic=atomic, compress=compress))

    def in_flight() -> bool:
        return any(size(path) > 0 for path in remote_dir.glob("*/*/dist/m_big.bin")) or \
            any(size(remote_dir / s / "dist/m_big.bin") > 0 for s in staging_dirs(remote_dir))

    wait_for(in_flight, proc, "the upload to be under way")
    os.kill(proc.pid, signal.SIGSTOP)  # hold the client still: z.txt goes before the client reaches it
    try:
        (dist / "z.txt").unlink()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    result = finish(proc)
    line = one_error(result, 1, "z.txt", "No such file or directory", "[setting: sources]")
    assert "connection" not in line, line
    if atomic:
        assert current(remote_dir) == good and releases(remote_dir) == [good.split("/")[-1]]
        assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v1</h1>\n"
    else:
        assert snapshot(remote_dir) == before and staging_dirs(remote_dir) == []


@settings_profile(max_examples=300, deadline=None)
@given(path=st.text(min_size=1, max_size=6000), code=st.sampled_from(
    [errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENAMETOOLONG, errno.EIO]))
def test_local_error_line_is_bounded_and_names_the_file(path: str, code: int) -> None:
    """Whatever the path: one DeployError naming the file's last part and the system's reason, never the
    network, at most ~300 characters of path, with the sources setting and a hint."""
    error = local_file_error(path, OSError(code, os.strerror(code), path))
    assert error.setting == "sources" and error.hint and error.phase == "upload"
    assert os.strerror(code) in error.message and "connection" not in error.line()
    assert path[-100:] in error.message
    assert len(error.message) < 400 + len(os.strerror(code))
    if len(path) <= 200:
        assert f"cannot read {path} on this machine" in error.message
    assert local_cause(OSError(code, os.strerror(code), path)) is not None
    assert local_cause(ConnectionResetError(errno.ECONNRESET, "reset")) is None
    assert local_cause(TimeoutError()) is None


# ------------------------------------------------------------------------- 17: lost after the switch


def test_connection_cut_during_post_commands_tells_what_is_live(
    live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, home: Path,
    run_sshipit: RunSshipit,
) -> None:
    """Cut during post_commands: nothing can be switched back, so the summary, `current` and the new release's
    metadata agree that the new release is live; and the next deploy goes on from there."""
    server, key = live, keys["ed25519"]
    dist = site_v1(workspace)
    assert run_sshipit(env=settings(server, key, remote_dir, atomic=True)).returncode == 0
    old = current(remote_dir)
    assert old is not None
    old_id = old.split("/")[-1]
    site_v2(dist)
    started = remote_dir / "post-started"
    post = f'["touch {started}; sleep 30; touch {remote_dir}/post-finished"]'
    proc = start_sshipit(workspace, home, settings(server, key, remote_dir, atomic=True, post_commands=post))
    try:
        wait_for(started.exists, proc, "the post_command to start")
        assert cut_connections(server), "no sshd process served the deploy"
        result = finish(proc)
    finally:
        kill_all(session_processes(server.port))
    live_now = current(remote_dir)
    assert live_now is not None and live_now != old
    new_id = live_now.split("/")[-1]
    line = one_error(result, 1, "post_commands", "connection was lost",
                     f"current still points to {new_id}", "not switched back")
    assert "switched back to" not in line
    # The summary: the new release on that host, not "old"; and no "previous release stays".
    row = summary_rows(result)[server.host]
    assert row[0] == "FAILED" and row[2] == new_id, result
    assert f"release {new_id} is live on 1 host: {server.host}" in result.stdout, result
    assert "previous release stays" not in result.output, result
    # The server: current is the new release, whose metadata says it went live (not "preparing").
    assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v2</h1>\n"
    assert release_result(remote_dir, new_id) == "switched"
    assert release_result(remote_dir, old_id) == "ok"
    assert not (remote_dir / "post-finished").exists()

    again = run_sshipit(env=settings(server, key, remote_dir, atomic=True, lock_timeout="10s"))
    assert again.returncode == 0, again
    assert "removed unfinished" not in again.stdout  # the live release was never a leftover
    newest = current(remote_dir)
    assert newest not in (old, live_now) and release_result(remote_dir, newest.split("/")[-1]) == "ok"
    assert release_result(remote_dir, new_id) == "switched"


def test_post_commands_failing_still_switches_back(
    live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """The connection alive, a failing post_command switches back as before: the summary says the previous
    release stays, `current` is the old one and the new release says failed."""
    server, key = live, keys["ed25519"]
    dist = site_v1(workspace)
    assert run_sshipit(env=settings(server, key, remote_dir, atomic=True)).returncode == 0
    old = current(remote_dir)
    site_v2(dist)
    result = run_sshipit(env=settings(server, key, remote_dir, atomic=True, post_commands="exit 3"))
    one_error(result, 3, "post_commands", "switched back to")
    assert current(remote_dir) == old
    assert summary_rows(result)[server.host][2] == "old"
    assert f"the previous release stays on 1 host: {server.host}" in result.stdout
    failed = [r for r in releases(remote_dir) if f"releases/{r}" != old]
    assert len(failed) == 1 and release_result(remote_dir, failed[0]) == "failed"


# ------------------------------------------------------------------------------ 18: timeout, stalled server


@pytest.mark.parametrize("atomic", [False, True], ids=["plain-commands", "atomic-post_commands"])
def test_command_timeout_against_a_stalled_server(
    atomic: bool, live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, home: Path,
    run_sshipit: RunSshipit,
) -> None:
    """The sshd session processes are SIGSTOPped while a command runs: the step ends within command_timeout plus
    a small grace (not when the keepalives give up, ~75 s), exit 124, and the line says the stop is unknown
    (the command does still run); in atomic mode, that the new release stays live."""
    server, key = live, keys["ed25519"]
    dist = site_v1(workspace)
    if atomic:
        assert run_sshipit(env=settings(server, key, remote_dir, atomic=True)).returncode == 0
        site_v2(dist)
    started = remote_dir / "started"
    script = json.dumps([f"touch {started}; sleep 120; touch {remote_dir}/late"])
    steps = {"post_commands": script} if atomic else {"script": script}
    proc = start_sshipit(workspace, home, settings(server, key, remote_dir, atomic=atomic, command_timeout="5s",
                                                  **steps))
    stalled: list[int] = []
    try:
        result, waited = stall_when(started, "the command to start", proc, server, stalled)
        # The command was not stopped: it still runs (the server never got a kill), as the line says.
        still = [pid for pid in session_processes(server.port)
                 if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    finally:
        kill_all(stalled)
        kill_all(session_processes(server.port))
    # 5 s from the command's start (just before `started`), 4 s to try stopping it, and a little slack.
    assert waited < 5 + 4 + 3, f"{waited:.1f}s after the stall\n{result}"
    setting = "post_commands" if atomic else "commands"
    line = one_error(result, 124, f"{setting} did not finish within 5s", "the server stopped answering",
                     "whether it is still running is unknown", "[setting: command_timeout]")
    assert "was stopped" not in line
    assert still, "the command was stopped after all: then the line should say so"
    if atomic:
        new = current(remote_dir)
        assert new is not None and (remote_dir / "current/dist/index.html").read_text() == "<h1>v2</h1>\n"
        new_id = new.split("/")[-1]
        assert f"current still points to {new_id}" in line
        assert summary_rows(result)[server.host][2] == new_id
        assert release_result(remote_dir, new_id) == "switched"


def test_command_timeout_on_an_answering_server_still_says_stopped(
    live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """The server answers: the run is stopped (TERM, then KILL) and the line says so, in about the timeout."""
    server, key = live, keys["ed25519"]
    site_v1(workspace)
    began = time.monotonic()
    result = run_sshipit(env=settings(server, key, remote_dir, command_timeout="2s",
                                      script=f'["sleep 120; touch {remote_dir}/late"]'))
    elapsed = time.monotonic() - began
    one_error(result, 124, "commands did not finish within 2s and was stopped", "[setting: command_timeout]")
    assert elapsed < 2 + 4 + 2 + 3, result
    time.sleep(1)
    survivors = [pid for pid in session_processes(server.port)
                 if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    states = [Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] for pid in survivors
              if Path(f"/proc/{pid}/stat").exists()]
    assert all(state == "Z" for state in states), survivors


def test_health_check_retry_against_a_server_that_stopped_answering(
    live: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, home: Path,
    run_sshipit: RunSshipit,
) -> None:
    """The server stalls between two health check attempts: the next attempt cannot even open its session, and
    the step still ends within healthcheck_timeout plus the grace; the new release stays live, and says so."""
    server, key = live, keys["ed25519"]
    dist = site_v1(workspace)
    assert run_sshipit(env=settings(server, key, remote_dir, atomic=True)).returncode == 0
    site_v2(dist)
    tried = remote_dir / "tried"
    proc = start_sshipit(workspace, home, settings(server, key, remote_dir, atomic=True, healthcheck_timeout="8s",
                                                  healthcheck=f"touch {tried}; exit 1"))
    stalled: list[int] = []
    try:
        result, waited = stall_when(tried, "the first health check attempt", proc, server, stalled)
    finally:
        kill_all(stalled)
        kill_all(session_processes(server.port))
    assert waited < 8 + 4 + 3, f"{waited:.1f}s after the stall\n{result}"
    new = current(remote_dir)
    assert new is not None
    new_id = new.split("/")[-1]
    line = one_error(result, 124, "health check failed after 2 attempts", "the server stopped answering",
                     f"current still points to {new_id}", "[setting: healthcheck]")
    assert "was stopped" not in line
    assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v2</h1>\n"
    assert summary_rows(result)[server.host][2] == new_id
    assert release_result(remote_dir, new_id) == "switched"


# Wrapped around every command of the login: the one that switches `current` first stops the user's sshd network
# process (its parent), then runs all the same. The switch happens on the server; its answer never comes back.
_STALL_AT_SWITCH = """#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
  *"mv -fT"*) kill -STOP "$PPID" ;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


@pytest.fixture(scope="module")
def stall_at_switch_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    workdir = server_root / "stall-at-switch"
    workdir.mkdir(parents=True)
    workdir.chmod(0o711)
    wrapper = workdir / "wrapper.sh"
    wrapper.write_text(_STALL_AT_SWITCH)
    wrapper.chmod(0o755)
    srv = start_server(workdir, keys, f"ForceCommand {wrapper}\n", authorize=("ed25519",))
    yield srv
    srv.stop()


def test_connection_lost_during_the_switch_says_current_is_unknown(
    stall_at_switch_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    """The switch command runs but its answer never arrives: nobody can tell from here where `current` points,
    and the error, the summary row and its footnote say exactly that (not "the previous release stays")."""
    server, key = stall_at_switch_server, keys["ed25519"]
    dist = site_v1(workspace)
    base = settings(server, key, remote_dir, atomic=True, keepalive="1s")
    first = run_sshipit(env=base)
    # The first deploy switches too: the server stalls, and that deploy fails the same way.
    assert first.returncode == 1 and "current is unknown on 1 host" in first.stdout, first
    kill_all(sshd_children(server))
    old = current(remote_dir)
    assert old is not None and release_result(remote_dir, old.split("/")[-1]) == "switched"
    site_v2(dist)
    stalled: list[int] = []
    began = time.monotonic()
    try:
        result = run_sshipit(env=base, timeout=90)
    finally:
        stalled = sshd_children(server)
        kill_all(stalled)
    elapsed = time.monotonic() - began
    new = current(remote_dir)
    assert new is not None and new != old
    new_id = new.split("/")[-1]
    line = one_error(result, 1, "switch", f"the connection was lost while current was switched to {new}",
                     f"it may point there or still to {old}", "[setting: host]")
    assert "switched back" not in line
    assert summary_rows(result)[server.host][2] == "unknown"
    assert f"current is unknown on 1 host (the connection was lost while it was switched): {server.host}" \
        in result.stdout, result
    assert "previous release stays" not in result.output and "is live on" not in result.output, result
    # What the server holds agrees with itself: the release current points to says it went live.
    assert release_result(remote_dir, new_id) == "switched"
    assert (remote_dir / "current/dist/index.html").read_text() == "<h1>v2</h1>\n"
    assert elapsed < 30, f"{elapsed:.1f}s: keepalives of 1 s should give up within seconds\n{result}"
