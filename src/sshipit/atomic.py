"""Atomic releases across the hosts of one batch: every host prepares a new release, none switches unless all
prepared, and every host switches back if any host's new release is unhealthy.

Per host: lock -> before_upload -> upload into a new release -> shared links -> commands -> (every host
prepared?) -> run_once on the first host (hooks.Once; the others wait) -> switch `current` -> post_commands ->
health check -> (every host healthy? else switch back, then after_rollback) -> prune -> unlock.
Owns the order of those steps and the meeting points (`Gate`, `Fleet`) where the hosts wait for each other;
release.py owns the remote operations themselves.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.errors import DeployError
from sshipit.hooks import Once, after_rollback, before_upload, know_releases
from sshipit.plan import HostSpec, Plan, ReleaseSpec
from sshipit.release import COMPLETE, CURRENT, FAILED, OK, PREPARED, RELEASES, ROLLED_BACK, HostState, ReleaseManager
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
    once: Once | None = None  # run_once, shared by every batch of the deploy (hooks.py)

    def arrive(self, gate: str, host: HostSpec, ok: bool) -> None:
        seen = self.arrived.setdefault(host.label, set())
        if gate not in seen:
            seen.add(gate)
            (self.prepared if gate == "prepared" else self.healthy).arrive(ok, host.label)

    def leave(self, host: HostSpec) -> None:
        """A host that stops early still arrives everywhere, as failed, so nobody waits for it."""
        self.arrive("prepared", host, False)
        self.arrive("healthy", host, False)


def single_fleet(parallel: bool, hosts: int, once: Once | None = None) -> Fleet:
    return Fleet(Gate(hosts), Gate(hosts), asyncio.Semaphore(hosts if parallel else 1), once=once)


class Collateral(DeployError):
    """This host was fine, but another host's failure stopped it (it does not decide the exit status)."""


async def deploy_atomic(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, result: HostResult, fleet: Fleet
) -> None:
    releases = ReleaseManager(conn, host, plan)
    spec = plan.release
    result.phase = "release"
    async with fleet.work:
        # The upload's probe (and listing of the live release) runs in the lock's exec: one round trip fewer.
        # Not when before_upload commands run in between: what they change must be seen by the listing.
        uploads = plan.upload is not None and not (plan.rollback or plan.phase == "switch" or plan.before_upload)
        await releases.lock(spec, plan.lock_timeout, probe=uploads, listing=uploads and plan.incremental)
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
        made = False  # new_id's directory is this run's: a failure before the switch removes it
        existing = plan.rollback or plan.phase == "switch"  # switch to a release the host holds already
        if existing:
            new_id = chosen_release(host, plan, state)
            found = state.find(new_id)
            if plan.phase == "switch" and found is not None:  # its metadata (commit, build, times) is kept
                spec = found.spec(spec)
        else:
            new_id = spec.id
            know_releases(plan, releases, new_id, old)
            kept = await releases.take_over(state, spec)
            if kept is not None:
                console.info(f"release {new_id}: {kept}", host)
            if kept is None or kept.startswith("replaced"):
                made = True
                try:
                    await before_upload(conn, host, plan, console, result, releases.target)
                    if plan.upload is not None:
                        directory = await upload_files(conn, host, plan, console, result, "", releases=releases,
                                                       live=old)
                    else:
                        directory = await releases.create(spec)
                    result.phase = "release"
                    await releases.link_shared(new_id, plan.shared)
                    if plan.commands:
                        result.phase = "commands"
                        await run_step(conn, host, plan, console, plan.commands, directory, "commands")
                    if plan.phase == "prepare":  # complete: kept for the switch job (remove_leftovers spares it)
                        result.phase = "release"
                        await releases.mark(new_id, spec, PREPARED)
                except (DeployError, TimeoutError, asyncssh.Error, OSError):  # a local error too: nothing is left
                    await quietly(releases.discard(new_id))
                    raise
            console.phase(host, "release", f"release {new_id} prepared", clock() - began)
    know_releases(plan, releases, new_id, old)
    fleet.arrive("prepared", host, True)
    everywhere = await fleet.prepared.wait()
    if plan.phase == "prepare":  # complete and kept whatever the other hosts did: the switch job checks them all
        console.info(f"release {new_id} is ready; nothing was switched (phase: prepare)", host)
        return
    if not everywhere:
        if made:
            await quietly(releases.discard(new_id))
        lacking = f"cannot switch to release {new_id} (see their errors)" if existing else "failed to prepare"
        raise Collateral(
            f"{host.label}: not switched, because {', '.join(fleet.prepared.failed)} {lacking}; "
            f"current is unchanged ({old or 'none'})", setting="host", phase="release")
    if plan.check_only:  # deploy.py's check of every host before the first batch of a switch
        console.info(f"release {new_id} is complete here", host)
        return
    await _run_once(releases, conn, host, plan, console, result, fleet, new_id, old, made)

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
            if new_id != old:
                await quietly(releases.mark(new_id, spec, FAILED))
            console.info(f"current -> {f'{RELEASES}/{old}' if old else 'removed'} (switched back from {new_id})",
                         host)
            if old is not None and plan.post_commands:
                await quietly(run_step(conn, host, plan, console, plan.post_commands, releases.path(CURRENT),
                                         "post_commands"))
            await after_rollback(conn, host, plan, console, releases, old, new_id, strict=False)
        if problem is not None:
            problem.message += f"; switched back to {old or 'no release'}"
            raise problem
        raise Collateral(f"{host.label}: switched back to {old or 'no release'} because "
                         f"{', '.join(fleet.healthy.failed)} failed after the switch", phase="health")
    async with fleet.work:
        if plan.rollback:
            assert old is not None
            if old != new_id:
                await releases.mark(old, None, ROLLED_BACK)
            console.info(f"rolled back from {old} to {new_id}" if old != new_id else f"{new_id} was live already",
                         host)
            if old != new_id:
                await after_rollback(conn, host, plan, console, releases, new_id, old, strict=True)
        else:
            state.releases = [r for r in state.releases if r.id != new_id]  # live: ordered as the newest
            if new_id == spec.id:  # recorded ok, pruned and unlocked in one command
                pruned = await releases.finish(spec, state, plan.keep_releases, old)
            else:
                await releases.mark(new_id, spec, OK)
                pruned = await releases.prune(state, plan.keep_releases, new_id, old)
            if pruned:
                console.info(f"pruned {len(pruned)} old release{'s' if len(pruned) > 1 else ''}", host)
        result.release = new_id


