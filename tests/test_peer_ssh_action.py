"""appleboy/ssh-action's inputs, run the way GitHub Actions runs a Docker action (INPUT_* plus GITHUB_*) against a
real sshd: the scenarios of its README and its workflow tests (envs_format, allenvs, script_path, capture_stdout,
a password beside an unusable key, envs naming a variable set nowhere)."""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import rmtree
from sshipit.localserver import KeyPair, LocalServer


def action_env(server: LocalServer, key: KeyPair | None, tmp: Path, **inputs: str) -> dict[str, str]:
    """INPUT_<NAME> for each input (all strings), and the GITHUB_* a Docker action sees."""
    output, summary = tmp / "github_output", tmp / "summary.md"
    output.write_text("")
    summary.write_text("")
    env = {"GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_REPOSITORY": "octo/app", "GITHUB_SHA": "0" * 40,
           "GITHUB_RUN_NUMBER": "9", "GITHUB_WORKSPACE": str(tmp), "GITHUB_OUTPUT": str(output),
           "GITHUB_STEP_SUMMARY": str(summary),
           "INPUT_HOST": server.host, "INPUT_PORT": str(server.port), "INPUT_USERNAME": server.user}
    if key is not None:
        env["INPUT_KEY"] = key.private_text
    env |= {f"INPUT_{name.upper()}": value for name, value in inputs.items()}
    return env


def outputs(tmp: Path) -> str:
    return (tmp / "github_output").read_text()


def test_envs_format_renames_the_exported_variables(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, run_sshipit: RunSshipit,
) -> None:
    env = action_env(server, keys["ed25519"], tmp_path, envs="FOO,BAR", envs_format="export TEST_{NAME}={VALUE}",
                     script='echo "foo=$TEST_FOO bar=$TEST_BAR plain=${FOO-unset}"')
    env |= {"FOO": "it's a value", "BAR": "x y"}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "foo=it's a value bar=x y plain=unset" in result.stdout.splitlines()


def test_allenvs_exports_the_ci_variables_under_their_names_but_never_a_secret(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, run_sshipit: RunSshipit,
) -> None:
    passphrase = "pp-" + secrets.token_hex(6)
    env = action_env(server, keys["ed25519"], tmp_path, allenvs="true", passphrase=passphrase,
                     script="env | grep -E '^(GITHUB|INPUT|PLUGIN|DRONE)_' | sort")
    env |= {"INPUT_MY_SETTING": "mine", "DRONE_BRANCH": "main"}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    for expected in ("GITHUB_REPOSITORY=octo/app", "INPUT_MY_SETTING=mine", "DRONE_BRANCH=main",
                     f"INPUT_HOST={server.host}"):
        assert expected in lines, result
    assert not any(line.startswith(("INPUT_KEY=", "INPUT_PASSPHRASE=")) for line in lines), result
    assert passphrase not in result.output
    assert keys["ed25519"].private_text.splitlines()[1] not in result.output


def test_script_path_runs_the_file_and_capture_stdout_fills_the_step_output(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, workspace: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "scripts").mkdir()
    (workspace / "scripts/deploy.sh").write_text("echo first line\necho second line\n")
    result = run_sshipit(env=action_env(server, keys["ed25519"], tmp_path, script_path="scripts/deploy.sh",
                                        capture_stdout="true"))
    assert result.returncode == 0, result
    match = re.search(r"^stdout<<(\S+)\n(.*?)\n\1\n", outputs(tmp_path), re.M | re.S)
    assert match, outputs(tmp_path)
    assert match.group(2).splitlines() == ["first line", "second line"]
    assert "result=ok" in outputs(tmp_path)


def test_envs_naming_a_variable_set_nowhere_leaves_it_unset(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, run_sshipit: RunSshipit,
) -> None:
    env = action_env(server, keys["ed25519"], tmp_path, envs="FOO,MISSING",
                     script='echo "foo=$FOO missing=${MISSING-unset}"') | {"FOO": "1"}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "foo=1 missing=unset" in result.stdout.splitlines()
    assert "MISSING is neither a setting nor an environment variable; left unset" in result.stderr


PEER_USER = "sshipit-pwpeer"


@pytest.fixture(scope="module")
def password_server() -> Iterator[LocalServer]:
    root = Path(tempfile.mkdtemp(prefix="sshipit-pwpeer-"))
    root.chmod(0o711)
    srv = LocalServer(root / "srv", user=PEER_USER)
    try:
        yield srv.start()
    finally:
        srv.stop()
        rmtree(root)


def test_a_password_beside_an_unusable_key_logs_in(
    password_server: LocalServer, tmp_path: Path, run_sshipit: RunSshipit,
) -> None:
    password = "pw-" + secrets.token_urlsafe(12)
    password_server.set_password(password)
    env = action_env(password_server, None, tmp_path, password=password, script="echo logged in as $(whoami)")
    env["INPUT_KEY"] = "not a key at all"
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert f"logged in as {PEER_USER}" in result.stdout.splitlines()
    assert "key cannot be used" in result.stderr and "logging in with password" in result.stderr
    assert password not in result.output
