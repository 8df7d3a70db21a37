"""The manifest's format (manifest.Manifest.dumps/parse): version 3 keeps each file's mtime inside its entry, and
version 2 (a separate map of mtimes, keyed by the path again) is still read, so an upgrade costs no full upload.
Both are read as hostile: anything but the exact shapes we write means no manifest."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, plugin_env
from sshipit.localserver import KeyPair, LocalServer
from sshipit.manifest import VERSION, Manifest, plain_manifest_key, user_manifest_path

HASH = "ab" * 32
OLD = 1_700_000_000  # an mtime old enough to be trusted (manifest.trusted_mtime)

# A manifest as version 2 wrote it (sshipit before this format): it must read as the same manifest.
V2_TEXT = ('{"version":2,"hash":"blake3","files":{"a.txt":[3,420,"' + HASH + '"],"d/b.bin":[0,493,"' + HASH
           + '"]},"links":{"l":"a.txt"},"dirs":{"d":493},"mtimes":{"a.txt":1700000000}}')


def as_v2(text: str) -> str:
    """A version-3 manifest rewritten as version 2 wrote it: the mtimes out of the entries, into a map."""
    data = json.loads(text)
    assert data["version"] == 3 and "mtimes" not in data
    data["mtimes"] = {path: entry[3] for path, entry in data["files"].items() if len(entry) == 4}
    data["files"] = {path: entry[:3] for path, entry in data["files"].items()}
    data["version"] = 2
    return json.dumps(data, separators=(",", ":"))


def sent(result: Result) -> tuple[int, int]:
    """(files sent, files skipped) as the tool reports them; no warning that the manifest was unusable."""
    match = re.search(r"uploaded (\d+) files", result.stdout)
    skipped = re.search(r"; (\d+) unchanged files", result.stdout)
    assert match and "unusable" not in result.stdout + result.stderr, result
    return int(match.group(1)), int(skipped.group(1)) if skipped else 0


def everyday(files: int = 5001) -> Manifest:
    """A build's manifest shaped like the benchmark's everyday tree: nested paths, every mtime kept."""
    manifest = Manifest()
    for n in range(files):
        path = f"node_modules/pkg-{n % 400:03d}/lib/sub{n % 3}/module-{n:05d}.js"
        manifest.files[path] = (100 + n, 0o644, f"{n:064x}")
        manifest.mtimes[path] = OLD + n
    for n in range(400):
        manifest.dirs[f"node_modules/pkg-{n:03d}"] = 0o755
    return manifest


def test_version_2_reads_as_written() -> None:
    manifest, problem = Manifest.parse(V2_TEXT)
    assert manifest is not None, problem
    assert manifest.files == {"a.txt": (3, 0o644, HASH), "d/b.bin": (0, 0o755, HASH)}
    assert manifest.links == {"l": "a.txt"} and manifest.dirs == {"d": 0o755}
    assert manifest.mtimes == {"a.txt": 1_700_000_000}


def test_version_3_keeps_the_mtime_in_the_entry_and_reads_back() -> None:
    manifest = Manifest.loads(V2_TEXT)
    assert manifest is not None and VERSION == 3
    text = manifest.dumps()
    data = json.loads(text)
    assert data["version"] == 3 and "mtimes" not in data
    assert data["files"] == {"a.txt": [3, 420, HASH, 1_700_000_000], "d/b.bin": [0, 493, HASH]}
    back = Manifest.loads(text)
    assert back == manifest and back is not None and back.mtimes == manifest.mtimes
    assert as_v2(text) == V2_TEXT  # the same manifest in both versions


def test_version_3_is_smaller() -> None:
    """Each path once instead of twice: the everyday tree's manifest (5,001 files) shrinks by a quarter."""
    text = everyday().dumps()
    old = as_v2(text)
    assert len(text) < 0.8 * len(old), (len(text), len(old))
    assert Manifest.loads(old) == Manifest.loads(text)


