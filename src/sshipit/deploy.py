"""All hosts of a plan: rolling batches, at most max_parallel hosts at once, a failure budget; the exit status.

Owns fan-out across hosts and the step's final status. Hosts are deployed in batches (`batch_size`, default one
batch of all); a batch starts only when the hosts before it failed no more than `max_failures` allows, and
once that budget is spent no further host is started. With atomic releases each batch is one `Fleet`: its
hosts prepare, then switch together; a switch to releases the hosts already hold (phase: switch, rollback) in
batches first checks every host, so that no batch switches if any host lacks its release. run_once runs once for
the whole deploy (hooks.Once, on the first host of the first batch that gets to it); once it failed, no further
batch starts and no failure is tolerated. The jump host chain, if any, is opened once for the whole deploy.

Exit status: 0 if every host succeeded (or the failures stayed within max_failures); otherwise the first failed
host's status (a failing command's own status, 124 for a timeout, 1 for connect/upload failures).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from sshipit.atomic import Fleet, Gate, single_fleet
from sshipit.connect import shared_tunnels
from sshipit.hooks import Once
from sshipit.manifest import forget_local_hashes
from sshipit.plan import HostSpec, Plan
from sshipit.report import Console, HostResult
from sshipit.session import deploy_host


@dataclass
class _Budget:
    """Failed hosts so far against the number tolerated."""

    tolerated: int
    failed: int = 0

    def count(self, result: HostResult) -> None:
        if not result.ok and not result.skipped:
            self.failed += 1

    @property
    def spent(self) -> bool:
        return self.failed > self.tolerated

    def reason(self) -> str:
        return f"stopped after {self.failed} failed host{'s' if self.failed != 1 else ''} (max_failures: " \
               f"{self.tolerated})"


async def deploy(plan: Plan, console: Console) -> list[HostResult]:
    forget_local_hashes()  # hashes of local files are shared by the hosts of one deploy, never kept beyond it
    console.prefix_hosts = len(plan.hosts) > 1
    console.atomic = plan.atomic
    once = _once(plan)
    async with shared_tunnels(plan, console.info, console.warn):
        results = await _batches(plan, console, once)
    failed = [r for r in results if not r.ok and not r.skipped]
    # A failed run_once is never tolerated: the hosts it stopped would otherwise pass for a deploy that happened.
    if failed and not any(r.skipped for r in results) and len(failed) <= plan.max_failures \
            and not (once is not None and once.failure):
        for result in failed:
            result.tolerated = True
    return results


def batches(hosts: list[HostSpec], size: int | None) -> list[list[HostSpec]]:
    size = size or len(hosts)
    return [hosts[start:start + size] for start in range(0, len(hosts), size)]


def _once(plan: Plan) -> Once | None:
    """run_once's meeting point for the whole deploy, if it runs at all: never on a dry run or a rollback, and
    not in a prepare phase (it belongs right before the switch)."""
    if not plan.run_once or plan.dry_run or plan.rollback or plan.phase == "prepare":
        return None
    return Once(plain=not plan.atomic)


async def _batches(plan: Plan, console: Console, once: Once | None = None) -> list[HostResult]:
    groups = batches(plan.hosts, plan.batch_size)
    budget = _Budget(plan.max_failures)
    results: list[HostResult] = []
    if plan.atomic and (plan.rollback or plan.phase == "switch") and len(groups) > 1 and not plan.dry_run:
        # A switch to releases the hosts hold, in batches: every host is checked before the first batch switches
        # (one batch's Fleet checks only its own hosts), so that none switches if any lacks its release.
        console.info(f"checking that each of the {len(plan.hosts)} hosts can switch before the first batch does")
        checked = await _atomic_batch(plan.hosts, replace(plan, check_only=True), console)
        if not all(result.ok for result in checked):
            return checked
    for number, group in enumerate(groups, 1):
        if once is not None and once.failure:  # the remaining hosts would run without their migrations
            results += [_not_attempted(host, once.failure) for host in group]
            continue
        if budget.spent:
            results += [_not_attempted(host, budget.reason()) for host in group]
            continue
        if len(groups) > 1:
            console.info(f"batch {number} of {len(groups)}: {', '.join(host.label for host in group)}")
        if once is not None:
            once.batch(group)
        if plan.atomic:
            done = await _atomic_batch(group, plan, console, once)
            for result in done:
                budget.count(result)
        else:
            done = await _plain_batch(group, plan, console, budget, once)  # counts as it goes
        results += done
        if budget.spent and number < len(groups):
            console.info(f"batch {number} of {len(groups)} failed, {budget.reason()}: the remaining "
                         f"{sum(len(g) for g in groups[number:])} hosts are not attempted")
    return results


async def _plain_batch(group: list[HostSpec], plan: Plan, console: Console, budget: _Budget,
                       once: Once | None = None) -> list[HostResult]:
    """At most max_parallel hosts at a time; once the failure budget is spent, no further host starts."""
    results: dict[int, HostResult] = {}
    queue = iter(enumerate(group))  # shared by the workers: each host is taken by exactly one

    async def worker() -> None:
        for index, host in queue:
            if budget.spent:
                results[index] = _not_attempted(host, budget.reason())
                continue
            result = await deploy_host(host, plan, console, single_fleet(True, 1, once))
            budget.count(result)
            results[index] = result

    await asyncio.gather(*(worker() for _ in range(min(plan.max_parallel, len(group)))))
    return [results[index] for index in range(len(group))]


async def _atomic_batch(group: list[HostSpec], plan: Plan, console: Console,
                        once: Once | None = None) -> list[HostResult]:
    """Every host of the batch prepares before any switches, so all of them are under way together;
    max_parallel limits how many work at the same moment."""
    fleet = Fleet(Gate(len(group)), Gate(len(group)), asyncio.Semaphore(plan.max_parallel), once=once)
    return list(await asyncio.gather(*(deploy_host(host, plan, console, fleet) for host in group)))


def _not_attempted(host: HostSpec, reason: str) -> HostResult:
    return HostResult(host=host, ok=False, seconds=0.0, skipped=True, error=f"not attempted: {reason}")


def exit_status(results: list[HostResult]) -> int:
    """The first real failure's status; a host stopped only by another host's failure counts last."""
    failures = [r for r in results if not r.ok and not r.skipped and not r.tolerated]
    failures.sort(key=lambda r: r.collateral)
    return (failures[0].exit_status or 1) if failures else 0
