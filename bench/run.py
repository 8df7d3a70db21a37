#!/usr/bin/env python3
"""sshipit's benchmark: sshipit against the tools users would pick instead, in one run, interleaved.

    python3 bench/run.py            # full workload, 3 runs each (as root: also 1 on a 50 Mbit/s link)
    python3 bench/run.py --quick    # tiny workload, 1 run: a smoke test (well under a minute)
    python3 bench/run.py --wan      # round trips through a 0/100 ms relay, alone (a few minutes; wan.py)
    python3 bench/run.py --everyday # 5,000 small files + one 100 MB file on loopback, alone (a few minutes)
    python3 bench/run.py --everyday --against /tmp/old/src  # also an earlier sshipit (a `git worktree`), as
                                    # tool sshipit-b, interleaved with this one: before/after under the same load
    python3 bench/run.py --fleet-memory  # memory and set-up CPU per host, 1 to 200 real sshd (memory.py; root)

Writes bench/results/latest.md (also printed), latest.json (every run's raw numbers) and latest.png.
See the README's Benchmark section for what is measured and how.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(REPO / "src"))

import measure  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402
import workload  # noqa: E402
from scenarios import Scenario, scenarios  # noqa: E402
from servers import Endpoint  # noqa: E402
from tools import BY_KEY, TOOLS, Context, Tool  # noqa: E402

from sshipit.localserver import default_login_user, ensure_user, generate_key  # noqa: E402

NEEDED_COMMANDS = ("ssh", "scp", "rsync", "tar", "gzip", "ssh-keygen", "/usr/sbin/sshd")
NEEDED_MODULES = ("paramiko", "matplotlib", "asyncssh")
# One fixed path whatever TMPDIR says: two runs at once would remove each other's namespace and counters.
LOCK = Path("/run/sshipit-bench.lock") if os.geteuid() == 0 else Path(f"/tmp/sshipit-bench-{os.getuid()}.lock")


def log(message: str) -> None:
    print(message, flush=True)


def missing_requirements() -> list[str]:
    missing = [cmd for cmd in NEEDED_COMMANDS if shutil.which(cmd) is None]
    missing += [f"python module {m} (pip install -r bench/requirements.txt)" for m in NEEDED_MODULES
                if importlib.util.find_spec(m) is None]
    return missing


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: list[dict] = []
        self.scratch = Path(tempfile.mkdtemp(prefix="sshipit-bench-"))
        self.scratch.chmod(0o711)  # the servers' login users read authorized_keys in here
        self.local_servers: list = []
        self.slow: servers.SlowLink | None = None
        self.counter = servers.ByteCounter()
        self.endpoints: dict[str, list[Endpoint]] = {}  # link -> servers (fan-out adds loopback ones)
        self.targets: set[tuple[Path, str]] = set()
        self.area = servers.TargetArea(enabled=not args.disk)
        self.git: dict[str, str] = {}

    # -- set-up ----------------------------------------------------------------

    def setup(self) -> None:
        args = self.args
        spec = workload.Spec.quick() if args.quick else workload.Spec.everyday() if args.everyday \
            else workload.Spec.full()
        self.workload = workload.ensure(Path(args.cache), spec, log)
        self.key = generate_key(self.scratch, "ed25519", name="bench_key")
        src = self.scratch / "src"
        shutil.copytree(sshipit_src(args), src / "sshipit",
                        ignore=shutil.ignore_patterns("__pycache__"))  # one version for the whole run
        compile_all(src)
        home = self.scratch / "client-home"
        home.mkdir()
        other = None
        if args.against:
            other = self.scratch / "src-against"
            shutil.copytree(Path(args.against) / "sshipit", other / "sshipit",
                            ignore=shutil.ignore_patterns("__pycache__"))
            compile_all(other)
        self.ctx = Context(key=self.key.private_path, scratch=self.scratch, sshipit_src=src, home=home,
                           other_src=other)
        self.git = git_state()  # the code copied above: what the run measures, whatever is committed meanwhile
        servers.remove_leftovers()
        self.area.ensure(Path(default_login_user().pw_dir))  # loopback and slow-link servers share this login
        started = servers.loopback_servers(self.scratch, self.key.public_text, [None])
        self.local_servers += [s for s, _ in started]
        self.endpoints["loopback"] = [ep for _, ep in started]
        if "50mbit" in self.links:
            self.slow = servers.SlowLink(self.scratch, self.key.public_text)
            self.endpoints["50mbit"] = [self.slow.start()]
        self.counter.start([ep for eps in self.endpoints.values() for ep in eps])
        if not self.counter.active:
            log("bytes on the wire: not measured (needs root and iptables)")

    def fanout_endpoints(self, hosts: int) -> list[Endpoint]:
        eps = self.endpoints["loopback"]
        if len(eps) < hosts:
            users = [f"sshipit-bench{n}" for n in range(len(eps) + 1, hosts + 1)]
            if not servers.is_root():
                raise RuntimeError("fan-out needs root (one login user per server)")
            log(f"starting {len(users)} more loopback sshd servers (login users {users[0]}..{users[-1]})")
            for user in users:
                self.area.ensure(Path(ensure_user(user).pw_dir))
            started = servers.loopback_servers(self.scratch / "fanout", self.key.public_text, users)
            self.local_servers += [s for s, _ in started]
            for _, ep in started:
                eps.append(ep)
                self.counter.add(ep)
        return eps[:hosts]

    def close(self) -> None:
        for ep_home, target in self.targets:
            shutil.rmtree(ep_home / target, ignore_errors=True)
        self.area.close()
        for home in {h for h, _ in self.targets}:
            shutil.rmtree(home / servers.AREA, ignore_errors=True)
        self.counter.close()
        if self.slow is not None:
            self.slow.close()
        for server in self.local_servers:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- the runs ----------------------------------------------------------------

    @property
    def links(self) -> list[str]:
        if self.args.loopback_only or not servers.is_root():
            return ["loopback"]
        return self.args.links

    def tools_for(self, scenario: Scenario, link: str) -> list[Tool]:
        chosen = [BY_KEY[k] for k in self.args.tools] if self.args.tools else TOOLS
        if self.args.against:  # the second sshipit runs wherever the first does
            chosen = [*chosen, BY_KEY["sshipit-b"]] if "sshipit-b" not in [t.key for t in chosen] else chosen
        else:
            chosen = [t for t in chosen if t.key != "sshipit-b"]
        allowed = None if scenario.tools is None else {*scenario.tools, "sshipit-b"}
        return [t for t in chosen if link in t.links and (allowed is None or t.key in allowed)]

    def run_all(self) -> None:
        chosen = [s for s in scenarios(self.args.quick, self.args.everyday) if not self.args.scenarios or
                  s.key in self.args.scenarios or s.key.split("-")[0] in self.args.scenarios]
        for link in self.links:
            for scenario in chosen:
                if link not in scenario.links and not self.args.all_links:
                    continue
                if scenario.hosts > 1 and not servers.is_root():
                    log(f"skipping {scenario.key}: several hosts need root (one login user per server)")
                    continue
                reps = self.args.runs if link == "loopback" else self.args.slow_runs
                tools = self.tools_for(scenario, link)
                for rep in range(reps):
                    shift = rep % len(tools)  # round robin: each tool goes first once in a while
                    for tool in tools[shift:] + tools[:shift]:
                        try:
                            self.one(link, scenario, tool, rep, reps)
                        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                            self.runs.append({"link": link, "scenario": scenario.key, "tool": tool.key, "rep": rep,
                                              "ok": False, "error": f"bench error: {exc}"})
                            log(f"[{link} {scenario.key} {rep + 1}/{reps}] {tool.label}: BENCH ERROR: {exc}")
                        self.save_partial()
                self.drop_targets(link)  # the next scenario prepares its own; RAM holds one scenario's targets

    def drop_targets(self, link: str) -> None:
        for home, target in list(self.targets):
            if target.startswith(f"{servers.AREA}/{link}/") or target.startswith(f"{servers.AREA}/fanout/"):
                shutil.rmtree(home / target, ignore_errors=True)

    def save_partial(self) -> None:
        """Every run so far, so that a crash or Ctrl-C loses nothing (--report-only turns it into the report)."""
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "partial.json").write_text(json.dumps(results_of(self, time.time()), indent=1))

    def server_eps(self, link: str, scenario: Scenario) -> tuple[list[Endpoint], list[Endpoint]]:
        """(servers of the timed run, loopback servers of the same login users, for preparing)."""
        if scenario.hosts > 1 or scenario.key.startswith("fanout"):
            eps = self.fanout_endpoints(scenario.hosts)
            return eps, eps
        eps = self.endpoints[link]
        return eps, self.endpoints["loopback"][: len(eps)]

    def one(self, link: str, scenario: Scenario, tool: Tool, rep: int, reps: int) -> None:
        eps, prep_eps = self.server_eps(link, scenario)
        place = "fanout" if scenario.hosts > 1 or scenario.key.startswith("fanout") else link
        target = f"{servers.AREA}/{place}/{tool.key}"
        workspace = self.workload.variant(scenario.variant)
        record: dict = {"link": link, "scenario": scenario.key, "tool": tool.key, "rep": rep, "hosts": len(eps)}
        try:
            self.prepare(scenario, tool, eps, prep_eps, target)
        except RuntimeError as exc:
            record.update(ok=False, error=f"preparing: {exc}")
            self.runs.append(record)
            log(f"[{link} {scenario.key} {rep + 1}/{reps}] {tool.label}: PREPARE FAILED: {exc}")
            return
        before = self.counter.read()
        runlog = self.scratch / "run.log"
        measured = measure.run(tool.command(eps, workspace, target, self.ctx), cwd=workspace, env=self.ctx.env(),
                               timeout=self.args.timeout, log=runlog)
        after = self.counter.read()
        keys = [(ep.host, ep.port) for ep in eps]
        if self.counter.active and before and after:
            record["sent"] = sum(after.get(k, (0, 0))[0] - before.get(k, (0, 0))[0] for k in keys)
            record["received"] = sum(after.get(k, (0, 0))[1] - before.get(k, (0, 0))[1] for k in keys)
        record.update(seconds=measured.seconds, cpu=measured.cpu, peak_rss=measured.peak_rss,
                      returncode=measured.returncode)
        problem = None
        if measured.returncode != 0 or measured.timed_out:
            why = "timed out" if measured.timed_out else f"exit status {measured.returncode}"
            problem = f"{why}: {measured.output.strip()[-600:]}"
        else:
            problem = self.verify(workspace, eps, target)
        record["ok"] = problem is None
        if problem:
            record["error"] = problem
        if tool.key == "sshipit":
            record["output"] = measured.output[-1500:]
        self.runs.append(record)
        sent = f", {record['sent'] / 1e6:.1f} MB sent" if "sent" in record else ""
        status = "" if problem is None else f"  FAILED: {problem[:300]}"
        log(f"[{link} {scenario.key} {rep + 1}/{reps}] {tool.label}: {measured.seconds:.2f} s "
            f"({measured.cpu:.2f} s CPU){sent}, {measured.peak_rss / 1e6:.0f} MB peak{status}")

    # -- preparing and checking targets (as root, on this machine's file system) ---------------------

    def prepare(self, scenario: Scenario, tool: Tool, eps: list[Endpoint], prep_eps: list[Endpoint],
                target: str) -> None:
        for ep in eps:
            self.targets.add((ep.home, target))
        if scenario.previous is None:
            for ep in eps:
                self.clear(ep, target)
        else:
            previous = self.workload.variant(scenario.previous)
            now = time.time()
            keep = self.args.keep_mtimes if scenario.mtimes is None else scenario.mtimes == "kept"
            if keep:
                workload.set_mtimes(previous / "app", workload.FIXED_MTIME)
            else:
                workload.set_mtimes(previous / "app", now - 3600)
            if tool.incremental:
                # The previous deploy made by the tool itself (over loopback: same login users, same paths).
                prep = measure.run(tool.command(prep_eps, previous, target, self.ctx), cwd=previous,
                                   env=self.ctx.env(), timeout=self.args.timeout, log=self.scratch / "prep.log")
                if prep.returncode != 0:
                    raise RuntimeError(f"exit status {prep.returncode}: {prep.output.strip()[-400:]}")
            else:  # it resends everything anyway: a local copy is the same starting point, and faster
                for ep in eps:
                    self.copy(previous, ep, target)
            current = self.workload.variant(scenario.variant) / "app"
            if keep:  # an editor's save: only the changed files get a new mtime
                for name in self.workload.changed:
                    if (current / name).exists() and scenario.variant != scenario.previous:
                        os.utime(current / name, (now, now))
            else:  # a CI checkout and build: every file is new
                workload.set_mtimes(current, now)
        os.sync()  # the previous run's writes must not be flushed during this one

    def clear(self, ep: Endpoint, target: str) -> None:
        path = ep.home / target
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(ep.home / ".cache" / "sshipit", ignore_errors=True)  # sshipit's manifests
        uid, gid = ep.uid_gid
        for part in [*reversed(Path(target).parents), Path(target)]:
            if str(part) == ".":
                continue
            (ep.home / part).mkdir(exist_ok=True)
            os.chown(ep.home / part, uid, gid)

    def copy(self, workspace: Path, ep: Endpoint, target: str) -> None:
        self.clear_parent(ep, target)
        uid, gid = ep.uid_gid
        subprocess.run(["rsync", "-a", "--delete", f"--chown={uid}:{gid}", f"{workspace}/app/", f"{ep.home / target}/"],
                       check=True, capture_output=True)

    def clear_parent(self, ep: Endpoint, target: str) -> None:
        uid, gid = ep.uid_gid
        for part in reversed(Path(target).parents):
            if str(part) != ".":
                (ep.home / part).mkdir(exist_ok=True)
                os.chown(ep.home / part, uid, gid)

    def verify(self, workspace: Path, eps: list[Endpoint], target: str) -> str | None:
        """Every local file landed with its size; the changed files and a sample of others byte for byte."""
        local = dict(workload.iter_files(workspace / "app"))
        rng = random.Random(len(self.runs))
        sample = set(rng.sample(sorted(local), min(40, len(local)))) | set(self.workload.changed)
        for ep in eps:
            remote = dict(workload.iter_files(ep.home / target))
            missing = [p for p, size in local.items() if remote.get(p) != size]
            if missing:
                return f"{ep.spec}: {len(missing)} files missing or of the wrong size, e.g. {missing[:3]}"
            for name in sample:
                if name in local and not _same(workspace / "app" / name, ep.home / target / name):
                    return f"{ep.spec}: {name} differs from the local file"
        return None


def _same(a: Path, b: Path) -> bool:
    size = a.stat().st_size
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if size <= 8 << 20:
            return fa.read() == fb.read()
        for offset in (0, size // 2, max(0, size - (1 << 20))):
            fa.seek(offset)
            fb.seek(offset)
            if fa.read(1 << 20) != fb.read(1 << 20):
                return False
        return True


def results_of(bench: Bench, started: float) -> dict:
    args = bench.args
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "python": platform.python_version(),
        "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip(),
        "rsync": " ".join(subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                                         check=False).stdout.split("\n")[0].split()),
        "git": bench.git,
        "workload": {"name": bench.workload.spec.name, **bench.workload.summary()},
        "links": bench.links,
        "runs": args.runs, "slow_runs": args.slow_runs,
        "mtimes": "kept" if args.keep_mtimes else "fresh (CI build)",
        "targets": "tmpfs" if bench.area.enabled else "disk",
        "bytes_measured": bench.counter.active or any("sent" in r for r in bench.runs),
        "root": servers.is_root(),
    }
    return {"meta": meta,
            "tools": {t.key: {"label": t.label, "command": t.note, "links": list(t.links)} for t in TOOLS
                      if t.key != "sshipit-b" or args.against},  # the second sshipit only ran with --against
            "scenarios": {s.key: s.title for s in scenarios(args.quick, args.everyday)},
            "scenarios_short": {s.key: s.short for s in scenarios(args.quick, args.everyday)},
            "runs": list(bench.runs)}


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "src_dirty": "yes" if git("status", "--porcelain", "--", "src") else "no"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny workload, 1 run each: a smoke test")
    parser.add_argument("--loopback-only", action="store_true", help="skip the 50 Mbit/s link")
    parser.add_argument("--links", nargs="+", choices=["loopback", "50mbit"], default=["loopback", "50mbit"],
                        help="which links to run (default both, as root)")
    parser.add_argument("--runs", type=int, help="runs per tool and scenario on loopback (default 3; --quick 1)")
    parser.add_argument("--slow-runs", type=int, help="runs per tool and scenario on the 50 Mbit/s link "
                        "(default 1: a shaped link is steady, and each run there takes minutes)")
    parser.add_argument("--tools", nargs="+", choices=[t.key for t in TOOLS], help="only these tools")
    parser.add_argument("--scenarios", nargs="+", help="only these scenarios (fresh nochange changed large fanout "
                        "or fanout-N)")
    parser.add_argument("--all-links", action="store_true", help="run every scenario on every link (also the "
                        "large file and fan-out on the slow link)")
    parser.add_argument("--disk", action="store_true", help="keep the targets on the login users' disk instead "
                        "of a tmpfs (as root, targets live in RAM so that disk write-back does not decide results)")
    parser.add_argument("--keep-mtimes", action="store_true", help="redeploys keep the files' mtimes (a "
                        "developer's machine) instead of fresh ones (a CI build)")
    parser.add_argument("--cache", default="/var/tmp/sshipit-bench", help="where the workload is generated once")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where latest.{md,json,png} go")
    parser.add_argument("--timeout", type=float, help="seconds one run may take (default 1200; --quick 120)")
    parser.add_argument("--wan", action="store_true", help="run the WAN round-trip scenarios alone (through a "
                        "delaying relay at 0 and 100 ms round trip; see bench/wan.py): a few minutes")
    parser.add_argument("--wan-scenarios", nargs="+", help="with --wan: only these (cmd nochange nochange-cmd "
                        "changed-cmd fresh-cmd atomic fanout-1 fanout-20)")
    parser.add_argument("--everyday", action="store_true", help="run the everyday workload alone (5,000 small "
                        "files + one 100 MB file) on loopback: fresh, and redeploys with kept and with new mtimes")
    parser.add_argument("--fleet-memory", action="store_true", help="run the fleet memory section alone "
                        "(bench/memory.py, as root): peak MB of one deploy to 1/10/50/200 real sshd, MB per added "
                        "host, set-up CPU ms per host; writes memory.md and memory.json to --out")
    parser.add_argument("--sshipit-src", help="measure the sshipit package under this src directory instead of "
                        "this checkout's (e.g. a copy of an earlier version, for before/after figures)")
    parser.add_argument("--against", metavar="SRC", help="also measure the sshipit package under this src "
                        "directory, as tool sshipit-b, interleaved with this checkout's in the same run (e.g. "
                        "`git worktree add /tmp/old COMMIT`, then --against /tmp/old/src)")
    parser.add_argument("--report-only", metavar="JSON", nargs="+", help="run nothing: rewrite the table and "
                        "chart from results JSON files (latest.json, or partial.json after a crash; several are "
                        "merged, e.g. runs of --links loopback and --links 50mbit)")
    parser.add_argument("--publish", action="store_true", help="also copy the chart to docs/bench.png and the "
                        "table into README.md's Benchmark section (between its bench markers)")
    args = parser.parse_args(argv)
    if args.everyday:
        args.loopback_only = True
        args.tools = args.tools or ["sshipit", "tar", "rsync"]
    args.runs = args.runs or (1 if args.quick else 3)
    args.slow_runs = args.slow_runs or 1
    args.timeout = args.timeout or (120 if args.quick else 1200)
    return args


def write_reports(results: dict, out: Path, publish: bool) -> None:
    results["medians"] = report.medians(results["runs"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1))
    text = report.markdown(results)
    (out / "latest.md").write_text(text)
    print("\n" + text)
    report.chart(results, out / "latest.png")
    log(f"bench: wrote {out / 'latest.md'}, {out / 'latest.json'}, {out / 'latest.png'}")
    if publish:
        report.publish(results, out / "latest.png", REPO)


def sshipit_src(args: argparse.Namespace) -> Path:
    """The sshipit package a run measures: this checkout's, or the one under --sshipit-src."""
    return Path(args.sshipit_src) / "sshipit" if args.sshipit_src else REPO / "src" / "sshipit"


