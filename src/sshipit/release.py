"""Atomic releases on one host: layout, lock, shared paths, the `current` switch, health state, pruning.

Layout under the target:

    target/
      current -> releases/<id>     the live release; replaced by an atomic rename, never edited in place
      releases/<id>/               one directory per deploy, never another's: the id is final only once the lock
                                   is held (final_release); .sshipit-release.json records its result
      shared/                      paths kept across releases, linked into each one (never through a symlink
                                   inside the release); releases/, shared/ and .sshipit/ must not be symlinks
      .sshipit/lock/               held while a deploy runs on this target (pid + owner of the holder)

Every remote command is built here from quoted values and runs over the host's one connection.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import posixpath
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sshipit.errors import DeployError
from sshipit.plan import ReleaseSpec, release_stamp
from sshipit.remote import capture
from sshipit.rules import quote, shell_path
from sshipit.upload import explain_remote_failure

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection, SSHClientProcess

    from sshipit.plan import HostSpec, Plan

RELEASES = "releases"
CURRENT = "current"
SHARED = "shared"
STATE = ".sshipit"
META = ".sshipit-release.json"

OK, FAILED, PREPARING, ROLLED_BACK = "ok", "failed", "preparing", "rolled-back"
SWITCHED = "switched"  # live since the switch; its post_commands and health check never confirmed it


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


_STAMP = re.compile(r"(\d{8}-\d{6})\.(\d{3})")


def final_release(spec: ReleaseSpec, existing: list[str]) -> ReleaseSpec:
    """`spec` with an id that no existing release has and that sorts after all of them (ids sort by time):
    its own, or the newest existing one's time + 1 ms, with its own commit part."""
    stamped = sorted(name for name in existing if _STAMP.match(name))
    if spec.id not in existing and (not stamped or spec.id > stamped[-1]):
        return spec
    newest = _STAMP.match(stamped[-1]) if stamped else None
    own = _STAMP.match(spec.id)
    millis = [int(calendar.timegm(time.strptime(m.group(1), "%Y%m%d-%H%M%S"))) * 1000 + int(m.group(2))
              for m in (newest, own) if m is not None]
    suffix = spec.id[own.end():] if own else "-" + spec.id
    candidate = release_stamp((max(millis) + 1) / 1000) + suffix
    while candidate in existing:  # only for names made by hand: ours are never equal past the newest
        millis.append(max(millis) + 1)
        candidate = release_stamp((max(millis) + 1) / 1000) + suffix
    return replace(spec, id=candidate)


