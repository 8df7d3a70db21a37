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
import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.commands import build_script, run_commands
from sshipit.connect import connect
from sshipit.dryrun import dry_run
from sshipit.errors import DeployError, local_cause, local_file_error
from sshipit.manifest import (
    Manifest,
    compare,
    parse_server,
    plain_manifest_key,
    read_server,
    seed_removals,
    server_script,
    user_manifest_path,
    write_manifest,
)
from sshipit.plan import HostSpec, Plan, ReleaseSpec
from sshipit.release import CURRENT, FAILED, OK, RELEASES, ROLLED_BACK, ReleaseManager
from sshipit.remote import probe_then
from sshipit.report import UNKNOWN, Console, HostResult, error_line, human_bytes, ran_text
from sshipit.sftp import upload_sftp
from sshipit.upload import ManifestOut, Progress, UploadStats, remove_paths, upload_tar
from sshipit.wire import keep_spare

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
    # What the incremental comparison reads (the manifest and listing of the live files) is read-only: it goes
    # in the probe's exec, one round trip for both.
    reading: tuple[str, str] | None = None
    if releases is not None:
        if live is not None and plan.incremental:
            reading = (releases.path(RELEASES, live), releases.manifest_path(live))
    elif (plan.incremental or plan.prune) and not plan.rm:
        reading = (dest, user_manifest_path(plain_manifest_key(dest)))
    probed = await probe_then(conn, plan.connect_timeout, server_script(*reading) if reading else None)
    traits = probed.traits
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
        _sftp_prune_warning(console, host, plan)
        progress = Progress.of(entries)
        async with console.progress(host, progress):
            result.upload = await upload_sftp(conn, host, plan, entries, progress=progress)
        _report_upload(console, host, result.upload, dest)
        return dest
    if traits.tar == "none":
        console.info("the server has no tar: uploading over SFTP", host)
        _sftp_prune_warning(console, host, plan)
        progress = Progress.of(entries)
        async with console.progress(host, progress):
            result.upload = await upload_sftp(conn, host, plan, entries, dest=dest, progress=progress)
        _report_upload(console, host, result.upload, dest)
        return dest

    # Incremental: compare with the manifest of what is there (the live release, for atomic deploys).
    view = None
    gzip = "gzip" in traits.tools  # the manifest and the server's listing travel compressed
    if reading is not None:
        if probed.after is not None:
            view = parse_server(probed.after, probed.exit_status, probed.gzip)
        else:  # the probe's answer was cut short: read again, on its own
            view = await read_server(conn, *reading, plan.connect_timeout, gzip)
    if view is not None and view.problem:  # the file is the login's to write: never trusted, never fatal
        console.warn(f"the manifest of the last deploy is unusable ({view.problem}): uploading everything", host)
    delta = compare(entries, view, plan.delete if releases is None else ())
    send = delta.send if plan.incremental else entries
    if releases is not None:
        seeded = view is not None and view.manifest is not None
        removals = seed_removals(entries, delta, view) if seeded and view is not None else None
        dest = await releases.create(releases.spec, seed=live if seeded else None, removals=removals)
        manifest_path = releases.manifest_path(releases.spec.id)
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


def _sftp_prune_warning(console: Console, host: HostSpec, plan: Plan) -> None:
    if plan.prune:  # said, not silently ignored: SFTP keeps no manifest, so it cannot know which files were ours
        console.warn("prune is not possible over SFTP (no manifest is kept there): files that left the build stay",
                     host)


def _report_upload(console: Console, host: HostSpec, stats: UploadStats, dest: str) -> None:
    text = (f"uploaded {stats.files} files ({human_bytes(stats.bytes)}) to {dest} over {stats.method}, "
            f"{human_bytes(stats.wire_bytes or stats.bytes)} sent")
    if stats.skipped_files:
        text += f"; {stats.skipped_files} unchanged files ({human_bytes(stats.skipped_bytes)}) not sent"
    if stats.removed:
        text += f"; pruned {stats.removed} stale files"
    console.phase(host, "upload", text, stats.seconds)


