"""One host, start to finish, over a single SSH connection.

Plain mode: connect -> upload into target -> commands. Atomic mode: connect, then atomic.py's release steps.

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
from sshipit.plan import HostSpec, Plan
from sshipit.report import Console, HostResult, error_line
from sshipit.stages import run_step, upload_files
from sshipit.wire import keep_spare

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection


async def deploy_host(host: HostSpec, plan: Plan, console: Console, fleet: Fleet | None = None) -> HostResult:
    import asyncssh

    fleet = fleet or single_fleet(True, 1)
    if host.target is not None and host.target != plan.target:  # its own target (inventory, host map)
        plan = dataclasses.replace(plan, target=host.target)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = HostResult(host=host, ok=False, seconds=0.0)
    try:
        try:
            await _deploy_host(host, plan, console, fleet, result)
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            local = local_cause(exc)
            if local is not None:  # a file on this machine could not be read: which, and why; not the network
                raise local_file_error(local.filename, local, phase=result.phase) from exc
            # A stage met a dead connection outside its own error handling: say where, not how.
            what = f"{type(exc).__name__}: {exc}" if plan.debug else "the connection was lost"
            raise DeployError(f"{host.label}: {what} during {result.phase or 'the deploy'}", setting="host",
                              hint="check the network and the server; running the deploy again is safe"
                              if plan.atomic else "check the network and the server, then deploy again",
                              phase=result.phase) from exc
    except DeployError as exc:
        result.error = error_line(exc, host.label, result.phase)
        result.phase = exc.phase or result.phase
        result.exit_status = exc.exit_status
        result.collateral = isinstance(exc, Collateral)
        console.error(result.error, host)
    finally:
        fleet.leave(host)
        result.seconds = loop.time() - started
    return result


async def _deploy_host(host: HostSpec, plan: Plan, console: Console, fleet: Fleet, result: HostResult) -> None:
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
        if plan.dry_run:
            async with fleet.work:
                await dry_run(conn, host, plan, console)
        elif plan.atomic:
            await deploy_atomic(conn, host, plan, console, result, fleet)
        else:
            async with fleet.work:
                await deploy_plain(conn, host, plan, console, result)
    result.ok = True


async def deploy_plain(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, result: HostResult
) -> None:
    if plan.upload is not None or plan.rm or plan.delete:
        await upload_files(conn, host, plan, console, result, plan.target or ".")
    if plan.commands:
        result.phase = "commands"
        await run_step(conn, host, plan, console, plan.commands, plan.target, "commands")
