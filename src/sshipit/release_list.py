"""`sshipit releases` (list_releases: true): each host's releases, read without changing anything, shown per host.

Owns reading a target's releases for people (release.py owns the layout and every write to it): one read-only
command per host (no lock taken, nothing written) prints, for each directory in releases/, its metadata
(.sshipit-release.json), its size (`du`, within a time budget) and whether `current` points at it; the answer is
parsed strictly, because the login may have written anything there (a name, metadata or link text with control
characters, a huge or binary file, a link out of the target): such a release is shown as unknown, with why, and
every text reaches the log through the console (masked, rules.neutralise), never as a control line. Owns the
per-host tables and the marks for releases that are not on every host.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.connect import connect, shared_tunnels
from sshipit.errors import DeployError
from sshipit.release import (
    CURRENT,
    FAILED,
    META,
    OK,
    PREPARING,
    RELEASES,
    ROLLED_BACK,
    STATE,
    SWITCHED,
    release_order,
)
from sshipit.remote import capture
from sshipit.report import Console, HostResult, error_line, human_bytes
from sshipit.rules import quote

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.plan import HostSpec, Plan

MARK = b"sshipit-releases"
LIMIT = 1000  # releases listed per host, the newest (keep_releases allows 1000); older ones are counted only
META_LIMIT = 4096  # bytes of metadata read; ours is a few hundred, a larger file is not ours
SIZE_SECONDS = 30  # the time all `du` of one host may take together; a release not measured by then shows "?"
LINK_LIMIT = 4096  # bytes of `current`'s link text read

# The metadata's result -> the state shown (a live release shows "live", or "live (<state>)" when it is not good)
# ("prepared": a split deploy's release, ready and not switched to yet)
STATES = {OK: "good", FAILED: "failed", PREPARING: "preparing", "prepared": "prepared", ROLLED_BACK: "rolled-back",
          SWITCHED: "unconfirmed"}
_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
_COMMIT = re.compile(r"[0-9a-fA-F]{1,64}\Z")
_FIELDS = {"id": 200, "commit": 64, "build": 32, "repo": 200, "created": 32, "stamp": 32, "result": 32}


@dataclass(frozen=True)
class ListedRelease:
    id: str  # the directory's name, as it is
    created: str  # the metadata's, checked (2026-11-28T20:51:00Z); "" when missing or malformed
    commit: str  # the metadata's (hex only); "" when missing or malformed
    state: str  # live, good, failed, preparing, prepared, rolled-back, unconfirmed, unknown; or live (<state>)
    size_kib: int | None  # None: not measured (the time budget ran out, or not a directory of the target's)
    note: str = ""  # why the state is unknown, or what else is odd
    stamp: str = ""  # orders the releases (the metadata's stamp, or the id's own)


@dataclass
class HostReleases:
    target: str
    exists: bool = True
    current: str | None = None  # the listed release `current` points at
    current_other: str | None = None  # `current`'s link text when it points at no listed release
    current_not_link: bool = False
    releases: list[ListedRelease] = field(default_factory=list)  # newest first
    omitted: int = 0  # older releases beyond LIMIT, counted only
    lock: str | None = None  # who holds the target's lock now (a deploy is running)


def listing_script(target: str) -> str:
    """One read-only shell command: NUL-separated records (a file name may hold any other byte).

    `sshipit-releases` `absent|denied|ok`, then `C` + current's link text, `X` (current is no link), `S` (releases/
    is a symlink: nothing under it is read), `K` + the lock's owner, `N` + the count of releases, and per release
    `R` name kind(d: directory, l: symlink) meta(m: read, n: none, x: not a regular file) text size-KiB; `E` last.
    Nothing is read through a symlink: not releases/, not a release, not its metadata, not the lock.
    """
    owner = f"{STATE}/lock/owner"
    return (
        f"t={quote(target)}; "
        f"if [ ! -e \"$t\" ] && [ ! -L \"$t\" ]; then printf 'sshipit-releases\\0absent\\0E\\0'; exit 0; fi; "
        "cd -- \"$t\" 2>/dev/null || { printf 'sshipit-releases\\0denied\\0E\\0'; exit 0; }; "
        "printf 'sshipit-releases\\0ok\\0'; "
        f"if [ -L {CURRENT} ]; then printf 'C\\0'; readlink {CURRENT} | head -c {LINK_LIMIT}; printf '\\0'; "
        f"elif [ -e {CURRENT} ]; then printf 'X\\0'; fi; "
        f"if [ -L {RELEASES} ]; then printf 'S\\0E\\0'; exit 0; fi; "
        f"if [ -d {STATE}/lock ] && [ ! -L {STATE} ] && [ ! -L {STATE}/lock ]; then printf 'K\\0'; "
        f"if [ -f {owner} ] && [ ! -L {owner} ]; then head -c 512 {owner} | tr '\\000' '\\001'; fi; "
        "printf '\\0'; fi; "
        f"total=0; for d in {RELEASES}/*/; do [ -d \"$d\" ] && total=$((total+1)); done; "
        f"skip=$((total-{LIMIT})); printf 'N\\0%s\\0' \"$total\"; "
        "if command -v timeout >/dev/null 2>&1; then bound=timeout; else bound=; fi; "
        # without `date` (a bare BusyBox) only each `du`'s own bound holds; without `timeout`, none
        f"end=$(( $(date +%s 2>/dev/null || echo 0) + {SIZE_SECONDS} )); "
        f"for d in {RELEASES}/*/; do [ -d \"$d\" ] || continue; "
        "if [ \"$skip\" -gt 0 ]; then skip=$((skip-1)); continue; fi; "
        "n=${d%/}; n=${n##*/}; printf 'R\\0%s\\0' \"$n\"; "
        f"if [ -L \"{RELEASES}/$n\" ]; then printf 'l\\0\\0\\0\\0'; continue; fi; "
        f"m=\"{RELEASES}/$n/{META}\"; "
        "if [ -L \"$m\" ] || { [ -e \"$m\" ] && [ ! -f \"$m\" ]; }; then printf 'd\\0x\\0\\0'; "
        f"elif [ -f \"$m\" ]; then printf 'd\\0m\\0'; head -c {META_LIMIT + 1} -- \"$m\" 2>/dev/null "
        "| tr '\\000' '\\001'; printf '\\0'; "
        "else printf 'd\\0n\\0\\0'; fi; "
        "left=$(( end - $(date +%s 2>/dev/null || echo 0) )); s=; "
        f"if [ \"$left\" -gt 0 ]; then s=$($bound ${{bound:+$left}} du -skl -- \"{RELEASES}/$n\" 2>/dev/null); "
        "s=${s%%[!0-9]*}; fi; "
        "printf '%s\\0' \"$s\"; done; printf 'E\\0'"
    )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # every byte kept; the console shows the odd ones as escapes


def read_metadata(raw: bytes) -> tuple[dict[str, str], str]:
    """The metadata's fields that are text of a sane length, and what is wrong with the file ("" if nothing).

    Never raises: a file of any bytes (not UTF-8, not JSON, nested a thousand deep, huge) is a problem to show."""
    if len(raw) > META_LIMIT:
        return {}, f"metadata larger than {META_LIMIT} bytes"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return {}, "metadata is not JSON"
    if not isinstance(data, dict):
        return {}, "metadata is not a JSON object"
    return {key: value for key, limit in _FIELDS.items()
            if isinstance(value := data.get(key), str) and len(value) <= limit}, ""


def parse_listing(raw: bytes, target: str) -> HostReleases:
    """The records of listing_script. Raises ValueError when the answer is not one (cut short, or no shell),
    PermissionError when the target cannot be entered, IsADirectoryError when releases/ is a symlink."""
    tokens = raw.split(b"\0")
    if tokens[0] != MARK or len(tokens) < 3 or tokens[1] not in (b"ok", b"absent", b"denied"):
        raise ValueError("no listing")
    listed = HostReleases(target, exists=tokens[1] != b"absent")
    if tokens[1] == b"denied":
        raise PermissionError(target)
    at = 2
    link: str | None = None
    found: list[tuple[str, bytes, bytes, bytes, bytes]] = []

    def take(count: int) -> list[bytes]:
        nonlocal at
        if at + count > len(tokens):
            raise ValueError("cut short")
        at += count
        return tokens[at - count:at]

    while True:
        (kind,) = take(1)
        if kind == b"E":
            break
        if kind == b"C":
            link = _text(take(1)[0]).removesuffix("\n")  # readlink ends its line
        elif kind == b"X":
            listed.current_not_link = True
        elif kind == b"S":
            raise IsADirectoryError(posixpath.join(target, RELEASES))
        elif kind == b"K":
            listed.lock = _text(take(1)[0]).strip()
        elif kind == b"N":
            listed.omitted = max(0, int(take(1)[0] or b"0") - LIMIT)
        elif kind == b"R":
            name, shape, has_meta, meta, size = take(5)
            found.append((_text(name), shape, has_meta, meta, size))
        else:
            raise ValueError("unknown record")
    ids = {name for name, *_ in found}
    if link is not None:
        live = _live_id(link, target)
        if live in ids:
            listed.current = live
        else:
            listed.current_other = link
    releases = [_release(name, shape, has_meta, meta, size, name == listed.current)
                for name, shape, has_meta, meta, size in found]
    releases.sort(key=lambda r: (r.stamp, r.id), reverse=True)
    listed.releases = releases
    return listed


def _live_id(link: str, target: str) -> str | None:
    """The release `current` names, written as release.py writes it (releases/<id>), or as an absolute path."""
    text = link.rstrip("/")
    for prefix in (f"{RELEASES}/", posixpath.join(target, RELEASES) + "/" if target.startswith("/") else None):
        if prefix and text.startswith(prefix) and "/" not in text[len(prefix):]:
            return text[len(prefix):]
    return None


def _release(name: str, shape: bytes, has_meta: bytes, meta: bytes, size: bytes, live: bool) -> ListedRelease:
    stamp = release_order(name, {})
    kib = int(size) if size.isdigit() else None
    if shape == b"l":
        return ListedRelease(name, "", "", "live (unknown)" if live else "unknown", None,
                             "a symlink, not a release directory: not read", stamp)
    fields, problem = {}, ""
    if has_meta == b"n":
        problem = f"no {META}"
    elif has_meta == b"x":
        problem = f"{META} is not a regular file: not read"
    else:
        fields, problem = read_metadata(meta)
    state = STATES.get(fields.get("result", ""), "unknown")
    if not problem and state == "unknown":
        problem = "metadata names no known result"
    notes = [problem] if problem else []
    if fields.get("id") not in (None, name):
        notes.append("its metadata names another release")
    created = fields.get("created", "")
    if created and not _CREATED.match(created):
        created, notes = "", [*notes, "malformed created time"]
    commit = fields.get("commit", "")
    if commit and not _COMMIT.match(commit):
        commit, notes = "", [*notes, "malformed commit"]
    stamp = release_order(name, {**fields, "created": created})  # the order release.py keeps
    if live:
        state = "live" if state == "good" else f"live ({state})"
    return ListedRelease(name, created, commit, state, kib, "; ".join(notes), stamp)


async def read_releases(conn: SSHClientConnection, host: HostSpec, target: str, timeout: float) -> HostReleases:
    """One exec: the host's releases. Raises DeployError with one line on any failure."""
    try:
        result = await capture(conn, listing_script(target), timeout)
    except TimeoutError:
        raise DeployError(f"{host.label}: reading the releases in {target} took longer than {timeout:.0f}s",
                          setting="timeout", hint="check the server's load, or raise timeout",
                          phase="releases") from None
    try:
        return parse_listing(result.raw, target)
    except PermissionError:
        raise DeployError(f"{host.label}: {target} cannot be entered by this login (permission denied)",
                          setting="target", hint="list as the user that deploys there", phase="releases") from None
    except IsADirectoryError:
        raise DeployError(f"{host.label}: {posixpath.join(target, RELEASES)} is a symlink; sshipit reads releases "
                          "only in directories of the target's own", setting="target",
                          hint="make it a directory (move its contents there)", phase="releases") from None
    except ValueError:
        if MARK not in result.raw:
            raise DeployError(f"{host.label}: the account runs no commands (SFTP only?), so its releases cannot "
                              "be read", setting="username", hint="list with a login that has a shell",
                              phase="releases") from None
        raise DeployError(f"{host.label}: the listing of {target} was cut short (exit status "
                          f"{result.exit_status})", setting="target", hint="run it again; check the server",
                          phase="releases") from None


