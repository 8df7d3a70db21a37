"""Fleets against real OpenSSH servers: jump host chains, twenty servers in one deploy, rolling batches, the
failure budget, connection retries, keepalives."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import Result, at_home, login_home, plugin_env, rmtree, start_server
from sshipit.localserver import KeyPair, LocalServer, generate_key

# ------------------------------------------------------------------------------------------------------ helpers


def log_mark(server: LocalServer) -> int:
    return len(server.log_text())


def log_since(server: LocalServer, mark: int) -> str:
    return server.log_text()[mark:]


def logins(log: str) -> int:
    return len(re.findall(r"^Accepted publickey for ", log, re.M))


def connections(log: str) -> int:
    return len(re.findall(r"^Connection from ", log, re.M))


def forwarded_to(log: str, port: int) -> bool:
    """The sshd (at LogLevel DEBUG1) opened a direct-tcpip channel to 127.0.0.1:`port` for a client."""
    return re.search(rf"direct_tcpip: originator .*, target 127\.0\.0\.1 port {port}\b", log) is not None


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error: " in line]


def one_error(result: Result, status: int, *needles: str) -> str:
    assert "Traceback" not in result.output, result
    assert result.returncode == status, result
    errors = error_lines(result)
    assert len(errors) == 1, result
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in the error line\n{result}"
    return errors[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def entry(server: LocalServer) -> str:
    return f"{server.user}@{server.host}:{server.port}"


def fingerprints(*servers: LocalServer) -> list[str]:
    return [fp for server in servers for fp in server.fingerprints().values()]


def summary_rows(result: Result) -> dict[str, str]:
    """The summary table's rows by host entry."""
    lines = result.stdout[result.stdout.index("summary:"):].splitlines()
    rows = {}
    for line in lines[2:]:
        words = line.split()
        if len(words) >= 2 and words[0] in ("ok", "FAILED", "skipped"):
            rows[words[1]] = line
    return rows


FAIL_STATUS = 7


def fail_on(*servers: LocalServer) -> str:
    """A command that exits FAIL_STATUS on `servers` (told apart by the server port in SSH_CONNECTION)."""
    patterns = "|".join(f'*" {server.port}"' for server in servers)
    return f'case "$SSH_CONNECTION" in {patterns}) exit {FAIL_STATUS};; esac; echo fine'


# ------------------------------------------------------------------------------------------------ jump hosts

# DEBUG1 makes sshd log each direct-tcpip channel, with the host and port it connects to.
BASTION_CONFIG = "AllowTcpForwarding yes\nLogLevel DEBUG1\n"


@dataclass
class Chain:
    bastion1: LocalServer
    bastion2: LocalServer
    target2: LocalServer  # a second machine: its own login, so its own home


