"""Running the user's commands on a host: one remote shell, live output, honest exit statuses.

Owns the remote script (the deploy's facts and the envs as exports, `cd` into the target, each command evaluated
whole so if/else blocks and heredocs are never cut apart, stop-at-first-failure), how it reaches the server (on
stdin, checked for completeness before anything runs, so values never appear in a remote argv), streaming output
line by line
(in time linear and memory bounded for any bytes; a line too long to hold is cut where no secret is split),
which line of the user's command failed (bash's ERR trap, and bash's own `line N` mapped back to it),
`command_timeout`, and not hanging on commands that leave a background job running.
"""

from __future__ import annotations

import asyncio
import codecs
import posixpath
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sshipit.errors import EXIT_TIMEOUT, DeployError
from sshipit.rules import Masker, quote, shell_path

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.plan import HostSpec, Plan

Emit = Callable[[str], None]

# How long to wait for the channel to close after the script said it finished: a background job that kept
# the output pipe open must not hang the step.
_CLOSE_GRACE = 2.0
# How long stopping a run that outlived its timeout may take (TERM, a second, KILL, and the server's answer):
# with _CLOSE_GRACE, what a timeout may add to the step's wall time, even when the server stopped answering.
_STOP_GRACE = 4.0
LINE_LIMIT = 64 * 1024  # characters of one output line held before it is printed in parts
_MARKER_MAX = 128  # bytes: the longest marker (\037 nonce:kind:numbers \037 \r\n) and then some


@dataclass
class CommandsResult:
    exit_status: int
    failed: list[tuple[int, int]] = field(default_factory=list)  # (1-based command number, status)
    timed_out: bool = False
    seconds: float = 0.0
    lines: dict[int, int] = field(default_factory=dict)  # command number -> its failing line, where known
    unstopped: str = ""  # timed out, and the stop was not confirmed: why (so it may still be running)


@dataclass
class Facts:
    """What one host's remote commands are told about the deploy, as SSHIPIT_* variables (plan.facts). Each host
    works on a copy of the plan with its own Facts (session.deploy_host); atomic.py fills in the releases once it
    knows them."""

    host: str = ""  # the host's label, as the output names it
    target: str = ""
    commit: str = ""
    release: str = ""  # the new release's id (in after_rollback: the release live again); empty in plain mode
    previous: str = ""  # the release that was live before (in after_rollback: the one rolled back from)
    path: str = ""  # where this deploy's files are: the release's directory, or the target in plain mode
    error: str | None = None  # on_failure only: the host's error line, masked

    def exports(self) -> list[tuple[str, str, bool]]:
        """(name, value, is a remote path) in a stable order; the paths are made absolute on the server."""
        pairs = [("SSHIPIT_HOST", self.host, False), ("SSHIPIT_TARGET", self.target, True),
                 ("SSHIPIT_COMMIT", self.commit, False), ("SSHIPIT_RELEASE", self.release, False),
                 ("SSHIPIT_PREVIOUS_RELEASE", self.previous, False), ("SSHIPIT_RELEASE_PATH", self.path, True)]
        if self.error is not None:
            pairs.append(("SSHIPIT_ERROR", self.error, False))
        return pairs


