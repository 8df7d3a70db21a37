"""Hostile input: targets, sources, delete paths, env names and values, hosts, shared paths and release ids that hold
spaces, quotes, `;`, `$()`, backticks, newlines, `..`, absolute paths and leading dashes.

Two promises are checked against a real OpenSSH server (on this machine, so a marker file planted by a payload
would show up locally and remotely alike): nothing runs that the user did not write as a command, and no path
leaves the target. Then property-based tests (hypothesis) for the settings parser, host entries and the quoting
and path rules, and a round trip of arbitrary bytes through the remote environment export.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import clean_env, one_error, plugin_env, rmtree, tree
from helpers import run_sshipit as run_sshipit_in
from sshipit.commas import read_commands, split_top_level
from sshipit.errors import SettingsError
from sshipit.hosts import parse_host
from sshipit.localserver import KeyPair, LocalServer
from sshipit.rules import clean_relative, quote, remote_target, shell_path
from sshipit.settings import Raw, from_environment, parse_bool, parse_duration, parse_list

# ------------------------------------------------------------------------------------------------------ helpers


class Marker:
    """A file name that only a payload would create; payloads touch it in /tmp or in the current directory."""

    def __init__(self) -> None:
        self.name = f"pwned-{uuid.uuid4().hex}"
        self.path = Path("/tmp") / self.name

    def payloads(self, *, absolute: bool = True) -> list[str]:
        """Shell injections, each of which would create the marker if it ever reached a shell unquoted."""
        cmd = f"touch {self.path}" if absolute else f"touch {self.name}"
        return [
            f"$({cmd})",
            f"`{cmd}`",
            f";{cmd};",
            f"' ; {cmd} ; '",
            f'" ; {cmd} ; "',
            f"&& {cmd} &&",
            f"| {cmd} |",
            f"$({cmd})'\"`{cmd}`\"'\\",
            f"${{IFS}}$({cmd})",
        ]

    def assert_absent(self, *roots: Path) -> None:
        assert not self.path.exists(), f"a payload ran: {self.path} exists"
        for root in roots:
            if root.is_dir():
                hits = [p for p in root.rglob(self.name) if p.name == self.name]
                assert not hits, f"a payload ran: {hits}"

    def cleanup(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def marker(workspace: Path) -> Iterator[Marker]:
    mark = Marker()
    yield mark
    mark.cleanup()


@pytest.fixture
def outside(remote_dir: Path) -> Path:
    """Files next to the target, owned by the login user: a deploy into remote_dir/target must never touch them."""
    folder = remote_dir / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep\n")
    (folder / "-rf").write_text("dash\n")
    (remote_dir / "sibling.txt").write_text("sibling\n")
    owner = remote_dir.stat()
    for path in (folder, folder / "keep.txt", folder / "-rf", remote_dir / "sibling.txt"):
        os.chown(path, owner.st_uid, owner.st_gid)
    return folder


def log_size(server: LocalServer) -> int:
    """How many connections the server has logged so far: unchanged means sshipit never connected."""
    return server.log_text().count("Connection from ")


def env_for(server: LocalServer, key: KeyPair, **more: object) -> dict[str, str]:
    """Settings as JSON arrays where they are lists, so that every item arrives exactly as written."""
    for name in ("sources", "delete", "shared", "envs", "script", "post_commands"):
        if isinstance(more.get(name), list):
            more[name] = json.dumps(more[name])
    return plugin_env(server, key, **more)


# ------------------------------------------------------------------------------------------------------ targets


def hostile_names(marker: Marker) -> list[str]:
    return [*marker.payloads(), "with space", "-rf", "--help", "a;b", "*", "$HOME", "~x", "back\\slash", "..x"]


class TestTargets:
    @pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
    def test_each_hostile_target_is_one_literal_directory(
        self, atomic: bool, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        outside: Path, marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("hi\n")
        before = tree(remote_dir)
        names = hostile_names(marker)
        if atomic:  # the same quoting; fewer runs
            names = [*names[:5], "-rf", "with space"]
        for index, name in enumerate(names):
            target = remote_dir / "targets" / f"{index}{name}"
            result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(target), sources=["dist"],
                                             atomic=atomic, script=['printf %s "$PWD" > where.txt']))
            assert result.returncode == 0, f"target {name!r}\n{result}"
            root = target / "current" if atomic else target
            assert (root / "dist/index.html").read_text() == "hi\n", name
            where = (root / "where.txt").read_text()
            assert os.path.realpath(where) == os.path.realpath(root), name
        made = sorted(p.name for p in (remote_dir / "targets").iterdir())
        # one directory each, named literally ('/' in a payload makes nested directories)
        assert made == sorted({f"{i}{n}".split("/")[0] for i, n in enumerate(names)})
        assert tree(remote_dir, skip=remote_dir / "targets") == before
        marker.assert_absent(remote_dir, workspace)

    def test_relative_target_with_a_leading_dash(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        """A relative target is in the login's home; one starting with '-' is a directory, not an option."""
        (workspace / "f.txt").write_text("f\n")
        name = f"-rf {marker.payloads()[0]}"
        try:
            result = run_sshipit(env=env_for(server, keys["ed25519"], target=name, sources=["f.txt"],
                                             script=["ls -a > listing.txt"]))
            assert result.returncode == 0, result
            assert (server.home / name / "f.txt").read_text() == "f\n"
            assert "f.txt" in (server.home / name / "listing.txt").read_text().split()
        finally:
            rmtree(server.home / name.split("/")[0])  # the payload holds a "/": its first part is the top
        marker.assert_absent(workspace)

    @pytest.mark.parametrize("target", [
        "a\nb", "/tmp/x\n; touch /tmp/y", "../escape", "../../etc", "~root/x", "~/../x", "/", "//", "/./.",
        "a/../../x", "\r", "x\ry",
    ])
    def test_targets_that_leave_or_hold_control_characters_are_refused(
        self, target: str, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, marker: Marker,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "f.txt").write_text("f\n")
        mark = log_size(server)
        result = run_sshipit(env=env_for(server, keys["ed25519"], target=target, sources=["f.txt"],
                                         script=[f"touch {marker.path}"]))
        one_error(result, 2, "[setting: target]")
        assert log_size(server) == mark, "the server was contacted despite a refused target"
        marker.assert_absent(workspace)


