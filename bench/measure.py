"""Running one client command and measuring it: wall time and peak memory of its whole process tree.

Peak memory is the larger of
- the highest VmHWM (the kernel's RSS high-water mark of one process) of any process of the tree, exact for a
  one-process client such as sshipit's Python process, and
- the largest sum of the VmRSS of all processes of the tree at one moment (pipelines such as `tar c | ssh`
  hold memory in several processes at once),
both read from /proc/<pid>/status every 20 ms while the command runs. (wait4's ru_maxrss is not used: Linux
carries the pre-exec image's RSS into it, so every child of this Python process would report at least ours.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sshipit.localserver import descendants

PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_EVERY = 0.02


@dataclass
class Measured:
    seconds: float
    peak_rss: int  # bytes
    returncode: int
    output: str  # the tail of stdout+stderr
    timed_out: bool = False
    cpu: float = 0.0  # user+sys seconds of the command and the children it waited for (this machine's side only)


def _tree_memory(root: int) -> tuple[int, int]:
    """(sum of VmRSS, largest VmHWM) over `root` and its descendants (processes with a pid >= root's, which is
    where children go between pid wrap-arounds)."""
    tree = [root, *descendants(root, newer_only=True)]
    total = hwm = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]) * 1024)
                    elif line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            continue
    return total, hwm


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float, log: Path) -> Measured:
    """Run `argv` (output to `log`), wait for it, and measure it."""
    peak = 0
    done = threading.Event()
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

        def sample() -> None:
            nonlocal peak
            while not done.wait(SAMPLE_EVERY):
                with contextlib.suppress(OSError):
                    peak = max(peak, *_tree_memory(proc.pid))

        def expire() -> None:
            if not done.wait(timeout):
                timed_out.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        timed_out = threading.Event()
        sampler = threading.Thread(target=sample, daemon=True)
        watchdog = threading.Thread(target=expire, daemon=True)
        sampler.start()
        watchdog.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            done.set()
            raise
        seconds = time.perf_counter() - started
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        watchdog.join()
    # Anything the command left behind in its session (e.g. a backgrounded ssh) must not outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with open(log, "rb") as f:
        f.seek(max(0, os.path.getsize(log) - 4000))
        tail = f.read().decode("utf-8", "replace")
    return Measured(seconds, peak, proc.returncode, tail, timed_out.is_set(), usage.ru_utime + usage.ru_stime)
