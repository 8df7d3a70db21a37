"""Atomic releases across the hosts of one batch: every host prepares a new release, none switches unless all
prepared, and every host switches back if any host's new release is unhealthy.

Per host: lock -> upload into a new release -> shared links -> commands -> (every host prepared?) -> switch
`current` -> post_commands -> health check -> (every host healthy? else switch back) -> prune -> unlock.
Owns the order of those steps and the meeting points (`Gate`, `Fleet`) where the hosts wait for each other;
release.py owns the remote operations themselves.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.errors import DeployError
from sshipit.plan import HostSpec, Plan, ReleaseSpec
from sshipit.release import CURRENT, FAILED, OK, RELEASES, ROLLED_BACK, ReleaseManager
from sshipit.report import UNKNOWN, Console, HostResult
from sshipit.stages import health_check, quietly, run_step, upload_files

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection


class Gate:
    """Every host arrives once; each then learns whether all of them got there in good shape."""

    def __init__(self, parties: int) -> None:
        self._left = parties
        self._event = asyncio.Event()
        self.failed: list[str] = []
        if parties <= 0:
            self._event.set()

    def arrive(self, ok: bool, label: str) -> None:
        if not ok:
            self.failed.append(label)
        self._left -= 1
        if self._left <= 0:
            self._event.set()

    async def wait(self) -> bool:
        await self._event.wait()
        return not self.failed


@dataclass
class Fleet:
    """What the hosts of one deploy share: the two meeting points and how many may work at once."""

    prepared: Gate
    healthy: Gate
    work: asyncio.Semaphore
    arrived: dict[str, set[str]] = field(default_factory=dict)

    def arrive(self, gate: str, host: HostSpec, ok: bool) -> None:
        seen = self.arrived.setdefault(host.label, set())
        if gate not in seen:
            seen.add(gate)
            (self.prepared if gate == "prepared" else self.healthy).arrive(ok, host.label)

    def leave(self, host: HostSpec) -> None:
        """A host that stops early still arrives everywhere, as failed, so nobody waits for it."""
        self.arrive("prepared", host, False)
        self.arrive("healthy", host, False)


def single_fleet(parallel: bool, hosts: int) -> Fleet:
    return Fleet(Gate(hosts), Gate(hosts), asyncio.Semaphore(hosts if parallel else 1))


class Collateral(DeployError):
    """This host was fine, but another host's failure stopped it (it does not decide the exit status)."""


async def deploy_atomic(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, result: HostResult, fleet: Fleet
) -> None:
    releases = ReleaseManager(conn, host, plan)
    spec = plan.release
    result.phase = "release"
    async with fleet.work:
        await releases.lock(spec, plan.lock_timeout)
    try:
        await _atomic_locked(releases, conn, host, plan, console, result, fleet)
    finally:
        await releases.unlock()