def build_script(plan: Plan, nonce: str, commands: list[str], cwd: str | None, make_cwd: bool = True) -> str:
    """The whole remote script. Markers (\\037 + nonce) tell the reader which command runs and how it ended.

    The deploy's facts (plan.facts: SSHIPIT_RELEASE, SSHIPIT_HOST, ...) are exported before the `cd`, so that a
    relative target is made absolute from where the login starts; the user's envs follow. `make_cwd=False`: a
    missing `cwd` is not created, the commands run in the login's start directory instead (on_failure, after a
    failure that left no target)."""

    def mark(what: str) -> str:
        return f"printf '\\037{nonce}:{what}\\037\\n'"

    lines = [
        "exec 2>&1",
        f"trap '__sshipit_rc=$?; printf \"\\037{nonce}:exit:%d\\037\\n\" \"$__sshipit_rc\"' EXIT",
        # bash tells the line of each failure (other shells have no ERR trap): the user's line of the command
        f"[ -n \"${{BASH_VERSION-}}\" ] && trap '__sshipit_e=$?; printf \"\\037{nonce}:err:%d:%d\\037\\n\" "
        f"\"$LINENO\" \"$__sshipit_e\"' ERR",
        f"printf '\\037{nonce}:pid:%d\\037\\n' \"$$\"",
    ]
    for name, value, is_path in plan.facts.exports():
        lines.append(f"export {name}={absolute(value) if is_path else quote(value)}")
    if cwd is not None and make_cwd:
        # cd first: the directory is there on every deploy but the first, and `mkdir` is a process on each host.
        lines.append(f"{{ cd -- {shell_path(cwd)} 2>/dev/null || {{ mkdir -p -- {shell_path(cwd)} && "
                     f"cd -- {shell_path(cwd)}; }}; }} || exit 1")
    elif cwd is not None:
        lines.append(f"cd -- {shell_path(cwd)} 2>/dev/null || :")
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


def absolute(path: str) -> str:
    """A remote path, quoted, made absolute from the start directory (where relative targets are)."""
    if not path or path.startswith("/"):
        return quote(path)
    normal = posixpath.normpath(path)
    return '"$PWD"' if normal == "." else '"$PWD"/' + quote(normal)


def eval_ends(script: str, nonce: str, commands: list[str]) -> list[int]:
    """The line of `script` on which each command's `eval '...'` ends. bash numbers the lines inside an eval from
    there: line j of command k is reported as line ends[k-1] + j - 1 (the launcher's own eval is on line 1)."""
    ends: list[int] = []
    at = 0
    for number, command in enumerate(commands, start=1):
        at = script.index(f"\\037{nonce}:cmd:{number}\\037", at)
        mark_line = script.count("\n", 0, at) + 1
        ends.append(mark_line + 1 + command.count("\n"))
    return ends


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


# bash's own messages name the line of the generated script: `bash: line 11: x: command not found` (`sh:` when
# bash runs as sh; dash numbers lines inside the eval already: `sh: 3: eval: x: not found`).
_BASH_LINE = re.compile(r"^((?:\S*/)?-?(?:ba)?sh: (?:eval: )?)line (\d+): ")


