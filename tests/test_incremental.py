"""Incremental upload against a real OpenSSH server: only what changed travels, and never a wrong result."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, plugin_env
from sshipit.localserver import KeyPair, LocalServer
from sshipit.manifest import Manifest, plain_manifest_key, trusted_mtime, user_manifest_path


def make_site(workspace: Path, files: int = 40) -> Path:
    site = workspace / "site"
    for n in range(files):
        path = site / f"d{n % 4}" / f"f{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {n}\n" * (n + 1))
    (site / "link").symlink_to("d0/f0.txt")
    return site


def sent(result: Result) -> tuple[int, int]:
    """(files sent, files skipped) as the tool reports them."""
    match = re.search(r"uploaded (\d+) files", result.stdout)
    skipped = re.search(r"; (\d+) unchanged files", result.stdout)
    assert match, result
    return int(match.group(1)), int(skipped.group(1)) if skipped else 0


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f":{path.stat().st_mode & 0o7777:o}"
    return out


def as_user(server: LocalServer, command: str) -> None:
    """Change files on the server as its login user would, by hand."""
    subprocess.run(["su", "-s", "/bin/sh", server.user, "-c", command], check=True)


def test_mtimes_are_trusted_only_when_old_enough_and_well_formed() -> None:
    """An mtime stands for the content only when set more than a second before this run started (an edit after
    the file was read gets another one) and after 1980-01-01 (what reproducible builds set); a manifest's mtimes
    are the login's to write, so anything but the shape we write means no manifest (a full upload)."""
    assert trusted_mtime(1_700_000_000)
    assert not trusted_mtime(int(time.time()))
    assert not any(trusted_mtime(t) for t in (0, 1, 315_532_800, 2**62))
    good = Manifest(files={"a": (1, 0o644, "0" * 64)}, mtimes={"a": 1_700_000_000})
    parsed = Manifest.loads(good.dumps())
    assert parsed is not None and parsed.mtimes == {"a": 1_700_000_000}
    for bad in ({"b": 1_700_000_000}, {"a": 1.5}, {"a": 5}, {"a": "1700000000"}, {"a": 2**64}, []):
        data = json.loads(good.dumps())
        data["mtimes"] = bad
        assert Manifest.parse(json.dumps(data))[0] is None, bad


