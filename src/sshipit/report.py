"""What people read: live lines per host, warnings, errors, and the final summary.

Owns the console. Every line goes through the secret masker and is made inert for a CI (rules.neutralise: no
server's text or file name becomes a workflow command, an escape sequence or a second line); with more than one
host each line carries the host's name. Nothing else in sshipit prints (ci_report writes the CI's own files and
its card through here).

Each host's work is told in phases (`connect:`, `upload:`, `commands:`, `release:`, `switch:`, `health:`), each
line with its duration; errors read `error: <host>: <phase>: what [setting: X]; hint`. Colour only on a
terminal (not with NO_COLOR or TERM=dumb); a CI log gets plain lines. A long upload shows a live bar on a
terminal and a plain line every few seconds in a CI log.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from sshipit.rules import Masker, is_blank, neutralise

if TYPE_CHECKING:
    from sshipit.commands import CommandsResult
    from sshipit.errors import DeployError
    from sshipit.plan import HostSpec
    from sshipit.release_list import HostReleases
    from sshipit.upload import Progress, UploadStats

PROGRESS_AFTER = 3.0  # seconds: a shorter upload shows no progress at all
PLAIN_EVERY = 5.0  # seconds between progress lines in a CI log (more would drown the log)
BAR_EVERY = 0.25  # seconds between redraws of the bar on a terminal (and between samples of the rate)
RATE_WINDOW = 5.0  # the rate, and so the ETA, is measured over this many recent seconds, not since the start:
# the first seconds fill the pipe's buffers faster than the link drains them

_SGR = {"error": "31", "warn": "33", "ok": "32", "command": "1"}  # red, yellow, green, bold

# Where to look when an error names no setting of its own, and what to do when it carries no hint.
_PHASE_SETTING = {"connect": "host", "upload": "target", "release": "target", "switch": "target",
                  "commands": "commands", "post_commands": "post_commands", "healthcheck": "healthcheck",
                  "health": "healthcheck"}
_SETTING_HINT = {"commands": "the command's output above shows why",
                 "post_commands": "the command's output above shows why",
                 "healthcheck": "the health check's output above shows why"}
FALLBACK_HINT = "see docs/errors.md for this error and its fix"
UNKNOWN = "unknown"  # HostResult.release when nobody can tell where `current` points


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or fake stream
        return False


def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb" and _isatty(stream)


def error_line(error: DeployError, label: str | None = None, phase: str | None = None) -> str:
    """The one line an error is told in: `<host>: <phase>: what happened [setting: X]; hint`.

    `phase` is where the host was when the error carries none of its own. An error without a setting or a hint
    gets the phase's setting and a hint that points somewhere, so no line leaves the reader without a next step.
    """
    phase = error.phase or phase
    text = error.message
    if label and phase:
        rest = text
        if text.startswith(f"{label}: "):
            rest = text[len(label) + 2:]
        elif text.startswith(f"{label} (") and "): " in text:  # `web1 (10.0.0.5 port 22): refused`
            inside, after = text[len(label) + 2:].split("): ", 1)
            rest = f"{inside}: {after}"
        text = f"{label}: {rest}" if rest.startswith(f"{phase}: ") else f"{label}: {phase}: {rest}"
    elif phase and not text.startswith(f"{phase}: "):
        text = f"{phase}: {text}"
    setting = error.setting or _PHASE_SETTING.get(phase or "")
    if setting:
        text += f" [setting: {setting}]"
    return f"{text}; {error.hint or _SETTING_HINT.get(setting or '') or FALLBACK_HINT}"


def duration_text(seconds: float) -> str:
    """7s, 2m05s, 1h02m: an ETA to read at a glance."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _done(progress: Progress, rate: float) -> tuple[float, str]:
    """Fraction done and time left at `rate` bytes per second."""
    fraction = min(progress.bytes / progress.total_bytes, 1.0) if progress.total_bytes else 1.0
    left = duration_text((progress.total_bytes - progress.bytes) / rate) if rate > 0 else "unknown"
    return fraction, left


def progress_line(progress: Progress, rate: float) -> str:
    """The plain progress line of a CI log."""
    fraction, left = _done(progress, rate)
    return (f"{progress.files} of {progress.total_files} files, {human_bytes(progress.bytes)} of "
            f"{human_bytes(progress.total_bytes)} ({fraction:.0%}), {human_bytes(rate)}/s, about {left} left")


def progress_bar(progress: Progress, rate: float, width: int = 16) -> tuple[str, str]:
    """The terminal's bar, in full (one host; fits 80 columns) and compact (one of several hosts on the line)."""
    fraction, left = _done(progress, rate)
    filled = int(width * fraction)
    full = (f"upload [{'#' * filled}{'-' * (width - filled)}] {fraction:.0%} {human_bytes(progress.bytes)}/"
            f"{human_bytes(progress.total_bytes)} {progress.files}/{progress.total_files} files "
            f"{human_bytes(rate)}/s ETA {left}")
    return full, f"{fraction:.0%} {human_bytes(rate)}/s ETA {left}"