# ------------------------------------------------------------------------------------------------------ sources


class TestSources:
    def test_hostile_file_names_land_literally_and_prune_exactly(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, outside: Path,
        marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        dist = workspace / "dist"
        (dist / "sub dir").mkdir(parents=True)
        names = [*marker.payloads(absolute=False), "-rf", "--", "-", "a b", "a", "b", "new\nline", "tab\there",
                 "..x", "...", "*", "?", "[a]", "back\\slash", "é ü 日本", "$HOME", "~"]
        for index, name in enumerate(names):
            (dist / name).write_text(f"content {index}\n")
            (dist / "sub dir" / name).write_text(f"nested {index}\n")
        raw = os.fsencode(str(dist)) + b"/latin1-\xe9\xff"  # not UTF-8: the bytes must arrive as they are
        with open(raw, "wb") as handle:
            handle.write(b"raw\n")
        (workspace / "-rf $(touch x)").write_text("top\n")  # a source name that looks like an option
        target = remote_dir / "target"
        before_outside = tree(remote_dir, skip=target)

        env = env_for(server, keys["ed25519"], target=str(target), sources=["dist", "-rf $(touch x)"], prune=True)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert tree(target) == {**{k: v for k, v in tree(workspace).items()
                                   if k.startswith("dist") or k == "-rf $(touch x)"}}
        assert os.path.exists(os.fsencode(str(target)) + b"/dist/latin1-\xe9\xff")

        removed = ["a b", names[0], "-rf", "new\nline", "*"]
        for name in removed:
            (dist / name).unlink()
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "pruned 5 stale files" in result.stdout, result
        left = {p.name for p in (target / "dist").iterdir()}
        assert not left & set(removed)
        assert {"a", "b", "-", "--", "...", "?"} <= left  # look-alikes of removed names stay
        assert len(list((target / "dist/sub dir").iterdir())) == len(names)
        assert tree(remote_dir, skip=target) == before_outside
        marker.assert_absent(remote_dir, workspace, server.home)

    @pytest.mark.parametrize("source", ["../x", "../../etc/passwd", "/etc/passwd", "dist/../../x", "/", "/tmp"])
    def test_sources_outside_the_workspace_are_refused(
        self, source: str, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(remote_dir), sources=[source]))
        one_error(result, 2, "[setting: sources]")
        assert list(remote_dir.iterdir()) == []

    @pytest.mark.parametrize("how", ["tar", "sftp"])
    def test_a_file_cannot_travel_through_a_symlink_sent_in_the_same_upload(
        self, how: str, server: LocalServer, sftp_only_server: LocalServer, keys: dict[str, KeyPair],
        workspace: Path, remote_dir: Path, outside: Path, run_sshipit: RunSshipit,
    ) -> None:
        """A symlink `x` pointing out of the target and a file `x/f` in one upload (globs and strip_components can
        produce that pair) must not write `f` outside through the link."""
        (workspace / "c/d").mkdir(parents=True)
        (workspace / "c/d/x").symlink_to(outside)
        (workspace / "b/y/x").mkdir(parents=True)
        (workspace / "b/y/x/f").write_text("escaped\n")
        before = tree(outside)
        srv = server if how == "tar" else sftp_only_server
        result = run_sshipit(env=env_for(srv, keys["ed25519"], target=str(remote_dir / "target"),
                                         sources=["c/d/x", "b/**/f"], strip_components=2))
        one_error(result, 2, "x/f would be written through the symlink x", "[setting: strip_components]")
        assert tree(outside) == before
        assert not (outside / "f").exists()