class ReleaseManager:
    """Release operations on one host, over its connection."""

    def __init__(self, conn: SSHClientConnection, host: HostSpec, plan: Plan) -> None:
        assert plan.target is not None
        self.conn = conn
        self.host = host
        self.plan = plan
        self.target = plan.target
        self.spec: ReleaseSpec = plan.release  # the new release; its id is final once lock() holds the lock
        self._holder: SSHClientProcess | None = None

    def path(self, *parts: str) -> str:
        return posixpath.join(self.target, *parts)

    def manifest_path(self, release_id: str) -> str:
        return self.path(STATE, "manifests", release_id + ".json")

    async def _run(self, command: str, what: str, timeout: float = 60, stdin: bytes = b"") -> str:
        result = await capture(self.conn, command, timeout, stdin=stdin)
        if result.exit_status != 0:
            raise explain_remote_failure(self.host, self.target, result.stderr or result.stdout, what)
        return result.stdout

    # --------------------------------------------------------------------------------------------------- lock

    async def lock(self, spec: ReleaseSpec, wait: float) -> ReleaseSpec:
        """Take the target's lock, waiting up to `wait` seconds for another deploy to finish; then make the new
        release's id final (self.spec, also returned): `spec`'s, unless this host already has that release or
        a newer one (two deploys of one commit started together, a clock behind), then the newest one's + 1 ms.

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
            # The releases there now, for the final id; only deploys holding the lock add one.
            f"for d in {shell_path(self.path(RELEASES))}/[0-9]*/; do "
            "  [ -d \"$d\" ] && { n=${d%/}; printf 'RELEASE %s\\n' \"${n##*/}\"; }; done; echo READY; "
            f"cat >/dev/null; rm -rf -- {lock}"
        )
        process = await self.conn.create_process(script, encoding="utf-8")
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), wait + 60)
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("READY") and "LOCKED" in lines:
                self._holder = process
                existing = [entry[8:] for entry in lines if entry.startswith("RELEASE ")]
                self.spec = final_release(spec, existing)
                return self.spec
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
            f"for n in {RELEASES} {SHARED} {STATE}; do [ -L \"$n\" ] && printf 'symlink %s\\n' \"$n\"; done; "
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
            if line.startswith("symlink "):  # what is removed below it would be removed somewhere else
                raise DeployError(f"{self.host.label}: {self.path(line[8:])} is a symlink; sshipit keeps and "
                                  "removes releases only in directories of the target's own", setting="target",
                                  hint="make it a directory (move its contents there) or deploy elsewhere",
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
        """Link each shared path into the release.

        A path shared/ has is linked as it is. One shared/ lacks is taken from the release (a file or a
        directory, moved into shared/: the first deploy seeds it), or, when the release lacks it too, made an
        empty directory (as Capistrano and Deployer do); a trailing "/" says it must be a directory. Nothing
        is resolved through a symlink inside the release (the build's `storage -> /some/dir` would make
        `storage/logs` someone else's directory): every check runs before anything is moved.
        """
        if not shared:
            return
        release = self.path(RELEASES, release_id)
        checks, steps = [], []
        for index, entry in enumerate(shared):
            name = entry.rstrip("/")
            parts = name.split("/")
            in_release = shell_path(posixpath.join(release, name))
            in_shared = shell_path(self.path(SHARED, name))
            for depth in range(1, len(parts)):
                way = shell_path(posixpath.join(release, *parts[:depth]))
                checks.append(f"if [ -L {way} ]; then printf 'THROUGH {index} {depth} %s\\n' "
                              f"\"$(readlink {way} | tr -d '\\n')\"; exit 3; fi")
            if entry.endswith("/"):
                checks.append(f"if [ ! -e {in_shared} ] && [ -e {in_release} ] && [ ! -L {in_release} ] && "
                              f"[ ! -d {in_release} ]; then echo 'NOTDIR {index}'; exit 3; fi")
            relative = "../" * (name.count("/") + 2) + posixpath.join(SHARED, name)
            steps.append(
                f"mkdir -p -- \"$(dirname -- {in_shared})\" \"$(dirname -- {in_release})\" && "
                f"if [ ! -e {in_shared} ] && [ ! -L {in_shared} ]; then "
                f"  if [ -e {in_release} ] && [ ! -L {in_release} ]; then mv -- {in_release} {in_shared}; "
                f"  else mkdir -- {in_shared}; fi; fi && "
                f"rm -rf -- {in_release} && ln -s -- {quote(relative)} {in_release}"
            )
        result = await capture(self.conn, "; ".join([*checks, " && ".join(steps)]), 60)
        refused = [line for line in result.stdout.splitlines() if line.startswith(("THROUGH ", "NOTDIR "))]
        if result.exit_status == 3 and refused:
            word, index_text, *rest = refused[0].split(" ", 3)
            entry = shared[int(index_text)]
            if word == "NOTDIR":
                raise DeployError(f"{self.host.label}: shared path {entry} must be a directory (it ends with /), "
                                  "but the build has a file there", setting="shared",
                                  hint="remove the trailing / to share the file, or fix the build",
                                  phase="release")
            link = "/".join(entry.rstrip("/").split("/")[: int(rest[0])])
            raise DeployError(
                f"{self.host.label}: shared path {entry} goes through {link}, a symlink in the release "
                f"(-> {rest[1] if len(rest) > 1 else '?'}); shared paths are never resolved through a symlink",
                setting="shared", hint=f"make {link} a directory in the build, or share {link} itself",
                phase="release")
        if result.exit_status != 0:
            raise explain_remote_failure(self.host, self.target, result.stderr or result.stdout,
                                         "linking shared paths")

    async def discard(self, release_id: str) -> None:
        await self._run(f"rm -rf -- {shell_path(self.path(RELEASES, release_id))} "
                        f"{shell_path(self.manifest_path(release_id))}", "removing the release")

    # ------------------------------------------------------------------------------------------------- switch

    async def switch(self, release_id: str | None, spec: ReleaseSpec | None = None) -> None:
        """Point `current` at the release with one rename; None removes `current` (back to no release).

        With `spec` (the new release's), its metadata says SWITCHED from the same command: success means both,
        and a deploy that loses its connection after the switch leaves a live release that says so, not
        "preparing". The metadata is written aside first (the step that needs space) and renamed in after.
        """
        current = shell_path(self.path(CURRENT))
        if release_id is None:
            await self._run(f"rm -f -- {current}", "removing current")
            return
        temporary = shell_path(self.path(f".{CURRENT}.{release_id}"))
        link = quote(posixpath.join(RELEASES, release_id))
        command = f"ln -sfn -- {link} {temporary} && mv -fT -- {temporary} {current}"
        if spec is not None and spec.id == release_id:
            meta = shell_path(self.path(RELEASES, release_id, META))
            command = (f"printf '%s\\n' {quote(spec.metadata(SWITCHED))} > {meta}.new && "
                       f"{{ {command} || {{ rm -f -- {meta}.new; exit 1; }}; }} && "
                       f"{{ mv -f -- {meta}.new {meta} || true; }}")
        await self._run(command, "switching current")

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