# ---------------------------------------------------------------------------------------------------- all hosts


async def list_releases(plan: Plan, console: Console) -> list[HostResult]:
    """Every host's releases, read at most max_parallel at once; then a table per host, in the plan's order."""
    console.prefix_hosts = len(plan.hosts) > 1
    work = asyncio.Semaphore(plan.max_parallel)
    async with shared_tunnels(plan, console.info, console.warn):
        results = list(await asyncio.gather(*(_one(host, plan, console, work) for host in plan.hosts)))
    show(results, console)
    return results


async def _one(host: HostSpec, plan: Plan, console: Console, work: asyncio.Semaphore) -> HostResult:
    import asyncssh

    target = host.target or plan.target
    assert target is not None  # plan.build: list_releases needs a target
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = HostResult(host=host, ok=False, seconds=0.0, phase="connect")
    try:
        async with work:
            connected = await connect(host, plan)
            for warning in connected.warnings:
                console.warn(warning, host)
            try:
                async with connected.conn as conn:
                    if plan.privileges.sudo:  # read as the deploy writes: as sudo_user (privilege.py checks sudo)
                        from sshipit.privilege import become

                        conn = await become(conn, host, plan, plan.privileges, lambda text: console.warn(text, host))
                    result.phase = "releases"
                    listed = await read_releases(conn, host, target, max(60.0, plan.connect_timeout) + SIZE_SECONDS)
            except (asyncssh.Error, OSError) as exc:
                what = f"{type(exc).__name__}: {exc}" if plan.debug else "the connection was lost"
                raise DeployError(f"{host.label}: {what} while reading the releases", setting="host",
                                  hint="check the network and the server; listing again is safe",
                                  phase="releases") from exc
    except DeployError as exc:
        result.error = error_line(exc, host.label, result.phase)
        result.exit_status = exc.exit_status
        console.error(result.error, host)
    else:
        result.ok, result.listing, result.release = True, listed, listed.current
    result.seconds = loop.time() - started
    return result


