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
        failed = [r for r in results if not r.ok and not r.skipped]
        skipped = [r for r in results if r.skipped]
        head = f"summary: {len(results)} host{'s' if len(results) != 1 else ''}"
        head += f", {len(failed)} failed" if failed else ", all ok"
        if skipped:
            head += f", {len(skipped)} not attempted"
        self.info(head)
        width = max(len(r.host.label) for r in results)
        for result in results:
            state = "skipped" if result.skipped else ("ok" if result.ok else "FAILED")
            detail = ""
            if result.upload is not None:
                detail = (f"{result.upload.files} files, {human_bytes(result.upload.bytes)} sent"
                          f" ({result.upload.method})")
            if not result.ok and result.error:
                detail = result.error.removeprefix(f"{result.host.label}: ")
            self.info(f"  {state:<7} {result.host.label:<{width}}  {result.seconds:6.2f}s  {detail}".rstrip())
