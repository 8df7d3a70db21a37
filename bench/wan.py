"""The benchmark's WAN part: round trips on the critical path, sshipit beside the tools a user would pick instead.

    python3 bench/run.py --wan              # ~3-5 minutes: every WAN scenario at 0 and 100 ms, 3 runs each
    python3 bench/run.py --wan --runs 1 --wan-scenarios cmd nochange-cmd

Every tool reaches its server through a delaying relay of its own (relay.py) that holds each chunk 0 ms or 50 ms
each way. Round trips = (median time at 100 ms - median time at 0 ms) / 100 ms: what a client waits for on the
network, robust to the load of this shared machine (the CPU work is the same at both delays). The tree is 300
small files (a typical service); mtimes are kept between deploys, so rsync's quick check sees "unchanged".
The fan-out deploys to 20 servers, each behind its own relay, in one sshipit process, against one server.

Writes results/wan.md (also printed) and wan.json; --publish puts the table between the README's bench-wan
markers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import measure
import servers
from relay import Relays, task_cpu
from servers import Endpoint
from tools import Context, Rsync, TarSsh

from sshipit.localserver import ensure_user

FILES = 300
CHANGED = 3
COMMAND = "true"
HALF_RTT = 0.05  # seconds each way at the "100 ms" point
FANOUT = 20
WAN_BEGIN, WAN_END = "<!-- bench-wan:begin -->", "<!-- bench-wan:end -->"


@dataclass(frozen=True)
class WanScenario:
    key: str
    title: str
    variant: str  # workspace deployed by the timed run ("" for commands only)
    previous: str | None  # what the target holds before (deployed by the tool itself); None: empty
    command: bool  # the run includes one remote command
    atomic: bool = False
    alternative: str = ""  # the other tool's key ("" for none)
    alt_label: str = ""
    goal: str = ""  # the goal for sshipit's round trips ("" for none)
    hosts: int = 1
    delays: tuple[float, ...] = (0.0, HALF_RTT)


SCENARIOS = [
    WanScenario("cmd", "one command", "", None, True, alternative="ssh", alt_label="`ssh host true`",
                goal="<= ssh"),
    WanScenario("nochange", f"redeploy of {FILES} files, nothing changed", "v1", "v1", False,
                alternative="rsync", alt_label="`rsync -a`", goal="<= 8"),
    WanScenario("nochange-cmd", "the same + one command", "v1", "v1", True, alternative="rsync",
                alt_label="`rsync -a && ssh host true`", goal="<= 8"),
    WanScenario("changed-cmd", f"redeploy, {CHANGED} of {FILES} files changed, + one command", "v2", "v1", True,
                alternative="rsync", alt_label="`rsync -a && ssh host true`", goal="<= 8"),
    WanScenario("fresh-cmd", f"fresh deploy of {FILES} files + one command", "v1", None, True, alternative="tar",
                alt_label="OpenSSH tar pipe, then `ssh host true`", goal="<= 10"),
    WanScenario("atomic", f"atomic deploy ({CHANGED} of {FILES} files changed) + one command", "v2", "v1", True,
                atomic=True, goal="<= 10"),
    WanScenario("fanout-1", f"fan-out: {CHANGED} of {FILES} changed + one command, 1 host", "v2", "v1", True,
                delays=(HALF_RTT,)),
    WanScenario(f"fanout-{FANOUT}", f"fan-out: the same, {FANOUT} hosts each behind its own relay", "v2", "v1",
                True, hosts=FANOUT, delays=(HALF_RTT,)),
]
BY_KEY = {s.key: s for s in SCENARIOS}


def log(message: str) -> None:
    print(message, flush=True)


def make_workspaces(root: Path) -> dict[str, Path]:
    """v1: FILES small text files in a few directories; v2: the same with CHANGED files edited. Fixed mtimes
    (an edited file gets a newer one), so that rsync's quick check and sshipit see the same "unchanged"."""
    rng = random.Random(17)
    words = ["const", "let", "return", "function", "value", "state", "props", "render", "import", "export",
             "default", "async", "await"]
    dirs = ["static/js", "static/css", "lib", "lib/util", "views", "public"]
    names = [f"{rng.choice(dirs)}/{rng.choice('abc')}{n:03d}.{rng.choice(['js', 'css', 'html', 'json'])}"
             for n in range(FILES)]
    spaces = {"v1": root / "v1", "v2": root / "v2"}
    for ws in spaces.values():
        shutil.rmtree(ws, ignore_errors=True)
    changed = set(rng.sample(names, CHANGED))
    for name in names:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(100, 1500))) + "\n"
        for variant, ws in spaces.items():
            path = ws / "app" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + ("// v2\n" if variant == "v2" and name in changed else ""))
            when = 1_700_000_000 + (100 if variant == "v2" and name in changed else 0)
            os.utime(path, (when, when))
    return spaces


