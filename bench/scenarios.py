"""The benchmark's scenarios: what the target holds before a timed run, and what is deployed in it.

To add a scenario: append a `Scenario` to `scenarios()`. `variant` and `previous` name workspaces of the
workload (see workload.py); `previous=None` means an empty target; `hosts` > 1 deploys to that many loopback
servers at once (each with its own login user); `tools` limits the tools that run it; `mtimes` fixes how a
redeploy's files are dated ("kept": an editor's save, "new": a CI checkout and build) whatever --keep-mtimes says.
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
    mtimes: str | None = None  # "kept" or "new" for this scenario's redeploy; None: as --keep-mtimes says


FANOUT_TOOLS = ("sshipit", "tar", "rsync")


EVERYDAY_TOOLS = ("sshipit", "tar", "rsync")


def scenarios(quick: bool, everyday: bool = False) -> list[Scenario]:
    if everyday:  # run.py --everyday: 5,000 small files + one 100 MB file, on loopback
        return [
            Scenario("fresh", "everyday build: fresh deploy (empty target)", "fresh deploy", "v1", None,
                     links=("loopback",), tools=EVERYDAY_TOOLS),
            Scenario("nochange-kept", "everyday build: redeploy, nothing changed, mtimes kept", "no change, kept",
                     "v1", "v1", links=("loopback",), tools=EVERYDAY_TOOLS, mtimes="kept"),
            Scenario("nochange-new", "everyday build: redeploy, nothing changed, every mtime new (a CI build)",
                     "no change, new mtimes", "v1", "v1", links=("loopback",), tools=EVERYDAY_TOOLS, mtimes="new"),
            Scenario("changed-kept", "everyday build: redeploy, 1% changed, mtimes kept", "1% changed, kept",
                     "v2", "v1", links=("loopback",), tools=EVERYDAY_TOOLS, mtimes="kept"),
            Scenario("changed-new", "everyday build: redeploy, 1% changed, every mtime new (a CI build)",
                     "1% changed, new mtimes", "v2", "v1", links=("loopback",), tools=EVERYDAY_TOOLS, mtimes="new"),
        ]
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