def test_anything_but_the_exact_shapes_is_no_manifest() -> None:
    good = json.loads(Manifest.loads(V2_TEXT).dumps())  # type: ignore[union-attr]

    def variant(**changes: object) -> str:
        return json.dumps({**good, **changes})

    def entry(value: object) -> str:
        return variant(files={**good["files"], "a.txt": value})

    hostile = {
        "mtime-float": entry([3, 420, HASH, 1.7e9]),
        "mtime-string": entry([3, 420, HASH, "1700000000"]),
        "mtime-bool": entry([3, 420, HASH, True]),
        "mtime-1980": entry([3, 420, HASH, 315_532_800]),
        "mtime-negative": entry([3, 420, HASH, -5]),
        "mtime-huge": entry([3, 420, HASH, 2**63]),
        "five-fields": entry([3, 420, HASH, OLD, OLD]),
        "two-fields": entry([3, 420]),
        "mtime-null": entry([3, 420, HASH, None]),
        "v3-with-an-mtimes-map": variant(mtimes={"a.txt": OLD}),
        "v3-with-an-empty-mtimes-map": variant(mtimes={}),
        "v2-with-mtime-inside": variant(version=2),
        "version-true": variant(version=True),
        "version-string": variant(version="3"),
        "version-4": variant(version=4),
        "version-1": variant(version=1),
        "other-hash": variant(hash="sha256"),
        "path-out": variant(files={"../x": [3, 420, HASH, OLD]}),
    }
    assert Manifest.parse(json.dumps(good))[0] is not None
    for name, text in hostile.items():
        manifest, problem = Manifest.parse(text)
        assert manifest is None and problem, name


paths = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=8)
                 .filter(lambda part: part not in (".", "..")), min_size=1, max_size=3).map("/".join)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(paths, st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 0o7777),
                                        st.text("0123456789abcdef", min_size=64, max_size=64),
                                        st.none() | st.integers(315_619_201, 2**63 - 1)), max_size=20),
       st.dictionaries(paths, paths, max_size=5), st.dictionaries(paths, st.integers(0, 0o7777), max_size=5))
def test_any_manifest_reads_back_from_both_versions(
    files: dict[str, tuple[int, int, str, int | None]], links: dict[str, str], dirs: dict[str, int],
) -> None:
    manifest = Manifest({p: v[:3] for p, v in files.items()}, links, dirs,
                        {p: v[3] for p, v in files.items() if v[3] is not None})
    text = manifest.dumps()
    for version, form in ((3, text), (2, as_v2(text))):
        back, problem = Manifest.parse(form)
        assert back is not None, (version, problem)
        assert (back.files, back.links, back.dirs, back.mtimes) == \
            (manifest.files, manifest.links, manifest.dirs, manifest.mtimes), version


def test_a_manifest_written_by_version_2_is_used_after_the_upgrade(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """The server holds the manifest the previous release wrote (version 2): the next deploy sends only what
    changed, trusts its mtimes as before (a same-size edit behind a restored mtime is not even read), and writes
    version 3."""
    site = workspace / "site"
    for n in range(12):
        path = site / f"d{n % 3}" / f"f{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {n}\n" * (n + 1))
        os.utime(path, (OLD, OLD))
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site")

    def deploy() -> Result:
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        return result

    deploy()
    stored = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    old = as_v2(stored.read_text())
    assert '"mtimes":{"site/d0/f0.txt":1700000000' in old
    subprocess.run(["su", "-s", "/bin/sh", server.user, "-c", f"cat > '{stored}.x' && mv '{stored}.x' '{stored}'"],
                   input=old.encode(), check=True)
    hidden = site / "d1/f1.txt"  # same size, other bytes, its mtime put back: not read, as before the upgrade
    hidden.write_text(hidden.read_text().replace("1", "9"))
    os.utime(hidden, (OLD, OLD))
    (site / "d2/f2.txt").write_text("changed\n")
    os.utime(site / "d2/f2.txt", (1, 1))  # as a reproducible build dates it: never trusted, no mtime kept
    assert sent(deploy()) == (1, 11)
    assert (remote_dir / "site/d2/f2.txt").read_text() == "changed\n"
    assert (remote_dir / "site/d1/f1.txt").read_text() == "file 1\n" * 2
    data = json.loads(stored.read_text())
    assert data["version"] == 3 and "mtimes" not in data
    assert data["files"]["site/d0/f0.txt"][3] == OLD and len(data["files"]["site/d2/f2.txt"]) == 3
    assert sent(deploy()) == (0, 12)


# ------------------------------------------------------------------------- records appended to the stored text


def stored_after(base: Manifest, *news: Manifest) -> str:
    """The text a server holds after `base` was written whole and each of `news` appended as a record."""
    text = base.dumps()
    for new in news:
        read = Manifest.loads(text)
        assert read is not None
        text += new.record(read)
    return text


def same(a: Manifest | None, b: Manifest) -> bool:
    return a is not None and (a.files, a.links, a.dirs, a.mtimes) == (b.files, b.links, b.dirs, b.mtimes)


