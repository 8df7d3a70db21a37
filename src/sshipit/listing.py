"""Reading what is on a server: the target's listing and the last deploy's manifest, in one read-only command
(server_script), parsed as its bytes arrive (ListingReader, remote.probe_then's reader), for one host or a fleet.

Owns the listing's shell script (one walk of the tree where the server's find is GNU find, three finds where it
is not: BusyBox), its parser, and what a fleet's hosts share of it. Each host's listing goes into flags over the
deploy's local names (one index for every host: LocalIndex) as it arrives, keeping no more text than one partial
name; a host whose server holds exactly the local names gets the index's own key views as its sets (no set of its
own), others get sets of their own. Manifest texts are held in fixed blocks, each equal block once for the whole
fleet (ManifestText), and parsed once per distinct text. Nothing is taken on a server's word: a listing that is
not what find prints reads as none (a full upload), and a host's manifest text is exactly the bytes its server
sent, parsed as strictly (manifest.Manifest.parse); only equal bytes share a parse.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Callable, Sequence, Set
from typing import TYPE_CHECKING

from sshipit.manifest import (
    _BLOCKS,
    _INDEX,
    _SEP,
    _SHARED,
    _UNUSABLE,
    MANIFEST_LIMIT,
    Manifest,
    ServerView,
    anchor_manifest,
    new_digest,
    parse_shared,
)
from sshipit.remote import capture
from sshipit.rules import shell_path
from sshipit.sources import Entry

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

_BLOCK = 64 << 10  # manifest text is held in blocks this long, each shared by the hosts whose block is equal
_SEP_BYTES = _SEP.encode()
_NAME_LIMIT = 1 << 20  # one name longer than this (no NUL in sight) is not a listing find prints
# Bytes find never prints in a listing of "." (records "./a/b", NUL-terminated): an empty part, a "." or ".."
# part, a trailing slash, an empty record. Such a listing reads as garbled: a full upload, never a wrong one.
_ODD = re.compile(rb"/(?:/|\.\.?[/\0]|\0)")  # and an empty record ("\0\0"), checked apart: faster
_CUT_SHORT = "the server's listing was cut short"
_GARBLED = "the server's listing is not what find prints"
_PRESENT, _TOUCHED = 1, 2  # flags of a file or symlink name


def server_script(directory: str, manifest_path: str, quoted: bool = False, probed: bool = False) -> str:
    """The read-only command behind `read_server` (remote.probe can run it in the same exec as the probe).
    `quoted`: both are shell words already (release.py's lock names the live release by a shell variable).
    `probed`: it runs after remote.probe_command's own lines, which found out whether find is GNU find.

    One walk where find is GNU find: a record per name, its kind first: `p` (a file or symlink), `t` (one whose
    status changed after the manifest was written: find's own -cnewer, exact to the nanosecond, decided in the
    same walk) or `d` (a directory); then the name, last and NUL-terminated, so nothing a name holds can shift
    the records. Elsewhere (BusyBox) three finds, as before: files
    and symlinks, directories, changed ones (-newer: whole seconds; see manifest._date), each block ended by the
    separator. Either way the manifest comes last, and no further than MANIFEST_LIMIT: the file is the login's
    to write, and whatever it holds (even our separator) cannot shift the listings before it."""
    d = directory if quoted else shell_path(directory)
    types = r"\( -type f -o -type l \)"
    sep = _SEP.replace("\0", "\\000")
    gnu = '[ -n "$sshipit_walk" ]' if probed else "find . -maxdepth 0 -cnewer . -printf '' 2>/dev/null"
    # Relative paths are relative to the login's home, where the command starts: pin the manifest's down
    # before changing into the directory.
    return (
        f"{anchor_manifest(manifest_path, quoted)}; "
        f"if ! cd -- {d} 2>/dev/null; then echo absent; exit 0; fi; "
        f"if {gnu}; then echo walked; "
        "if [ -f \"$M\" ]; then set -- -cnewer \"$M\"; else set -- -false; fi; "
        f"find . {types} \\( \"$@\" -printf 't%p\\0' -o -printf 'p%p\\0' \\) -o -type d -printf 'd%p\\0'; "
        f"else echo present; find . {types} -print0; printf '{sep}'; find . -type d -print0; printf '{sep}'; "
        f"if [ -f \"$M\" ]; then find . {types} -cnewer \"$M\" -print0 2>/dev/null || "
        f"find . {types} -newer \"$M\" -print0; fi; fi; printf '{sep}'; "
        f"head -c {MANIFEST_LIMIT + 1} -- \"$M\" 2>/dev/null; true"
    )


async def read_server(
    conn: SSHClientConnection, directory: str, manifest_path: str, timeout: float, gzip: bool = False,
    entries: Sequence[Entry] = (),
) -> ServerView:
    """Read the manifest and list what is in `directory` now, in one command.

    With `gzip` (the server has it) the answer comes back compressed: for a build of 20,000 files it is ~5 MB of
    paths and hashes, under 2 MB gzipped, which is most of a no-change redeploy's time on a slow link.
    """
    script = server_script(directory, manifest_path)
    if gzip:
        script = f"{{ {script}; }} | gzip -1c"
    result = await capture(conn, script, timeout)
    return parse_server(result.raw, result.exit_status, gzip, entries)


def parse_server(raw: bytes, exit_status: int | None, gzip: bool, entries: Sequence[Entry] = ()) -> ServerView:
    """The ServerView from the whole output of `server_script` (gzipped when `gzip`): ListingReader's, fed at once."""
    reader = ListingReader(entries)
    if gzip:
        try:
            raw = zlib.decompress(raw, wbits=31)
        except zlib.error:
            reader.fail()  # read as "no manifest": a full upload, never a wrong one
    reader.feed(raw)
    return reader.view(exit_status)


class LocalIndex:
    """The deploy's local names by kind, each with its position: every host's listing is held as flags over these
    (one byte a name), and a host whose server holds exactly these names uses the index's key views as its sets."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.files: dict[str, int] = {}  # files and symlinks
        self.dirs: dict[str, int] = {}
        for entry in entries:
            if entry.kind == "dir":
                self.dirs.setdefault(entry.name, len(self.dirs))
            else:
                self.files.setdefault(entry.name, len(self.files))
        self.file_names, self.dir_names = self.files.keys(), self.dirs.keys()  # the sets hosts share

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> LocalIndex:
        """One index per deploy's entries, however many hosts read a listing (kept in manifest._INDEX)."""
        if _INDEX and _INDEX[0] is entries:
            return _INDEX[1]  # type: ignore[no-any-return]
        index = cls(entries)
        if entries:
            _INDEX[:] = [entries, index]
        return index


class ListingReader:
    """The output of `server_script`, decompressed, as it arrives (remote.probe_then's reader): each name goes
    into this host's flags (or its own set, for a name the build does not have) as soon as it is whole; the
    manifest text goes to a ManifestText."""

    def __init__(self, entries: Sequence[Entry] | Callable[[], Sequence[Entry]] = ()) -> None:
        # A callable gives the entries when the first bytes come (sources.Pending: read while the server works).
        self.entries = entries
        self.index = LocalIndex.of(()) if callable(entries) else LocalIndex.of(entries)
        self.files = bytearray(len(self.index.files))  # _PRESENT | _TOUCHED by position
        self.dirs = bytearray(len(self.index.dirs))
        self.counts = [0, 0, 0]  # local names present, touched, directories
        self.others: dict[str, int] = {}  # a name the build does not have: _PRESENT | _TOUCHED, or 4 (directory)
        self.head: bytes | None = None  # the first line: absent, walked (one walk), present (three finds)
        self.block = 0  # three finds: which list this is (files, directories, changed)
        self.pending = bytearray()  # a name not yet whole, or the first line
        self.text: ManifestText | None = None
        self.broken = False  # the stream was damaged or cut short
        self.garbled = False  # the listing is not one find prints

    def _local(self) -> None:
        """The index of the local names, once they are known (before the first name is looked up)."""
        if callable(self.entries):
            self.index = LocalIndex.of(self.entries())
            self.entries = ()
            self.files = bytearray(len(self.index.files))
            self.dirs = bytearray(len(self.index.dirs))

    def feed(self, data: bytes) -> None:
        self._local()
        if self.text is not None:
            self.text.feed(data)
            return
        if self.broken or self.garbled:
            return
        self.pending += data
        if self.head is None:
            line = self.pending.find(b"\n")
            if line < 0:
                self.garbled = len(self.pending) > 64
                return
            self.head = bytes(self.pending[:line]).strip()
            del self.pending[:line + 1]
        if self.head not in (b"walked", b"present"):
            self.pending = bytearray()
            return
        self._records()

    def _records(self) -> None:
        """Take every whole record in `pending`, up to the separator that ends the listings."""
        last = 1 if self.head == b"walked" else 3  # separators before the manifest's text
        while self.text is None:
            buf = self.pending
            at = buf.find(_SEP_BYTES)
            if at < 0:
                # A NUL this far from the end cannot begin a separator (none was found): it ends a record.
                cut = buf.rfind(b"\0", 0, max(0, len(buf) - len(_SEP_BYTES) + 1))
                if cut >= 0:
                    self._take(bytes(buf[:cut + 1]))
                    del buf[:cut + 1]
                elif len(buf) > _NAME_LIMIT:
                    self.garbled = True
                if self.garbled:
                    self.pending = bytearray()
                return
            self._take(bytes(buf[:at]))
            del buf[:at + len(_SEP_BYTES)]
            if self.garbled:
                self.pending = bytearray()
                return
            self.block += 1
            if self.block == last:
                rest = bytes(buf)
                self.pending = bytearray()
                self.text = ManifestText()
                self.text.feed(rest)

    def _take(self, chunk: bytes) -> None:
        """Whole records, each NUL-terminated (`chunk` is empty, or ends with a NUL)."""
        if not chunk:
            return
        if chunk[-1] != 0 or chunk[0] == 0 or b"\0\0" in chunk or _ODD.search(chunk):
            self.garbled = True
            return
        walked = self.head == b"walked"
        fixed = "pdt"[self.block] if not walked else ""  # three finds: the block says what its names are
        start = 2 if fixed else 3  # where a name starts: after "./", or after the record's kind and "./"
        get_file, get_dir = self.index.files.get, self.index.dirs.get
        fflags, dflags, others = self.files, self.dirs, self.others
        present = touched = folders = 0
        for record in chunk[:-1].decode("utf-8", "surrogateescape").split("\0"):
            kind = fixed or record[0]
            if not record.startswith("./", start - 2):
                if record[start - 2:] == ".":
                    continue  # the target itself
                self.garbled = True
                return
            name = record[start:]
            if kind == "p":
                at = get_file(name)
                if at is None:
                    others[sys.intern(name)] = others.get(name, 0) | _PRESENT
                elif not fflags[at] & _PRESENT:
                    fflags[at] |= _PRESENT
                    present += 1
            elif kind == "d":
                at = get_dir(name)
                if at is None:
                    others[sys.intern(name)] = others.get(name, 0) | 4
                elif not dflags[at]:
                    dflags[at] = 1
                    folders += 1
            elif kind == "t":  # one walk: present and changed; three finds: changed (as find said)
                flag = _TOUCHED | _PRESENT if walked else _TOUCHED
                at = get_file(name)
                if at is None:
                    others[sys.intern(name)] = others.get(name, 0) | flag
                    continue
                old = fflags[at]
                fflags[at] = old | flag
                present += flag & _PRESENT and not old & _PRESENT
                touched += not old & _TOUCHED
            else:
                self.garbled = True
                return
        self.counts[0] += present
        self.counts[1] += touched
        self.counts[2] += folders

    def fail(self) -> None:
        self.broken = True

    def view(self, exit_status: int | None) -> ServerView:
        """The ServerView: the same for the same bytes however they were cut into pieces."""
        self._local()
        if self.text is not None and (self.broken or self.garbled or exit_status != 0):
            self.text.release()
        if self.broken or self.head not in (b"walked", b"present") or exit_status != 0:
            return ServerView(None, set(), set(), set(), exists=False)
        if self.garbled or self.text is None:
            return ServerView(None, set(), set(), set(), exists=True,
                              problem=_GARBLED if self.garbled else _CUT_SHORT)
        manifest, problem = self.text.parsed()
        index = self.index
        return ServerView(manifest, self._set(self.files, index.files, index.file_names, _PRESENT, 0),
                          self._set(self.dirs, index.dirs, index.dir_names, 1, 2, 4),
                          self._set(self.files, index.files, index.file_names, _TOUCHED, 1), exists=True,
                          problem=problem)

    def _set(self, flags: bytearray, names: dict[str, int], shared: Set[str], bit: int, count: int,
             other_bit: int = 0) -> Set[str]:
        """The names flagged `bit`: `shared` (the index's key view) when that is all of them, as on every host
        whose server holds exactly the build's names; else a set of this host's."""
        extra = [name for name, bits in self.others.items() if bits & (other_bit or bit)]
        if not extra and self.counts[count] == len(names) and names:
            return shared
        if not extra and not self.counts[count]:
            return frozenset()
        found = {name for name, at in names.items() if flags[at] & bit} if self.counts[count] else set()
        found.update(extra)
        return found


class ManifestText:
    """One host's manifest text as it arrives, in blocks of _BLOCK bytes at fixed offsets: each whole block is
    looked up among those the deploy's hosts hold (manifest._BLOCKS) and, when equal, that one object is kept,
    not a copy. A fleet's hosts usually hold one text (the last deploy wrote it everywhere): then it is held once,
    plus less than one block per host, however their bytes arrive and whichever host is ahead."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.partial = bytearray()  # the text beyond the last whole block
        self.result: tuple[Manifest | None, str] | None = None

    def feed(self, data: bytes) -> None:
        self.partial += data
        while len(self.partial) >= _BLOCK:
            block = bytes(self.partial[:_BLOCK])
            del self.partial[:_BLOCK]
            held = _BLOCKS.get(block)  # equal bytes (a dict compares them), not only an equal hash
            if held is None:
                held = _BLOCKS[block] = [block, 0]
            held[1] += 1  # type: ignore[operator]
            self.blocks.append(held[0])  # type: ignore[arg-type]

    def release(self) -> None:
        """Let go of this host's blocks: one no host holds any more leaves the registry."""
        for block in self.blocks:
            held = _BLOCKS.get(block)
            if held is not None:
                held[1] -= 1  # type: ignore[operator]
                if not held[1]:
                    del _BLOCKS[block]
        self.blocks = []
        self.partial = bytearray()

    def parsed(self) -> tuple[Manifest | None, str]:
        """The manifest (parse_shared's answer) once all of it came: one parsed already for the same bytes (found
        by their digest, without joining them) or, for a text not seen yet, its own parse."""
        if self.result is None:
            self.result = self._parse()
        return self.result

    def _parse(self) -> tuple[Manifest | None, str]:
        digest = new_digest()
        for block in self.blocks:
            digest.update(block)
        digest.update(self.partial)
        key = digest.hexdigest().encode()
        known = _SHARED.get(key)
        if known is not None or key in _UNUSABLE:
            self.release()
            return known, _UNUSABLE.get(key, "")
        data = b"".join(self.blocks) + self.partial
        self.release()
        text = data.decode("utf-8", "surrogateescape")
        del data
        manifest, problem = parse_shared(text, key) if text.strip() else (None, "")
        if problem:
            _UNUSABLE[key] = problem
        return manifest, problem
