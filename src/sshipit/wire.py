"""Fewer round trips on an SSH connection: what asyncssh would wait for, sent without waiting.

Owns the hooks into asyncssh's client handshake (`quicken`: KEXINIT with our version, the first authentication
request with the service request, publickey first, a file key's request signed at once, the first channel opened
right behind it), pre-opened session channels (`keep_spare`: the next command's channel is opened while the
current one runs) and early connections (`connect_early`: TCP connect and our version line while the program
still loads). Each saves a round trip, 50-300 ms on a WAN. Also what loading asyncssh costs before that
(`quick_library_search`: no subprocesses hunting for shared libraries that are not installed). Every hook
checks that the asyncssh internals it relies on are there: a future asyncssh without them only loses the
speed-up. Nothing here changes what is
verified: the host key is checked during the key exchange, before any authentication request can leave (asyncssh
holds them until the key exchange is done, and our early request goes out only from its NEWKEYS).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sshipit import __version__

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection


def quicken(conn: SSHClientConnection, first_methods: list[bytes], early_auth: bool = False,
            open_early: bool = False) -> None:
    """Take the round trips that wait for nothing out of asyncssh's handshake (each is 50-300 ms on a WAN):

    - KEXINIT goes out with our version string instead of after the server's (RFC 4253 4.2 allows both at once);
    - with `early_auth`, the first authentication request goes out with the ssh-userauth service request
      instead of after its accept (the server handles them in order), and the accept is then only checked. Not
      for RSA keys: their signature algorithm is chosen from the server's list (EXT_INFO), which may arrive
      after that moment; an RSA key pays this round trip;
    - with keys, the first request is publickey, not the "none" that asks which methods there are;
    - a key from a file is offered signed at once (RFC 4252 7), not first asked about (_signed_at_once);
    - with `open_early` (one key, no other method: the request succeeds or the connection fails), the first
      session channel is opened right behind that request (_Spare._open_now).

    The host key is still verified during the key exchange, before any authentication request can be sent:
    asyncssh holds authentication packets until the key exchange is complete. Every hook is checked, so a
    future asyncssh without these internals only loses the speed-up.
    """
    from asyncssh.constants import MSG_SERVICE_ACCEPT

    names = ("_send_version", "_send_kexinit", "send_service_request", "_packet_handlers", "_auth_methods",
             "_next_service", "_auth_in_progress", "_username", "try_next_auth")
    if not all(hasattr(conn, name) for name in names):
        return
    _signed_at_once()
    setattr(conn, _EARLY_OPEN, open_early)
    if first_methods:
        conn._auth_methods = list(first_methods)  # type: ignore[attr-defined]
    klass = type(conn)
    send_version = conn._send_version  # type: ignore[attr-defined]

    def version_and_kexinit() -> None:
        send_version()
        klass._send_kexinit(conn)  # type: ignore[attr-defined]
        conn._send_kexinit = _once_skipped(conn)  # type: ignore[attr-defined]

    conn._send_version = version_and_kexinit  # type: ignore[attr-defined]
    send_service_request = conn.send_service_request  # type: ignore[attr-defined]

    def request_and_begin(service: bytes) -> None:
        send_service_request(service)
        del conn.send_service_request  # type: ignore[attr-defined]  # only the first (the handshake's)
        if service != b"ssh-userauth":
            return
        # What asyncssh does when the accept arrives, now: authentication starts (its first request goes out
        # once this turn of the event loop ends, right behind the service request).
        conn._next_service = None  # type: ignore[attr-defined]
        conn._auth_in_progress = True  # type: ignore[attr-defined]
        owner = getattr(conn, "_owner", None)
        if owner is not None:
            owner.begin_auth(conn._username)  # type: ignore[attr-defined]
        conn.try_next_auth()  # type: ignore[attr-defined]
        expected = service

        def accept_checked(self: Any, _pkttype: int, _pktid: int, packet: Any) -> None:
            import asyncssh

            if packet.get_string() != expected:
                raise asyncssh.ServiceNotAvailable("Unexpected service in service accept")
            packet.check_end()
            del conn._packet_handlers  # type: ignore[attr-defined]  # back to asyncssh's own

        conn._packet_handlers = {**klass._packet_handlers,  # type: ignore[attr-defined]
                                 MSG_SERVICE_ACCEPT: accept_checked}

    if early_auth:
        conn.send_service_request = request_and_begin  # type: ignore[attr-defined]


def no_ignore_packets(conn: SSHClientConnection) -> None:
    """Send each SSH packet alone, not behind an empty MSG_IGNORE packet as asyncssh does for every packet once
    encrypting: that old defence against the predictable IVs of CBC modes (RFC 4251 9.3.1) halves nothing on the
    ciphers we offer (connect.CIPHERS: GCM, ChaCha20-Poly1305, CTR; OpenSSH sends none either), but doubles the
    packets, each encrypted here and decrypted by the server: a 120 MB upload made 7,600 instead of 3,800.
    Only while the negotiated cipher is not CBC; a future asyncssh that has no `send_packet` keeps its own way."""
    from asyncssh.constants import MSG_IGNORE

    send = getattr(conn, "send_packet", None)
    if send is None:
        return
    empty = b"\0\0\0\0"  # String(b""): the padding packet's whole payload (no other part of asyncssh sends it)

    def send_packet(pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == MSG_IGNORE and args == (empty,) and b"-cbc" not in (getattr(conn, "_enc_alg_cs", b"") or b"-cbc"):
            return
        send(pkttype, *args, **kwargs)

    conn.send_packet = send_packet  # type: ignore[method-assign]  # the connection's own: its channels call it


def _once_skipped(conn: SSHClientConnection) -> Callable[[], None]:
    """asyncssh sends KEXINIT when the server's version arrives; ours went already: skip that one call."""

    def skip() -> None:
        del conn._send_kexinit  # type: ignore[attr-defined]  # later (re-)key exchanges send their own

    return skip