class _Reader:
    """Splits the output stream into lines and markers, in time linear in the bytes and memory bounded.

    Bytes are scanned once: only a possible marker cut by a chunk boundary (at most _MARKER_MAX bytes) waits for
    the next chunk. A line longer than LINE_LIMIT characters is printed in parts, each cut where the masker
    says no secret is split. CR, LF and CRLF each end a line (as CI runners read them), so a server cannot hide
    text behind a carriage return.
    """

    def __init__(self, nonce: str, emit: Emit, show_command: Callable[[int], None],
                 masker: Masker | None = None, commands: list[str] | None = None,
                 ends: list[int] | None = None) -> None:
        self.marker = re.compile(rb"\x1f" + nonce.encode() + rb":([a-z]+)((?::-?\d+)*)\x1f\r?\n?")
        self.partial_marker = re.compile(rb"[a-z]*(?::-?\d*)*|[a-z]+(?::-?\d+)*\x1f\r?")
        self.head = b"\x1f" + nonce.encode() + b":"
        self.pending = b""  # the start of a marker that the next chunk may complete
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.line: list[str] = []  # the current line's text so far
        self.size = 0
        self.cr = False  # the last chunk ended with a CR
        self.masker = masker or Masker()
        self.commands = commands or []
        self.ends = ends or []
        self.emit = emit
        self.show_command = show_command
        self.pid: int | None = None
        self.exit: int | None = None
        self.ready = False
        self.current = 0
        self.failed: list[tuple[int, int]] = []
        self.errors: dict[int, list[tuple[int, int]]] = {}  # command -> (script line, status) of each ERR
        self.said: dict[int, int] = {}  # command -> the first of its lines bash named in a message

    def feed(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        self.pending = b""
        at = 0
        while True:
            # Only `\037<nonce>:` can start a marker: found by bytes.find, so any bytes cost the same.
            found = buffer.find(self.head, at)
            if found < 0:
                keep = self._head_start(buffer, at)
                self._text(buffer[at:len(buffer) - keep])
                self.pending = bytes(buffer[len(buffer) - keep:])
                return
            self._text(buffer[at:found])
            match = self.marker.match(buffer, found)
            if match is not None and (match.end() < len(buffer) or buffer.endswith(b"\n")):
                self._end_line()
                self._marker(match.group(1).decode(), [int(n) for n in match.group(2).decode().split(":")[1:]])
                at = match.end()
            elif len(buffer) - found <= _MARKER_MAX and self.partial_marker.fullmatch(
                    buffer, found + len(self.head)) is not None:
                self.pending = bytes(buffer[found:])  # a marker the next chunk completes
                return
            else:  # the nonce in the command's own output: text
                self._text(buffer[found:found + 1])
                at = found + 1

    def _head_start(self, buffer: bytes, at: int) -> int:
        """How many bytes at the end of `buffer` may be the start of a marker's head (cut by the chunk)."""
        start = buffer.rfind(b"\x1f", max(at, len(buffer) - len(self.head) + 1))
        return len(buffer) - start if start >= 0 and self.head.startswith(buffer[start:]) else 0

    def finish(self) -> None:
        pending, self.pending = self.pending, b""
        match = self.marker.match(pending) if pending else None
        if match is not None and match.end() == len(pending):
            self._end_line()
            self._marker(match.group(1).decode(), [int(n) for n in match.group(2).decode().split(":")[1:]])
        else:
            self._text(pending)
        self._text(b"", final=True)
        self._end_line()

    def _text(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if self.cr:  # a CR that ended the last chunk: a CRLF cut in two is one line end, not two
            text, self.cr = "\r" + text, False
        if text.endswith("\r") and not final:
            text, self.cr = text[:-1], True
        if not text:
            return
        parts = re.split(r"\r\n|\r|\n", text)
        for part in parts[:-1]:
            self.line.append(part)
            self._emit_line("".join(self.line))
            self.line, self.size = [], 0
        if parts[-1]:
            self.line.append(parts[-1])
            self.size += len(parts[-1])
        if self.size > LINE_LIMIT:
            held = "".join(self.line)
            cut = self.masker.safe_cut(held)
            if held[cut - 1:cut] == "\r":  # a CRLF must not be cut in two (the LF would make an empty line)
                cut -= 1
            if cut > 0:
                self._emit_line(held[:cut])
                held = held[cut:]
            self.line, self.size = [held] if held else [], len(held)

    def _end_line(self) -> None:
        """Text before a marker (output without a final newline) is a line of its own."""
        self._text(b"", final=True)
        if self.size:
            self._emit_line("".join(self.line))
        self.line, self.size = [], 0

    def _emit_line(self, text: str) -> None:
        if self.current and "line " in text:
            text = _BASH_LINE.sub(self._user_line, text, count=1)
        self.emit(text)

    def _user_line(self, match: re.Match[str]) -> str:
        """`bash: line 11:` -> `bash: command 1, line 2:` when line 11 of the script is line 2 of command 1."""
        line = self.user_line(self.current, int(match.group(2)))
        if line is None:
            return match.group(0)
        self.said.setdefault(self.current, line)  # a syntax error has no ERR trap: bash's own word is the line
        return f"{match.group(1)}command {self.current}, line {line}: "

    def user_line(self, number: int, script_line: int) -> int | None:
        if not 0 < number <= len(self.ends):
            return None
        line = script_line - self.ends[number - 1] + 1
        return line if 0 < line <= self.commands[number - 1].count("\n") + 1 else None

    def _marker(self, kind: str, numbers: list[int]) -> None:
        if kind == "pid" and numbers:
            self.pid = numbers[0]
        elif kind == "cmd" and numbers:
            self.current = numbers[0]
            self.show_command(numbers[0])
        elif kind == "rc" and len(numbers) == 2 and numbers[1] != 0:
            self.failed.append((numbers[0], numbers[1]))
        elif kind == "err" and len(numbers) == 2 and self.current:
            self.errors.setdefault(self.current, []).append((numbers[0], numbers[1]))
        elif kind == "exit" and numbers:
            self.exit = numbers[0]
        elif kind == "ready":
            self.ready = True

    def failing_lines(self, failed: list[tuple[int, int]], stop: bool) -> dict[int, int]:
        """The line of each failed command that failed, where bash told it. With script_stop the first failure
        ends the shell; without, the eval itself fails last (at its own line): the one before it is the user's."""
        found: dict[int, int] = {}
        for number, _status in failed:
            errors = list(self.errors.get(number, []))
            if not stop and len(errors) > 1 and errors[-1][0] == self.ends[number - 1]:
                errors.pop()
            elif not stop and len(errors) == 1 and self.commands[number - 1].count("\n"):
                errors = []  # only the eval's own: the command's last status was not a failure bash traps
            line = self.user_line(number, errors[0][0] if stop else errors[-1][0]) if errors else None
            line = line or self.said.get(number)
            if line is not None:
                found[number] = line
        return found


async def run_commands(
    conn: SSHClientConnection,
    host: HostSpec,
    plan: Plan,
    commands: list[str],
    cwd: str | None,
    emit: Emit,
    show_command: Callable[[int], None],
    timeout: float | None = None,
    make_cwd: bool = True,
) -> CommandsResult:
    """Run `commands` in one remote shell started in `cwd` (created if missing, unless `make_cwd` is False)."""
    import asyncssh

    nonce = secrets.token_hex(6)
    script = build_script(plan, nonce, commands, cwd, make_cwd).encode("utf-8", "surrogateescape")
    limit = plan.command_timeout if timeout is None else timeout
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader = _Reader(nonce, emit, show_command, plan.masker, commands,
                     eval_ends(script.decode("utf-8", "surrogateescape"), nonce, commands))
    try:  # the timeout bounds the whole run: opening the session waits for the server too
        process = await asyncio.wait_for(conn.create_process(
            launcher(nonce, plan.request_pty, len(script)),
            encoding=None,
            request_pty="force" if plan.request_pty else False,
            term_type="xterm" if plan.request_pty else None,
            stderr=asyncssh.STDOUT,
        ), limit)
    except TimeoutError:
        return CommandsResult(EXIT_TIMEOUT, [], True, loop.time() - started, unstopped="the server stopped answering")

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
    unstopped = ""
    try:
        await asyncio.wait_for(pump(), max(0.0, limit - (loop.time() - started)))
    except TimeoutError:
        timed_out = True
        unstopped = await _stop(conn, reader.pid)
    except (asyncssh.Error, ConnectionError, BrokenPipeError):
        pass
    reader.finish()
    try:
        if not unstopped:  # from a server that does not answer, waiting for the close only adds to the step
            await asyncio.wait_for(process.wait_closed(), _CLOSE_GRACE)
    except TimeoutError:
        pass  # a background job holds the pipe open; the script itself is done
    finally:
        process.close()
    seconds = loop.time() - started
    if timed_out:
        return CommandsResult(EXIT_TIMEOUT, reader.failed, True, seconds, unstopped=unstopped)
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
    return CommandsResult(status, failed, False, seconds, reader.failing_lines(failed, plan.script_stop))


async def _stop(conn: SSHClientConnection, pid: int | None) -> str:
    """End the remote run: TERM its process group, then KILL what is left, over the same connection and within
    _STOP_GRACE. Returns "" once the server confirmed it, else why it could not be (then it may still run)."""
    if conn.is_closed():
        return "the connection was lost"
    if pid is None:
        return "the server never said which process runs them"
    from sshipit.remote import capture

    command = f"kill -TERM -- -{pid} 2>/dev/null; sleep 1; kill -KILL -- -{pid} 2>/dev/null; true"
    try:
        # Bounded as a whole: opening the channel waits for the server too, and a stalled one never answers.
        done = await asyncio.wait_for(capture(conn, command, timeout=_STOP_GRACE), _STOP_GRACE)
    except TimeoutError:
        return "the connection was lost" if conn.is_closed() else "the server stopped answering"
    except Exception:
        return "the connection was lost" if conn.is_closed() else "the server did not run the stop"
    return "" if done.exit_status == 0 else "the server did not run the stop"
