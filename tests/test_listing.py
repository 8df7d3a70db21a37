"""The server's listing (listing.py): one walk where find is GNU find, three finds elsewhere (BusyBox), the same
ServerView from either, read as it arrives, hostile names and all; a fleet's hosts share what is equal."""

from __future__ import annotations

import os
import pwd
import random
import subprocess
import time
import tracemalloc
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import plugin_env, ssh_argv
from sshipit.listing import ListingReader, LocalIndex, parse_server, server_script
from sshipit.localserver import KeyPair, LocalServer
from sshipit.manifest import _SEP, Manifest, ServerView, forget_local_hashes, plain_manifest_key, user_manifest_path
from sshipit.sources import Entry

SEP = _SEP.encode()
# Names find prints as they are, and that must not shift a record: a newline, our separator's text, a record's
# look (flag, "./"), find's format, a leading dash, bytes that are not UTF-8.
HOSTILE = ["new\nline", "--sshipit--", "p./x", "t", "d.", "%p\\0", "-rf", " sp ace ", "caf\udcc3\udca9", "\udcff\udcfe"]


def as_login(server: LocalServer, script: str) -> bytes:
    """Run `script` on this machine as the servers' login (what sshd would run), its stdout as bytes."""
    done = subprocess.run(["su", "-s", "/bin/sh", server.user, "-c", script], capture_output=True, check=False)
    assert done.returncode == 0, done
    return done.stdout


def oracle(root: Path, manifest: Path) -> tuple[set[str], set[str], set[str]]:
    """(files and symlinks, directories, those changed since the manifest's mtime) by lstat, to the nanosecond."""
    since = manifest.lstat().st_mtime_ns
    present, dirs, touched = set(), set(), set()
    for folder, subdirs, names in os.walk(root):
        for name in subdirs + names:
            path = Path(folder, name)
            rel = os.fsdecode(path.relative_to(root))
            info = path.lstat()
            if path.is_dir() and not path.is_symlink():
                dirs.add(rel)
            elif path.is_file() or path.is_symlink():
                present.add(rel)
                if info.st_ctime_ns > since:
                    touched.add(rel)
    return present, dirs, touched


def entries_of(root: Path) -> list[Entry]:
    out = []
    for folder, subdirs, names in os.walk(root):
        for name in subdirs + names:
            path = Path(folder, name)
            kind = "symlink" if path.is_symlink() else "dir" if path.is_dir() else "file"
            out.append(Entry(str(path), os.fsdecode(path.relative_to(root)), kind, 0o644, 0))  # type: ignore[arg-type]
    return out


def fields(view: ServerView) -> tuple[object, ...]:
    return view.manifest, set(view.present), set(view.dirs), set(view.touched), view.exists, view.problem


