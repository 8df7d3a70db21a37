"""Atomic releases on one host: layout, lock, shared paths, the `current` switch, health state, pruning.

Layout under the target:

    target/
      current -> releases/<id>     the live release; replaced by an atomic rename, never edited in place
      releases/<id>/               one directory per deploy; .sshipit-release.json records its result
      shared/                      paths kept across releases, linked into each one
      .sshipit/lock/               held while a deploy runs on this target (pid + owner of the holder)

Every remote command is built here from quoted values and runs over the host's one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.errors import DeployError
from sshipit.remote import capture
from sshipit.rules import quote, shell_path

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection, SSHClientProcess

    from sshipit.plan import HostSpec, Plan

RELEASES = "releases"
CURRENT = "current"
SHARED = "shared"
STATE = ".sshipit"
META = ".sshipit-release.json"

OK, FAILED, PREPARING, ROLLED_BACK = "ok", "failed", "preparing", "rolled-back"


@dataclass(frozen=True)
class ReleaseSpec:
    """What the new release is called and what its metadata says, decided once for all hosts."""

    id: str
    commit: str = ""
    build: str = ""
    repo: str = ""
    created: str = ""

    def metadata(self, result: str, **extra: str) -> str:
        data = {"id": self.id, "commit": self.commit, "build": self.build, "repo": self.repo,
                "created": self.created, "result": result, **extra}
        return json.dumps(data, sort_keys=True)

    def owner(self) -> str:
        parts = [f"release {self.id}"]
        if self.build:
            parts.append(f"build {self.build}")
        if self.repo:
            parts.append(f"of {self.repo}")
        return " ".join(parts)


_SAFE = re.compile(r"[^0-9A-Za-z]")


def new_release(environ: Mapping[str, str], now: float | None = None) -> ReleaseSpec:
    """Release ids sort by time and carry the short commit: 20261123-204612.345-abc1234."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
    commit = next((environ[v] for v in ("DRONE_COMMIT_SHA", "CI_COMMIT_SHA", "GITHUB_SHA") if environ.get(v)), "")
    short = _SAFE.sub("", commit)[:7]
    build = next((environ[v] for v in ("DRONE_BUILD_NUMBER", "CI_PIPELINE_NUMBER", "GITHUB_RUN_NUMBER")
                  if environ.get(v)), "")
    repo = next((environ[v] for v in ("DRONE_REPO", "CI_REPO", "GITHUB_REPOSITORY") if environ.get(v)), "")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return ReleaseSpec(stamp + (f"-{short}" if short else ""), commit[:64], build[:32], repo[:200], created)


@dataclass
class Release:
    id: str
    result: str  # ok, failed, preparing, rolled-back, or "" when the metadata is missing or unreadable


@dataclass
class HostState:
    current: str | None  # id of the live release
    releases: list[Release] = field(default_factory=list)  # oldest first

    def previous_good(self, before: str | None = None) -> str | None:
        """The newest release older than `before` (default: current) whose deploy succeeded."""
        limit = before or self.current
        candidates = [r.id for r in self.releases if r.result == OK and (limit is None or r.id < limit)]
        return candidates[-1] if candidates else None


