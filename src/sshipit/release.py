"""Atomic releases on one host: layout, lock, shared paths, the `current` switch, health state, pruning.

Layout under the target:

    target/
      current -> releases/<id>     the live release; replaced by an atomic rename, never edited in place
      releases/<id>/               one directory per deploy, never another's: the id is final only once the lock
                                   is held (final_release); .sshipit-release.json records its result
      shared/                      paths kept across releases, linked into each one (never through a symlink
                                   inside the release); releases/, shared/ and .sshipit/ must not be symlinks
      .sshipit/lock/               held while a deploy runs on this target (pid + owner of the holder)

releases/<id>/.sshipit-release.json, one JSON object (keys are stable: other commands read them):
    id, commit, build, repo: the deploy's; created: UTC time, to the second; stamp: UTC time to the millisecond
    (20261123-204612.345), by which releases are ordered (an id that starts with a stamp is ordered by it);
    result: preparing (being made; a leftover is removed), prepared (complete, not switched to yet: phase
    prepare), switched (live, not yet confirmed), ok, failed, rolled-back.
A release whose result is prepared, ok or rolled-back is complete: the switch phase and a rollback to a named
release switch to it only then. A split deploy's id is fixed (the same in every job): it is never renamed; a
release of that id is reused when complete and of the same commit, else replaced, never mixed with another
upload, and never replaced while it is live.

Every remote command is built here from quoted values and runs over the host's one connection.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import posixpath
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sshipit.errors import DeployError
from sshipit.listing import ListingReader, server_script
from sshipit.plan import ReleaseSpec, release_stamp
from sshipit.remote import Probed, ProbeSplitter, across_a_link, capture, parse_probe, probe_command
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
# Bytes of quoted removals that go on create_command's command line; a shell's one argument may hold 128 KiB.
_INLINE_REMOVALS = 32 << 10
SWITCHED = "switched"  # live since the switch; its post_commands and health check never confirmed it
PREPARED = "prepared"  # complete and kept, not switched to yet (phase: prepare)
COMPLETE = (PREPARED, OK, ROLLED_BACK)  # what a switch to a named release accepts


@dataclass
class Release:
    id: str
    result: str  # ok, failed, preparing, prepared, rolled-back, or "" when the metadata is missing or unreadable
    commit: str = ""
    order: str = ""  # when it was made (a stamp); releases are ordered by (order, id)
    meta: dict[str, object] = field(default_factory=dict)  # its metadata as read

    def spec(self, fallback: ReleaseSpec) -> ReleaseSpec:
        """Its own metadata as a ReleaseSpec (what a switch to it keeps writing), `fallback`'s where it has none."""
        kept = {key: value for key in ("commit", "build", "repo", "created", "stamp")
                if isinstance(value := self.meta.get(key), str)}
        return replace(fallback, id=self.id, fixed=True, **kept)


@dataclass
class HostState:
    current: str | None  # id of the live release
    releases: list[Release] = field(default_factory=list)  # oldest first

    def find(self, release_id: str | None) -> Release | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def previous_good(self, before: str | None = None) -> str | None:
        """The newest release older than `before` (default: current) whose deploy succeeded."""
        limit = self.find(before or self.current)
        ids = [r.id for r in self.releases]
        end = ids.index(limit.id) if limit is not None else len(ids)
        candidates = [r.id for r in self.releases[:end] if r.result == OK]
        return candidates[-1] if candidates else None


_STAMP = re.compile(r"(\d{8}-\d{6})\.(\d{3})")


def release_order(release_id: str, meta: dict[str, object]) -> str:
    """What orders a release among the others: the stamp its id starts with, else its metadata's stamp, else its
    created time (to the second), else nothing (first)."""
    own = _STAMP.match(release_id)
    if own:
        return own.group(0)
    stamp = meta.get("stamp")
    if isinstance(stamp, str) and _STAMP.fullmatch(stamp):
        return stamp
    created = meta.get("created")
    if isinstance(created, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created):
        return f"{created[0:4]}{created[5:7]}{created[8:10]}-{created[11:13]}{created[14:16]}{created[17:19]}.000"
    return ""