class Wan:
    def __init__(self, scratch: Path, ctx: Context, home_endpoint: Endpoint, args: argparse.Namespace) -> None:
        self.scratch = scratch
        self.ctx = ctx
        self.args = args
        self.relays = Relays()
        self.direct: list[Endpoint] = [home_endpoint]  # servers as prepared (no relay)
        self.relayed: list[Endpoint] = []
        self.local_servers: list = []
        self.runs: list[dict] = []
        self.spaces = make_workspaces(scratch / "wan-workspaces")
        self.targets: set[tuple[Path, str]] = set()

    def endpoints(self, hosts: int) -> tuple[list[Endpoint], list[Endpoint]]:
        """(relayed endpoints, the same servers directly), starting more servers and relays when needed."""
        if len(self.direct) < hosts:
            if not servers.is_root():
                raise RuntimeError("the fan-out needs root (one login user per server)")
            users = [f"sshipit-bench{n}" for n in range(len(self.direct) + 1, hosts + 1)]
            log(f"starting {len(users)} more loopback sshd servers for the WAN fan-out")
            for user in users:
                ensure_user(user)
            started = servers.loopback_servers(self.scratch / "wan-fanout", self.ctx_public_key, users)
            self.local_servers += [s for s, _ in started]
            self.direct += [ep for _, ep in started]
        while len(self.relayed) < hosts:
            ep = self.direct[len(self.relayed)]
            port = self.relays.add(ep.port)
            known = ep.known_hosts.replace(f"[{ep.host}]:{ep.port} ", f"[{ep.host}]:{port} ")
            self.relayed.append(dataclasses.replace(ep, port=port, known_hosts=known))
        return self.relayed[:hosts], self.direct[:hosts]

    ctx_public_key = ""

    # -- commands -----------------------------------------------------------------------------------------

    def sshipit(self, eps: list[Endpoint], scenario: WanScenario, target: str, workspace: str) -> list[str]:
        argv = [sys.executable, "-m", "sshipit"]
        for ep in eps:
            argv += ["--host", ep.spec]
        argv += ["--key-path", str(self.ctx.key), "--known-hosts", "".join(ep.known_hosts for ep in eps),
                 "--max-parallel", str(max(10, len(eps)))]
        if workspace:
            argv += ["--target", f"~/{target}", "--source", "app", "--strip-components", "1"]
        if scenario.atomic:
            argv += ["--atomic", "true"]
        if scenario.command:
            argv += ["--command", COMMAND]
        return argv

    def other(self, ep: Endpoint, scenario: WanScenario, target: str) -> list[str]:
        ssh_cmd = shlex.join(["ssh", *self.ctx.ssh_options(ep), f"{ep.user}@{ep.host}", COMMAND])
        if scenario.alternative == "ssh":
            return ["bash", "-c", ssh_cmd]
        tool = Rsync() if scenario.alternative == "rsync" else TarSsh()
        part = tool.per_host(ep, self.spaces[scenario.variant], target, self.ctx)
        script = shlex.join(part) if isinstance(part, list) else part
        return ["bash", "-c", f"set -eo pipefail; {script}" + (f" && {ssh_cmd}" if scenario.command else "")]

    # -- preparing ----------------------------------------------------------------------------------------

    def prepare(self, scenario: WanScenario, tool: str, direct: list[Endpoint], target: str) -> None:
        for ep in direct:
            self.targets.add((ep.home, target))
            if scenario.previous is None or tool == "ssh":
                shutil.rmtree(ep.home / target, ignore_errors=True)
                shutil.rmtree(ep.home / ".cache" / "sshipit", ignore_errors=True)
                self.parents(ep, target)
        if scenario.previous is None or tool == "ssh":
            return
        workspace = self.spaces[scenario.previous]
        if tool == "sshipit":
            argv = self.sshipit(direct, dataclasses.replace(scenario, command=False), target, scenario.previous)
        else:
            for ep in direct:
                self.parents(ep, target)
            argv = Rsync().command(direct, workspace, target, self.ctx)
        prep = measure.run(argv, cwd=workspace, env=self.ctx.env(), timeout=300, log=self.scratch / "wan-prep.log")
        if prep.returncode != 0:
            raise RuntimeError(f"preparing {scenario.key} for {tool}: exit {prep.returncode}: "
                               f"{prep.output.strip()[-400:]}")

    @staticmethod
    def parents(ep: Endpoint, target: str) -> None:
        uid, gid = ep.uid_gid
        for part in reversed(Path(target).parents):
            if str(part) != ".":
                (ep.home / part).mkdir(exist_ok=True)
                os.chown(ep.home / part, uid, gid)

    def verify(self, scenario: WanScenario, tool: str, direct: list[Endpoint], target: str) -> str | None:
        if not scenario.variant:
            return None
        app = self.spaces[scenario.variant] / "app"
        local = {str(p.relative_to(app)): p.read_bytes() for p in app.rglob("*") if p.is_file()}
        for ep in direct:
            top = ep.home / target / ("current" if scenario.atomic else "")
            for name, data in local.items():
                try:
                    if (top / name).read_bytes() != data:
                        return f"{ep.spec}: {name} differs"
                except OSError as exc:
                    return f"{ep.spec}: {name}: {exc.strerror}"
        return None

    # -- running ------------------------------------------------------------------------------------------

    def run(self, chosen: list[WanScenario], reps: int) -> None:
        for scenario in chosen:
            tools = ["sshipit"] + ([scenario.alternative] if scenario.alternative else [])
            eps, direct = self.endpoints(scenario.hosts)
            for rep in range(reps):
                for delay in scenario.delays if rep % 2 == 0 else tuple(reversed(scenario.delays)):
                    for tool in tools if rep % 2 == 0 else list(reversed(tools)):
                        self.one(scenario, tool, delay, rep, eps, direct)
            for ep_home, target in list(self.targets):
                shutil.rmtree(ep_home / target, ignore_errors=True)

    def one(self, scenario: WanScenario, tool: str, delay: float, rep: int, eps: list[Endpoint],
            direct: list[Endpoint]) -> None:
        target = f"sshipit-wan/{scenario.key}-{tool}"
        record: dict = {"scenario": scenario.key, "tool": tool, "delay": delay, "rep": rep, "hosts": len(eps)}
        try:
            self.prepare(scenario, tool, direct, target)
        except RuntimeError as exc:
            record.update(ok=False, error=str(exc))
            self.runs.append(record)
            log(f"[wan {scenario.key}] {tool}: PREPARE FAILED: {exc}")
            return
        self.relays.delay = delay
        if tool == "sshipit":
            argv = self.sshipit(eps, scenario, target, scenario.variant)
        else:
            argv = self.other(eps[0], scenario, target)
        cwd = self.spaces[scenario.variant or "v1"]
        cpu_before = self.server_cpu(direct), self.relays.cpu_seconds()
        measured = measure.run(argv, cwd=cwd, env=self.ctx.env(), timeout=300, log=self.scratch / "wan-run.log")
        self.relays.delay = 0.0
        time.sleep(0.05)  # the servers' session processes end and are reaped into their sshd's counts
        # Where the CPU went, all of it on this machine's 2 cores: the client's, the servers' (sshd and the
        # commands it ran) and the relays'. On real servers only the client's would share the runner.
        record.update(cpu_client=measured.cpu, cpu_servers=self.server_cpu(direct) - cpu_before[0],
                      cpu_relays=self.relays.cpu_seconds() - cpu_before[1])
        problem = None
        if measured.returncode != 0 or measured.timed_out:
            problem = f"exit status {measured.returncode}: {measured.output.strip()[-400:]}"
        else:
            problem = self.verify(scenario, tool, direct, target)
        record.update(seconds=measured.seconds, ok=problem is None)
        if problem:
            record["error"] = problem
        self.runs.append(record)
        log(f"[wan {scenario.key} {int(delay * 2000)} ms {rep + 1}] {tool}: {measured.seconds:.3f} s (CPU: client "
            f"{record['cpu_client']:.2f} s, servers {record['cpu_servers']:.2f} s, relays {record['cpu_relays']:.2f} s)"
            f"{'' if problem is None else '  FAILED: ' + problem[:300]}")

    def server_cpu(self, direct: list[Endpoint]) -> float:
        """CPU used so far by the servers behind `direct`: each listening sshd and its reaped sessions."""
        by_port = {server.port: server for server in self.local_servers}
        total = 0.0
        for ep in direct:
            server = by_port.get(ep.port) or self.home_server
            pid = server.pid if server is not None else None
            if pid is not None:
                total += task_cpu(f"/proc/{pid}/stat", children=True)
        return total

    home_server: Any = None  # the LocalServer behind the first endpoint (run.py starts it)

    def close(self) -> None:
        for ep_home, target in self.targets:
            shutil.rmtree(ep_home / target, ignore_errors=True)
        for home in {h for h, _ in self.targets}:
            shutil.rmtree(home / "sshipit-wan", ignore_errors=True)
        self.relays.close()
        for server in self.local_servers:
            with contextlib.suppress(Exception):  # tearing down: the others must still stop
                server.stop()


