#!/usr/bin/env python3
"""sshipit's memory and set-up CPU per host: one deploy to a fleet of real sshd (bench/fleet.py), as root.

    python3 bench/memory.py                          # 20,000 files: 1, 10, 50 hosts; 5,000 files: 1, 10, 50, 200
    python3 bench/memory.py --files 5000 --hosts 1 10 --cpu-hosts 50
    python3 bench/run.py --fleet-memory              # the same, as the benchmark's report section

For each tree size and host count: the peak resident memory (the sshipit process's own VmHWM, read from /proc
while it runs: never wait4's ru_maxrss, which counts the forked parent's image) of a fresh deploy and of a
redeploy with 1% of the files changed (incremental, the default), and MB per added host (the slope from the
smallest to the largest fleet). Set-up CPU per host: the user+sys CPU of a commands-only deploy (connect, host
key, key login, one exec) to N hosts, minus that of one host, over N-1. Every file is checked on every host.

Files are small (64-512 bytes): memory per host follows the number of files (paths, hashes), not their size, and
the fleet's homes live in RAM (a tmpfs page per file).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(REPO / "src"))

from fleet import Fleet  # noqa: E402

from sshipit.localserver import KeyPair, generate_key  # noqa: E402

CHANGED_SHARE = 0.01


@dataclass
class Run:
    files: int
    hosts: int
    kind: str  # fresh, changed (1% of the files), setup (commands only)
    seconds: float
    peak_mb: float
    cpu_s: float
    ok: bool
    note: str = ""


def raise_nofile(want: int = 65536) -> None:
    """Hundreds of connections (and their sshd's) need more descriptors than a default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def build_tree(dist: Path, files: int, seed: int = 20261128) -> dict[str, bytes]:
    """`files` small files in 100 directories, the same every run; returns relative path -> content."""
    rng = random.Random(seed)
    tree = {}
    for number in range(files):
        rel = f"d{number % 100:02d}/s{number % 7}/f-{number:05d}.txt"
        tree[rel] = rng.randbytes(rng.randint(64, 512))
    write_tree(dist, tree)
    return tree


def write_tree(dist: Path, tree: dict[str, bytes]) -> None:
    for rel, data in tree.items():
        path = dist / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def change_some(dist: Path, tree: dict[str, bytes], share: float = CHANGED_SHARE) -> None:
    """Rewrite `share` of the files with new content (a CI build's redeploy: some files changed)."""
    rng = random.Random(len(tree))
    for rel in rng.sample(sorted(tree), max(1, int(len(tree) * share))):
        tree[rel] = rng.randbytes(len(tree[rel]))
    write_tree(dist, {rel: tree[rel] for rel in tree})


def verify(home: Path, target: str, tree: dict[str, bytes]) -> str:
    """'' when `home/target` holds exactly `tree` (prefix `dist/`), else what is wrong."""
    root = home / target / "dist"
    found = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).digest()
    want = {rel: hashlib.sha256(data).digest() for rel, data in tree.items()}
    if found == want:
        return ""
    missing = len(set(want) - set(found))
    extra = len(set(found) - set(want))
    wrong = sum(1 for rel in want if rel in found and found[rel] != want[rel])
    return f"{home}: {missing} missing, {wrong} wrong, {extra} extra"


