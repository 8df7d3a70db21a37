"""Opening the one SSH connection a host gets: jump hosts, host key policy, authentication, retries, clear errors.

Owns: asyncssh connection options (AES-GCM first, no ~/.ssh/config, no default key files, never writing a
known_hosts file), host key verification against `fingerprint` / `known_hosts` before authentication, the jump
host chain (direct-tcpip channels over the hops' own SSH connections, opened once per deploy and shared by every
target; a host's own chain, from an inventory or ssh_config, is shared likewise by the hosts that name it; a
host's ProxyCommand is sshconfig.ProxyCommand), agent forwarding to targets that ask for it (never to hops),
retries with backoff for transient errors, and the translation of every connect failure into one `DeployError`
line naming the host (or the hop) and the setting to check. The connection returned here is the only one a host
session uses. Its TCP socket is transport.DirectTCP's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sshipit.errors import DeployError
from sshipit.hosts import Credentials, HostKeyPolicy, HostSpec, JumpHop
from sshipit.plan import Plan
from sshipit.sshconfig import ProxyCommand, ProxyCommandFailed
from sshipit.transport import DirectTCP
from sshipit.wire import CLIENT_VERSION, connect_early, no_ignore_packets, quicken, version_sent

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection, SSHKey

# AES-GCM is the fastest cipher here (AES-NI); chacha20 stays available for servers that prefer it.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr"]

# Host key algorithm families, tried one after another when a pinned fingerprint is of another type than the
# key the server offers first (users pin the key they know, not the one the server prefers).
_FAMILIES: list[tuple[str, list[str]]] = [
    ("ssh-ed25519", ["ssh-ed25519"]),
    ("ecdsa", ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"]),
    ("rsa", ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]),
]

BACKOFF_FIRST = 1.0  # seconds before the second attempt; doubled for each further one
BACKOFF_MAX = 30.0


@dataclass
class Connected:
    conn: SSHClientConnection
    host_key: SSHKey
    pinned: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return self.host_key.get_fingerprint("sha256")


@dataclass(frozen=True)
class _Endpoint:
    """One SSH server to open a connection to: a target, or a hop of the jump chain."""

    host: HostSpec
    credentials: Credentials
    host_keys: HostKeyPolicy
    jump: bool  # a hop: errors say "jump host X" and name the proxy settings
    pin_setting: str = "fingerprint / known_hosts"

    @property
    def name(self) -> str:
        return f"jump host {self.host.label}" if self.jump else self.host.label


class _Failure(DeployError):
    """A failed connection attempt; `transient` ones (refused, reset, timed out) are worth another try."""

    def __init__(self, error: DeployError, reason: str | None = None) -> None:
        super().__init__(error.message, setting=error.setting, hint=error.hint, phase=error.phase,
                         exit_status=error.exit_status)
        self.reason = reason  # set for transient failures only: what to say when a later attempt succeeds

    @property
    def transient(self) -> bool:
        return self.reason is not None


def _family(algorithm: str) -> str:
    for family, algorithms in _FAMILIES:
        if algorithm in algorithms or algorithm.startswith(family):
            return family
    return algorithm


def _key_types(known_hosts: str) -> set[str]:
    """The key algorithms named by known_hosts lines (markers and comments skipped)."""
    found = set()
    for line in known_hosts.splitlines():
        words = line.split()
        if words and words[0].startswith("@"):
            words = words[1:]
        if len(words) >= 3 and not words[0].startswith("#"):
            found.add(words[1])
    return found


def _preferring(types: set[str]) -> list[str]:
    """Every host key algorithm we accept, those of the families in `types` first."""
    families = {_family(t) for t in types}
    ordered = sorted(_FAMILIES, key=lambda item: item[0] not in families)
    return [alg for _family_name, algs in ordered for alg in algs]


def known_hosts_line(host: HostSpec, key: SSHKey) -> str:
    name = host.hostname if host.port == 22 else f"[{host.hostname}]:{host.port}"
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{name} {algorithm} {blob}"


# ------------------------------------------------------------------------------------------------- jump chain


class Tunnels:
    """The jump host connections of one deploy: opened once, on first need, and shared by every target.

    Twenty targets behind one bastion are twenty direct-tcpip channels over one bastion connection, not twenty
    logins to the bastion (which would trip its MaxStartups and firewall rate limits).
    """

    def __init__(self, plan: Plan, info: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None, jumps: list[JumpHop] | None = None) -> None:
        self._plan = plan
        self._jumps = plan.jumps if jumps is None else jumps
        self._branches: dict[tuple[tuple[str, int, str], ...], Tunnels] = {}  # hosts' own chains (branch)
        self._info = info
        self._warn = warn
        self._chain: asyncio.Task[SSHClientConnection] | None = None
        self._open: list[SSHClientConnection] = []
        self.warnings: list[str] = []  # kept when there is no `warn` to tell them to

    async def last_hop(self) -> SSHClientConnection:
        """The connection to the last jump host, through which the targets are reached. Raises DeployError."""
        if self._chain is not None and self._chain.done() and not self._chain.cancelled() \
                and self._chain.exception() is None and self._chain.result().is_closed():
            self._chain = None  # the chain died between two batches: open it again
        if self._chain is None:
            self._chain = asyncio.ensure_future(self._open_chain())
        try:
            # Shielded: one host giving up (cancelled) must not tear down the chain the others are waiting on.
            return await asyncio.shield(self._chain)
        except DeployError as exc:  # every host waiting gets its own copy of the hop's one error
            raise DeployError(exc.message, setting=exc.setting, hint=exc.hint, phase=exc.phase) from None

    async def _open_chain(self) -> SSHClientConnection:
        await self.close()
        tunnel: SSHClientConnection | None = None
        via: str | None = None
        for hop in self._jumps:
            endpoint = _Endpoint(hop.host, hop.credentials, hop.host_keys, jump=True, pin_setting=hop.pin_setting)
            connected = await _connect_retrying(endpoint, self._plan, _fixed(tunnel), via)
            self._open.append(connected.conn)
            for warning in connected.warnings:
                (self._warn or self.warnings.append)(f"jump host {hop.host.label}: {warning}")
            if self._info is not None:
                self._info(f"jump host {hop.host.label}: connected to {hop.host.hostname}:{hop.host.port} as "
                           f"{hop.host.username} in {connected.seconds:.2f}s"
                           f"{' (host key verified)' if connected.pinned else ''}")
            tunnel, via = connected.conn, hop.host.label
        assert tunnel is not None
        return tunnel

    def branch(self, jumps: list[JumpHop]) -> Tunnels:
        """The chain of hosts with jump hosts of their own (an inventory's, ssh_config's ProxyJump): shared by
        every host with the same hops, as the plan's chain is."""
        key = tuple((hop.host.hostname, hop.host.port, hop.host.username) for hop in jumps)
        if key not in self._branches:
            self._branches[key] = Tunnels(self._plan, self._info, self._warn, jumps)
            self._branches[key].warnings = self.warnings
        return self._branches[key]

    async def close(self) -> None:
        """Close the hops, the last first (each is carried by the one before it)."""
        for branch in self._branches.values():
            await branch.close()
        while self._open:
            conn = self._open.pop()
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)


