"""CupCakeArmy/drone-deploy's settings, run the way Drone runs the plugin (PLUGIN_* variables) against a real sshd:
its README's Quickstart (sources, target, commands in target) and "Mapping remote environment variables", and
its `delete` (paths in target)."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import RunSshipit
from helpers import plugin_env
from sshipit.localserver import KeyPair, LocalServer, default_login_user

DRONE = {"CI": "true", "DRONE": "true", "DRONE_REPO": "octo/app", "DRONE_STEP_NAME": "deploy"}


def deploy_env(server: LocalServer, key: KeyPair, **settings: object) -> dict[str, str]:
    """drone-deploy's spellings: `user`, `sources`, `commands`; no host key pin (it accepted any)."""
    env = plugin_env(server, key, **settings) | DRONE
    env.pop("PLUGIN_FINGERPRINT")
    env["PLUGIN_USER"] = env.pop("PLUGIN_USERNAME")
    return env


def test_quickstart_and_envs(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "public").mkdir()
    (workspace / "public/index.html").write_text("<h1>hi</h1>\n")
    (workspace / "docker-compose.yml").write_text("services: {}\n")
    (workspace / "docker-compose.prod.yml").write_text("services: {}\n")
    (workspace / "src.js").write_text("not shipped\n")
    old = remote_dir / "old.txt"
    old.write_text("old\n")
    user = default_login_user()
    os.chown(old, user.pw_uid, user.pw_gid)
    env = deploy_env(server, keys["rsa_pem"], target=str(remote_dir),
                     sources=["./public", "./docker-compose.yml", "./docker-compose.prod.yml"],
                     delete=["old.txt"], myenv="Something", somesecret="from a secret",
                     envs=["myenv", "somesecret"],
                     commands=["echo $MYENV", "echo $SOMESECRET", "pwd", "ls public"])
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    for expected in ("Something", "from a secret", str(remote_dir), "index.html"):
        assert expected in lines, result
    assert sorted(str(p.relative_to(remote_dir)) for p in remote_dir.rglob("*")) == \
        ["docker-compose.prod.yml", "docker-compose.yml", "public", "public/index.html"]
    assert "unknown setting" not in result.output
