"""Nothing outside the target (issue 14, items 1, 2, 3, 10 and 19), against real OpenSSH servers.

- rm, delete and prune refuse a target that is, on the server, the login's home, `/` or a directory above the
  home, however it is spelled (an absolute path, `/.`, `/../`, a symlink to it, `~`), before anything is removed.
- A shared path never goes through a symlink inside the release; one that is nowhere yet is an empty directory.
- Sources never read through a symlink that leaves the workspace, never loop, and ship links as links unless
  `dereference` (drone-scp's `tar_dereference`) is set, which follows them inside the workspace only.
- Two atomic deploys of the same commit started together both succeed, each in its own release directory.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, clean_env, one_error, plugin_env, rmtree, start_server, tree
from sshipit.errors import SettingsError
from sshipit.localserver import KeyPair, LocalServer
from sshipit.plan import ReleaseSpec
from sshipit.release import final_release
from sshipit.rules import guard_refusal, precious_reason
from sshipit.sources import Listing, collect


def chown_like(reference: Path, *paths: Path) -> None:
    owner = reference.stat()
    for path in paths:
        os.lchown(path, owner.st_uid, owner.st_gid)


# ----------------------------------------------------------------------------------------------- 1: the home

HOME_USER = "sshipit-homeguard"  # a login of its own: if the guard failed, only its home would be emptied


@pytest.fixture(scope="module")
def home_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    srv = start_server(server_root / "home-guard", keys, user=HOME_USER, authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def home_sftp_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """The same login on a server that allows SFTP only (the upload's SFTP fallback)."""
    srv = start_server(server_root / "home-guard-sftp", keys, "ForceCommand internal-sftp\n", user=HOME_USER,
                       authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture
def home(home_server: LocalServer) -> Iterator[Path]:
    """The login's home with what must survive: .ssh/authorized_keys and a marker file."""
    path = Path(pwd.getpwnam(HOME_USER).pw_dir)
    (path / ".ssh").mkdir(exist_ok=True)
    (path / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAA keep-me\n")
    (path / "marker.txt").write_text("still here\n")
    chown_like(path, path / ".ssh", path / ".ssh/authorized_keys", path / "marker.txt")
    yield path
    for name in os.listdir(path):  # whatever a test left, so that the next one starts alike
        if name not in (".ssh", "marker.txt", ".bashrc", ".profile", ".bash_logout"):
            rmtree(path / name) if (path / name).is_dir() and not (path / name).is_symlink() \
                else (path / name).unlink()


@pytest.fixture
def home_link(home: Path) -> Iterator[Path]:
    """A symlink to the home, somewhere the login can reach."""
    folder = Path(tempfile.mkdtemp(prefix="home-link-"))
    folder.chmod(0o755)
    (folder / "app").symlink_to(home)
    yield folder / "app"
    shutil.rmtree(folder)


def spellings(home: Path, link: Path) -> list[tuple[str, int]]:
    """Ways to write the home (or a directory above it, or `/`), with the exit status: 2 where the spelling is
    refused before connecting, 1 where only the server can tell."""
    return [(str(home), 1), (f"{home}/", 1), (f"{home}/.", 1), (f"{home}/../{home.name}", 1), (f"{home}//", 1),
            (str(link), 1), (f"{link}/.", 1), (str(home.parent), 2), ("~", 2), ("~/", 2), ("~/.", 2), ("/", 2),
            (str(link.parent.parent), 2)]  # /tmp: a system directory


class TestTheHomeIsNeverCleared:
    @pytest.mark.parametrize(("how", "clearing"), [("tar", {"rm": True}), ("tar", {"delete": "marker.txt"}),
                                                   ("tar", {"prune": True}), ("sftp", {"rm": True}),
                                                   ("sftp", {"delete": "marker.txt"})])
    def test_every_spelling_of_the_home_is_refused_before_anything_is_removed(
        self, how: str, clearing: dict[str, object], home_server: LocalServer, home_sftp_server: LocalServer,
        keys: dict[str, KeyPair], home: Path, home_link: Path, workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("hello\n")
        before = tree(home)
        srv = home_server if how == "tar" else home_sftp_server
        for target, status in spellings(home, home_link):
            result = run_sshipit(env=plugin_env(srv, keys["ed25519"], target=target, sources="dist", **clearing))
            line = one_error(result, status, "[setting: target]")
            assert "refuse" in line or "root directory" in line, result
            assert tree(home) == before, f"{target}: the home changed\n{result}"
            assert (home / ".ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA keep-me\n"
            assert (home / "marker.txt").read_text() == "still here\n"

    def test_the_server_side_refusal_names_what_the_target_is(
        self, home_server: LocalServer, keys: dict[str, KeyPair], home: Path, home_link: Path, workspace: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "f.txt").write_text("x\n")
        result = run_sshipit(env=plugin_env(home_server, keys["ed25519"], target=str(home_link), sources="f.txt",
                                            rm=True))
        line = one_error(result, 1, f"target {home_link}", f"is {home} on the server, the login's home",
                         "[setting: target]")
        assert "nothing was changed" in line
        assert not (home / "f.txt").exists()

    def test_a_directory_of_the_home_is_still_emptied(
        self, home_server: LocalServer, keys: dict[str, KeyPair], home: Path, home_link: Path, workspace: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        """The guard is not a blanket refusal: `rm` in a directory below the home, spelled through a link to the
        home, works and leaves the home itself alone."""
        app = home / "app"
        app.mkdir()
        (app / "old.txt").write_text("old\n")
        chown_like(home, app, app / "old.txt")
        (workspace / "new.txt").write_text("new\n")
        result = run_sshipit(env=plugin_env(home_server, keys["ed25519"], target=f"{home_link}/app",
                                            sources="new.txt", rm=True))
        assert result.returncode == 0, result
        assert sorted(os.listdir(app)) == ["new.txt"]
        assert (home / "marker.txt").exists() and (home / ".ssh/authorized_keys").exists()

    @pytest.mark.parametrize("how", ["tar", "sftp"])
    def test_a_delete_path_through_a_symlink_is_refused(
        self, how: str, server: LocalServer, sftp_only_server: LocalServer, keys: dict[str, KeyPair],
        remote_dir: Path, workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        """`delete: [link/keep.txt]` with target/link -> a directory outside: rm -rf would follow the link."""
        outside = remote_dir / "outside"
        outside.mkdir()
        (outside / "keep.txt").write_text("keep\n")
        target = remote_dir / "target"
        target.mkdir()
        (target / "link").symlink_to(outside)
        chown_like(remote_dir, outside, outside / "keep.txt", target, target / "link")
        (workspace / "f.txt").write_text("x\n")
        srv = server if how == "tar" else sftp_only_server
        result = run_sshipit(env=plugin_env(srv, keys["ed25519"], target=str(target), sources="f.txt",
                                            delete="link/keep.txt"))
        one_error(result, 1, "link, a symlink", "[setting: target]")
        assert (outside / "keep.txt").read_text() == "keep\n"
        assert sorted(os.listdir(target)) == ["link"]  # nothing uploaded either

    def test_the_guards_words_are_read_back(self) -> None:
        assert guard_refusal("sshipit-refused home /home/u /home/u\n") == "is /home/u on the server, the login's home"
        assert guard_refusal("x\nsshipit-refused home /home /home/u\n") == \
            "is /home on the server, above the login's home /home/u"
        assert guard_refusal("sshipit-refused system /etc\n") == "is /etc on the server, a system directory"
        assert guard_refusal("tar: error\n") is None
        assert precious_reason("/home/u", "/home/u") == "is /home/u on the server, the login's home"
        assert precious_reason("/home", "/home/u") is not None and precious_reason("/", "/home/u") is not None
        assert precious_reason("/home/u/app", "/home/u") is None
        assert precious_reason("/home/us", "/home/u") is None  # a sibling whose name starts alike


# -------------------------------------------------------------------------------------- 2 and 10: shared paths


def atomic(run_sshipit: RunSshipit, server: LocalServer, key: KeyPair, target: Path, **settings: object) -> Result:
    settings.setdefault("sources", "dist")
    return run_sshipit(env=plugin_env(server, key, target=str(target), atomic=True, **settings))


class TestShared:
    def test_a_shared_path_through_a_symlink_in_the_build_is_refused_and_touches_nothing_outside(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        some_dir = remote_dir / "some-dir"  # writable by the login, as /some/dir was in the report
        (some_dir / "logs").mkdir(parents=True)
        (some_dir / "logs/app.log").write_text("precious log\n")
        chown_like(remote_dir, some_dir, some_dir / "logs", some_dir / "logs/app.log")
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("v1\n")
        (workspace / "dist/storage").symlink_to(some_dir)
        target = remote_dir / "target"
        before = tree(some_dir)
        for attempt in (1, 2):
            if attempt == 2:  # the application wrote there meanwhile
                (some_dir / "logs/recreated.log").write_text("new\n")
                chown_like(remote_dir, some_dir / "logs/recreated.log")
                before = tree(some_dir)
            result = atomic(run_sshipit, server, keys["ed25519"], target, shared="dist/storage/logs/")
            one_error(result, 1, "shared path dist/storage/logs/ goes through dist/storage, a symlink in the "
                      f"release (-> {some_dir})", "[setting: shared]")
            assert tree(some_dir) == before, result
            assert not (target / "current").exists() and os.listdir(target / "releases") == []
            assert os.listdir(target / "shared") == []  # checked before anything moved

        # Sharing the link itself replaces the link (never what it points to) by the shared directory.
        result = atomic(run_sshipit, server, keys["ed25519"], target, shared="dist/storage",
                        post_commands="mkdir -p dist/storage/logs && echo mine > dist/storage/logs/own.log")
        assert result.returncode == 0, result
        assert tree(some_dir) == before
        assert os.readlink(target / "current/dist/storage") == "../../../shared/dist/storage"
        assert (target / "shared/dist/storage/logs/own.log").read_text() == "mine\n"

    def test_a_shared_path_in_neither_place_is_an_empty_directory(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("v1\n")
        for n in (1, 2):
            result = atomic(run_sshipit, server, keys["ed25519"], remote_dir, shared="storage",
                            post_commands=f"mkdir -p storage/cache && echo run{n} >> storage/log && test -d storage")
            assert result.returncode == 0, result
            assert (remote_dir / "shared/storage").is_dir() and not (remote_dir / "shared/storage").is_symlink()
            assert (remote_dir / "current/storage").is_dir() and (remote_dir / "current/storage").is_symlink()
        assert (remote_dir / "shared/storage/log").read_text() == "run1\nrun2\n"
        assert (remote_dir / "shared/storage/cache").is_dir()

    def test_a_shared_file_is_seeded_from_the_build_and_a_directory_path_must_be_one(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/app.env").write_text("A=1\n")
        result = atomic(run_sshipit, server, keys["ed25519"], remote_dir, shared="dist/app.env",
                        script="echo B=2 >> dist/app.env")
        assert result.returncode == 0, result
        assert (remote_dir / "shared/dist/app.env").is_file()
        assert (remote_dir / "current/dist/app.env").read_text() == "A=1\nB=2\n"

        (workspace / "dist/conf").write_text("a file\n")
        result = atomic(run_sshipit, server, keys["ed25519"], remote_dir / "other", shared="dist/conf/")
        one_error(result, 1, "shared path dist/conf/ must be a directory", "[setting: shared]")
        assert not (remote_dir / "other/current").exists() and not (remote_dir / "other/shared/dist").exists()

    def test_a_symlinked_releases_directory_is_refused(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        """releases/ pointing elsewhere would make pruning and discarding remove releases somewhere else."""
        elsewhere = remote_dir / "elsewhere"
        (elsewhere / "20200101-000000.000").mkdir(parents=True)
        target = remote_dir / "target"
        target.mkdir()
        (target / "releases").symlink_to(elsewhere)
        chown_like(remote_dir, elsewhere, elsewhere / "20200101-000000.000", target, target / "releases")
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("v1\n")
        before = tree(elsewhere)
        result = atomic(run_sshipit, server, keys["ed25519"], target)
        one_error(result, 1, "releases is a symlink", "[setting: target]")
        assert tree(elsewhere) == before


# ------------------------------------------------------------------------------------------------ 3: sources


@pytest.fixture
def linked(workspace: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A build with every kind of link that tripped the sources up, and a directory outside the workspace."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.conf").write_text("not the build's\n")
    dist = workspace / "dist"
    (dist / "sub").mkdir(parents=True)
    (dist / "a.conf").write_text("a\n")
    (dist / "sub/b.conf").write_text("b\n")
    (workspace / "shared-assets").mkdir()
    (workspace / "shared-assets/logo.svg").write_text("<svg/>\n")
    (dist / "assets").symlink_to(elsewhere)  # leaves the workspace
    (dist / "loop").symlink_to(".")  # back to its own directory
    (dist / "sub/up").symlink_to("..")
    (dist / "self").symlink_to("self")
    (dist / "c1").symlink_to("c2")
    (dist / "c2").symlink_to("c1")
    (dist / "logo").symlink_to("../shared-assets")  # a directory inside the workspace
    (dist / "current.conf").symlink_to("a.conf")  # a file inside the workspace
    return workspace, elsewhere


SAFE = ["!assets", "!loop", "!up", "!self", "!c1", "!c2"]  # the links dereference refuses


class TestSources:
    @pytest.mark.parametrize("sources", [["dist/**/*.conf"], ["dist/**"], ["dist"], ["dist/*"], ["dist/*/*"],
                                         ["dist/**/b.conf", "dist/a.conf"], ["."], ["**/*.svg"]])
    @pytest.mark.parametrize("dereference", [False, True])
    def test_links_never_lead_outside_nor_loop_and_both_walks_agree(
        self, linked: tuple[Path, Path], sources: list[str], dereference: bool
    ) -> None:
        workspace, _ = linked
        if dereference:
            sources = [*sources, *SAFE]
        started = time.monotonic()
        fast = collect(workspace, sources, 0, Listing.start(workspace, sources), dereference)
        slow = collect(workspace, sources, 0, None, dereference)
        assert time.monotonic() - started < 10, "collecting ended"
        assert fast.entries == slow.entries and fast.warnings == slow.warnings
        real = os.path.realpath(workspace)
        for entry in fast.entries:
            if entry.kind == "symlink":
                assert not dereference, entry
                continue
            assert os.path.realpath(entry.local).startswith(real + "/") or os.path.realpath(entry.local) == real
            assert "loop/" not in entry.name and "/up/" not in entry.name, "no copy through a loop"
        assert not [e for e in fast.entries if e.kind == "file" and Path(e.local).read_text() == "not the build's\n"]
        names = {e.name: e.kind for e in fast.entries}
        if dereference and "dist/logo" in names:
            assert names["dist/logo"] == "dir" and names["dist/logo/logo.svg"] == "file"
        if not dereference:
            assert all(names.get(link, "symlink") == "symlink" for link in
                       ("dist/assets", "dist/loop", "dist/logo", "dist/current.conf", "dist/c1"))

    @pytest.mark.parametrize(("sources", "needle"), [
        (["dist/assets/secret.conf"], "reached through the symlink dist/assets, which leads outside the workspace"),
        (["dist/assets/*.conf"], "reached through the symlink dist/assets"),
        (["dist/assets/**"], "reached through the symlink dist/assets"),
    ])
    def test_a_named_file_behind_a_link_out_of_the_workspace_is_refused(
        self, linked: tuple[Path, Path], sources: list[str], needle: str
    ) -> None:
        workspace, _ = linked
        with pytest.raises(SettingsError) as caught:
            collect(workspace, sources, 0, Listing.start(workspace, sources))
        assert needle in str(caught.value) and caught.value.setting == "sources"

    @pytest.mark.parametrize(("excluded", "needle"), [
        (["!assets"], "dist/c1 is a symlink loop"),
        (["!c1", "!c2", "!self", "!loop", "!up"], "dist/assets is a symlink that leads outside the workspace"),
        (["!assets", "!c1", "!c2", "!self", "!up"], "dist/loop is a symlink to a directory that contains it"),
        (["!assets", "!c1", "!c2", "!self", "!loop"], "dist/sub/up is a symlink to a directory that contains it"),
    ])
    def test_dereference_refuses_what_it_cannot_follow(
        self, linked: tuple[Path, Path], excluded: list[str], needle: str
    ) -> None:
        workspace, _ = linked
        for listing in (True, False):
            sources = ["dist", *excluded]
            with pytest.raises(SettingsError) as caught:
                collect(workspace, sources, 0, Listing.start(workspace, sources) if listing else None, True)
            assert needle in str(caught.value) and caught.value.setting == "dereference"

    def test_deploy_ships_links_as_links_and_never_what_lies_outside(
        self, server: LocalServer, keys: dict[str, KeyPair], linked: tuple[Path, Path], remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir),
                                            sources=["dist/**/*.conf", "dist/loop", "dist/self"]), timeout=60)
        assert result.returncode == 0, result
        assert tree(remote_dir / "dist") == {
            "a.conf": b"a\n", "sub": "dir", "sub/b.conf": b"b\n", "current.conf": ("link", "a.conf"),
            "loop": ("link", "."), "self": ("link", "self")}
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir / "two"),
                                            sources="dist/assets/secret.conf"))
        one_error(result, 2, "dist/assets", "[setting: sources]")
        assert not (remote_dir / "two").exists()

    @pytest.mark.parametrize("name", ["dereference", "tar_dereference"])
    def test_dereference_uploads_what_links_point_to_inside_the_workspace(
        self, name: str, server: LocalServer, keys: dict[str, KeyPair], linked: tuple[Path, Path],
        remote_dir: Path, run_sshipit: RunSshipit,
    ) -> None:
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir),
                                            sources=["dist", *SAFE], strip_components=1, **{name: True}))
        assert result.returncode == 0, result
        assert tree(remote_dir) == {"a.conf": b"a\n", "current.conf": b"a\n", "logo": "dir",
                                    "logo/logo.svg": b"<svg/>\n", "sub": "dir", "sub/b.conf": b"b\n"}
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir / "two"),
                                            sources="dist", **{name: True}))
        one_error(result, 2, "dist/assets is a symlink that leads outside the workspace", "[setting: dereference]")
        assert not (remote_dir / "two").exists()


