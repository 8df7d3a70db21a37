"""Which release goes live, as the settings say: the deploy's phase (all; prepare, switch nothing; switch to a
release every host holds), the shard of the hosts a prepare job readies, and a rollback's target release.

A split deploy: N CI jobs each prepare a shard of the hosts (phase: prepare), then one job switches them all
(phase: switch); every job derives the same release id from the build (plan.new_release). What happens on the
hosts is atomic.py's and release.py's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sshipit.errors import SettingsError
from sshipit.rules import release_name
from sshipit.settings import Values, parse_bool

if TYPE_CHECKING:
    from sshipit.hosts import HostSpec

PHASES = ("all", "prepare", "switch")
_SHARD = re.compile(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N`, 1-based: this job's share of N."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise SettingsError(f"shard: {text!r} is not K/N (this job's number, from 1, and how many jobs)",
                            setting="shard", hint="write e.g. 2/8; GitHub: ${{ strategy.job-index + 1 }}/"
                            "${{ strategy.job-total }}")
    number, total = int(match.group(1)), int(match.group(2))
    if number == 0 or total == 0:
        raise SettingsError(f"shard: {text.strip()!r}: shards count from 1", setting="shard",
                            hint="GitHub's strategy.job-index starts at 0: write "
                            "${{ strategy.job-index + 1 }}/${{ strategy.job-total }}")
    if number > total:
        raise SettingsError(f"shard: {text.strip()!r}: there is no shard {number} of {total}", setting="shard",
                            hint=f"K goes from 1 to {total}")
    return number, total


def shard_hosts(hosts: list[HostSpec], number: int, total: int) -> list[HostSpec]:
    """The `number`-th of `total` contiguous shares of the host list (sizes differ by one at most): every job
    reads the same list, so every host is in exactly one shard, whichever job runs first."""
    count = len(hosts)
    return hosts[(number - 1) * count // total: number * count // total]


def read_rollback(values: Values) -> tuple[bool, str | None]:
    """rollback: true/false, or the id of the release to switch to (back or forward)."""
    text = (values.text("rollback") or "false").strip()
    try:
        return parse_bool(text, "rollback"), None
    except SettingsError:
        return True, release_name(text, "rollback")


def phase_settings(phase: str, values: Values, post_commands: list[str], healthcheck: str | None) -> None:
    """Settings that belong to the other phase are refused, never ignored."""
    if phase == "switch":
        for name in ("sources", "commands", "script_file", "shared"):
            if values.has(name) and (values.text(name) or "").strip():
                raise SettingsError(f"{name} belongs to phase: prepare; phase: switch only switches to the "
                                    "release the prepare jobs made", setting=name,
                                    hint=f"move {name} to the prepare jobs' settings")
    if phase == "prepare":
        for name, used in (("post_commands", post_commands), ("healthcheck", healthcheck)):
            if used:
                raise SettingsError(f"{name} runs after the switch, and phase: prepare switches nothing",
                                    setting=name, hint=f"move {name} to the switch job's settings")


def read_phase(values: Values, hosts: list[HostSpec]) -> tuple[str, tuple[int, int] | None, list[HostSpec]]:
    """The phase, the shard (K, N) if any, and the hosts this job works on (its shard's, or all)."""
    phase = (values.text("phase") or "all").strip().lower()
    if phase not in PHASES:
        raise SettingsError(f"phase: {phase!r} is not one of {', '.join(PHASES)}", setting="phase",
                            hint="prepare in every shard's job, then switch in one job that runs after them all")
    if not values.has("shard"):
        return phase, None, hosts
    shard = parse_shard(values.text("shard") or "")
    if phase != "prepare":
        raise SettingsError(f"shard picks the hosts one prepare job readies, but phase is {phase}",
                            setting="shard", hint="set phase: prepare in the sharded jobs; the switch job "
                            "names every host and no shard")
    share = shard_hosts(hosts, *shard)
    if not share:
        raise SettingsError(f"shard {shard[0]}/{shard[1]} holds no host: {len(hosts)} hosts make at most "
                            f"{len(hosts)} shards", setting="shard", hint=f"run at most {len(hosts)} shard jobs")
    return phase, shard, share
