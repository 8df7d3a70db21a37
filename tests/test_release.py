"""Atomic releases against a real OpenSSH server: current, shared, health checks, rollback, locks, pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, clean_env, plugin_env, rmtree, start_server
from sshipit.localserver import KeyPair, LocalServer


def releases(target: Path) -> list[str]:
    folder = target / "releases"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def current(target: Path) -> str | None:
    link = target / "current"
    return os.readlink(link).split("/")[-1] if link.is_symlink() else None


def result_of(target: Path, release: str) -> str:
    return json.loads((target / "releases" / release / ".sshipit-release.json").read_text())["result"]


@pytest.fixture
def site(workspace: Path) -> Path:
    (workspace / "dist").mkdir()
    (workspace / "dist/index.html").write_text("v1\n")
    return workspace / "dist"


def deploy(run_sshipit: RunSshipit, server: LocalServer, key: KeyPair, target: Path, *args: str,
           **settings: object) -> Result:
    """An atomic deploy; UPPER_CASE keywords are CI variables (DRONE_COMMIT_SHA), the rest are settings."""
    ci = {name: str(value) for name, value in settings.items() if name.isupper()}
    settings = {name: value for name, value in settings.items() if not name.isupper()}
    settings.setdefault("sources", "dist")
    return run_sshipit(*args, env={**plugin_env(server, key, target=str(target), atomic=True, **settings), **ci})


class TestSwitching:
    def test_two_deploys_switch_current_and_keep_both(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        first = deploy(run_sshipit, server, keys["ed25519"], remote_dir, DRONE_COMMIT_SHA="1111111aaaa",
                       DRONE_BUILD_NUMBER="41", DRONE_REPO="acme/web")
        assert first.returncode == 0, first
        one = current(remote_dir)
        assert one is not None and one.endswith("-1111111") and releases(remote_dir) == [one]
        assert (remote_dir / "current/dist/index.html").read_text() == "v1\n"
        meta = json.loads((remote_dir / "current/.sshipit-release.json").read_text())
        assert meta["commit"] == "1111111aaaa" and meta["build"] == "41" and meta["repo"] == "acme/web"
        assert meta["result"] == "ok" and meta["created"].endswith("Z")

        (site / "index.html").write_text("v2\n")
        second = deploy(run_sshipit, server, keys["ed25519"], remote_dir, DRONE_COMMIT_SHA="2222222bbbb")
        assert second.returncode == 0, second
        two = current(remote_dir)
        assert two is not None and two != one and two > one  # ids sort by time
        assert releases(remote_dir) == [one, two]
        assert (remote_dir / "current/dist/index.html").read_text() == "v2\n"
        assert (remote_dir / "releases" / one / "dist/index.html").read_text() == "v1\n"
        assert not (remote_dir / ".sshipit/lock").exists()

    def test_failing_command_leaves_current_and_removes_the_broken_release(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        assert deploy(run_sshipit, server, keys["ed25519"], remote_dir).returncode == 0
        good = current(remote_dir)
        (site / "index.html").write_text("broken\n")
        bad = deploy(run_sshipit, server, keys["ed25519"], remote_dir, script='["echo building", "exit 3"]')
        assert bad.returncode == 3, bad
        assert current(remote_dir) == good
        assert releases(remote_dir) == [good]
        assert (remote_dir / "current/dist/index.html").read_text() == "v1\n"

    def test_commands_run_inside_the_new_release(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = deploy(run_sshipit, server, keys["ed25519"], remote_dir, script="pwd > built-in.txt",
                        post_commands="pwd > ../../post.txt; pwd -P >> ../../post.txt")
        assert result.returncode == 0, result
        live = current(remote_dir)
        assert (remote_dir / "current/built-in.txt").read_text().strip() == str(remote_dir / "releases" / live)
        post = (remote_dir / "post.txt").read_text().split()
        assert post == [str(remote_dir / "current"), str(remote_dir / "releases" / live)]


class TestHealth:
    def test_failing_health_check_switches_back_and_reruns_post_commands(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        post = "basename $(pwd -P) >> ../../post.log"
        assert deploy(run_sshipit, server, keys["ed25519"], remote_dir, post_commands=post).returncode == 0
        good = current(remote_dir)
        (site / "index.html").write_text("bad\n")
        result = deploy(run_sshipit, server, keys["ed25519"], remote_dir, post_commands=post,
                        healthcheck="grep -q v1 dist/index.html", healthcheck_timeout="3s")
        assert result.returncode != 0, result
        assert "health check failed" in result.stderr and "switched back" in result.stderr
        assert current(remote_dir) == good
        bad = [r for r in releases(remote_dir) if r != good]
        assert len(bad) == 1 and result_of(remote_dir, bad[0]) == "failed"
        # post_commands ran for the good release, then the bad one, then the good one again
        assert (remote_dir / "post.log").read_text().split() == [good, bad[0], good]

    def test_health_check_is_retried_until_it_passes(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = deploy(run_sshipit, server, keys["ed25519"], remote_dir,
                        healthcheck="n=$(cat ../../tries 2>/dev/null || echo 0); echo $((n+1)) > ../../tries; "
                                    "[ $n -ge 2 ]", healthcheck_timeout="30s")
        assert result.returncode == 0, result
        assert (remote_dir / "tries").read_text().strip() == "3"
        assert "health check passed (attempt 3)" in result.stdout

    def test_failed_first_release_removes_current(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        result = deploy(run_sshipit, server, keys["ed25519"], remote_dir, healthcheck="false",
                        healthcheck_timeout="1s")
        assert result.returncode == 1, result
        assert current(remote_dir) is None and not (remote_dir / "current").exists()


class TestRollback:
    def test_rollback_twice_in_a_row(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        ids = []
        for version in ("a", "b", "c"):
            (site / "index.html").write_text(version)
            result = deploy(run_sshipit, server, keys["ed25519"], remote_dir)
            assert result.returncode == 0, result
            ids.append(current(remote_dir))
        first = deploy(run_sshipit, server, keys["ed25519"], remote_dir, "rollback",
                       post_commands="cat dist/index.html")
        assert first.returncode == 0, first
        assert current(remote_dir) == ids[1] and "$ cat dist/index.html" in first.stdout
        assert result_of(remote_dir, ids[2]) == "rolled-back"
        second = deploy(run_sshipit, server, keys["ed25519"], remote_dir, rollback=True)
        assert second.returncode == 0, second
        assert current(remote_dir) == ids[0]
        assert (remote_dir / "current/dist/index.html").read_text() == "a"
        third = deploy(run_sshipit, server, keys["ed25519"], remote_dir, rollback=True)
        assert third.returncode == 1 and "no earlier good release" in third.stderr
        assert current(remote_dir) == ids[0]


class TestSharedAndPruning:
    def test_shared_paths_survive_releases(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        (site / "config").mkdir()
        (site / "config/app.ini").write_text("shipped\n")
        shared = ["storage/", ".env", "dist/config/"]
        # A shared *file* is one shared/ already has (made on the server, as for secrets) or the build ships; a
        # path in neither place is made an empty directory (tests/test_outside_target.py).
        (remote_dir / "shared").mkdir()
        (remote_dir / "shared/.env").touch()
        owner = remote_dir.stat()
        for made in (remote_dir / "shared", remote_dir / "shared/.env"):
            os.chown(made, owner.st_uid, owner.st_gid)
        for n in (1, 2):
            result = deploy(run_sshipit, server, keys["ed25519"], remote_dir, shared=shared,
                            script=f"echo run{n} >> storage/log; echo N={n} >> .env; cat dist/config/app.ini")
            assert result.returncode == 0, result
        assert (remote_dir / "shared/storage/log").read_text() == "run1\nrun2\n"
        assert (remote_dir / "shared/.env").read_text() == "N=1\nN=2\n"
        assert (remote_dir / "shared/dist/config/app.ini").read_text() == "shipped\n"  # seeded from release 1
        for release in releases(remote_dir):
            assert (remote_dir / "releases" / release / "storage").is_symlink()
            assert (remote_dir / "releases" / release / "storage/log").read_text() == "run1\nrun2\n"

    def test_pruning_keeps_the_newest(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        made = []
        for _ in range(5):
            result = deploy(run_sshipit, server, keys["ed25519"], remote_dir, keep_releases=3)
            assert result.returncode == 0, result
            made.append(current(remote_dir))
        assert releases(remote_dir) == made[-3:]

    def test_pruning_never_removes_live_or_previous(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        made = []
        for _ in range(3):
            assert deploy(run_sshipit, server, keys["ed25519"], remote_dir, keep_releases=1).returncode == 0
            made.append(current(remote_dir))
        assert releases(remote_dir) == made[-2:]


def _session_children(server: LocalServer) -> list[int]:
    """The per-connection sshd processes: killing them cuts the connection, like a network failure."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.pid and fields[0] != "Z":
                children.append(int(entry))
    return children


