"""The text of a stored manifest as it is read back: the file is the login's to write, so every part of it is
checked as hostile input (exact shapes, clean paths, limits); and what a record is, the line a later upload
appends to it (manifest.Manifest.record, Manifest.parse). Pure functions, no I/O: manifest.py owns the rest.

A base's tables are checked all at once (file_table, links_ok, dirs_ok: C-level loops over whole columns and one
scan of all paths joined), on the critical path of every redeploy; they decide exactly as the per-entry checks
(file_entry, link_ok, dir_ok, which records use) do, and tests/test_manifest_batch.py holds them to it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from itertools import chain, compress, islice, repeat
from operator import itemgetter
from typing import Any

HEX64 = re.compile(r"[0-9a-f]{64}")
# Times at or before 1980-01-02 are never trusted: reproducible builds date every file 0, 1 or 1980-01-01
# (SOURCE_DATE_EPOCH, Nix, zip), whatever changed (manifest.trusted_mtime).
TRUSTED_SINCE = 315_619_200


def no_float(value: str) -> object:
    raise ValueError(f"not an integer: {value[:20]}")


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")  # names read with surrogateescape; other lone surrogates are forged
    except UnicodeEncodeError:
        return False
    return True


def clean(path: object) -> bool:
    """A relative path as we send it: no empty, '.' or '..' part, no NUL, not absolute."""
    if type(path) is not str or not path or len(path) > 4096 or "\0" in path:
        return False
    # Only a surrogate can fail to encode (names are read with surrogateescape; other lone ones are forged).
    if path[0] == "/" or path[-1] == "/" or "//" in path or not (path.isascii() or encodable(path)):
        return False
    return not any(part in (".", "..") for part in path.split("/")) if "." in path else True


DECODER = json.JSONDecoder(parse_float=no_float, parse_constant=no_float)
SPACE = re.compile(r"[ \t\n\r]*")
RECORD_KEYS = {"delta", "files", "links", "dirs"}
RECORDS_LIMIT = 32  # records after one base, at most: then the manifest is written whole again (appendable)


def file_entry(path: object, value: object, shapes: tuple[int, ...], files: dict[str, tuple[int, int, str]],
               mtimes: dict[str, int]) -> bool:
    """Put a file entry, [size, mode, hash] or [size, mode, hash, mtime] (when 4 is in `shapes`), into `files`
    (and its mtime into `mtimes`); False, and nothing put, when it or its path is not exactly that."""
    if not (clean(path) and type(value) is list and len(value) in shapes and type(value[0]) is int
            and type(value[1]) is int and type(value[2]) is str and 0 <= value[0] < 1 << 63
            and 0 <= value[1] <= 0o7777 and HEX64.fullmatch(value[2])):
        return False
    if len(value) == 4 and not (type(value[3]) is int and TRUSTED_SINCE < value[3] < 1 << 63):
        return False
    assert isinstance(path, str)
    path = sys.intern(path)
    files[path] = (value[0], value[1], value[2])
    if len(value) == 4:
        mtimes[path] = value[3]
    return True


def link_ok(path: object, link: object) -> bool:
    return clean(path) and type(link) is str and bool(link) and "\0" not in link and encodable(link)


def dir_ok(path: object, mode: object) -> bool:
    return clean(path) and type(mode) is int and 0 <= mode <= 0o7777


# ------------------------------------------------------------------ the same checks, a whole table at once
# Checked entry by entry, a base costs ~2 us an entry in Python calls (10 ms for 5,000 files, on every redeploy).
# These check a few thousand entries at a time, column by column, in C-level loops (map, set, min/max, join,
# bytes.translate/count, a literal search), and decide exactly as the per-entry checks do, for what a JSON text
# decodes to: object keys are str, values JSON's types only (dict, list, str, int, bool, None: DECODER refuses
# floats). tests/test_manifest_batch.py holds them to that.

_CHUNK = 2048  # entries at a time: their objects stay in cache across the passes, and the joined text small
_SLASH_TO_NUL = bytes.maketrans(b"/", b"\0")
_EMPTY_PART, _DOT_PART = re.compile(rb"\0\0"), re.compile(rb"\0\.\.?\0")
_HEX_DIGITS = b"0123456789abcdef"
_SIZE, _MODE, _HASH, _MTIME = (itemgetter(n) for n in range(4))  # the fields of a file entry


def clean_paths(paths: list[str]) -> bool:
    """Whether every one of `paths` (JSON object keys) is clean, as `clean` says, scanning them joined by NUL as
    UTF-8 bytes: no clean path holds a NUL, and no multi-byte UTF-8 sequence (nor surrogateescape's 0x80-0xff)
    holds a "/" or a ".", so each test below finds exactly what `clean` rejects, in whichever path it is."""
    if not paths:
        return True
    try:  # a lone surrogate, which no name read from a disk holds (names are read with surrogateescape)
        joined = "\0".join(paths).encode("utf-8", "surrogateescape")
    except (TypeError, UnicodeEncodeError):
        return False
    if max(map(len, paths)) > 4096 or joined.count(0) != len(paths) - 1:  # a path too long, a NUL in a path
        return False
    # Every "/" made a NUL, and one at each end: an empty part (an empty path, a leading or trailing "/", "//")
    # is then two NULs in a row, and a "." or ".." part one or two dots between NULs. (re finds these literals
    # in half the time `in` takes: NULs are frequent.)
    parts = b"\0" + joined.translate(_SLASH_TO_NUL) + b"\0"
    return not (_EMPTY_PART.search(parts) or _DOT_PART.search(parts))


def ints_within(values: list[Any], low: int, high: int) -> bool:
    """Whether every one of the (non-empty) `values` is an int, never a bool, from `low` to `high`. Of JSON's
    types, min and max refuse all but numbers (a TypeError: a str, list, dict or None among ints, or compared
    with `low`), so only a bool needs the type test, and only where 0 or 1 is in range."""
    try:
        if not (low <= min(values) and max(values) <= high):
            return False
    except (TypeError, RecursionError):  # RecursionError: lists nested as deep as the decoder allows, compared
        return False
    return low > 1 or set(map(type, values)) == {int}


def modes_ok(modes: list[Any]) -> bool:
    """ints_within(modes, 0, 0o7777), twice as fast for a column of a few distinct values (as modes are): their
    set is checked instead, unless it holds 0 or 1, behind which a bool could hide (True == 1: one of the two)."""
    try:
        distinct = set(modes)
    except TypeError:  # a list or an object
        return False
    return ints_within(modes if 0 in distinct or 1 in distinct else list(distinct), 0, 0o7777)


def hashes_ok(hashes: list[Any]) -> bool:
    """Whether every one of the (non-empty) `hashes` is 64 lowercase hex digits (HEX64). Joined by newlines (a
    TypeError: one is not a str), the text must be as long as that, hold nothing but hex digits and those
    newlines, and have each newline in its place (every 65th character): each hash between is 64 hex digits."""
    try:
        joined = "\n".join(hashes)
    except TypeError:
        return False
    count = len(hashes)
    return (len(joined) == 65 * count - 1 and joined.isascii()
            and joined.encode().translate(None, _HEX_DIGITS) == b"\n" * (count - 1)
            and joined[64::65] == "\n" * (count - 1))


def file_table(raw: dict[str, Any], shapes: tuple[int, ...]) -> tuple[
        dict[str, tuple[int, int, str]], dict[str, int]] | None:
    """A base's files map as file_entry puts it, entry by entry, into (files, mtimes): the same tuples under the
    same interned paths, in the same order; None when any entry is not exactly what file_entry takes. `raw`'s
    values are dropped as they are converted (None in their place)."""
    files: dict[str, tuple[int, int, str]] = {}
    mtimes: dict[str, int] = {}
    paths, values = iter(raw), iter(raw.values())
    while chunk := list(islice(paths, _CHUNK)):
        if not _file_chunk(chunk, list(islice(values, _CHUNK)), set(shapes), files, mtimes):
            return None
        raw.update(zip(chunk, repeat(None)))  # the JSON's lists go while the tuples come (no key added: safe)
    return files, mtimes


def _file_chunk(paths: list[str], values: list[Any], shapes: set[int], files: dict[str, tuple[int, int, str]],
                mtimes: dict[str, int]) -> bool:
    # Not a list: a number, true or null has no length; a str or an object of 3 or 4 is refused below, its
    # items (characters, keys) being strings where numbers must be.
    try:
        lengths = set(map(len, values))
        if not lengths <= shapes or not clean_paths(paths):
            return False
        with_time: list[bool] = []
        if len(lengths) == 1:  # of one shape (the usual): each field's column is a slice of them all in a row
            width = lengths.pop()
            flat = list(chain.from_iterable(values))
            sizes, modes, hashes = flat[0::width], flat[1::width], flat[2::width]
            times = flat[3::4] if width == 4 else []
        else:  # some entries without an mtime: the others' in order
            sizes, modes, hashes = list(map(_SIZE, values)), list(map(_MODE, values)), list(map(_HASH, values))
            with_time = list(map((4).__eq__, map(len, values)))
            times = list(map(_MTIME, compress(values, with_time)))
    except (TypeError, KeyError):  # KeyError: an object has no field 0
        return False
    if not (ints_within(sizes, 0, (1 << 63) - 1) and modes_ok(modes) and hashes_ok(hashes)
            and (not times or ints_within(times, TRUSTED_SINCE + 1, (1 << 63) - 1))):
        return False
    names = list(map(sys.intern, paths))
    if times:  # the mtimes of those that have one, in order
        mtimes.update(zip(compress(names, with_time) if with_time else names, times, strict=True))
    files.update(zip(names, zip(sizes, modes, hashes, strict=True), strict=True))
    return True


def links_ok(links: Mapping[str, Any]) -> bool:
    """Whether link_ok holds for every entry of a base's links map."""
    if not links:
        return True
    destinations = list(links.values())
    try:  # not a str; a lone surrogate
        joined = "\0".join(destinations).encode("utf-8", "surrogateescape")
    except (TypeError, UnicodeEncodeError):
        return False
    return (min(map(len, destinations)) > 0 and joined.count(0) == len(destinations) - 1
            and clean_paths(list(links)))


def dirs_ok(dirs: Mapping[str, Any]) -> bool:
    """Whether dir_ok holds for every entry of a base's dirs map."""
    return not dirs or (modes_ok(list(dirs.values())) and clean_paths(list(dirs)))


def changes(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, object]:
    """What turns `old` into `new`, by key: the new value, or None where a key went."""
    found: dict[str, object] = {key: value for key, value in new.items() if old.get(key) != value}
    found.update((key, None) for key in old if key not in new)
    return found


def text_digest(text: str) -> str:
    """The BLAKE3 of the text's bytes (manifest.new_digest's hash), or '' for a text no server could send."""
    import blake3

    digest = blake3.blake3()
    try:
        digest.update(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a forged lone surrogate: no record can follow such a text
        return ""
    return digest.hexdigest()
