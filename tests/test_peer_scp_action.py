"""appleboy/scp-action's inputs, run the way GitHub Actions runs a Docker action (INPUT_* plus GITHUB_*) against a
real sshd: its README's examples and its workflow tests (several targets, the same host twice, strip_components,
tar_dereference, capture_stdout)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import RunSshipit
from sshipit.localserver import KeyPair, LocalServer


def action_env(server: LocalServer, key: KeyPair, tmp: Path, **inputs: str) -> dict[str, str]:
    output, summary = tmp / "github_output", tmp / "summary.md"
    output.write_text("")
    summary.write_text("")
    env = {"GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_REPOSITORY": "octo/app", "GITHUB_SHA": "1" * 40,
           "GITHUB_WORKSPACE": str(tmp), "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary),
           "INPUT_HOST": server.host, "INPUT_PORT": str(server.port), "INPUT_USERNAME": server.user,
           "INPUT_KEY": key.private_text}
    return env | {f"INPUT_{name.upper()}": value for name, value in inputs.items()}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_multiple_targets_and_the_same_host_twice(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    """The action's workflow: `host: "a,a"`, `target: "t1,t2"`, `source: "tests/a.txt,tests/b.txt"`."""
    (workspace / "tests").mkdir()
    (workspace / "tests/a.txt").write_text("a\n")
    (workspace / "tests/b.txt").write_text("b\n")
    t1, t2 = remote_dir / "t1", remote_dir / "t2"
    env = action_env(server, keys["ecdsa"], tmp_path, source="tests/a.txt,tests/b.txt", target=f"{t1},{t2}",
                     capture_stdout="true")
    env["INPUT_HOST"] = f"{server.host},{server.host}"
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert files_under(t1) == files_under(t2) == {"tests/a.txt", "tests/b.txt"}
    output = (tmp_path / "github_output").read_text()
    assert "result=ok" in output
    assert re.search(r"^stdout<<(\S+)\n\n\1$", output, re.M), output  # no command ran: an empty value


def test_strip_components_and_tar_dereference(
    server: LocalServer, keys: dict[str, KeyPair], tmp_path: Path, workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    (workspace / "dist/app").mkdir(parents=True)
    (workspace / "dist/app/real.txt").write_text("real\n")
    (workspace / "dist/app/link.txt").symlink_to(workspace / "dist/app/real.txt")
    result = run_sshipit(env=action_env(server, keys["ecdsa"], tmp_path, source="dist/app", target=str(remote_dir),
                                        strip_components="1", tar_dereference="true", overwrite="true"))
    assert result.returncode == 0, result
    assert files_under(remote_dir) == {"app/real.txt", "app/link.txt"}
    assert not (remote_dir / "app/link.txt").is_symlink()