_SIGNED_AT_ONCE = False


def _signed_at_once() -> None:
    """Public key authentication with a key from a file sends the signed request first: one round trip where
    asking "would you accept this key?" first costs two. A key the server refuses costs one signature locally.
    Agent keys keep the question first (an agent may ask its user to confirm each signature)."""
    global _SIGNED_AT_ONCE
    if _SIGNED_AT_ONCE:
        return
    from asyncssh import auth
    from asyncssh.public_key import SSHLocalKeyPair

    cls = getattr(auth, "_ClientPublicKeyAuth", None)
    if cls is None or not hasattr(cls, "_send_signed_request"):
        return
    asked_first = cls._start

    async def start(self: Any) -> None:
        keypair = await self._conn.public_key_auth_requested()
        if keypair is None:
            self._conn.try_next_auth(next_method=True)
            return
        self._keypair = keypair
        if not isinstance(keypair, SSHLocalKeyPair):
            await self.send_request(auth.Boolean(False), auth.String(keypair.algorithm),
                                    auth.String(keypair.public_data))
            return
        await self._send_signed_request()
        conn = self._conn
        if getattr(conn, _EARLY_OPEN, False) and getattr(conn, _SPARE, None) is None and _hook_create():
            setattr(conn, _EARLY_OPEN, False)
            try:
                setattr(conn, _SPARE, _Spare(conn, during_auth=True))
            except Exception:  # asyncssh internals that changed: the first channel opens the ordinary way
                setattr(conn, _SPARE, None)

    if hasattr(auth, "Boolean") and hasattr(auth, "String"):
        cls._start = start
        cls._asked_first = asked_first
    _SIGNED_AT_ONCE = True




# ------------------------------------------------------------------------------------ pre-opened channels

_SPARE = "_sshipit_spare"  # the connection's attribute holding its spare channel (one at most)
_KEEP = "_sshipit_keep_spare"  # set: a spare taken is replaced at once
_EARLY_OPEN = "_sshipit_open_early"  # set: the first channel is opened behind the authentication request
_CREATE_HOOKED = False


