"""The upload for accounts that allow SFTP only (or servers without tar): the same result as the tar stream.

Owns staging over SFTP: every entry goes first into a hidden staging directory inside the target (as the tar path
does), so a failed upload (a cut connection, a full disk, a source that changed while read) leaves the target as it
was; only then are `rm` and `delete` applied and the staged paths renamed into place (a name the target lacks in
one rename, however much is below it; a file over an old one by an atomic rename). Names travel as bytes, so a
non-UTF-8 name lands as built; modes are set exactly, and mtimes clamped as the tar stream clamps them (wire_mtime).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
from typing import TYPE_CHECKING

from sshipit.errors import DeployError, local_cause, local_file_error
from sshipit.privilege import sftp_owner
from sshipit.rules import precious_reason
from sshipit.sources import Entry
from sshipit.staging import STAGING
from sshipit.upload import (
    CHUNK,
    Progress,
    UploadStats,
    changed_while_read,
    explain_remote_failure,
    refused_target,
    wire_mtime,
)

if TYPE_CHECKING:
    from asyncssh import SFTPClient, SSHClientConnection

    from sshipit.plan import HostSpec, Plan

_IN_FLIGHT = 16  # files (and renames) at once, each file with its own pipelined requests
_STALE = 3600  # seconds after which a staging directory left by a killed upload is removed


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


async def upload_sftp(
    conn: SSHClientConnection, host: HostSpec, plan: Plan, entries: list[Entry], dest: str | None = None,
    progress: Progress | None = None,
) -> UploadStats:
    """Upload `entries` into `dest` (the target by default) over SFTP: staged, then placed."""
    import asyncssh

    assert plan.target is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    stats = UploadStats("sftp")
    root = dest or plan.target
    broot = _raw(root)
    staging_name = _raw(STAGING + secrets.token_hex(6))
    staging = broot + b"/" + staging_name
    ids = sftp_owner(host, plan.privileges.owner) if plan.privileges.owner else None
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.makedirs(broot, exist_ok=True)
            if plan.rm or plan.delete:  # resolved by the server, as rules.clearing_guard does on the tar path
                why = precious_reason(os.fsdecode(await sftp.realpath(broot)), os.fsdecode(await sftp.realpath(b".")))
                ways = {"/".join(p.split("/")[:n]) for p in plan.delete for n in range(1, p.count("/") + 1)}
                link = None
                for way in sorted(ways):
                    if link is None and await sftp.islink(broot + b"/" + _raw(way)):
                        link = way
                if why or link:
                    raise refused_target(host, root, why or f"holds {link}, a symlink, on the way to a delete path")
            await _drop_stale(sftp, broot)
            await sftp.mkdir(staging)
            try:
                await _stage(sftp, staging, entries, progress)
                if ids is not None:  # in the staging: a refused chown leaves the target as it was
                    await asyncio.gather(*(sftp.chown(staging + b"/" + _raw(e.name), *ids)
                                           for e in entries if e.kind != "symlink"))
            except BaseException as exc:
                full = isinstance(exc, asyncssh.SFTPFailure) and await _full(sftp, staging)
                await asyncio.shield(_remove(sftp, staging))
                if full:  # SFTP v3 says only "Failure" for a full disk: its free space says more
                    raise explain_remote_failure(host, root, "No space left on device", "SFTP upload") from None
                raise
            if plan.rm:
                for name in await sftp.listdir(broot):
                    if name not in (b".", b"..", staging_name):
                        await _remove(sftp, broot + b"/" + name)
            for path in plan.delete:
                await _remove(sftp, broot + b"/" + _raw(path))
            await _place(sftp, broot, staging, entries)
            await _remove(sftp, staging)
    except asyncssh.SFTPError as exc:
        reason = exc.reason or str(exc)
        raise explain_remote_failure(host, root, reason, "SFTP upload") from None
    except (OSError, asyncssh.Error) as exc:
        local = local_cause(exc)
        if local is not None:  # a file on this machine, not the server: name it (same words as the tar path)
            raise local_file_error(local.filename, local) from None
        raise DeployError(f"{host.label}: SFTP upload failed: {exc}", setting="target", phase="upload") from None
    stats.files = sum(1 for e in entries if e.kind == "file")
    stats.bytes = sum(e.size for e in entries)
    stats.wire_bytes = stats.bytes
    stats.seconds = loop.time() - started
    return stats


def _ordered(entries: list[Entry]) -> list[Entry]:
    """Parents before children."""
    return sorted(entries, key=lambda e: e.name.split("/"))


async def _stage(sftp: SFTPClient, staging: bytes, entries: list[Entry], progress: Progress | None) -> None:
    import asyncssh

    for entry in _ordered(entries):
        if entry.kind == "dir":  # made writable for now; the exact mode is set once everything is placed
            await sftp.mkdir(staging + b"/" + _raw(entry.name), asyncssh.SFTPAttrs(permissions=0o700))
    limit = asyncio.Semaphore(_IN_FLIGHT)

    async def send(entry: Entry) -> None:
        remote = staging + b"/" + _raw(entry.name)
        async with limit:
            if entry.kind == "symlink":
                await sftp.symlink(_raw(entry.link), remote)
                return
            await _put(sftp, entry, remote, progress)

    await asyncio.gather(*(send(e) for e in entries if e.kind != "dir"))


async def _put(sftp: SFTPClient, entry: Entry, remote: bytes, progress: Progress | None) -> None:
    """One file, with the same checks as the tar stream: the size collected, and no change while it is read."""
    import asyncssh

    try:
        before = os.stat(entry.local, follow_symlinks=False)
    except OSError as exc:
        raise local_file_error(entry.local, exc) from None
    if before.st_size != entry.size:
        raise changed_while_read(entry, f"{entry.size} bytes when collected, {before.st_size} now")
    copied = [0]  # this file's bytes already counted: the callback reports running totals

    def count(_src: bytes, _dst: bytes, done: int, _total: int) -> None:
        if progress is not None:
            progress.bytes += done - copied[0]
            copied[0] = done

    await sftp.put(entry.local, remote, block_size=CHUNK // 2, max_requests=16, progress_handler=count)
    after = os.stat(entry.local, follow_symlinks=False)
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        raise changed_while_read(entry, f"{before.st_size} bytes when opened, {after.st_size} after reading"
                                 if after.st_size != before.st_size else "its mtime moved")
    when = wire_mtime(entry.mtime)
    await sftp.setstat(remote, asyncssh.SFTPAttrs(permissions=entry.mode & 0o7777, atime=when, mtime=when))
    if progress is not None:
        progress.files += 1


async def _place(sftp: SFTPClient, root: bytes, staging: bytes, entries: list[Entry]) -> None:
    """Rename the staged entries into the target. A directory the target lacks (or has as another type) moves
    whole; one it has is merged; a file or symlink replaces what is there by one atomic rename."""
    import asyncssh

    moved: set[str] = set()

    def below_moved(name: str) -> bool:
        while "/" in name:
            name = name.rpartition("/")[0]
            if name in moved:
                return True
        return False

    ordered = _ordered(entries)
    for entry in ordered:
        if entry.kind != "dir" or below_moved(entry.name):
            continue
        target = root + b"/" + _raw(entry.name)
        kind = await _kind(sftp, target)
        if kind == "dir":
            continue
        if kind is not None:
            await _remove(sftp, target)
        await sftp.posix_rename(staging + b"/" + _raw(entry.name), target)
        moved.add(entry.name)
    limit = asyncio.Semaphore(_IN_FLIGHT)

    async def place(entry: Entry) -> None:
        target = root + b"/" + _raw(entry.name)
        async with limit:
            if await _kind(sftp, target) == "dir":
                await _remove(sftp, target)
            await sftp.posix_rename(staging + b"/" + _raw(entry.name), target)

    await asyncio.gather(*(place(e) for e in ordered if e.kind != "dir" and not below_moved(e.name)))
    # Modes and times last: placing entries moved each directory's mtime, and a read-only mode would have
    # stopped the placing.
    for entry in reversed(ordered):
        if entry.kind == "dir":
            when = wire_mtime(entry.mtime)
            await sftp.setstat(root + b"/" + _raw(entry.name),
                               asyncssh.SFTPAttrs(permissions=entry.mode & 0o7777, atime=when, mtime=when))


async def _kind(sftp: SFTPClient, path: bytes) -> str | None:
    import asyncssh

    try:
        attrs = await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return None
    return "dir" if attrs.permissions is not None and stat.S_ISDIR(attrs.permissions) else "other"


async def _remove(sftp: SFTPClient, path: bytes) -> None:
    """Remove a path whatever it is; a symlink itself, never what it points to."""
    import asyncssh

    kind = await _kind(sftp, path)
    try:
        if kind == "dir":
            await sftp.rmtree(path)
        elif kind is not None:
            await sftp.remove(path)
    except asyncssh.SFTPNoSuchFile:
        pass


async def _full(sftp: SFTPClient, path: bytes) -> bool:
    """Whether the file system holding `path` has no block left for the login (statvfs@openssh.com)."""
    import asyncssh

    try:
        info = await sftp.statvfs(path)
    except (asyncssh.Error, OSError):
        return False
    return info.bavail == 0 or (info.favail == 0 and info.files > 0)


async def _drop_stale(sftp: SFTPClient, root: bytes) -> None:
    """Remove staging directories that killed uploads left behind (older than an hour)."""
    prefix = STAGING.encode()
    for name in await sftp.readdir(root):
        raw = name.filename if isinstance(name.filename, bytes) else _raw(name.filename)
        if raw.startswith(prefix) and (name.attrs.mtime or 0) < time.time() - _STALE:
            await _remove(sftp, root + b"/" + raw)
