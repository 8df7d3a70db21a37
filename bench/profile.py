#!/usr/bin/env python3
"""Profile one sshipit deploy of the benchmark's workload with py-spy (every thread, native code included).

    python3 bench/profile.py [--scenario fresh|nochange|changed|large] [--quick | --everyday] [--keep-mtimes]
                             [--sshipit-src DIR]

Starts a loopback sshd, prepares the target as the benchmark does, then runs sshipit under
`py-spy record --threads --native` and prints where its threads spend their samples (self and inclusive); the
collapsed stacks go to bench/results/profile-<scenario>.txt (flamegraph.pl or speedscope draw them). Needs
py-spy (pip install py-spy) and root for py-spy's ptrace on some systems.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent / "src"))

import servers  # noqa: E402
import workload  # noqa: E402
from tools import Context, Sshipit  # noqa: E402

from sshipit.localserver import generate_key  # noqa: E402

SCENARIOS = {"fresh": ("v1", None), "nochange": ("v1", "v1"), "changed": ("v2", "v1"), "large": ("large", None)}


def summarize(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
    out = [f"{total} samples"]
    out += ["", "by thread:"] + [f"  {n / total:6.1%}  {name}" for name, n in threads.most_common(8)]
    out += ["", "self:"] + [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    out += ["", "inclusive:"] + [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="fresh")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--everyday", action="store_true", help="the everyday workload (5,000 files + 100 MB)")
    parser.add_argument("--keep-mtimes", action="store_true", help="the redeploy keeps the files' mtimes (an "
                        "editor's save) instead of new ones (a CI build)")
    parser.add_argument("--cache", default="/var/tmp/sshipit-bench")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--sshipit-src", default=str(BENCH.parent / "src"), help="profile the sshipit package "
                        "under this src directory (e.g. a `git worktree` of an earlier commit) instead of this one")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where profile-<scenario>.txt goes")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        print("profile: py-spy is missing (pip install py-spy)", file=sys.stderr)
        return 2
    wl = workload.ensure(Path(args.cache), workload.Spec.quick() if args.quick else
                         workload.Spec.everyday() if args.everyday else workload.Spec.full())
    variant, previous = SCENARIOS[args.scenario]
    scratch = Path(tempfile.mkdtemp(prefix="sshipit-profile-"))
    scratch.chmod(0o711)
    results = Path(args.out)
    results.mkdir(exist_ok=True)
    try:
        key = generate_key(scratch, "ed25519", name="key")
        (server, ep), = servers.loopback_servers(scratch, key.public_text, [None])
        home = scratch / "home"
        home.mkdir()
        ctx = Context(key=key.private_path, scratch=scratch, sshipit_src=Path(args.sshipit_src), home=home)
        tool = Sshipit()
        target = "sshipit-profile"
        shutil.rmtree(ep.home / target, ignore_errors=True)  # no target: a first deploy, whatever the manifest
        now = time.time()
        if previous is not None:
            workload.set_mtimes(wl.variant(previous) / "app", now - 3600)
            subprocess.run(tool.command([ep], wl.variant(previous), target, ctx), cwd=wl.variant(previous),
                           env=ctx.env(), check=True, capture_output=True)
        workload.set_mtimes(wl.variant(variant) / "app", now - 3600 if args.keep_mtimes else now)
        raw = results / f"profile-{args.scenario}.txt"
        argv = tool.command([ep], wl.variant(variant), target, ctx)
        started = time.perf_counter()
        subprocess.run(["py-spy", "record", "--threads", "--native", "--rate", str(args.rate), "--format", "raw",
                        "-o", str(raw), "--", *argv], cwd=wl.variant(variant), env=ctx.env(), check=True)
        seconds = time.perf_counter() - started
        print(f"\nsshipit {args.scenario}: {seconds:.2f} s under py-spy; collapsed stacks (for flamegraph.pl or "
              f"speedscope): {raw}\n")
        print(summarize(raw))
        server.stop()
        shutil.rmtree(ep.home / target, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
