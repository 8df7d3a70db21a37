"""One host, start to finish, over a single SSH connection.

Plain mode: connect -> upload into target -> commands.
Atomic mode: connect -> lock -> upload into a new release -> shared links -> commands -> (every host prepared?)
-> switch `current` -> post_commands -> health check -> (every host healthy? else switch back) -> prune -> unlock.

Owns the order of the stages on a host and turning what happened into a `HostResult`. The connection is opened
here once and passed to every stage; no stage opens another. Hosts meet at `Gate`s so that no host switches
unless every host prepared, and every host switches back if any host's new release is unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.commands import build_script, run_commands
from sshipit.connect import connect
from sshipit.errors import DeployError
from sshipit.manifest import (
    Manifest,
    compare,
    plain_manifest_key,
    read_server,
    seed_removals,
    user_manifest_path,
    write_manifest,
)
from sshipit.plan import HostSpec, Plan
from sshipit.release import CURRENT, FAILED, OK, RELEASES, ROLLED_BACK, SHARED, ReleaseManager
from sshipit.remote import probe
from sshipit.report import Console, HostResult, error_line, human_bytes
from sshipit.upload import ManifestOut, Progress, UploadStats, remove_paths, upload_sftp, upload_tar

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


async def deploy_host(host: HostSpec, plan: Plan, console: Console, fleet: Fleet | None = None) -> HostResult:
    import asyncssh

    fleet = fleet or single_fleet(True, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = HostResult(host=host, ok=False, seconds=0.0)
    try:
        try:
            await _deploy_host(host, plan, console, fleet, result)
        except (TimeoutError, asyncssh.Error, OSError) as exc:
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
        if plan.dry_run:
            async with fleet.work:
                await _dry_run(conn, host, plan, console)
        elif plan.atomic:
            await _atomic(conn, host, plan, console, result, fleet)
        else:
            async with fleet.work:
                await _plain(conn, host, plan, console, result)
    result.ok = True


async def _upload(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, result: HostResult, dest: str,
    releases: ReleaseManager | None = None, live: str | None = None,
) -> str:
    """Send what must travel; returns the directory it went into (for atomic deploys, the new release)."""
    result.phase = "upload"
    traits = await probe(conn, plan.connect_timeout)
    entries = plan.upload.entries if plan.upload is not None else []
    if not traits.shell or (traits.tar == "none" and releases is not None):
        if plan.commands or releases is not None:
            needs = "atomic releases" if releases is not None else "commands"
            lack = "accepts SFTP only" if not traits.shell else "has no tar"
            raise DeployError(
                f"{host.label}: the account {lack}, so {needs} cannot work; nothing was uploaded",
                setting="atomic" if releases is not None else "commands",
                hint="give the user a shell with tar, or deploy plain files without commands", phase="upload")
        console.info("the account has no shell: uploading over SFTP", host)
        progress = Progress.of(entries)
        async with console.progress(host, progress):
            result.upload = await upload_sftp(conn, host, plan, entries, progress=progress)
        _report_upload(console, host, result.upload, dest)
        return dest
    if traits.tar == "none":
        console.info("the server has no tar: uploading over SFTP", host)
        progress = Progress.of(entries)
        async with console.progress(host, progress):
            result.upload = await upload_sftp(conn, host, plan, entries, dest=dest, progress=progress)
        _report_upload(console, host, result.upload, dest)
        return dest

    # Incremental: compare with the manifest of what is there (the live release, for atomic deploys).
    view = None
    gzip = "gzip" in traits.tools  # the manifest and the server's listing travel compressed
    if releases is not None:
        if live is not None and plan.incremental:
            view = await read_server(conn, releases.path(RELEASES, live), releases.manifest_path(live),
                                     plan.connect_timeout, gzip)
    elif (plan.incremental or plan.prune) and not plan.rm:
        view = await read_server(conn, dest, user_manifest_path(plain_manifest_key(dest)), plan.connect_timeout,
                                 gzip)
    delta = compare(entries, view, plan.delete if releases is None else ())
    send = delta.send if plan.incremental else entries
    if releases is not None:
        seeded = view is not None and view.manifest is not None
        removals = seed_removals(entries, delta, view) if seeded and view is not None else None
        dest = await releases.create(plan.release, seed=live if seeded else None, removals=removals)
        manifest_path = releases.manifest_path(plan.release.id)
    else:
        manifest_path = user_manifest_path(plain_manifest_key(dest))
    old_manifest = view.manifest if view is not None else None
    in_place = releases is None and view is not None and view.exists
    view = None  # its listings of the server are done with: free them before the upload (memory of big builds)
    hashes = delta.hashes
    pruning = releases is None and plan.prune and bool(delta.stale)

    def manifest_now() -> Manifest:  # complete once the upload has hashed what it sent
        manifest = Manifest.of(entries, hashes)
        if releases is None and not plan.prune and old_manifest is not None:
            manifest.carry(old_manifest, delta.stale)
        return manifest

    # Stored before any command runs: a command that edits an uploaded file then shows up as changed. It goes
    # with the upload, unless stale files are pruned after it: until they are gone, the old manifest (which
    # lists them) must stay, so that a failed prune is retried by the next deploy.
    backdate = "find-cnewer" not in traits.tools
    carried = None if pruning else ManifestOut(manifest_path, manifest_now, backdate)
    progress = Progress.of(send)
    if send or plan.rm or plan.delete or not in_place:
        async with console.progress(host, progress):
            stats = await upload_tar(conn, host, plan, traits, send, dest, clear=releases is None, hashes=hashes,
                                     progress=progress, manifest=carried)
    else:  # nothing to send to a target that is there: not even a command to run
        stats = UploadStats("tar")
    if plan.incremental:
        stats.skipped_files, stats.skipped_bytes = delta.skipped_files, delta.skipped_bytes
    if pruning:
        await remove_paths(conn, host, dest, delta.stale)
        stats.removed = len(delta.stale)
    if not stats.manifest_stored:
        manifest = manifest_now()
        # Unchanged (no file sent, none pruned, same list): the manifest on the server is still exact, and it
        # keeps its time, which is what tells later deploys which server files were edited since.
        if not (in_place and stats.files == 0 and manifest == old_manifest):
            await write_manifest(conn, manifest_path, manifest, plan.connect_timeout, gzip, backdate=backdate)
    old_manifest = None
    result.upload = stats
    _report_upload(console, host, stats, dest)
    return dest


def _report_upload(console: Console, host: HostSpec, stats: UploadStats, dest: str) -> None:
    text = f"uploaded {stats.files} files ({human_bytes(stats.bytes)}) to {dest} over {stats.method}"
    if stats.skipped_files:
        text += f"; {stats.skipped_files} unchanged files ({human_bytes(stats.skipped_bytes)}) not sent"
    if stats.removed:
        text += f"; pruned {stats.removed} stale files"
    console.phase(host, "upload", text, stats.seconds)


async def _dry_run(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console) -> None:
    """Say what a deploy would do, reading the server only: no lock, no directory, no manifest is written."""

    def say(text: str) -> None:
        console.info("plan: " + text, host)

    def listing(names: list[str], limit: int = 20) -> None:
        for name in names[:limit]:
            console.info(f"        {name}", host)
        if len(names) > limit:
            console.info(f"        ... and {len(names) - limit} more", host)

    entries = plan.upload.entries if plan.upload is not None else []
    traits = await probe(conn, plan.connect_timeout) if entries or plan.atomic else None
    if traits is not None and not traits.shell and (plan.commands or plan.atomic):
        raise DeployError(f"{host.label}: the account accepts SFTP only, so this deploy would fail",
                          setting="commands", phase="plan")
    if plan.atomic:
        assert plan.target is not None
        releases = ReleaseManager(conn, host, plan)
        state = await releases.state()
        old = state.current
        if plan.rollback:
            back = state.previous_good()
            say(f"would switch current from {old or 'none'} back to {back or 'nothing (no earlier good release)'}")
        else:
            view = None
            if entries and old is not None and plan.incremental:
                view = await read_server(conn, releases.path(RELEASES, old), releases.manifest_path(old),
                                         plan.connect_timeout)
            delta = compare(entries, view)
            send = [e for e in delta.send if e.kind == "file"]
            seed = f", starting from a copy of {old}" if view is not None and view.manifest is not None else ""
            say(f"would create release {plan.release.id} in {releases.path(RELEASES)}{seed}")
            if entries:
                say(f"would upload {len(send)} files ({human_bytes(sum(e.size for e in send))}); "
                    f"{delta.skipped_files} unchanged files not sent")
                listing([e.name for e in send])
            for path in plan.shared:
                say(f"would link {path.rstrip('/')} -> {releases.path(SHARED, path.rstrip('/'))}")
            say(f"would switch current from {old or 'none'} to {plan.release.id}")
            kept = sorted([r.id for r in state.releases] + [plan.release.id])
            doomed = [n for n in kept[: max(0, len(kept) - plan.keep_releases)] if n not in (old, plan.release.id)]
            if doomed:
                say(f"would prune {len(doomed)} old releases: {', '.join(doomed)}")
    elif entries or plan.rm or plan.delete:
        dest = plan.target or "."
        view = None
        if (plan.incremental or plan.prune) and not plan.rm and traits is not None and traits.shell:
            view = await read_server(conn, dest, user_manifest_path(plain_manifest_key(dest)), plan.connect_timeout)
        if plan.rm:
            say(f"would empty {dest} (rm: its contents, not the directory)")
        for path in plan.delete:
            say(f"would remove {posixpath.join(dest, path)}")
        delta = compare(entries, view, plan.delete)
        send = [e for e in (delta.send if plan.incremental else entries) if e.kind == "file"]
        say(f"would upload {len(send)} files ({human_bytes(sum(e.size for e in send))}) to {dest}; "
            f"{delta.skipped_files if plan.incremental else 0} unchanged files not sent")
        listing([e.name for e in send])
        if plan.prune and delta.stale:
            say(f"would prune {len(delta.stale)} stale files")
            listing(delta.stale)
    for label, commands in (("commands", plan.commands), ("post_commands", plan.post_commands)):
        if commands:
            say(f"would run {label}:")
            for command in commands:
                console.command(host, command, "        ")
    if plan.healthcheck:
        say(f"would check health with: {plan.healthcheck}")
    say("nothing was changed")


async def _commands(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, commands: list[str], cwd: str | None,
    setting: str, timeout: float | None = None, label: str = "",
) -> None:
    if plan.debug:
        console.info("remote script:\n" + build_script(plan, "NONCE", commands, cwd), host)
    outcome = await run_commands(
        conn, host, plan, commands, cwd,
        emit=lambda line: console.output(host, label + line),
        show_command=lambda n: console.command(host, commands[n - 1], label),
        timeout=timeout,
    )
    if outcome.timed_out:
        limit = plan.command_timeout if timeout is None else timeout
        raise DeployError(
            f"{host.label}: {setting} did not finish within {limit:g}s and was stopped",
            setting="command_timeout" if setting != "healthcheck" else "healthcheck_timeout",
            hint="raise the timeout or make the command end", phase=setting, exit_status=outcome.exit_status)
    if outcome.exit_status != 0:
        raise DeployError(_failure_text(host, commands, outcome.failed, outcome.exit_status, setting),
                          setting=setting, phase=setting, exit_status=outcome.exit_status)
    if setting != "healthcheck":  # the health check tells its outcome once, after its retries
        console.phase(host, setting, f"ran {len(commands)} command{'s' if len(commands) != 1 else ''}",
                      outcome.seconds)


async def _plain(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, result: HostResult) -> None:
    if plan.upload is not None or plan.rm or plan.delete:
        await _upload(conn, host, plan, console, result, plan.target or ".")
    if plan.commands:
        result.phase = "commands"
        await _commands(conn, host, plan, console, plan.commands, plan.target, "commands")


async def _atomic(
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
    spec = plan.release
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
                    directory = await _upload(conn, host, plan, console, result, "", releases=releases, live=old)
                else:
                    directory = await releases.create(spec)
                result.phase = "release"
                await releases.link_shared(new_id, plan.shared)
                if plan.commands:
                    result.phase = "commands"
                    await _commands(conn, host, plan, console, plan.commands, directory, "commands")
            except DeployError:
                await _quietly(releases.discard(new_id))
                raise
            console.phase(host, "release", f"release {new_id} prepared", clock() - began)
    fleet.arrive("prepared", host, True)
    if not await fleet.prepared.wait():
        if not plan.rollback:
            await _quietly(releases.discard(new_id))
        raise Collateral(
            f"{host.label}: not switched, because {', '.join(fleet.prepared.failed)} failed to prepare; "
            f"current is unchanged ({old or 'none'})", setting="host", phase="release")

    problem: DeployError | None = None
    result.phase = "switch"
    async with fleet.work:
        began = clock()
        await releases.switch(new_id)
        console.phase(host, "switch", f"current -> {RELEASES}/{new_id} (was {old or 'none'})", clock() - began)
        try:
            await _after_switch(conn, host, plan, console)
        except DeployError as exc:
            problem = exc
    fleet.arrive("healthy", host, problem is None)
    all_healthy = await fleet.healthy.wait()
    if problem is not None or not all_healthy:
        if plan.rollback:
            if problem is not None:
                raise problem
            raise Collateral(f"{host.label}: rolled back to {new_id}, but {', '.join(fleet.healthy.failed)} "
                             "failed", phase="health")
        async with fleet.work:
            await releases.switch(old)
            await _quietly(releases.mark(new_id, spec, FAILED))
            console.info(f"current -> {f'{RELEASES}/{old}' if old else 'removed'} (switched back from {new_id})",
                         host)
            if old is not None and plan.post_commands:
                await _quietly(_commands(conn, host, plan, console, plan.post_commands, releases.path(CURRENT),
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


async def _after_switch(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console) -> None:
    assert plan.target is not None
    current = posixpath.join(plan.target, CURRENT)
    if plan.post_commands:
        await _commands(conn, host, plan, console, plan.post_commands, current, "post_commands")
    if plan.healthcheck:
        await _health(conn, host, plan, console, current)


async def _health(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, current: str) -> None:
    """Retry the health check until it passes or healthcheck_timeout runs out."""
    assert plan.healthcheck is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.healthcheck_timeout
    attempt = 0
    while True:
        attempt += 1
        remaining = max(1.0, deadline - loop.time())
        try:
            await _commands(conn, host, plan, console, [plan.healthcheck], current, "healthcheck",
                            timeout=remaining, label="health: ")
            console.phase(host, "health", f"health check passed (attempt {attempt})",
                          plan.healthcheck_timeout - (deadline - loop.time()))
            return
        except DeployError as exc:
            if loop.time() + 2 >= deadline:
                exc.message = f"{host.label}: health check failed after {attempt} attempts: " + \
                    exc.message.removeprefix(f"{host.label}: ")
                exc.setting = "healthcheck"
                raise
        await asyncio.sleep(2)


async def _quietly(awaitable: object) -> None:
    """Clean-up that must not hide the error that caused it (a dead connection fails clean-up with asyncssh's
    own errors, which would otherwise replace the precise error line)."""
    import asyncssh

    with contextlib.suppress(DeployError, OSError, asyncio.TimeoutError, asyncssh.Error):
        await awaitable  # type: ignore[misc]


def _failure_text(host: HostSpec, commands: list[str], failed: list[tuple[int, int]], status: int,
                  setting: str) -> str:
    if not failed:
        return f"{host.label}: {setting} exited with status {status}"
    parts = []
    for number, code in failed:
        first_line = commands[number - 1].strip().split("\n")[0]
        if len(first_line) > 60:
            first_line = first_line[:57] + "..."
        what = "command" if setting == "commands" else setting.replace("_", " ").rstrip("s")
        parts.append(f"{what} {number} `{first_line}` exited with status {code}")
    return f"{host.label}: " + "; ".join(parts)