class ReleaseManager:
    """Release operations on one host, over its connection."""

    def __init__(self, conn: SSHClientConnection, host: HostSpec, plan: Plan) -> None:
        assert plan.target is not None
        self.conn = conn
        self.host = host
        self.plan = plan
        self.target = plan.target
        self._holder: SSHClientProcess | None = None

    def path(self, *parts: str) -> str:
        return posixpath.join(self.target, *parts)

    def manifest_path(self, release_id: str) -> str:
        return self.path(STATE, "manifests", release_id + ".json")

    async def _run(self, command: str, what: str, timeout: float = 60, stdin: bytes = b"") -> str:
        result = await capture(self.conn, command, timeout, stdin=stdin)
        if result.exit_status != 0:
            from sshipit.upload import explain_remote_failure

            raise explain_remote_failure(self.host, self.target, result.stderr or result.stdout, what)
        return result.stdout

    # --------------------------------------------------------------------------------------------------- lock

    async def lock(self, spec: ReleaseSpec, wait: float) -> None:
        """Take the target's lock, waiting up to `wait` seconds for another deploy to finish.

        The lock is held by a remote shell that lives exactly as long as this connection: when the deploy ends
        it removes the lock; when a deploy crashed, its recorded pid is gone and the next deploy takes over.
        """
        lock = shell_path(self.path(STATE, "lock"))
        owner = quote(f"{spec.owner()} (started {spec.created})")
        script = (
            f"mkdir -p -- {shell_path(self.path(STATE))} || exit 70; waited=0; "
            "while :; do "
            f"  if mkdir -- {lock} 2>/dev/null; then echo $$ > {lock}/pid; printf '%s\\n' {owner} > {lock}/owner; "
            "     echo LOCKED; break; fi; "
            f"  pid=$(cat {lock}/pid 2>/dev/null); "
            '  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && [ ! -d "/proc/$pid" ]; then '
            f"    mv -- {lock} {lock}.stale.$$ 2>/dev/null && rm -rf -- {lock}.stale.$$ && echo TAKEOVER; "
            "    continue; fi; "
            f'  if [ "$waited" -ge {int(wait)} ]; then echo "BUSY $(cat {lock}/owner 2>/dev/null)"; exit 75; fi; '
            "  sleep 1; waited=$((waited+1)); "
            "done; "
            f"cat >/dev/null; rm -rf -- {lock}"
        )
        process = await self.conn.create_process(script, encoding="utf-8")
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), wait + 60)
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("LOCKED"):
                self._holder = process
                return
        stderr = ""
        with contextlib.suppress(Exception):  # why mkdir failed (permission denied, a full disk), if it said
            stderr = await asyncio.wait_for(process.stderr.read(), 10)
        process.close()
        busy = next((line[5:] for line in lines if line.startswith("BUSY")), "")
        if busy or process.exit_status == 75:
            raise DeployError(
                f"{self.host.label}: another deploy holds the lock on {self.target}: {busy or 'unknown'}",
                setting="lock_timeout", hint="wait for it to finish, or raise lock_timeout", phase="release")
        if stderr.strip():
            from sshipit.upload import explain_remote_failure

            error = explain_remote_failure(self.host, self.target, stderr, f"creating {self.path(STATE)}")
            error.phase = "release"
            raise error
        raise DeployError(f"{self.host.label}: cannot create {self.path(STATE)} (is the target writable?)",
                          setting="target", phase="release")

    async def unlock(self) -> None:
        holder, self._holder = self._holder, None
        if holder is None:
            return
        try:
            holder.stdin.write_eof()
            await asyncio.wait_for(holder.wait_closed(), 10)
        except Exception:  # the connection is gone: the holder's stdin closed with it, which also unlocks
            holder.close()

    # -------------------------------------------------------------------------------------------------- state

    async def state(self) -> HostState:
        script = (
            f"cd -- {shell_path(self.target)} 2>/dev/null || exit 0; "
            f"if [ -L {CURRENT} ]; then printf 'current %s\\n' \"$(readlink {CURRENT})\"; "
            f"elif [ -e {CURRENT} ]; then echo current-not-a-link; fi; "
            f"for d in {RELEASES}/*/; do [ -d \"$d\" ] || continue; "
            "n=${d%/}; n=${n##*/}; "
            f"printf 'release %s %s\\n' \"$n\" \"$(tr -d '\\n' < \"$d{META}\" 2>/dev/null)\"; done"
        )
        out = await self._run(script, "reading releases")
        state = HostState(current=None)
        for line in out.splitlines():
            if line == "current-not-a-link":
                raise DeployError(f"{self.host.label}: {self.path(CURRENT)} exists and is not a symlink",
                                  setting="target", hint="move it away once; atomic deploys manage it",
                                  phase="release")
            if line.startswith("current "):
                state.current = posixpath.basename(line[8:].rstrip("/"))
            elif line.startswith("release "):
                name, _, meta = line[8:].partition(" ")
                try:
                    result = str(json.loads(meta).get("result", "")) if meta else ""
                except ValueError:
                    result = ""
                state.releases.append(Release(name, result))
        state.releases.sort(key=lambda r: r.id)
        return state

    async def remove_leftovers(self, state: HostState) -> list[str]:
        """Releases a crashed deploy left half-made (never the live one)."""
        doomed = [r.id for r in state.releases if r.result in (PREPARING, "") and r.id != state.current]
        if doomed:
            paths = " ".join(f"{shell_path(self.path(RELEASES, n))} {shell_path(self.manifest_path(n))}"
                             for n in doomed)
            await self._run(f"rm -rf -- {paths}", "removing unfinished releases")
            state.releases = [r for r in state.releases if r.id not in doomed]
        return doomed

    # ------------------------------------------------------------------------------------------------ prepare

    async def create(self, spec: ReleaseSpec, seed: str | None = None, removals: list[str] | None = None) -> str:
        """Make the release directory; with `seed`, start it as a copy of that release minus `removals`.

        A copy, not hard links: the new release's commands may rewrite files in place, and the live release
        must stay byte for byte as it is. Copy-on-write clones are used where the file system has them.
        """
        directory = self.path(RELEASES, spec.id)
        d = shell_path(directory)
        steps = [f"mkdir -p -- {shell_path(self.path(RELEASES))} {shell_path(self.path(SHARED))}", f"mkdir -- {d}"]
        if seed is not None:
            source = shell_path(self.path(RELEASES, seed) + "/.")
            steps.append(f"{{ cp -a --reflink=auto -- {source} {d}/ 2>/dev/null || cp -a -- {source} {d}/; }}")
            steps.append(f"( cd -- {d} && xargs -0 rm -rf -- )")
        meta = shell_path(posixpath.join(directory, META))
        steps.append(f"printf '%s\\n' {quote(spec.metadata(PREPARING))} > {meta}")
        stdin = "".join(f"./{path}\0" for path in removals or []).encode("utf-8", "surrogateescape")
        await self._run(" && ".join(steps), "creating the release directory", timeout=600, stdin=stdin)
        return directory

    async def mark(self, release_id: str, spec: ReleaseSpec | None, result: str) -> None:
        meta = shell_path(self.path(RELEASES, release_id, META))
        if spec is not None and spec.id == release_id:
            await self._run(f"printf '%s\\n' {quote(spec.metadata(result))} > {meta}", "recording the result")
            return
        # An older release: keep its metadata and change the result only.
        await self._run(
            f"if [ -f {meta} ]; then sed 's/\"result\": \"[a-z-]*\"/\"result\": \"{result}\"/' {meta} > {meta}.tmp "
            f"&& mv -f -- {meta}.tmp {meta}; fi",
            "recording the result",
        )

    async def link_shared(self, release_id: str, shared: list[str]) -> None:
        """Link each shared path into the release; seed shared/ from the release the first time."""
        if not shared:
            return
        release = self.path(RELEASES, release_id)
        steps = []
        for entry in shared:
            is_dir_hint = entry.endswith("/")
            name = entry.rstrip("/")
            in_release = shell_path(posixpath.join(release, name))
            in_shared = shell_path(self.path(SHARED, name))
            relative = "../" * (name.count("/") + 2) + posixpath.join(SHARED, name)
            create = f"mkdir -p -- {in_shared}" if is_dir_hint else f": > {in_shared}"
            steps.append(
                f"mkdir -p -- \"$(dirname -- {in_shared})\" \"$(dirname -- {in_release})\" && "
                f"if [ ! -e {in_shared} ] && [ ! -L {in_shared} ]; then "
                f"  if [ -e {in_release} ] && [ ! -L {in_release} ]; then mv -- {in_release} {in_shared}; "
                f"  else {create}; fi; fi && "
                f"rm -rf -- {in_release} && ln -s -- {quote(relative)} {in_release}"
            )
        await self._run(" && ".join(steps), "linking shared paths")

    async def discard(self, release_id: str) -> None:
        await self._run(f"rm -rf -- {shell_path(self.path(RELEASES, release_id))} "
                        f"{shell_path(self.manifest_path(release_id))}", "removing the release")

    # ------------------------------------------------------------------------------------------------- switch

    async def switch(self, release_id: str | None) -> None:
        """Point `current` at the release with one rename; None removes `current` (back to no release)."""
        current = shell_path(self.path(CURRENT))
        if release_id is None:
            await self._run(f"rm -f -- {current}", "removing current")
            return
        temporary = shell_path(self.path(f".{CURRENT}.{release_id}"))
        link = quote(posixpath.join(RELEASES, release_id))
        await self._run(f"ln -sfn -- {link} {temporary} && mv -fT -- {temporary} {current}",
                        "switching current")

    async def prune(self, state: HostState, keep: int, live: str, previous: str | None) -> list[str]:
        """Remove releases beyond the newest `keep`; never the live one or the one before it."""
        names = [r.id for r in state.releases]
        if live not in names:
            names.append(live)
        names.sort()
        doomed = [n for n in names[: max(0, len(names) - keep)] if n not in (live, previous)]
        if doomed:
            paths = " ".join(f"{shell_path(self.path(RELEASES, n))} {shell_path(self.manifest_path(n))}"
                             for n in doomed)
            await self._run(f"rm -rf -- {paths}", "pruning old releases")
        return doomed