# ------------------------------------------------------------------------------------------------------- delete


class TestDelete:
    def test_hostile_delete_paths_remove_exactly_that_name(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, outside: Path,
        marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        target = remote_dir / "target"
        doomed = [*marker.payloads(), "-rf", "--no-preserve-root", "*", "a b", "with\\back", "sub/-x", "./dot",
                  "sub/../subsib"]
        kept = ["keep.txt", "a", "b", "-", "sub/keep", "subsib2", "x", "dot2"]
        owner = remote_dir.stat()
        for name in [*doomed, *kept]:
            path = target / posixpath.normpath(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
        for path in [target, *target.rglob("*")]:
            os.lchown(path, owner.st_uid, owner.st_gid)
        everything = {str(p.relative_to(target)) for p in target.rglob("*")}
        before_outside = tree(remote_dir, skip=target)

        result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(target), delete=doomed,
                                         script=["true"]))
        assert result.returncode == 0, result
        left = {str(p.relative_to(target)) for p in target.rglob("*")}
        # exactly the named paths are gone (the directories that a '/' in a payload made stay)
        assert left == everything - {posixpath.normpath(d) for d in doomed}
        assert {"keep.txt", "a", "b", "-", "sub/keep", "subsib2", "x", "dot2"} <= left
        assert tree(remote_dir, skip=target) == before_outside
        marker.assert_absent(remote_dir, workspace)

    @pytest.mark.parametrize("path", ["../outside/keep.txt", "..", ".", "/etc/passwd", "a/../../outside",
                                      "./../outside", "a\nb", "//etc"])
    def test_delete_paths_that_leave_the_target_are_refused(
        self, path: str, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, outside: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        target = remote_dir / "target"
        target.mkdir()
        before = tree(remote_dir)
        mark = log_size(server)
        result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(target), delete=[path],
                                         script=["true"]))
        one_error(result, 2, "[setting: delete]")
        assert tree(remote_dir) == before
        assert log_size(server) == mark


# --------------------------------------------------------------------------------------------------------- envs


