"""Turning the `sources` setting into the exact list of files, directories and symlinks to upload.

Owns glob expansion (`**` included), `!pattern` excludes (gitignore rules, via pathspec), `strip_components`,
`dereference`, and the guarantee that every name we send is a clean relative path that cannot leave the target.
Symlinks: a symlink in the build is sent as a symlink, never read through; globs do not descend into one. A
path the user names (or the fixed start of a glob) may pass through a symlink that stays inside the workspace,
never through one that leaves it. With `dereference`, links are followed, but only to what lies inside the
workspace, and a link back to a directory being walked (a loop) is refused.
Source directories are listed by GNU find in parallel with the plan's other steps (Listing), by a Python walk
where find is missing or fails; both give the same entries in the same order.
It reads the local workspace only; it knows nothing about SSH.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import gc
import os
import posixpath
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sshipit.errors import SettingsError

EntryKind = Literal["dir", "file", "symlink"]


# slots, and not frozen: one per file of the build, tens of thousands (a frozen one takes 1.5 us to make, this 0.35)
@dataclass(slots=True)
class Entry:
    local: str  # where it is on this machine
    name: str  # where it goes, relative to the target (POSIX, no '..', never absolute)
    kind: EntryKind
    mode: int  # permission bits
    mtime: int
    size: int = 0
    link: str = ""  # symlink destination, kept as written


@dataclass
class Collected:
    entries: list[Entry]
    warnings: list[str]

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind == "file")

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)


class Pending(Collected):
    """Sources whose walk is read on first use of `entries` or `warnings` (plan.build(sources_later=True)).

    find lists the build in another process meanwhile (Listing); reading its answer into entries costs ~20 ms for
    5,000 files, which a plain deploy spends while its server answers the read-only probe instead of before the
    connection (stages.upload_files). An error is kept: every later use raises the same one, and the deploy ends
    with its one line (session.py lets it through untouched: no host reports it, no on_failure runs for it).
    """

    def __init__(self, work: Callable[[], Collected]) -> None:  # the fields are the properties below
        self._work: Callable[[], Collected] | None = work
        self._done: Collected | None = None
        self.failure: Exception | None = None
        self.on_read: Callable[[Collected], None] | None = None  # told once the walk is read (cli.py)

    @property
    def read(self) -> bool:
        """Whether the walk was read already (successfully)."""
        return self._done is not None

    def resolve(self) -> Collected:
        if self._done is not None:
            return self._done
        if self.failure is not None:
            raise self.failure
        work, self._work = self._work, None
        assert work is not None
        try:
            self._done = work()
        except Exception as exc:
            self.failure = exc
            raise
        if self.on_read is not None:
            self.on_read(self._done)
        return self._done

    @property  # type: ignore[override]
    def entries(self) -> list[Entry]:
        return self.resolve().entries

    @property  # type: ignore[override]
    def warnings(self) -> list[str]:
        return self.resolve().warnings


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic collector off while objects that live on are made (a build's entries, a manifest's
    tables): its passes over them would free nothing. On again after, if it was on."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def sources_failure(upload: Collected | None, exc: BaseException) -> bool:
    """`exc` is the error of sources read on first use: the deploy's own, not a host's."""
    return isinstance(upload, Pending) and upload.failure is exc


_GLOB_CHARS = set("*?[")


def _relative_source(source: str, workspace: Path) -> str:
    """The source as a clean path relative to the workspace; refuse one that points outside it."""
    path = source.strip()
    if path.startswith("/"):
        try:
            path = str(Path(path).relative_to(workspace))
        except ValueError:
            raise SettingsError(
                f"source {source!r} is outside the workspace {workspace}",
                setting="sources",
                hint="give paths relative to the workspace",
            ) from None
    normal = os.path.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise SettingsError(f"source {source!r} is outside the workspace", setting="sources",
                            hint="give paths relative to the workspace")
    return "" if normal == "." else normal


# What one walk reports per entry below a source directory: path relative to that directory ("" for the directory
# itself), kind (file, dir, symlink or other), permission bits, mtime, size, symlink destination.
_Record = tuple[str, str, int, int, int, str]
_FIND_FORMAT = r"%y\0%m\0%s\0%T@\0%P\0%l\0"  # six fields per entry, each ended by NUL (names may hold newlines)
_FIND_KINDS = {"f": "file", "d": "dir", "l": "symlink"}


class Listing:
    """Source directories being listed by GNU find while the rest of the plan is made.

    Walking a build in Python costs ~8 us per entry on one core (0.2 s for the benchmark's 25,000), while the
    plan's next step, importing asyncssh, keeps that core busy for ~0.1 s and leaves the other one idle. `find`
    walks in parallel into a temporary file; collect() reads its answer, or walks in Python when there is none
    (no GNU find: BusyBox, macOS; or find met an error, which the Python walk then explains).
    """

    def __init__(self) -> None:
        self._running: dict[str, tuple[Any, int]] = {}  # local directory -> (find process, fd to read its output)

    @classmethod
    def start(cls, workspace: Path, sources: list[str]) -> Listing:
        listing = cls()
        prune = _find_prune([s[1:] for s in sources if s.startswith("!")])
        for source in sources:
            if source.startswith("!") or _GLOB_CHARS & set(source):
                continue
            try:
                local = os.path.join(str(workspace), _relative_source(source, workspace))
                if os.path.isdir(local) and not os.path.islink(local) and \
                        _within(os.path.realpath(local), os.path.realpath(workspace)):  # else collect() refuses
                    listing._spawn(local, prune)
            except (SettingsError, OSError):
                continue  # collect() reports it
        return listing

    def _spawn(self, local: str, prune: list[str]) -> None:
        import subprocess
        import tempfile

        local = _directory(local)
        if local in self._running:
            return
        fd, path = tempfile.mkstemp(prefix="sshipit-list-")
        try:
            reader = os.open(path, os.O_RDONLY)  # its own file offset: find keeps writing at its own
        finally:
            os.unlink(path)
        # "dir/." as the start: its name is ".", which no pruned name matches (collect() decides about the source
        # itself); LC_ALL=C: "." in the %T@ times, always.
        command = ["find", f"{local.rstrip('/')}/.", *prune, "-printf", _FIND_FORMAT]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.DEVNULL,
                                       env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"})
        except OSError:
            os.close(reader)
            return
        finally:
            os.close(fd)
        self._running[local] = (process, reader)

    def records(self, local: str) -> list[_Record] | None:
        """find's entries for `local`, in the Python walk's order; None when find gave no complete answer."""
        started = self._running.pop(_directory(local), None)
        if started is None:
            return None
        process, reader = started
        try:
            return _read_find(process, reader)
        except ValueError:  # not GNU find's format: the Python walk decides
            return None
        finally:
            os.close(reader)
            if process.poll() is None:
                process.kill()
            process.wait()

    def close(self) -> None:
        for local in list(self._running):
            process, reader = self._running.pop(local)
            process.kill()
            process.wait()
            os.close(reader)


def _joined(parent: str, child: str) -> str:
    """Two relative paths as one ("" is the directory itself)."""
    return f"{parent}/{child}" if parent and child else child or parent


def _directory(local: str) -> str:
    """A local directory as Listing keys it: without a trailing "/"."""
    return local.rstrip("/") or "/"


def _find_prune(excludes: list[str]) -> list[str]:
    """find arguments that skip the excluded directories a whole name selects (node_modules, .git/): a big
    one is then not listed only to be dropped. The exclusions are applied to what find lists all the same; with
    a `!!` re-inclusion the gitignore rules are left to them alone."""
    names = []
    for pattern in (p.strip() for p in excludes):
        if pattern.startswith("!"):
            return []
        name = pattern[:-1] if pattern.endswith("/") else pattern
        if name and not (_GLOB_CHARS | {"/", "\\"}) & set(name):
            names.append((name, pattern.endswith("/")))
    prune: list[str] = []
    for name, only_dirs in names:
        prune += [*(["-o"] if prune else []), "-name", name, *(["-type", "d"] if only_dirs else [])]
    return ["(", *prune, ")", "-prune", "-o"] if prune else []


def _read_find(process: Any, reader: int) -> list[_Record] | None:
    """Parse find's output while it is written (a big tree takes longer than the plan's other steps)."""
    import subprocess

    records: list[_Record] = []
    fields: list[str] = []
    rest = b""
    while True:
        finished = process.poll() is not None  # asked before reading: an empty read after it is the end
        chunk = os.read(reader, 1 << 18)
        if not chunk:
            if finished:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.002)
            continue
        chunk = rest + chunk
        cut = chunk.rfind(b"\0") + 1  # decode whole names only: NUL is never inside a UTF-8 sequence
        rest = chunk[cut:]
        fields += chunk[:cut].decode("utf-8", "surrogateescape").split("\0")[:-1]
        whole = len(fields) - len(fields) % 6
        it = iter(fields[:whole])
        for kind, mode, size, mtime, rel, link in zip(it, it, it, it, it, it, strict=True):
            records.append((sys.intern(rel), _FIND_KINDS.get(kind, "other"), int(mode, 8), int(float(mtime)),
                            int(size), link))
        del fields[:whole]
    if process.returncode != 0 or rest or fields or not records or records[0][0] != "":
        return None
    # find lists a directory's entries in the order the file system keeps them; sort as the Python walk does
    # (children by name, each directory before its contents): "/" as the lowest character gives exactly that.
    records.sort(key=lambda record: record[0].replace("/", "\0"))
    return records


def _walk(local: str, shown: str, excluded: Callable[[str, bool], bool], follow: str | None = None
          ) -> list[_Record]:
    """The Python walk: children sorted by name, each directory before its contents, excluded ones not entered.
    `shown` is the directory's name in messages (relative to the workspace). With `follow` (the workspace's real
    path), symlinks are replaced by what they point to (_followed)."""
    records: list[_Record] = []
    walking: set[tuple[int, int]] = set()  # (device, inode) of the directories being walked: a loop's way back

    def named(rel: str) -> str:
        return _joined(shown, rel) or "."

    def visit(rel: str, path: str, info: os.stat_result) -> None:
        mode = info.st_mode
        if follow is not None and stat.S_ISLNK(mode):
            info = _followed(path, named(rel), follow)
            mode = info.st_mode
            if stat.S_ISDIR(mode) and (info.st_dev, info.st_ino) in walking:
                raise SettingsError(
                    f"source {named(rel)} is a symlink to a directory that contains it ({os.readlink(path)}): "
                    "following it would never end", setting="dereference",
                    hint=f"exclude it (!{named(rel)}) or set dereference: false to upload it as a symlink")
        if stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISREG(mode):
            kind = "file"
        elif stat.S_ISLNK(mode):
            kind = "symlink"
        else:
            kind = "other"
        records.append((rel, kind, stat.S_IMODE(mode), int(info.st_mtime), info.st_size,
                        os.readlink(path) if kind == "symlink" else ""))
        if kind != "dir":
            return
        try:
            with os.scandir(path) as listing:
                children = sorted((child.name, child.path, child.stat(follow_symlinks=False)) for child in listing)
        except OSError as exc:
            raise SettingsError(f"cannot list source {named(rel)}: {exc.strerror}", setting="sources") from None
        here = (info.st_dev, info.st_ino)
        walking.add(here)
        for name, child_path, child_info in children:
            child_rel = sys.intern(_joined(rel, name))
            is_dir = stat.S_ISDIR(child_info.st_mode) or (
                follow is not None and stat.S_ISLNK(child_info.st_mode) and os.path.isdir(child_path))
            if not excluded(child_rel, is_dir):
                visit(child_rel, child_path, child_info)
        walking.discard(here)

    try:
        info = os.lstat(local)
    except OSError as exc:
        raise SettingsError(f"cannot read source {named('')}: {exc.strerror}", setting="sources") from None
    visit("", local, info)
    return records


def _followed(path: str, shown: str, root: str) -> os.stat_result:
    """What the symlink `path` points to, for dereference: refused unless it exists and lies inside `root`."""
    real = os.path.realpath(path)
    if not _within(real, root):
        raise SettingsError(
            f"source {shown} is a symlink that leads outside the workspace (to {real}): dereference does not "
            "follow it", setting="dereference",
            hint=f"exclude it (!{shown}), or set dereference: false to upload it as a symlink")
    try:
        return os.stat(path)
    except OSError as exc:
        what = "a symlink loop" if exc.errno == errno.ELOOP else f"a symlink to nothing ({exc.strerror})"
        raise SettingsError(f"source {shown} is {what}: dereference cannot follow it", setting="dereference",
                            hint=f"exclude it (!{shown}) or fix the link") from None


def _within(real: str, root: str) -> bool:
    """True when the real path `real` is `root` or below it."""
    return real == root or real.startswith(root.rstrip("/") + "/")


def _reached_safely(root: str, rel: str, shown: str, setting: str) -> None:
    """Refuse a named source (or the fixed start of a glob) whose way passes through a symlink leaving the
    workspace (`root`, a real path): `dist/assets/x.conf` with `dist/assets -> /elsewhere` would read a file that
    is not the build's. The last part of `rel` is not looked at (a link there is sent as a link)."""
    parts = rel.split("/") if rel else []
    for depth in range(1, len(parts)):
        prefix = os.path.join(root, *parts[:depth])
        if os.path.islink(prefix):
            real = os.path.realpath(prefix)
            if not _within(real, root):
                link = "/".join(parts[:depth])
                raise SettingsError(
                    f"source {shown} is reached through the symlink {link}, which leads outside the workspace "
                    f"(to {real})", setting=setting,
                    hint="name the files inside the workspace, or copy them into the build")


