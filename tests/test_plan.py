"""`dry_run` / `sshipit plan`: what a deploy would do, per host, with nothing changed on the server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import RunSshipit
from helpers import plugin_env
from sshipit.localserver import KeyPair, LocalServer


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path below the roots with its type, mode, size, mtime, ctime and content hash."""
    out = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = "absent"
            continue
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
            link = os.readlink(path) if path.is_symlink() else ""
            out[str(path)] = f"{info.st_mode:o} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns} {digest} {link}"
    return out


def test_plan_changes_nothing_and_tells_what_would_happen(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    (workspace / "dist").mkdir()
    for n in range(5):
        (workspace / f"dist/f{n}.txt").write_text(f"{n}\n")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", script="touch ran")
    assert run_sshipit(env=env).returncode == 0
    (remote_dir / "ran").unlink()
    (workspace / "dist/f1.txt").write_text("changed\n")
    (workspace / "dist/new.txt").write_text("new\n")
    (workspace / "dist/f4.txt").unlink()
    cache = server.home / ".cache/sshipit"
    before = snapshot(remote_dir, cache)

    result = run_sshipit("plan", env={**env, "PLUGIN_PRUNE": "true", "PLUGIN_DELETE": "old-cache"})
    assert result.returncode == 0, result
    out = result.stdout
    assert "would upload 2 files" in out and "3 unchanged files not sent" in out
    assert "dist/f1.txt" in out and "dist/new.txt" in out and "dist/f0.txt" not in out
    assert "would prune 1 stale files" in out and "dist/f4.txt" in out
    assert f"would remove {remote_dir}/old-cache" in out
    assert "$ touch ran" in out and "nothing was changed" in out
    assert snapshot(remote_dir, cache) == before
    assert not (remote_dir / "ran").exists()


def test_plan_for_atomic_and_rollback(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    (workspace / "dist").mkdir()
    (workspace / "dist/index.html").write_text("v1\n")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", atomic=True,
                     shared="storage/", post_commands="echo reload", healthcheck="true")
    empty = snapshot(remote_dir)
    first_plan = run_sshipit(env={**env, "PLUGIN_DRY_RUN": "true"})
    assert first_plan.returncode == 0, first_plan
    assert "would switch current from none to" in first_plan.stdout
    assert snapshot(remote_dir) == empty

    assert run_sshipit(env=env).returncode == 0
    live = os.readlink(remote_dir / "current").split("/")[-1]
    (workspace / "dist/index.html").write_text("v2\n")
    before = snapshot(remote_dir)
    result = run_sshipit("--dry-run", env=env)
    assert result.returncode == 0, result
    assert f"starting from a copy of {live}" in result.stdout
    assert "would upload 1 files" in result.stdout and f"would switch current from {live}" in result.stdout
    assert "would link storage" in result.stdout and "$ echo reload" in result.stdout
    assert snapshot(remote_dir) == before

    rollback = run_sshipit("plan", env={**env, "PLUGIN_ROLLBACK": "true"})
    assert rollback.returncode == 0, rollback
    assert "no earlier good release" in rollback.stdout
    assert snapshot(remote_dir) == before