class TestEnvs:
    @pytest.mark.parametrize("name", ["A;touch /tmp/x", "$(id)", "`id`", "A B", "A-B", "1A", "A\nB", "-A", "A=B",
                                      "A'", ""])
    def test_names_that_are_not_shell_names_are_refused(
        self, name: str, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, marker: Marker,
        run_sshipit: RunSshipit,
    ) -> None:
        name = name.replace("/tmp/x", str(marker.path))
        mark = log_size(server)
        # OK is set (a name set nowhere is left unset, as drone-ssh does), so the list around the bad name is read
        result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(remote_dir), envs=[name, "OK"],
                                         ok="fine", script=["env > env.txt"]))
        if name == "":
            assert result.returncode == 0, result  # an empty item is dropped, as an empty setting is
            assert "OK=fine" in (remote_dir / "env.txt").read_text().splitlines()
            return
        one_error(result, 2, "[setting: envs]")
        assert log_size(server) == mark
        marker.assert_absent(remote_dir)

    def test_all_skips_settings_whose_names_are_not_shell_names(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, marker: Marker,
        run_sshipit: RunSshipit,
    ) -> None:
        env = env_for(server, keys["ed25519"], target=str(remote_dir), envs="all", script=["env > env.txt"])
        env[f"PLUGIN_X$(touch {marker.path})"] = "v1"
        env["PLUGIN_GOOD_ONE"] = f"$(touch {marker.path})"
        env["PLUGIN_A;B"] = "v2"
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "is not a valid shell variable name; not exported" in result.stderr
        exported = (remote_dir / "env.txt").read_text()
        assert f"GOOD_ONE=$(touch {marker.path})\n" in exported
        assert "v1" not in exported and "v2" not in exported
        marker.assert_absent(remote_dir)

    def test_hostile_values_arrive_as_written(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, marker: Marker,
        run_sshipit: RunSshipit,
    ) -> None:
        values = [*marker.payloads(), "\n", "'", '"', "\\", "-n", "-e \\n", "%s%d", "a\nb\n\n", " lead and trail "]
        names = [f"V{i}" for i in range(len(values))]
        env = env_for(server, keys["ed25519"], target=str(remote_dir), envs=names,
                      script=[f'printf %s "${n}" > {n}.out' for n in names])
        env.update({f"PLUGIN_{n}": v for n, v in zip(names, values, strict=True)})
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        for name, value in zip(names, values, strict=True):
            assert (remote_dir / f"{name}.out").read_text() == value, name
        marker.assert_absent(remote_dir)


# -------------------------------------------------------------------------------------------------------- hosts


