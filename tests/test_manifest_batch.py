"""A stored manifest's base is checked a whole table at once (manifest_text.file_table, links_ok, dirs_ok), on
the critical path of every redeploy; the per-entry checks (file_entry, link_ok, dir_ok) say what is right. These
hold the two to the same decisions and the same tables for anything a JSON text decodes to: generated hostile
entries (paths with empty, "." and ".." parts, NULs, lone surrogates, 4,097 characters; hashes of the wrong length,
case or characters; bools where ints go, negative and huge ints, mtimes at the trusted bound, 3 and 4 fields
mixed, strings and objects where a list goes), decoded from their JSON text as Manifest.parse reads it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sshipit.manifest as manifest_module
from sshipit import manifest_text
from sshipit.manifest import Manifest
from sshipit.manifest_text import (
    DECODER,
    TRUSTED_SINCE,
    clean,
    clean_paths,
    dir_ok,
    dirs_ok,
    file_entry,
    file_table,
    link_ok,
    links_ok,
)

HASH = "0123456789abcdef" * 4
OLD = 1_700_000_000


def one_by_one(raw: dict[str, Any], shapes: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, int]] | None:
    """What the per-entry check makes of a files map (Manifest.parse as it was before the batch check)."""
    files: dict[str, Any] = {}
    mtimes: dict[str, int] = {}
    for path, value in raw.items():
        if not file_entry(path, value, shapes, files, mtimes):
            return None
    return files, mtimes


@contextmanager
def chunks_of(size: int) -> Iterator[None]:
    """file_table with chunks this small: the boundaries between them are crossed by small tables too."""
    saved = manifest_text._CHUNK
    manifest_text._CHUNK = size
    try:
        yield
    finally:
        manifest_text._CHUNK = saved


@contextmanager
def entry_by_entry() -> Iterator[None]:
    """Manifest.parse with the per-entry checks in place of the batch ones: the reference for whole texts."""
    saved = manifest_module.file_table, manifest_module.links_ok, manifest_module.dirs_ok
    manifest_module.file_table = one_by_one  # type: ignore[assignment]
    manifest_module.links_ok = lambda links: all(link_ok(p, d) for p, d in links.items())
    manifest_module.dirs_ok = lambda dirs: all(dir_ok(p, m) for p, m in dirs.items())
    try:
        yield
    finally:
        manifest_module.file_table, manifest_module.links_ok, manifest_module.dirs_ok = saved


def decoded(value: object) -> Any:
    """`value` as Manifest.parse gets it: written as JSON (lone surrogates escaped), read back by its decoder."""
    return DECODER.decode(json.dumps(value))


# ----------------------------------------------------------------------------------------------- strategies

parts = st.sampled_from(["a", "b", "é", "файл", "😀", ".hidden", "...", "a.b", "..x", "x..", " ", "\udc80",
                         "\udcff", "-"]) | st.text(min_size=1, max_size=6).filter(lambda p: "/" not in p)
hostile_parts = st.sampled_from(["", ".", "..", "\0", "a\0", "\ud800", "\udc00", "\udfff", "x" * 4097])
good_paths = st.lists(parts, min_size=1, max_size=4).map("/".join)
paths = st.one_of(
    good_paths,
    good_paths,
    st.tuples(st.lists(parts, max_size=3), hostile_parts, st.lists(parts, max_size=3))
    .map(lambda t: "/".join([*t[0], t[1], *t[2]])),
    good_paths.map(lambda p: "/" + p), good_paths.map(lambda p: p + "/"), good_paths.map(lambda p: p + "//x"),
    st.sampled_from(["", "/", "//", "x" * 4096, "y" * 4097, "a/" + "z" * 4094, "é" * 4097]),
    st.text(max_size=12),
)
json_junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.just([]), st.just({}),
                      st.lists(st.integers(0, 9), max_size=2))
# Each field's faults: mostly at and around its bounds, where a batch check could be off by one.
sizes = st.one_of(st.sampled_from([0, 1, 2**63 - 1, 2**63, -1, 2**64, True, False]),
                  st.integers(-2, 2) | st.integers(2**63 - 2, 2**63 + 1) | st.integers(0, 2**70), json_junk)
modes = st.one_of(st.sampled_from([0o644, 0o755, 0, 1, 0o7777, 0o10000, -1, True, False]),
                  st.integers(-2, 2) | st.integers(0o7775, 0o10002), json_junk)
hashes = st.one_of(
    st.sampled_from([HASH, HASH[:-1], HASH + "0", HASH.upper(), HASH[:-1] + "g", HASH[:-1] + "\n", "\n" + HASH,
                     HASH[:-1] + "é", HASH[:-1] + "\ud800", HASH[:32] + "\n" + HASH[:31], "", 64]),
    st.text("0123456789abcdef", min_size=62, max_size=66), st.text(min_size=63, max_size=65), json_junk)
mtimes = st.one_of(st.sampled_from([TRUSTED_SINCE, TRUSTED_SINCE + 1, 0, 1, -1, 2**63 - 1, 2**63, True, False]),
                   st.integers(TRUSTED_SINCE - 2, TRUSTED_SINCE + 2) | st.integers(2**63 - 2, 2**63 + 1),
                   json_junk)
destinations = st.sampled_from(["", "\0", "a\0b", "\ud800", "\udc80", "../x", "/abs", "é", "x" * 5000]) | json_junk
good_value = st.tuples(st.integers(0, 2**63 - 1), st.sampled_from([0o644, 0o755, 0o600]),
                       st.text("0123456789abcdef", min_size=64, max_size=64),
                       st.none() | st.integers(TRUSTED_SINCE + 1, 2**63 - 1)) \
    .map(lambda v: list(v[:3]) if v[3] is None else list(v))
hostile_value = st.one_of(
    st.tuples(sizes, modes, hashes).map(list),
    st.tuples(sizes, modes, hashes, mtimes).map(list),
    st.lists(st.integers(0, 9) | st.text(max_size=2), max_size=5),
    st.text(min_size=3, max_size=4), st.dictionaries(st.text(max_size=2), st.integers(), min_size=3, max_size=4),
    st.integers(), st.none(), st.booleans(),
)


@st.composite
def with_faults(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any],
                max_size: int = 12) -> list[Any]:
    """Good items with a few (mostly none or one) bad ones among them, anywhere: each fault on its own decides."""
    items = draw(st.lists(good, max_size=max_size))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 1, 2]))):
        items.insert(draw(st.integers(0, len(items))), draw(bad))
    return items


@st.composite
def one_fault(draw: st.DrawFn) -> tuple[str, Any]:
    """A file entry with one thing wrong, or maybe right: its path, one field, its shape, or the whole value."""
    path, value = draw(good_paths), draw(good_value)
    kind = draw(st.sampled_from(["path", "field", "field", "field", "shape", "value"]))
    if kind == "path":
        path = draw(paths)
    elif kind == "field":
        field = draw(st.integers(0, 3))
        if field == 3 and len(value) == 3:
            value.append(0)
        value[field] = draw((sizes, modes, hashes, mtimes)[field])
    elif kind == "shape":
        value = draw(st.sampled_from([value[:2], value[:3], [*value[:3], OLD], [*value[:3], OLD, OLD], []]))
    else:
        value = draw(hostile_value)
    return path, value


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    """A files map, mostly well formed: good entries, and none, one or a few with one thing wrong among them."""
    return dict(draw(with_faults(st.tuples(good_paths, good_value), one_fault(), max_size=25)))


# ----------------------------------------------------------------------------------------------- properties


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.sampled_from([(3, 4), (3,)]), st.sampled_from([2048, 1, 3, 7]))
def test_the_batch_check_takes_exactly_what_the_per_entry_check_takes(
    table: dict[str, Any], shapes: tuple[int, ...], chunk: int,
) -> None:
    want = one_by_one(decoded(table), shapes)
    with chunks_of(chunk):
        got = file_table(decoded(table), shapes)  # a copy: it drops the values it converted
    assert (got is None) == (want is None), (table, want, got)
    if got is not None and want is not None:
        assert got == want
        assert list(got[0]) == list(want[0]) and list(got[1]) == list(want[1])  # the same order
        for path, entry in got[0].items():
            assert sys.intern(path) is path and type(entry) is tuple and len(entry) == 3
            assert list(map(type, entry)) == [int, int, str]
        assert set(map(type, got[1].values())) <= {int}


@settings(max_examples=400, deadline=None)
@given(with_faults(good_paths, paths))
def test_paths_checked_at_once_are_exactly_the_clean_ones(listed: list[str]) -> None:
    listed = decoded(listed)
    assert clean_paths(listed) == all(map(clean, listed)), listed


@settings(max_examples=300, deadline=None)
@given(with_faults(st.tuples(good_paths, good_paths), st.tuples(paths, destinations)).map(dict),
       with_faults(st.tuples(good_paths, st.sampled_from([0o755, 0o700, 0, 1])), st.tuples(paths, modes)).map(dict))
def test_links_and_directories_checked_at_once_are_exactly_the_well_formed_ones(
    links: dict[str, Any], dirs: dict[str, Any],
) -> None:
    links, dirs = decoded(links), decoded(dirs)
    assert links_ok(links) == all(link_ok(p, d) for p, d in links.items()), links
    assert dirs_ok(dirs) == all(dir_ok(p, m) for p, m in dirs.items()), dirs


@settings(max_examples=300, deadline=None)
@given(tables(), with_faults(st.tuples(good_paths, good_paths), st.tuples(paths, destinations), 3).map(dict),
       with_faults(st.tuples(good_paths, st.sampled_from([0o755, 0o700])), st.tuples(paths, modes), 3).map(dict),
       st.sampled_from([2, 3]))
def test_a_whole_text_reads_as_it_did_entry_by_entry(
    table: dict[str, Any], links: dict[str, Any], dirs: dict[str, Any], version: int,
) -> None:
    """Manifest.parse, batch against per-entry: the same manifest (tables, mtimes, order, sizes), or none for
    the same reason."""
    text = json.dumps({"version": version, "hash": "blake3", "files": table, "links": links, "dirs": dirs})
    got, problem = Manifest.parse(text, "d")
    with entry_by_entry():
        want, want_problem = Manifest.parse(text, "d")
    assert problem == want_problem
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert (got.files, got.mtimes, got.links, got.dirs) == (want.files, want.mtimes, want.links, want.dirs)
        assert list(got.files) == list(want.files) and list(got.mtimes) == list(want.mtimes)
        assert (got.version, got.base_size, got.digest) == (want.version, want.base_size, want.digest)


def test_every_bound_of_every_field_decides_alike_wherever_the_entry_stands() -> None:
    """Each field at and around its bounds, and of each wrong type, in an entry first, in the middle or last
    among good ones (of both shapes), in chunks of every fit."""
    edges: dict[int, list[object]] = {
        0: [-1, 0, 1, 2**63 - 1, 2**63, 2**64, True, False, None, "1", [1], {}],
        1: [-1, 0, 1, 0o7777, 0o10000, True, False, None, "420", [420]],
        2: [HASH, HASH[:-1], HASH + "0", HASH.upper(), "g" + HASH[1:], "é" + HASH[1:], "\ud800" + HASH[1:], "", 1,
            None, [HASH]],
        3: [TRUSTED_SINCE - 1, TRUSTED_SINCE, TRUSTED_SINCE + 1, 2**63 - 1, 2**63, 0, 1, -1, True, False, None,
            "1700000000", [OLD]],
    }
    decided = {True: 0, False: 0}
    for field, values in edges.items():
        for value in values:
            for position in (0, 2, 4):
                table = decoded({f"d/f{n}": [n, 0o644, HASH, OLD + n] if n % 2 else [n, 0o644, HASH]
                                 for n in range(5)})
                entry = table[f"d/f{position}"]
                if field == 3 and len(entry) == 3:
                    entry.append(OLD)
                entry[field] = value
                want = one_by_one(table, (3, 4))
                decided[want is None] += 1
                for chunk in (2048, 1, 2, 3):
                    with chunks_of(chunk):
                        assert file_table(decoded(table), (3, 4)) == want, (field, value, position, chunk)
    assert decided[True] > 100 and decided[False] > 20, decided  # both answers, many times


def test_hashes_of_the_wrong_length_are_refused_wherever_they_stand() -> None:
    """A short hash and a long one make the joined text as long as good ones (hashes_ok); one short at the end
    of a chunk moves no newline before it."""
    for bad in ([HASH[:-1], HASH + "0"], [HASH + "0", HASH[:-1]], [HASH, HASH[:-1]], [HASH[:-1]], [HASH + "a"],
                [HASH, HASH[:-2], HASH + "00"], [HASH[:-1] + "\n"], ["\n" + HASH[1:]], [HASH, "\n".join([HASH] * 2)]):
        table = {f"f{n}": [1, 0o644, value] for n, value in enumerate([HASH, *bad, HASH])}
        for chunk in (2048, 1, 2, 3):
            with chunks_of(chunk):
                assert file_table(decoded(table), (3, 4)) is None and one_by_one(table, (3, 4)) is None, (bad, chunk)
    assert file_table({f"f{n}": [1, 0o644, HASH] for n in range(5)}, (3,)) is not None


def test_a_bool_never_passes_for_a_number_even_behind_an_equal_int() -> None:
    """True == 1 and False == 0: a column's set (modes_ok) or min and max cannot tell them apart; the type can."""
    base = {"a": [1, 0o644, HASH, OLD], "b": [0, 1, HASH, OLD], "c": [2, 0, HASH, OLD]}
    assert file_table(decoded(base), (3, 4)) is not None
    for path, field, value in (("a", 0, True), ("b", 0, False), ("b", 1, True), ("c", 1, False), ("a", 1, True),
                               ("a", 3, True), ("c", 3, False)):
        table = decoded(base)
        table[path][field] = value
        assert file_table(table, (3, 4)) is None and one_by_one(table, (3, 4)) is None, (path, field, value)
    assert not dirs_ok({"d": 1, "e": True}) and not dirs_ok({"d": True, "e": 1}) and dirs_ok({"d": 1, "e": 0})


def test_lists_nested_as_deep_as_the_decoder_allows_are_no_field() -> None:
    """Where a number goes, two lists nested to the decoder's limit: compared (min, max), never a traceback."""
    for depth in (50, 900, 980, 990, 5000):
        deep = "[" * depth + "]" * depth
        for files in (f'{{"a":[{deep},420,"{HASH}"],"b":[{deep},420,"{HASH}"]}}',
                      f'{{"a":[1,420,"{HASH}",{deep}],"b":[1,420,"{HASH}",{deep}]}}'):
            text = f'{{"version":3,"hash":"blake3","files":{files},"links":{{}},"dirs":{{}}}}'
            manifest, problem = Manifest.parse(text)
            assert manifest is None and problem, depth
