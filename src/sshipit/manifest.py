"""Incremental upload: what the last deploy left on the server, and what must travel now.

After each upload the server keeps a manifest (path -> size, mode, BLAKE3 hash; symlink -> destination). The next
deploy reads it together with the server's real state in one round trip: which paths exist, and which were
changed since the manifest was written (`find -cnewer`: ctime moves on any edit, chmod or replacement, and tar
cannot fake it). A local file is skipped only when the manifest holds the same size, mode and content hash and
the server's copy is present and untouched; the hash is taken as the local file's without reading it when the
file has the size and mtime it had when that hash was taken, as rsync decides (trusted_mtime: never for an
mtime a reproducible build sets, nor one within a second of the reading). Anything unclear (no manifest, an
unreadable one, `rm`) means a full upload: never a wrong one.

The stored text: a base (JSON, version 3: each file's mtime inside its entry; version 2 is still read), then the
records later uploads appended (Manifest.record: only what changed, and the digest of the text it follows), so a
redeploy that changes 1% of the files sends a record of about 1% of the manifest; past a quarter of the base the
whole is written again (appendable). manifest_text.py checks the text as it is read.

Where manifests live: plain deploys keep theirs outside the target, in the login's ~/.cache/sshipit/ (a target
is often a web root, and a manifest there would publish the file list); atomic deploys keep one per release in
target/.sshipit/manifests/.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sshipit.manifest_text import (
    DECODER,
    RECORD_KEYS,
    RECORDS_LIMIT,
    SPACE,
    TRUSTED_SINCE,
    changes,
    dir_ok,
    dirs_ok,
    file_entry,
    file_table,
    link_ok,
    links_ok,
    text_digest,
)
from sshipit.remote import capture
from sshipit.rules import shell_path
from sshipit.sources import Entry, collector_paused

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

VERSION = 3
# Version 3 keeps a file's mtime inside its entry, [size, mode, hash(, mtime)]; version 2 keyed the mtimes by the
# path a second time (~30% more bytes). Both are read: an upgrade must not cost anyone a full upload.
_READS = (2, 3)
# BLAKE3: 4.2 GB/s on one core here against 1.6 GB/s for SHA-256 (with SHA-NI), 0.8 for BLAKE2b, 0.7 for MD5,
# and still a cryptographic hash; it releases the GIL, so it runs beside the encryption. A manifest written with
# another hash (or version) reads as no manifest: one full upload.
HASH = "blake3"
_SEP = "\0--sshipit--\0"
# Larger than any manifest we write for a sane build (~250 bytes a file: half a million files); read no further.
MANIFEST_LIMIT = 128 << 20


# Set when this module loads, before any source file is read for its hash: a file's mtime is recorded (and later
# trusted) only when it is more than a second older than that, so an edit made after the file was read gets
# another mtime, even within the same second. Times at or before 1980-01-02 are never trusted: reproducible builds
# date every file 0, 1 or 1980-01-01 (SOURCE_DATE_EPOCH, Nix, zip), whatever changed.
_LOADED = time.time()


def trusted_mtime(mtime: int) -> bool:
    """Whether a file's mtime may stand in for its content at the next deploy (Manifest.mtimes)."""
    return TRUSTED_SINCE < mtime < _LOADED - 1


def new_digest() -> Digest:
    import blake3

    return blake3.blake3()  # type: ignore[no-any-return]