class TestPlain:
    def go(self, run_sshipit: RunSshipit, server: LocalServer, key: KeyPair, target: Path, **settings: object
           ) -> Result:
        result = run_sshipit(env=plugin_env(server, key, target=str(target), sources="site", **settings))
        assert result.returncode == 0, result
        return result

    def test_only_changed_files_travel(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        site = make_site(workspace)
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (40, 0)
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (0, 40)
        (site / "d1/f5.txt").write_text("changed, same size?\n")
        (site / "d2/f6.txt").write_text("file 6\n" * 7)  # same content rewritten: fresh mtime, nothing to send
        (site / "d3/new.txt").write_text("new\n")
        (site / "d0/f4.txt").chmod(0o600)
        result = self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        assert sent(result) == (3, 38)
        assert tree_digest(remote_dir / "site") == tree_digest(site)

    def test_no_change_sends_nothing_and_keeps_the_manifest(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        """Nothing to send: no upload command runs and the manifest is not rewritten (its time is what tells a
        later deploy which server files were edited since), yet a later hand edit is still caught."""
        site = make_site(workspace, files=8)
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        manifest = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
        written = manifest.stat()
        log_before = len(server.log_text())
        again = self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        assert sent(again) == (0, 8)
        assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
        # One command: the probe, the manifest and the listing in one exec; a deploy that sends runs two.
        assert server.log_text()[log_before:].count("Starting session: command") == 1
        as_user(server, f"echo edited > {remote_dir}/site/d1/f1.txt")
        (site / "d2/f2.txt").write_text("changed\n")
        log_before = len(server.log_text())
        result = self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        assert sent(result) == (2, 6)
        # The new manifest travels in the upload's own stream and command: no third round trip.
        assert server.log_text()[log_before:].count("Starting session: command") == 2
        assert manifest.stat().st_ino != written.st_ino  # files were sent: a new manifest
        assert tree_digest(remote_dir / "site") == tree_digest(site)

    def test_a_server_without_gzip_or_zstd(
        self, bare_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        """The manifest and the server's listing travel uncompressed, the stream as plain tar; all else alike."""
        site = make_site(workspace, files=10)
        for path in site.rglob("*"):  # built a while before the deploy, as in CI (see the manifest below)
            os.utime(path, (time.time() - 60, time.time() - 60), follow_symlinks=False)
        first = self.go(run_sshipit, bare_server, keys["ed25519"], remote_dir, compress="auto")
        assert sent(first) == (10, 0) and re.search(r" over tar\b(?!\+)", first.stdout), first  # plain tar
        # BusyBox find compares whole-second mtimes: the manifest is dated a second back, so that the edit
        # below, made within the same second, still counts as newer. (Files built within that second would be
        # sent once more: the price, and why the site above is dated a minute back.)
        manifest = bare_server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
        assert manifest.stat().st_mtime <= time.time() - 1
        assert sent(self.go(run_sshipit, bare_server, keys["ed25519"], remote_dir)) == (0, 10)
        as_user(bare_server, f"echo edited > {remote_dir}/site/d1/f1.txt")
        (site / "d3/f3.txt").write_text("changed\n")
        assert sent(self.go(run_sshipit, bare_server, keys["ed25519"], remote_dir)) == (2, 8)
        assert tree_digest(remote_dir / "site") == tree_digest(site)

    def test_same_size_content_change_is_detected(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        site = make_site(workspace, files=4)
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        original = (site / "d1/f1.txt").read_text()
        (site / "d1/f1.txt").write_text(original.replace("1", "9"))  # same size, other bytes
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (1, 3)
        assert (remote_dir / "site/d1/f1.txt").read_text() == original.replace("1", "9")

    def test_size_and_mtime_stand_for_the_content_as_rsync_decides(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        """A file with the size and mtime it had when its hash was taken is not read again (rsync's quick check):
        bytes changed behind a restored mtime stay as deployed. Another mtime, or one a reproducible build sets
        (1980 and before), and the file is read, and sent when it differs."""
        site = make_site(workspace, files=4)
        old = 1_700_000_000
        for path in site.rglob("*.txt"):
            os.utime(path, (old, old))
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        edited = site / "d1/f1.txt"
        original = edited.read_text()
        edited.write_text(original.replace("1", "9"))  # same size, other bytes, the mtime put back
        os.utime(edited, (old, old))
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (0, 4)
        assert (remote_dir / "site/d1/f1.txt").read_text() == original
        # checksum: true (rsync -c) reads every file: the same edit is found and sent
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir, checksum=True)) == (1, 3)
        assert (remote_dir / "site/d1/f1.txt").read_text() == original.replace("1", "9")
        edited.write_text(original)
        os.utime(edited, (old + 2, old + 2))
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (1, 3)  # another mtime: read
        assert (remote_dir / "site/d1/f1.txt").read_text() == original
        edited.write_text(original.replace("1", "9"))
        os.utime(edited, (old + 1, old + 1))
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (1, 3)
        assert (remote_dir / "site/d1/f1.txt").read_text() == original.replace("1", "9")
        for path in site.rglob("*.txt"):  # a reproducible build: every file dated 1 (Nix), whatever changed
            os.utime(path, (1, 1))
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (0, 4)
        edited.write_text(original.replace("1", "7"))
        os.utime(edited, (1, 1))
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (1, 3)
        assert (remote_dir / "site/d1/f1.txt").read_text() == original.replace("1", "7")

    def test_one_changed_file_sends_the_headers_of_its_own_directories_only(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        """Directory headers travel for new directories, changed modes and the directories above what is sent:
        one changed file among 400 directories sends a few headers, not 400 (every merged directory keeps its
        mode: test_fidelity::test_incremental_deploys_keep_every_directory_mode)."""
        site = workspace / "site"
        for n in range(400):
            (site / f"d{n % 20}" / f"e{n}").mkdir(parents=True)
            (site / f"d{n % 20}" / f"e{n}" / "f.txt").write_text(f"{n}\n")
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        (site / "d3/e3/f.txt").write_text("changed\n")
        result = self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        assert sent(result) == (1, 399)
        match = re.search(r"over tar, ([\d.]+) (B|KB|MB) sent", result.stdout)
        assert match, result
        wire = float(match.group(1)) * {"B": 1, "KB": 1024, "MB": 1 << 20}[match.group(2)]
        # 420 directory headers alone would be 210 KB; the manifest that travels along is ~60 KB
        assert wire < 120 * 1024, result.stdout
        assert (remote_dir / "site/d3/e3/f.txt").read_text() == "changed\n"

    def test_hand_edited_or_removed_files_on_the_server_are_sent_again(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        site = make_site(workspace, files=10)
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        remote = remote_dir / "site"
        as_user(server, f"echo hacked > {remote}/d1/f1.txt; rm {remote}/d2/f2.txt; chmod 600 {remote}/d3/f3.txt; "
                        f"touch -d @1000 {remote}/d0/f0.txt; printf x >> {remote}/d0/f4.txt")
        result = self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        assert sent(result) == (5, 5)
        assert tree_digest(remote) == tree_digest(site)

    def test_missing_or_broken_manifest_means_a_full_upload(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_site(workspace, files=6)
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        manifest = server.home / user_manifest_path(plain_manifest_key(str(remote_dir)))
        assert manifest.is_file()
        manifest.write_text("{not json")
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (6, 0)
        manifest.unlink()
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (6, 0)
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir)) == (0, 6)
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir, incremental=False)) == (6, 0)
        assert sent(self.go(run_sshipit, server, keys["ed25519"], remote_dir, rm=True)) == (6, 0)

    def test_prune_removes_only_our_own_stale_files(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        site = make_site(workspace, files=6)
        self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        as_user(server, f"echo mine > {remote_dir}/site/d1/uploads.txt")
        (site / "d2/f2.txt").unlink()
        (site / "link").unlink()
        without = self.go(run_sshipit, server, keys["ed25519"], remote_dir)
        assert (remote_dir / "site/d2/f2.txt").exists()  # no prune: stale files stay
        assert "pruned" not in without.stdout
        pruned = self.go(run_sshipit, server, keys["ed25519"], remote_dir, prune=True)
        assert "pruned 2 stale files" in pruned.stdout
        assert not (remote_dir / "site/d2/f2.txt").exists() and not (remote_dir / "site/link").is_symlink()
        assert (remote_dir / "site/d1/uploads.txt").read_text() == "mine\n"
        assert tree_digest(remote_dir / "site") == {**tree_digest(site), "d1/uploads.txt": pytest.approx(
            tree_digest(remote_dir / "site")["d1/uploads.txt"])}


class TestAtomic:
    def test_live_release_intact_after_incremental_release_rewrites_files(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        site = make_site(workspace, files=20)
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site", atomic=True)
        first = run_sshipit(env=env)
        assert first.returncode == 0, first
        live = remote_dir / "current"
        live_id = os.readlink(live)
        before = tree_digest(remote_dir / live_id / "site")
        assert before == tree_digest(site)

        (site / "d1/f1.txt").write_text("v2\n")
        (site / "d2/f2.txt").unlink()
        env["PLUGIN_SCRIPT"] = ("echo appended >> site/d0/f0.txt; sed -i s/file/FILE/ site/d3/f3.txt; "
                                "echo generated > site/generated.txt")
        second = run_sshipit(env=env)
        assert second.returncode == 0, second
        assert sent(second) == (1, 18)
        assert tree_digest(remote_dir / live_id / "site") == before  # the old release: byte for byte intact
        new = remote_dir / os.readlink(live) / "site"
        assert (new / "d1/f1.txt").read_text() == "v2\n" and not (new / "d2/f2.txt").exists()
        assert (new / "d0/f0.txt").read_text().endswith("appended\n")

        third = run_sshipit(env={**env, "PLUGIN_SCRIPT": "true"})
        assert third.returncode == 0, third
        newest = remote_dir / os.readlink(live) / "site"
        # Files the previous release's commands changed are sent again; its generated file is not carried over.
        assert sent(third) == (2, 17)
        assert tree_digest(newest) == tree_digest(site)


class TestCompression:
    # auto: the test server is on this machine, where there is no link to save (choose_compression)
    @pytest.mark.parametrize(("setting", "method"), [("auto", "tar"), ("zstd", "tar+zstd"),
                                                     ("gzip", "tar+gzip"), ("none", "tar")])
    def test_every_compression_lands_the_same_bytes(
        self, setting: str, method: str, server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
        remote_dir: Path, run_sshipit: RunSshipit,
    ) -> None:
        site = make_site(workspace, files=12)
        (site / "big.bin").write_bytes(os.urandom(3 << 20))
        (site / "text.js").write_text("function f(x) { return x * 2; }\n" * 50_000)
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site", compress=setting)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert f"over {method}" in result.stdout
        assert tree_digest(remote_dir / "site") == tree_digest(site)

    def test_bad_compress_value(self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
                                remote_dir: Path, run_sshipit: RunSshipit) -> None:
        make_site(workspace, files=1)
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site", compress="lz4")
        result = run_sshipit(env=env)
        assert result.returncode == 2 and "compress" in result.stderr


class TestAtomicFidelity:
    def test_type_changes_and_directory_modes_in_a_seeded_release(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        """The new release starts as a copy of the live one: paths that changed type, and directory modes, still
        land as built (see tests/test_fidelity.py for plain deploys)."""
        site = make_site(workspace, files=8)
        (site / "was-file").write_text("file\n")
        (site / "was-dir").mkdir()
        (site / "was-dir/x.txt").write_text("x\n")
        (site / "d1").chmod(0o700)
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="site", atomic=True)
        assert run_sshipit(env=env).returncode == 0
        (site / "was-file").unlink()
        (site / "was-file").mkdir()
        (site / "was-file/y.txt").write_text("y\n")
        (site / "was-dir/x.txt").unlink()
        (site / "was-dir").rmdir()
        (site / "was-dir").symlink_to("d0")
        (site / "d2").chmod(0o750)
        second = run_sshipit(env=env)
        assert second.returncode == 0, second
        assert sent(second) == (1, 8)
        live = remote_dir / os.readlink(remote_dir / "current") / "site"
        assert tree_digest(live) == tree_digest(site)
        for name in ("d1", "d2", "was-file"):
            assert (live / name).stat().st_mode & 0o7777 == (site / name).stat().st_mode & 0o7777, name