def _expand(root: str, pattern: str, follow: bool, excluded: Callable[[str, bool], bool]) -> list[str]:
    """The workspace paths a glob matches (`*`, `?`, `[...]` within a name, `**` for any depth; hidden names
    too), sorted. Unlike glob.glob, a symlink is never descended into unless `follow` (where it must stay
    inside the workspace and not loop): matched, a link is a link. Literal leading parts are taken as named.
    Excluded directories are not entered (nothing below them could be uploaded)."""
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) and not _GLOB_CHARS & set(parts[fixed]):
        fixed += 1
    start = "/".join(parts[:fixed])
    _reached_safely(root, start + "/x" if start else "", pattern, "sources")
    found: set[str] = set()
    walking: set[tuple[int, int]] = set()  # with follow: (device, inode) of the directories `**` is in

    def kind_of(path: str) -> str:
        """"dir", "link" or "other", as lstat sees it."""
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return "other"
        return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "other"

    def children(rel: str) -> list[tuple[str, str]]:
        """(name, kind) of what `rel` holds, sorted; kinds from the directory listing, no stat per name."""
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as listing:
                return sorted((child.name, "link" if child.is_symlink() else
                               "dir" if child.is_dir(follow_symlinks=False) else "other") for child in listing)
        except OSError:
            return []

    def enters(rel: str, kind: str) -> bool:
        """True when `rel` (below the fixed start) may be entered: a directory, or with `follow` a link to one
        inside the root that is not one of the directories being walked."""
        if kind == "other" or (kind == "link" and not follow) or excluded(rel, True):
            return False
        if kind == "link":
            info = _followed(os.path.join(root, rel), rel, root)
            if not stat.S_ISDIR(info.st_mode):
                return False
            if (info.st_dev, info.st_ino) in walking:
                raise SettingsError(f"source {rel} is a symlink to a directory that contains it: following it "
                                    "would never end", setting="dereference",
                                    hint=f"exclude it (!{rel}) or set dereference: false")
        return True

    def match(rel: str, index: int) -> None:
        if index == len(parts):
            found.add(rel)
            return
        part = parts[index]
        last = index == len(parts) - 1
        if part == "**":
            if last:
                found.add(rel)
            else:
                match(rel, index + 1)  # zero directories
            here = None
            if follow:
                info = os.stat(os.path.join(root, rel) if rel else root)
                here = (info.st_dev, info.st_ino)
                walking.add(here)
            for name, kind in children(rel):
                child = _joined(rel, name)
                if last:
                    found.add(child)
                if enters(child, kind):
                    match(child, index)
            if here is not None:
                walking.discard(here)
            return
        if not _GLOB_CHARS & set(part):
            kind = kind_of(os.path.join(root, _joined(rel, part)))
            candidates = [(part, kind)] if os.path.lexists(os.path.join(root, _joined(rel, part))) else []
        else:
            pattern_part = part.replace("**", "*")
            candidates = [(name, kind) for name, kind in children(rel) if fnmatch.fnmatchcase(name, pattern_part)]
        for name, kind in candidates:
            child = _joined(rel, name)
            if last:
                found.add(child)
            elif enters(child, kind):
                match(child, index + 1)

    if not os.path.isdir(os.path.join(root, start) if start else root):  # the fixed start is followed as named
        return []
    match(start, fixed)
    found.discard("")  # `**` matches the workspace itself; glob.glob never named it either
    return sorted(found)


