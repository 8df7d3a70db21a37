"""What lands is what the user built, against real OpenSSH servers (issue 14, items 4-9).

Directory modes survive incremental deploys (also under a login umask of 077); a path that changes type between
deploys lands as built, and a merge that cannot finish changes nothing; a hostile manifest written by the login
means one full upload for that host only; a file that changes while it is uploaded fails the deploy by name and
places nothing; non-UTF-8 names are skipped when unchanged and pruned when gone; the SFTP fallback lands the same
names, modes and (clamped) mtimes as the tar stream, and leaves nothing behind when it fails.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, one_error, plugin_env, rmtree, ssh, start_server
from sshipit.localserver import KeyPair, LocalServer, default_login_user
from sshipit.manifest import MANIFEST_LIMIT, plain_manifest_key, user_manifest_path
from sshipit.upload import MTIME_MAX

STAGING = b".sshipit-upload."


# ------------------------------------------------------------------------------------------------------ helpers


def tree(root: Path | bytes, mtimes: bool = True) -> dict[bytes, tuple[object, ...]]:
    """Every path below `root` (bytes: any name), staging directories left out: a file's kind, content hash, mode
    and mtime; a directory's mode; a symlink's destination."""
    base = os.fsencode(root)
    seen: dict[bytes, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(base):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, base)
            if rel.startswith(STAGING):
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                seen[rel] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                seen[rel] = ("file", digest, stat.S_IMODE(info.st_mode), int(info.st_mtime) if mtimes else 0)
    return seen


def built(root: Path | bytes) -> dict[bytes, tuple[object, ...]]:
    """`tree` of the build as it should land: mtimes clamped as both upload paths clamp them."""
    return {rel: (*v[:3], min(max(v[3], 0), MTIME_MAX)) if v[0] == "file" else v  # type: ignore[call-overload]
            for rel, v in tree(root).items()}


def staging_left(root: Path) -> list[bytes]:
    return [n for n in os.listdir(os.fsencode(root)) if n.startswith(STAGING)] if root.exists() else []


def sent(result: Result) -> tuple[int, int]:
    """(files sent, files skipped) as the tool reports them."""
    match = re.search(r"uploaded (\d+) files", result.stdout)
    skipped = re.search(r"; (\d+) unchanged files", result.stdout)
    assert match, result
    return int(match.group(1)), int(skipped.group(1)) if skipped else 0


def as_user(server: LocalServer, command: str) -> None:
    """Run `command` as the server's login user, as a hand on the server would."""
    subprocess.run(["su", "-s", "/bin/sh", server.user, "-c", command], check=True)


def ok(result: Result) -> Result:
    assert result.returncode == 0, result
    assert "Traceback" not in result.output and "internal error" not in result.output, result
    return result


