"""The upload's server side (staging.staged_extract) against a real OpenSSH server: how many processes a redeploy
costs there, and that placing many top-level names at once (new ones renamed in one `mv`, the others merged by
one pass of each kind) lands what was built, checks everything before anything changes, and clears leftovers.

Processes are counted by the login's PATH: every tool the remote commands run is a wrapper that writes its name
and its session (from /proc, with shell builtins) to a log, then execs the real tool.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, one_error, plugin_env, server_bin_dir, start_server
from sshipit.localserver import KeyPair, LocalServer
from sshipit.staging import LISTED_NAMES

# Everything the probe, the listing and the upload may run; what is not found here is not wrapped (and not run).
TOOLS = ("sh", "find", "cp", "mv", "rm", "mkdir", "touch", "tar", "zstd", "gzip", "head", "cat", "grep", "date",
         "chown", "chmod", "ln", "xargs", "readlink", "stat", "id", "uname", "sleep", "env", "ls", "wc", "sed")
# The upload command of a redeploy that changes a file in each of three top-level directories: mkdir (staging),
# tar, mv or cat (manifest aside), cp, rm -rf, touch, mv; the check and the two passes that clear the way run in
# the upload's shell over the stream's own names (staging.listed_names). A stream of more names than
# staging.LISTED_NAMES adds find+sh (check), find+sh (directories), find+sh (the rest): 13. It was 31 when each
# top-level name had its own passes.
UPLOAD_PROCESSES = 7


@pytest.fixture(scope="module")
def counting_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[tuple[LocalServer, Path]]:
    workdir = server_root / "counting"
    bin_dir = server_bin_dir(workdir / "counting-bin")
    log = workdir / "exec.log"
    log.touch()
    log.chmod(0o666)
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            continue
        wrapper = bin_dir / tool
        # Field 6 of /proc/PID/stat is the session: one per remote command (sshd starts each in its own).
        wrapper.write_text('#!/bin/sh\nIFS=" " read -r pid comm state ppid group sid rest < /proc/$$/stat\n'
                           f'printf "%s %s\\n" "$sid" {tool} >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    srv = start_server(workdir, keys, f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin\n")
    yield srv, log
    srv.stop()


def by_command(log: Path) -> list[list[str]]:
    """The tools each remote command ran, in order, one list a command (session)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for line in log.read_text().splitlines():
        sid, tool = line.split()
        groups[sid].append(tool)
    return list(groups.values())


def ok(result: Result) -> Result:
    assert result.returncode == 0, result
    return result


@pytest.mark.parametrize("many", [False, True], ids=["listed", "walked"])
def test_a_redeploy_runs_one_pass_of_each_kind_over_every_merged_name(
    counting_server: tuple[LocalServer, Path], keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit, many: bool,
) -> None:
    """A few changed names: the passes run in the upload's shell over the stream's names, no find; more names
    than staging.LISTED_NAMES: one find pass of each kind over the staging. Either way, what changed lands."""
    server, log = counting_server
    dist = workspace / "dist"
    for top in ("a", "b", "c"):
        for n in range(5):
            (dist / top / f"s{n}").mkdir(parents=True)
            (dist / top / f"s{n}" / "f.txt").write_text(f"{top}{n}\n")
    extra = [dist / "a" / "s4" / f"x{n}.txt" for n in range(LISTED_NAMES + 1 if many else 0)]
    for path in extra:
        path.write_text("x\n")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", strip_components=1,
                     compress="none")
    ok(run_sshipit(env=env))
    for top in ("a", "b", "c"):
        (dist / top / "s3" / "f.txt").write_text(f"{top} changed\n")
    for path in extra:
        path.write_text("x, changed\n")
    log.write_text("")
    ok(run_sshipit(env=env))
    commands = by_command(log)
    uploads = [tools for tools in commands if "tar" in tools and "cp" in tools]
    assert len(uploads) == 1, commands
    assert len(uploads[0]) <= (13 if many else UPLOAD_PROCESSES), uploads[0]
    assert uploads[0].count("find") == (3 if many else 0) and uploads[0].count("cp") == 1, uploads[0]
    for top in ("a", "b", "c"):
        assert (remote_dir / top / "s3" / "f.txt").read_text() == f"{top} changed\n"
        assert (remote_dir / top / "s1" / "f.txt").read_text() == f"{top}1\n"
    assert all((remote_dir / path.relative_to(dist)).read_text() == "x, changed\n" for path in extra)
    assert not [p for p in os.listdir(remote_dir) if p.startswith(".sshipit-")]