@pytest.fixture(scope="module")
def chain(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[Chain]:
    """Two bastions that accept only the ecdsa key, and a target with its own login that accepts only ed25519."""
    with ThreadPoolExecutor(3) as pool:
        b1 = pool.submit(start_server, server_root / "bastion1", keys, BASTION_CONFIG, None, ("ecdsa",))
        b2 = pool.submit(start_server, server_root / "bastion2", keys, BASTION_CONFIG, None, ("ecdsa",))
        t2 = pool.submit(start_server, server_root / "jump-target", keys, "", "sshipit-test2", ("ed25519",))
        servers = Chain(b1.result(), b2.result(), t2.result())
    yield servers
    for srv in (servers.bastion1, servers.bastion2, servers.target2):
        srv.stop()


@pytest.fixture
def home_target(server: LocalServer, chain: Chain) -> Iterator[str]:
    """A target directory name, relative to the home of each login (sshipit-test and sshipit-test2)."""
    name = f"fleet-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    for home in {server.home, chain.target2.home}:
        rmtree(home / name)


def chain_env(chain: Chain, keys: dict[str, KeyPair], hosts: list[LocalServer], target: str,
              **settings: object) -> dict[str, str]:
    """Settings to reach `hosts` through bastion1 then bastion2; PLUGIN_* keywords replace a variable ("" drops it)."""
    overrides = {name: str(value) for name, value in settings.items() if name.startswith("PLUGIN_")}
    settings = {name: value for name, value in settings.items() if not name.startswith("PLUGIN_")}
    env = plugin_env(chain.target2, keys["ed25519"], target=target, **settings)
    env.pop("PLUGIN_PORT")
    env["PLUGIN_HOST"] = ",".join(entry(host) for host in hosts)
    env["PLUGIN_FINGERPRINT"] = ",".join(fingerprints(*hosts))
    env.setdefault("PLUGIN_JUMP", f"{chain.bastion1.user}@127.0.0.1:{chain.bastion1.port},"
                                  f"127.0.0.1:{chain.bastion2.port}")
    env.setdefault("PLUGIN_PROXY_USER", chain.bastion2.user)
    env.setdefault("PLUGIN_PROXY_FINGERPRINT", ",".join(fingerprints(chain.bastion1, chain.bastion2)))
    env.setdefault("PLUGIN_PROXY_KEY", keys["ecdsa"].private_text)
    env.setdefault("PLUGIN_RETRIES", "0")
    env |= overrides
    return {name: value for name, value in env.items() if value != ""}


class TestJumpHosts:
    def test_two_hop_chain_carries_every_target_over_one_connection_per_hop(
        self, server: LocalServer, chain: Chain, keys: dict[str, KeyPair], workspace: Path, home_target: str,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "site.txt").write_text("through two bastions\n")
        marks = {srv.port: log_mark(srv) for srv in (chain.bastion1, chain.bastion2, server, chain.target2)}
        env = chain_env(chain, keys, [server, chain.target2], home_target, sources="site.txt",
                        script="cat site.txt", debug=True)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        for home in (server.home, chain.target2.home):
            assert (home / home_target / "site.txt").read_text() == "through two bastions\n"
        b1 = log_since(chain.bastion1, marks[chain.bastion1.port])
        b2 = log_since(chain.bastion2, marks[chain.bastion2.port])
        # The path: bastion1 forwards to bastion2 only; bastion2 forwards to each target.
        assert forwarded_to(b1, chain.bastion2.port), b1
        assert not forwarded_to(b1, server.port) and not forwarded_to(b1, chain.target2.port), b1
        assert forwarded_to(b2, server.port) and forwarded_to(b2, chain.target2.port), b2
        # One login per hop for both targets; one per target, with the target's own key (bastions refuse it).
        assert logins(b1) == 1 and logins(b2) == 1, (b1, b2)
        assert logins(log_since(server, marks[server.port])) == 1
        assert logins(log_since(chain.target2, marks[chain.target2.port])) == 1
        for hop in (f"{chain.bastion1.user}@127.0.0.1:{chain.bastion1.port}", f"127.0.0.1:{chain.bastion2.port}"):
            assert re.search(rf"jump host {hop}: connected .*\(host key verified\)", result.stdout), result
        # The proxy key is a secret like the others.
        key_lines = [line for line in keys["ecdsa"].private_text.splitlines() if len(line) >= 16]
        assert key_lines and not any(line in result.output for line in key_lines)
        assert "setting proxy_key = ********" in result.stdout

    def test_one_proxy_host_with_its_own_port_setting(
        self, chain: Chain, keys: dict[str, KeyPair], home_target: str, run_sshipit: RunSshipit,
    ) -> None:
        mark = log_mark(chain.bastion1)
        env = chain_env(chain, keys, [chain.target2], home_target, script="echo arrived", PLUGIN_JUMP="",
                        PLUGIN_PROXY_KEY="")
        env |= {"PLUGIN_PROXY_HOST": "127.0.0.1", "PLUGIN_PROXY_PORT": str(chain.bastion1.port),
                "PLUGIN_PROXY_SSH_KEY": keys["ecdsa"].private_text}
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "arrived" in result.stdout.splitlines()
        assert forwarded_to(log_since(chain.bastion1, mark), chain.target2.port)

    @pytest.mark.parametrize("case", ["wrong fingerprint", "hop refuses the key", "second hop down"])
    def test_a_failing_hop_is_one_line_naming_it(
        self, case: str, chain: Chain, keys: dict[str, KeyPair], home_target: str, run_sshipit: RunSshipit,
    ) -> None:
        marks = {srv.port: log_mark(srv) for srv in (chain.bastion1, chain.target2)}
        env = chain_env(chain, keys, [chain.target2], home_target, script="echo arrived")
        hop1 = f"{chain.bastion1.user}@127.0.0.1:{chain.bastion1.port}"
        if case == "wrong fingerprint":
            env["PLUGIN_PROXY_FINGERPRINT"] = ",".join(fingerprints(chain.target2))  # the target's, not the hop's
            line = one_error(run_sshipit(env=env), 1, f"jump host {hop1}", "host key does not match",
                             "[setting: proxy_fingerprint]")
            assert "Accepted" not in log_since(chain.bastion1, marks[chain.bastion1.port])  # before any login
        elif case == "hop refuses the key":
            env["PLUGIN_PROXY_KEY"] = keys["ed25519"].private_text
            line = one_error(run_sshipit(env=env), 1, f"jump host {hop1}", "authentication failed",
                             "[setting: proxy_username / proxy_key / proxy_password]")
        else:
            port = free_port()
            env["PLUGIN_JUMP"] = f"{hop1},127.0.0.1:{port}"
            line = one_error(run_sshipit(env=env), 1, f"jump host 127.0.0.1:{port}", f"via jump host {hop1}",
                             "Connection refused")
        assert "arrived" not in line
        assert logins(log_since(chain.target2, marks[chain.target2.port])) == 0
        assert not (chain.target2.home / home_target).exists()

    def test_hop_refusing_to_forward_is_explained(
        self, server_root: Path, chain: Chain, keys: dict[str, KeyPair], home_target: str, run_sshipit: RunSshipit,
    ) -> None:
        closed = start_server(server_root / "no-forwarding", keys, "AllowTcpForwarding no\n")
        try:
            env = chain_env(chain, keys, [chain.target2], home_target, script="true",
                            PLUGIN_JUMP=entry(closed), PLUGIN_PROXY_FINGERPRINT=",".join(fingerprints(closed)))
            one_error(run_sshipit(env=env), 1, chain.target2.user, f"jump host {entry(closed)} refused to forward",
                      "AllowTcpForwarding yes")
        finally:
            closed.stop()


# ------------------------------------------------------------------------------------------- twenty servers

FLEET_SIZE = 20


@dataclass
class Member:
    server: LocalServer
    home: Path  # where its sessions start: each server stands for a machine of its own


@pytest.fixture(scope="module")
def fleet(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[list[Member]]:
    """Twenty sshd processes, started side by side (host key generation dominates).

    They all log in as the same user, so each server's sessions start in a directory of their own (sshd runs
    every command as `cd HOME && eval "$SSH_ORIGINAL_COMMAND"`): relative targets land apart, as on 20 machines.
    """
    def start(number: int) -> Member:
        workdir = server_root / f"fleet-{number:02d}"
        home = login_home(workdir / "home")
        return Member(start_server(workdir, keys, at_home(home), authorize=("ed25519",)), home)

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(start, number) for number in range(FLEET_SIZE)]
        members = []
        failures = []
        for future in futures:
            try:
                members.append(future.result())
            except Exception as exc:  # every server must run: a fleet test without its fleet fails
                failures.append(exc)
    if failures:
        for member in members:
            member.server.stop()
        pytest.fail(f"{len(failures)} of {FLEET_SIZE} fleet servers did not start: {failures[0]}")
    yield members
    for member in members:
        member.server.stop()


@pytest.fixture
def fleet_target(fleet: list[Member]) -> Iterator[str]:
    name = f"deploy-{time.monotonic_ns()}"
    yield name
    for member in fleet:
        rmtree(member.home / name)


def fleet_env(members: list[Member], key: KeyPair, target: str, **settings: object) -> dict[str, str]:
    servers = [member.server for member in members]
    env = plugin_env(servers[0], key, target=target, **settings)
    env.pop("PLUGIN_PORT")
    env["PLUGIN_HOST"] = ",".join(f"{srv.host}:{srv.port}" for srv in servers)
    env["PLUGIN_FINGERPRINT"] = ",".join(fingerprints(*servers))
    return env


def label(member: Member) -> str:
    return f"{member.server.host}:{member.server.port}"


def intervals(members: list[Member], target: str) -> list[tuple[float, float]]:
    spans = []
    for member in members:
        start, end = (member.home / target / "span").read_text().split()
        spans.append((float(start), float(end)))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


class TestManyHosts:
    def test_twenty_servers_in_one_deploy(
        self, fleet: list[Member], keys: dict[str, KeyPair], workspace: Path, fleet_target: str,
        run_sshipit: RunSshipit,
    ) -> None:
        (workspace / "dist").mkdir()
        (workspace / "dist/index.html").write_text("fleet\n")
        (workspace / "dist/app.js").write_bytes(os.urandom(50_000))
        marks = [log_mark(member.server) for member in fleet]
        script = 'start=$(date +%s.%N); sleep 0.4; echo "$start $(date +%s.%N)" > span'
        env = fleet_env(fleet, keys["ed25519"], fleet_target, sources="dist", script=script, max_parallel=8)
        started = time.monotonic()
        result = run_sshipit(env=env)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result
        assert "summary: 20 hosts, all ok" in result.stdout
        rows = summary_rows(result)
        for member, mark in zip(fleet, marks, strict=True):
            root = member.home / fleet_target
            assert (root / "dist/index.html").read_text() == "fleet\n"
            assert (root / "dist/app.js").read_bytes() == (workspace / "dist/app.js").read_bytes()
            assert logins(log_since(member.server, mark)) == 1  # one connection a host
            assert rows[label(member)].split()[0] == "ok"
            assert "KB" in rows[label(member)]  # the bytes sent column
        peak = most_at_once(intervals(fleet, fleet_target))
        assert 2 <= peak <= 8, peak  # side by side, but never more than max_parallel
        assert elapsed < 30, elapsed

    def test_rolling_batches_stop_after_a_failing_batch(
        self, fleet: list[Member], keys: dict[str, KeyPair], workspace: Path, fleet_target: str,
        run_sshipit: RunSshipit,
    ) -> None:
        six = fleet[:6]
        (workspace / "f.txt").write_text("rolled\n")
        marks = [log_mark(member.server) for member in six]
        env = fleet_env(six, keys["ed25519"], fleet_target, sources="f.txt", script=fail_on(six[3].server),
                        serial=2)
        result = run_sshipit(env=env)
        assert result.returncode == FAIL_STATUS, result
        for member in six[:4]:  # batches 1 and 2 ran (the failing host's upload landed before its command)
            assert (member.home / fleet_target / "f.txt").read_text() == "rolled\n"
        for member, mark in zip(six[4:], marks[4:], strict=True):  # batch 3 never started: no files, no connection
            assert not (member.home / fleet_target).exists()
            assert connections(log_since(member.server, mark)) == 0
        assert "batch 2 of 3 failed" in result.stdout
        rows = summary_rows(result)
        assert rows[label(six[3])].startswith("  FAILED") and f"status {FAIL_STATUS}" in rows[label(six[3])]
        assert all(rows[label(m)].lstrip().startswith("skipped") for m in six[4:]), result.stdout
        assert "2 not attempted" in result.stdout

    def test_atomic_batches_report_who_runs_the_new_release(
        self, fleet: list[Member], keys: dict[str, KeyPair], workspace: Path, fleet_target: str,
        run_sshipit: RunSshipit,
    ) -> None:
        six = fleet[:6]
        (workspace / "dist").mkdir()
        (workspace / "dist/v").write_text("1\n")
        env = fleet_env(six, keys["ed25519"], fleet_target, sources="dist", atomic=True, batch_size="33%")
        first = run_sshipit(env={**env, "DRONE_COMMIT_SHA": "1111111"})
        assert first.returncode == 0, first
        old = [os.readlink(m.home / fleet_target / "current") for m in six]
        (workspace / "dist/v").write_text("2\n")
        env["PLUGIN_SCRIPT"] = fail_on(six[2].server)
        result = run_sshipit(env={**env, "DRONE_COMMIT_SHA": "2222222"})
        assert result.returncode == FAIL_STATUS, result
        now = [os.readlink(m.home / fleet_target / "current") for m in six]
        assert [link.endswith("-2222222") for link in now] == [True, True, False, False, False, False], now
        assert now[2:] == old[2:]  # the failing batch switched neither host; the last batch never started
        for member in six:
            served = (member.home / fleet_target / "current/dist/v").read_text()
            assert served == ("2\n" if member in six[:2] else "1\n")
        for member in six[4:]:
            assert not [p for p in (member.home / fleet_target / "releases").iterdir() if "2222222" in p.name]
        new_id = now[0].split("/")[-1]
        assert f"release {new_id} is live on 2 hosts: {label(six[0])}, {label(six[1])}" in result.stdout
        assert "the previous release stays on 4 hosts: " + ", ".join(label(m) for m in six[2:]) in result.stdout
        rows = summary_rows(result)
        assert new_id in rows[label(six[0])] and " old " in rows[label(six[5])]

    @pytest.mark.parametrize(("budget", "status", "not_attempted"),
                             [("2", 0, 0), ("1", FAIL_STATUS, 2), ("34%", 0, 0), ("33%", FAIL_STATUS, 2)])
    def test_max_failures_as_number_and_percentage(
        self, budget: str, status: int, not_attempted: int, fleet: list[Member], keys: dict[str, KeyPair],
        fleet_target: str, run_sshipit: RunSshipit,
    ) -> None:
        """Six hosts, one at a time; the 2nd and 4th fail. 34% of 6 tolerates 2, 33% only 1 (rounded down)."""
        six = fleet[:6]
        env = fleet_env(six, keys["ed25519"], fleet_target, script=fail_on(six[1].server, six[3].server),
                        max_failures=budget, max_parallel=1)
        result = run_sshipit(env=env)
        assert result.returncode == status, result
        assert len(error_lines(result)) == 2, result
        rows = summary_rows(result)
        states = [rows[label(m)].split()[0] for m in six]
        if not_attempted:
            assert states == ["ok", "FAILED", "ok", "FAILED", "skipped", "skipped"], result.stdout
            assert "stopped after 2 failed hosts" in rows[label(six[4])]
            for member in six[4:]:
                assert not (member.home / fleet_target).exists()
        else:
            assert states == ["ok", "FAILED", "ok", "FAILED", "ok", "ok"], result.stdout
            assert "2 failed (within max_failures)" in result.stdout
            assert (six[5].home / fleet_target).is_dir()


# --------------------------------------------------------------------------------------------------- retries


class TestRetries:
    def test_a_server_that_starts_late_is_reached_by_retrying(
        self, server_root: Path, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
        run_sshipit: RunSshipit,
    ) -> None:
        late = LocalServer(server_root / f"late-{time.monotonic_ns()}")
        late.authorize(keys["ed25519"].public_text)
        late.port = free_port()  # reserved in advance: start() tries the previous port first
        port = late.port
        (workspace / "f.txt").write_text("late\n")
        env = plugin_env(late, keys["ed25519"], target=str(remote_dir), sources="f.txt", retries=4)
        starter = threading.Timer(2.0, late.start)
        starter.start()
        try:
            started = time.monotonic()
            result = run_sshipit(env=env)
            elapsed = time.monotonic() - started
        finally:
            starter.join()
            late.stop()
        assert late.port == port, "the reserved port was taken by something else meanwhile"
        assert result.returncode == 0, result
        assert (remote_dir / "f.txt").read_text() == "late\n"
        match = re.search(r"connected at attempt (\d) of 5, after: .*connection refused", result.stderr)
        assert match and int(match.group(1)) >= 2, result
        assert logins(late.log_text()) == 1
        assert elapsed >= 2.0

    def test_authentication_failure_is_not_retried(
        self, server: LocalServer, tmp_path: Path, run_sshipit: RunSshipit,
    ) -> None:
        stranger = generate_key(tmp_path, "ed25519")
        mark = log_mark(server)
        started = time.monotonic()
        result = run_sshipit(env=plugin_env(server, stranger, script="true", retries=5))
        elapsed = time.monotonic() - started
        line = one_error(result, 1, "authentication failed")
        assert "attempts" not in line
        assert connections(log_since(server, mark)) == 1
        assert elapsed < 10  # five retries would take 1+2+4+8+16 s

    def test_refused_connection_is_retried_then_named_once(
        self, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
    ) -> None:
        port = free_port()
        started = time.monotonic()
        result = run_sshipit(env=plugin_env(server, keys["ed25519"], port=port, script="true", retries=1))
        elapsed = time.monotonic() - started
        one_error(result, 1, f"port {port}", "connection refused (after 2 attempts)")
        assert elapsed >= 0.8  # one backoff of about a second


# ----------------------------------------------------------------------------------------- keepalive, settings


def test_keepalive_interval_is_used(chain: Chain, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """bastion1 logs at DEBUG1, which shows each keepalive request; reach it directly."""
    bastion = chain.bastion1
    counts = {}
    for keepalive in ("500ms", "15s"):
        mark = log_mark(bastion)
        env = plugin_env(bastion, keys["ecdsa"], script="sleep 2.2", keepalive=keepalive)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        counts[keepalive] = log_since(bastion, mark).count("keepalive@openssh.com")
    assert counts["500ms"] >= 3 and counts["15s"] == 0, counts


@pytest.mark.parametrize(("settings", "setting"), [
    ({"proxy_host": "b1", "jump": "b2"}, "jump"),
    ({"proxy_key": "x"}, "proxy_key"),
    ({"jump": "user name@b1"}, "jump"),
    ({"proxy_host": "b1", "proxy_fingerprint": "MD5:00"}, "proxy_fingerprint"),
    ({"batch_size": "0%"}, "batch_size"),
    ({"serial": "some"}, "batch_size"),
    ({"max_failures": "120%"}, "max_failures"),
    ({"max_parallel": "0"}, "max_parallel"),
    ({"retries": "-1"}, "retries"),
    ({"keepalive": "soon"}, "keepalive"),
])
def test_bad_fleet_settings_are_one_line(
    settings: dict[str, str], setting: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    mark = log_mark(server)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], script="true", **settings))
    one_error(result, 2, f"[setting: {setting}]")
    assert connections(log_since(server, mark)) == 0