# ---------------------------------------------------------------------------------------------------------
# results


def medians(runs: list[dict]) -> dict[tuple[str, str, float], float]:
    grouped: dict[tuple[str, str, float], list[float]] = {}
    for r in runs:
        if r.get("ok"):
            grouped.setdefault((r["scenario"], r["tool"], r["delay"]), []).append(r["seconds"])
    return {k: statistics.median(v) for k, v in grouped.items()}


def round_trips(med: dict[tuple[str, str, float], float], scenario: str, tool: str) -> float | None:
    slow, fast = med.get((scenario, tool, HALF_RTT)), med.get((scenario, tool, 0.0))
    if slow is None or fast is None:
        return None
    return (slow - fast) / (2 * HALF_RTT)


def table(results: dict) -> str:
    med = {(k[0], k[1], float(k[2])): v for k, v in
           ((tuple(json.loads(key)), value) for key, value in results["medians"].items())}
    meta = results["meta"]
    lines = [
        f"Run {meta['date']} on {meta['machine']} ({meta['ssh']}); sshipit at {meta['git']['commit']}"
        f"{' + uncommitted changes' if meta['git']['src_dirty'] == 'yes' else ''}. Each tool through a relay on "
        f"127.0.0.1 that holds every chunk 0 or 50 ms each way; round trips on the critical path = (median time "
        f"at 100 ms - median at 0 ms) / 100 ms, medians of {meta['runs']} run(s). {FILES} small files, mtimes "
        "kept between deploys.",
        "",
        "| scenario | sshipit: round trips | at 0 / 100 ms | the tool a user would pick instead | its round trips "
        "| goal | result |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt: Callable[[float | None], str] = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for key, title in results["scenarios"].items():
        scenario = BY_KEY[key]
        if key.startswith("fanout"):
            continue
        ours = round_trips(med, key, "sshipit")
        theirs = round_trips(med, key, scenario.alternative) if scenario.alternative else None
        times = f"{fmt(med.get((key, 'sshipit', 0.0)))} s / {fmt(med.get((key, 'sshipit', HALF_RTT)))} s"
        result = "-"
        if ours is not None and scenario.goal:
            if scenario.goal == "<= ssh":
                result = "met" if theirs is not None and ours <= theirs else "not met"
            else:
                result = "met" if ours <= float(scenario.goal.split()[-1]) else "not met"
        lines.append(f"| {title} | **{fmt(ours)}** | {times} | {scenario.alt_label or '-'} | {fmt(theirs)} | "
                     f"{scenario.goal or '-'} | {result} |")
    one, many = med.get(("fanout-1", "sshipit", HALF_RTT)), med.get((f"fanout-{FANOUT}", "sshipit", HALF_RTT))
    if one and many:
        ratio = many / one
        lines += ["", f"Fan-out at 100 ms ({CHANGED} of {FILES} files changed + one command): {FANOUT} hosts, each "
                  f"behind its own relay, in {many:.2f} s; one host in {one:.2f} s: **{ratio:.2f}x** (goal <= 1.2x: "
                  f"{'met' if ratio <= 1.2 else 'not met'})."]
        cpu = _fanout_cpu(results.get("runs", []))
        if cpu:
            lines += ["", "CPU of those runs, all on this machine's cores (medians; on real servers only the client's "
                      "shares the runner): " + "; ".join(
                          f"{hosts} host{'s' if hosts > 1 else ''}: client {c:.2f} s, servers {s:.2f} s, relays "
                          f"{r:.2f} s" for hosts, (c, s, r) in sorted(cpu.items())) + "."]
    return "\n".join(lines) + "\n"


def _fanout_cpu(runs: list[dict]) -> dict[int, tuple[float, float, float]]:
    """hosts -> median CPU seconds (client, servers, relays) of sshipit's fan-out runs at 100 ms."""
    grouped: dict[int, list[dict]] = {}
    for r in runs:
        if r.get("ok") and r["tool"] == "sshipit" and r["scenario"].startswith("fanout") and r["delay"] == HALF_RTT \
                and "cpu_client" in r:
            grouped.setdefault(r["hosts"], []).append(r)
    return {hosts: tuple(statistics.median(r[k] for r in rs) for k in ("cpu_client", "cpu_servers", "cpu_relays"))
            for hosts, rs in grouped.items()}  # type: ignore[misc]


def write(results: dict, out: Path, publish: bool, repo: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "wan.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "wan.md").write_text("# sshipit benchmark: WAN round trips\n\n" + text)
    print("\n" + text)
    log(f"bench: wrote {out / 'wan.md'}, {out / 'wan.json'}")
    if publish:
        readme = repo / "README.md"
        body = readme.read_text()
        start, end = body.find(WAN_BEGIN), body.find(WAN_END)
        if start < 0 or end < start:
            print(f"bench: README.md has no {WAN_BEGIN} ... {WAN_END} markers; WAN table not published")
            return
        readme.write_text(body[: start + len(WAN_BEGIN)] + "\n" + text + body[end:])
        print("bench: published the README's WAN table")


def main(args: argparse.Namespace, scratch: Path, ctx: Context, home: Endpoint, public_key: str, meta: dict,
         home_server: object = None) -> int:
    chosen = [BY_KEY[k] for k in (args.wan_scenarios or BY_KEY)]
    if any(s.hosts > 1 for s in chosen) and not servers.is_root():
        log("skipping the WAN fan-out: several hosts need root (one login user per server)")
        chosen = [s for s in chosen if s.hosts == 1]
    wan = Wan(scratch, ctx, home, args)
    wan.ctx_public_key = public_key
    wan.home_server = home_server
    started = time.time()
    try:
        wan.run(chosen, args.runs)
    finally:
        wan.close()
    meta = {**meta, "seconds": round(time.time() - started, 1), "runs": args.runs}
    results = {"meta": meta, "scenarios": {s.key: s.title for s in chosen}, "runs": wan.runs,
               "medians": {json.dumps(list(k)): v for k, v in medians(wan.runs).items()}}
    write(results, Path(args.out), args.publish, Path(__file__).resolve().parents[1])
    return 0 if all(r.get("ok") for r in wan.runs) else 1
