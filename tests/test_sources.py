"""The source walk: GNU find's listing (made in parallel with the plan) and the Python walk it falls back to must
give exactly the same entries, in the same order, for any tree, exclusions and strip_components.

Real files on the local disk; no server needed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sshipit.errors import SettingsError
from sshipit.sources import Collected, Listing, _walk, collect


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A build with what trips walks up: names that sort around "/", spaces, a newline, bytes that are not UTF-8,
    hidden files, empty and setgid directories, symlinks (to a file, a directory, nowhere) and a FIFO."""
    workspace = tmp_path / "ws"
    dist = workspace / "dist"
    for directory in ("a", "a.b", "a-b", "a/x", "a/x/deep", "empty", "node_modules/pkg", ".hidden", "sub dir"):
        (dist / directory).mkdir(parents=True, exist_ok=True)
    files = {"a/1.txt": "one", "a/x/2.js": "two", "a/x/deep/3.map": "three", "a.b/f": "f", "a-b/g": "g",
             "node_modules/pkg/index.js": "pkg", ".hidden/.env": "secret", "sub dir/with space.txt": "s",
             "top.txt": "top", "a/x/2.js.map": "map", "Zeta": "upper case sorts first"}
    for name, text in files.items():
        (dist / name).write_text(text)
    (dist / "line\nbreak.txt").write_text("newline")
    os.mkdir(os.path.join(os.fsencode(dist), b"caf\xe9"))  # Latin-1 bytes, not UTF-8
    with open(os.path.join(os.fsencode(dist), b"caf\xe9", b"menu\xff.txt"), "w") as f:
        f.write("bytes")
    (dist / "a/link-to-file").symlink_to("1.txt")
    (dist / "link-to-dir").symlink_to("a/x")
    (dist / "dangling").symlink_to("/nowhere/at/all")
    os.mkfifo(dist / "a/pipe")
    (dist / "a/x").chmod(0o2750)
    (dist / "top.txt").chmod(0o604)
    os.utime(dist / "top.txt", (1_600_000_000.75, 1_600_000_000.75))
    return workspace


def both(workspace: Path, sources: list[str], strip: int = 0) -> tuple[Collected, Collected]:
    """collect() with find's listing and with the Python walk alone."""
    listing = Listing.start(workspace, sources)
    return collect(workspace, sources, strip, listing), collect(workspace, sources, strip)


CASES = [
    (["dist"], 0),
    (["dist"], 1),
    (["dist"], 2),
    (["dist"], 3),
    (["dist/"], 1),
    (["."], 0),
    (["."], 2),
    (["dist", "!node_modules", "!*.map", "!.hidden/"], 1),
    (["dist", "!a/", "!/dist/top.txt"], 0),
    (["dist/a", "dist/a.b", "!x"], 2),
    (["dist/**/*.js*", "!*.map"], 2),
    (["dist/a", "dist/top.txt", "!deep"], 1),
    ([".", "!ws", "!node_modules"], 0),  # the workspace's own name is "ws": it is not excluded
    (["dist", "!x/", "!a.b", "!1.txt", "!top.txt/"], 1),  # dirs only, whole names, a file's name
    (["dist", "!node_modules", "!!node_modules"], 0),  # a re-inclusion: gitignore rules alone decide
]


@pytest.mark.parametrize(("sources", "strip"), CASES)
def test_find_listing_and_python_walk_agree(tree: Path, sources: list[str], strip: int) -> None:
    fast, slow = both(tree, sources, strip)
    assert fast.entries == slow.entries
    assert fast.warnings == slow.warnings
    assert fast.entries, "something was collected"


def test_the_find_listing_is_really_used_and_matches_the_walk(tree: Path) -> None:
    local = str(tree / "dist")
    listing = Listing.start(tree, ["dist"])
    records = listing.records(local)
    assert records is not None, "GNU find is on this machine (findutils): its listing must be used"
    assert records == _walk(local, "dist", lambda rel, is_dir: False)
    names = [record[0] for record in records]
    assert names.index("a") < names.index("a/x") < names.index("a.b"), names  # a's contents before a.b
    assert "caf\udce9/menu\udcff.txt" in names and "line\nbreak.txt" in names
    by_name = {record[0]: record for record in records}
    assert by_name["a/x"][1:3] == ("dir", 0o2750)
    assert by_name["top.txt"][1:5] == ("file", 0o604, 1_600_000_000, 3)
    assert by_name["dangling"][1] == "symlink" and by_name["dangling"][5] == "/nowhere/at/all"
    assert by_name["a/pipe"][1] == "other"


