"""`sshipit plan` (dry_run): what a deploy would do on one host, told from reading the server only.

Owns the plan listing: what would be uploaded, removed, linked, switched, pruned and run (run_once and the
hooks too: where and when). It takes no lock and
writes no directory, manifest or file; the connection is the session's.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import TYPE_CHECKING

from sshipit.atomic import chosen_release
from sshipit.errors import DeployError
from sshipit.inventory import describe
from sshipit.listing import read_server
from sshipit.manifest import compare
from sshipit.privilege import plain_manifest_file
from sshipit.release import COMPLETE, RELEASES, SHARED, ReleaseManager, prunable
from sshipit.remote import probe
from sshipit.report import Console, human_bytes

if TYPE_CHECKING:
    from collections.abc import Callable

    from asyncssh import SSHClientConnection

    from sshipit.hosts import HostSpec
    from sshipit.plan import Plan


async def dry_run(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console) -> None:
    """Say what a deploy would do, reading the server only: no lock, no directory, no manifest is written."""

    def say(text: str) -> None:
        console.info("plan: " + text, host)

    for line in describe(host, plan.jumps):  # its own settings: inventory, ssh_config, agent
        say(line)
    for line in plan.privileges.describe():  # sudo, owner, chmod: checked on the server before this (become)
        say(line)
    if plan.list_releases:  # `sshipit plan` with list_releases: the run would read, nothing more
        say(f"would only list the releases in {posixpath.join(plan.target or '.', RELEASES)} (id, created, commit, "
            "state, size), taking no lock and writing nothing")
        say("nothing was changed")
        return

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
    _before(host, plan, console, say)
    if plan.atomic:
        assert plan.target is not None
        releases = ReleaseManager(conn, host, plan)
        state = await releases.state()
        old = state.current
        if plan.rollback or plan.phase == "switch":
            try:
                chosen: str | None = chosen_release(host, plan, state)
            except DeployError as exc:
                say(f"would refuse: {exc.message.removeprefix(host.label + ': ')}")
                chosen = None
            if chosen is not None:
                say(f"would switch current from {old or 'none'} to {chosen} (it is complete here; every host is "
                    "checked before any switches)")
        else:
            view = None
            if entries and old is not None and plan.incremental:
                view = await read_server(conn, releases.path(RELEASES, old), releases.manifest_path(old),
                                         plan.connect_timeout)
            delta = compare(entries, view, checksum=plan.checksum)
            send = [e for e in delta.send if e.kind == "file"]
            seed = f", starting from a copy of {old}" if view is not None and view.manifest is not None else ""
            found = state.find(plan.release.id) if plan.release.fixed else None
            if found is not None:
                verdict = "reuse it" if found.result in COMPLETE and found.commit == plan.release.commit \
                    else "replace it"
                say(f"release {plan.release.id} is here already ({found.result or 'unreadable'}): would {verdict}")
            if found is None or found.result not in COMPLETE or found.commit != plan.release.commit:
                say(f"would create release {plan.release.id} in {releases.path(RELEASES)}{seed}")
            if entries:
                say(f"would upload {len(send)} files ({human_bytes(sum(e.size for e in send))}); "
                    f"{delta.skipped_files} unchanged files not sent")
                listing([e.name for e in send])
            for path in plan.shared:
                say(f"would link {path.rstrip('/')} -> {releases.path(SHARED, path.rstrip('/'))}")
            if plan.phase == "prepare":
                say(f"would mark it prepared and switch nothing (phase: prepare, {_share(plan)})")
            else:
                say(f"would switch current from {old or 'none'} to {plan.release.id}")
            doomed = [] if plan.phase == "prepare" else prunable(
                replace(state, releases=[r for r in state.releases if r.id != plan.release.id]),
                plan.keep_releases, plan.release.id, old)
            if doomed:
                say(f"would prune {len(doomed)} old releases: {', '.join(doomed)}")
    elif entries or plan.rm or plan.delete:
        dest = plan.target or "."
        view = None
        if (plan.incremental or plan.prune) and not plan.rm and traits is not None and traits.shell:
            view = await read_server(conn, dest, plain_manifest_file(conn, plan.privileges, dest),
                                     plan.connect_timeout)
        if plan.rm:
            say(f"would empty {dest} (rm: its contents, not the directory)")
        for path in plan.delete:
            say(f"would remove {posixpath.join(dest, path)}")
        delta = compare(entries, view, plan.delete, checksum=plan.checksum)
        send = [e for e in (delta.send if plan.incremental else entries) if e.kind == "file"]
        say(f"would upload {len(send)} files ({human_bytes(sum(e.size for e in send))}) to {dest}; "
            f"{delta.skipped_files if plan.incremental else 0} unchanged files not sent")
        listing([e.name for e in send])
        if plan.prune and delta.stale:
            say(f"would prune {len(delta.stale)} stale files")
            listing(delta.stale)
    _around(host, plan, console, say)
    for label, commands in (("commands", plan.commands), ("post_commands", plan.post_commands)):
        if commands:
            say(f"would run {label}:")
            for command in commands:
                console.command(host, command, "        ")
    if plan.healthcheck:
        say(f"would check health with: {plan.healthcheck}")
    say("nothing was changed")


def _listed(host: HostSpec, console: Console, say: Callable[[str], None], what: str, commands: list[str]) -> None:
    if commands:
        say(what + ":")
        for command in commands:
            console.command(host, command, "        ")


def _before(host: HostSpec, plan: Plan, console: Console, say: Callable[[str], None]) -> None:
    """before_upload, said first: it is the first thing a deploy would run (hooks.py)."""
    if plan.rollback:
        if plan.before_upload:
            say("before_upload would not run: a rollback deploys no new release")
        return
    _listed(host, console, say, "would run before_upload in the target, before anything is uploaded (its failure "
            "stops this host)", plan.before_upload)


def _around(host: HostSpec, plan: Plan, console: Console, say: Callable[[str], None]) -> None:
    """run_once and the other hooks (hooks.py): whether, where and when each would run on this host."""

    def run(what: str, commands: list[str]) -> None:
        _listed(host, console, say, what, commands)

    if plan.rollback:
        if plan.run_once:
            say("run_once would not run: a rollback deploys no new release")
    else:
        first = plan.hosts[0].label if plan.hosts else ""
        if plan.run_once and host.label != first:
            say(f"run_once would run on {first} only; " + ("this host would not switch unless it succeeded"
                if plan.atomic else "this host's commands would wait for it, and not run if it failed"))
        elif plan.atomic:
            run("would run run_once here (the first host), in the new release, once every host prepared and "
                "before any switches; if it failed, no host would switch", plan.run_once)
        else:
            run("would run run_once here (the first host), after its upload and before any host's commands",
                plan.run_once)
    run("if this host failed, would run on_failure in the target (SSHIPIT_ERROR: the error line)", plan.on_failure)
    run("after a switch back, would run after_rollback in current", plan.after_rollback)
    facts = ", ".join(name for name, _value, _path in plan.facts.exports())
    if plan.commands or plan.post_commands or plan.healthcheck or plan.run_once or plan.before_upload \
            or plan.on_failure or plan.after_rollback:
        say(f"the commands would be told {facts} (and SSHIPIT_ERROR in on_failure)")


def _share(plan: Plan) -> str:
    if plan.shard is None:
        return "every host"
    return f"shard {plan.shard[0]}/{plan.shard[1]}: {len(plan.hosts)} of {plan.all_hosts} hosts"