_TUNNELS: ContextVar[Tunnels | None] = ContextVar("sshipit_tunnels", default=None)


@contextlib.asynccontextmanager
async def shared_tunnels(plan: Plan, info: Callable[[str], None] | None = None,
                         warn: Callable[[str], None] | None = None) -> AsyncIterator[Tunnels]:
    """Every `connect` inside (tasks started inside included) reaches its target through one shared chain."""
    tunnels = Tunnels(plan, info, warn)
    token = _TUNNELS.set(tunnels)
    try:
        yield tunnels
    finally:
        _TUNNELS.reset(token)
        await tunnels.close()


_closers: set[asyncio.Task[None]] = set()  # a task only weakly referenced by the loop may vanish mid-way


async def _close_with(conn: SSHClientConnection, tunnels: Tunnels) -> None:
    with contextlib.suppress(Exception):
        await conn.wait_closed()
    await tunnels.close()


# ---------------------------------------------------------------------------------------------------- connect


async def connect(host: HostSpec, plan: Plan) -> Connected:
    """Connect and authenticate, verifying the host key first (of every hop too). Raises DeployError."""
    endpoint = _Endpoint(host, host.credentials or plan.credentials, plan.host_keys, jump=False)
    if host.proxy_command:  # its ssh_config's (or inventory's) ProxyCommand carries the connection
        return await _connect_retrying(endpoint, plan, _fixed(ProxyCommand(host.proxy_command, plan.masker)), None)
    jumps = plan.jumps if host.jumps is None else list(host.jumps)
    if not jumps:
        return await _connect_retrying(endpoint, plan, None, None)
    tunnels = _TUNNELS.get()
    own = tunnels is None
    if tunnels is None:  # called outside deploy(): a chain of this host's own, closed along with its connection
        tunnels = Tunnels(plan, jumps=jumps)
    elif host.jumps is not None:
        tunnels = tunnels.branch(jumps)
    try:
        connected = await _connect_retrying(endpoint, plan, tunnels.last_hop, jumps[-1].host.label)
    except BaseException:
        if own:
            await tunnels.close()
        raise
    if own:
        connected.warnings += tunnels.warnings
        task = asyncio.ensure_future(_close_with(connected.conn, tunnels))
        _closers.add(task)
        task.add_done_callback(_closers.discard)
    return connected