class _Spare:
    """A session channel opened ahead of need; `opened` holds the open confirmation."""

    def __init__(self, conn: SSHClientConnection, during_auth: bool = False) -> None:
        from asyncssh.channel import SSHClientChannel

        options = conn._options  # type: ignore[attr-defined]
        self.chan = SSHClientChannel(conn, conn._loop, conn._utf8_decode_errors,  # type: ignore[attr-defined]
                                     None, options.errors, options.window, options.max_pktsize)
        if during_auth:
            self.opened = self._open_now(conn)
        else:
            self.opened = asyncio.ensure_future(SSHClientChannel._open(self.chan, b"session"))
        self.opened.add_done_callback(_seen)


    def _open_now(self, conn: Any) -> asyncio.Future[Any]:
        """The channel open, sent right behind our (one) authentication request instead of after its success
        (RFC 4252 5: what follows the request that succeeds goes to the connection service). asyncssh holds
        connection packets until authentication is complete: this one goes now, in order on the wire."""
        from asyncssh.constants import MSG_CHANNEL_OPEN
        from asyncssh.packet import String, UInt32

        chan = self.chan
        chan._open_waiter = conn._loop.create_future()
        waiter = chan._open_waiter
        conn._auth_complete = True  # for this packet only: not deferred
        try:
            conn.send_packet(MSG_CHANNEL_OPEN, String(b"session"), UInt32(chan._recv_chan),
                             UInt32(chan._recv_window), UInt32(chan._recv_pktsize), handler=chan)
        finally:
            conn._auth_complete = False
        return waiter

    def fits(self, chan: Any) -> bool:
        """Whether `chan` (a channel asyncssh just made for a session) was made like this spare."""
        mine = self.chan
        return (chan._recv_window, chan._recv_pktsize) == (mine._recv_window, mine._recv_pktsize)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a spare the closing connection refused is not an error anyone waits for


def keep_spare(conn: SSHClientConnection) -> None:
    """From now on, `conn` keeps one session channel open ahead of need: a command takes it
    instead of opening its own, which saves the open's round trip, and the next spare is opened at once, so it
    is ready by the time the command ends. The server sees one idle session channel more (MaxSessions: the
    default 10 leaves room), closed with the connection."""
    if getattr(conn, _KEEP, False) or not _hook_create():
        return
    setattr(conn, _KEEP, True)
    if getattr(conn, _SPARE, None) is not None:
        return  # one is there already (opened during authentication)
    try:
        setattr(conn, _SPARE, _Spare(conn))
    except Exception:  # asyncssh internals that changed: no spare, the ordinary way
        setattr(conn, _SPARE, None)


def _take(chan: Any) -> _Spare | None:
    conn = chan._conn
    spare = getattr(conn, _SPARE, None)
    if spare is None or spare.chan._conn is not conn or not spare.fits(chan):
        return None
    if spare.opened.done() and (spare.opened.cancelled() or spare.opened.exception() is not None):
        setattr(conn, _SPARE, None)  # refused (MaxSessions?): the ordinary way from now on
        return None
    setattr(conn, _SPARE, None)
    if getattr(conn, _KEEP, False):
        try:
            setattr(conn, _SPARE, _Spare(conn))  # the next one, opening while this one runs
        except Exception:  # no spare: the ordinary way
            setattr(conn, _SPARE, None)
    return spare


def _hook_create() -> bool:
    """Install, once, the hook that hands a spare to a session asyncssh is about to open."""
    global _CREATE_HOOKED
    if _CREATE_HOOKED:
        return True
    from asyncssh import channel

    cls = getattr(channel, "SSHClientChannel", None)
    names = ("create", "_open", "_recv_window", "_recv_pktsize", "_recv_chan", "_send_chan", "_send_window",
             "_send_pktsize", "_send_state", "_recv_state", "_conn")
    if cls is None or not hasattr(cls, "create") or not hasattr(cls, "_open"):
        return False
    original = cls.create

    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        usable = all(hasattr(self, n) for n in names) and hasattr(self._conn, "_channels")
        spare = _take(self) if usable else None
        if spare is not None:
            try:
                await asyncio.shield(spare.opened)
            except Exception:
                spare = None
        if spare is None:
            return await original(self, *args, **kwargs)
        # The channel asyncssh made for this session becomes the spare: it takes over the spare's number (the
        # server knows the spare by it) and what the server's open confirmation said; its own number is given
        # up before anything was sent under it. Callers keep using the channel object they were given.
        packet = spare.opened.result()
        mine = spare.chan
        conn = self._conn
        conn.remove_channel(self._recv_chan)
        self._recv_chan = mine._recv_chan
        conn._channels[mine._recv_chan] = self
        self._send_chan, self._send_window, self._send_pktsize = \
            mine._send_chan, mine._send_window, mine._send_pktsize
        self._send_state = self._recv_state = "open"

        async def confirmed(_chantype: bytes, *_args: bytes) -> Any:
            return packet

        self._open = confirmed  # create() takes the confirmation instead of opening again
        return await original(self, *args, **kwargs)

    cls.create = create
    _CREATE_HOOKED = True
    return True


# ------------------------------------------------------------------------------------ connecting early

CLIENT_VERSION = f"sshipit_{__version__}"  # our SSH version string (sent early, so it must be known early)
_EARLY_MAX_AGE = 20.0  # seconds: an early socket older than this is not used (the server's LoginGraceTime)


