"""Opening the one SSH connection a host gets: host key policy, authentication, and clear errors.

Owns: asyncssh connection options (AES-GCM first, no ~/.ssh/config, no default key files, never writing a
known_hosts file), host key verification against `fingerprint` / `known_hosts` before authentication, and the
translation of every connect failure into one `DeployError` line naming the host and the setting to check.
The connection returned here is the only one a host session uses.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sshipit.errors import DeployError
from sshipit.plan import HostSpec, Plan

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


def _family(algorithm: str) -> str:
    for family, algorithms in _FAMILIES:
        if algorithm in algorithms or algorithm.startswith(family):
            return family
    return algorithm


def known_hosts_line(host: HostSpec, key: SSHKey) -> str:
    name = host.hostname if host.port == 22 else f"[{host.hostname}]:{host.port}"
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{name} {algorithm} {blob}"


async def connect(host: HostSpec, plan: Plan) -> Connected:
    """Connect and authenticate, verifying the host key first. Raises DeployError."""
    import asyncssh

    policy = plan.host_keys
    offered: list[SSHKey] = []

    class Client(asyncssh.SSHClient):
        def validate_host_public_key(self, _host: str, _addr: str, _port: int, key: SSHKey) -> bool:
            offered.append(key)
            if not policy.pinned:
                return True
            return key.get_fingerprint("sha256").rstrip("=") in policy.fingerprints

    if policy.known_hosts:
        known_hosts: Any = asyncssh.import_known_hosts(policy.known_hosts)
    else:
        known_hosts = ([], [], [])  # trust nothing implicitly, and never read ~/.ssh/known_hosts
    creds = plan.credentials
    options: dict[str, Any] = dict(
        port=host.port,
        username=host.username,
        config=[],
        known_hosts=known_hosts,
        client_factory=Client,
        client_keys=creds.keys or (() if creds.agent_path else None),
        ignore_encrypted=True,
        agent_path=creds.agent_path,
        password=creds.password,
        password_auth=creds.password is not None,
        kbdint_auth=creds.password is not None,
        gss_auth=False,
        gss_kex=False,
        host_based_auth=False,
        x509_trusted_certs=None,
        encryption_algs=CIPHERS,
        compression_algs=["none"],
        connect_timeout=plan.connect_timeout,
        keepalive_interval=15,
        keepalive_count_max=4,
    )
    if not policy.known_hosts:
        # asyncssh's default order puts RSA first; ask for the strongest, fastest type the server has.
        options["server_host_key_algs"] = [alg for _family, algs in _FAMILIES for alg in algs]
    tried: set[str] = set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
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
            raise _host_key_error(host, offered) from None
        except Exception as exc:
            if offered and policy.pinned and isinstance(exc, asyncssh.KeyExchangeFailed):
                raise _host_key_error(host, offered) from None
            raise _connect_error(host, plan, exc) from None
        break
    key = conn.get_server_host_key()
    assert key is not None
    result = Connected(conn, key, policy.pinned, loop.time() - started)
    if not policy.pinned:
        result.warnings.append(
            f"host key not verified: {key.get_algorithm()} {result.fingerprint}; pin it with "
            f"fingerprint: {result.fingerprint} (or known_hosts: {known_hosts_line(host, key)})"
        )
    return result


def _host_key_error(host: HostSpec, offered: list[SSHKey]) -> DeployError:
    seen = ", ".join(sorted({f"{k.get_algorithm()} {k.get_fingerprint('sha256')}" for k in offered})) or "none"
    return DeployError(
        f"{host.label}: host key does not match: the server offered {seen}",
        setting="fingerprint / known_hosts",
        hint="if the server was legitimately re-keyed, pin the new key; otherwise someone may be intercepting",
        phase="connect",
    )


def _connect_error(host: HostSpec, plan: Plan, exc: BaseException) -> DeployError:
    import asyncssh

    where = f"{host.label} ({host.hostname} port {host.port})"
    if isinstance(exc, asyncssh.PermissionDenied):
        methods = ", ".join(plan.credentials.methods()) or "none"
        return DeployError(
            f"{host.label}: authentication failed for user {host.username!r} (tried: {methods})",
            setting="username / key / password",
            hint="check that the public key is in the user's authorized_keys and the user name is right",
            phase="connect",
        )
    if isinstance(exc, socket.gaierror):
        return DeployError(f"{where}: host name does not resolve ({exc.strerror})", setting="host",
                           hint="check the spelling and the CI's DNS", phase="connect")
    if isinstance(exc, ConnectionRefusedError):
        return DeployError(f"{where}: connection refused", setting="host / port",
                           hint="is sshd running and listening on that port?", phase="connect")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return DeployError(f"{where}: no SSH answer within {plan.connect_timeout:g}s", setting="timeout",
                           hint="check host, port and firewalls, or raise timeout", phase="connect")
    if isinstance(exc, asyncssh.DisconnectError):
        return DeployError(f"{where}: the server closed the connection: {exc.reason}", setting="host",
                           hint="see the server's sshd log", phase="connect")
    if isinstance(exc, OSError):
        return DeployError(f"{where}: cannot connect: {exc.strerror or exc}", setting="host / port",
                           hint="check the address and the network path", phase="connect")
    return DeployError(f"{where}: cannot connect: {exc}", setting="host", phase="connect")