def test_entries_keep_what_tar_needs(tree: Path) -> None:
    fast, _ = both(tree, ["dist", "!node_modules"], 1)
    by_name = {entry.name: entry for entry in fast.entries}
    assert "node_modules" not in by_name and "node_modules/pkg/index.js" not in by_name
    assert by_name["top.txt"].local == str(tree / "dist/top.txt")
    assert (by_name["top.txt"].kind, by_name["top.txt"].size, by_name["top.txt"].mode) == ("file", 3, 0o604)
    assert by_name["link-to-dir"].kind == "symlink" and by_name["link-to-dir"].link == "a/x"
    assert "link-to-dir/2.js" not in by_name  # a symlinked directory is sent as the link, never entered
    assert by_name["a/x"].mode == 0o2750 and stat.S_IMODE(os.lstat(tree / "dist/a/x").st_mode) == 0o2750
    assert fast.warnings == ["source dist/a/pipe is not a file, directory or symlink; skipped"]


def fake_find(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "find").write_text("#!/bin/sh\n" + script)
    (bin_dir / "find").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("script", [
    "echo 'find: unrecognized: -printf' >&2; exit 1\n",  # BusyBox
    "printf 'd\\0755\\0' ; exit 0\n",  # a cut-short answer
    "printf 'not GNU find output\\n'; exit 0\n",
    "exec /usr/bin/find \"$@\"; \n",  # the real one, to show the fake's PATH is the one used
])
def test_without_a_usable_find_the_python_walk_decides(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    fake_find(tmp_path, monkeypatch, script)
    listing = Listing.start(tree, ["dist"])
    records = listing.records(str(tree / "dist"))
    listing.close()
    assert (records is not None) == script.startswith("exec"), "only a complete GNU answer is used"
    fast, slow = both(tree, ["dist", "!*.map"], 1)
    assert fast.entries == slow.entries and len(slow.entries) > 10


def test_no_find_at_all(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    fast, slow = both(tree, ["dist"], 0)
    assert fast.entries == slow.entries


def test_a_find_that_fails_leaves_the_explaining_to_the_python_walk(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # find reports an error (as for a directory it cannot read) and exits 1; the walk then finds the same
    # directory unlistable and says which one, as one settings error.
    fake_find(tmp_path, monkeypatch, "echo \"find: '$1/a': Permission denied\" >&2; exit 1\n")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("/dist/a"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SettingsError) as caught:
        collect(tree, ["dist"], 0, Listing.start(tree, ["dist"]))
    assert str(caught.value) == "cannot list source dist/a: Permission denied"
    assert caught.value.setting == "sources"


def test_a_listing_left_unread_is_stopped(tree: Path) -> None:
    listing = Listing.start(tree, ["dist", "dist/a"])
    processes = [process for process, _ in listing._running.values()]
    assert len(processes) == 2
    listing.close()
    assert all(process.returncode is not None for process in processes)
    assert not listing._running


def test_find_does_not_list_what_a_whole_name_excludes(tree: Path) -> None:
    for _ in range(300):  # a big excluded directory, as node_modules or .git are
        (tree / "dist/node_modules/pkg" / f"m{_}.js").write_text("x")
    listing = Listing.start(tree, ["dist", "!node_modules", "!.git/", "!*.map"])
    records = listing.records(str(tree / "dist"))
    assert records is not None
    names = {record[0] for record in records}
    assert not any(name.startswith("node_modules") for name in names), "pruned by find itself"
    assert "a/x/2.js.map" in names, "a glob is left to the exclusion rules"
    fast, slow = both(tree, ["dist", "!node_modules", "!.git/", "!*.map"], 0)
    assert fast.entries == slow.entries
    assert not any("node_modules" in entry.name or entry.name.endswith(".map") for entry in fast.entries)


@pytest.mark.parametrize(("sources", "strip"), [(["dist", "!dangling"], 0), (["dist", "!dangling", "!*.map"], 1),
                                                (["dist/**/*.js", "!dangling"], 2), (["dist/*", "!dangling"], 1)])
def test_find_listing_and_python_walk_agree_when_following_links(
    tree: Path, sources: list[str], strip: int
) -> None:
    """With dereference, a listing that holds a symlink is left to the Python walk, which follows it; the result is
    the same whichever started, and the links are gone: what they point to is uploaded in their place."""
    fast = collect(tree, sources, strip, Listing.start(tree, sources), dereference=True)
    slow = collect(tree, sources, strip, dereference=True)
    assert fast.entries == slow.entries and fast.warnings == slow.warnings
    assert not [entry for entry in fast.entries if entry.kind == "symlink"]
    by_name = {entry.name: entry for entry in fast.entries}
    if sources[0] == "dist":
        base = "" if strip else "dist/"
        assert by_name[f"{base}link-to-dir"].kind == "dir" and by_name[f"{base}link-to-dir/2.js"].kind == "file"
        assert by_name[f"{base}a/link-to-file"].kind == "file" and by_name[f"{base}a/link-to-file"].size == 3
    with pytest.raises(SettingsError) as caught:
        collect(tree, ["dist"], 0, Listing.start(tree, ["dist"]), dereference=True)
    assert "dist/dangling is a symlink" in str(caught.value) and caught.value.setting == "dereference"
