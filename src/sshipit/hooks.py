"""Commands around a deploy: run_once (database migrations: once per deploy, on one host, right before any host
switches) and the hooks each host runs: before_upload, on_failure, after_rollback.

Owns what each of them means: `Once`, the meeting point where one host runs run_once while the others wait for its
outcome (it runs at most once per deploy, whatever the batches); before_upload before a host changes anything;
on_failure with the host's error line (masked) in SSHIPIT_ERROR, its own failure only a warning; after_rollback
told the release that is live again. The deploy's facts are commands.Facts, exported by commands.build_script; the
moments are atomic.py's, session.py's and deploy.py's, which call these.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sshipit.commands import Facts
from sshipit.errors import DeployError
from sshipit.plan import HostSpec, Plan
from sshipit.release import CURRENT, RELEASES
from sshipit.report import Console, HostResult
from sshipit.stages import run_step

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.release import ReleaseManager


class Once:
    """run_once across the whole deploy. Before each batch, `batch()` names its first host the runner (while
    run_once has not settled); the runner runs it, every other host of the batch waits for the outcome.

    Atomic deploys meet here only after every host of the batch prepared, so the runner is there too; a batch
    that never got that far leaves run_once to the next batch (the first one that switches). Plain deploys: the
    runner's failure before it ran run_once settles it as failed, since the others' commands wait for it."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.runner: str | None = None
        self.ok = False
        self.failure: str | None = None  # why it did not succeed, for the hosts it stops: "run_once failed on web1"
        self._settled = asyncio.Event()
        self._waiting = 0

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    def batch(self, hosts: list[HostSpec]) -> None:
        if not self.settled and hosts:
            self.runner = hosts[0].label

    def runs_on(self, host: HostSpec) -> bool:
        return not self.settled and host.label == self.runner

    async def run(self, host: HostSpec, step: Callable[[], Awaitable[None]]) -> str | None:
        """The runner runs `step` (its error goes on up, and stops the others); any other host waits for it.
        None: run_once succeeded (now or before), go on; else why this host must not."""
        if self.ok:
            return None
        if self.runner is None and not self.settled:  # its runner left before (never with hosts waiting)
            self.runner = host.label
        if not self.runs_on(host):
            if not self.settled:
                self._waiting += 1
                try:
                    await self._settled.wait()
                finally:
                    self._waiting -= 1
            return None if self.ok else self.failure
        try:
            await step()
        except BaseException:
            self._settle(False, f"run_once failed on {host.label}")
            raise
        self._settle(True, None)
        return None

    def leave(self, host: HostSpec) -> None:
        """`host` is done. A runner that never ran run_once must not leave anybody waiting."""
        if self.settled or host.label != self.runner:
            return
        if self.plain or self._waiting:
            self._settle(False, f"run_once did not run ({host.label}, where it runs, stopped before it)")
        else:  # an atomic batch that never switched: the next batch's first host runs it
            self.runner = None

    def _settle(self, ok: bool, failure: str | None) -> None:
        self.ok, self.failure = ok, failure
        self._settled.set()


def host_facts(host: HostSpec, plan: Plan) -> Facts:
    """The facts a host starts with; the releases are filled in by `know_releases` once they are known."""
    target = plan.target or ""
    return Facts(host=host.label, target=target, commit=plan.release.commit, path="" if plan.atomic else target)


def know_releases(plan: Plan, releases: ReleaseManager, release: str | None, previous: str | None) -> None:
    """This host's new (or rolled back to) release and the one live before it."""
    plan.facts.release = release or ""
    plan.facts.previous = previous or ""
    plan.facts.path = releases.path(RELEASES, release) if release else ""


async def before_upload(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console,
                        result: HostResult, target: str | None) -> None:
    """Before anything is uploaded (maintenance mode): a failure stops the host with the command's status."""
    if plan.before_upload and not plan.rollback:
        result.phase = "before_upload"
        await run_step(conn, host, plan, console, plan.before_upload, target, "before_upload")


async def on_failure(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console, line: str) -> None:
    """On a host that failed, over its still open connection: told why in SSHIPIT_ERROR (masked, like every line
    sshipit prints). Its own failure is a warning: the host's error and exit status stay the deploy's."""
    import asyncssh

    told = dataclasses.replace(plan, facts=dataclasses.replace(plan.facts, error=plan.masker(line)))
    try:
        # In target if it is there; a failure that left none runs it where the login starts, never creating one.
        await run_step(conn, host, told, console, plan.on_failure, plan.target, "on_failure", make_cwd=False)
    except DeployError as exc:
        console.warn(_hook_failed("on_failure", exc, host), host)
    except (TimeoutError, asyncssh.Error, OSError):
        console.warn("on_failure did not run to its end: the connection was lost; the error above stands", host)


async def after_rollback(conn: SSHClientConnection, host: HostSpec, plan: Plan, console: Console,
                         releases: ReleaseManager, back_to: str | None, back_from: str | None, *,
                         strict: bool) -> None:
    """After `current` was switched back to `back_to` (None: no release), in it (in target without one).
    SSHIPIT_RELEASE is the release live again, SSHIPIT_PREVIOUS_RELEASE the one rolled back from. `strict`
    (rollback was the step's own work): a failure fails the host; after a failed deploy's switch back, whose
    error stands, it is a warning."""
    if not plan.after_rollback:
        return
    import asyncssh

    facts = dataclasses.replace(plan.facts, release=back_to or "", previous=back_from or "",
                                path=releases.path(RELEASES, back_to) if back_to else "")
    cwd = releases.path(CURRENT) if back_to else releases.target
    try:
        await run_step(conn, host, dataclasses.replace(plan, facts=facts), console, plan.after_rollback, cwd,
                       "after_rollback", make_cwd=False)
    except DeployError as exc:
        if strict:
            exc.message += f"; current stays {f'{RELEASES}/{back_to}' if back_to else 'unset'}"
            raise
        console.warn(_hook_failed("after_rollback", exc, host), host)
    except (TimeoutError, asyncssh.Error, OSError):
        if strict:
            raise
        console.warn("after_rollback did not run to its end: the connection was lost", host)


def _hook_failed(name: str, exc: DeployError, host: HostSpec) -> str:
    """A hook's own failure, as a warning that says the deploy's error is the one that counts."""
    text = exc.message.removeprefix(f"{host.label}: ")
    return f"{text if text.startswith(name) else f'{name}: {text}'}; the error above stands"