@dataclass
class HostResult:
    host: HostSpec
    ok: bool
    seconds: float
    exit_status: int = 0
    error: str | None = None
    phase: str | None = None
    upload: UploadStats | None = None
    commands: CommandsResult | None = None
    skipped: bool = False
    collateral: bool = False  # failed only because another host failed
    # Atomic: the release `current` points to after this deploy, failed hosts included (when it is the new one,
    # or UNKNOWN: the connection was lost while it was being switched); None: the previous one stays.
    release: str | None = None
    tolerated: bool = False  # failed, but within max_failures: does not fail the step
    listing: HostReleases | None = None  # list_releases: what the host holds (release.py's layout)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def ran_text(commands: list[str]) -> str:
    """What ran, counted as the user wrote it: `ran 2 commands`, a block `ran a script of 3 lines`, a mix
    `ran 2 commands (5 lines)`. Blank lines are not counted."""
    lines = sum(1 for command in commands for line in command.split("\n") if line.strip())
    count = len(commands)
    if lines <= count:
        return f"ran {count} command{'s' if count != 1 else ''}"
    if count == 1:
        return f"ran a script of {lines} lines"
    return f"ran {count} commands ({lines} lines)"


class Console:
    def __init__(self, masker: Masker | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.masker = masker or Masker()
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.prefix_hosts = False
        self.atomic = False  # the summary then tells which hosts run the new release and which the old
        self.colour_out = wants_colour(self.out)
        self.colour_err = wants_colour(self.err)
        self.live = _isatty(self.out) and os.environ.get("TERM") != "dumb"  # a terminal: \r redraws a bar
        self._bars: dict[str, tuple[str, str]] = {}  # host label -> (full bar, compact bar)
        self._bar_drawn = False

    def _write(self, stream: TextIO, text: str, style: str | None = None) -> None:
        self._emit(stream, [(text, style)])

    def _emit(self, stream: TextIO, pieces: list[tuple[str, str | None]]) -> None:
        """One line made of pieces, each masked, made inert for a CI (rules.neutralise: a server's text or a
        file name never becomes a workflow command, an escape sequence or a second line) and, on a terminal,
        painted in its style."""
        if self.colour_out if stream is self.out else self.colour_err:
            shown, start = [], True
            for text, style in pieces:
                text = neutralise(self.masker(text), start)
                start = start and is_blank(text)
                shown.append(_paint(text, style))
            line = "".join(shown) + "\n"
        else:
            line = neutralise(self.masker("".join(text for text, _ in pieces))) + "\n"
        self._erase_bar()
        self._put(stream, line)
        self._draw_bar()

    def _put(self, stream: TextIO, line: str) -> None:
        try:
            stream.write(line)
        except UnicodeEncodeError:  # bytes that are not UTF-8 (a value, a command) on a strict stream: show as �
            encoding = getattr(stream, "encoding", None) or "utf-8"
            line = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            stream.write(line.encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()

    def _tag(self, host: HostSpec | None) -> str:
        return f"[{host.label}] " if host is not None and self.prefix_hosts else ""

    def _erase_bar(self) -> None:
        if self._bar_drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()  # before a line on stderr: the terminal must see the erase first
            self._bar_drawn = False

    def _draw_bar(self) -> None:
        if not self._bars or not self.live:
            return
        import shutil

        width = max(20, shutil.get_terminal_size().columns - 1)
        if len(self._bars) == 1 and not self.prefix_hosts:
            text = next(iter(self._bars.values()))[0]
        else:
            text = "upload  " + "  |  ".join(f"{label} {compact}" for label, (_, compact) in self._bars.items())
        self.out.write("\r\x1b[K" + self.masker(text)[:width])
        self.out.flush()
        self._bar_drawn = True

    def output(self, host: HostSpec, line: str) -> None:
        """A line the remote commands printed."""
        self._write(self.out, self._tag(host) + line)

    def command(self, host: HostSpec, command: str, label: str = "") -> None:
        lines = command.strip("\n").split("\n") or [""]
        tag = self._tag(host) + label
        self._write(self.out, tag + "$ " + lines[0], "command")
        for more in lines[1:]:
            self._write(self.out, tag + "> " + more, "command")

    def info(self, text: str, host: HostSpec | None = None) -> None:
        """One line: a newline inside `text` (a file name's) is shown as `\\n`, never starts another line."""
        self._write(self.out, self._tag(host) + text)

    def block(self, title: str, text: str, host: HostSpec | None = None) -> None:
        """A title line, then `text` line by line (the remote script with debug: true)."""
        self.info(title, host)
        for line in text.split("\n"):
            self._write(self.out, self._tag(host) + line)

    def phase(self, host: HostSpec, name: str, text: str, seconds: float | None = None) -> None:
        """A phase of a host's work is done: `connect: connected to ... (0.05s)`."""
        took = f" ({seconds:.2f}s)" if seconds is not None else ""
        self._emit(self.out, [(self._tag(host), None), (f"{name}:", "ok"), (f" {text}{took}", None)])

    @contextlib.asynccontextmanager
    async def progress(self, host: HostSpec, progress: Progress) -> AsyncIterator[None]:
        """Around an upload: after PROGRESS_AFTER seconds, show how far it got until it ends."""
        import asyncio

        task = asyncio.ensure_future(self._follow(host, progress))
        try:
            yield
        finally:
            task.cancel()  # it only sleeps or prints, so it ends at once
            if self._bars.pop(host.label, None) is not None:
                self._erase_bar()
                self._draw_bar()

    async def _follow(self, host: HostSpec, progress: Progress) -> None:
        import asyncio
        from collections import deque

        loop = asyncio.get_running_loop()
        started = loop.time()
        samples = deque([(started, 0)])  # (time, bytes): the oldest is the start of the rate's window
        printed: float | None = None
        while True:
            await asyncio.sleep(BAR_EVERY)
            now = loop.time()
            samples.append((now, progress.bytes))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
                samples.popleft()
            if now - started < PROGRESS_AFTER:
                continue
            then, count = samples[0]
            rate = (progress.bytes - count) / (now - then) if now > then else 0.0
            if self.live:
                self._bars[host.label] = progress_bar(progress, rate)
                self._erase_bar()
                self._draw_bar()
            elif printed is None or now - printed >= PLAIN_EVERY - BAR_EVERY / 2:
                self.info("upload: " + progress_line(progress, rate), host)
                printed = now

    def warn(self, text: str, host: HostSpec | None = None) -> None:
        self._write(self.err, self._tag(host) + "warning: " + text, "warn")

    def error(self, text: str, host: HostSpec | None = None) -> None:
        """`text` is an `error_line` (host, phase, setting, hint)."""
        self._write(self.err, self._tag(host) + "error: " + text, "error")

    def card(self, text: str) -> None:
        """A CI's escape sequence (Drone's card), alone at the start of a line, never masked or painted."""
        self._erase_bar()
        self._put(self.out, text + "\n")

    def summary(self, results: list[HostResult], seconds: float | None = None) -> None:
        """A table, a row per host: result, host, release, duration, bytes sent, error; then who runs what."""
        failed = [r for r in results if not r.ok and not r.skipped]
        skipped = [r for r in results if r.skipped]
        head = f"summary: {len(results)} host{'s' if len(results) != 1 else ''}"
        head += f", {len(failed)} failed" if failed else ", all ok"
        if failed and all(r.tolerated for r in failed):
            head += " (within max_failures)"
        if skipped:
            head += f", {len(skipped)} not attempted"
        if seconds is not None:
            head += f" ({seconds:.2f}s)"
        tone = "ok" if not failed else "warn" if all(r.tolerated for r in failed) else "error"
        self._write(self.out, head, tone)
        rows = [("result", "host", "release", "time", "sent", "error")]
        for r in results:
            state = "skipped" if r.skipped else ("ok" if r.ok else "FAILED")
            release = r.release or ("old" if self.atomic and not r.ok else "-")
            sent = human_bytes(r.upload.wire_bytes or r.upload.bytes) if r.upload is not None else "-"
            error = (r.error or "").removeprefix(f"{r.host.label}: ") if not r.ok else ""
            rows.append((state, r.host.label, release, f"{r.seconds:.2f}s", sent, error))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]),
                     row[3].rjust(widths[3]), row[4].rjust(widths[4]), row[5]]
            tone = {"ok": "ok", "FAILED": "error", "skipped": "warn"}.get(row[0])
            pad = cells[0][len(row[0]):]  # painted: the word, not its padding
            self._emit(self.out, [("  ", None), (row[0], tone), ((pad + "  " + "  ".join(cells[1:])).rstrip(), None)])
        if self.atomic and any(not r.ok for r in results):
            new = [r for r in results if r.release and r.release != UNKNOWN]
            unknown = [r for r in results if r.release == UNKNOWN]
            old = [r for r in results if not r.release]
            ids = ", ".join(sorted({r.release for r in new if r.release}))
            if new:
                self.info(f"release {ids} is live on {len(new)} host{'s' if len(new) != 1 else ''}: "
                          f"{', '.join(r.host.label for r in new)}")
            if unknown:
                self.info(f"current is unknown on {len(unknown)} host{'s' if len(unknown) != 1 else ''} (the "
                          f"connection was lost while it was switched): {', '.join(r.host.label for r in unknown)}")
            if old:
                self.info(f"the previous release stays on {len(old)} host{'s' if len(old) != 1 else ''}: "
                          f"{', '.join(r.host.label for r in old)}")


def _paint(text: str, style: str | None) -> str:
    return f"\x1b[{_SGR[style]}m{text}\x1b[0m" if style and text else text
