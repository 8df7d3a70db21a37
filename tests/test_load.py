"""Load: 50 real sshd processes on loopback ports, deployed to at once with 2,000 files each.

Each server logs in a user of its own (sshipit-load-00 .. -49, created once, as the CI runs as root), so one
relative `target` lands in 50 different homes. Checked: every file on every host by SHA-256 (none lost, none
corrupted, nothing extra), the summary (50 hosts, each ok), and the peak resident memory of the sshipit process
(its own high-water mark, helpers.PeakMemory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import PeakMemory, assert_landed, clean_env, plugin_env, rmtree
from sshipit.localserver import HOST_KEY_KINDS, KeyPair, LocalServer

HOSTS = 50
FILES = 2000
MAX_RSS_MB = 300
DEPLOY_BUDGET_S = 150  # the whole CI budget is 20 minutes; this usually takes a fraction of it


@pytest.fixture(scope="module")
def load_servers(keys: dict[str, KeyPair]) -> Iterator[list[LocalServer]]:
    if os.geteuid() != 0:
        pytest.fail("the load test serves 50 logins of their own (useradd): run it as root, as CI does")
    root = Path(tempfile.mkdtemp(prefix="sshipit-load-"))
    root.chmod(0o711)
    servers: list[LocalServer] = []
    try:
        first = LocalServer(root / "00", user="sshipit-load-00")
        servers.append(first)
        for number in range(1, HOSTS):  # the same host keys everywhere: generating 150 keys is slow
            workdir = root / f"{number:02d}"
            workdir.mkdir()
            for kind in HOST_KEY_KINDS:
                for suffix in ("", ".pub"):
                    source = first.host_key_path(kind).with_name(first.host_key_path(kind).name + suffix)
                    shutil.copy2(source, workdir / source.name)
            servers.append(LocalServer(workdir, user=f"sshipit-load-{number:02d}"))
        for srv in servers:
            srv.authorize(keys["ed25519"].public_text)
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda srv: srv.start(), servers))
        assert len({srv.port for srv in servers}) == HOSTS and len({srv.home for srv in servers}) == HOSTS
        yield servers
    finally:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda srv: srv.stop(), servers))
        rmtree(root)


def build_tree(dist: Path) -> dict[str, str]:
    """2,000 files of 1-4 KB in 40 directories, the same every run; returns path -> SHA-256."""
    rng = random.Random(20261123)
    expected = {}
    for number in range(FILES):
        rel = f"dir{number % 40:02d}/sub{number % 7}/file-{number:04d}.dat"
        data = rng.randbytes(rng.randint(1024, 4096))
        path = dist / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[f"dist/{rel}"] = hashlib.sha256(data).hexdigest()
    return expected


def on_disk(root: Path) -> dict[str, str]:
    found = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_measured(env: dict[str, str], workspace: Path, home: Path, timeout: float) -> tuple[int, str, str, int]:
    """Run sshipit; return its exit status, output and peak RSS in KB (its own: helpers.PeakMemory)."""
    proc = subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=clean_env(home, env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def drain(name: str, stream: object) -> None:
        chunks[name].extend(iter(lambda: stream.read(65536), b""))  # type: ignore[attr-defined]

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    peak = PeakMemory(proc.pid)
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pid, status = os.waitpid(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            pytest.fail(f"sshipit did not finish within {timeout}s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    for reader in readers:
        reader.join(30)
    out = b"".join(chunks["out"]).decode("utf-8", "replace")
    err = b"".join(chunks["err"]).decode("utf-8", "replace")
    return proc.returncode, out, err, peak.result()


def test_fifty_hosts_two_thousand_files_each(
    load_servers: list[LocalServer], keys: dict[str, KeyPair], workspace: Path, tmp_path: Path,
) -> None:
    expected = build_tree(workspace / "dist")
    assert len(expected) == FILES
    target = f"load-{secrets.token_hex(4)}"
    hosts = [f"{srv.user}@{srv.host}:{srv.port}" for srv in load_servers]
    env = plugin_env(load_servers[0], keys["ed25519"], host=hosts, target=target, sources="dist",
                     max_parallel=HOSTS, script="echo deployed")
    env.pop("PLUGIN_PORT")
    env.pop("PLUGIN_USERNAME")
    home = tmp_path / "home"
    home.mkdir()
    try:
        started = time.monotonic()
        status, out, err, peak_kb = run_measured(env, workspace, home, timeout=DEPLOY_BUDGET_S * 2)
        elapsed = time.monotonic() - started
        report = f"exit {status} after {elapsed:.1f}s, peak RSS {peak_kb / 1024:.0f} MB\n{out[-3000:]}\n{err[-3000:]}"
        assert status == 0, report
        assert "Traceback" not in out + err and "error:" not in err, report

        # the summary: 50 hosts, every one of them ok, each named once
        assert f"summary: {HOSTS} hosts, all ok" in out, report
        summary = out[out.index("summary:"):].splitlines()
        rows = [line.split() for line in summary[2:] if line.strip()]
        ok_rows = [row for row in rows if row and row[0] == "ok"]
        assert sorted(row[1] for row in ok_rows) == sorted(hosts), report
        assert all(f"[{host}] deployed" in out for host in hosts), report

        # every file on every host, by hash; nothing missing, nothing extra
        with ThreadPoolExecutor(max_workers=8) as pool:
            landed = list(pool.map(lambda srv: on_disk(srv.home / target), load_servers))
        for srv, files in zip(load_servers, landed, strict=True):
            assert_landed(srv.user, expected, files)

        assert peak_kb / 1024 < MAX_RSS_MB, report
        assert elapsed < DEPLOY_BUDGET_S, report
        print(f"\nload: {HOSTS} hosts x {FILES} files in {elapsed:.1f}s, peak RSS {peak_kb / 1024:.0f} MB")
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda srv: rmtree(srv.home / target), load_servers))
