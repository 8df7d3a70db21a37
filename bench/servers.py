"""The benchmark's OpenSSH servers, the 50 Mbit/s link, and the byte counters.

- `loopback_servers`: real sshd processes on 127.0.0.1 (sshipit.localserver.LocalServer), one per login user.
- `SlowLink`: a network namespace joined to this one by a veth pair (10.211.0.1/30 here, 10.211.0.2/30 inside),
  both directions shaped to 50 Mbit/s with `tc qdisc ... tbf`, and an sshd listening inside it on 10.211.0.2:22.
  Both ends are on this machine; nothing else is ever addressed.
- `ByteCounter`: iptables rules that count the IP bytes (TCP payload and headers) of every packet this
  namespace sends to a server's address and port (chain SSHIPIT_BENCH_OUT, hooked into OUTPUT) and receives
  from it (SSHIPIT_BENCH_IN, hooked into INPUT). Every tool's traffic to a server is counted the same way,
  whatever its number of connections.

- `TargetArea`: as root, a tmpfs mounted at ~/sshipit-bench of each login user, where every tool's targets live.
  The benchmark compares tools, not this machine's disk: on a virtual disk the same `tar | ssh` deploy of the
  workload took 2.7 s or 19 s depending on write-back stalls, which no number of runs averages out.

Everything is torn down by `close()` (also at exit and on SIGINT/SIGTERM, see run.py); a previous run's leftovers
(namespace, veth, chains) are removed before setting up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sshipit.localserver import LocalServer

NETNS = "sshipit-bench"
VETH_HOST, VETH_NS = "sbench0", "sbench1"
HOST_ADDR, NS_ADDR = "10.211.0.1", "10.211.0.2"
RATE = "50mbit"
CHAIN_OUT, CHAIN_IN = "SSHIPIT_BENCH_OUT", "SSHIPIT_BENCH_IN"


@dataclass
class Endpoint:
    """One server as the tools see it."""

    link: str  # "loopback" or "50mbit"
    host: str
    port: int
    user: str
    home: Path
    known_hosts: str  # OpenSSH known_hosts lines for this server

    @property
    def spec(self) -> str:
        """user@host:port, as sshipit's host setting takes it."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def uid_gid(self) -> tuple[int, int]:
        st = self.home.stat()
        return st.st_uid, st.st_gid


def is_root() -> bool:
    return os.geteuid() == 0


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _known_hosts(host: str, port: int, server: LocalServer) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    lines = []
    for kind in ("ed25519", "ecdsa", "rsa"):
        fields = server.host_key_path(kind).with_name(f"ssh_host_{kind}_key.pub").read_text().split()
        lines.append(f"{name} {fields[0]} {fields[1]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# loopback


def loopback_servers(workdir: Path, public_key: str, users: list[str | None]) -> list[tuple[LocalServer, Endpoint]]:
    """Start one LocalServer per login user (None: the default login user)."""
    started = []
    for n, user in enumerate(users):
        server = LocalServer(workdir / f"loopback-{n}", user=user, extra_config="LogLevel INFO\n")
        server.authorize(public_key)
        server.start()
        started.append((server, Endpoint("loopback", server.host, server.port, server.user, server.home,
                                         _known_hosts(server.host, server.port, server))))
    return started


# ---------------------------------------------------------------------------
# the 50 Mbit/s link


def slow_link_missing() -> list[str]:
    """What the slow link needs and this machine lacks (empty: it can be built)."""
    missing = []
    if not is_root():
        missing.append("root (network namespaces, tc, iptables)")
    for tool in ("ip", "tc", "iptables"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install iproute2 iptables)")
    return missing


def remove_leftovers() -> None:
    """Remove what a previous, killed run may have left: the namespace (and its processes), veth, chains."""
    if not is_root():
        return
    if shutil.which("ip"):
        pids = _run(["ip", "netns", "pids", NETNS], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "del", NETNS], check=False)
        _run(["ip", "link", "del", VETH_HOST], check=False)
    if shutil.which("iptables"):
        remove_chains()
    for path in stale_areas():
        unmount(path)


AREA = "sshipit-bench"  # the targets' directory in each login's home


class TargetArea:
    """tmpfs mounts at <home>/sshipit-bench, owned by each login user (root only; else targets stay on disk)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and is_root()
        self.mounted: list[Path] = []

    def ensure(self, home: Path) -> None:
        """Mount the area in `home` unless it is there. Call it before a server in a namespace starts: the
        namespace's copy of the mount table is taken then (the root mount here is private)."""
        path = home / AREA
        if not self.enabled or path in self.mounted:
            return
        unmount(path)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o755)
        owner = home.stat()
        _run(["mount", "-t", "tmpfs", "-o", f"mode=0755,uid={owner.st_uid},gid={owner.st_gid}", "sshipit-bench",
              str(path)])
        self.mounted.append(path)

    def close(self) -> None:
        for path in self.mounted:
            unmount(path)
            with contextlib.suppress(OSError):
                path.rmdir()
        self.mounted = []


def unmount(path: Path) -> None:
    if is_root() and os.path.ismount(path):
        _run(["umount", "--lazy", str(path)], check=False)


def stale_areas() -> list[Path]:
    """tmpfs areas a killed run left mounted."""
    with open("/proc/mounts") as mounts:
        return [Path(fields[1]) for fields in (line.split() for line in mounts)
                if fields[0] == "sshipit-bench" and fields[1].endswith("/" + AREA)]