LINK_TARGETS = [".", "..", "../..", "a", "b", "a/x", "missing", "l0", "l1", "/", "/etc", "../../outside"]


@st.composite
def link_trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """Directories, files and symlinks (to anything: up, down, sideways, themselves, outside) in two levels."""
    names = ["a", "b", "l0", "l1", "f"]
    items = []
    for parent in ("", "a", "a/x"):
        for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4)):
            kind = draw(st.sampled_from(["dir", "file", "link"]))
            items.append((parent, name, draw(st.sampled_from(LINK_TARGETS)) if kind == "link" else kind))
    return items


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=link_trees(), dereference=st.booleans(),
       pattern=st.sampled_from(["dist", "dist/**", "dist/**/f", "dist/*/*", "dist/a/**", "dist/a/x/f"]))
def test_any_tree_of_links_is_collected_in_the_workspace_and_in_finite_time(
    tmp_path_factory: pytest.TempPathFactory, items: list[tuple[str, str, str]], dereference: bool, pattern: str
) -> None:
    root = tmp_path_factory.mktemp("links")
    workspace = root / "ws"
    (root / "outside").mkdir()
    (root / "outside/f").write_text("outside\n")
    dist = workspace / "dist"
    dist.mkdir(parents=True)
    for parent, name, what in items:
        folder = dist / parent
        if not folder.is_dir() or folder.is_symlink() or os.path.lexists(folder / name):
            continue
        if what == "dir":
            (folder / name).mkdir()
        elif what == "file":
            (folder / name).write_text("inside\n")
        else:
            (folder / name).symlink_to(what)
    results = []
    for listing in (True, False):
        started = time.monotonic()
        try:
            got = collect(workspace, [pattern], 0, Listing.start(workspace, [pattern]) if listing else None,
                          dereference)
            results.append(("ok", got.entries))
        except SettingsError as exc:
            results.append(("refused", exc.setting, str(exc)))
        assert time.monotonic() - started < 10
    assert results[0] == results[1], "find's listing and the Python walk agree"
    if results[0][0] == "ok":
        real = os.path.realpath(workspace)
        for entry in results[0][1]:
            assert entry.kind != "symlink" or not dereference
            if entry.kind == "file":
                assert os.path.realpath(entry.local).startswith(real + "/")
                assert Path(entry.local).read_text() == "inside\n"