def start_early(plan: Plan) -> None:
    """Open the TCP connections of the first hosts to deploy now, while the program still loads (wire.py):
    direct connections only, as many as are deployed to at once."""
    if plan.jumps:
        return
    first = plan.hosts[: min(plan.batch_size or len(plan.hosts), plan.max_parallel)]
    connect_early([(host.hostname, host.port) for host in first if not host.proxy_command and not host.jumps],
                  plan.connect_timeout)


def _fixed(tunnel: SSHClientConnection | None) -> Callable[[], Awaitable[SSHClientConnection | None]]:
    async def get() -> SSHClientConnection | None:
        return tunnel

    return get


async def _connect_retrying(endpoint: _Endpoint, plan: Plan,
                            tunnel: Callable[[], Awaitable[SSHClientConnection | None]] | None,
                            via: str | None) -> Connected:
    """Connect, trying again after a transient failure (refused, reset, timed out) with exponential backoff.

    Everything else (authentication, host keys, names that do not resolve) fails at once: trying again cannot
    help, and repeated failed logins get a CI's address banned (fail2ban, sshd's PerSourcePenalties).
    """
    attempts = plan.retries + 1
    notes: list[str] = []
    for attempt in range(1, attempts + 1):
        try:
            # The tunnel is asked for at each attempt: a jump chain that died meanwhile is opened again.
            connected = await _connect_once(endpoint, plan, await tunnel() if tunnel else None, via)
        except _Failure as exc:
            if not exc.transient or attempt == attempts:
                if attempt > 1:
                    exc.message += f" (after {attempt} attempts)"
                raise DeployError(exc.message, setting=exc.setting, hint=exc.hint, phase=exc.phase,
                                  exit_status=exc.exit_status) from None
            # Jitter spreads the retries of many hosts that failed together (a restarting bastion, a firewall).
            delay = min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX) * random.uniform(0.8, 1.2)
            notes.append(exc.reason or "")
            await asyncio.sleep(delay)
            continue
        if notes:
            connected.warnings.insert(0, f"connected at attempt {attempt} of {attempts}, after: {'; '.join(notes)}")
        return connected
    raise AssertionError("unreachable")


