"""All hosts of a plan: in parallel (the default) or one after another, then the exit status.

Owns fan-out across hosts and the step's final status: 0 only if every host succeeded; otherwise the first
failed host's status (a failing command's own status, 124 for a timeout, 1 for connect/upload failures).
"""

from __future__ import annotations

import asyncio

from sshipit.plan import Plan
from sshipit.report import Console, HostResult
from sshipit.session import deploy_host, single_fleet


async def deploy(plan: Plan, console: Console) -> list[HostResult]:
    console.prefix_hosts = len(plan.hosts) > 1
    if plan.atomic:
        # Every host prepares before any switches, so they run side by side even when not in parallel;
        # `parallel: false` then means one host works at a time.
        fleet = single_fleet(plan.parallel, len(plan.hosts))
        return list(await asyncio.gather(*(deploy_host(host, plan, console, fleet) for host in plan.hosts)))
    if plan.parallel:
        return list(await asyncio.gather(*(deploy_host(host, plan, console) for host in plan.hosts)))
    results: list[HostResult] = []
    for index, host in enumerate(plan.hosts):
        result = await deploy_host(host, plan, console)
        results.append(result)
        if not result.ok:
            results += [HostResult(host=rest, ok=False, seconds=0.0, skipped=True, error="not attempted")
                        for rest in plan.hosts[index + 1:]]
            break
    return results


def exit_status(results: list[HostResult]) -> int:
    """The first real failure's status; a host stopped only by another host's failure counts last."""
    failures = [r for r in results if not r.ok and not r.skipped]
    failures.sort(key=lambda r: r.collateral)
    return (failures[0].exit_status or 1) if failures else 0