class TestHosts:
    @pytest.mark.parametrize("entry", [
        "127.0.0.1;touch MARK", "$(touch MARK)", "`touch MARK`", "-oProxyCommand=touch MARK", "-p 22 127.0.0.1",
        "127.0.0.1 -oProxyCommand=touch_MARK", "a\nb", "a\n-oProxyCommand=x", "user name@127.0.0.1", "'q'@127.0.0.1",
        "-l@127.0.0.1", "$(id)@127.0.0.1", "[::1;touch MARK]:22", "127.0.0.1:22;touch MARK", "127.0.0.1:-22",
        "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:²", "127.0.0.1:١٢", "../x", "/etc/hosts", "host/../x",
        "[127.0.0.1]:22",
    ])
    def test_hostile_host_entries_are_refused_before_connecting(
        self, entry: str, server: LocalServer, keys: dict[str, KeyPair], marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        entry = entry.replace("MARK", str(marker.path))
        mark = log_size(server)
        env = env_for(server, keys["ed25519"], script=["true"])
        env["PLUGIN_HOST"] = json.dumps([entry])
        result = run_sshipit(env=env)
        one_error(result, 2, "[setting: host]")
        assert log_size(server) == mark
        marker.assert_absent()

    @pytest.mark.parametrize("username", ["$(touch MARK)", "`touch MARK`", "a;touch MARK", "-oProxyCommand=MARK"])
    def test_hostile_username_setting_only_fails_to_log_in(
        self, username: str, server: LocalServer, keys: dict[str, KeyPair], marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        """The `username` setting goes to the SSH protocol only, never to a shell: the login fails, nothing runs."""
        username = username.replace("MARK", str(marker.path))
        result = run_sshipit(env=env_for(server, keys["ed25519"], username=username, script=[f"touch {marker.path}"]))
        one_error(result, 1, "authentication failed", repr(username))
        marker.assert_absent()


# ------------------------------------------------------------------------------------------------------- shared


class TestShared:
    def test_hostile_shared_paths_are_literal_links_inside_the_target(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, outside: Path,
        marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("hi\n")
        target = remote_dir / "target"
        shared = [f"{marker.payloads()[0]}/", marker.payloads()[3], "-rf", "a b/c d/", "--", "x;y"]
        before_outside = tree(remote_dir, skip=target)
        for _ in range(2):
            result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(target), sources=["dist"],
                                             atomic=True, shared=shared, script=["ls -la > ls.txt"]))
            assert result.returncode == 0, result
        release = target / "current"
        for entry in shared:
            name = entry.rstrip("/")
            link = release / name
            assert link.is_symlink(), name
            assert os.path.realpath(link) == os.path.realpath(target / "shared" / name), name
            # In neither the build nor shared/: made an empty directory, with or without a trailing "/".
            assert (target / "shared" / name).is_dir() and not (target / "shared" / name).is_symlink(), name
        assert tree(remote_dir, skip=target) == before_outside
        marker.assert_absent(remote_dir, workspace)

    @pytest.mark.parametrize("path", ["../x", "../../outside", "/etc", "a/../../x", ".", "..", "a\nb", "/"])
    def test_shared_paths_that_leave_the_target_are_refused(
        self, path: str, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        mark = log_size(server)
        result = run_sshipit(env=env_for(server, keys["ed25519"], target=str(remote_dir), sources=["dist"],
                                         atomic=True, shared=[path]))
        one_error(result, 2, "[setting: shared]")
        assert log_size(server) == mark and list(remote_dir.iterdir()) == []


# -------------------------------------------------------------------------------------------------- release ids

RELEASE_ID = re.compile(r"\d{8}-\d{6}\.\d{3}(-[0-9A-Za-z]{1,7})?\Z")


class TestReleaseIds:
    def test_hostile_commit_build_and_repo_make_a_safe_release_id(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, outside: Path,
        marker: Marker, run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("hi\n")
        target = remote_dir / "target"
        before_outside = tree(remote_dir, skip=target)
        commits = [f"../../../outside/{marker.payloads()[0]}", f"-rf `touch {marker.path}`\n;x", "/", "..",
                   f"' ; touch {marker.path} ; '", "a" * 200]
        made = []
        for commit in commits:
            env = env_for(server, keys["ed25519"], target=str(target), sources=["dist"], atomic=True,
                          keep_releases=10)
            env.update({"DRONE_COMMIT_SHA": commit, "DRONE_BUILD_NUMBER": f"$(touch {marker.path})",
                        "DRONE_REPO": f"`touch {marker.path}`; ../.."})
            result = run_sshipit(env=env)
            assert result.returncode == 0, f"{commit!r}\n{result}"
            live = os.readlink(target / "current")
            assert live.startswith("releases/"), live
            release = live.removeprefix("releases/")
            assert RELEASE_ID.match(release), release
            meta = json.loads((target / "current/.sshipit-release.json").read_text())
            assert meta["commit"] == commit[:64] and meta["build"] == f"$(touch {marker.path})"[:32]
            made.append(release)
        assert sorted(p.name for p in (target / "releases").iterdir()) == sorted(made)
        assert tree(remote_dir, skip=target) == before_outside
        marker.assert_absent(remote_dir, workspace)


# ------------------------------------------------------------------------------------------- property: settings

NO_NUL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
WORDS = {"true": True, "yes": True, "on": True, "1": True, "y": True,
         "false": False, "no": False, "off": False, "0": False, "n": False}


class TestSettingsProperties:
    @given(NO_NUL)
    def test_parse_bool_is_total(self, text: str) -> None:
        try:
            value = parse_bool(text, "rm")
        except SettingsError as exc:
            assert exc.setting == "rm" and exc.exit_status == 2
            assert text.strip().lower() not in WORDS
        else:
            assert value is WORDS[text.strip().lower()]

    @given(st.sampled_from(sorted(WORDS)), st.text(" \t\n", max_size=3), st.text(" \t\n", max_size=3),
           st.lists(st.booleans(), max_size=6))
    def test_parse_bool_ignores_case_and_blanks(self, word: str, left: str, right: str, upper: list[bool]) -> None:
        mixed = "".join(c.upper() if i < len(upper) and upper[i] else c for i, c in enumerate(word))
        assert parse_bool(left + mixed + right, "rm") is WORDS[word]

    @given(NO_NUL)
    def test_parse_duration_is_total_and_positive(self, text: str) -> None:
        try:
            seconds = parse_duration(text, "timeout")
        except SettingsError as exc:
            assert exc.setting == "timeout"
        else:
            assert 0 < seconds < float("inf")

    @given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h", "d"])), min_size=1,
                    max_size=5))
    def test_parse_duration_sums_its_parts(self, parts: list[tuple[int, str]]) -> None:
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
        total = sum(n * scale[unit] for n, unit in parts)
        text = "".join(f"{n}{unit}" for n, unit in parts)
        if total <= 0:
            with pytest.raises(SettingsError):
                parse_duration(text, "timeout")
        else:
            assert parse_duration(text, "timeout") == pytest.approx(total)

    @given(st.lists(NO_NUL, max_size=8))
    def test_a_json_list_round_trips(self, items: list[str]) -> None:
        for text in (json.dumps(items), json.dumps(items, ensure_ascii=False), json.dumps(items, indent=2)):
            assert parse_list(Raw("PLUGIN_X", text=text), "x") == [i.strip() for i in items if i.strip()]
            commands = read_commands(Raw("PLUGIN_SCRIPT", text=text), "commands", {}, Path("/nonexistent"))
            assert commands.items == [i for i in items if i.strip()] and commands.how == "json"

    @given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                                          blacklist_characters=",[{\x00"), min_size=1), max_size=8))
    def test_a_comma_joined_list_of_plain_items_round_trips(self, items: list[str]) -> None:
        assume(all(i.strip() == i for i in items))
        assert parse_list(Raw("PLUGIN_X", text=",".join(items)), "x") == items

    @given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00="),
                                   min_size=1, max_size=20), NO_NUL, max_size=8),
           st.sampled_from(["PLUGIN_", "INPUT_", "", "plugin_"]))
    def test_from_environment_is_total(self, names: dict[str, str], prefix: str) -> None:
        environ = {prefix + name: value for name, value in names.items()}
        try:
            raw = from_environment(environ)
        except SettingsError as exc:
            assert "both set" in exc.message
            return
        for name, value in environ.items():
            if not name.startswith(("PLUGIN_", "INPUT_")) or value == "":
                continue
            found = [r for r in (*raw.known.values(), *raw.extra.values()) if r.origin == name]
            if found:
                assert found[0].text == value
        origins = [r.origin for r in (*raw.known.values(), *raw.extra.values())]
        assert all(environ[o] != "" and o.startswith(("PLUGIN_", "INPUT_")) for o in origins)

    @given(NO_NUL)
    @example("a,'b,c',$(d,e),`f,g`,${h,i},[j,k],\"l,m\",n\\,o")
    def test_split_top_level_never_loses_a_character(self, text: str) -> None:
        parts = split_top_level(text)
        squeeze = re.compile(r"[\s,]")
        assert squeeze.sub("", "".join(parts)) == squeeze.sub("", text)
        assert all(p == p.strip() and p for p in parts)

    @given(st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                          blacklist_characters=",'\"`\\()[]{}\x00"), min_size=1), min_size=1,
                    max_size=6))
    def test_split_top_level_inverts_a_plain_join(self, items: list[str]) -> None:
        assume(all(i.strip() == i and i for i in items))
        assert split_top_level(",".join(items)) == items