async def _connect_once(endpoint: _Endpoint, plan: Plan, tunnel: SSHClientConnection | None,
                        via: str | None) -> Connected:
    import asyncssh

    host = endpoint.host
    policy = endpoint.host_keys
    offered: list[SSHKey] = []

    creds = endpoint.credentials
    first_methods = [b"publickey"] if creds.keys or creds.agent_path else []
    # Authentication without waiting (wire.quicken): a key's signature algorithm must be known before the
    # server's list of them arrives, which holds for Ed25519 and ECDSA keys, not for RSA or an agent's.
    early_auth = bool(creds.keys) and not creds.agent_path and \
        not any(key.get_algorithm().startswith("ssh-rsa") for key in creds.keys)
    one_attempt = len(creds.keys) == 1 and not creds.agent_path and creds.password is None

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn: SSHClientConnection) -> None:
            if getattr(conn, "_sshipit_early", False):
                version_sent(conn)
            quicken(conn, first_methods, early_auth=early_auth, open_early=one_attempt)
            no_ignore_packets(conn)  # one packet where asyncssh sent two (wire.py)

        def validate_host_public_key(self, _host: str, _addr: str, _port: int, key: SSHKey) -> bool:
            offered.append(key)
            if not policy.pinned:
                return True
            return key.get_fingerprint("sha256").rstrip("=") in policy.fingerprints

    if policy.known_hosts:
        known_hosts: Any = asyncssh.import_known_hosts(policy.known_hosts)
    else:
        known_hosts = ([], [], [])  # trust nothing implicitly, and never read ~/.ssh/known_hosts
    options: dict[str, Any] = dict(
        port=host.port,
        username=host.username,
        config=[],
        known_hosts=known_hosts,
        client_factory=Client,
        client_keys=creds.keys or (() if creds.agent_path else None),
        ignore_encrypted=True,
        agent_path=creds.agent_path,
        agent_forwarding=host.forward_agent,  # targets only (hops never have it): off unless asked for
        password=creds.password,
        password_auth=creds.password is not None,
        kbdint_auth=creds.password is not None,
        gss_auth=False,
        gss_kex=False,
        host_based_auth=False,
        x509_trusted_certs=None,
        client_version=CLIENT_VERSION,
        encryption_algs=CIPHERS,
        compression_algs=["none"],
        connect_timeout=plan.connect_timeout,
        keepalive_interval=plan.keepalive,
        keepalive_count_max=4,
    )
    # A direct-tcpip channel over the previous hop's connection, or our own TCP socket with coalesced writes.
    options["tunnel"] = tunnel if tunnel is not None else DirectTCP()
    if not policy.known_hosts:
        # asyncssh's default order puts RSA first; ask for the strongest, fastest type the server has.
        options["server_host_key_algs"] = [alg for _family, algs in _FAMILIES for alg in algs]
    tried: set[str] = set()
    widened = False
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        seen = len(offered)
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(host.hostname, **options), timeout=plan.connect_timeout + 5
            )
        except asyncssh.HostKeyNotVerifiable:
            last = offered[-1] if offered else None
            if last is not None and policy.fingerprints and not policy.known_hosts:
                tried.add(_family(last.get_algorithm()))
                remaining = [algs for family, algs in _FAMILIES if family not in tried]
                if remaining:
                    options["server_host_key_algs"] = [alg for algs in remaining for alg in algs]
                    continue
            raise _Failure(_host_key_error(endpoint, offered)) from None
        except Exception as exc:
            # Asked for the key types not tried yet, a server that has none of them ends the key exchange (most
            # often by dropping the connection): the key it did offer is the mismatch to report, never a
            # "connection reset" to retry.
            if offered and policy.pinned and (isinstance(exc, asyncssh.KeyExchangeFailed)
                                              or (tried and len(offered) == seen)):
                raise _Failure(_host_key_error(endpoint, offered)) from None
            if policy.known_hosts and not offered and not widened and isinstance(
                    exc, (ConnectionResetError, ConnectionAbortedError, asyncssh.ConnectionLost,
                          asyncssh.KeyExchangeFailed)):
                # known_hosts asks for its own key types only, and a server with none of them ends the key
                # exchange without showing a key. Asked once more for every type (known_hosts' first, so that a
                # server that has them still picks them), the key it offers tells a mismatch from the network.
                widened = True
                options["server_host_key_algs"] = _preferring(_key_types(policy.known_hosts))
                continue
            raise _Failure(_connect_error(endpoint, via, plan, exc), _transient(exc)) from None
        break
    key = conn.get_server_host_key()
    assert key is not None
    result = Connected(conn, key, policy.pinned, loop.time() - started)
    if not policy.pinned:
        pin = "proxy_fingerprint" if endpoint.jump else "fingerprint"
        result.warnings.append(
            f"host key not verified: {key.get_algorithm()} {result.fingerprint}; pin it with "
            f"{pin}: {result.fingerprint} (or known_hosts: {known_hosts_line(host, key)})"
        )
    return result


