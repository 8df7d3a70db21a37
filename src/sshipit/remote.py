"""Short commands on an open connection, and finding out what the server offers.

Owns the probe (is there a shell, which tar) and the helper that runs one short command and captures its
output. Every command string built here quotes its values through `rules`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

PROBE_MARK = "sshipit-probe-ok"
PROBE_END = "sshipit-probe-end"
_PROBE = (
    f"printf '%s\\n' {PROBE_MARK}; "
    "if tar --version 2>/dev/null | grep -q 'GNU tar'; then echo tar=gnu; "
    "elif command -v tar >/dev/null 2>&1; then echo tar=other; else echo tar=none; fi; "
    "for c in zstd gzip; do command -v $c >/dev/null 2>&1 && echo has=$c; done; "
    "find . -maxdepth 0 -cnewer . >/dev/null 2>&1 && echo has=find-cnewer; true"
)


@dataclass(frozen=True)
class ServerTraits:
    shell: bool  # False for an SFTP-only account (ForceCommand internal-sftp, a nologin shell)
    tar: str  # gnu, other (BusyBox, bsdtar) or none
    tools: frozenset[str] = frozenset()  # found: zstd, gzip, find-cnewer (GNU find; BusyBox's has not)

    @property
    def tar_extract(self) -> str:
        """The extract command: keep modes and mtimes, never restore the CI's owners."""
        return "tar -xpof -" if self.tar == "gnu" else "tar -xof -"


@dataclass
class Captured:
    exit_status: int | None
    stdout: str
    stderr: str
    raw: bytes = b""  # stdout as it came (for output that is not text, like a gzip stream)


async def capture(conn: SSHClientConnection, command: str, timeout: float, stdin: bytes = b"") -> Captured:
    """Run one command to completion and return its output (decoded leniently)."""
    process = await conn.create_process(command, encoding=None)
    try:
        if stdin:
            process.stdin.write(stdin)
        process.stdin.write_eof()
        result = await asyncio.wait_for(process.wait(), timeout)
    finally:
        process.close()
    out = result.stdout if isinstance(result.stdout, bytes) else b""
    err = result.stderr if isinstance(result.stderr, bytes) else b""
    return Captured(result.exit_status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), out)


async def probe(conn: SSHClientConnection, timeout: float) -> ServerTraits:
    """One round trip that tells whether commands can run and which tar extracts our stream."""
    return (await probe_then(conn, timeout, None)).traits


@dataclass
class Probed:
    traits: ServerTraits
    after: bytes | None  # the output of the read-only command run after the probe (None: not run, or no shell)
    exit_status: int | None  # that command's
    gzip: bool  # `after` is gzipped


async def probe_then(conn: SSHClientConnection, timeout: float, then: str | None) -> Probed:
    """The probe and, in the same exec (one round trip for both), the read-only command `then`, whose output
    comes back gzipped where the server has gzip. `then` is built by the caller with every value quoted."""
    import asyncssh

    try:
        result = await capture(conn, probe_command(then), timeout)
    except (asyncssh.ChannelOpenError, asyncssh.ProcessError):
        return NO_SHELL
    return parse_probe(result.raw, result.exit_status, then is not None)


def probe_command(then: str | None) -> str:
    """The shell command behind probe_then (release.py's lock runs it too, in the lock's own exec)."""
    command = _PROBE
    if then is not None:
        # In a subshell either way: `then` may exit or change directory. The probe's own lines come first and
        # are ours alone, so the first end mark is the boundary whatever `then` prints.
        command += (f"; printf '%s\\n' {PROBE_END}; if command -v gzip >/dev/null 2>&1; "
                    f"then {{ {then}; }} | gzip -1c; else ( {then} ); fi")
    return command


NO_SHELL = Probed(ServerTraits(shell=False, tar="none"), None, None, False)


def parse_probe(raw: bytes, exit_status: int | None, then: bool) -> Probed:
    """What probe_command printed (`then`: it ran a command after the probe)."""
    head, after = raw, None
    if then:
        head, found, rest = raw.partition(f"\n{PROBE_END}\n".encode())
        after = rest if found else None
    text = head.decode("utf-8", "replace")
    if PROBE_MARK not in text:
        return NO_SHELL
    tar = "none"
    tools = set()
    for line in text.splitlines():
        if line.startswith("tar="):
            tar = line[4:].strip()
        elif line.startswith("has="):
            tools.add(line[4:].strip())
    return Probed(ServerTraits(shell=True, tar=tar, tools=frozenset(tools)), after, exit_status, "gzip" in tools)


def on_this_machine(conn: SSHClientConnection) -> bool:
    """True when the connection's socket goes to a loopback address: the "link" is memory, not a network."""
    import ipaddress

    peer = conn.get_extra_info("peername")
    try:
        return bool(peer) and ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback
    except ValueError:
        return False