@pytest.fixture(scope="module")
def strict_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd whose commands run with umask 077, starting in a home of their own (not the login's): a second
    machine as far as manifests and relative targets go."""
    home = server_root / "strict-home"
    home.mkdir()
    login = default_login_user()
    os.chown(home, login.pw_uid, login.pw_gid)
    config = f'ForceCommand umask 077; cd {home} && eval "$SSH_ORIGINAL_COMMAND"\n'
    srv = start_server(server_root / "strict", keys, config, authorize=("ed25519",))
    srv.strict_home = home  # type: ignore[attr-defined]
    result = ssh(srv, keys["ed25519"], "umask; pwd", server_root / "strict-known-hosts")
    if result.stdout.split() != ["0077", str(home)]:
        srv.stop()
        pytest.fail(f"strict_server: commands do not run with umask 077 in {home}: {result.stdout!r} {result.stderr}")
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------- 4. directory modes


@pytest.mark.parametrize("which", ["server", "strict_server"], ids=["umask-022", "umask-077"])
def test_incremental_deploys_keep_every_directory_mode(
    which: str, request: pytest.FixtureRequest, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    srv: LocalServer = request.getfixturevalue(which)
    dist = workspace / "dist"
    (dist / "private").mkdir(parents=True)
    (dist / "pub/deep").mkdir(parents=True)
    (dist / "index.html").write_text("v1\n")
    (dist / "private/key.txt").write_text("k1\n")
    (dist / "pub/deep/a.txt").write_text("a\n")
    dist.chmod(0o750)
    (dist / "private").chmod(0o700)
    (dist / "pub").chmod(0o755)
    (dist / "pub/deep").chmod(0o751)
    env = plugin_env(srv, keys["ed25519"], target=str(remote_dir), sources="dist")
    assert sent(ok(run_sshipit(env=env))) == (3, 0)
    assert tree(remote_dir / "dist") == built(dist)
    (dist / "private/key.txt").write_text("k2\n")  # one file changes, deep in a 0700 directory
    assert sent(ok(run_sshipit(env=env))) == (1, 2)
    assert tree(remote_dir / "dist") == built(dist)
    assert stat.S_IMODE((remote_dir / "dist").stat().st_mode) == 0o750
    assert stat.S_IMODE((remote_dir / "dist/private").stat().st_mode) == 0o700
    (dist / "pub").chmod(0o711)  # only a directory's mode changes: it still lands
    assert sent(ok(run_sshipit(env=env))) == (0, 3)
    assert tree(remote_dir / "dist") == built(dist)
    assert sent(ok(run_sshipit(env=env))) == (0, 3)  # and then nothing more travels
    assert tree(remote_dir / "dist") == built(dist)


# -------------------------------------------------------------------------------------------- 5. type changes


def _types_v1(dist: Path, outside: Path) -> None:
    (dist / "b").mkdir(parents=True)
    (dist / "d").mkdir()
    (dist / "a").write_text("a is a file\n")
    (dist / "b/x").write_text("b is a dir\n")
    (dist / "c").symlink_to("a")
    (dist / "e").write_text("e is a file\n")
    (dist / "f").symlink_to("d")
    (dist / "out").symlink_to(outside)  # a link out of the target, as built
    (dist / "keep.txt").write_text("unchanged\n")
    _settle(dist)


def _settle(dist: Path) -> None:
    """One mtime for every file: an incremental deploy does not re-send a file whose content and mode are the
    same (whatever its mtime: CI checkouts date everything anew), so rewritten content keeps its server mtime."""
    for path in [dist, *dist.rglob("*")]:
        os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def _types_v2(dist: Path) -> None:
    for name in ("a", "c", "e", "f", "out"):
        (dist / name).unlink()
    shutil.rmtree(dist / "b")
    shutil.rmtree(dist / "d")
    (dist / "a").mkdir()
    (dist / "a/y").write_text("a is a dir now\n")
    (dist / "b").write_text("b is a file now\n")
    (dist / "c").write_text("c is a file now\n")
    (dist / "d").symlink_to("b")
    (dist / "e").symlink_to("keep.txt")
    (dist / "f").mkdir()
    (dist / "f/z").write_text("f is a dir now\n")
    (dist / "out").mkdir()  # where the old link went out of the target: now a directory inside it
    (dist / "out/inside.txt").write_text("inside\n")
    _settle(dist)


@pytest.mark.parametrize("how", ["tar-incremental", "tar-full", "tar-busybox", "sftp"])
def test_paths_that_change_type_between_deploys(
    how: str, request: pytest.FixtureRequest, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    tmp_path: Path, run_sshipit: RunSshipit,
) -> None:
    """file <-> directory, file <-> symlink, directory <-> symlink, both ways; nothing written through the old
    link that left the target; with prune, files below a path that became a file are not looked for."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "theirs.txt").write_text("not ours\n")
    outside.chmod(0o777)
    dist = workspace / "dist"
    _types_v1(dist, outside)
    # BusyBox's sh, find, cp and tar (bare_server) do the merge too
    srv = request.getfixturevalue({"sftp": "sftp_only_server", "tar-busybox": "bare_server"}.get(how, "server"))
    env = plugin_env(srv, keys["ed25519"], target=str(remote_dir), sources="dist",
                     incremental=how != "tar-full", prune=how in ("tar-incremental", "tar-busybox"))
    ok(run_sshipit(env=env))
    assert tree(remote_dir / "dist") == built(dist)
    _types_v2(dist)
    ok(run_sshipit(env=env))
    assert tree(remote_dir / "dist") == built(dist)
    assert sorted(os.listdir(outside)) == ["theirs.txt"]
    shutil.rmtree(dist)
    _types_v1(dist, outside)  # and back
    ok(run_sshipit(env=env))
    assert tree(remote_dir / "dist") == built(dist)
    assert sorted(os.listdir(outside)) == ["theirs.txt"] and staging_left(remote_dir) == []


def test_a_merge_that_cannot_finish_changes_nothing(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """A directory of the target the login may not write (here root's): found before anything is placed, so the
    file of `a/` (placed first, by name order) is not replaced while `z/`'s cannot be."""
    dist = workspace / "dist"
    for name in ("a", "z"):
        (dist / name).mkdir(parents=True)
        (dist / name / "f.txt").write_text(f"{name} v1\n")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist")
    ok(run_sshipit(env=env))
    before = tree(remote_dir)
    os.chown(remote_dir / "dist/z", 0, 0)
    for name in ("a", "z"):
        (dist / name / "f.txt").write_text(f"{name} v2, longer\n")
    for incremental in (True, False):
        result = run_sshipit(env={**env, "PLUGIN_INCREMENTAL": str(incremental).lower()})
        one_error(result, 1, "permission denied", "dist/z")
        assert tree(remote_dir) == before and staging_left(remote_dir) == []


# --------------------------------------------------------------------------------------- 6. hostile manifests

VALID_HEAD = '{"version":2,"hash":"blake3",'
HOSTILE = {
    "huge-exponent": VALID_HEAD + '"files":{"dist/a.txt":[1e999,420,"' + "0" * 64 + '"]},"links":{}}',
    "nan": VALID_HEAD + '"files":{"dist/a.txt":[NaN,420,"' + "0" * 64 + '"]},"links":{}}',
    "deep-nesting": "[" * 100_000,
    "deep-in-a-field": VALID_HEAD + '"files":' + "[" * 100_000,
    "huge-integer": VALID_HEAD + '"files":{"dist/a.txt":[' + "9" * 5000 + ',420,"' + "0" * 64 + '"]},"links":{}}',
    "wrong-types": VALID_HEAD + '"files":{"dist/a.txt":["3",true,7]},"links":[]}',
    "not-an-object": '"files"',
    "truncated": VALID_HEAD + '"files":{"dist/a.txt":[3,420,"' + "0" * 30,
    "path-out": VALID_HEAD + '"files":{"../../x":[3,420,"' + "0" * 64 + '"]},"links":{}}',
    "forged-separator": VALID_HEAD + '"files":{},"links":{}}\0--sshipit--\0dist/a.txt\0',
    "binary": "\x00\xff\xfe garbage \x1b]0;title\x07",
}


def _write_as_login(server: LocalServer, path: Path, text: str) -> None:
    """The login writes the manifest file itself (its own file, in its own home)."""
    data = text.encode("utf-8", "surrogateescape")
    subprocess.run(["su", "-s", "/bin/sh", server.user, "-c", f"cat > '{path}'"], input=data, check=True)


def _site(workspace: Path) -> Path:
    dist = workspace / "dist"
    (dist / "sub").mkdir(parents=True)
    for n in range(5):
        (dist / f"f{n}.txt").write_text(f"file {n}\n")
    (dist / "sub/a.txt").write_text("abc")
    return dist


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_manifest_means_one_full_upload_with_a_warning(
    kind: str, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    dist = _site(workspace)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist")
    assert sent(ok(run_sshipit(env=env))) == (6, 0)
    manifest = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    _write_as_login(server, manifest, HOSTILE[kind])
    result = ok(run_sshipit(env=env))
    assert sent(result) == (6, 0)
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "manifest" in warnings[0] and "uploading everything" in warnings[0], result
    assert "\x1b" not in result.output and "\0" not in result.output
    assert tree(remote_dir / "dist") == built(dist)
    assert sent(ok(run_sshipit(env=env))) == (0, 6)  # the new manifest is sound again


def test_a_manifest_larger_than_the_limit_is_not_read(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """A valid manifest padded past MANIFEST_LIMIT: no more than the limit travels, and it counts as unusable."""
    dist = _site(workspace)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist")
    ok(run_sshipit(env=env))
    manifest = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
    good = manifest.read_text()
    as_user(server, f"{{ cat '{manifest}'; head -c {MANIFEST_LIMIT + 10} /dev/zero | tr '\\0' ' '; }} "
                    f"> '{manifest}.big' && mv '{manifest}.big' '{manifest}'")
    assert manifest.stat().st_size > MANIFEST_LIMIT and manifest.read_text()[:len(good)] == good
    result = ok(run_sshipit(env=env))
    assert sent(result) == (6, 0) and "larger than" in result.stderr, result
    assert tree(remote_dir / "dist") == built(dist)


def test_a_hostile_manifest_on_one_host_leaves_the_other_incremental(
    server: LocalServer, strict_server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
    run_sshipit: RunSshipit,
) -> None:
    """Two machines (two homes), one relative target: the host whose manifest is hostile uploads everything, with
    its warning; the other sends the one changed file; both land; the summary names both."""
    dist = _site(workspace)
    target = f"fidelity-{os.getpid()}-{time.monotonic_ns()}"
    homes = {server: server.home, strict_server: strict_server.strict_home}  # type: ignore[attr-defined]
    env = plugin_env(server, keys["ed25519"], target=target, sources="dist")
    env.pop("PLUGIN_PORT")
    env["PLUGIN_HOST"] = f"{server.host}:{server.port},{strict_server.host}:{strict_server.port}"
    env["PLUGIN_FINGERPRINT"] = ",".join([*server.fingerprints().values(), *strict_server.fingerprints().values()])
    try:
        ok(run_sshipit(env=env))
        manifest = server.home / user_manifest_path(plain_manifest_key(target))
        _write_as_login(server, manifest, HOSTILE["deep-nesting"])
        (dist / "f1.txt").write_text("changed\n")
        result = ok(run_sshipit(env=env))
        lines = result.stdout.splitlines()
        mine = [line for line in lines if f":{server.port}" in line and "uploaded" in line]
        other = [line for line in lines if f":{strict_server.port}" in line and "uploaded" in line]
        assert len(mine) == 1 and "uploaded 6 files" in mine[0], result
        assert len(other) == 1 and "uploaded 1 files" in other[0] and "5 unchanged" in other[0], result
        warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
        assert len(warnings) == 1 and f":{server.port}" in warnings[0] and "manifest" in warnings[0], result
        assert "summary: 2 hosts" in result.output, result
        for home in homes.values():
            assert tree(home / target / "dist") == built(dist)
    finally:
        for home in homes.values():
            rmtree(home / target)


# ------------------------------------------------------------------------------ 7. a file changing while read


@pytest.fixture
def appender(workspace: Path) -> Iterator[Path]:
    """dist/z-log.txt, which a separate process appends to every millisecond until the test ends."""
    path = workspace / "dist/z-log.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("start\n")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "with open(sys.argv[1], 'ab', buffering=0) as f:\n"
        "    while True:\n"
        "        f.write(b'line of a log that keeps growing\\n'); time.sleep(0.001)\n"), str(path)])
    try:
        deadline = time.monotonic() + 10
        while path.stat().st_size < 1000:  # the writer runs
            assert time.monotonic() < deadline and writer.poll() is None, "the appending process did not start"
            time.sleep(0.01)
        yield path
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.parametrize("how", ["tar", "tar-zstd", "sftp"])
def test_a_file_growing_during_the_upload_fails_that_deploy_by_name(
    how: str, server: LocalServer, sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
    remote_dir: Path, appender: Path, run_sshipit: RunSshipit,
) -> None:
    dist = workspace / "dist"
    with open(dist / "big.bin", "wb") as handle:  # sent before the log (by name): the stream is well under way
        handle.truncate(64 << 20)
    (dist / "a.txt").write_text("a\n")
    srv = sftp_only_server if how == "sftp" else server
    (remote_dir / "old.txt").write_text("was there\n")
    before = tree(remote_dir)
    env = plugin_env(srv, keys["ed25519"], target=str(remote_dir), sources="dist",
                     compress="zstd" if how == "tar-zstd" else "none")
    result = run_sshipit(env=env)
    line = one_error(result, 1, str(appender), "changed while it was being uploaded", "[setting: sources]")
    assert "connection" not in line
    assert tree(remote_dir) == before and staging_left(remote_dir) == []  # nothing placed, nothing left


def test_tar_stream_notices_a_file_that_grows_after_it_was_opened(tmp_path: Path) -> None:
    """The stream is paused inside the file (after its first chunk); a separate process appends to it; reading on
    finds the size changed by fstat, whatever the collected size said."""
    from sshipit.errors import DeployError
    from sshipit.sources import Entry
    from sshipit.upload import CHUNK, tar_stream

    path = tmp_path / "grows.bin"
    path.write_bytes(b"x" * (4 * CHUNK))
    info = path.stat()
    entry = Entry(str(path), "grows.bin", "file", 0o644, int(info.st_mtime), info.st_size)
    chunks = tar_stream([entry])
    next(chunks)
    subprocess.run(["sh", "-c", f"printf more >> '{path}'"], check=True)
    with pytest.raises(DeployError, match="changed while it was being uploaded"):
        list(chunks)
    subprocess.run(["sh", "-c", f"touch -d @1000 '{path}'"], check=True)  # same size, another mtime
    path.write_bytes(b"x" * (4 * CHUNK))
    chunks = tar_stream([Entry(str(path), "grows.bin", "file", 0o644, 1000, 4 * CHUNK)])
    next(chunks)
    os.utime(path, (2000, 2000))
    with pytest.raises(DeployError, match="mtime moved"):
        list(chunks)


# ------------------------------------------------------------------------------------------ 8. non-UTF-8 names

ODD_NAMES = [b"caf\xe9.txt", b"\xff\xfe", b"new\nline", b"-dash", b"back\\slash", b"\xc3\x28"]


def _odd_site(workspace: Path) -> bytes:
    dist = os.fsencode(workspace / "dist")
    os.makedirs(dist + b"/d\xe9ir")
    for n, name in enumerate(ODD_NAMES):
        with open(dist + b"/" + name, "wb") as handle:
            handle.write(b"content %d\n" % n)
        with open(dist + b"/d\xe9ir/" + name, "wb") as handle:
            handle.write(b"below %d\n" % n)
    os.symlink(b"caf\xe9.txt", dist + b"/l\xe9nk")
    return dist


def test_non_utf8_names_are_skipped_when_unchanged_and_pruned_when_gone(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    dist = _odd_site(workspace)
    count = 2 * len(ODD_NAMES)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", prune=True)
    assert sent(ok(run_sshipit(env=env))) == (count, 0)
    assert tree(os.fsencode(remote_dir) + b"/dist") == built(dist)
    assert sent(ok(run_sshipit(env=env))) == (0, count)
    os.unlink(dist + b"/caf\xe9.txt")
    os.unlink(dist + b"/d\xe9ir/\xff\xfe")
    os.unlink(dist + b"/l\xe9nk")
    with open(dist + b"/\xff\xfe", "wb") as handle:
        handle.write(b"changed\n")
    result = ok(run_sshipit(env=env))
    assert sent(result) == (1, count - 3) and "pruned 3 stale files" in result.stdout, result
    assert tree(os.fsencode(remote_dir) + b"/dist") == built(dist)
    assert sent(ok(run_sshipit(env=env))) == (0, count - 2)


# ------------------------------------------------------------------------------------------- 9. SFTP fallback


def test_sftp_and_tar_land_the_same_names_modes_and_clamped_mtimes(
    server: LocalServer, sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
    remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    dist = _odd_site(workspace)
    times = {b"caf\xe9.txt": -86400 * 365 * 10, b"\xff\xfe": 2**33, b"-dash": 0, b"new\nline": MTIME_MAX + 1}
    for name, when in times.items():
        os.utime(dist + b"/" + name, (when, when))
    os.chmod(dist + b"/back\\slash", 0o640)
    os.chmod(dist + b"/d\xe9ir", 0o750)
    landed = {}
    for how, srv in (("tar", server), ("sftp", sftp_only_server)):
        target = remote_dir / how
        ok(run_sshipit(env=plugin_env(srv, keys["ed25519"], target=str(target), sources="dist")))
        landed[how] = tree(os.fsencode(target) + b"/dist")
    assert landed["tar"] == landed["sftp"] == built(dist)
    mtimes = {name: landed["sftp"][name][3] for name in times}
    assert mtimes == {b"caf\xe9.txt": 0, b"\xff\xfe": MTIME_MAX, b"-dash": 0, b"new\nline": MTIME_MAX}


@pytest.fixture
def tiny_disk(remote_dir: Path) -> Iterator[Path]:
    """A 1 MB tmpfs owned by the login, inside the login's home; unmounted afterwards."""
    point = remote_dir / "disk"
    point.mkdir()
    user = default_login_user()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0755,uid={user.pw_uid},gid={user.pw_gid}",
                           "tmpfs", str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs (needs root and mount permission): {done.stderr.strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def test_sftp_upload_that_fills_the_disk_leaves_the_target_as_it_was(
    sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, tiny_disk: Path,
    run_sshipit: RunSshipit,
) -> None:
    dist = workspace / "dist"
    dist.mkdir()
    (dist / "a.txt").write_text("v1\n")
    env = plugin_env(sftp_only_server, keys["ed25519"], target=str(tiny_disk / "site"), sources="dist")
    ok(run_sshipit(env=env))
    before = tree(tiny_disk)
    (dist / "a.txt").write_text("v2\n")
    (dist / "b.bin").write_bytes(os.urandom(3 << 20))  # more than the disk holds
    one_error(run_sshipit(env=env), 1, "is full", "[setting: target]")
    assert tree(tiny_disk) == before and staging_left(tiny_disk / "site") == []
    (dist / "b.bin").unlink()
    ok(run_sshipit(env=env))  # the space came back
    assert tree(tiny_disk / "site/dist") == built(dist)