_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT}


def _transient(exc: BaseException) -> str | None:
    """Why an attempt failed, when it is worth another: refused, reset or timed out (a server restarting or
    rate-limiting). None for everything else."""
    import asyncssh

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, asyncssh.ConnectionLost)):
        return "connection reset"
    if isinstance(exc, asyncssh.ChannelOpenError):  # a jump host could not reach the next hop or the target
        return f"jump host: {exc.reason}" if exc.code == asyncssh.OPEN_CONNECT_FAILED else None
    if isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.errno in _TRANSIENT_ERRNOS:
        return exc.strerror or str(exc)
    return None


def _host_key_error(endpoint: _Endpoint, offered: list[SSHKey]) -> DeployError:
    seen = ", ".join(sorted({f"{k.get_algorithm()} {k.get_fingerprint('sha256')}" for k in offered})) or "none"
    return DeployError(
        f"{endpoint.name}: host key does not match: the server offered {seen}",
        setting=endpoint.pin_setting,
        hint="if the server was legitimately re-keyed, pin the new key; otherwise someone may be intercepting",
        phase="connect",
    )


def _connect_error(endpoint: _Endpoint, via: str | None, plan: Plan, exc: BaseException) -> DeployError:
    import asyncssh

    host = endpoint.host
    name = endpoint.name
    where = f"{name} ({host.hostname} port {host.port}{f', via jump host {via}' if via else ''})"
    host_setting = "proxy_host / jump" if endpoint.jump else "host"
    address_setting = host_setting + " / port"
    if isinstance(exc, asyncssh.PermissionDenied):
        methods = ", ".join(endpoint.credentials.methods()) or "none"
        return DeployError(
            f"{name}: authentication failed for user {host.username!r} (tried: {methods})",
            setting="proxy_username / proxy_key / proxy_password" if endpoint.jump else "username / key / password",
            hint="check that the public key is in the user's authorized_keys and the user name is right",
            phase="connect",
        )
    if isinstance(exc, asyncssh.ChannelOpenError):
        if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            return DeployError(f"{where}: jump host {via} refused to forward the connection ({exc.reason})",
                               setting="proxy_host / jump",
                               hint="the jump host's sshd must allow it (AllowTcpForwarding yes)", phase="connect")
        return DeployError(f"{where}: jump host {via} could not connect to it: {exc.reason}",
                           setting=address_setting, hint="is sshd running there, and reachable from the jump host?",
                           phase="connect")
    if isinstance(exc, socket.gaierror):
        return DeployError(f"{where}: host name does not resolve ({exc.strerror})", setting=host_setting,
                           hint="check the spelling and the CI's DNS", phase="connect")
    if isinstance(exc, ConnectionRefusedError):
        return DeployError(f"{where}: connection refused", setting=address_setting,
                           hint="is sshd running and listening on that port?", phase="connect")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return DeployError(f"{where}: no SSH answer within {plan.connect_timeout:g}s", setting="timeout",
                           hint="check host, port and firewalls, or raise timeout", phase="connect")
    if isinstance(exc, asyncssh.DisconnectError):
        return DeployError(f"{where}: the server closed the connection: {exc.reason}", setting=host_setting,
                           hint="see the server's sshd log", phase="connect")
    if isinstance(exc, ProxyCommandFailed):
        return DeployError(f"{where}: cannot connect: {exc.strerror}", setting="ssh_config",
                           hint="run the host's ProxyCommand by hand: its program and credentials must be in the "
                           "CI's environment", phase="connect")
    if isinstance(exc, OSError):
        return DeployError(f"{where}: cannot connect: {exc.strerror or exc}", setting=address_setting,
                           hint="check the address and the network path", phase="connect")
    return DeployError(f"{where}: cannot connect: {exc}", setting=host_setting, phase="connect")
