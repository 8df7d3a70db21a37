"""`sshipit plan` (dry_run): what a deploy would do on one host, told from reading the server only.

Owns the plan listing: what would be uploaded, removed, linked, switched, pruned and run. It takes no lock and
writes no directory, manifest or file; the connection is the session's.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from sshipit.errors import DeployError
from sshipit.inventory import describe
from sshipit.manifest import compare, plain_manifest_key, read_server, user_manifest_path
from sshipit.release import RELEASES, SHARED, ReleaseManager
from sshipit.remote import probe
from sshipit.report import Console, human_bytes

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.hosts import HostSpec
    from sshipit.plan import Plan


async def dry_run(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console) -> None:
    """Say what a deploy would do, reading the server only: no lock, no directory, no manifest is written."""

    def say(text: str) -> None:
        console.info("plan: " + text, host)

    for line in describe(host, plan.jumps):  # its own settings: inventory, ssh_config, agent
        say(line)

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
