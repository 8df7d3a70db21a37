"""Smoke test of the benchmark: `bench/run.py --quick --loopback-only` runs every tool against a real sshd on a
tiny workload and writes a table with a row per tool and sane numbers. It fails (never skips) when a tool the
benchmark needs is missing (see bench/requirements.txt and scripts/install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPBACK_SCENARIOS = ("fresh", "nochange", "changed", "large")


def test_quick_benchmark_makes_a_sane_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--loopback-only", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=170, check=False,
    )
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads((out / "latest.json").read_text())
    table = (out / "latest.md").read_text()
    assert (out / "latest.png").stat().st_size > 10_000

    tools = {key: tool for key, tool in results["tools"].items() if "loopback" in tool["links"]}
    assert {"sshipit", "tar", "rsync", "scp", "drone-scp", "paramiko"} <= set(tools)
    medians = results["medians"]["loopback"]
    workload_bytes = results["meta"]["workload"]["bytes"]
    for scenario in LOOPBACK_SCENARIOS:
        assert set(medians[scenario]) == set(tools), scenario
        for key, m in medians[scenario].items():
            assert m["ok"] == m["n"] == 1, (scenario, key, m)
            assert 0.01 < m["seconds"] < 60, (scenario, key, m)
            assert 1e6 < m["peak_rss"] < 2e9, (scenario, key, m)
            if os.geteuid() == 0:  # bytes are counted by iptables
                assert m["sent"] > 1000, (scenario, key, m)
    if os.geteuid() == 0:
        # A fresh deploy sends about the workload (compressed or not); rsync skips an unchanged tree.
        assert medians["fresh"]["tar"]["sent"] > workload_bytes
        assert medians["nochange"]["rsync"]["sent"] < workload_bytes / 10

    # One row per tool in every scenario's table, and OpenSSH tar is 1.00x itself (time, bytes, memory).
    for label in (tool["label"] for tool in tools.values()):
        row = f"| **{label}** |" if label == "sshipit" else f"| {label} |"
        assert table.count(row) >= len(LOOPBACK_SCENARIOS), label
    tar_rows = [line for line in table.splitlines() if line.startswith("| OpenSSH tar |")]
    assert len(tar_rows) >= len(LOOPBACK_SCENARIOS)
    for line in tar_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        # tool | time ×tar ×rsync | sent ×tar ×rsync | peak ×tar ×rsync
        assert cells[2] == "1.00", line
        assert cells[8] == "1.00", line
        if os.geteuid() == 0:
            assert cells[5] == "1.00", line
    assert "| target | measured | goal | result |" in table