def missing_on(results: list[HostResult]) -> dict[str, list[str]]:
    """Release id -> the hosts (of those read) that lack it, for each release that is not on every host."""
    read = [r for r in results if r.listing is not None]
    held = {r.host.label: {release.id for release in r.listing.releases} for r in read if r.listing is not None}
    every = set().union(*held.values()) if held else set()
    return {name: lacking for name in sorted(every)
            if (lacking := [label for label, ids in held.items() if name not in ids])}


def release_rows(listed: HostReleases, lacking: dict[str, list[str]]) -> list[tuple[str, str, str, str, str, str]]:
    """A host's releases as shown, newest first: id, created, commit, state, size, notes (and where it is not)."""
    rows = []
    for release in listed.releases:
        notes = [release.note] if release.note else []
        if release.id in lacking:
            notes.append("not on " + ", ".join(lacking[release.id]))
        size = human_bytes(release.size_kib * 1024) if release.size_kib is not None else "?"
        rows.append((release.id, release.created or "-", release.commit[:7] or "-", release.state, size,
                     "; ".join(notes)))
    return rows


def headline(listed: HostReleases) -> list[str]:
    """What is said of a host before its table: how many releases, which is live, anything odd about the target."""
    if not listed.exists:
        return [f"{listed.target} does not exist: no releases"]
    lines = [f"{len(listed.releases) + listed.omitted} in {posixpath.join(listed.target, RELEASES)}, live: "
             f"{listed.current or 'none'}"]
    if listed.current_other is not None:
        lines.append(f"current points to {listed.current_other}, which is no release of this target")
    if listed.current_not_link:
        lines.append(f"{posixpath.join(listed.target, CURRENT)} exists and is not a symlink")
    if listed.lock is not None:
        lines.append(f"a deploy holds the lock now: {listed.lock or 'unknown'}")
    if listed.omitted:
        lines.append(f"{listed.omitted} older releases are not listed (the newest {LIMIT} are)")
    return lines


def show(results: list[HostResult], console: Console) -> None:
    """Per host: what headline() says, then a table, newest release first; last, how many are not everywhere."""
    lacking = missing_on(results)
    for result in results:
        if result.listing is None:
            continue
        for line in headline(result.listing):
            console.info(f"releases: {line}", result.host)
        rows = release_rows(result.listing, lacking)
        if not rows:
            continue
        rows.insert(0, ("id", "created", "commit", "state", "size", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            cells = [row[i].rjust(widths[i]) if i == 4 else row[i].ljust(widths[i]) for i in range(5)]
            console.info(("  " + "  ".join(cells) + "  " + row[5]).rstrip(), result.host)
    if lacking:
        console.info(f"releases: {len(lacking)} release{'s are' if len(lacking) != 1 else ' is'} not on every host "
                     f"(marked \"not on\" above)")