# ---------------------------------------------------------------------------------------- property: host entries

LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
USER = st.from_regex(r"[a-z_][a-z0-9_.-]{0,15}", fullmatch=True)


class TestHostProperties:
    @given(st.lists(LABEL, min_size=1, max_size=4).map(".".join), st.one_of(st.none(), st.integers(1, 65535)),
           st.one_of(st.none(), USER))
    def test_written_forms_parse_back(self, name: str, port: int | None, user: str | None) -> None:
        entry = (f"{user}@" if user else "") + name + (f":{port}" if port else "")
        spec = parse_host(entry, 22, "deploy")
        assert (spec.hostname, spec.port, spec.username) == (name, port or 22, user or "deploy")

    @given(st.ip_addresses(v=6).filter(lambda a: not a.is_unspecified), st.one_of(st.none(), st.integers(1, 65535)))
    def test_ipv6_forms_parse_back(self, address: object, port: int | None) -> None:
        text = str(address)
        spec = parse_host(f"[{text}]:{port}" if port else text, 22, "root")
        assert spec.hostname == text and spec.port == (port or 22)

    @given(NO_NUL)
    def test_anything_else_is_refused_or_harmless(self, entry: str) -> None:
        try:
            spec = parse_host(entry, 22, "deploy")
        except SettingsError as exc:
            assert exc.setting == "host" and exc.exit_status == 2
            return
        assert re.fullmatch(r"[A-Za-z0-9_.%:-]+", spec.hostname) and not spec.hostname.startswith("-")
        assert 0 < spec.port < 65536
        assert not spec.username.startswith("-")
        assert not any(c.isspace() or c in "'\"`$;\\" for c in spec.username)


