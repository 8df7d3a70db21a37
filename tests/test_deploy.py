"""Deploys to a real OpenSSH server: what lands on disk and what really runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import RunSshipit
from helpers import Result, clean_env, plugin_env, start_server
from sshipit.localserver import KeyPair, LocalServer


def make_tree(workspace: Path) -> None:
    """A small build output: nested dirs, an empty dir, a symlink, an executable, odd names."""
    (workspace / "dist/app/assets").mkdir(parents=True)
    (workspace / "dist/app/empty").mkdir()
    (workspace / "dist/app/index.html").write_text("<h1>hi</h1>\n")
    (workspace / "dist/app/assets/app.js").write_text("console.log(1)\n")
    (workspace / "dist/app/assets/app.js.map").write_text("{}\n")
    run = workspace / "dist/app/run.sh"
    run.write_text("#!/bin/sh\necho run\n")
    run.chmod(0o750)
    (workspace / "dist/app/current.html").symlink_to("index.html")
    (workspace / "dist/app/with space & 'quote'.txt").write_text("odd\n")
    os.utime(workspace / "dist/app/index.html", (1_600_000_000, 1_600_000_000))
    (workspace / "README.md").write_text("readme\n")


def give_to_login_user(root: Path) -> None:
    """Files a test made as root belong to the server's login user, as if a deploy had put them there."""
    owner = root.stat()
    for path in [root, *root.rglob("*")]:
        os.lchown(path, owner.st_uid, owner.st_gid)