# ---------------------------------------------------------------------------------------------- 19: release id

# Runs sshipit with a wall clock stopped at argv[1]: two deploys whose plans get the very same release id.
FROZEN = ("import sys, time\n"
          "now = float(sys.argv.pop(1))\n"
          "time.time = lambda: now\n"
          "from sshipit.cli import run\n"
          "run()\n")


def start(env: dict[str, str], home: Path, workspace: Path, clock: float | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "sshipit"] if clock is None else [sys.executable, "-c", FROZEN, str(clock)]
    return subprocess.Popen(argv, cwd=workspace, env=clean_env(home, env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen[str]) -> Result:
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        stdout, stderr = process.communicate()
        pytest.fail(f"sshipit did not finish\n{stdout}\n{stderr}")
    return Result([str(a) for a in process.args], process.returncode, stdout, stderr)  # type: ignore[union-attr]


class TestReleaseIds:
    def env(self, server: LocalServer, key: KeyPair, target: Path) -> dict[str, str]:
        return {**plugin_env(server, key, target=str(target), sources="dist", atomic=True, keep_releases=20,
                             script="sleep 0.3"),
                "DRONE_COMMIT_SHA": "abcdef1234567", "DRONE_BUILD_NUMBER": "7"}

    def check(self, target: Path, expected: int) -> None:
        releases = sorted(os.listdir(target / "releases"))
        assert len(releases) == expected, releases
        live = os.readlink(target / "current").split("/")[-1]
        assert live == releases[-1], "current is the newest release"
        for release in releases:
            meta = json.loads((target / "releases" / release / ".sshipit-release.json").read_text())
            assert meta["result"] == "ok" and meta["id"] == release
            assert (target / "releases" / release / "dist/index.html").read_text() == "v1\n"

    def test_two_deploys_of_one_commit_started_together_both_succeed(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path, tmp_path: Path
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("v1\n")
        env = self.env(server, keys["ed25519"], remote_dir)
        rounds = 3
        for _ in range(rounds):
            pair = [start(env, tmp_path, workspace) for _ in range(2)]
            for result in map(finish, pair):
                assert result.returncode == 0, result
        self.check(remote_dir, 2 * rounds)

    def test_the_same_release_id_twice_gets_two_directories(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path, tmp_path: Path
    ) -> None:
        """Both plans name the release alike (the clock is stopped): the second to hold the lock takes the next
        id, never the first one's directory."""
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("v1\n")
        env = self.env(server, keys["ed25519"], remote_dir)
        clock = 1_800_000_000.25
        pair = [start(env, tmp_path, workspace, clock) for _ in range(2)]
        for result in map(finish, pair):
            assert result.returncode == 0, result
        self.check(remote_dir, 2)
        assert sorted(os.listdir(remote_dir / "releases")) == ["20270115-080000.250-abcdef1",
                                                                "20270115-080000.251-abcdef1"]

    def test_a_clock_behind_still_makes_the_newest_release(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path, tmp_path: Path
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("v1\n")
        env = self.env(server, keys["ed25519"], remote_dir)
        assert finish(start(env, tmp_path, workspace)).returncode == 0
        first = os.readlink(remote_dir / "current").split("/")[-1]
        behind = finish(start(env, tmp_path, workspace, time.time() - 3600))
        assert behind.returncode == 0, behind
        second = os.readlink(remote_dir / "current").split("/")[-1]
        assert second > first, "ids keep sorting in deploy order"
        self.check(remote_dir, 2)

    def test_final_release(self) -> None:
        spec = ReleaseSpec("20261128-180000.500-abc1234", "abc1234")
        assert final_release(spec, []) is spec
        assert final_release(spec, ["20261128-175959.999-abc1234", "by-hand"]) is spec
        assert final_release(spec, [spec.id]).id == "20261128-180000.501-abc1234"
        assert final_release(spec, ["20261128-180000.999-fff"]).id == "20261128-180001.000-abc1234"
        assert final_release(spec, ["20300101-000000.000"]).id == "20300101-000000.001-abc1234"
        bare = ReleaseSpec("20261128-180000.500")
        assert final_release(bare, [bare.id]).id == "20261128-180000.501"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(st.sampled_from(["a", "b", ".h", "x.js", "y.conf", "a.b"]), min_size=1, max_size=4),
                      max_size=12),
       pattern=st.sampled_from(["**", "**/*.js", "a/**", "*", "*/*", "a/*/x.js", "**/a", "[ab]/**/*.conf",
                                "a/**/b/*", ".h/*", "?/?", "**/**/x.js", "a/b"]))
def test_without_symlinks_the_glob_matches_what_glob_glob_matches(
    tmp_path_factory: pytest.TempPathFactory, paths: list[list[str]], pattern: str
) -> None:
    """The link-safe glob (sources._expand) changes nothing where there is no link: the same matches as Python's."""
    import glob

    from sshipit.sources import _expand

    root = tmp_path_factory.mktemp("globs")
    for parts in paths:
        folder = root.joinpath(*parts[:-1])
        if any(p.is_file() for p in [folder, *folder.parents] if p != root and root in p.parents):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / parts[-1]).exists():
            (folder / parts[-1]).write_text("x")
    ours = _expand(str(root), pattern, False, lambda rel, is_dir: False)
    theirs = sorted({os.path.normpath(m) for m in glob.glob(pattern, root_dir=root, recursive=True,
                                                           include_hidden=True)
                     # glob names a missing `a`, or a FILE `a` as `a/`, for `a/**`: neither is under a directory a
                     if os.path.lexists(root / m) and not (m.endswith("/") and not (root / m).is_dir())} - {"."})
    assert ours == theirs