def collect(workspace: Path, sources: list[str], strip_components: int = 0,
            listing: Listing | None = None, dereference: bool = False) -> Collected:
    """Every entry to upload, parents before children, each name unique.

    `listing` holds the source directories already being listed (Listing.start); the rest is walked here. With
    `dereference`, symlinks are uploaded as what they point to (inside the workspace only).
    """
    import pathspec  # imported here: only deploys with sources pay for it

    includes = check_named(workspace, sources)
    excludes = [s[1:] for s in sources if s.startswith("!") and s[1:].strip()]
    spec = pathspec.GitIgnoreSpec.from_lines(excludes) if excludes else None
    warnings: list[str] = []
    found: dict[str, Entry] = {}
    root = str(workspace)
    real_root = os.path.realpath(root)
    follow = real_root if dereference else None

    def excluded(rel: str, is_dir: bool) -> bool:
        return spec is not None and bool(spec.match_file(rel + "/" if is_dir else rel))

    def strip(rel: str) -> str:
        return "/".join(rel.split("/")[strip_components:]) if rel and strip_components else rel

    def add(rel: str) -> None:
        """The source `rel` (relative to the workspace) and, for a directory, everything below it."""
        local = os.path.join(root, rel) if rel else root
        if rel and excluded(rel, os.path.isdir(local) and (dereference or not os.path.islink(local))):
            return
        records = listing.records(local) if listing is not None else None
        if records is not None and dereference and any(record[1] == "symlink" for record in records):
            records = None  # links to follow: the Python walk does that
        if records is None:
            records = _walk(local, rel, lambda child, is_dir: excluded(_joined(rel, child), is_dir), follow)
        elif spec is not None:
            records = _unexcluded(records, rel, excluded)
        # A name is the source's own (stripped) name plus the path below it, unless strip_components removes
        # more than the source's own components: then each name is stripped on its own.
        depth = rel.count("/") + 1 if rel else 0
        base = strip(rel)
        for below, kind, mode, mtime, size, link in records:
            name = strip(_joined(rel, below)) if strip_components > depth else _joined(base, below)
            if not name:
                continue
            entry_local = f"{local}/{below}" if below else local
            if kind == "file":
                entry = Entry(entry_local, name, kind, mode, mtime, size)
            elif kind == "dir":
                entry = Entry(entry_local, name, kind, mode, mtime)
            elif kind == "symlink":
                entry = Entry(entry_local, name, kind, 0o777, mtime, link=link)
            else:
                warnings.append(f"source {_joined(rel, below)} is not a file, directory or symlink; skipped")
                continue
            previous = found.get(name)
            if previous is None:
                found[name] = entry
            elif previous.local != entry_local and not (previous.kind == entry.kind == "dir"):
                raise SettingsError(
                    f"sources {os.path.relpath(previous.local, root)} and {_joined(rel, below)} would both land at "
                    f"{name}",
                    setting="strip_components" if strip_components else "sources",
                    hint="lower strip_components or exclude one of them",
                )

    # Every object made here lives until the deploy ends: the cyclic collector's passes over them (~20 ms for
    # 25,000 entries) would find nothing to free.
    try:
        with collector_paused():
            for source in includes:
                rel = _relative_source(source, workspace)
                if _GLOB_CHARS & set(rel):
                    matches = _expand(real_root, rel, dereference, excluded)
                    if not matches:
                        raise SettingsError(f"source pattern {source!r} matched nothing in {workspace}",
                                            setting="sources", hint="check the pattern and that the build produced it")
                    for match in matches:
                        add(os.path.normpath(match))
                else:
                    add(rel)
    finally:
        if listing is not None:
            listing.close()
    entries = list(found.values())
    if not entries:
        raise SettingsError("sources selected nothing to upload", setting="sources",
                            hint="check the exclusions and strip_components")
    _refuse_paths_through_links(entries, strip_components)
    return Collected(entries, warnings)


