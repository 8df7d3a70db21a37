"""Running the user's commands on a host: one remote shell, live output, honest exit statuses.

Owns the remote script (exports, `cd` into the target, each command evaluated whole so if/else blocks and
heredocs are never cut apart, stop-at-first-failure), how it reaches the server (on stdin, checked for
completeness before anything runs, so values never appear in a remote argv), streaming output line by line
with secrets masked, `command_timeout`, and not hanging on commands that leave a background job running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.errors import EXIT_TIMEOUT, DeployError
from sshipit.rules import quote, shell_path

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.plan import HostSpec, Plan

Emit = Callable[[str], None]

# How long to wait for the channel to close after the script said it finished: a background job that kept
# the output pipe open must not hang the step.
_CLOSE_GRACE = 2.0


@dataclass
class CommandsResult:
    exit_status: int
    failed: list[tuple[int, int]] = field(default_factory=list)  # (1-based command number, status)
    timed_out: bool = False
    seconds: float = 0.0


def build_script(plan: Plan, nonce: str, commands: list[str], cwd: str | None) -> str:
    """The whole remote script. Markers (\\037 + nonce) tell the reader which command runs and how it ended."""

    def mark(what: str) -> str:
        return f"printf '\\037{nonce}:{what}\\037\\n'"

    lines = [
        "exec 2>&1",
        f"trap '__sshipit_rc=$?; printf \"\\037{nonce}:exit:%d\\037\\n\" \"$__sshipit_rc\"' EXIT",
        f"printf '\\037{nonce}:pid:%d\\037\\n' \"$$\"",
    ]
    if cwd is not None:
        lines.append(f"mkdir -p -- {shell_path(cwd)} && cd -- {shell_path(cwd)} || exit 1")
    for name, value in plan.exports:
        lines.append(f"export {name}={quote(value)}")
    lines.append("__sshipit_first=0")
    if plan.script_stop:
        lines.append("set -e")
    for number, command in enumerate(commands, start=1):
        lines.append(mark(f"cmd:{number}"))
        lines.append(f"eval {quote(command)}")
        lines.append(
            f"__sshipit_r=$?; printf '\\037{nonce}:rc:{number}:%d\\037\\n' \"$__sshipit_r\"; "
            '[ "$__sshipit_r" -eq 0 ] || [ "$__sshipit_first" -ne 0 ] || __sshipit_first=$__sshipit_r'
            if not plan.script_stop
            else mark(f"rc:{number}:0")
        )
    lines.append('exit "$__sshipit_first"')
    lines.append(sentinel(nonce))
    return "\n".join(lines)


def sentinel(nonce: str) -> str:
    return f"# sshipit-end {nonce}"


def launcher(nonce: str, pty: bool, length: int) -> str:
    """The exec request: read the whole script from stdin, refuse a truncated one, then run it.

    The script travels on stdin so exported values never show in a process list on the server. Without a
    PTY, the commands' stdin is /dev/null (a command that reads stdin cannot swallow the script or hang).
    """
    check = (f"case \"$S\" in *{quote(sentinel(nonce))}) ;; "
             "*) echo 'sshipit: the script arrived incomplete; nothing was run' >&2; exit 97;; esac")
    if pty:
        # A terminal would echo and edit the script: switch it to raw mode, say so, read exactly `length` bytes.
        return (f"stty raw -echo 2>/dev/null; printf '\\037{nonce}:ready\\037\\n'; S=$(head -c {length}); "
                f"stty sane 2>/dev/null; {check}; eval \"$S\"")
    return f"S=$(cat) && {check} && exec </dev/null && eval \"$S\""


class _Reader:
    """Splits the output stream into lines and markers."""

    def __init__(self, nonce: str, emit: Emit, show_command: Callable[[int], None]) -> None:
        self.marker = re.compile(rb"\x1f" + nonce.encode() + rb":([a-z]+)((?::-?\d+)*)\x1f\r?\n?")
        self.buffer = b""
        self.emit = emit
        self.show_command = show_command
        self.pid: int | None = None
        self.exit: int | None = None
        self.ready = False
        self.current = 0
        self.failed: list[tuple[int, int]] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            match = self.marker.search(self.buffer)
            if match is None:
                break
            self._lines(self.buffer[: match.start()], final=True)
            self.buffer = self.buffer[match.end():]
            kind = match.group(1).decode()
            numbers = [int(n) for n in match.group(2).decode().split(":")[1:]]
            self._marker(kind, numbers)
        # Keep a possible partial marker (and the partial line before it) for the next chunk.
        cut = self.buffer.rfind(b"\n") + 1
        if cut:
            self._lines(self.buffer[:cut], final=False)
            self.buffer = self.buffer[cut:]
        elif len(self.buffer) > 64 * 1024 and b"\x1f" not in self.buffer:
            self._lines(self.buffer, final=True)
            self.buffer = b""

    def finish(self) -> None:
        self._lines(self.buffer, final=True)
        self.buffer = b""

    def _lines(self, data: bytes, final: bool) -> None:
        if not data:
            return
        text = data.decode("utf-8", "replace")
        parts = text.split("\n")
        if parts and parts[-1] == "":
            parts.pop()
        for part in parts:
            self.emit(part.rstrip("\r"))

    def _marker(self, kind: str, numbers: list[int]) -> None:
        if kind == "pid" and numbers:
            self.pid = numbers[0]
        elif kind == "cmd" and numbers:
            self.current = numbers[0]
            self.show_command(numbers[0])
        elif kind == "rc" and len(numbers) == 2 and numbers[1] != 0:
            self.failed.append((numbers[0], numbers[1]))
        elif kind == "exit" and numbers:
            self.exit = numbers[0]
        elif kind == "ready":
            self.ready = True


async def run_commands(
    conn: SSHClientConnection,
    host: HostSpec,
    plan: Plan,
    commands: list[str],
    cwd: str | None,
    emit: Emit,
    show_command: Callable[[int], None],
    timeout: float | None = None,
) -> CommandsResult:
    """Run `commands` in one remote shell started in `cwd` (created if missing)."""
    import asyncssh

    nonce = secrets.token_hex(6)
    script = build_script(plan, nonce, commands, cwd).encode("utf-8", "surrogateescape")
    limit = plan.command_timeout if timeout is None else timeout
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader = _Reader(nonce, emit, show_command)
    process = await conn.create_process(
        launcher(nonce, plan.request_pty, len(script)),
        encoding=None,
        request_pty="force" if plan.request_pty else False,
        term_type="xterm" if plan.request_pty else None,
        stderr=asyncssh.STDOUT,
    )

    async def pump() -> None:
        if plan.request_pty:
            while not reader.ready:
                data = await process.stdout.read(65536)
                if not data:
                    return
                reader.feed(data)
            process.stdin.write(script)
        else:
            process.stdin.write(script)
            process.stdin.write_eof()
        while reader.exit is None:
            data = await process.stdout.read(65536)
            if not data:
                return
            reader.feed(data)

    timed_out = False
    try:
        await asyncio.wait_for(pump(), limit)
    except TimeoutError:
        timed_out = True
        await _stop(conn, reader.pid)
    except (asyncssh.Error, ConnectionError, BrokenPipeError):
        pass
    reader.finish()
    try:
        await asyncio.wait_for(process.wait_closed(), _CLOSE_GRACE)
    except TimeoutError:
        pass  # a background job holds the pipe open; the script itself is done
    finally:
        process.close()
    seconds = loop.time() - started
    if timed_out:
        return CommandsResult(EXIT_TIMEOUT, reader.failed, True, seconds)
    status = reader.exit if reader.exit is not None else process.exit_status
    if status is None:
        if conn.is_closed() or process.exit_signal is None:
            raise DeployError(
                f"{host.label}: the connection was lost while the commands ran (last started: command "
                f"{reader.current or 'none'})",
                setting="host",
                hint="the commands may have partly run; check the server before running the deploy again",
                phase="commands",
            )
        signal_name = process.exit_signal[0]
        raise DeployError(f"{host.label}: the remote shell was killed by signal {signal_name}",
                          setting="commands", phase="commands")
    if status == 97 and reader.pid is None:
        raise DeployError(f"{host.label}: the script did not arrive whole; nothing was run", setting="commands",
                          phase="commands")
    failed = reader.failed
    if status != 0 and plan.script_stop and reader.current and not any(n == reader.current for n, _ in failed):
        failed = [*failed, (reader.current, status)]
    return CommandsResult(status, failed, False, seconds)


async def _stop(conn: SSHClientConnection, pid: int | None) -> None:
    """End the remote run: TERM its process group, then KILL what is left. Uses the same connection."""
    if pid is None or conn.is_closed():
        return
    from sshipit.remote import capture

    command = f"kill -TERM -- -{pid} 2>/dev/null; sleep 1; kill -KILL -- -{pid} 2>/dev/null; true"
    # Best effort: the channel close that follows ends the session anyway.
    with contextlib.suppress(Exception):
        await capture(conn, command, timeout=10)