def test_one_walk_and_three_finds_give_the_same_view_of_a_real_tree(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    """After a deploy, the login edits, touches, chmods, adds, removes, replaces a file by a symlink and a directory
    by a file, and adds hostile names: GNU find's one walk and the three finds read the same ServerView, which is
    exactly what lstat says (changed = ctime later than the manifest's mtime, to the nanosecond); with the deploy's
    local names as the index, the same again."""
    site = workspace / "site"
    for n in range(30):
        path = site / f"d{n % 3}" / f"f{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {n}\n")
    (site / "link").symlink_to("d0/f0.txt")
    (site / "gone").mkdir()
    (site / "gone" / "x").write_text("x")
    for name in HOSTILE:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("hostile\n")
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site"))
    assert result.returncode == 0, result
    home = Path(pwd.getpwnam(server.user).pw_dir)
    manifest = home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    assert manifest.is_file(), "the deploy stored no manifest: nothing below compares what it should"
    entries = entries_of(remote_dir)
    time.sleep(0.05)  # past the file system's clock tick: the edits' ctimes are later than the manifest's mtime
    d = remote_dir / "site"
    as_login(server, f"cd {d} && echo more >> d0/f3.txt && touch d1/f4.txt && chmod 600 d2/f5.txt && "
                     "echo new > d1/new.txt && rm d0/f6.txt && rm d1/f7.txt && ln -s f0.txt d1/f7.txt && "
                     "rm -r gone && echo file > gone && mkdir -p fresh/deep && "
                     "echo h > \"$(printf 'bad\\377\\nname')\" && echo h > fresh/-n && touch -- -rf")
    script = server_script(str(remote_dir), str(manifest), probed=True)
    walked = as_login(server, f"sshipit_walk=1; {script}")
    three = as_login(server, f"sshipit_walk=; {script}")
    alone = as_login(server, server_script(str(remote_dir), str(manifest)))  # finds out for itself
    assert walked.startswith(b"walked\n") and alone.startswith(b"walked\n") and three.startswith(b"present\n")
    present, dirs, touched = oracle(remote_dir, manifest)
    assert {"site/d0/f3.txt", "site/d1/f4.txt", "site/d2/f5.txt", "site/d1/new.txt", "site/d1/f7.txt",
            "site/gone", "site/-rf", "site/bad\udcff\nname"} <= touched
    assert "site/d0/f0.txt" not in touched and "site/d0/f6.txt" not in present and "site/fresh/deep" in dirs
    views = []
    for raw in (walked, three, alone):
        for index in ((), entries):
            forget_local_hashes()
            views.append(parse_server(raw, 0, False, index))
    forget_local_hashes()
    want = fields(views[0])
    assert want[0] is not None and want[1:] == (present, dirs, touched, True, "")
    assert all(fields(view) == want for view in views)


