"""Turning the `sources` setting into the exact list of files, directories and symlinks to upload.

Owns glob expansion (`**` included), `!pattern` excludes (gitignore rules, via pathspec), `strip_components`,
and the guarantee that every name we send is a clean relative path that cannot leave the target.
It reads the local workspace only; it knows nothing about SSH.
"""

from __future__ import annotations

import glob
import os
import posixpath
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sshipit.errors import SettingsError

EntryKind = Literal["dir", "file", "symlink"]


@dataclass(frozen=True, slots=True)  # slots: one per file of the build, tens of thousands
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


def collect(workspace: Path, sources: list[str], strip_components: int = 0) -> Collected:
    """Every entry to upload, parents before children, each name unique."""
    import pathspec  # imported here: only deploys with sources pay for it

    includes = [s for s in sources if not s.startswith("!")]
    excludes = [s[1:] for s in sources if s.startswith("!") and s[1:].strip()]
    if not includes:
        raise SettingsError("sources has only exclusions (!pattern)", setting="sources",
                            hint="name at least one file, directory or glob to upload")
    excluded = pathspec.GitIgnoreSpec.from_lines(excludes) if excludes else None
    warnings: list[str] = []
    found: dict[str, Entry] = {}

    def is_excluded(rel: str, is_dir: bool) -> bool:
        return excluded is not None and bool(
            excluded.match_file(rel + "/" if is_dir else rel)
        )

    root = str(workspace)

    def strip(rel: str) -> str:
        return "/".join(rel.split("/")[strip_components:]) if rel and strip_components else rel

    def add(rel: str, local: str, name: str, info: os.stat_result | None = None) -> None:
        # Strings and os.scandir, not Path objects, and each child's names built from its parent's: this runs
        # once per file of the build (tens of thousands).
        if info is None:
            try:
                info = os.lstat(local)
            except OSError as exc:
                raise SettingsError(f"cannot read source {rel or '.'}: {exc.strerror}", setting="sources") from None
        mode = info.st_mode
        is_dir = stat.S_ISDIR(mode)
        if rel and is_excluded(rel, is_dir):
            return
        if name:
            name = sys.intern(name)
            if stat.S_ISLNK(mode):
                entry = Entry(local, name, "symlink", 0o777, int(info.st_mtime), link=os.readlink(local))
            elif is_dir:
                entry = Entry(local, name, "dir", stat.S_IMODE(mode), int(info.st_mtime))
            elif stat.S_ISREG(mode):
                entry = Entry(local, name, "file", stat.S_IMODE(mode), int(info.st_mtime), info.st_size)
            else:
                warnings.append(f"source {rel} is not a file, directory or symlink; skipped")
                return
            previous = found.get(name)
            if previous is None:
                found[name] = entry
            elif previous.local != local and not (previous.kind == entry.kind == "dir"):
                raise SettingsError(
                    f"sources {os.path.relpath(previous.local, root)} and {rel} would both land at {name}",
                    setting="strip_components" if strip_components else "sources",
                    hint="lower strip_components or exclude one of them",
                )
        if is_dir:
            try:
                with os.scandir(local) as listing:
                    children = sorted((child.name, child.path, child.stat(follow_symlinks=False))
                                      for child in listing)
            except OSError as exc:
                raise SettingsError(f"cannot list source {rel or '.'}: {exc.strerror}",
                                    setting="sources") from None
            # A child's name is its parent's plus its own, unless strip_components removes it all.
            strips_child = strip_components > (rel.count("/") + 1 if rel else 0)
            for child, child_local, child_info in children:
                child_rel = f"{rel}/{child}" if rel else child
                child_name = strip(child_rel) if strips_child or not name else f"{name}/{child}"
                add(child_rel, child_local, child_name, child_info)

    for source in includes:
        rel = _relative_source(source, workspace)
        if _GLOB_CHARS & set(rel):
            matches = sorted(glob.glob(rel, root_dir=workspace, recursive=True, include_hidden=True))
            if not matches:
                raise SettingsError(f"source pattern {source!r} matched nothing in {workspace}",
                                    setting="sources", hint="check the pattern and that the build produced it")
            for match in matches:
                found_rel = os.path.normpath(match)
                add(found_rel, os.path.join(root, found_rel), strip(found_rel))
        else:
            if not os.path.lexists(workspace / rel if rel else workspace):
                raise SettingsError(f"source {source!r} does not exist in {workspace}", setting="sources",
                                    hint="check the path and that the build produced it")
            add(rel, os.path.join(root, rel) if rel else root, strip(rel))
    entries = list(found.values())
    if not entries:
        raise SettingsError("sources selected nothing to upload", setting="sources",
                            hint="check the exclusions and strip_components")
    _refuse_paths_through_links(entries, strip_components)
    return Collected(entries, warnings)


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
