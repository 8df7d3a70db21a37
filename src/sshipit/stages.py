"""The steps one host goes through, whatever the deploy's shape: the upload (incremental or full, over tar or
SFTP), a run of commands with its error line, and the health check with its retries.

Owns turning each step's outcome into a precise `DeployError` and its console lines. `session` (plain deploys) and
`atomic` (releases) call these steps in their own order over the host's one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from sshipit.commands import build_script, run_commands
from sshipit.errors import DeployError
from sshipit.listing import ListingReader, parse_server, read_server, server_script
from sshipit.manifest import Manifest, compare, seed_removals, write_manifest
from sshipit.plan import AROUND, HostSpec, Plan
from sshipit.privilege import plain_manifest_file
from sshipit.release import RELEASES, ReleaseManager
from sshipit.remote import across_a_link, probe_then
from sshipit.report import Console, HostResult, human_bytes, ran_text
from sshipit.sftp import upload_sftp
from sshipit.upload import ManifestOut, Progress, UploadStats, remove_paths, upload_tar

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.sources import Entry


async def upload_files(
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
        reading = (dest, plain_manifest_file(conn, plan.privileges, dest))
    # An atomic deploy's lock ran this probe (and reading) already, in its own exec (ReleaseManager.prefetched).
    probed = releases.prefetched(live, reading is not None) if releases is not None else None
    def local_entries() -> list[Entry]:  # read on first use (sources.Pending): while the server answers the probe
        return plan.upload.entries if plan.upload is not None else []

    if probed is None:
        listing = ListingReader(local_entries) if reading is not None else None  # read as it arrives
        probed = await probe_then(conn, plan.connect_timeout,
                                  server_script(*reading, probed=True) if reading else None, listing,
                                  packed=across_a_link(conn, plan.jumps))
    entries = local_entries()
    traits = probed.traits
    if not traits.shell or (traits.tar == "none" and releases is not None):
        if plan.commands or plan.run_once or releases is not None:
            needs = "atomic releases" if releases is not None else "commands" if plan.commands else "run_once"
            lack = "accepts SFTP only" if not traits.shell else "has no tar"
            raise DeployError(
                f"{host.label}: the account {lack}, so {needs} cannot work; nothing was uploaded",
                setting="atomic" if releases is not None else "commands" if plan.commands else "run_once",
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
        if probed.streamed and isinstance(probed.reader, ListingReader):
            view = probed.reader.view(probed.exit_status)
            probed.reader = None  # read: not kept through the upload
        elif probed.after is not None:
            view = parse_server(probed.after, probed.exit_status, probed.gzip, entries)
            probed.after = None  # read: not kept through the upload (a megabyte a host for 20,000 files)
        else:  # the probe's answer was cut short: read again, on its own
            view = await read_server(conn, *reading, plan.connect_timeout, gzip, entries)
    if view is not None and view.problem:  # the file is the login's to write: never trusted, never fatal
        console.warn(f"the manifest of the last deploy is unusable ({view.problem}): uploading everything", host)
    delta = compare(entries, view, plan.delete if releases is None else (), checksum=plan.checksum)
    send = delta.send if plan.incremental else entries
    before = ""  # what the upload's command does first (ReleaseManager.create_command)
    if releases is not None:
        seeded = view is not None and view.manifest is not None
        removals = seed_removals(entries, delta, view) if seeded and view is not None else None
        made = releases.create_command(releases.spec, seed=live if seeded else None, removals=removals)
        if made is None:  # too many removals for one command line: the release is made on its own
            dest = await releases.create(releases.spec, seed=live if seeded else None, removals=removals)
        else:  # made first by the upload's own command: two round trips fewer
            dest, before = made
        manifest_path = releases.manifest_path(releases.spec.id)
    else:
        manifest_path = plain_manifest_file(conn, plan.privileges, dest)
    old_manifest = view.manifest if view is not None else None
    in_place = releases is None and view is not None and view.exists
    view = None  # its listings of the server are done with: free them before the upload (memory of big builds)
    hashes = delta.hashes
    pruning = releases is None and plan.prune and bool(delta.stale)

    def manifest_now() -> Manifest:  # complete once the upload has hashed what it sent
        manifest = Manifest.of(entries, hashes, old_manifest, delta.trusted)  # this host's own word first
        if releases is None and not plan.prune and old_manifest is not None:
            manifest.carry(old_manifest, delta.stale)
        return manifest

    # Stored before any command runs: a command that edits an uploaded file then shows up as changed. It goes
    # with the upload, unless stale files are pruned after it: until they are gone, the old manifest (which
    # lists them) must stay, so that a failed prune is retried by the next deploy.
    backdate = "find-cnewer" not in traits.tools
    carried = None if pruning else ManifestOut(manifest_path, manifest_now, backdate, old_manifest,
                                               reading[1] if reading is not None else "")
    progress = Progress.of(send)
    if send or plan.rm or plan.delete or not in_place:
        async with console.progress(host, progress):
            stats = await upload_tar(conn, host, plan, traits, send, dest, clear=releases is None, hashes=hashes,
                                     progress=progress, manifest=carried, before=before)
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



async def run_step(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, commands: list[str], cwd: str | None,
    setting: str, timeout: float | None = None, label: str = "", make_cwd: bool = True,
) -> None:
    if plan.debug:
        console.block("remote script:", build_script(plan, "NONCE", commands, cwd, make_cwd), host)
    try:
        outcome = await run_commands(
            conn, host, plan, commands, cwd,
            emit=lambda line: console.output(host, label + line),
            show_command=lambda n: console.command(host, commands[n - 1], label),
            timeout=timeout, make_cwd=make_cwd,
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
                          setting=setting, phase=setting, exit_status=outcome.exit_status,
                          hint="the command's output above shows why" if setting in AROUND else None)
    if setting != "healthcheck":  # the health check tells its outcome once, after its retries
        console.phase(host, setting, ran_text(commands), outcome.seconds)



async def health_check(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, current: str) -> None:
    """Retry the health check until it passes or healthcheck_timeout runs out."""
    assert plan.healthcheck is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.healthcheck_timeout
    attempt = 0
    while True:
        attempt += 1
        remaining = max(1.0, deadline - loop.time())
        try:
            await run_step(conn, host, plan, console, [plan.healthcheck], current, "healthcheck",
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


async def quietly(awaitable: object) -> None:
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
        if setting in AROUND:  # `run_once: command 1`, not `run once 1`: the error line names the hook before
            what = "command"
        parts.append(f"{what} {number}{where} `{shown}` exited with status {code}")
    return f"{host.label}: " + "; ".join(parts)