def parse_state(out: str, label: str, target: str) -> HostState:
    """The state() script's output: current, and each release with its metadata (one line each)."""
    state = HostState(current=None)
    for line in out.splitlines():
        if line == "current-not-a-link":
            raise DeployError(f"{label}: {posixpath.join(target, CURRENT)} exists and is not a symlink",
                              setting="target", hint="move it away once; atomic deploys manage it",
                              phase="release")
        if line.startswith("symlink "):  # what is removed below it would be removed somewhere else
            raise DeployError(f"{label}: {posixpath.join(target, line[8:])} is a symlink; sshipit keeps and "
                              "removes releases only in directories of the target's own", setting="target",
                              hint="make it a directory (move its contents there) or deploy elsewhere",
                              phase="release")
        if line.startswith("current "):
            state.current = posixpath.basename(line[8:].rstrip("/"))
        elif line.startswith("release "):
            name, _, text = line[8:].partition(" ")
            try:
                meta = json.loads(text) if text else {}
            except ValueError:
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
            state.releases.append(Release(name, str(meta.get("result", "")), str(meta.get("commit", "")),
                                          release_order(name, meta), meta))
    state.releases.sort(key=lambda r: (r.order, r.id))
    return state


def final_release(spec: ReleaseSpec, existing: list[str]) -> ReleaseSpec:
    """`spec` with an id that no existing release has and that sorts after all of them (ids sort by time):
    its own, or the newest existing one's time + 1 ms, with its own commit part. A fixed id (release_id, a split
    deploy's) is never renamed: the deploy reuses or replaces a release of that id (atomic.py)."""
    if spec.fixed:
        return spec
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


