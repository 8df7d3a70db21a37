"""Short commands on an open connection, and finding out what the server offers.

Owns the probe (is there a shell, which tar), reading the command run in the probe's exec as its output arrives
(decompressed, never joined), and the helper that runs one short command and captures its output. Every command
string built here quotes its values through `rules`.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

PROBE_MARK = "sshipit-probe-ok"
PROBE_END = "sshipit-probe-end"
_PROBE = (
    f"printf '%s\\n' {PROBE_MARK}; "
    # One process for tar's version (a pipe into grep was two, for every host of a fleet).
    "case $(tar --version 2>/dev/null) in *'GNU tar'*) echo tar=gnu;; *) "
    "if command -v tar >/dev/null 2>&1; then echo tar=other; else echo tar=none; fi;; esac; "
    "for c in zstd gzip; do command -v $c >/dev/null 2>&1 && echo has=$c; done; "
    # GNU find (-printf): the listing that follows is one walk (listing.server_script, told by $sshipit_walk).
    "sshipit_walk=; if find . -maxdepth 0 -cnewer . -printf '' 2>/dev/null; then sshipit_walk=1; "
    "echo has=find-cnewer; elif find . -maxdepth 0 -cnewer . >/dev/null 2>&1; then echo has=find-cnewer; fi; true"
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
    streamed: bool = False  # `then`'s whole output went to `reader` (decompressed)
    reader: AfterReader | None = None


class AfterReader(Protocol):
    """Takes `then`'s output as it arrives (probe_then): a fleet's hosts then never each hold a whole answer."""

    def feed(self, data: bytes, /) -> None: ...

    def fail(self) -> None: ...  # the compressed stream was damaged or cut short


async def probe_then(conn: SSHClientConnection, timeout: float, then: str | None,
                     reader: AfterReader | None = None, packed: bool = True) -> Probed:
    """The probe and, in the same exec (one round trip for both), the read-only command `then`, whose output
    comes back gzipped where the server has gzip and `packed` (across_a_link) asks for it. `then` is built by the
    caller with every value quoted.
    With `reader`, that output is decompressed and handed over piece by piece as it arrives (Probed.streamed),
    never joined: for 20,000 files it is a megabyte compressed, held by every host of a fleet at once otherwise."""
    import asyncssh

    try:
        if reader is not None and then is not None:
            return await _streamed(conn, probe_command(then, packed), timeout, ProbeSplitter(reader, packed))
        result = await capture(conn, probe_command(then, packed), timeout)
    except (asyncssh.ChannelOpenError, asyncssh.ProcessError):
        return NO_SHELL
    return parse_probe(result.raw, result.exit_status, then is not None, packed)


async def _streamed(conn: SSHClientConnection, command: str, timeout: float, split: ProbeSplitter) -> Probed:
    """probe_then with a reader: the probe's own lines are kept (a few bytes), the rest goes to the reader."""
    process = await conn.create_process(command, encoding=None)
    try:
        process.stdin.write_eof()

        async def out() -> None:
            while chunk := await process.stdout.read(1 << 16):
                split.feed(chunk)

        async def err() -> None:  # drained, or an unread stderr would stall the channel
            while await process.stderr.read(1 << 16):
                pass

        async def run() -> int | None:
            await asyncio.gather(out(), err())
            return (await process.wait()).exit_status

        status = await asyncio.wait_for(run(), timeout)
    finally:
        process.close()
    return split.finish(status)


class ProbeSplitter:
    """probe_command(then)'s output as it arrives: the probe's own lines are kept (a few bytes) until its end
    mark, the rest goes to `reader`, decompressed where it comes gzipped (release.py's lock reads its exec's
    answer through one too)."""

    def __init__(self, reader: AfterReader, packed: bool = True) -> None:
        self.reader = reader
        self.packed = packed  # probe_command's: the rest comes gzipped where the server has gzip
        self.head = bytearray()
        self.found: Probed | None = None  # the probe's answer, once its end mark came
        self.unzip: zlib._Decompress | None = None  # while the rest comes gzipped
        self.damaged = False

    def feed(self, chunk: bytes) -> None:
        if self.found is not None:
            if self.damaged:
                return  # the rest is not read: the reader failed already
            if self.unzip is not None:
                try:
                    chunk = self.unzip.decompress(chunk)
                except zlib.error:
                    self.damaged = True
                    self.reader.fail()
                    return
            self.reader.feed(chunk)
            return
        self.head.extend(chunk)
        end = f"\n{PROBE_END}\n".encode()
        at = self.head.find(end)
        if at < 0:
            return
        rest = bytes(self.head[at + len(end):])
        del self.head[at:]
        self.found = parse_probe(bytes(self.head), None, False)
        if self.packed and self.found.traits.shell and "gzip" in self.found.traits.tools:
            self.unzip = zlib.decompressobj(wbits=31)
        if rest:
            self.feed(rest)

    def finish(self, status: int | None) -> Probed:
        """The probe's answer once the command ended with `status`; the reader has had all of `then`'s output."""
        if self.found is None or not self.found.traits.shell:  # no end mark: the caller reads again on its own
            return parse_probe(bytes(self.head), status, True, self.packed)
        gzip = self.unzip is not None
        if self.unzip is not None and not self.damaged and not self.unzip.eof:
            self.reader.fail()  # cut short
        return Probed(self.found.traits, None, status, gzip, streamed=True, reader=self.reader)


def probe_command(then: str | None, packed: bool = True) -> str:
    """The shell command behind probe_then (release.py's lock runs it too, in the lock's own exec)."""
    command = _PROBE
    if then is not None and not packed:
        command += f"; printf '%s\\n' {PROBE_END}; ( {then} )"
    elif then is not None:
        # In a subshell either way: `then` may exit or change directory. The probe's own lines come first and
        # are ours alone, so the first end mark is the boundary whatever `then` prints.
        command += (f"; printf '%s\\n' {PROBE_END}; if command -v gzip >/dev/null 2>&1; "
                    f"then {{ {then}; }} | gzip -1c; else ( {then} ); fi")
    return command


NO_SHELL = Probed(ServerTraits(shell=False, tar="none"), None, None, False)


def parse_probe(raw: bytes, exit_status: int | None, then: bool, packed: bool = True) -> Probed:
    """What probe_command printed (`then`: it ran a command after the probe; `packed`: probe_command's)."""
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
    return Probed(ServerTraits(shell=True, tar=tar, tools=frozenset(tools)), after, exit_status,
                  packed and "gzip" in tools)


def across_a_link(conn: SSHClientConnection, jumps: object) -> bool:
    """Whether compressing what travels can pay: not to a server on this machine, where the "link" is memory and
    compressing only costs CPU on both ends (through a jump host, the first hop is a real link)."""
    return bool(jumps) or not on_this_machine(conn)


def on_this_machine(conn: SSHClientConnection) -> bool:
    """True when the connection's socket goes to a loopback address: the "link" is memory, not a network."""
    import ipaddress

    peer = conn.get_extra_info("peername")
    try:
        return bool(peer) and ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback
    except ValueError:
        return False
