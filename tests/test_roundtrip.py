"""Round trip of random trees through real deploys (hypothesis, bounded for CI's 2 cores), and the network round
trips an atomic deploy waits for (through the delaying relay of test_wire and bench/wan.py).

Each example builds a random tree (names of any bytes but / and NUL, file modes, directory modes, mtimes in and out
of the range both upload paths carry, symlinks to anything), deploys it fresh over tar and over SFTP, then a second
random tree drawn from the same few names (so paths change type, content, mode and mtime, vanish and appear)
incrementally with prune over tar and again over SFTP. After every deploy the server's files are read straight
from its file system (the sshd runs on this machine) and compared with a model of what must be there: the build,
with mtimes clamped, plus what each path leaves by design (an unchanged file keeps its earlier mtime; prune removes
files, not directories; without prune, files that left the build stay).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import plugin_env, rmtree
from helpers import run_sshipit as run
from sshipit.localserver import KeyPair, LocalServer, default_login_user
from test_fidelity import built, tree
from test_wire import HALF, Relays, times_at_each_delay

Node = tuple[object, ...]  # ("file", content, mode, mtime) | ("dir", mode) | ("link", destination)
Tree = dict[bytes, Node]

names = (st.binary(min_size=1, max_size=6).map(lambda n: n.replace(b"/", b"|").replace(b"\0", b"~"))
         .filter(lambda n: n not in (b".", b"..")))
mtimes = st.one_of(st.sampled_from([-2**31, -1, 0, 1, 2**32 - 1, 2**32, 10**10]), st.integers(-10**9, 5 * 10**9))
files = st.tuples(st.just("file"), st.binary(max_size=40), st.integers(0, 0o777), mtimes)
links = st.tuples(st.just("link"), st.binary(min_size=1, max_size=12).map(lambda d: d.replace(b"\0", b"~")))
dir_modes = st.integers(0, 0o77).map(lambda m: 0o700 | m)  # the login must be able to write into its directories


@st.composite
def trees(draw: st.DrawFn, pool: list[bytes], depth: int = 3) -> Tree:
    out: Tree = {}
    for name in draw(st.lists(st.sampled_from(pool), unique=True, max_size=4)):
        kind = draw(st.sampled_from(["file", "file", "link", "dir"] if depth > 0 else ["file", "link"]))
        if kind == "file":
            out[name] = draw(files)
        elif kind == "link":
            out[name] = draw(links)
        else:
            out[name] = ("dir", draw(dir_modes))
            for below, node in draw(trees(pool, depth - 1)).items():
                out[name + b"/" + below] = node
    return out


@st.composite
def two_trees(draw: st.DrawFn) -> tuple[Tree, Tree]:
    pool = draw(st.lists(names, min_size=2, max_size=4, unique=True))
    return draw(trees(pool)), draw(trees(pool))


def write(root: bytes, build: Tree) -> None:
    """The build on disk under root/dist (made anew)."""
    dist = root + b"/dist"
    if os.path.lexists(dist):
        rmtree(Path(os.fsdecode(dist)))
    os.mkdir(dist)
    os.chmod(dist, 0o755)
    for rel in sorted(build, key=lambda p: p.split(b"/")):
        node, path = build[rel], dist + b"/" + rel
        if node[0] == "dir":
            os.mkdir(path)
        elif node[0] == "link":
            os.symlink(node[1], path)  # type: ignore[arg-type]
        else:
            with open(path, "wb") as handle:
                handle.write(node[1])  # type: ignore[arg-type]
            os.chmod(path, node[2])  # type: ignore[arg-type]
            os.utime(path, (node[3], node[3]))  # type: ignore[arg-type]
    for rel, node in build.items():  # directory modes last: a 0700 parent is still entered by root, but be plain
        if node[0] == "dir":
            os.chmod(dist + b"/" + rel, node[1])  # type: ignore[arg-type]


def overlay(old: Tree, new: Tree, keep_files: bool) -> Tree:
    """What a deploy of `new` leaves over `old`: `new`, plus what it does not replace. Paths of `old` that `new`
    lacks stay (files and symlinks only with keep_files: prune removes them) unless below a path that `new` has
    as a file or symlink (the old directory went with its type)."""
    result = dict(new)
    for path, node in old.items():
        if path in new or (node[0] != "dir" and not keep_files):
            continue
        parts = path.split(b"/")
        if any(new.get(b"/".join(parts[:n]), ("dir",))[0] != "dir" for n in range(1, len(parts))):
            continue
        result[path] = node
    return result


def unchanged_keep_mtime(old: Tree, expected: Tree) -> Tree:
    """Incremental: a file whose content and mode the server already has is not sent, and keeps its mtime."""
    out = dict(expected)
    for path, node in expected.items():
        before = old.get(path)
        if node[0] == "file" and before is not None and before[:3] == node[:3]:
            out[path] = before
    return out


def _undecodable(name: bytes) -> bool:
    try:
        name.decode()
    except UnicodeDecodeError:
        return True
    return False


@pytest.fixture(scope="module")
def area() -> Iterator[Path]:
    """Workspace, HOME and targets for every example, targets in the login's home (owned by the login)."""
    login = default_login_user()
    top = Path(tempfile.mkdtemp(prefix="roundtrip-", dir=login.pw_dir))
    os.chown(top, login.pw_uid, login.pw_gid)
    top.chmod(0o755)
    yield top
    rmtree(top)


