"""The text of a stored manifest as it is read back: the file is the login's to write, so every part of it is
checked as hostile input (exact shapes, clean paths, limits); and what a record is, the line a later upload
appends to it (manifest.Manifest.record, Manifest.parse). Pure functions, no I/O: manifest.py owns the rest.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping

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
