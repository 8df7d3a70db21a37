"""Sources read while the server answers (plan.build(sources_later=True), sources.Pending): a plain deploy sends
its read-only probe first and reads the local walk while the server lists the target. An error found in the
sources then is still the settings' one line with exit 2, no host's error; nothing changes on any server, no
command and no on_failure runs. Wherever something else runs first (atomic, before_upload, sudo, a dry run,
several targets), the sources are read before any connection, as before."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, one_error, plugin_env, start_server
from sshipit.localserver import KeyPair, LocalServer
from sshipit.plan import build
from sshipit.settings import from_environment
from sshipit.sources import Pending


@pytest.fixture(scope="module")
def second_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    srv = start_server(server_root / "sources-later", keys)
    yield srv
    srv.stop()


def colliding(workspace: Path) -> None:
    """Two sources that strip_components: 1 puts at one name: an error only the walk itself finds."""
    for top in ("a", "b"):
        (workspace / top / "x").mkdir(parents=True)
        (workspace / top / "x" / "f").write_text(top)


def marks(remote_dir: Path) -> set[str]:
    """The marks this test's commands (`touch <home>/<remote_dir's name>-ran`) left in the login's home."""
    return {p.name for p in remote_dir.parent.iterdir() if p.name.startswith(remote_dir.name + "-")}


def settings(server: LocalServer, key: KeyPair, target: Path, **more: object) -> dict[str, str]:
    return plugin_env(server, key, target=str(target / "new"), sources=["a/x", "b/x"], strip_components=1,
                      script=[f"touch {target}-ran"], on_failure=[f"touch {target}-failed"], **more)


def nothing_happened(result: Result, remote_dir: Path) -> str:
    line = one_error(result, 2, "would both land at x/f", "[setting: strip_components]")
    assert line.startswith("error: settings: sources "), line  # the settings' line: no host's label before it
    assert list(remote_dir.iterdir()) == [], "the target was touched"
    assert marks(remote_dir) == set(), "a command or on_failure ran"
    return line


def test_an_error_found_while_the_server_answers_is_the_settings_one_line(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    colliding(workspace)
    result = run_sshipit(env=settings(server, keys["ed25519"], remote_dir))
    nothing_happened(result, remote_dir)
    assert "connect:" in result.stdout, "the sources were read before connecting: this tests nothing new"


def test_every_host_stops_at_the_one_error(
    server: LocalServer, second_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    colliding(workspace)
    env = settings(server, keys["ed25519"], remote_dir, port=None, host=[
        f"127.0.0.1:{server.port}", f"127.0.0.1:{second_server.port}"])
    env["PLUGIN_FINGERPRINT"] = ",".join([*server.fingerprints().values(), *second_server.fingerprints().values()])
    result = run_sshipit(env=env)
    nothing_happened(result, remote_dir)
    assert str(second_server.port) not in "".join(line for line in result.stderr.splitlines()
                                                  if line.startswith("error: ")), result


@pytest.mark.parametrize("first", [{"before_upload": ["true"]}, {"atomic": True}, {"dry_run": True}])
def test_where_something_runs_first_the_sources_are_read_before_connecting(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    first: dict[str, object],
) -> None:
    colliding(workspace)
    result = run_sshipit(env=settings(server, keys["ed25519"], remote_dir, **first))
    nothing_happened(result, remote_dir)
    assert "connect:" not in result.stdout, result


def test_warnings_found_on_first_use_are_said_and_the_deploy_lands(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "app").mkdir()
    (workspace / "app" / "index.html").write_text("hi\n")
    os.mkfifo(workspace / "app" / "pipe")
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=["app"]))
    assert result.returncode == 0, result
    assert "source app/pipe is not a file, directory or symlink; skipped" in result.stderr, result
    assert (remote_dir / "app" / "index.html").read_text() == "hi\n"
    assert not (remote_dir / "app" / "pipe").exists()


@pytest.mark.parametrize(("more", "waits"), [
    ({}, True),
    ({"PLUGIN_ATOMIC": "true"}, False),
    ({"PLUGIN_BEFORE_UPLOAD": "true"}, False),
    ({"PLUGIN_SUDO": "true"}, False),
    ({"PLUGIN_OWNER": "www-data"}, False),
    ({"PLUGIN_DRY_RUN": "true"}, False),
    ({"PLUGIN_PHASE": "prepare", "PLUGIN_RELEASE_ID": "r1"}, False),
])
def test_only_a_plain_deploy_reads_its_sources_later(workspace: Path, more: dict[str, str], waits: bool) -> None:
    (workspace / "app").mkdir()
    (workspace / "app" / "f").write_text("f")
    environ = {"PLUGIN_HOST": "example.test", "PLUGIN_PASSWORD": "secret", "PLUGIN_TARGET": "/srv/app",
               "PLUGIN_SOURCE": "app", **more}
    later = build(from_environment(environ), environ, workspace, sources_later=True)
    assert isinstance(later.upload, Pending)
    assert later.upload.read is not waits
    now = build(from_environment(environ), environ, workspace)
    assert isinstance(now.upload, Pending) and now.upload.read
    assert [e.name for e in later.upload.entries] == [e.name for e in now.upload.entries] == ["app", "app/f"]


def test_a_failure_is_kept_and_raised_to_every_later_use(workspace: Path) -> None:
    colliding(workspace)
    environ = {"PLUGIN_HOST": "example.test", "PLUGIN_PASSWORD": "secret", "PLUGIN_TARGET": "/srv/app",
               "PLUGIN_SOURCE": "a/x,b/x", "PLUGIN_STRIP_COMPONENTS": "1"}
    plan = build(from_environment(environ), environ, workspace, sources_later=True)
    assert isinstance(plan.upload, Pending)
    errors = []
    for _ in range(2):
        with pytest.raises(Exception) as caught:
            _ = plan.upload.entries
        errors.append(caught.value)
    assert errors[0] is errors[1] is plan.upload.failure
    assert "would both land at x/f" in str(errors[0])


@pytest.mark.parametrize(("sources", "needle"), [
    (["dist"], "source 'dist' does not exist"),
    (["!*.map"], "sources has only exclusions"),
    (["../outside"], "outside"),
])
def test_what_needs_no_walk_is_refused_before_connecting(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    sources: list[str], needle: str,
) -> None:
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources=sources,
                                        script=[f"touch {remote_dir}-ran"]))
    line = one_error(result, 2, needle, "[setting: sources]")
    assert line.startswith("error: settings: "), line
    assert "connect:" not in result.stdout, result
    assert list(remote_dir.iterdir()) == [] and marks(remote_dir) == set()
