"""One host, start to finish, over a single SSH connection.

Plain mode: connect -> before_upload -> upload into target -> run_once (on the first host; the others' commands
wait for it) -> commands. Atomic mode: connect, then atomic.py's release steps. A host that failed itself runs
on_failure (hooks.py) over its connection, if that still works.

Owns opening the host's one connection (passed to every step; no step opens another), choosing the deploy's
shape, and turning what happened into a `HostResult`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from sshipit.atomic import Collateral, Fleet, deploy_atomic, single_fleet
from sshipit.connect import connect
from sshipit.dryrun import dry_run
from sshipit.errors import DeployError, local_cause, local_file_error
from sshipit.hooks import Once, before_upload, host_facts, on_failure
from sshipit.plan import HostSpec, Plan
from sshipit.privilege import become
from sshipit.report import Console, HostResult, error_line
from sshipit.sources import sources_failure
from sshipit.stages import run_step, upload_files
from sshipit.wire import keep_spare

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection


async def deploy_host(host: HostSpec, plan: Plan, console: Console, fleet: Fleet | None = None) -> HostResult:
    import asyncssh

    fleet = fleet or single_fleet(True, 1)
    if host.target is not None and host.target != plan.target:  # its own target (inventory, host map)
        plan = dataclasses.replace(plan, target=host.target)
    plan = dataclasses.replace(plan, facts=host_facts(host, plan))  # its own: atomic.py fills in the releases
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = HostResult(host=host, ok=False, seconds=0.0)
    try:
        try:
            await _deploy_host(host, plan, console, fleet, result)
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            if sources_failure(plan.upload, exc):
                raise
            raise _explained(exc, host, plan, result) from exc
    except DeployError as exc:
        if sources_failure(plan.upload, exc):
            raise  # a setting's error, found on first use: the deploy's one line (cli.py), no host's
        result.error = error_line(exc, host.label, result.phase)
        result.phase = exc.phase or result.phase
        result.exit_status = exc.exit_status
        result.collateral = isinstance(exc, Collateral)
        console.error(result.error, host)
    finally:
        _leave(fleet, host)
        result.seconds = loop.time() - started
    return result


async def _deploy_host(host: HostSpec, plan: Plan, console: Console, fleet: Fleet, result: HostResult) -> None:
    import asyncssh

    result.phase = "connect"
    async with fleet.work:
        if plan.atomic and fleet.prepared.failed:
            raise Collateral(f"{host.label}: not attempted: {', '.join(fleet.prepared.failed)} failed first",
                             phase="connect")
        connected = await connect(host, plan)
    for warning in connected.warnings:
        console.warn(warning, host)
    console.phase(host, "connect", f"connected to {host.hostname}:{host.port} as {host.username}"
                  f"{' (host key verified)' if connected.pinned else ''}", connected.seconds)
    async with connected.conn as conn:
        if plan.upload is not None or plan.atomic or plan.rm or plan.delete:
            keep_spare(conn)  # several commands follow each other: each finds its channel open (wire.py)
        if plan.privileges.sudo or plan.privileges.owner:  # checked before anything is sent; sudo wraps each exec
            conn = await become(conn, host, plan, plan.privileges, lambda text: console.warn(text, host))
        try:
            if plan.dry_run:
                async with fleet.work:
                    await dry_run(conn, host, plan, console)
            elif plan.atomic:
                await deploy_atomic(conn, host, plan, console, result, fleet)
            else:
                async with fleet.work:
                    await deploy_plain(conn, host, plan, console, result, fleet.once)
        except (DeployError, TimeoutError, asyncssh.Error, OSError) as exc:
            if not sources_failure(plan.upload, exc):  # nothing ran: nothing to run on_failure for
                await _after_failure(conn, host, plan, console, fleet, result, exc)
            raise
    result.ok = True


def _explained(exc: BaseException, host: HostSpec, plan: Plan, result: HostResult) -> DeployError:
    """An error a stage did not explain itself, as the one line a CI log gets."""
    local = local_cause(exc)
    if local is not None:  # a file on this machine could not be read: which, and why; not the network
        return local_file_error(local.filename, local, phase=result.phase)
    # A stage met a dead connection outside its own error handling: say where, not how.
    what = f"{type(exc).__name__}: {exc}" if plan.debug else "the connection was lost"
    return DeployError(f"{host.label}: {what} during {result.phase or 'the deploy'}", setting="host",
                       hint="check the network and the server; running the deploy again is safe"
                       if plan.atomic else "check the network and the server, then deploy again",
                       phase=result.phase)


def _leave(fleet: Fleet, host: HostSpec) -> None:
    fleet.leave(host)
    if fleet.once is not None:
        fleet.once.leave(host)


async def _after_failure(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, fleet: Fleet,
                         result: HostResult, exc: BaseException) -> None:
    """on_failure, on a host that failed itself (not one stopped by another host's failure), over its connection
    if that still works; never on a dry run. The others do not wait for it."""
    if not plan.on_failure or plan.dry_run or conn.is_closed():
        return
    error = exc if isinstance(exc, DeployError) else _explained(exc, host, plan, result)
    if isinstance(error, Collateral):
        return
    _leave(fleet, host)
    await on_failure(conn, host, plan, console, error_line(error, host.label, result.phase))


async def deploy_plain(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, result: HostResult,
    once: Once | None = None,
) -> None:
    await before_upload(conn, host, plan, console, result, plan.target)
    if plan.upload is not None or plan.rm or plan.delete:
        await upload_files(conn, host, plan, console, result, plan.target or ".")
    if once is not None and plan.run_once and (once.runs_on(host) or plan.commands):
        # On the first host only; every host's commands wait for it, and do not run if it failed.
        result.phase = "run_once"
        blocked = await once.run(host, lambda: run_step(conn, host, plan, console, plan.run_once, plan.target,
                                                        "run_once"))
        if blocked is not None:
            raise Collateral(f"{host.label}: commands not run, because {blocked}", setting="run_once",
                             phase="commands", hint=f"see run_once's error on {once.runner}")
    if plan.commands:
        result.phase = "commands"
        await run_step(conn, host, plan, console, plan.commands, plan.target, "commands")
