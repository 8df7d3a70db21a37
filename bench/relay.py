"""A WAN link on this machine: a TCP relay on 127.0.0.1 that holds every chunk `delay` seconds each way.

The kernel's netem (delay) is not available here and tc tbf limits rate but adds no delay, so the benchmark's
WAN link is this relay: each accepted connection is joined to the server's port, and every chunk read from
either side is written to the other side `delay` seconds after it was read, in order (unlimited bandwidth).
With 50 ms each way a round trip costs 100 ms, so (time at 100 ms - time at 0 ms) / 100 ms counts the round
trips on a client's critical path, whatever the machine's load.

All relays of a run share one asyncio event loop in a daemon thread (`Relays`), so twenty relays for a fan-out
cost one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque


def task_cpu(stat_path: str, children: bool = False) -> float:
    """utime+stime (and, with `children`, the reaped children's) of a /proc stat file, in seconds."""
    try:
        with open(stat_path) as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


class Relays:
    """Delaying relays to local servers, served by one event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="wan-relays", daemon=True)
        self._thread.start()
        self.native_id = self._thread.native_id  # for cpu_seconds
        self._servers: list[asyncio.AbstractServer] = []
        self.delay = 0.0  # seconds each way; changed between runs (applies to chunks read from then on)

    def cpu_seconds(self) -> float:
        """User+system CPU the relays' thread has used so far (this process's /proc task entry)."""
        return task_cpu(f"/proc/self/task/{self.native_id}/stat")

    def add(self, target_port: int, host: str = "127.0.0.1") -> int:
        """Start a relay to host:target_port; returns the port it listens on (127.0.0.1)."""
        future = asyncio.run_coroutine_threadsafe(self._listen(host, target_port), self.loop)
        server = future.result(10)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def _listen(self, host: str, target_port: int) -> asyncio.AbstractServer:
        async def joined(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            try:
                server_r, server_w = await asyncio.open_connection(host, target_port)
            except OSError:
                client_w.close()
                return
            try:
                await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w),
                                     return_exceptions=True)
            except asyncio.CancelledError:  # the relays are closing: a quiet end, not an error to report
                pass
            finally:
                for writer in (client_w, server_w):
                    writer.close()

        return await asyncio.start_server(joined, "127.0.0.1", 0)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader to writer, each chunk (and the end) `delay` seconds after it was read."""
        queue: deque[tuple[float, bytes]] = deque()
        ready = asyncio.Event()
        done = False

        async def send() -> None:
            while True:
                while not queue:
                    if done:
                        return
                    ready.clear()
                    await ready.wait()
                due, data = queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # the end of this direction
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                if writer.transport.get_write_buffer_size() > (4 << 20):
                    await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(1 << 16)
                queue.append((time.monotonic() + self.delay, data))
                ready.set()
                if not data:
                    break
        except OSError:
            queue.append((time.monotonic() + self.delay, b""))
            ready.set()
        finally:
            done = True
            ready.set()
        with contextlib.suppress(OSError):
            await sender

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # each closes its sockets while the loop runs

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