manifests = st.builds(
    lambda files, links, dirs: Manifest({p: v[:3] for p, v in files.items()}, links, dirs,
                                        {p: v[3] for p, v in files.items() if v[3] is not None}),
    st.dictionaries(st.sampled_from(["a", "b/c", "d", "é/f", "g h"]),
                    st.tuples(st.integers(0, 9), st.sampled_from([0o644, 0o755]), st.sampled_from(["0" * 64, "1" * 64]),
                              st.none() | st.sampled_from([OLD, OLD + 1]))),
    st.dictionaries(st.sampled_from(["l", "m/n"]), st.sampled_from(["a", "../x"])),
    st.dictionaries(st.sampled_from(["b", "m", "é"]), st.sampled_from([0o755, 0o700])))


@settings(max_examples=200, deadline=None)
@given(st.lists(manifests, min_size=2, max_size=5))
def test_records_replay_to_the_last_manifest(history: list[Manifest]) -> None:
    """A base and any records after it read as the last manifest written: files added, changed, removed, an
    mtime gained or lost, links and directories alike."""
    text = stored_after(*history)
    assert text.count('\n{"delta":') == len(history) - 1
    read = Manifest.loads(text)
    assert same(read, history[-1]) and read is not None and read.records == len(history) - 1


def test_a_record_after_a_text_with_raw_non_ascii_names_its_bytes() -> None:
    """Our JSON is ASCII (escaped), but a text holding raw UTF-8 (or a name that is not UTF-8, read with
    surrogateescape) is chained by its bytes as the server holds them."""
    base = Manifest({"é/a": (1, 0o644, HASH), "b\udcff": (2, 0o644, HASH)})
    text = json.dumps({"version": 3, "hash": "blake3", "files": base.files, "links": {}, "dirs": {}},
                      ensure_ascii=False, separators=(",", ":"))
    assert not text.isascii()
    read = Manifest.loads(text)
    assert read is not None and read == base
    new = Manifest({"é/a": (3, 0o600, HASH)}, mtimes={"é/a": OLD})
    stored = text + new.record(read) + "\n"  # trailing whitespace, as json.loads allowed it
    assert same(Manifest.loads(stored), new)
    forged = text.replace("é", "e") + new.record(read)
    assert Manifest.loads(forged) is None


def test_a_record_is_small_and_the_text_it_makes_is_as_strict_as_a_base() -> None:
    base = everyday()
    new = everyday()
    for n in range(0, 5001, 100):  # 1% of the files changed
        path = f"node_modules/pkg-{n % 400:03d}/lib/sub{n % 3}/module-{n:05d}.js"
        new.files[path] = (7, 0o644, "f" * 64)
        new.mtimes[path] = OLD + 7
    read = Manifest.loads(base.dumps())
    assert read is not None
    record = new.record(read)
    assert len(record) < 0.02 * len(base.dumps()), len(record)
    good = base.dumps() + record
    assert same(Manifest.loads(good), new)
    wrong_base = everyday(5000).dumps()
    other = json.loads(record)
    hostile = {
        "another-base": wrong_base + record,  # the file was replaced between the read and the append
        "twice": good + record,  # the second names the base, not what it follows
        "after-version-2": as_v2(base.dumps()) + record,
        "garbage-after": good + "\nx",
        "truncated": good[:-5],
        "extra-key": base.dumps() + "\n" + json.dumps({**other, "x": 1}, separators=(",", ":")),
        "removes-what-is-not-there": base.dumps() + "\n" + json.dumps(
            {**other, "files": {"nope": None}}, separators=(",", ":")),
        "bad-entry": base.dumps() + "\n" + json.dumps(
            {**other, "files": {"a": [1, 420, "x"]}}, separators=(",", ":")),
        "path-out": base.dumps() + "\n" + json.dumps(
            {**other, "links": {"../up": "a"}}, separators=(",", ":")),
        "float-mtime": base.dumps() + "\n" + json.dumps(
            {**other, "files": {"a": [1, 420, "0" * 64, 1.7e9]}}, separators=(",", ":")),
    }
    for name, text in hostile.items():
        manifest, problem = Manifest.parse(text)
        assert manifest is None and problem, name


def _site(workspace: Path, files: int) -> Path:
    site = workspace / "site"
    for n in range(files):
        path = site / f"d{n % 5}" / f"f{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {n}\n" * 20)
        os.utime(path, (OLD, OLD))
    return site


def _wire(result: Result) -> float:
    match = re.search(r"over tar, ([\d.]+) (B|KB|MB) sent", result.stdout)
    assert match, result
    return float(match.group(1)) * {"B": 1, "KB": 1024, "MB": 1 << 20}[match.group(2)]