def landed(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------------------ upload


class TestUpload:
    def test_layout_modes_mtimes_symlinks_empty_dirs(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_tree(workspace)
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["dist/app/"]))
        assert result.returncode == 0, result
        app = remote_dir / "dist/app"
        assert (app / "index.html").read_text() == "<h1>hi</h1>\n"
        assert (app / "assets/app.js").read_text() == "console.log(1)\n"
        assert (app / "empty").is_dir() and not any((app / "empty").iterdir())
        assert stat.S_IMODE((app / "run.sh").stat().st_mode) == 0o750
        assert (app / "current.html").is_symlink() and os.readlink(app / "current.html") == "index.html"
        assert int((app / "index.html").stat().st_mtime) == 1_600_000_000
        assert (app / "with space & 'quote'.txt").read_text() == "odd\n"
        assert not (remote_dir / "README.md").exists()
        assert "uploaded 5 files" in result.stdout  # the symlink and dirs are not counted as files

    def test_new_names_are_moved_in_whole_and_existing_ones_merged(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        """Every new top-level name arrives (hidden and odd ones too: they are moved in whole from the staging);
        an existing directory keeps its inode and the files sshipit did not send (merged, not moved into or over
        it); a replaced file is a new inode, never rewritten in place."""
        for name, text in (("site/keep.txt", "theirs\n"), ("site/page.html", "old\n")):
            (remote_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (remote_dir / name).write_text(text)
        for name in ("site/page.html", "fresh/a/b.txt", ".hidden/c.txt", "..odd", "-dash.txt"):
            (workspace / "out" / name).parent.mkdir(parents=True, exist_ok=True)
            (workspace / "out" / name).write_text(f"new {name}\n")
        give_to_login_user(remote_dir)
        site_inode, page_inode = (remote_dir / "site").stat().st_ino, (remote_dir / "site/page.html").stat().st_ino
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["out"], strip_components=1)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert landed(remote_dir) == {"site", "site/keep.txt", "site/page.html", "fresh", "fresh/a", "fresh/a/b.txt",
                                      ".hidden", ".hidden/c.txt", "..odd", "-dash.txt"}
        assert (remote_dir / "site/keep.txt").read_text() == "theirs\n"
        assert (remote_dir / "site/page.html").read_text() == "new site/page.html\n"
        assert (remote_dir / "site").stat().st_ino == site_inode
        assert (remote_dir / "site/page.html").stat().st_ino != page_inode
        for name in ("fresh/a/b.txt", ".hidden/c.txt", "..odd", "-dash.txt"):
            assert (remote_dir / name).read_text() == f"new {name}\n"
        assert not [p for p in remote_dir.iterdir() if p.name.startswith(".sshipit-upload.")]

    def test_strip_components_globs_and_excludes(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_tree(workspace)
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["dist/**/*.js*", "!*.map"],
                         strip_components=2)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert landed(remote_dir) == {"assets", "assets/app.js"}

    def test_no_temporary_archive_anywhere(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_tree(workspace)
        home = Path(server.home)
        def listing() -> set[str]:  # other tests' remote_dir folders come and go in the same home
            return {name for name in os.listdir(home) if not name.startswith("remote-")}

        before = listing()
        tmp_before = set(os.listdir("/tmp"))
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["dist"]))
        assert result.returncode == 0, result
        assert listing() == before
        new_in_tmp = {n for n in set(os.listdir("/tmp")) - tmp_before if n.endswith((".tar", ".tgz", ".gz"))}
        assert not new_in_tmp
        assert not [p for p in remote_dir.rglob("*") if p.name.endswith((".tar", ".tar.gz", ".tgz"))]

    def test_rm_empties_contents_but_keeps_the_directory(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_tree(workspace)
        for name in ("old.txt", ".hidden", "..dots"):
            (remote_dir / name).write_text("old")
        (remote_dir / "olddir").mkdir()
        inode = remote_dir.stat().st_ino
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["README.md"], rm=True)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert landed(remote_dir) == {"README.md"}
        assert remote_dir.stat().st_ino == inode

    def test_delete_paths(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_tree(workspace)
        (remote_dir / "cache").mkdir()
        (remote_dir / "cache/x").write_text("x")
        (remote_dir / "-rf").write_text("dash")
        (remote_dir / "keep.txt").write_text("keep")
        give_to_login_user(remote_dir)
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["README.md"],
                         delete=["cache", "-rf", "missing"])
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert landed(remote_dir) == {"README.md", "keep.txt"}

    @pytest.mark.parametrize("bad", ["../outside", "/etc", "a/../../x", "."])
    def test_delete_cannot_escape_target(
        self, bad: str, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        (remote_dir / "keep.txt").write_text("keep")
        (workspace / "f").write_text("f")
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir / "sub"), sources=["f"], delete=[bad])
        result = run_sshipit(env=env)
        assert result.returncode == 2, result
        assert "delete" in result.stderr and "Traceback" not in result.output
        assert landed(remote_dir) == {"keep.txt"}

    def test_missing_source_is_an_error_before_connecting(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir / "t"), sources=["nope"]))
        assert result.returncode == 2 and "nope" in result.stderr and "sources" in result.stderr
        assert not (remote_dir / "t").exists()

    def test_busybox_tar(
        self, busybox_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        make_tree(workspace)
        env = plugin_env(busybox_server, keys["ed25519"], target=str(remote_dir), sources=["dist"],
                         script="tar --help 2>&1 | head -n 1")
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "BusyBox" in result.stdout
        app = remote_dir / "dist/app"
        assert (app / "index.html").read_text() == "<h1>hi</h1>\n"
        assert stat.S_IMODE((app / "run.sh").stat().st_mode) == 0o750
        assert (app / "current.html").is_symlink()
        assert (app / "empty").is_dir()

    def test_sftp_only_account(
        self, sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        make_tree(workspace)
        (remote_dir / "stale").write_text("old")
        env = plugin_env(sftp_only_server, keys["ed25519"], target=str(remote_dir), sources=["dist"], rm=True)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "SFTP" in result.stdout
        app = remote_dir / "dist/app"
        assert (app / "index.html").read_text() == "<h1>hi</h1>\n"
        assert stat.S_IMODE((app / "run.sh").stat().st_mode) == 0o750
        assert os.readlink(app / "current.html") == "index.html"
        assert (app / "empty").is_dir()
        assert not (remote_dir / "stale").exists()

    def test_sftp_only_account_refuses_commands_before_uploading(
        self, sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        make_tree(workspace)
        env = plugin_env(sftp_only_server, keys["ed25519"], target=str(remote_dir), sources=["dist"], script="ls")
        result = run_sshipit(env=env)
        assert result.returncode == 1, result
        assert "SFTP only" in result.stderr and "commands" in result.stderr
        assert landed(remote_dir) == set()

    def test_flags_instead_of_variables(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        make_tree(workspace)
        key_file = workspace / "id"
        key_file.write_text(keys["ed25519"].private_text)
        fingerprint = next(iter(server.fingerprints().values()))
        result = run_sshipit(
            "--host", f"{server.user}@{server.host}:{server.port}", "--key-path", str(key_file),
            "--fingerprint", fingerprint, "--target", str(remote_dir), "--source", "dist/app/index.html",
            "--strip-components", "2", "--command", "echo one, two", "--command", "cat index.html",
        )
        assert result.returncode == 0, result
        assert (remote_dir / "index.html").exists()
        assert "one, two" in result.stdout and "<h1>hi</h1>" in result.stdout


# ---------------------------------------------------------------------------------------------------- commands


class TestCommands:
    def run(self, run_sshipit: RunSshipit, server: LocalServer, key: KeyPair, **settings: object) -> Result:
        return run_sshipit(env=plugin_env(server, key, **settings))

    def test_one_shell_in_target_with_echo(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir),
                          script=json.dumps(["pwd", "mkdir sub && cd sub", "export X=carried", "pwd; echo $X"]))
        assert result.returncode == 0, result
        lines = result.stdout.splitlines()
        assert "$ pwd" in lines and str(remote_dir) in lines
        assert f"{remote_dir}/sub" in lines and "carried" in lines

    def test_stop_at_first_failure_with_its_status(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir),
                          script=json.dumps(["echo before", "exit 7", "touch never"]))
        assert result.returncode == 7, result
        assert "before" in result.stdout
        assert not (remote_dir / "never").exists()
        assert "command 2" in result.stderr and "status 7" in result.stderr

    def test_failure_in_the_middle_of_a_line_fails_the_step(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        """Only the last command's status counting is a classic bug: here a failing middle command fails."""
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir),
                          script="false\ntouch after-false\necho done\n")
        assert result.returncode == 1, result
        assert not (remote_dir / "after-false").exists()

    def test_multiline_items_are_never_cut(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        block = (
            "if [ -d /nonexistent ]; then\n  echo wrong\nelse\n  echo right-branch\nfi\n"
            "cat > note.txt <<'EOF'\nline one, with comma\n$NOT_EXPANDED\nEOF\n"
            "for i in 1 2 3; do printf '%s,' $i; done; echo\n"
        )
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir), script=block)
        assert result.returncode == 0, result
        assert "right-branch" in result.stdout and "wrong" not in result.stdout.replace("echo wrong", "")
        assert (remote_dir / "note.txt").read_text() == "line one, with comma\n$NOT_EXPANDED\n"
        assert "1,2,3," in result.stdout

    def test_script_stop_false_runs_all_but_still_fails(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir), script_stop=False,
                          script=json.dumps(["exit_with() { return $1; }; exit_with 3", "touch ran-anyway",
                                             "true"]))
        assert result.returncode == 3, result
        assert (remote_dir / "ran-anyway").exists()
        assert "command 1" in result.stderr

    def test_output_streams_live(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path, tmp_path: Path
    ) -> None:
        env = clean_env(tmp_path, plugin_env(server, keys["ed25519"], target=str(remote_dir),
                                             script=json.dumps(["echo first-line", "sleep 3", "echo second-line"])))
        proc = subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        seen: dict[str, float] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.setdefault(line.strip(), time.monotonic())
        proc.wait(timeout=60)
        assert proc.returncode == 0
        assert seen["second-line"] - seen["first-line"] > 2.0  # the first line was shown before `sleep 3` ended

    def test_background_job_does_not_hang(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        started = time.monotonic()
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir),
                          script=json.dumps(["nohup sleep 120 >bg.log 2>&1 &", "sleep 60 >/dev/null &",
                                             "echo started"]), timeout=60)
        assert result.returncode == 0, result
        assert time.monotonic() - started < 20
        assert "started" in result.stdout

    def test_stdin_reading_command_does_not_hang(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir),
                          script=json.dumps(["cat; echo cat-returned", "read x || echo read-eof"]), timeout=60)
        assert result.returncode == 0, result
        assert "cat-returned" in result.stdout and "read-eof" in result.stdout

    def test_command_timeout_stops_the_run(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        marker = f"sleep-{remote_dir.name}"
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir), command_timeout="2s",
                          script=json.dumps([f"sh -c 'sleep 300; touch late' {marker}", "touch never"]), timeout=60)
        assert result.returncode == 124, result
        assert "command_timeout" in result.stderr
        time.sleep(1.5)
        survivors = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
        states = [Path(f"/proc/{pid}/stat").read_text().split()[2] for pid in survivors
                  if Path(f"/proc/{pid}/stat").exists()]
        assert all(state == "Z" for state in states), survivors
        assert not (remote_dir / "never").exists()

    def test_request_pty(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir), request_pty=True,
                          script=json.dumps(["[ -t 1 ] && echo has-tty", "pwd", "exit 5"]))
        assert result.returncode == 5, result
        assert "has-tty" in result.stdout and str(remote_dir) in result.stdout
        without = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir),
                           script="[ -t 1 ] && echo has-tty || echo no-tty")
        assert "no-tty" in without.stdout

    def test_script_file(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        (workspace / "deploy.sh").write_text("echo from-file, with comma\nfalse\necho not-reached\n")
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(remote_dir), script_file="deploy.sh")
        assert result.returncode == 1, result
        assert "from-file, with comma" in result.stdout and "not-reached" not in result.stdout.replace(
            "> echo not-reached", "")

    def test_target_created_for_commands_only(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        target = remote_dir / "new dir" / "deeper"
        result = self.run(run_sshipit, server, keys["ed25519"], target=str(target), script="pwd")
        assert result.returncode == 0, result
        assert target.is_dir() and str(target) in result.stdout


# ------------------------------------------------------------------------------------------------------ commas


class TestCommas:
    def test_drone_encoded_value_from_a_real_pipeline_file(
        self, server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        pipeline = f"""
kind: pipeline
type: docker
name: default
steps:
- name: build
  image: node
  commands: [npm ci]
- name: deploy
  image: sshipit
  settings:
    host: {server.host}
    target: {remote_dir}
    script:
    - echo "a,b" > one.txt
    - printf '%s\\n' x,y,z > two.txt
    - echo ${{DRONE_COMMIT_SHA}},done > three.txt
"""
        (workspace / ".drone.yml").write_text(pipeline)
        step = yaml.safe_load(pipeline)["steps"][1]
        environ = {"DRONE_COMMIT_SHA": "abc123"}
        # Drone substitutes ${VAR} before parsing, then joins a scalar list with commas.
        encoded = ",".join(item.replace("${DRONE_COMMIT_SHA}", environ["DRONE_COMMIT_SHA"])
                           for item in step["settings"]["script"])
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), script=encoded)
        env.update(DRONE_STEP_NAME="deploy", **environ)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert (remote_dir / "one.txt").read_text() == "a,b\n"
        assert (remote_dir / "two.txt").read_text() == "x,y,z\n"
        assert (remote_dir / "three.txt").read_text() == "abc123,done\n"
        assert "warning" not in result.stderr.replace("host key", "")

    def test_json_array_value(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir),
                         script='["echo a,b > j.txt", "echo ok"]')
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert (remote_dir / "j.txt").read_text() == "a,b\n"

    def test_ambiguous_value_is_split_outside_quotes_with_a_warning(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir),
                         script="echo 'q,r' > q.txt,echo $(echo s,t) > s.txt,touch third")
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert (remote_dir / "q.txt").read_text() == "q,r\n"
        assert (remote_dir / "s.txt").read_text() == "s,t\n"
        assert (remote_dir / "third").exists()
        assert "split at top-level commas" in result.stderr