class TestFaults:
    def test_connection_cut_during_upload_keeps_current_and_next_deploy_works(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, workspace: Path,
        run_sshipit: RunSshipit, tmp_path: Path,
    ) -> None:
        assert deploy(run_sshipit, server, keys["ed25519"], remote_dir).returncode == 0
        good = current(remote_dir)
        with open(site / "big.bin", "wb") as handle:
            handle.write(os.urandom(1 << 20) * 400)  # 400 MB: the upload takes a while on loopback
        env = clean_env(tmp_path, plugin_env(server, keys["ed25519"], target=str(remote_dir), atomic=True,
                                             sources="dist"))
        proc = subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        cut = False
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [remote_dir / "releases" / r / "dist/big.bin" for r in releases(remote_dir) if r != good]
            if any(p.exists() and p.stat().st_size > 0 for p in partial):
                for pid in _session_children(server):
                    os.kill(pid, 9)
                cut = True
                break
            time.sleep(0.02)
        out, err = proc.communicate(timeout=60)
        assert cut, f"the upload was never seen in progress\n{out}\n{err}"
        assert proc.returncode == 1, out + err
        assert "connection was lost" in err and "Traceback" not in err
        assert current(remote_dir) == good
        assert (remote_dir / "current/dist/index.html").read_text() == "v1\n"
        (site / "big.bin").unlink()
        (site / "index.html").write_text("after the cut\n")
        again = deploy(run_sshipit, server, keys["ed25519"], remote_dir)
        assert again.returncode == 0, again
        assert "removed unfinished release" in again.stdout
        assert (remote_dir / "current/dist/index.html").read_text() == "after the cut\n"
        assert len(releases(remote_dir)) == 2

    def test_two_deploys_at_once_do_not_both_switch(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, workspace: Path,
        run_sshipit: RunSshipit, tmp_path: Path,
    ) -> None:
        env = clean_env(tmp_path, plugin_env(server, keys["ed25519"], target=str(remote_dir), atomic=True,
                                             sources="dist", script="sleep 4") | {"DRONE_BUILD_NUMBER": "first"})
        slow = subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (remote_dir / ".sshipit/lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = deploy(run_sshipit, server, keys["ed25519"], remote_dir, lock_timeout="1s",
                        DRONE_BUILD_NUMBER="second")
        out, err = slow.communicate(timeout=60)
        assert slow.returncode == 0, out + err
        assert second.returncode == 1, second
        assert "another deploy holds the lock" in second.stderr and "build first" in second.stderr
        assert len(releases(remote_dir)) == 1 and current(remote_dir) == releases(remote_dir)[0]

    def test_stale_lock_of_a_crashed_deploy_is_taken_over(
        self, server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit
    ) -> None:
        lock = remote_dir / ".sshipit/lock"
        lock.mkdir(parents=True)
        (lock / "pid").write_text("999999\n")  # no such process: its deploy crashed
        (lock / "owner").write_text("release x build 1\n")
        subprocess.run(["chown", "-R", f"{server.user}:", str(remote_dir / ".sshipit")], check=True)
        result = deploy(run_sshipit, server, keys["ed25519"], remote_dir, lock_timeout="5s")
        assert result.returncode == 0, result
        assert current(remote_dir) is not None and not lock.exists()