async def _commands(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, commands: list[str], cwd: str | None,
    setting: str, timeout: float | None = None, label: str = "",
) -> None:
    if plan.debug:
        console.block("remote script:", build_script(plan, "NONCE", commands, cwd), host)
    try:
        outcome = await run_commands(
            conn, host, plan, commands, cwd,
            emit=lambda line: console.output(host, label + line),
            show_command=lambda n: console.command(host, commands[n - 1], label),
            timeout=timeout,
        )
    except DeployError as exc:
        exc.phase = setting  # which run it was (post_commands, the health check), not just "commands"
        raise
    if outcome.timed_out:
        limit = plan.command_timeout if timeout is None else timeout
        what, hint = " and was stopped", "raise the timeout or make the command end"
        if outcome.unstopped:  # never claim a stop the server did not confirm
            what = f"; {outcome.unstopped}, so whether it is still running is unknown"
            hint = "check the server (and that command) before deploying again"
            if not conn.is_closed():
                # A run that may still go on (most often: a server that stopped answering, where every later step,
                # clean-up or switching back, would only wait for the keepalives to give up): nothing more is done
                # on this host. It is given up now, and its error says what is known.
                conn.abort()
                with contextlib.suppress(Exception):  # closed for every later step's check, not "soon"
                    await asyncio.wait_for(conn.wait_closed(), 2)
        raise DeployError(
            f"{host.label}: {setting} did not finish within {_seconds(limit)}s{what}",
            setting="command_timeout" if setting != "healthcheck" else "healthcheck_timeout",
            hint=hint, phase=setting, exit_status=outcome.exit_status)
    if outcome.exit_status != 0:
        raise DeployError(_failure_text(host, commands, outcome.failed, outcome.exit_status, setting, outcome.lines),
                          setting=setting, phase=setting, exit_status=outcome.exit_status)
    if setting != "healthcheck":  # the health check tells its outcome once, after its retries
        console.phase(host, setting, ran_text(commands), outcome.seconds)


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
                    directory = await _upload(conn, host, plan, console, result, "", releases=releases, live=old)
                else:
                    directory = await releases.create(spec)
                result.phase = "release"
                await releases.link_shared(new_id, plan.shared)
                if plan.commands:
                    result.phase = "commands"
                    await _commands(conn, host, plan, console, plan.commands, directory, "commands")
            except (DeployError, TimeoutError, asyncssh.Error, OSError):  # a local error too: nothing is left
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
        await _switch(releases, conn, host, result, new_id, old, None if plan.rollback else spec)
        result.release = new_id  # live now, whatever happens next
        console.phase(host, "switch", f"current -> {RELEASES}/{new_id} (was {old or 'none'})", clock() - began)
        try:
            await _after_switch(conn, host, plan, console)
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
            if loop.time() + 2 >= deadline or conn.is_closed():  # no retry over a connection that is gone
                exc.message = f"{host.label}: health check failed after {attempt} attempts: " + \
                    exc.message.removeprefix(f"{host.label}: ")
                exc.setting = "healthcheck"
                raise
        await asyncio.sleep(2)


def _seconds(value: float) -> str:
    """5, 600, 3600 or 5.9: a limit as people write it (a health check attempt gets what is left of its time)."""
    return str(int(value)) if value == int(value) else f"{value:.1f}"


async def _quietly(awaitable: object) -> None:
    """Clean-up that must not hide the error that caused it (a dead connection fails clean-up with asyncssh's
    own errors, which would otherwise replace the precise error line)."""
    import asyncssh

    with contextlib.suppress(DeployError, OSError, asyncio.TimeoutError, asyncssh.Error):
        await awaitable  # type: ignore[misc]


def _failure_text(host: HostSpec, commands: list[str], failed: list[tuple[int, int]], status: int,
                  setting: str, lines: dict[int, int] | None = None) -> str:
    """`command 2 `make` exited with status 2`; in a command of several lines, the line that failed (where the
    shell told it): `command 1, line 3 `npm ci` exited with status 1`."""
    if not failed:
        return f"{host.label}: {setting} exited with status {status}"
    parts = []
    for number, code in failed:
        line = (lines or {}).get(number)
        written = commands[number - 1]
        if line is not None and "\n" in written.strip():
            where, shown = f", line {line}", written.split("\n")[line - 1].strip()
        else:
            where, shown = "", written.strip().split("\n")[0]
        if len(shown) > 60:
            shown = shown[:57] + "..."
        what = "command" if setting == "commands" else setting.replace("_", " ").rstrip("s")
        parts.append(f"{what} {number}{where} `{shown}` exited with status {code}")
    return f"{host.label}: " + "; ".join(parts)

