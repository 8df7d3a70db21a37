"""The benchmark's scenarios: what the target holds before a timed run, and what is deployed in it.

To add a scenario: append a `Scenario` to `scenarios()`. `variant` and `previous` name workspaces of the
workload (see workload.py); `previous=None` means an empty target; `hosts` > 1 deploys to that many loopback
servers at once (each with its own login user); `tools` limits the tools that run it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    short: str  # for the chart
    variant: str  # the workspace deployed by the timed run
    previous: str | None  # what the target holds before it (deployed untimed); None: empty target
    links: tuple[str, ...] = ("loopback", "50mbit")
    hosts: int = 1
    tools: tuple[str, ...] | None = None  # None: every tool


FANOUT_TOOLS = ("sshipit", "tar", "rsync")


def scenarios(quick: bool) -> list[Scenario]:
    fanout = (1, 3) if quick else (1, 10, 20)
    return [
        Scenario("fresh", "fresh deploy (empty target)", "fresh deploy", "v1", None),
        Scenario("nochange", "redeploy, nothing changed", "no change", "v1", "v1"),
        Scenario("changed", "redeploy, 1% of files changed", "1% changed", "v2", "v1"),
        # On the 50 Mbit/s link every tool is capped by the link: the large file is a CPU-throughput check.
        Scenario("large", "one large file alone (empty target)", "large file", "large", None, links=("loopback",)),
        *(Scenario(f"fanout-{n}", f"fan-out: 1% changed, text tree, {n} host{'s' if n > 1 else ''} at once",
                   f"fan-out, {n} host{'s' if n > 1 else ''}", "web-v2", "web-v1", links=("loopback",), hosts=n,
                   tools=FANOUT_TOOLS) for n in fanout),
    ]