# --------------------------------------------------------------------------------------- property: shell rules

SHELLS = ["sh", "bash"]


def shell_echo(shell: str, script: str) -> bytes:
    return subprocess.run([shell, "-c", script], capture_output=True, check=True, timeout=10).stdout


class TestQuotingProperties:
    @pytest.mark.parametrize("shell", SHELLS)
    @settings(max_examples=150, deadline=None)
    @given(NO_NUL)
    @example("'\"$(touch /tmp/x)`id`\\\n;|&*?[]{}~#!%^ \t-e -n")
    def test_quote_survives_the_shell(self, shell: str, value: str) -> None:
        if shutil.which(shell) is None:
            pytest.fail(f"{shell} is not installed: the quoting rules are checked against it")
        assert shell_echo(shell, "printf %s " + quote(value)) == value.encode()

    @pytest.mark.parametrize("shell", SHELLS)
    @settings(max_examples=60, deadline=None)
    @given(st.binary().filter(lambda b: b"\x00" not in b))
    def test_quote_survives_the_shell_for_any_bytes(self, shell: str, data: bytes) -> None:
        value = os.fsdecode(data)
        command = ("printf %s " + quote(value)).encode("utf-8", "surrogateescape")
        assert subprocess.run([shell.encode(), b"-c", command], capture_output=True, check=True,
                              timeout=10).stdout == data

    @given(NO_NUL)
    def test_shell_path_is_one_word_and_never_an_option(self, path: str) -> None:
        words = shlex.split(shell_path(path))
        assert len(words) == 1 and not words[0].startswith("-")
        assert words[0] in (path, "./" + path)

    @given(st.one_of(NO_NUL, st.lists(st.sampled_from(["..", ".", "", "a", "-rf", "b c", "$(x)", "/"]), max_size=8)
                     .map("/".join)))
    def test_clean_relative_never_leaves(self, path: str) -> None:
        try:
            clean = clean_relative(path, "delete")
        except SettingsError as exc:
            assert exc.setting == "delete"
            return
        base = "/srv/target"
        joined = posixpath.normpath(posixpath.join(base, clean))
        assert joined.startswith(base + "/") and joined != base
        assert not clean.startswith("/") and ".." not in clean.split("/") and "\n" not in clean
        assert clean == posixpath.normpath(clean)

    @given(st.one_of(NO_NUL, st.lists(st.sampled_from(["..", ".", "", "~", "a", "-x", "b c", "/"]), max_size=6)
                     .map("/".join)))
    def test_remote_target_stays_home_or_absolute(self, target: str) -> None:
        try:
            normal = remote_target(target)
        except SettingsError as exc:
            assert exc.setting == "target"
            return
        assert not any(c in normal for c in "\x00\n\r")
        assert normal != "/" and normal == posixpath.normpath(normal)
        if not normal.startswith("/"):
            home = "/home/user"
            assert posixpath.normpath(posixpath.join(home, normal)).startswith(home)
            assert normal.split("/")[0] != ".."
        # Always one quoted word, never an option: a leading '~' or '-' is never expanded or parsed.
        assert shlex.split(shell_path(normal)) in ([normal], ["./" + normal])