@settings(max_examples=24, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(pair=two_trees())
def test_random_trees_round_trip_fresh_incremental_and_over_sftp(
    pair: tuple[Tree, Tree], server: LocalServer, sftp_only_server: LocalServer, keys: dict[str, KeyPair],
    area: Path,
) -> None:
    first, second = pair
    # What the example exercises (pytest --hypothesis-show-statistics)
    event(f"paths changing type: {sum(1 for p in first if p in second and first[p][0] != second[p][0]) > 0}")
    event(f"non-UTF-8 names: {any(_undecodable(p) for p in (*first, *second))}")
    nodes = [*first.values(), *second.values()]
    event(f"mtimes out of range: {any(n[0] == 'file' and not 0 <= n[3] < 2**32 for n in nodes)}")  # type: ignore[operator]
    login = default_login_user()
    example = Path(tempfile.mkdtemp(dir=area))
    os.chown(example, login.pw_uid, login.pw_gid)
    example.chmod(0o755)
    workspace, home = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    targets = {"tar": example / "tar", "sftp": example / "sftp"}
    hosts = {"tar": server, "sftp": sftp_only_server}
    try:
        def deploy(how: str) -> None:
            env = plugin_env(hosts[how], keys["ed25519"], target=str(targets[how]), sources="dist",
                             prune=how == "tar")
            result = run(cwd=workspace, home=home, env=env, timeout=60)
            assert result.returncode == 0 and "Traceback" not in result.output, result

        def both() -> None:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(deploy, targets))

        ws = os.fsencode(workspace)
        write(ws, first)
        both()
        fresh = built(ws)
        landed = {how: tree(target) for how, target in targets.items()}
        assert landed["tar"] == fresh
        assert landed["sftp"] == fresh

        write(ws, second)
        both()
        now = built(ws)
        assert tree(targets["tar"]) == unchanged_keep_mtime(landed["tar"], overlay(landed["tar"], now, False))
        assert tree(targets["sftp"]) == overlay(landed["sftp"], now, True)  # SFTP sends all, and never prunes
    finally:
        for path in (example, workspace, home):
            rmtree(path)


# ------------------------------------------------------------------------------------- network round trips


def round_trips_at_least(run: RunSshipit, relays: Relays, env: dict[str, str], prepare: Callable[[], None],
                         runs: int = 5) -> float:
    """Round trips on the critical path, as test_wire.round_trips counts them, from the fastest of `runs` deploys
    at each delay: other work on the machine only ever adds time, and would be counted as round trips."""
    times = times_at_each_delay(run, relays, env, prepare, runs)
    return (min(times[HALF]) - min(times[0.0])) / (2 * HALF)


@pytest.fixture
def relays() -> Iterator[Relays]:
    made = Relays()
    yield made
    made.close()


def test_an_atomic_redeploy_with_a_command_waits_for_few_round_trips(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, relays: Relays, workspace: Path,
    remote_dir: Path,
) -> None:
    """Issue 17's goal for an atomic deploy, one command included: 10 round trips (15 before, measured the same
    way): TCP and the key exchange and login (3), the lock's exec, which also reads the releases, runs the probe
    and lists the live release (1), the upload, whose command also makes the release directory (2: its stream
    follows the exec's answer), the command (2: its script goes on stdin), the switch (1), and one command that
    records the release ok, prunes old ones and lets go of the lock (1); the lock is still gone when the deploy
    has ended. Half a round trip of slack: the count is a difference of timings."""
    site = workspace / "dist"
    for n in range(40):
        (site / f"d{n % 4}").mkdir(parents=True, exist_ok=True)
        (site / f"d{n % 4}" / f"f{n}.txt").write_text(f"file {n}\n")
    port = relays.add(server.port)
    env = plugin_env(server, keys["ed25519"], port=port, sources="dist", target=str(remote_dir), atomic=True,
                     commands="true", keep_releases=3)
    assert run_sshipit(env=env).returncode == 0
    counter = iter(range(100))

    def edit() -> None:  # one changed file per deploy: a seeded release, an upload, then the switch
        (site / "d1" / "f1.txt").write_text(f"edit {next(counter)}\n")

    assert round_trips_at_least(run_sshipit, relays, env, edit) <= 10.5
    edit()
    last = run_sshipit(env=env)  # the listing read in the lock's exec is used: one file travels, not 40
    assert last.returncode == 0 and "uploaded 1 files" in last.stdout and "39 unchanged files" in last.stdout, last
    releases = sorted(p.name for p in (remote_dir / "releases").iterdir())
    assert len(releases) == 3  # pruned in the final command
    assert os.readlink(remote_dir / "current") == f"releases/{releases[-1]}"
    assert (remote_dir / "current/dist/d1/f1.txt").read_text() == "edit 10\n"
    assert not (remote_dir / ".sshipit/lock").exists()