class SlowLink:
    """A 50 Mbit/s link (tbf, both directions) to an sshd inside a network namespace."""

    def __init__(self, workdir: Path, public_key: str) -> None:
        self.workdir = workdir
        self.public_key = public_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint: Endpoint | None = None
        self.up = False

    def start(self) -> Endpoint:
        ns = ["ip", "netns", "exec", NETNS]
        self.up = True
        _run(["ip", "netns", "add", NETNS])
        _run(["ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS])
        _run(["ip", "link", "set", VETH_NS, "netns", NETNS])
        _run(["ip", "addr", "add", f"{HOST_ADDR}/30", "dev", VETH_HOST])
        _run(["ip", "link", "set", VETH_HOST, "up"])
        _run([*ns, "ip", "addr", "add", f"{NS_ADDR}/30", "dev", VETH_NS])
        _run([*ns, "ip", "link", "set", VETH_NS, "up"])
        _run([*ns, "ip", "link", "set", "lo", "up"])
        # burst: enough for a 64 KiB GSO segment; latency: the queue a sender may build before drops.
        shape = ["root", "tbf", "rate", RATE, "burst", "64kb", "latency", "50ms"]
        _run(["tc", "qdisc", "add", "dev", VETH_HOST, *shape])
        _run([*ns, "tc", "qdisc", "add", "dev", VETH_NS, *shape])

        # LocalServer prepares the login user, host keys and authorized_keys; sshd itself runs in the namespace.
        server = LocalServer(self.workdir / "slow-link")
        server.authorize(self.public_key)
        config = self.workdir / "slow-link" / "sshd_config.netns"
        config.write_text("\n".join([
            "Port 22",
            f"ListenAddress {NS_ADDR}",
            *(f"HostKey {server.host_key_path(kind)}" for kind in ("rsa", "ecdsa", "ed25519")),
            f"PidFile {self.workdir / 'slow-link' / 'sshd-netns.pid'}",
            f"AuthorizedKeysFile {server.authorized_keys_path}",
            "StrictModes no", "UsePAM no", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin yes", "Subsystem sftp internal-sftp",
            "MaxStartups 200", "MaxSessions 100", "LogLevel ERROR", "PrintMotd no", "PrintLastLog no", "UseDNS no",
        ]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        log = self.workdir / "slow-link" / "sshd-netns.log"
        self.proc = subprocess.Popen([*ns, "/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd in the namespace exited: {log.read_text() if log.exists() else ''}")
            with contextlib.suppress(OSError), socket.create_connection((NS_ADDR, 22), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("sshd in the namespace did not answer within 20s")
            time.sleep(0.05)
        self.endpoint = Endpoint("50mbit", NS_ADDR, 22, server.user, server.home, _known_hosts(NS_ADDR, 22, server))
        return self.endpoint

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.up:
            # Session processes still in the namespace (killed runs) keep it alive: end them first.
            for pid in _run(["ip", "netns", "pids", NETNS], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "netns", "del", NETNS], check=False)
            _run(["ip", "link", "del", VETH_HOST], check=False)
            self.up = False


# ---------------------------------------------------------------------------
# byte counting


@dataclass
class ByteCounter:
    """iptables counters of the bytes sent to and received from each server (address, port)."""

    endpoints: list[Endpoint] = field(default_factory=list)
    active: bool = False

    def start(self, endpoints: list[Endpoint]) -> None:
        if not is_root() or shutil.which("iptables") is None:
            return
        self.endpoints = list(endpoints)
        for hook, chain in (("OUTPUT", CHAIN_OUT), ("INPUT", CHAIN_IN)):
            _run(["iptables", "-w", "-N", chain])
            _run(["iptables", "-w", "-I", hook, "1", "-j", chain])
        self.active = True
        for ep in self.endpoints:
            self.add(ep)

    def add(self, ep: Endpoint) -> None:
        if not self.active:
            return
        if ep not in self.endpoints:
            self.endpoints.append(ep)
        _run(["iptables", "-w", "-A", CHAIN_OUT, "-p", "tcp", "-d", ep.host, "--dport", str(ep.port)])
        _run(["iptables", "-w", "-A", CHAIN_IN, "-p", "tcp", "-s", ep.host, "--sport", str(ep.port)])

    def read(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(host, port) -> (bytes sent to it, bytes received from it), since the rules were made. Empty if the
        chains vanished (someone flushed the ruleset): they are made again for the next run."""
        if not self.active:
            return {}
        try:
            sent = self._chain(CHAIN_OUT, "dpt")
            received = self._chain(CHAIN_IN, "spt")
        except RuntimeError:
            remove_chains()
            endpoints, self.endpoints = self.endpoints, []
            self.active = False
            self.start(endpoints)
            return {}
        return {key: (sent.get(key, 0), received.get(key, 0)) for key in set(sent) | set(received)}

    @staticmethod
    def _chain(chain: str, port_word: str) -> dict[tuple[str, int], int]:
        # `iptables -v -S` prints rules as "-A CHAIN -d 127.0.0.1/32 -p tcp -m tcp --dport 40000 -c PKTS BYTES".
        side = "d" if port_word == "dpt" else "s"
        pattern = re.compile(rf"-{side} ([0-9.]+)/32 .*--{side}port (\d+) -c (\d+) (\d+)")
        counts: dict[tuple[str, int], int] = {}
        for line in _run(["iptables", "-w", "-v", "-S", chain]).stdout.splitlines():
            match = pattern.search(line)
            if match:
                counts[(match.group(1), int(match.group(2)))] = int(match.group(4))
        return counts

    def close(self) -> None:
        if self.active:
            remove_chains()
            self.active = False


def remove_chains() -> None:
    for hook, chain in (("OUTPUT", CHAIN_OUT), ("INPUT", CHAIN_IN)):
        while _run(["iptables", "-w", "-D", hook, "-j", chain], check=False).returncode == 0:
            pass
        _run(["iptables", "-w", "-F", chain], check=False)
        _run(["iptables", "-w", "-X", chain], check=False)