# ------------------------------------------------------------------------------------------- several hosts


@pytest.fixture(scope="module")
def other_user_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """A second server with its own login (and so its own home), standing for a second machine."""
    srv = start_server(server_root / "other-user", keys, user="sshipit-test2")
    yield srv
    srv.stop()


class TestSeveralHosts:
    def test_no_host_switches_unless_all_prepared(
        self, server: LocalServer, other_user_server: LocalServer, keys: dict[str, KeyPair], site: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        target = f"atomic-fleet-{os.getpid()}"
        hosts = [f"{server.user}@{server.host}:{server.port}",
                 f"{other_user_server.user}@{other_user_server.host}:{other_user_server.port}"]
        roots = [server.home / target, other_user_server.home / target]
        fingerprints = [*server.fingerprints().values(), *other_user_server.fingerprints().values()]
        try:
            env = plugin_env(server, keys["ed25519"], host=hosts, fingerprint=fingerprints, target=target,
                             atomic=True, sources="dist")
            env.pop("PLUGIN_PORT")
            assert run_sshipit(env=env).returncode == 0
            before = [current(root) for root in roots]
            assert all(before)
            (site / "index.html").write_text("v2\n")
            env["PLUGIN_SCRIPT"] = f'[ "$(whoami)" != {other_user_server.user} ] || exit 4'
            result = run_sshipit(env=env)
            assert result.returncode == 4, result
            assert [current(root) for root in roots] == before  # the healthy host did not switch either
            assert "not switched" in result.stderr
            assert [len(releases(root)) for root in roots] == [1, 1]

            env["PLUGIN_SCRIPT"] = "true"
            env["PLUGIN_HEALTHCHECK"] = f'[ "$(whoami)" != {other_user_server.user} ]'
            env["PLUGIN_HEALTHCHECK_TIMEOUT"] = "1s"
            result = run_sshipit(env=env)
            assert result.returncode == 1, result
            assert [current(root) for root in roots] == before  # both switched back
            env.pop("PLUGIN_HEALTHCHECK")
            result = run_sshipit(env=env)
            assert result.returncode == 0, result
            after = [current(root) for root in roots]
            assert after[0] == after[1] and after[0] != before[0]
        finally:
            for root in roots:
                rmtree(root)