async def _run_once(releases: ReleaseManager, conn: SSHClientConnection, host: HostSpec, plan: Plan,
                   console: Console, result: HostResult, fleet: Fleet, new_id: str, old: str | None,
                   made: bool) -> None:
    """run_once (hooks.Once), between the prepared gate and the switch: on one host, in its new release, while
    the others wait. If it fails, no host switches: each discards the new release this run made."""
    import asyncssh

    once = fleet.once
    if once is None or plan.rollback or not plan.run_once:
        return

    async def step() -> None:
        result.phase = "run_once"
        async with fleet.work:
            await run_step(conn, host, plan, console, plan.run_once, releases.path(RELEASES, new_id), "run_once")

    try:
        blocked = await once.run(host, step)
    except (DeployError, TimeoutError, asyncssh.Error, OSError):
        if made:
            await quietly(releases.discard(new_id))
        raise
    if blocked is not None:
        if made:
            await quietly(releases.discard(new_id))
        raise Collateral(f"{host.label}: not switched, because {blocked}; current is unchanged ({old or 'none'})",
                         setting="run_once", phase="release", hint=f"see run_once's error on {once.runner}")


def chosen_release(host: HostSpec, plan: Plan, state: HostState) -> str:
    """The release a rollback or a switch phase switches this host to: one it holds complete (a live one too),
    checked on every host before any switches (the prepared gate)."""
    old = state.current
    if plan.rollback and plan.rollback_to is None:
        if old is None:
            raise DeployError(f"{host.label}: there is no current release to roll back from",
                              setting="rollback", phase="release")
        back = state.previous_good()
        if back is None:
            raise DeployError(f"{host.label}: no earlier good release to roll back to (current is {old})",
                              setting="rollback", phase="release")
        return back
    wanted, setting = (plan.rollback_to, "rollback") if plan.rollback_to else (plan.release.id, "release_id")
    assert wanted is not None
    found = state.find(wanted)
    how = "rolled back to" if plan.rollback else "switched to"
    if found is None:
        raise DeployError(f"{host.label}: release {wanted} is not on this host, so no host is {how} it",
                          setting=setting, hint="prepare it on every host first (phase: prepare), or name a "
                          "release every host holds" if not plan.rollback else "name a release every host holds "
                          "(ls releases/ on the hosts)", phase="release")
    if found.result not in COMPLETE and wanted != old:
        raise DeployError(f"{host.label}: release {wanted} is not complete on this host (its state: "
                          f"{found.result or 'unreadable'}), so no host is {how} it", setting=setting,
                          hint="prepare it again (phase: prepare replaces an incomplete release)", phase="release")
    return wanted


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
