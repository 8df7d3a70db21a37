"""appleboy/drone-scp's settings, run the way Drone runs the plugin (PLUGIN_* variables) against a real sshd.

Scenarios of drone-scp's README and plugin_test.go: several targets, a host listed twice, tar_dereference,
strip_components and rm, and its settings that sshipit accepts (overwrite, unlink_first, tar_tmp_path, tar_exec)
or refuses with its own line (env_file, use_insecure_cipher).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import one_error, plugin_env
from sshipit.localserver import KeyPair, LocalServer, default_login_user

DRONE = {"CI": "true", "DRONE": "true", "DRONE_REPO": "octo/app", "DRONE_STEP_NAME": "scp"}


def scp_env(server: LocalServer, key: KeyPair, **settings: object) -> dict[str, str]:
    env = plugin_env(server, key, **settings) | DRONE
    env.pop("PLUGIN_FINGERPRINT")  # drone-scp pipelines rarely pin; sshipit warns and connects
    return env


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_several_targets_get_the_upload_each(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """drone-scp: `target: [a, b]` uploads into both (it once made one directory named `a,b`)."""
    (workspace / "tests/a.txt").parent.mkdir()
    (workspace / "tests/a.txt").write_text("a\n")
    (workspace / "tests/b.txt").write_text("b\n")
    a, b = remote_dir / "a", remote_dir / "b"
    result = run_sshipit(env=scp_env(server, keys["ed25519"], source=["tests/a.txt", "tests/b.txt"],
                                     target=[str(a), str(b)]))
    assert result.returncode == 0, result
    assert files_under(a) == files_under(b) == {"tests/a.txt", "tests/b.txt"}
    assert not (remote_dir / f"a,{b}").exists() and sorted(p.name for p in remote_dir.iterdir()) == ["a", "b"]


def test_the_same_host_twice_is_deployed_to_once(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """plugin_test.go lists localhost twice; drone-scp copies twice into the same place: the result is one copy."""
    (workspace / "a.txt").write_text("a\n")
    env = scp_env(server, keys["ed25519"], source="a.txt", target=str(remote_dir))
    env["PLUGIN_HOST"] = f"{server.host},{server.host}"
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert (remote_dir / "a.txt").read_text() == "a\n"
    assert "listed twice; it is deployed to once" in result.stderr
    assert result.stdout.count("summary: 1 host") == 1, result


def test_tar_dereference_uploads_what_the_link_points_to(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "dist").mkdir()
    (workspace / "shared.conf").write_text("conf\n")
    (workspace / "dist/app.conf").symlink_to(workspace / "shared.conf")  # absolute, into the CI workspace
    result = run_sshipit(env=scp_env(server, keys["ed25519"], source="dist", target=str(remote_dir),
                                     tar_dereference=True))
    assert result.returncode == 0, result
    landed = remote_dir / "dist/app.conf"
    assert not landed.is_symlink() and landed.read_text() == "conf\n"


def test_strip_components_rm_and_the_accepted_settings(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "dist/js").mkdir(parents=True)
    (workspace / "dist/js/app.js").write_text("new\n")
    (remote_dir / "old.js").write_text("old\n")
    user = default_login_user()
    os.chown(remote_dir / "old.js", user.pw_uid, user.pw_gid)
    result = run_sshipit(env=scp_env(server, keys["ed25519"], source="dist/js/*", target=str(remote_dir),
                                     strip_components=2, rm=True, overwrite=True, unlink_first=True,
                                     tar_tmp_path="/tmp", tar_exec="gtar"))
    assert result.returncode == 0, result
    assert files_under(remote_dir) == {"app.js"}
    assert "unknown setting" not in result.output


def test_env_file_is_read_before_the_settings(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """drone-scp loads env_file (KEY=VALUE) first; a variable the step already sets wins."""
    (workspace / "a.txt").write_text("a\n")
    (workspace / "b.txt").write_text("b\n")
    (workspace / ".env").write_text(f"# deploy settings\nPLUGIN_TARGET={remote_dir}\nPLUGIN_SOURCE=b.txt\n"
                                    "export PLUGIN_STRIP_COMPONENTS='0'\n")
    env = scp_env(server, keys["ed25519"], source="a.txt", env_file=".env")
    env.pop("PLUGIN_TARGET", None)
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert files_under(remote_dir) == {"a.txt"}  # source from the step, target from the file


@pytest.mark.parametrize("settings, needles", [
    ({"env_file": "missing.env"}, ["cannot read env_file missing.env", "[setting: env_file]"]),
    ({"use_insecure_cipher": True}, ["use_insecure_cipher: true", "never offers insecure ciphers"]),
    ({"target": "a,b", "script": "ls"}, ["several targets", "[setting: target]"]),
])
def test_refused_with_a_peer_line(
    settings: dict[str, object], needles: list[str], server: LocalServer, keys: dict[str, KeyPair],
    workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "a.txt").write_text("a\n")
    env = scp_env(server, keys["ed25519"], source="a.txt", target=str(remote_dir)) | {
        f"PLUGIN_{k.upper()}": ("true" if v is True else str(v)) for k, v in settings.items()}
    result = run_sshipit(env=env)
    one_error(result, 2, *needles)
    assert not any(remote_dir.iterdir())
