"""What people read: live lines per host, warnings, errors, and the final summary.

Owns the console. Every line goes through the secret masker; with more than one host each line carries the
host's name. Nothing else in sshipit prints.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from sshipit.rules import Masker

if TYPE_CHECKING:
    from sshipit.commands import CommandsResult
    from sshipit.plan import HostSpec
    from sshipit.upload import UploadStats


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
    release: str | None = None
    tolerated: bool = False  # failed, but within max_failures: does not fail the step


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


class Console:
    def __init__(self, masker: Masker | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.masker = masker or Masker()
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.prefix_hosts = False
        self.atomic = False  # the summary then tells which hosts run the new release and which the old

    def _write(self, stream: TextIO, text: str) -> None:
        stream.write(self.masker(text) + "\n")
        stream.flush()

    def _tag(self, host: HostSpec | None) -> str:
        return f"[{host.label}] " if host is not None and self.prefix_hosts else ""

    def output(self, host: HostSpec, line: str) -> None:
        """A line the remote commands printed."""
        self._write(self.out, self._tag(host) + line)

    def command(self, host: HostSpec, command: str, label: str = "") -> None:
        lines = command.strip("\n").split("\n") or [""]
        tag = self._tag(host) + label
        self._write(self.out, tag + "$ " + lines[0])
        for more in lines[1:]:
            self._write(self.out, tag + "> " + more)

    def info(self, text: str, host: HostSpec | None = None) -> None:
        self._write(self.out, self._tag(host) + text)

    def warn(self, text: str, host: HostSpec | None = None) -> None:
        self._write(self.err, self._tag(host) + "warning: " + text)

    def error(self, text: str, host: HostSpec | None = None) -> None:
        self._write(self.err, self._tag(host) + "error: " + text)

    def summary(self, results: list[HostResult]) -> None:
        """A table, a row per host: result, host, release, duration, bytes sent, error; then who runs what."""
        failed = [r for r in results if not r.ok and not r.skipped]
        skipped = [r for r in results if r.skipped]
        head = f"summary: {len(results)} host{'s' if len(results) != 1 else ''}"
        head += f", {len(failed)} failed" if failed else ", all ok"
        if failed and all(r.tolerated for r in failed):
            head += " (within max_failures)"
        if skipped:
            head += f", {len(skipped)} not attempted"
        self.info(head)
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
            self.info(("  " + "  ".join(cells)).rstrip())
        if self.atomic and any(not r.ok for r in results):
            new = [r for r in results if r.ok]
            old = [r for r in results if not r.ok]
            ids = ", ".join(sorted({r.release for r in new if r.release}))
            if new:
                self.info(f"release {ids} is live on {len(new)} host{'s' if len(new) != 1 else ''}: "
                          f"{', '.join(r.host.label for r in new)}")
            self.info(f"the previous release stays on {len(old)} host{'s' if len(old) != 1 else ''}: "
                      f"{', '.join(r.host.label for r in old)}")