# -------------------------------------------------------------------------------------------------------- envs


class TestEnvs:
    def test_values_names_and_upper_case(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        tricky = "it's \"quoted\" $HOME `id` $(id)\nsecond line\\ ;|&"
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), envs=["myvar", "DRONE_COMMIT_SHA"],
                         myvar=tricky,
                         script=json.dumps(['printf %s "$myvar" > lower.txt', 'printf %s "$MYVAR" > upper.txt',
                                            'printf %s "$DRONE_COMMIT_SHA" > sha.txt']))
        env["DRONE_COMMIT_SHA"] = "0123abcd"
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert (remote_dir / "lower.txt").read_text() == tricky
        assert (remote_dir / "upper.txt").read_text() == tricky
        assert (remote_dir / "sha.txt").read_text() == "0123abcd"

    def test_all_exports_every_non_sshipit_setting_but_no_credentials(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), envs="all", app_env="production",
                         script="env > env.txt")
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        exported = (remote_dir / "env.txt").read_text()
        assert "APP_ENV=production" in exported
        assert "OPENSSH PRIVATE KEY" not in exported and "PLUGIN" not in exported
        # The target setting is not exported as TARGET (only sshipit's own fact, SSHIPIT_TARGET, names it).
        assert "\nTARGET=" not in "\n" + exported and f"\nSSHIPIT_TARGET={remote_dir}\n" in exported

    def test_credentials_cannot_be_exported(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), envs=["key"], script="env")
        result = run_sshipit(env=env)
        assert result.returncode == 2 and "credential" in result.stderr

    def test_unknown_setting_warns_with_a_suggestion(
        self, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        env = plugin_env(server, keys["ed25519"], target=str(remote_dir), script="true", hots="oops",
                         comand_timeout="1m")
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "PLUGIN_HOTS: did you mean host?" in result.stderr
        assert "PLUGIN_COMAND_TIMEOUT: did you mean command_timeout?" in result.stderr


# ------------------------------------------------------------------------------------------------- many hosts


@pytest.fixture(scope="module")
def second_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    srv = start_server(server_root / "second", keys)
    yield srv
    srv.stop()


class TestSeveralHosts:
    def test_two_servers_at_once(
        self, server: LocalServer, second_server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
        remote_dir: Path, run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "f.txt").write_text("both\n")
        hosts = [f"{server.host}:{server.port}", f"{second_server.host}:{second_server.port}"]
        fingerprints = [*server.fingerprints().values(), *second_server.fingerprints().values()]
        env = plugin_env(server, keys["ed25519"], host=hosts, fingerprint=fingerprints, target=str(remote_dir),
                         sources=["f.txt"], script="sleep 1; echo deployed-$((1+1))")
        env.pop("PLUGIN_PORT")
        started = time.monotonic()
        result = run_sshipit(env=env)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result
        assert (remote_dir / "f.txt").read_text() == "both\n"
        for host in hosts:
            assert f"[{host}] deployed-2" in result.stdout
            assert any(line.strip().startswith("ok") and host in line for line in result.stdout.splitlines())
        assert elapsed < 1.9 + 2.5  # in parallel: not two `sleep 1` one after the other plus start-up twice
        assert "summary: 2 hosts, all ok" in result.stdout

    def test_one_host_failing_fails_the_step_and_summary_names_it(
        self, server: LocalServer, second_server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        hosts = [f"{server.host}:{server.port}", f"{second_server.host}:{second_server.port}"]
        fingerprints = [*server.fingerprints().values(), *second_server.fingerprints().values()]
        script = f'if [ "$SSH_CONNECTION" != "${{SSH_CONNECTION% {second_server.port}}}" ]; then exit 9; fi'
        env = plugin_env(server, keys["ed25519"], host=hosts, fingerprint=fingerprints, target=str(remote_dir),
                         script=script, sync=True)
        env.pop("PLUGIN_PORT")
        result = run_sshipit(env=env)
        assert result.returncode == 9, result
        summary = result.stdout[result.stdout.index("summary:"):]
        assert "1 failed" in summary
        failed_line = next(line for line in summary.splitlines() if "FAILED" in line)
        assert hosts[1] in failed_line and "status 9" in failed_line