@pytest.mark.parametrize("many", [False, True], ids=["listed", "walked"])
def test_new_and_merged_names_of_every_spelling_land_together(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, tmp_path: Path,
    run_sshipit: RunSshipit, many: bool,
) -> None:
    """Top-level names the glob must find (dot names, `..x`, a name with a space or a leading dash), some new and
    some merged in one upload, with type changes among the merged ones: all land as built, nothing outside; over
    the stream's own names and (`many`: more than staging.LISTED_NAMES) over find's walk alike."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "theirs.txt").write_text("not ours\n")
    outside.chmod(0o777)
    dist = workspace / "dist"
    dist.mkdir()
    names = (".well-known", "..x", "-dash", "with space", "plain")
    for name in names:
        (dist / name).mkdir()
        (dist / name / "f.txt").write_text(f"{name} v1\n")
    (dist / "link").symlink_to(outside)  # a link out of the target, as built: replaced by a directory later
    (dist / "file").write_text("a file, a directory later\n")
    if many:
        (dist / "plain" / "many").mkdir()
        for n in range(LISTED_NAMES + 1):
            (dist / "plain" / "many" / f"{n}.txt").write_text(f"{n}\n")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", incremental=False)
    ok(run_sshipit(env=env))
    for name in names[:3]:
        (dist / name / "f.txt").write_text(f"{name} v2\n")
    for name in ("new one", ".new", "..new"):
        (dist / name).mkdir()
        (dist / name / "g.txt").write_text(f"{name}\n")
    (dist / "link").unlink()
    (dist / "link").mkdir()
    (dist / "link" / "theirs.txt").write_text("ours, inside the target\n")
    (dist / "file").unlink()
    (dist / "file").mkdir()
    (dist / "file" / "inner.txt").write_text("inner\n")
    ok(run_sshipit(env=env))
    landed = remote_dir / "dist"
    for name in names:
        assert (landed / name / "f.txt").read_text() == f"{name} {'v2' if name in names[:3] else 'v1'}\n"
    for name in ("new one", ".new", "..new"):
        assert (landed / name / "g.txt").read_text() == f"{name}\n"
    assert not (landed / "link").is_symlink() and (landed / "link/theirs.txt").read_text().startswith("ours")
    assert (landed / "file/inner.txt").read_text() == "inner\n"
    assert (outside / "theirs.txt").read_text() == "not ours\n" and sorted(os.listdir(outside)) == ["theirs.txt"]
    assert not [p for p in os.listdir(landed) if p.startswith(".sshipit-")]
    assert sorted(os.listdir(remote_dir)) == ["dist"]


@pytest.mark.parametrize("many", [False, True], ids=["listed", "walked"])
def test_an_unwritable_directory_in_one_name_stops_every_name_before_anything_changes(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    many: bool,
) -> None:
    """The check runs once over all merged names: a root-owned directory deep in the last one refuses the upload
    while the first name's changed file and a new name are still unplaced (over the stream's names, and over
    find's walk when there are more than staging.LISTED_NAMES)."""
    dist = workspace / "dist"
    for name in ("a", "m", "z"):
        (dist / name / "deep").mkdir(parents=True)
        (dist / name / "deep" / "f.txt").write_text(f"{name} v1\n")
    extra = [dist / "a" / "deep" / f"x{n}.txt" for n in range(LISTED_NAMES + 1 if many else 0)]
    for path in extra:
        path.write_text("x\n")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", strip_components=1)
    ok(run_sshipit(env=env))
    os.chown(remote_dir / "z" / "deep", 0, 0)
    for path in extra:
        path.write_text("x, changed\n")
    for name in ("a", "m", "z"):
        (dist / name / "deep" / "f.txt").write_text(f"{name} v2, longer\n")
    (dist / "b-new").mkdir()
    (dist / "b-new" / "g.txt").write_text("new\n")
    result = run_sshipit(env=env)
    one_error(result, 1, "permission denied", "z/deep")
    assert sorted(os.listdir(remote_dir)) == ["a", "m", "z"]
    for name in ("a", "m", "z"):
        assert (remote_dir / name / "deep" / "f.txt").read_text() == f"{name} v1\n"
    assert all((remote_dir / path.relative_to(dist)).read_text() == "x\n" for path in extra)


def test_a_leftover_staging_goes_after_an_hour_and_a_fresh_one_stays(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """The `find -mmin +60` sweep runs only when the glob finds a leftover; it still removes old ones only."""
    login = remote_dir.stat()
    old, fresh = remote_dir / ".sshipit-upload.0123456789ab", remote_dir / ".sshipit-upload.ba9876543210"
    for path in (old, fresh):
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "x").write_text("left by a killed deploy\n")
        for p in (path, path / "sub", path / "sub" / "x"):
            os.chown(p, login.st_uid, login.st_gid)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    (workspace / "dist").mkdir()
    (workspace / "dist" / "f.txt").write_text("f\n")
    ok(run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist")))
    assert sorted(os.listdir(remote_dir)) == [fresh.name, "dist"]
    assert (remote_dir / "dist" / "f.txt").read_text() == "f\n"