class _Early:
    """A TCP connection opened in a thread while the program still loads, our version line already sent."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.done = threading.Event()
        self.sock: socket.socket | None = None
        self.started = time.monotonic()
        threading.Thread(target=self._open, args=(host, port, timeout), daemon=True).start()

    def _open(self, host: str, port: int, timeout: float) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"SSH-2.0-" + CLIENT_VERSION.encode("ascii") + b"\r\n")
            self.sock = sock
        except OSError:
            self.sock = None  # the real attempt connects again, and reports what goes wrong
        finally:
            self.done.set()


_EARLY: dict[tuple[str, int], _Early] = {}


def connect_early(addresses: list[tuple[str, int]], timeout: float) -> None:
    """Start the TCP connections to these (host, port) now, each with our version line sent, so that the
    server's version and KEXINIT are on their way while asyncssh and the rest of the program load (the TCP
    handshake and one round trip off every deploy's critical path). Only for direct connections (no jump
    host): the caller passes the hosts whose first connection attempt will be `take_early`'s."""
    for address in addresses:
        if address not in _EARLY:
            _EARLY[address] = _Early(address[0], address[1], timeout)


async def take_early(host: str, port: int) -> socket.socket | None:
    """The early connection to host:port (once), if it was opened and is young enough; else None."""
    early = _EARLY.pop((host, port), None)
    if early is None:
        return None
    while not early.done.is_set():  # still connecting (polled: a waiting thread would outlive a cancel)
        await asyncio.sleep(0.002)
    sock = early.sock
    if sock is not None and (time.monotonic() - early.started > _EARLY_MAX_AGE or _closed(sock)):
        sock.close()
        return None
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the server already closed this connection (then the real attempt connects anew)."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return False  # nothing to read yet: open
    except OSError:
        return True


def close_early() -> None:
    """Close the early connections nobody took (hosts the deploy never reached)."""
    while _EARLY:
        _address, early = _EARLY.popitem()
        if early.done.wait(1) and early.sock is not None:
            early.sock.close()


def version_sent(conn: SSHClientConnection) -> None:
    """Our version line went out on the early socket: asyncssh records it for the exchange hash, not again."""
    send_version = conn._send_version  # type: ignore[attr-defined]

    def recorded() -> None:
        conn._send = lambda _data: None  # type: ignore[attr-defined]  # the version line only
        try:
            send_version()
        finally:
            del conn._send  # type: ignore[attr-defined]

    conn._send_version = recorded  # type: ignore[attr-defined]


# Where the dynamic loader, `gcc -l` and `ld -l` look for a shared library (ctypes.util.find_library's three ways).
_LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64")
_FIND_LIBRARY_QUICK = False


def quick_library_search() -> None:
    """Make ctypes.util.find_library answer "not installed" without running `ldconfig -p` (and gcc, ld).

    Importing asyncssh looks for liboqs (sntrup761 key exchange) that way: two searches, each a subprocess, 25-35 ms
    of every deploy's start (17 ms CPU) on a machine without it. The quick answer is given only when no file named
    lib<name>.so* is in the loader's cache or in any directory the three searches use; otherwise the real search
    runs, so a machine with liboqs still offers sntrup761 exactly as before. For the sshipit command only (cli.py).
    """
    global _FIND_LIBRARY_QUICK
    import ctypes.util

    if _FIND_LIBRARY_QUICK or not sys.platform.startswith("linux"):
        return
    _FIND_LIBRARY_QUICK = True
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return real(name) if _library_may_exist(name) else None

    ctypes.util.find_library = find_library


def _library_may_exist(name: str) -> bool:
    """False only when no lib<name>.so* is anywhere find_library could find it; any doubt says True."""
    import glob
    import os

    if not name or any(char in name for char in "/*?[\0"):
        return True
    wanted = f"lib{name}.so"
    try:
        with open("/etc/ld.so.cache", "rb") as cache:
            if wanted.encode() in cache.read():
                return True
    except OSError:
        pass  # no cache: the directories alone decide (ldconfig -p would find nothing either)
    extra = [part for var in ("LD_LIBRARY_PATH", "LIBRARY_PATH") for part in os.environ.get(var, "").split(":")]
    dirs = [*_LIBRARY_DIRS, *(path for top in _LIBRARY_DIRS for path in glob.glob(f"{top}/*-linux-gnu*")), *extra]
    return any(glob.glob(os.path.join(glob.escape(path or "."), wanted + "*")) for path in dirs)