def test_busybox_find_lists_with_three_finds(
    bare_server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """Where find is BusyBox's (no -printf, no -cnewer), the script finds that out itself and lists with three
    finds; the view is what lstat says."""
    home = Path(pwd.getpwnam(bare_server.user).pw_dir)
    root = Path(as_login(bare_server, f"mktemp -d {home}/listing-XXXXXX").decode().strip())
    try:
        as_login(bare_server, f"cd {root} && mkdir -p a/b && echo 1 > a/b/one && ln -s a/b/one link && "
                              "echo 2 > \"$(printf 'two\\nlines')\" && echo '{}' > ../m.json")
        known = tmp_path / "known_hosts"
        known.write_text(bare_server.known_hosts())
        script = server_script(str(root), f"{home}/m.json")
        done = subprocess.run([*ssh_argv(bare_server, keys["ed25519"], known), script], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60, check=False)
        assert done.stdout.startswith(b"present\n"), done
        view = parse_server(done.stdout, done.returncode, False)
        present, dirs, _touched = oracle(root, home / "m.json")
        assert (set(view.present), set(view.dirs), view.exists) == (present, dirs, True)
        assert present == {"a/b/one", "link", "two\nlines"}
    finally:
        as_login(bare_server, f"rm -rf {root} {home}/m.json")


# ------------------------------------------------------------------------------------------------ the parser

_part = st.one_of(
    st.sampled_from([b"--sshipit--", b"%p", b"t%p\\0", b"p.", b"d.", b"\n", b"-rf", b" ", b"\xff", b"\xc3"]),
    st.binary(min_size=1, max_size=8),
).filter(lambda b: b"\0" not in b and b"/" not in b and b not in (b".", b".."))


@st.composite
def trees(draw: st.DrawFn) -> dict[bytes, str]:
    """Relative path -> kind (f, l or d), each file or symlink's parent directories listed too, as find does."""
    tree: dict[bytes, str] = {}
    for parts in draw(st.lists(st.lists(_part, min_size=1, max_size=3), max_size=25)):
        for depth in range(1, len(parts)):
            tree.setdefault(b"/".join(parts[:depth]), "d")
        tree.setdefault(b"/".join(parts), draw(st.sampled_from("fld")))
    return tree


def _name(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def answers(tree: dict[bytes, str], touched: set[bytes], manifest: bytes) -> tuple[bytes, bytes]:
    """What server_script prints for `tree`: (one walk, three finds), in a random order as find's is."""
    order = list(tree)
    walk = [b"d.\0"] + [(b"t" if p in touched else b"p" if tree[p] != "d" else b"d") + b"./" + p + b"\0"
                        for p in order]
    files = b"".join(b"./" + p + b"\0" for p in order if tree[p] != "d")
    dirs = b".\0" + b"".join(b"./" + p + b"\0" for p in order if tree[p] == "d")
    changed = b"".join(b"./" + p + b"\0" for p in order if p in touched)
    return (b"walked\n" + b"".join(walk) + SEP + manifest,
            b"present\n" + files + SEP + dirs + SEP + changed + SEP + manifest)


def fed(raw: bytes, cuts: list[int], entries: list[Entry]) -> ServerView:
    reader = ListingReader(entries)
    at = 0
    for size in cuts:
        reader.feed(raw[at:at + size])
        at += size
    reader.feed(raw[at:])
    return reader.view(0)


@settings(max_examples=150, deadline=None)
@given(tree=trees(), data=st.data(), tail=st.binary(max_size=40),
       cuts=st.lists(st.integers(1, 9), max_size=40))
def test_any_names_parse_alike_whatever_the_pieces(tree: dict[bytes, str], data: st.DataObject, tail: bytes,
                                                   cuts: list[int]) -> None:
    """Any names find can print (newlines, non-UTF-8 bytes, a leading dash, our separator's text, a record's look),
    in pieces of any size, read by either format, with or without a local index that has some of them: the same
    sets, exactly the tree's; whatever the manifest's text holds (NULs, our separator) it cannot shift them."""
    files = [p for p, kind in tree.items() if kind != "d"]
    touched = set(data.draw(st.lists(st.sampled_from(files), unique=True))) if files else set()
    known = data.draw(st.lists(st.sampled_from(list(tree)), unique=True)) if tree else []
    entries = [Entry("", _name(p), "dir" if tree[p] == "d" else "file", 0o644, 0) for p in known]
    text = Manifest(files={"a": (1, 0o644, "0" * 64)}).dumps().encode() + tail
    want = ({_name(p) for p in files}, {_name(p) for p, kind in tree.items() if kind == "d"},
            {_name(p) for p in touched})
    views = []
    for raw in answers(tree, touched, text):
        for index in ([], entries):
            forget_local_hashes()
            views.append(fed(raw, cuts, index))
            forget_local_hashes()
            views.append(parse_server(raw, 0, False, index))
    forget_local_hashes()
    for view in views:
        assert (set(view.present), set(view.dirs), set(view.touched), view.exists) == (*want, True)
        assert view.problem == views[0].problem and view.manifest == views[0].manifest
    assert views[0].manifest == Manifest.parse(text.decode("utf-8", "surrogateescape"))[0]


def test_a_listing_find_would_not_print_reads_as_none() -> None:
    """A `.` or `..` part, an empty part or record, an unknown record, an unterminated name, a name with no end:
    no listing and no manifest (a full upload, with a warning), never a name outside the target; a listing cut
    short says so; a server that says "absent" or fails has no target."""
    text = Manifest().dumps().encode()
    for bad in (b"p./a/../../etc\0", b"p./..\0", b"p./a//b\0", b"p./a/\0", b"p./a\0\0", b"x./a\0", b"p../a\0",
                b"pa\0", b"p./a", b"p./" + b"n" * (2 << 20)):
        three = b"present\n" + bad[1:] + SEP + b".\0" + SEP + SEP + text  # the same name from three finds
        for raw in (b"walked\nd.\0" + bad + SEP + text, *([three] if bad[:1] == b"p" else [])):
            forget_local_hashes()
            view = parse_server(raw, 0, False)
            assert (view.manifest, set(view.present), view.exists) == (None, set(), True), (bad, raw[:40])
            assert view.problem in ("the server's listing is not what find prints",
                                    "the server's listing was cut short"), bad
    forget_local_hashes()
    assert parse_server(b"walked\nd.\0p./a\0", 0, False).problem == "the server's listing was cut short"
    assert parse_server(b"absent\n", 0, False).exists is False
    assert parse_server(b"walked\nd.\0" + SEP + text, 1, False).exists is False
    assert parse_server(b"\x1f\x8b garbage", 0, True).exists is False
    forget_local_hashes()


def test_hosts_holding_the_build_share_its_names() -> None:
    """Every host whose server holds exactly the build's names gets the one index's key views (no set of its
    own: 10 such hosts at 20,000 files hold under 40 KB each once read); a host with one name more, one fewer
    or one listed twice instead of another gets its own, exact set."""
    names = [f"d{n % 100:02d}/s{n % 7}/f-{n:05d}.txt" for n in range(20000)]
    folders = sorted({n.rpartition("/")[0] for n in names} | {f"d{n:02d}" for n in range(100)})
    entries = [Entry("", d, "dir", 0o755, 0) for d in folders] + [Entry("", n, "file", 0o644, 0) for n in names]
    text = Manifest().dumps().encode()

    def raw(listed: list[str]) -> bytes:
        records = b"".join(b"p./" + n.encode() + b"\0" for n in random.Random(1).sample(listed, len(listed)))
        return b"walked\nd.\0" + b"".join(b"d./" + d.encode() + b"\0" for d in folders) + records + SEP + text

    forget_local_hashes()
    index = LocalIndex.of(entries)
    same = raw(names)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    views = [parse_server(same, 0, False, entries) for _ in range(10)]
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < 10 * 40_000, held
    for view in views:
        assert view.present is index.file_names and view.dirs is index.dir_names
        assert set(view.present) == set(names) and not view.touched
    for listed, want in (([*names, "extra"], set(names) | {"extra"}), (names[1:], set(names[1:])),
                         (names[1:] + names[-1:], set(names[1:]))):
        view = parse_server(raw(listed), 0, False, entries)
        assert isinstance(view.present, set) and view.present == want
    forget_local_hashes()


def test_the_probe_answer_reads_alike_packed_or_not_and_a_damaged_pack_is_no_listing(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    """The probe with the listing behind it, as a server runs it: gzipped (across a link) or plain (to a server on
    this machine, remote.across_a_link), read through ProbeSplitter as it arrives in small pieces, gives the same
    ServerView; the packed answer really is gzip, and one damaged on the way is no listing (a full upload)."""
    from sshipit.remote import PROBE_END, ProbeSplitter, probe_command

    site = workspace / "site"
    for n in range(40):
        (site / f"d{n % 4}").mkdir(parents=True, exist_ok=True)
        (site / f"d{n % 4}" / f"f{n}.txt").write_text(f"file {n}\n" * n)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site"))
    assert result.returncode == 0, result
    home = Path(pwd.getpwnam(server.user).pw_dir)
    manifest = home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    entries = entries_of(remote_dir)
    then = server_script(str(remote_dir), str(manifest), probed=True)
    mark = f"\n{PROBE_END}\n".encode()

    def read(raw: bytes, packed: bool) -> tuple[ServerView, bool]:
        forget_local_hashes()
        reader = ListingReader(entries)
        split = ProbeSplitter(reader, packed)
        for at in range(0, len(raw), 777):
            split.feed(raw[at:at + 777])
        probed = split.finish(0)
        assert probed.streamed and probed.traits.shell
        return reader.view(probed.exit_status), probed.gzip

    packed_raw = as_login(server, probe_command(then, True))
    plain_raw = as_login(server, probe_command(then, False))
    assert packed_raw.partition(mark)[2][:2] == b"\x1f\x8b", "the packed listing did not come gzipped"
    assert plain_raw.partition(mark)[2].startswith(b"walked\n")
    packed_view, packed_gzip = read(packed_raw, True)
    plain_view, plain_gzip = read(plain_raw, False)
    assert packed_gzip and not plain_gzip
    assert fields(packed_view) == fields(plain_view)
    assert plain_view.manifest is not None and "site/d1/f5.txt" in plain_view.present
    head, _, body = packed_raw.partition(mark)
    damaged = head + mark + body[:40] + bytes(b ^ 0x55 for b in body[40:80]) + body[80:]
    view, _ = read(damaged, True)
    forget_local_hashes()
    assert view.manifest is None and not view.present, "a damaged listing must read as none"