def check_named(workspace: Path, sources: list[str]) -> list[str]:
    """What collect() refuses without walking anything, checked before any connection even when the walk is read
    later (Pending): sources with only exclusions; a named source (not a glob) that is missing, outside the
    workspace, or reached through a symlink that leaves it. Returns the inclusions."""
    includes = [s for s in sources if not s.startswith("!")]
    if not includes:
        raise SettingsError("sources has only exclusions (!pattern)", setting="sources",
                            hint="name at least one file, directory or glob to upload")
    real_root = os.path.realpath(str(workspace))
    for source in includes:
        rel = _relative_source(source, workspace)
        if not _GLOB_CHARS & set(rel):
            if not os.path.lexists(workspace / rel if rel else workspace):
                raise SettingsError(f"source {source!r} does not exist in {workspace}", setting="sources",
                                    hint="check the path and that the build produced it")
            _reached_safely(real_root, rel, rel, "sources")
    return includes


def _unexcluded(records: list[_Record], rel: str, excluded: Callable[[str, bool], bool]) -> list[_Record]:
    """find's records without the excluded ones and everything below an excluded directory."""
    kept: list[_Record] = []
    skipped = ""  # the excluded directory being passed over, with a trailing "/"
    for record in records:
        below = record[0]
        if skipped and below.startswith(skipped):
            continue
        skipped = ""
        if below and excluded(_joined(rel, below), record[1] == "dir"):
            if record[1] == "dir":
                skipped = below + "/"
            continue
        kept.append(record)
    return kept


def _refuse_paths_through_links(entries: list[Entry], strip_components: int) -> None:
    """An entry below a symlink entry (globs and strip_components can pair `x` -> /elsewhere with `x/f`) would be
    written through the link on the server, outside the target: refuse it."""
    links = {entry.name for entry in entries if entry.kind == "symlink"}
    if not links:
        return
    for entry in entries:
        parent = posixpath.dirname(entry.name)
        while parent:
            if parent in links:
                raise SettingsError(
                    f"sources: {entry.name} would be written through the symlink {parent}",
                    setting="strip_components" if strip_components else "sources",
                    hint="a path cannot be both a symlink and a directory; exclude one of them")
            parent = posixpath.dirname(parent)