def compile_all(src: Path) -> None:
    """Byte-compile the copied package now: else the first timed run compiles it (~0.3 s more than the rest)."""
    import compileall

    compileall.compile_dir(str(src), quiet=1)


def run_wan(args: argparse.Namespace) -> int:
    """The WAN scenarios alone (wan.py): one loopback server (more for the fan-out), no workload to generate."""
    import wan

    scratch = Path(tempfile.mkdtemp(prefix="sshipit-bench-wan-"))
    scratch.chmod(0o711)  # the servers' login users read authorized_keys in here
    started: list = []
    try:
        key = generate_key(scratch, "ed25519", name="bench_key")
        src = scratch / "src"
        shutil.copytree(sshipit_src(args), src / "sshipit", ignore=shutil.ignore_patterns("__pycache__"))
        compile_all(src)
        home = scratch / "client-home"
        home.mkdir()
        ctx = Context(key=key.private_path, scratch=scratch, sshipit_src=src, home=home)
        started = servers.loopback_servers(scratch, key.public_text, [None])
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git_state(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
                "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip()}
        return wan.main(args, scratch, ctx, started[0][1], key.public_text, meta, home_server=started[0][0])
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    finally:
        for server, _ep in started:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        merged = [json.loads(Path(p).read_text()) for p in args.report_only]
        results = merged[-1]
        results["runs"] = [run for r in merged for run in r["runs"]]
        results["meta"]["links"] = list(dict.fromkeys(link for r in merged for link in r["meta"]["links"]))
        results["meta"]["bytes_measured"] = any(r["meta"].get("bytes_measured") for r in merged)
        write_reports(results, Path(args.out), args.publish)
        return 0
    if args.fleet_memory:  # its own servers, ports and tmpfs: no clash with a benchmark run (no lock), no peers
        import memory

        return memory.main(["--out", args.out, *(["--sshipit-src", args.sshipit_src] if args.sshipit_src else [])])
    missing = missing_requirements()
    if missing:
        print("bench: missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    if not servers.is_root():
        log("bench: not root: running the loopback part only (the 50 Mbit/s link needs network namespaces, "
            "tc and iptables; bytes on the wire need iptables)")
    elif not args.loopback_only and servers.slow_link_missing():
        print("bench: the 50 Mbit/s link needs: " + ", ".join(servers.slow_link_missing()), file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    lock = open(LOCK, "a+")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"bench: another bench/run.py is running (lock {LOCK}); its servers and counters would clash",
              file=sys.stderr)
        return 2
    if args.wan:
        return run_wan(args)
    bench = Bench(args)
    started = time.time()
    try:
        bench.setup()
        log(f"workload: {bench.workload.summary()}; links: {', '.join(bench.links)}; runs: {args.runs}"
            f"{f' (50mbit: {args.slow_runs})' if '50mbit' in bench.links else ''}")
        bench.run_all()
    except KeyboardInterrupt:
        log(f"bench: interrupted; cleaning up (runs so far: {Path(args.out) / 'partial.json'})")
        bench.close()
        return 130
    except BaseException:
        bench.close()
        raise
    bench.close()
    results = results_of(bench, started)
    write_reports(results, Path(args.out), args.publish)
    failed = [r for r in bench.runs if not r.get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
