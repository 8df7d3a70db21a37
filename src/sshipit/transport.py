"""The TCP connection under a host's SSH connection: asyncssh's packets of one event-loop turn sent in one write
(_Coalescing), what the server sends acknowledged at once (_Bridge), the socket opened early taken over
(wire.take_early), and how much outgoing data may wait in the socket buffer (socket_drained, for fleets).
connect.py hands DirectTCP to asyncssh as its tunnel.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sshipit.wire import take_early

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection


class _Coalescing:
    """The socket transport an SSH connection writes to, with the writes of one event-loop turn sent together.

    asyncssh writes every SSH packet separately, and precedes each data packet with an empty MSG_IGNORE one:
    an upload of 400 MB makes ~25,000 packets, each its own send() and, with TCP_NODELAY, often its own TCP
    segment. Joined per turn (a 256 KiB channel write is one turn), they leave in ~1,600 sends.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()  # a disconnect message must leave before the socket closes
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def __getattr__(self, name: str) -> Any:  # everything else (extra info, abort, pause_reading...) as is
        return getattr(self._transport, name)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux; elsewhere ACKs keep the system's timing


class _Bridge(asyncio.Protocol):
    """Hands the socket's events to the SSH connection, which sees the coalescing transport; acknowledges what
    the server sends without delay (_ack_now)."""

    def __init__(self, session: asyncio.Protocol, early: bool = False) -> None:
        self.session = session
        self.early = early
        self.sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.early:
            self.session._sshipit_early = True  # type: ignore[attr-defined]  # see Client.connection_made
        sock = transport.get_extra_info("socket")
        self.sock = sock if _QUICKACK is not None and sock is not None and sock.type == socket.SOCK_STREAM else None
        self.session.connection_made(_Coalescing(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.sock is not None:
            self._ack_now()
        self.session.data_received(data)

    def _ack_now(self) -> None:
        """Acknowledge what came at once, not after Linux's delayed-ACK timer (up to 40 ms).

        sshd leaves Nagle's algorithm on for sessions without a terminal: a small packet it sends (a channel's
        confirmation, an exec's first output) waits until its previous one is acknowledged. With the ACK
        delayed, each such exchange stalled ~40 ms: on loopback, from the login to a command's first output
        took 45 ms instead of 4. Quick-ack mode does not last, so it is asked for again after every read.
        """
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[union-attr]
        except OSError:  # closing: nothing left to acknowledge
            self.sock = None

    def eof_received(self) -> bool | None:
        return self.session.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()


class DirectTCP:
    """A plain TCP connection to the host, offered to asyncssh as its `tunnel` (the documented way to give it a
    transport of our own): the same socket it would open, with writes coalesced (_Coalescing)."""

    async def create_connection(self, session_factory: Callable[[], Any], host: str, port: int) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        sock = await take_early(host, port)
        if sock is not None:  # opened while the program loaded, our version line sent (start_early)
            transport, bridge = await loop.create_connection(lambda: _Bridge(session_factory(), early=True),
                                                             sock=sock)
        else:
            transport, bridge = await loop.create_connection(lambda: _Bridge(session_factory()), host, port)
        return transport, bridge.session

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def socket_drained(conn: SSHClientConnection, limit: int) -> None:
    """Wait until at most `limit` bytes of the connection wait in its socket buffer.

    asyncssh hands a channel's data to the socket buffer as far as the server's window allows (2 MB with OpenSSH)
    and ignores the transport's pause: with a slow link or a busy server, each host of a fleet would buffer up to
    2 MB of encrypted packets here (500 hosts: 1 GB). Polled, since asyncssh offers no event for it."""
    transport = getattr(conn, "_transport", None)
    queued = getattr(transport, "get_write_buffer_size", None)
    delay = 0.001
    while queued is not None and queued() > limit and not conn.is_closed():
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.02)