def prunable(state: HostState, keep: int, live: str, previous: str | None) -> list[str]:
    """The releases prune removes: beyond the newest `keep` (the live one counts as newest when unlisted), but
    never a prepared one newer than `previous` (live before this deploy): it waits for its own switch."""
    ids = [r.id for r in state.releases]
    start = ids.index(previous) + 1 if previous in ids else 0
    waiting = {r.id for r in state.releases[start:] if r.result == PREPARED}
    names = ids if live in ids else [*ids, live]
    return [n for n in names[: max(0, len(names) - keep)] if n not in (live, previous) and n not in waiting]


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
        self._holder_pid = ""  # the holder shell's pid, written in the lock: whoever removes the lock checks it
        self._locked_state: str | None = None  # state()'s output, read by lock() under the lock just taken
        self._released = False  # the lock went with finish()'s command: unlock() need not wait for the holder
        self._probed: tuple[str, bool, Probed] | None = None  # (live id, listing read, probe) from lock()

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

    async def lock(self, spec: ReleaseSpec, wait: float, probe: bool = False, listing: bool = False) -> ReleaseSpec:
        """Take the target's lock, waiting up to `wait` seconds for another deploy to finish; then make the new
        release's id final (self.spec, also returned): `spec`'s, unless this host already has that release or
        a newer one (two deploys of one commit started together, a clock behind), then the newest one's + 1 ms.

        The lock is held by a remote shell that lives exactly as long as this connection: when the deploy ends
        it removes the lock; when a deploy crashed, its recorded pid is gone and the next deploy takes over.
        Under the lock, the same exec reads state() and, with `probe`, runs the upload's probe (with `listing`,
        the live release's listing and manifest too): see prefetched(). One round trip for all of them.
        """
        lock = shell_path(self.path(STATE, "lock"))
        owner = quote(f"{spec.owner()} (started {spec.created})")
        mark = secrets.token_hex(8)  # ends the state's lines: no release name or metadata can forge it
        packed = across_a_link(self.conn, self.plan.jumps)  # the listing comes back gzipped (remote.probe_command)
        script = (
            f"mkdir -p -- {shell_path(self.path(STATE))} || exit 70; waited=0; "
            "while :; do "
            f"  if mkdir -- {lock} 2>/dev/null; then "
            # No lock without its pid: a holder and finish() remove the lock only when it holds their pid.
            f"    echo $$ > {lock}/pid || {{ rm -rf -- {lock}; exit 70; }}; printf '%s\\n' {owner} > {lock}/owner; "
            "     echo LOCKED $$; break; fi; "
            f"  pid=$(cat {lock}/pid 2>/dev/null); "
            '  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && [ ! -d "/proc/$pid" ]; then '
            f"    mv -- {lock} {lock}.stale.$$ 2>/dev/null && rm -rf -- {lock}.stale.$$ && echo TAKEOVER; "
            "    continue; fi; "
            f'  if [ "$waited" -ge {int(wait)} ]; then echo "BUSY $(cat {lock}/owner 2>/dev/null)"; exit 75; fi; '
            "  sleep 1; waited=$((waited+1)); "
            "done; "
            # The releases there now, for the final id; only deploys holding the lock add one.
            f"for d in {shell_path(self.path(RELEASES))}/[0-9]*/; do "
            "  [ -d \"$d\" ] && { n=${d%/}; printf 'RELEASE %s\\n' \"${n##*/}\"; }; done; "
            # state()'s reading, under the lock and in this exec: one round trip fewer per atomic deploy.
            f"echo STATE.{mark}; ( {self._state_script()} ); echo READY.{mark}; "
            f"{self._probe_script(mark, listing, packed) if probe else ''}"
            # A holder removes the lock only while it holds its pid: finish() may have removed it already, and
            # another deploy may hold it since.
            f'cat >/dev/null; if [ "$(cat {lock}/pid 2>/dev/null)" = $$ ]; then rm -rf -- {lock}; fi'
        )
        process = await self.conn.create_process(script, encoding=None)
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(process.stdout.readline(), wait + 60)
            if not raw:
                break
            line = raw.decode("utf-8", "surrogateescape")
            lines.append(line.rstrip("\n"))
            locked = next((entry for entry in lines if entry.startswith("LOCKED ")), None)
            if line.rstrip("\n") == f"READY.{mark}" and locked is not None and f"STATE.{mark}" in lines:
                self._holder, self._holder_pid = process, locked[7:]
                start = lines.index(f"STATE.{mark}")
                existing = [entry[8:] for entry in lines[:start] if entry.startswith("RELEASE ")]
                self._locked_state = "\n".join(lines[start + 1:-1])
                self.spec = final_release(spec, existing)
                if probe:
                    await self._read_probe(process, mark, listing, packed)
                return self.spec
        stderr = ""
        with contextlib.suppress(Exception):  # why mkdir failed (permission denied, a full disk), if it said
            stderr = (await asyncio.wait_for(process.stderr.read(), 10)).decode("utf-8", "replace")
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

    def _probe_script(self, mark: str, listing: bool, packed: bool) -> str:
        """The lock's part that reads what the upload starts with: the live release's id as `current` names it
        (read as state() reads it, from the same link), then the probe (remote.probe_command) and, with
        `listing`, the read-only listing of that release (listing.server_script), then an end mark and status."""
        current = shell_path(self.path(CURRENT))
        # $L: not a name the probe's own lines use (its loop variable is c)
        live = server_script(f'{shell_path(self.path(RELEASES))}/"$L"', f'{shell_path(self.path(STATE, "manifests"))}'
                             '/"$L".json', quoted=True, probed=True)
        probe = (f'if [ -n "$L" ]; then ( {probe_command(live, packed)} ); else ( {probe_command(None)} ); fi'
                 if listing else f"( {probe_command(None)} )")
        return (f"L=; if [ -L {current} ]; then L=$(readlink {current}); L=${{L%/}}; L=${{L##*/}}; fi; "
                f"printf 'LIVE %s\\n' \"$L\"; {probe}; printf '\\n{mark}.END %s\\n' $?; ")

    async def _read_probe(self, process: SSHClientProcess, mark: str, listing: bool, packed: bool) -> None:
        """Read what _probe_script printed; on any surprise nothing is kept, and the upload probes on its own.
        The listing goes through a ListingReader as it arrives (as remote.probe_then reads it), never joined."""
        end = f"\n{mark}.END ".encode()
        with contextlib.suppress(Exception):
            live = (await asyncio.wait_for(process.stdout.readline(), 60)).decode("utf-8", "surrogateescape")
            if not (live.startswith("LIVE ") and live.endswith("\n")):
                return
            live_id = live[5:-1]
            ran = listing and bool(live_id)
            upload = self.plan.upload
            split = ProbeSplitter(ListingReader(upload.entries if upload is not None else []), packed)
            head = bytearray()  # without a listing: the probe's few lines

            async def until_end() -> bytes:
                held = bytearray()  # the last bytes, which may be the start of the end mark
                while True:
                    chunk = await process.stdout.read(1 << 16)
                    if not chunk:
                        raise EOFError("the lock's answer ended before its end mark")
                    held += chunk
                    at = held.find(end)
                    keep = at if at >= 0 else max(0, len(held) - len(end) + 1)
                    (split.feed if ran else head.extend)(bytes(held[:keep]))
                    del held[:keep]
                    if at >= 0:
                        rest = held[len(end):]
                        while b"\n" not in rest:
                            more = await process.stdout.read(64)
                            if not more:
                                raise EOFError("the lock's answer ended in its status")
                            rest += more
                        return bytes(rest[:rest.index(b"\n")])

            status = (await asyncio.wait_for(until_end(), 600)).strip()
            if status.isdigit():
                probed = split.finish(int(status)) if ran else parse_probe(bytes(head), int(status), False)
                self._probed = (live_id, ran, probed)

    def prefetched(self, live: str | None, listing: bool) -> Probed | None:
        """The probe lock() ran, once, if it read what the upload would: the same live release (`current`, as
        state() read it in the same exec), and its listing exactly when the upload wants one."""
        found, self._probed = self._probed, None
        if found is None:
            return None
        live_id, ran, probed = found
        return probed if live_id == (live or "") and ran == (listing and live is not None) else None

    async def unlock(self) -> None:
        """End the holder's stdin: it removes the lock and exits. Waited for, unless finish() removed the lock
        already: then the answer would only cost a round trip (the holder's shell goes with the connection)."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        try:
            holder.stdin.write_eof()
            if not self._released:  # else finish() removed the lock already: the holder's end is not waited for
                await asyncio.wait_for(holder.wait_closed(), 10)
        except Exception:  # the connection is gone: the holder's stdin closed with it, which also unlocks
            holder.close()

    async def finish(self, spec: ReleaseSpec, state: HostState, keep: int, previous: str | None) -> list[str]:
        """The new release (live and confirmed) is recorded ok, old releases are pruned as prune() does, and the
        lock is let go, in ONE command: two round trips fewer than mark(), prune() and a waited unlock(). The
        lock goes last, once both are done, and only while it holds our holder's pid. Returns what was pruned."""
        doomed = prunable(state, keep, spec.id, previous)
        lock = shell_path(self.path(STATE, "lock"))
        steps = [self._mark_command(spec.id, spec, OK)]
        if doomed:
            steps.append(self._prune_command(doomed))
        if self._holder is not None and self._holder_pid.isdigit():
            steps.append(f'{{ if [ "$(cat {lock}/pid 2>/dev/null)" = {self._holder_pid} ]; then '
                         f"rm -rf -- {lock} 2>/dev/null; fi; true; }}")
        await self._run(" && ".join(steps), "recording the result" + (" and pruning old releases" if doomed else ""))
        self._released = self._holder is not None and self._holder_pid.isdigit()
        return doomed

    # -------------------------------------------------------------------------------------------------- state

    async def state(self) -> HostState:
        locked, self._locked_state = self._locked_state, None
        if locked is not None:  # read by lock(), in its own exec: no round trip of its own
            return parse_state(locked, self.host.label, self.target)
        return parse_state(await self._run(self._state_script(), "reading releases"), self.host.label,
                           self.target)

    def _state_script(self) -> str:
        """What state() reads: `current`, symlinks where directories belong, each release and its metadata."""
        return (
            f"cd -- {shell_path(self.target)} 2>/dev/null || exit 0; "
            f"if [ -L {CURRENT} ]; then printf 'current %s\\n' \"$(readlink {CURRENT})\"; "
            f"elif [ -e {CURRENT} ]; then echo current-not-a-link; fi; "
            f"for n in {RELEASES} {SHARED} {STATE}; do [ -L \"$n\" ] && printf 'symlink %s\\n' \"$n\"; done; "
            f"for d in {RELEASES}/*/; do [ -d \"$d\" ] || continue; "
            "n=${d%/}; n=${n##*/}; "
            # A release that is a symlink is not one of ours: read as unreadable, so never reused or switched to
            # (its metadata would be written through the link), and removed as a leftover (the link only).
            "if [ -L \"${d%/}\" ]; then printf 'release %s\\n' \"$n\"; continue; fi; "
            f"printf 'release %s %s\\n' \"$n\" \"$(tr -d '\\n' < \"$d{META}\" 2>/dev/null)\"; done"
        )

    async def remove_leftovers(self, state: HostState) -> list[str]:
        """Releases a crashed deploy left half-made (never the live one). A prepared release is complete: kept."""
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
        directory, command = self._create_command(spec, seed, "xargs -0 rm -rf --")
        stdin = "".join(f"./{path}\0" for path in removals or []).encode("utf-8", "surrogateescape")
        await self._run(command, "creating the release directory", timeout=600, stdin=stdin)
        return directory

    def create_command(self, spec: ReleaseSpec, seed: str | None = None, removals: list[str] | None = None
                       ) -> tuple[str, str] | None:
        """(directory, command) that does what create() does, for the upload to run first in its own command
        (upload_tar's `before`): the removals are the command's arguments, not its stdin (the stream's), which
        saves create()'s two round trips. None when they would make too long a command line (or a name is not
        UTF-8): then create() runs on its own."""
        names = [f"./{path}" for path in removals or []]
        if sum(len(name) + 3 for name in names) > _INLINE_REMOVALS:
            return None
        try:
            "".join(names).encode("utf-8")  # a command line is UTF-8; other names go on create()'s stdin
        except UnicodeEncodeError:
            return None
        return self._create_command(spec, seed, "rm -rf -- " + " ".join(quote(name) for name in names)
                                    if names else "")

    def _create_command(self, spec: ReleaseSpec, seed: str | None, remove: str) -> tuple[str, str]:
        directory = self.path(RELEASES, spec.id)
        d = shell_path(directory)
        steps = [f"mkdir -p -- {shell_path(self.path(RELEASES))} {shell_path(self.path(SHARED))}", f"mkdir -- {d}"]
        if seed is not None:
            source = shell_path(self.path(RELEASES, seed) + "/.")
            steps.append(f"{{ cp -a --reflink=auto -- {source} {d}/ 2>/dev/null || cp -a -- {source} {d}/; }}")
            if remove:
                steps.append(f"( cd -- {d} && {remove} )")
        meta = shell_path(posixpath.join(directory, META))
        steps.append(f"printf '%s\\n' {quote(spec.metadata(PREPARING))} > {meta}")
        return directory, " && ".join(steps)

    async def mark(self, release_id: str, spec: ReleaseSpec | None, result: str) -> None:
        meta = shell_path(self.path(RELEASES, release_id, META))
        if spec is not None and spec.id == release_id:
            await self._run(self._mark_command(release_id, spec, result), "recording the result")
            return
        # An older release: keep its metadata and change the result only.
        await self._run(
            f"if [ -f {meta} ]; then sed 's/\"result\": \"[a-z-]*\"/\"result\": \"{result}\"/' {meta} > {meta}.tmp "
            f"&& mv -f -- {meta}.tmp {meta}; fi",
            "recording the result",
        )

    def _mark_command(self, release_id: str, spec: ReleaseSpec, result: str) -> str:
        """The new release's metadata with `result` (mark(), and finish() in its one command)."""
        return f"printf '%s\\n' {quote(spec.metadata(result))} > {shell_path(self.path(RELEASES, release_id, META))}"

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
        owner = self.plan.privileges.owner  # a shared directory made here is the app's to write, as the release
        for index, entry in enumerate(shared):
            name = entry.rstrip("/")
            parts = name.split("/")
            in_release = shell_path(posixpath.join(release, name))
            in_shared = shell_path(self.path(SHARED, name))
            owned = f" && chown -h -- {quote(owner)} {in_shared}" if owner else ""
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
                f"  else mkdir -- {in_shared}{owned}; fi; fi && "
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

    async def take_over(self, state: HostState, spec: ReleaseSpec) -> str | None:
        """A fixed id (a split deploy's, release_id) met on this host, held under the lock: what becomes of it.

        None: no release has that id. "reused": it is complete and of this commit (a re-run of the build).
        "replaced ...": it was incomplete or of another commit, and is removed here, so that the new upload
        starts in an empty directory. "live": it is the live release, of this commit; a live release of another
        commit is never replaced (DeployError).
        """
        found = state.find(spec.id)
        if found is None or not spec.fixed:
            return None
        same = found.commit == spec.commit
        if spec.id == state.current:
            if same:
                return "live already (same commit), reused"
            raise DeployError(f"{self.host.label}: release {spec.id} is the live release here, made from commit "
                              f"{found.commit[:7] or 'unknown'}; a live release is never replaced",
                              setting="release_id", hint="give this build a release_id of its own", phase="release")
        if found.result in COMPLETE and same:
            return "reused (complete, same commit)"
        await self.discard(spec.id)
        state.releases.remove(found)
        why = "incomplete" if found.result not in COMPLETE else f"from commit {found.commit[:7] or 'unknown'}"
        return f"replaced ({why})"

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
        """Remove releases beyond the newest `keep`; never the live one or the one before it, nor a prepared
        release newer than the live one (another split deploy's, waiting for its switch)."""
        doomed = prunable(state, keep, live, previous)
        if doomed:
            await self._run(self._prune_command(doomed), "pruning old releases")
        return doomed

    def _prune_command(self, doomed: list[str]) -> str:
        return "rm -rf -- " + " ".join(f"{shell_path(self.path(RELEASES, n))} {shell_path(self.manifest_path(n))}"
                                       for n in doomed)