def measured(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, float, float, float, str]:
    """Run `argv`; (exit status, seconds, peak MB of its own VmHWM, user+sys CPU seconds, output tail)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    with open(f"/proc/{proc.pid}/status") as handle:
                        line = next((ln for ln in handle if ln.startswith("VmHWM:")), None)
                except OSError:
                    return
                if line is None:  # a zombie: the peak was read before
                    return
                peak = max(peak, int(line.split()[1]))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            done.set()
            watcher.join(5)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return proc.returncode, seconds, peak / 1024, usage.ru_utime + usage.ru_stime, text[-3000:]


SRC = [REPO / "src"]  # the sshipit measured: this checkout's, or --sshipit-src
COMPRESS = [""]  # --compress: over loopback, `auto` sends plain tar (compress.choose_compression)


def sshipit_env(home: Path, key: KeyPair, fleet: Fleet, hosts: int, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("PLUGIN_", "INPUT_", "DRONE", "CI_", "GITHUB_", "SSHIPIT_", "SSH_"))}
    env.update(HOME=str(home), NO_COLOR="1", PYTHONPATH=str(SRC[0]),
               PLUGIN_HOST=",".join(fleet.specs(hosts)), PLUGIN_FINGERPRINT=fleet.fingerprint,
               PLUGIN_KEY=key.private_text, PLUGIN_MAX_PARALLEL=str(hosts))
    env.update({f"PLUGIN_{name.upper()}": value for name, value in settings.items()})
    if COMPRESS[0]:
        env["PLUGIN_COMPRESS"] = COMPRESS[0]
    return env


def deploy_runs(fleet: Fleet, key: KeyPair, scratch: Path, files: int, hosts: int, timeout: float,
                log: bool = True) -> Iterator[Run]:
    """A fresh deploy of `files` files to the first `hosts` servers, then a redeploy with 1% changed."""
    workspace = scratch / f"ws-{files}-{hosts}"
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir()
    tree = build_tree(workspace / "dist", files)
    target = f"mem-{files}-{hosts}-{os.urandom(3).hex()}"
    env = sshipit_env(scratch / "home", key, fleet, hosts, target=target, sources="dist")
    try:
        for kind in ("fresh", "changed"):
            if kind == "changed":
                change_some(workspace / "dist", tree)
            status, seconds, peak, cpu, out = measured([sys.executable, "-m", "sshipit"], workspace, env, timeout)
            problems = [] if status == 0 else [f"exit {status}: {out[-600:]}"]
            if status == 0:
                problems += [p for p in (verify(srv.home_dir, target, tree) for srv in fleet.servers[:hosts]) if p]
            run = Run(files, hosts, kind, seconds, peak, cpu, not problems, "; ".join(problems[:3]))
            if log:
                print(f"  {files:>6} files x {hosts:>3} hosts, {kind:<7}: peak {peak:6.1f} MB, {seconds:6.1f} s, "
                      f"CPU {cpu:6.2f} s{'' if run.ok else '  FAILED: ' + run.note}", flush=True)
            yield run
    finally:
        for srv in fleet.servers[:hosts]:
            shutil.rmtree(srv.home_dir / target, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)


def setup_run(fleet: Fleet, key: KeyPair, scratch: Path, hosts: int, timeout: float) -> Run:
    """A commands-only deploy: connect, host key, login and one exec per host."""
    workspace = scratch / "ws-setup"
    workspace.mkdir(exist_ok=True)
    env = sshipit_env(scratch / "home", key, fleet, hosts, script="true")
    status, seconds, peak, cpu, out = measured([sys.executable, "-m", "sshipit"], workspace, env, timeout)
    run = Run(0, hosts, "setup", seconds, peak, cpu, status == 0, "" if status == 0 else out[-600:])
    print(f"  commands only x {hosts:>3} hosts: peak {peak:6.1f} MB, {seconds:6.1f} s, CPU {cpu:6.2f} s"
          f"{'' if run.ok else '  FAILED: ' + run.note}", flush=True)
    return run


def per_host(runs: list[Run], files: int, kind: str, field: str) -> float | None:
    """The slope of `field` from the smallest to the largest fleet measured: per added host."""
    points = sorted((r.hosts, getattr(r, field)) for r in runs if r.files == files and r.kind == kind and r.ok)
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    (h0, v0), (h1, v1) = points[0], points[-1]
    return (v1 - v0) / (h1 - h0)


def report(runs: list[Run], load: str) -> str:
    """The markdown section: peak MB by files and hosts, MB per added host, set-up CPU per host."""
    lines = ["## Memory and set-up CPU per host", "",
             "One `sshipit` deploy (incremental, max_parallel = hosts) to a fleet of real sshd on this machine; "
             "peak = the process's own VmHWM. Fresh deploy, then a redeploy with 1% of the files changed.", "",
             "| files | hosts | fresh: peak MB | s | changed: peak MB | s |", "|---:|---:|---:|---:|---:|---:|"]
    for files in sorted({r.files for r in runs if r.files}, reverse=True):
        for hosts in sorted({r.hosts for r in runs if r.files == files}):
            fresh = next((r for r in runs if (r.files, r.hosts, r.kind) == (files, hosts, "fresh")), None)
            changed = next((r for r in runs if (r.files, r.hosts, r.kind) == (files, hosts, "changed")), None)
            cells = [f"{r.peak_mb:.0f} | {r.seconds:.1f}" if r and r.ok else "failed | -" for r in (fresh, changed)]
            lines.append(f"| {files:,} | {hosts} | {cells[0]} | {cells[1]} |")
    lines.append("")
    for files in sorted({r.files for r in runs if r.files}, reverse=True):
        slopes = [per_host(runs, files, kind, "peak_mb") for kind in ("fresh", "changed")]
        if any(s is not None for s in slopes):
            worst = max(s for s in slopes if s is not None)
            lines.append(f"- {files:,} files: {worst:.2f} MB per added host (fresh "
                         f"{_num(slopes[0])}, changed {_num(slopes[1])}); 500 hosts: about "
                         f"{_extrapolate(runs, files, 500):.0f} MB")
    cpu = per_host(runs, 0, "setup", "cpu_s")
    if cpu is not None:
        lines.append(f"- set-up CPU (connect, host key, login, one exec): {cpu * 1000:.1f} ms per host")
    lines += ["", f"Machine load during the run: {load}.", ""]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _extrapolate(runs: list[Run], files: int, hosts: int) -> float:
    largest = max((r for r in runs if r.files == files and r.ok), key=lambda r: (r.hosts, r.peak_mb))
    slope = max(s for s in (per_host(runs, files, k, "peak_mb") for k in ("fresh", "changed")) if s is not None)
    peak = max(r.peak_mb for r in runs if r.files == files and r.hosts == largest.hosts and r.ok)
    return peak + slope * (hosts - largest.hosts)


def plan(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(files, hosts) pairs to measure."""
    if args.files and args.hosts:
        return [(files, hosts) for files in args.files for hosts in args.hosts]
    return [(20000, 1), (20000, 10), (20000, 50), (5000, 1), (5000, 10), (5000, 50), (5000, 200)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", help="tree sizes (default 20000 and 5000)")
    parser.add_argument("--hosts", type=int, nargs="+", help="fleet sizes (default 1 10 50, and 200 at 5,000)")
    parser.add_argument("--cpu-hosts", type=int, default=50, help="fleet size for set-up CPU per host (default 50)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one deploy may take")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) and runs (JSON) here")
    parser.add_argument("--sshipit-src", type=Path, help="measure the sshipit package under this src directory "
                        "(e.g. an earlier version's, for before/after figures)")
    parser.add_argument("--compress", choices=["zstd", "gzip", "none"], help="the compress setting (default: auto, "
                        "which is plain tar over loopback); zstd measures the compressing worker per host")
    args = parser.parse_args(argv)
    COMPRESS[0] = args.compress or ""
    if args.sshipit_src:
        SRC[0] = args.sshipit_src.resolve()
    pairs = plan(args)
    fleet_size = max([hosts for _files, hosts in pairs] + [args.cpu_hosts])
    raise_nofile()
    scratch = Path(tempfile.mkdtemp(prefix="sshipit-memory-"))
    runs: list[Run] = []
    load = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    try:
        (scratch / "home").mkdir()
        key = generate_key(scratch, "ed25519", name="fleet_key")
        tmpfs = max(files * hosts for files, hosts in pairs) * 5 // 1024 + 512  # MB: a page per file, and slack
        print(f"memory: starting {fleet_size} sshd", flush=True)
        with Fleet(fleet_size, key.public_text, size=f"{tmpfs}m") as fleet:
            for files, hosts in pairs:
                runs += deploy_runs(fleet, key, scratch, files, hosts, args.timeout)
            runs += [setup_run(fleet, key, scratch, hosts, args.timeout) for hosts in (1, args.cpu_hosts)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    text = report(runs, f"load average {' '.join(load)} before, {' '.join(load_after)} after, "
                        f"{os.cpu_count()} CPUs")
    print("\n" + text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.md").write_text(text)
        (args.out / "memory.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