def test_a_small_change_appends_a_record_and_a_large_one_rewrites_the_manifest(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """1% changed: the record travels, not the manifest (a few hundred bytes instead of ~60 KB), and the server
    appends it to a copy of the stored text, renamed into place; the next deploys read it exactly. A change past
    a quarter of the manifest writes it whole again."""
    site = _site(workspace, 400)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site", compress="none")

    def deploy() -> Result:
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        return result

    full = _wire(deploy())
    stored = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    whole = stored.read_text()
    assert '\n{"delta":' not in whole
    for n in (3, 7, 11, 400):  # three changed, one new
        (site / f"d{n % 5}" / f"f{n}.txt").write_text(f"changed {n}\n")
    first = stored.stat()
    result = deploy()
    assert sent(result) == (4, 397)
    text = stored.read_text()
    assert text.startswith(whole) and text.count('\n{"delta":') == 1 and len(text) - len(whole) < 1200
    assert stored.stat().st_ino != first.st_ino  # a new file, renamed into place (never written in place)
    # The stream: four files' headers and bytes, a few directory headers, the record; the whole manifest alone
    # is ~40 KB.
    assert _wire(result) < 16 * 1024 < len(whole), (_wire(result), len(whole), full)
    assert sent(deploy()) == (0, 401)
    (site / "d0/f0.txt").unlink()
    os.utime(site / "d1/f1.txt", (OLD + 5, OLD + 5))  # only its mtime: read, found equal, the new mtime kept
    assert sent(deploy()) == (0, 400)  # nothing sent: the manifest is written by itself (write_manifest), whole
    (site / "d2/f2.txt").write_text("changed again\n")
    assert sent(deploy()) == (1, 399)
    read = Manifest.loads(stored.read_text())
    assert read is not None and read.mtimes["site/d1/f1.txt"] == OLD + 5
    assert "site/d0/f0.txt" in read.files  # left on the server: still ours (carried) until pruned
    for n in range(1, 150):  # past a quarter: whole again
        (site / f"d{n % 5}" / f"f{n}.txt").write_text(f"rewritten {n}\n")
    assert sent(deploy()) == (149, 251)
    assert '\n{"delta":' not in stored.read_text()
    assert sent(deploy()) == (0, 400)


def test_a_record_appended_to_a_replaced_manifest_costs_one_full_upload_never_a_wrong_one(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """The login (or another deploy) rewrote the stored manifest: the record names the text it was made for, so
    the text it now follows reads as no manifest: everything is sent once, and what lands is the build."""
    site = _site(workspace, 40)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site")
    assert run_sshipit(env=env).returncode == 0
    (site / "d0/f0.txt").write_text("changed\n")
    assert run_sshipit(env=env).returncode == 0
    stored = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    base, record = stored.read_text().split("\n", 1)
    forged = json.loads(base)  # the same manifest written again by hand: another text, the same meaning
    text = json.dumps(forged, separators=(", ", ": ")) + "\n" + record
    subprocess.run(["su", "-s", "/bin/sh", server.user, "-c", f"cat > '{stored}'"], input=text.encode(), check=True)
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "unusable (a record does not follow the text it was made for)" in result.stdout + result.stderr
    assert re.search(r"uploaded 40 files", result.stdout), result.stdout
    assert (remote_dir / "site/d0/f0.txt").read_text() == "changed\n"
    assert sent(run_sshipit(env=env)) == (0, 40)


def test_an_atomic_release_gets_the_live_manifest_with_a_record_after_it(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    site = _site(workspace, 60)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site", atomic=True)

    def deploy() -> Result:
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        return result

    deploy()
    first = os.readlink(remote_dir / "current").rsplit("/", 1)[-1]
    manifests = remote_dir / ".sshipit" / "manifests"
    live_text = (manifests / f"{first}.json").read_text()
    (site / "d2/f2.txt").write_text("changed\n")
    (site / "d3/f3.txt").unlink()
    assert sent(deploy()) == (1, 58)
    second = os.readlink(remote_dir / "current").rsplit("/", 1)[-1]
    assert second != first
    text = (manifests / f"{second}.json").read_text()
    assert text.startswith(live_text) and text.count('\n{"delta":') == 1
    assert (manifests / f"{first}.json").read_text() == live_text  # the live release's own: untouched
    assert not [p for p in (remote_dir / os.readlink(remote_dir / "current")).iterdir()
                if p.name.startswith((".sshipit-manifest.", ".sshipit-end."))]
    (site / "d4/f4.txt").write_text("changed too\n")
    assert sent(deploy()) == (1, 58)
    third = os.readlink(remote_dir / "current").rsplit("/", 1)[-1]
    assert (manifests / f"{third}.json").read_text().count('\n{"delta":') == 2
    landed = remote_dir / os.readlink(remote_dir / "current") / "site"
    assert (landed / "d4/f4.txt").read_text() == "changed too\n" and not (landed / "d3/f3.txt").exists()