async def _atomic_locked(
    releases: ReleaseManager, conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console,
    result: HostResult, fleet: Fleet,
) -> None:
    import asyncssh

    spec = releases.spec  # final: the lock is held
    new_id: str | None = None
    clock = asyncio.get_running_loop().time
    began = clock()  # for the release phase's duration
    async with fleet.work:
        state = await releases.state()
        leftovers = await releases.remove_leftovers(state)
        if leftovers:
            console.info(f"removed unfinished release{'s' if len(leftovers) > 1 else ''} {', '.join(leftovers)}",
                         host)
        old = state.current
        if plan.rollback:
            if old is None:
                raise DeployError(f"{host.label}: there is no current release to roll back from",
                                  setting="rollback", phase="release")
            new_id = state.previous_good()
            if new_id is None:
                raise DeployError(f"{host.label}: no earlier good release to roll back to (current is {old})",
                                  setting="rollback", phase="release")
        else:
            new_id = spec.id
            try:
                if plan.upload is not None:
                    directory = await upload_files(conn, host, plan, console, result, "", releases=releases, live=old)
                else:
                    directory = await releases.create(spec)
                result.phase = "release"
                await releases.link_shared(new_id, plan.shared)
                if plan.commands:
                    result.phase = "commands"
                    await run_step(conn, host, plan, console, plan.commands, directory, "commands")
            except (DeployError, TimeoutError, asyncssh.Error, OSError):  # a local error too: nothing is left
                await quietly(releases.discard(new_id))
                raise
            console.phase(host, "release", f"release {new_id} prepared", clock() - began)
    fleet.arrive("prepared", host, True)
    if not await fleet.prepared.wait():
        if not plan.rollback:
            await quietly(releases.discard(new_id))
        raise Collateral(
            f"{host.label}: not switched, because {', '.join(fleet.prepared.failed)} failed to prepare; "
            f"current is unchanged ({old or 'none'})", setting="host", phase="release")

    problem: DeployError | None = None
    result.phase = "switch"
    async with fleet.work:
        began = clock()
        await _switch(releases, conn, host, result, new_id, old, None if plan.rollback else spec)
        result.release = new_id  # live now, whatever happens next
        console.phase(host, "switch", f"current -> {RELEASES}/{new_id} (was {old or 'none'})", clock() - began)
        try:
            await after_switch(conn, host, plan, console)
        except DeployError as exc:
            problem = exc
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            problem = DeployError(f"{host.label}: the connection was lost after the switch", setting="host",
                                  phase="post_commands" if plan.post_commands else "health")
            problem.__cause__ = exc
    fleet.arrive("healthy", host, problem is None)
    all_healthy = await fleet.healthy.wait()
    if problem is not None or not all_healthy:
        if plan.rollback:
            if problem is not None:
                raise problem
            raise Collateral(f"{host.label}: rolled back to {new_id}, but {', '.join(fleet.healthy.failed)} "
                             "failed", phase="health")
        reason = problem or Collateral(f"{host.label}: {', '.join(fleet.healthy.failed)} failed after the switch",
                                       phase="health")
        if conn.is_closed():
            # Nothing can be switched back over a connection that is gone: say that the new release is live
            # (its metadata says so too: SWITCHED), never that the previous one stays.
            reason.message += f"; current still points to {new_id}: the connection is gone, so it was not " \
                              "switched back"
            reason.hint = reason.hint or "check the server, then deploy again or roll back"
            raise reason
        async with fleet.work:
            try:
                await _switch(releases, conn, host, result, old, new_id)
            except DeployError as exc:
                reason.message += "; " + exc.message.removeprefix(f"{host.label}: ")
                reason.hint = exc.hint
                raise reason from exc
            result.release = None  # the previous release is live again
            await quietly(releases.mark(new_id, spec, FAILED))
            console.info(f"current -> {f'{RELEASES}/{old}' if old else 'removed'} (switched back from {new_id})",
                         host)
            if old is not None and plan.post_commands:
                await quietly(run_step(conn, host, plan, console, plan.post_commands, releases.path(CURRENT),
                                         "post_commands"))
        if problem is not None:
            problem.message += f"; switched back to {old or 'no release'}"
            raise problem
        raise Collateral(f"{host.label}: switched back to {old or 'no release'} because "
                         f"{', '.join(fleet.healthy.failed)} failed after the switch", phase="health")
    async with fleet.work:
        if plan.rollback:
            assert old is not None
            await releases.mark(old, None, ROLLED_BACK)
            console.info(f"rolled back from {old} to {new_id}", host)
        else:
            await releases.mark(new_id, spec, OK)
            state.releases = [r for r in state.releases if r.id != new_id]
            pruned = await releases.prune(state, plan.keep_releases, new_id, old)
            if pruned:
                console.info(f"pruned {len(pruned)} old release{'s' if len(pruned) > 1 else ''}", host)
        result.release = new_id


async def _switch(releases: ReleaseManager, conn: SSHClientConnection, host: HostSpec, result: HostResult,
                  to: str | None, was: str | None, spec: ReleaseSpec | None = None) -> None:
    """Point `current` at `to` (None: no release); the caller then says in `result.release` what is live.

    A switch command that ran and failed leaves `current` as it was; one whose answer never came (the connection
    was lost meanwhile) may or may not have renamed it: UNKNOWN, said so, never guessed. `spec`: the new
    release's, whose metadata then says it is live (ReleaseManager.switch)."""
    import asyncssh

    target = f"{RELEASES}/{to}" if to else "no release"
    if conn.is_closed():  # nothing was sent
        raise DeployError(f"{host.label}: the connection was lost before current could be switched to {target}",
                          setting="host", hint="check the network and the server", phase="switch")
    try:
        await releases.switch(to, spec)
    except (DeployError, TimeoutError, asyncssh.Error, OSError) as exc:
        if isinstance(exc, DeployError) and not conn.is_closed():  # it ran, and failed: nothing changed
            exc.message += f"; current still points to {f'{RELEASES}/{was}' if was else 'no release'}"
            exc.phase = "switch"
            raise
        result.release = UNKNOWN
        raise DeployError(
            f"{host.label}: the connection was lost while current was switched to {target}: it may point there "
            f"or still to {f'{RELEASES}/{was}' if was else 'no release'}", setting="host",
            hint=f"look where {releases.path(CURRENT)} points before deploying again", phase="switch") from exc


async def after_switch(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console) -> None:
    assert plan.target is not None
    current = posixpath.join(plan.target, CURRENT)
    if plan.post_commands:
        await run_step(conn, host, plan, console, plan.post_commands, current, "post_commands")
    if plan.healthcheck:
        await health_check(conn, host, plan, console, current)