class Digest(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


_LOCAL_HASHES: dict[str, str] = {}  # local path -> hash during one deploy (see deploy.py): hosts share it


def local_hash(entry: Entry) -> str:
    """The content hash of a local source file, computed once however many hosts compare against it."""
    return cached_hash(entry.local) or remember_hash(entry.local, file_hash(entry.local))


# Source name -> content hash during one deploy: one table for every host (a per-host copy is 0.4 MB a host for
# 20,000 files), holding only hashes of the local files (compare's local_hash, the stream's), never a value read
# from a server: a hash a host's manifest vouched for (its mtime matched) stays that host's (Delta.trusted). A
# host's manifest lists these, which is exact for it: once its upload succeeded, each of its files was found equal
# (by hash, or by its own manifest's word) or sent (hashed on the way), and a name is one local file per deploy.
_NAME_HASHES: dict[str, str] = {}


def forget_local_hashes() -> None:
    _LOCAL_HASHES.clear()
    _NAME_HASHES.clear()
    _SHARED.clear()
    _LAST.clear()
    _ENCODED[:] = [b"", b""]
    _BLOCKS.clear()
    _UNUSABLE.clear()
    _INDEX.clear()


def cached_hash(path: str) -> str | None:
    return _LOCAL_HASHES.get(path)


def remember_hash(path: str, value: str) -> str:
    _LOCAL_HASHES[path] = value
    return value


def file_hash(path: str) -> str:
    digest = new_digest()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    files: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # path -> (size, mode, content hash)
    links: dict[str, str] = field(default_factory=dict)  # path -> symlink destination
    dirs: dict[str, int] = field(default_factory=dict)  # path -> mode (absent in older manifests: dirs re-sent once)
    # path -> the local file's mtime when its hash was taken, for files old enough to trust it (trusted_mtime);
    # absent in older manifests (and ignored by older versions): those files are hashed once more. Not part of
    # equality: a manifest that only lacks them is still exact, and is not rewritten for them (its time matters).
    mtimes: dict[str, int] = field(default_factory=dict, compare=False)
    # The stored text it was read from (parse): its digest, which the next record names (`record`), its version,
    # the length of its base and of the records after it, and their count: what `appendable` weighs.
    digest: str = field(default="", compare=False, repr=False)
    version: int = field(default=VERSION, compare=False, repr=False)
    base_size: int = field(default=0, compare=False, repr=False)
    log_size: int = field(default=0, compare=False, repr=False)
    records: int = field(default=0, compare=False, repr=False)

    def dumps(self) -> str:
        mtimes = self.mtimes
        files = {path: (*entry, mtimes[path]) if path in mtimes else entry for path, entry in self.files.items()} \
            if mtimes else self.files
        return json.dumps({"version": VERSION, "hash": HASH, "files": files, "links": self.links,
                           "dirs": self.dirs}, separators=(",", ":"))

    def record(self, base: Manifest) -> str:
        """The line that, appended to `base`'s stored text, makes it read as this manifest: what changed, by path
        (null: gone), and the digest of the text it goes after, so that a record appended to any other text (the
        file was replaced meanwhile) makes the whole unusable (one full upload), never a wrong manifest."""
        files: dict[str, object] = {}
        mtimes, old_files, old_mtimes = self.mtimes, base.files, base.mtimes
        for path, entry in self.files.items():
            mtime = mtimes.get(path)
            if old_files.get(path) != entry or old_mtimes.get(path) != mtime:
                files[path] = entry if mtime is None else (*entry, mtime)
        files.update((path, None) for path in old_files if path not in self.files)
        return "\n" + json.dumps({"delta": base.digest, "files": files, "links": changes(base.links, self.links),
                                  "dirs": changes(base.dirs, self.dirs)}, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Manifest | None:
        return cls.parse(text)[0]

    @classmethod
    def parse(cls, text: str, digest: str = "") -> tuple[Manifest | None, str]:
        """The manifest, or None and why not. The file is the login's to write, so it is read as hostile: anything
        but the exact shape we write (a float, 1e999, deep nesting, a wrong type, a path that is not clean, a
        record that does not follow the text it names) means no manifest, that is one full upload, never an error.
        The text is a base (version 2 or 3) and, after a version 3 base, the records later uploads appended
        (`record`), applied in order. `digest`: the text's, when the caller has it (parse_shared)."""
        if len(text) > MANIFEST_LIMIT:
            return None, f"larger than {MANIFEST_LIMIT >> 20} MiB"
        # All that is made here (JSON's lists and dicts, the tables' tuples) is acyclic, and the tables live on
        # (parse_shared): the cyclic collector's passes over them while they are made (6-15% of the parse, more
        # at 20,000 files) would free nothing.
        with collector_paused():
            return cls._parse(text, digest)

    @classmethod
    def _parse(cls, text: str, digest: str) -> tuple[Manifest | None, str]:
        try:
            data, end = DECODER.raw_decode(text, SPACE.match(text).end())  # type: ignore[union-attr]
        except Exception as exc:  # RecursionError, ValueError (huge ints too), MemoryError alike
            return None, f"not valid JSON ({type(exc).__name__})"
        if not isinstance(data, dict):
            return None, "not a JSON object"
        version = data.get("version")
        if version not in _READS or type(version) is not int or data.get("hash") != HASH:
            return None, "written by another version"  # expected after an upgrade: said, not alarming
        raw_files, links, dirs = data.get("files"), data.get("links"), data.get("dirs", {})
        # Version 2 kept the mtimes in a map of their own; version 3 has none (an entry has its own).
        mtimes = data.get("mtimes", {}) if version == 2 else {}
        if not (isinstance(raw_files, dict) and isinstance(links, dict) and isinstance(dirs, dict)
                and isinstance(mtimes, dict)) or (version != 2 and "mtimes" in data):
            return None, "files, links, dirs or mtimes is not a map"
        # Every entry checked as file_entry, link_ok and dir_ok would, but a whole table at once (manifest_text).
        tables = file_table(raw_files, (3,) if version == 2 else (3, 4))
        if tables is None:
            return None, "a file entry is not (size, mode, hash) under a clean path, or its mtime not a time"
        files, own = tables
        raw_files.clear()  # file_table dropped the JSON's lists as it went; the map goes too
        if not links_ok(links):
            return None, "a symlink entry is not a clean path and destination"
        if not dirs_ok(dirs):
            return None, "a directory entry is not a clean path and mode"
        for path, mtime in mtimes.items():
            if not (path in files and type(mtime) is int and TRUSTED_SINCE < mtime < 1 << 63):
                return None, "an mtime entry is not a listed file and a time"
        manifest = cls(files, links, dirs, own or mtimes, version=version, base_size=end)
        rest = SPACE.match(text, end).end()  # type: ignore[union-attr]
        if rest < len(text):
            if version == 2:
                return None, "not valid JSON (extra data after a version 2 manifest)"
            problem = manifest._replay(text, end)
            if problem:
                return None, problem
        manifest.digest = digest or text_digest(text)
        return manifest, ""

    def _replay(self, text: str, end: int) -> str:
        """Apply the records after the base (which ends at `end`) in order; what is wrong with them, if anything."""
        try:
            raw = text.encode("utf-8", "surrogateescape") if not text.isascii() else None
        except UnicodeEncodeError:
            return "not text as a server sends it"
        chain = new_digest()
        done = 0  # bytes of the text in `chain`
        while end < len(text):
            if SPACE.match(text, end).end() == len(text):  # type: ignore[union-attr]
                break
            if not text.startswith('\n{"delta":', end) or self.records >= RECORDS_LIMIT:
                return "not valid JSON (data after the manifest that is not a record of ours)"
            at = end if raw is None else len(text[:end].encode("utf-8", "surrogateescape"))
            chain.update(text[done:at].encode() if raw is None else raw[done:at])
            done = at
            try:
                record, end = DECODER.raw_decode(text, end + 1)
            except Exception as exc:
                return f"not valid JSON ({type(exc).__name__})"
            if not (type(record) is dict and record.keys() == RECORD_KEYS and record["delta"] == chain.hexdigest()
                    and type(record["files"]) is dict and type(record["links"]) is dict
                    and type(record["dirs"]) is dict):
                return "a record does not follow the text it was made for"
            for path, value in record["files"].items():
                if value is None:
                    if self.files.pop(path, None) is None:
                        return "a record removes a file the manifest does not list"
                    self.mtimes.pop(path, None)
                else:
                    self.mtimes.pop(path, None)
                    if not file_entry(path, value, (3, 4), self.files, self.mtimes):
                        return "a record's file entry is not (size, mode, hash) under a clean path"
            for change, table, valid in ((record["links"], self.links, link_ok), (record["dirs"], self.dirs, dir_ok)):
                for path, value in change.items():
                    if value is None:
                        if table.pop(path, None) is None:
                            return "a record removes an entry the manifest does not list"
                    elif valid(path, value):
                        table[sys.intern(path)] = value
                    else:
                        return "a record's symlink or directory entry is not well formed"
            self.records += 1
        self.log_size = end - self.base_size
        return ""

    @classmethod
    def of(cls, entries: list[Entry], hashes: Mapping[str, str], vouched: Manifest | None = None,
           trusted: bytes = b"") -> Manifest:
        """The manifest of `entries` as uploaded: each file with its hash in `hashes`, or, where `trusted` marks
        its position, the one `vouched` (the host's previous manifest) lists (Delta.trusted)."""
        manifest = cls()
        for index, entry in enumerate(entries):
            digest = vouched.files[entry.name][2] if vouched is not None and index < len(trusted) and \
                trusted[index] else hashes.get(entry.name)
            if entry.kind == "file" and digest is not None:
                manifest.files[entry.name] = (entry.size, entry.mode, digest)
                if trusted_mtime(entry.mtime):
                    manifest.mtimes[entry.name] = entry.mtime
            elif entry.kind == "symlink":
                manifest.links[entry.name] = entry.link
            elif entry.kind == "dir":
                manifest.dirs[entry.name] = entry.mode
        return manifest


    def carry(self, old: Manifest, paths: list[str]) -> Manifest:
        """Keep `paths` from `old`: files we uploaded earlier and left in place stay ours until pruned."""
        for path in paths:
            if path in old.files:
                self.files[path] = old.files[path]
                if path in old.mtimes:
                    self.mtimes[path] = old.mtimes[path]
            elif path in old.links:
                self.links[path] = old.links[path]
        return self


# Fleet memory: the hosts of one deploy hold the same manifest (the last deploy wrote it everywhere), so it is parsed
# once and shared, found by its text's digest. Per host, a 20,000-file manifest is ~2 MB parsed and ~30 MB while
# json.loads runs; shared, 500 hosts cost what one does. Weak: a manifest goes once no host uses it (hosts whose
# manifests differ hold one each, as before); the last one parsed stays for hosts that come later (max_parallel).
# Never mutated once parsed: compare, seed_removals and carry only read it.
_SHARED: weakref.WeakValueDictionary[bytes, Manifest] = weakref.WeakValueDictionary()
_LAST: list[Manifest] = []
_ENCODED: list[bytes] = [b"", b""]  # the last manifest written: [digest, JSON bytes], shared by the hosts it fits


def parse_shared(text: str, digest: bytes = b"") -> tuple[Manifest | None, str]:
    """Manifest.parse, once per distinct text during a deploy (see _SHARED). `digest`: the hex digest of the text's
    bytes, when the caller has it already (listing.ManifestText hashes the bytes as they came)."""
    if not digest:
        key = new_digest()
        key.update(text.encode("utf-8", "surrogateescape"))
        digest = key.hexdigest().encode()
    manifest = _SHARED.get(digest)
    if manifest is not None:
        return manifest, ""
    manifest, problem = Manifest.parse(text, digest.decode())
    if manifest is not None:
        _SHARED[digest] = manifest
        _LAST[:] = [manifest]
    return manifest, problem


def encoded(manifest: Manifest) -> bytes:
    """The manifest's JSON bytes; equal to the last host's, the same object: every host of a fleet uploads the
    same manifest (2.4 MB for 20,000 files), held once however many hosts are sending it."""
    return _shared_bytes(manifest.dumps().encode())


def _shared_bytes(data: bytes) -> bytes:
    key = new_digest()
    key.update(data)
    digest = key.hexdigest().encode()
    if _ENCODED[0] == digest:
        return _ENCODED[1]
    _ENCODED[:] = [digest, data]
    return data


_BUILDING = threading.Lock()


def encoded_build(build: Callable[[], Manifest], base: Manifest | None = None) -> bytes:
    """encoded(build()), one host at a time: each host's tar thread builds its manifest at the stream's end, and
    a 20,000-file one is ~8 MB while built and dumped; in turn, a fleet holds one of those at once, not one a host.
    With `base` (appendable), only the record that turns it into the new one: shared alike by the hosts it fits."""
    with _BUILDING:
        if base is None:
            return encoded(build())
        return _shared_bytes(build().record(base).encode())


def appendable(base: Manifest | None, entries: list[Entry]) -> bool:
    """Whether an upload of `entries` stores its manifest as a record appended to `base`, the stored one it was
    compared with (Manifest.record), rather than whole: when `base` is a version 3 text of ours, and its records
    with this one stay under a quarter of its base's size (and RECORDS_LIMIT). Then the whole is written again,
    so that what every deploy reads back stays about the size of the build's manifest. Decided before the stream
    starts (the server's command must know), from the entries sent: a record is ~100 bytes and a path a file."""
    if base is None or base.version != VERSION or not base.digest or base.records >= RECORDS_LIMIT - 1:
        return False
    estimate = sum(len(entry.name) + 100 for entry in entries)
    return base.log_size + estimate <= base.base_size // 4


@dataclass
class ServerView:
    """The server's side of the comparison, read in one round trip (listing.server_script, listing.ListingReader)."""

    manifest: Manifest | None
    # Read-only (a fleet's hosts may share them: listing.ListingReader).
    present: AbstractSet[str]  # files and symlinks that exist
    dirs: AbstractSet[str]
    touched: AbstractSet[str]  # changed since the manifest was written
    exists: bool  # the directory itself exists
    problem: str = ""  # why a manifest that is there could not be used (said as a warning: a full upload follows)


def plain_manifest_key(target: str) -> str:
    return hashlib.sha256(target.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def user_manifest_path(directory_key: str) -> str:
    """Where a plain deploy's manifest lives on the server (relative to the login's home)."""
    return posixpath.join(".cache", "sshipit", "manifests", directory_key + ".json")


# The blocks of manifest text the fleet's hosts hold as it arrives (listing.ManifestText), for one deploy: block
# bytes -> [those bytes, how many hosts hold them]; equal blocks are one object however many hosts hold them.
_BLOCKS: dict[bytes, list[object]] = {}
_UNUSABLE: dict[bytes, str] = {}  # digest of a manifest text that did not parse -> why (parsed once, not per host)
_INDEX: list[object] = []  # [entries, listing.LocalIndex]: the deploy's local names, one index for every host


@dataclass
class Delta:
    send: list[Entry]  # what goes into the tar stream
    skipped_files: int = 0
    skipped_bytes: int = 0
    hashes: dict[str, str] = field(default_factory=lambda: _NAME_HASHES)  # the deploy's one table (_NAME_HASHES)
    # By entry position, 1 where this host's manifest vouched for the hash (its mtime matched): that manifest's
    # value, never shared. A byte an entry: 20 KB a host for 20,000 files, where a dict of them is 0.4 MB.
    trusted: bytearray = field(default_factory=bytearray)
    stale: list[str] = field(default_factory=list)  # uploaded earlier, no longer among the sources


def compare(entries: list[Entry], view: ServerView | None, removed: tuple[str, ...] | list[str] = (),
            checksum: bool = False) -> Delta:
    """Decide what must be sent. `removed` are paths (delete settings) that vanish before the upload."""
    if view is None or view.manifest is None:
        return Delta(send=list(entries))
    manifest = view.manifest

    def gone(path: str) -> bool:
        return any(path == r or path.startswith(r + "/") for r in removed)

    delta = Delta(send=[], trusted=bytearray(len(entries)))
    names = set()
    others = set()  # names that are files or symlinks in the build: nothing of the server's below them survives
    chosen = []  # files and symlinks to send
    changed_dirs = []  # new on the server, or another mode
    for index, entry in enumerate(entries):
        names.add(entry.name)
        on_server = entry.name in view.present and entry.name not in view.touched and not gone(entry.name)
        if entry.kind == "dir":
            if (entry.name not in view.dirs or gone(entry.name)
                    or manifest.dirs.get(entry.name) != entry.mode):
                changed_dirs.append(entry.name)
            continue
        others.add(entry.name)
        if entry.kind == "symlink":
            if not (on_server and manifest.links.get(entry.name) == entry.link):
                chosen.append(entry)
            continue
        known = manifest.files.get(entry.name)
        if on_server and known is not None and known[0] == entry.size and known[1] == entry.mode:
            # Same size and mtime as when the listed hash was taken (and the server's copy untouched since): the
            # same content, as rsync decides by default, without reading the file (trusted_mtime says when).
            if not checksum and manifest.mtimes.get(entry.name) == entry.mtime:
                digest = known[2]
                delta.trusted[index] = 1  # this server's word: for this host only (Manifest.of)
            else:
                digest = delta.hashes[entry.name] = local_hash(entry)
            if digest == known[2]:
                delta.skipped_files += 1
                delta.skipped_bytes += entry.size
                continue
        chosen.append(entry)
    if chosen or changed_dirs:
        # A directory's header goes when the directory is new or its mode changed, and for every directory above
        # anything sent: where a staged directory is merged into the server's, its mode and time are set from the
        # stream's, so one the stream only implied would get the server's umask. The other directories stay as
        # they are (and stay out of the merge's checks): with everyday changes, a few headers instead of all.
        wanted = set(changed_dirs)
        above: set[str] = set()  # holds every directory above each of its members too
        for path in [*(e.name for e in chosen), *changed_dirs]:
            while "/" in path:
                path = path.rpartition("/")[0]
                if path in above:
                    break
                above.add(path)
        wanted |= above
        picked = {id(entry) for entry in chosen}
        delta.send = [e for e in entries if (e.kind == "dir" and e.name in wanted) or id(e) in picked]

    def replaced(path: str) -> bool:  # below a path that is now a file or symlink: gone with the old directory
        while "/" in path:
            path = path.rpartition("/")[0]
            if path in others:
                return True
        return False

    delta.stale = sorted(p for p in [*manifest.files, *manifest.links]
                         if p not in names and p in view.present and not replaced(p))
    return delta


def seed_removals(entries: list[Entry], delta: Delta, view: ServerView) -> list[str]:
    """What to delete from a copy of the live release so that only its unchanged source files remain."""
    sent = {e.name for e in delta.send if e.kind != "dir"}
    keep = {e.name for e in entries if e.kind != "dir" and e.name not in sent}
    needed_dirs = {e.name for e in entries if e.kind == "dir"}
    for entry in entries:
        parent = posixpath.dirname(entry.name)
        while parent and parent not in needed_dirs:
            needed_dirs.add(parent)
            parent = posixpath.dirname(parent)
    doomed_dirs = sorted(d for d in view.dirs if d not in needed_dirs)
    doomed = [p for p in view.present if p not in keep and not any(p.startswith(d + "/") for d in doomed_dirs)]
    return sorted(doomed) + doomed_dirs


def anchored(var: str, path: str, quoted: bool = False) -> str:
    """Shell step that sets $`var` to `path` made absolute: relative paths are relative to the login's home, where
    a command starts, and the commands that use the variable change directory first."""
    return f'{var}={path if quoted else shell_path(path)}; case ${var} in /*) ;; *) {var}="$PWD/${var}";; esac'


def anchor_manifest(path: str, quoted: bool = False) -> str:
    """Shell step that sets $M to the manifest's path, made absolute (anchored), and $N to the name an incoming
    manifest waits under until it is stored."""
    return f'{anchored("M", path, quoted)}; N="$M.new.$$"'


def _date(path: str, backdate: bool) -> str:
    """Shell step that sets the file's time to now, or (backdate) one second back: on a server whose find has no
    -cnewer, edits are found by `-newer`, in whole seconds, and an edit made within the second of this deploy must
    still count as newer. Our own files keep the build's mtimes, so this costs nothing but a rare re-send."""
    if backdate:
        return f'{{ {{ t=$(date +%s) && touch -d "@$((t - 1))" -- {path}; }} 2>/dev/null || touch -- {path}; }}'
    return f"touch -- {path}"


def manifest_aside(source: str, base: str = "") -> str:
    """Shell step that moves a manifest unpacked at `source` to $N (see anchor_manifest), out of the upload's way;
    with `base` (a shell word: the stored manifest it was made against), `source` is a record, and $N is the base
    with the record after it (`source` stays: it goes with the staging)."""
    if base:
        return (f'{{ {{ {{ [ -d "${{M%/*}}" ] || mkdir -p -- "${{M%/*}}"; }} && cat -- {base} {source} > "$N"; }} '
                f'2>/dev/null || rm -f -- "$N"; }}')
    return (f'{{ {{ {{ [ -d "${{M%/*}}" ] || mkdir -p -- "${{M%/*}}"; }} && mv -f -- {source} "$N"; }} 2>/dev/null '
            f'|| rm -f -- {source}; }}')


def store_manifest(backdate: bool) -> str:
    """Shell step that makes $N (when it is there) the manifest $M, dated now.

    Run last, once every file of the upload is in place and every staging link is gone: the time it gets must
    be later than the status change of each file it lists, since later deploys take any file changed after it
    for an edit. It cannot fail the upload: a manifest that is not stored costs one full upload later.
    """
    date = _date('"$N"', backdate)
    return f'{{ {{ [ -f "$N" ] && {date} && mv -f -- "$N" "$M"; }} 2>/dev/null || rm -f -- "$N"; }}'


async def write_manifest(
    conn: SSHClientConnection, path: str, manifest: Manifest, timeout: float, gzip: bool = False,
    backdate: bool = False,
) -> None:
    """Store the manifest atomically (write aside, rename), when no upload carried it (see store_manifest).
    Failing here only costs the next deploy a full upload.

    With `gzip` it travels compressed (stored as plain JSON); `backdate`: see _date.
    """
    target = shell_path(path)
    parent = shell_path(posixpath.dirname(path) or ".")
    data = encoded(manifest)
    if gzip:
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        data = packer.compress(data) + packer.flush()
    command = (f"mkdir -p -- {parent} && {'gzip -dc' if gzip else 'cat'} > {target}.tmp.$$ && "
               f"mv -f -- {target}.tmp.$$ {target}")
    if backdate:
        command += f" && {_date(target, True)}"
    await capture(conn, command, timeout, stdin=data)