# ------------------------------------------------------------------------------------- bytes through the export


@pytest.fixture(scope="module")
def export_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A workspace and a HOME for the round-trip runs (module-scoped: hypothesis calls the test many times)."""
    root = tmp_path_factory.mktemp("export")
    (root / "ws").mkdir()
    (root / "home").mkdir()
    return root / "ws", root / "home"


NON_UTF8 = [b"\xff", b"\xfe\xff", b"\x80abc", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"caf\xe9",
            b"\x01\x02\x7f\x1f\x1b[31m", b"'\xff'\"\xfe\"", b"$(touch /tmp/pwned-bytes)\xff", b"\n\xff\n", b"\\\xff"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(st.binary(min_size=0, max_size=300).filter(lambda b: b"\x00" not in b), min_size=25,
                       max_size=25))
@example(values=NON_UTF8 + [b""] * 13)
def test_arbitrary_bytes_round_trip_through_the_remote_environment(
    values: list[bytes], server: LocalServer, keys: dict[str, KeyPair], export_dirs: tuple[Path, Path],
) -> None:
    """25 variables a deploy: each value goes into the local environment as raw bytes (envs names it), and a
    remote `printf %s "$X"` writes it to a file whose bytes must be exactly the same."""
    workspace, home = export_dirs
    owner = server.home.stat()
    remote = Path(tempfile.mkdtemp(prefix="export-", dir=server.home))
    os.chown(remote, owner.st_uid, owner.st_gid)
    try:
        names = [f"X{i}" for i in range(len(values))]
        env = env_for(server, keys["ed25519"], target=str(remote), envs=names,
                      script=[" && ".join(f'printf %s "${n}" > {n}.out' for n in names)])
        env.update({name: os.fsdecode(value) for name, value in zip(names, values, strict=True)})
        result = run_sshipit_in(cwd=workspace, home=home, env=env, timeout=60)
        assert result.returncode == 0, result
        for name, value in zip(names, values, strict=True):
            assert (remote / f"{name}.out").read_bytes() == value, name
        assert not Path("/tmp/pwned-bytes").exists()
    finally:
        rmtree(remote)


def test_bytes_that_are_not_utf8_survive_debug_on_a_strict_console(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, tmp_path: Path,
) -> None:
    """A non-UTF-8 value and a non-UTF-8 command, with `debug` printing the remote script, on a console that
    refuses to encode them (PYTHONIOENCODING=utf-8 makes stdout strict): no internal error, bytes intact."""
    value = b"caf\xe9 \xff\xfe '$(touch x)'"
    command = b"printf '\\351\\377' > cmd.out; printf %s \"$X\" > x.out; echo '\xe9t\xe9'"
    env = env_for(server, keys["ed25519"], target=str(remote_dir), envs=["X"], debug=True)
    env.update({"X": os.fsdecode(value), "PLUGIN_SCRIPT": os.fsdecode(command), "PYTHONIOENCODING": "utf-8"})
    home = tmp_path / "home-bytes"
    home.mkdir()
    done = subprocess.run([sys.executable, "-m", "sshipit"], cwd=workspace, env=clean_env(home, env),
                          capture_output=True, timeout=60, check=False)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, output
    assert "internal error" not in output and "Traceback" not in output
    assert "remote script:" in output and "$ printf" in output
    assert (remote_dir / "x.out").read_bytes() == value
    assert (remote_dir / "cmd.out").read_bytes() == b"\xe9\xff"
    assert not (remote_dir / "x").exists()
