"""What people and CIs read: phases with durations, colour only on a terminal, upload progress, Drone's card,
GitHub's step summary and outputs, and error lines that name the host, the phase, the setting and a hint.

Everything runs the real `sshipit` against real OpenSSH servers; the terminal cases run it in a real
pseudo-terminal (the `pty` module).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import REPO, Result, clean_env, plugin_env, rmtree, server_bin_dir, start_server
from sshipit.localserver import KeyPair, LocalServer, default_login_user, generate_key

SGR = re.compile(r"\x1b\[[0-9;]*m")  # colour and weight
CARD = re.compile(r"(?:^|\n)\x1b\]1338;([A-Za-z0-9+/=]*)\x1b\]0m\n")
DURATION = r"\((\d+\.\d\d)s\)"
PROGRESS = re.compile(r"^upload: (\d+) of (\d+) files, ([\d.]+ [KMG]?B) of ([\d.]+ [KMG]?B) \((\d+)%\), "
                      r"([\d.]+ [KMG]?B)/s, about (\S+) left$")
SETTINGS_SHAPE = re.compile(r"^error: (?P<phase>settings): (?P<what>.+) \[setting: (?P<setting>[^\]]+)\]; "
                            r"(?P<hint>\S.*)$")
ERROR_SHAPE = re.compile(r"^error: (?P<host>\S+): (?P<phase>[a-z_]+): (?P<what>.+) \[setting: (?P<setting>[^\]]+)\]; "
                         r"(?P<hint>\S.*)$")
SCHEMA = "https://raw.githubusercontent.com/sshipit/sshipit/main/docs/card.json"

DRONE = {
    "CI": "true", "DRONE": "true", "DRONE_REPO": "octo/site", "DRONE_BUILD_NUMBER": "42", "DRONE_STEP_NAME": "deploy",
    "DRONE_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
}


# ---------------------------------------------------------------------------------------------------- helpers


def site(workspace: Path, files: int = 3) -> Path:
    dist = workspace / "dist"
    dist.mkdir(exist_ok=True)
    for n in range(files):
        (dist / f"page{n}.html").write_text(f"<p>{n}</p>\n")
    return dist


def write_random(path: Path, megabytes: int) -> str:
    """`megabytes` MB of incompressible data; returns its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for _ in range(megabytes):
            block = os.urandom(1_000_000)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def cards(stdout: str) -> list[dict[str, object]]:
    """Every Drone card in a run's stdout: base64 JSON between ESC ]1338; and ESC ]0m, at a line's start."""
    found = [json.loads(base64.b64decode(payload)) for payload in CARD.findall(stdout)]
    assert stdout.count("\x1b]1338;") == len(found), f"a card that is not alone at a line's start:\n{stdout!r}"
    return found


def phase_lines(output: str) -> dict[str, list[str]]:
    """Phase lines (`<phase>: ... (1.23s)`) by phase, host tags removed."""
    lines: dict[str, list[str]] = {}
    for line in output.splitlines():
        line = re.sub(r"^\[[^\]]+\] ", "", line)
        match = re.match(r"^(connect|upload|release|commands|post_commands|switch|health): .+ " + DURATION + "$", line)
        if match:
            lines.setdefault(match.group(1), []).append(line)
    return lines


def run_in_pty(args: list[str], env: dict[str, str], cwd: Path, home: Path, timeout: float = 120) -> tuple[int, str]:
    """Run `python -m sshipit ARGS` with stdin, stdout and stderr on a real pseudo-terminal (160 columns);
    returns the exit status and everything the terminal received."""
    environ = clean_env(home, env)
    for name, value in env.items():  # `env` decides about NO_COLOR and TERM, whatever clean_env set
        environ[name] = value
    if "NO_COLOR" not in env:
        environ.pop("NO_COLOR", None)
    environ.setdefault("TERM", "xterm-256color")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "sshipit", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=environ, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"sshipit on a terminal did not finish within {timeout}s:\n"
                            f"{b''.join(chunks).decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def slow_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd whose `tar` takes its archive in at about 3 MB/s, so that an upload lasts several seconds."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.fail("the slow-upload server needs /usr/bin/python3 on the server side to throttle tar's input")
    workdir = server_root / "slow-tar"
    bin_dir = server_bin_dir(workdir / "bin")
    throttle = bin_dir / "throttle.py"
    throttle.write_text(
        "import sys, time\n"
        "rate, done, start = 3_000_000, 0, time.monotonic()\n"
        "while chunk := sys.stdin.buffer.read1(65536):\n"
        "    sys.stdout.buffer.write(chunk)\n"
        "    done += len(chunk)\n"
        "    time.sleep(max(0.0, done / rate - (time.monotonic() - start)))\n"
        "sys.stdout.buffer.flush()\n")
    tar = bin_dir / "tar"
    tar.write_text('#!/bin/sh\n# extraction reads its archive through the throttle; everything else is plain tar\n'
                   f'case " $* " in *" -x"*) {python} {throttle} | /usr/bin/tar "$@"; exit $?;; esac\n'
                   'exec /usr/bin/tar "$@"\n')
    for path in (throttle, tar):
        path.chmod(0o755)
    srv = start_server(workdir, keys, f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin\n", authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def no_tar_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd whose remote commands find every usual tool on PATH but tar."""
    workdir = server_root / "no-tar"
    bin_dir = server_bin_dir(workdir / "bin")
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(directory).iterdir() if Path(directory).is_dir() else []:
            if tool.name != "tar" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    srv = start_server(workdir, keys, f"SetEnv PATH={bin_dir}\n", authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def other_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """A second sshd with a login of its own, so that a relative target is a different directory on each."""
    srv = start_server(server_root / "output-other", keys, user="sshipit-test2", authorize=("ed25519",))
    yield srv
    srv.stop()


@pytest.fixture
def home(tmp_path: Path, run_sshipit: RunSshipit) -> Path:
    """The HOME of `run_sshipit`'s runs, for the runs this module starts itself (pty)."""
    return tmp_path / "home"


# ------------------------------------------------------------------------------------------- phases and colour


def test_phases_each_with_its_duration_in_plain_ci_lines(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    site(workspace)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", atomic=True,
                     commands=["echo preparing", "true"], post_commands="echo live", healthcheck="test -d dist")
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert not SGR.search(result.output) and "\r" not in result.output, result  # a pipe gets plain lines
    phases = phase_lines(result.stdout)
    assert set(phases) == {"connect", "upload", "commands", "release", "switch", "post_commands", "health"}, result
    assert "host key verified" in phases["connect"][0]
    assert "uploaded 3 files" in phases["upload"][0]
    assert phases["commands"][0].startswith("commands: ran 2 commands (")
    assert phases["post_commands"][0].startswith("post_commands: ran 1 command (")
    assert "health check passed (attempt 1)" in phases["health"][0]
    order = [result.stdout.index(phases[name][0]) for name in
             ("connect", "upload", "commands", "release", "switch", "post_commands", "health")]
    assert order == sorted(order), result
    assert result.stdout.index("$ echo preparing") < result.stdout.index(phases["commands"][0])
    summary = re.search(r"^summary: 1 host, all ok " + DURATION + "$", result.stdout, re.M)
    assert summary, result
    # The phases fit in the whole run; durations are real measurements, not zeros everywhere.
    total = float(summary.group(1))
    measured = [float(re.search(DURATION + "$", lines[0]).group(1)) for lines in phases.values()]  # type: ignore[union-attr]
    assert max(measured) <= total and sum(measured) > 0


def test_no_colour_without_a_terminal_even_without_no_color(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    site(workspace)
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", script="echo hi; exit 3",
                     fingerprint=None)
    env["TERM"] = "xterm-256color"
    result = run_sshipit(env=env)
    assert result.returncode == 3, result
    assert "warning: host key not verified" in result.stderr and "error: " in result.stderr
    assert not SGR.search(result.output), result


def test_colour_only_on_a_terminal_and_never_with_no_color_or_a_dumb_terminal(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, home: Path,
) -> None:
    site(workspace)
    good = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", script="echo hi",
                      fingerprint=None)  # unpinned: a warning
    bad = {**good, "PLUGIN_SCRIPT": "exit 5"}

    status, text = run_in_pty([], good, workspace, home)
    assert status == 0, text
    assert "\x1b[1m$ echo hi\x1b[0m" in text  # commands bold
    assert "\x1b[32mconnect:\x1b[0m connected to" in text and "\x1b[32mupload:\x1b[0m uploaded 3 files" in text
    assert re.search(r"\x1b\[33mwarning: host key not verified[^\x1b]*\x1b\[0m", text)  # warnings yellow
    assert "\x1b[32msummary: 1 host, all ok" in text and "\x1b[32mok\x1b[0m" in text  # ok green

    status, text = run_in_pty([], bad, workspace, home)
    assert status == 5, text
    assert re.search(r"\x1b\[31merror: [^\x1b]*commands: command 1 `exit 5` exited with status 5", text)  # red
    assert "\x1b[31mFAILED" in text

    for extra in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
        status, text = run_in_pty([], {**bad, **extra}, workspace, home)
        assert status == 5, text
        assert "error: " in text and "$ exit 5" in text and "warning: host key not verified" in text
        assert not SGR.search(text), f"colour with {extra}:\n{text!r}"


# ---------------------------------------------------------------------------------------------------- progress


def test_a_long_upload_reports_progress_in_plain_lines(
    slow_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    (workspace / "dist").mkdir()
    digest = write_random(workspace / "dist/big.bin", 15)  # about 5s through the 3 MB/s tar
    env = plugin_env(slow_server, keys["ed25519"], target=str(remote_dir), sources="dist", compress="none")
    started = time.monotonic()
    result = run_sshipit(env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result
    assert hashlib.sha256((remote_dir / "dist/big.bin").read_bytes()).hexdigest() == digest
    assert elapsed > 4, f"the upload was too quick ({elapsed:.1f}s) to need progress: is tar throttled?\n{result}"
    progress = [m for m in map(PROGRESS.match, result.stdout.splitlines()) if m]
    assert progress, result
    first = progress[0]
    assert first.group(2) == "1" and first.group(4) == "15.0 MB"
    assert 0 < int(first.group(5)) <= 100
    assert "\r" not in result.output and not SGR.search(result.output)  # one plain line at a time in a log
    # A line every 5s after the first at 3s, not more: a 5-8s upload tells it once or twice.
    assert len(progress) <= 1 + int(elapsed - 3) // 5, result


def test_zstd_level_rises_when_the_link_is_the_limit_and_files_land_whole(
    slow_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    """Behind a slow server the tar worker mostly waits, so zstd steps up a level (ending one frame, starting the
    next); the frames unpack as one stream, byte for byte."""
    rng = random.Random(5)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 9))) for _ in range(3000)]
    (workspace / "dist").mkdir()
    text = b" ".join(rng.choices(words, k=2_300_000))[: 14 << 20]  # ~3x compressible, 14 MiB: ~5s at 3 MB/s
    (workspace / "dist/words.txt").write_bytes(text)
    (workspace / "dist/small.txt").write_text("after the switch\n")
    env = plugin_env(slow_server, keys["ed25519"], target=str(remote_dir), sources="dist", compress="zstd")
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert re.search(r"over tar\+zstd \(levels 1→3", result.stdout), result
    assert (remote_dir / "dist/words.txt").read_bytes() == text
    assert (remote_dir / "dist/small.txt").read_text() == "after the switch\n"


def test_a_long_upload_on_a_terminal_draws_one_live_bar(
    slow_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, home: Path
) -> None:
    (workspace / "dist").mkdir()
    write_random(workspace / "dist/big.bin", 15)
    env = plugin_env(slow_server, keys["ed25519"], target=str(remote_dir), sources="dist", compress="none")
    status, text = run_in_pty([], env, workspace, home)
    assert status == 0, text
    redraws = re.findall(r"\r\x1b\[K(upload \[[#-]{16}\] \d+%[^\r\n\x1b]*ETA [^\r\n\x1b]+)", text)
    assert len(redraws) >= 3, text  # redrawn in place, several times a second
    assert all("/15.0 MB " in bar and "/1 files" in bar and len(bar) < 80 for bar in redraws), redraws
    assert not any(PROGRESS.match(line) for line in text.splitlines())  # no CI lines on a terminal
    # The bar is erased before the next line: the upload line starts clean.
    assert re.search(r"\r\x1b\[K(\x1b\[32m)?upload:(\x1b\[0m)? uploaded 1 files", text), text


def test_a_short_upload_shows_no_progress(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit
) -> None:
    site(workspace, files=20)
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist"))
    assert result.returncode == 0, result
    assert "uploaded 20 files" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("upload: ") and " left" in line]


# -------------------------------------------------------------------------------------------------- Drone card


@pytest.fixture
def relative_target(server: LocalServer, other_server: LocalServer) -> Iterator[str]:
    """A target relative to the login's home: a directory of its own on each of the two servers."""
    name = f"card-site-{os.getpid()}-{time.time_ns()}"
    yield name
    for srv in (server, other_server):
        rmtree(srv.home / name)


def test_drone_card_on_stdout_tells_hosts_release_commit_files_bytes_and_duration(
    server: LocalServer, other_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, relative_target: str,
    run_sshipit: RunSshipit,
) -> None:
    site(workspace)
    hosts = [f"{srv.user}@{srv.host}:{srv.port}" for srv in (server, other_server)]
    env = plugin_env(server, keys["ed25519"], host=hosts, target=relative_target, sources="dist", atomic=True,
                     fingerprint=[*server.fingerprints().values(), *other_server.fingerprints().values()])
    result = run_sshipit(env={**env, **DRONE, "DRONE_CARD_PATH": "/dev/stdout"})
    assert result.returncode == 0, result
    found = cards(result.stdout)
    assert len(found) == 1, result
    card = found[0]
    assert card["schema"] == SCHEMA
    data = card["data"]
    assert isinstance(data, dict)
    release = os.readlink(other_server.home / relative_target / "current").split("/")[-1]
    assert release.endswith("-0123456")
    assert data["result"] == "ok" and data["title"] == "Deployed to 2 hosts" and data["color"] == "Good"
    assert data["release"] == data["release_id"] == release
    assert data["commit"] == "0123456" and data["commit_sha"] == DRONE["DRONE_COMMIT_SHA"]
    assert data["repo"] == "octo/site" and data["build"] == "42" and data["mode"] == "atomic"
    assert (data["hosts_total"], data["hosts_ok"], data["hosts_failed"], data["hosts_skipped"]) == (2, 2, 0, 0)
    assert data["files"] == 6 and data["bytes"] == 2 * sum(len(f"<p>{n}</p>\n") for n in range(3))
    assert isinstance(data["sent_bytes"], int) and data["sent_bytes"] > 0
    assert isinstance(data["seconds"], float) and 0 < data["seconds"] < 60 and data["duration"].endswith("s")
    rows = data["hosts"]
    assert [row["host"] for row in rows] == hosts
    assert all(row["result"] == "ok" and row["release"] == release and row["files"] == 3 for row in rows)
    # The card is cut out of the log by the runner: the lines around it stay whole.
    before, after = result.stdout.split("\x1b]1338;")
    assert before.endswith("\n") and after.split("\x1b]0m", 1)[1] == "\n"

    check_template_binds_only_card_fields(data)


def check_template_binds_only_card_fields(data: dict[str, object]) -> None:
    """docs/card.json (the schema URL's file) is an Adaptive Card whose every ${...} names a field of the data;
    inside a `$data: ${hosts}` block, a field of a host row."""
    template = json.loads((REPO / "docs/card.json").read_text())
    assert template["type"] == "AdaptiveCard" and template["version"]
    rows = data["hosts"]
    assert isinstance(rows, list) and rows
    seen: list[str] = []

    def walk(node: object, scope: dict[str, object]) -> None:
        if isinstance(node, dict):
            inner = scope
            if "$data" in node:
                name = re.fullmatch(r"\$\{(\w+)\}", node["$data"])
                assert name and isinstance(scope.get(name.group(1)), list), node["$data"]
                if not scope[name.group(1)]:  # an empty list draws nothing (a deploy card's `releases`): its
                    return  # bindings are checked where it has rows (test_releases_list renders the listing card)
                inner = scope[name.group(1)][0]  # type: ignore[index]
            for key, value in node.items():
                walk(value, scope if key == "$data" else inner)
        elif isinstance(node, list):
            for item in node:
                walk(item, scope)
        elif isinstance(node, str):
            for name in re.findall(r"\$\{\s*([A-Za-z_]\w*)", node):
                assert name in scope, f"docs/card.json binds ${{{name}}}, which the card's data lacks"
                seen.append(name)

    walk(template, data)
    assert {"title", "release", "commit", "files", "duration", "host", "result"} <= set(seen)


def test_drone_card_written_raw_to_a_file_path_and_telling_a_failure(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    site(workspace)
    path = tmp_path / "card.json"
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", script="exit 7")
    result = run_sshipit(env={**env, **DRONE, "DRONE_CARD_PATH": str(path)})
    assert result.returncode == 7, result
    assert "\x1b]1338;" not in result.stdout
    card = json.loads(path.read_text())
    assert card["schema"] == SCHEMA
    data = card["data"]
    assert data["result"] == "failed" and data["color"] == "Attention"
    assert data["title"] == "Deploy failed on 1 of 1 host"
    assert data["hosts_failed"] == 1 and data["release"] == "-" and data["mode"] == "plain"
    row = data["hosts"][0]
    assert row["result"] == "failed" and row["files"] == 3
    assert row["error"].startswith("commands: command 1 `exit 7` exited with status 7 [setting: commands]; ")


# ---------------------------------------------------------------------------------------------- GitHub Actions


def test_github_step_summary_and_outputs_are_appended(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    site(workspace)
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    summary.write_text("# earlier step\n")
    output.write_text("earlier=1\n")
    env = {name.replace("PLUGIN_", "INPUT_"): value for name, value in
           plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", atomic=True).items()}
    env |= {"GITHUB_ACTIONS": "true", "GITHUB_SHA": "fedcba9876543210fedcba9876543210fedcba98",
            "GITHUB_REPOSITORY": "octo/site", "GITHUB_RUN_NUMBER": "7",
            "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    release = os.readlink(remote_dir / "current").split("/")[-1]
    assert output.read_text() == f"earlier=1\nrelease={release}\nresult=ok\nhosts_failed=0\n"
    text = summary.read_text()
    assert text.startswith("# earlier step\n### ✅ sshipit: Deployed to 1 host\n")
    label = server.host  # PLUGIN_PORT gives the port: the entry, and so the label, is the bare address
    assert "| result | host | release | time | sent | error |" in text
    sent = r"\d+(\.\d)? (B|KB)"  # a few KB of tar: uncompressed to a server on this machine
    assert re.search(rf"^\| ok \| {re.escape(label)} \| {release} \| \d+\.\ds \| {sent} \|  \|$", text, re.M), text
    assert f"release `{release}` · commit `fedcba9` · 3 files (" in text

    # A failure: result=failed and the number of failed hosts, the reason in the row.
    again = run_sshipit(env={**env, "INPUT_COMMANDS": "echo a | tr a b; exit 4", "INPUT_ATOMIC": "false"})
    assert again.returncode == 4, again
    assert output.read_text().endswith("release=\nresult=failed\nhosts_failed=1\n")
    last = summary.read_text().split("### ")[-1]
    assert last.startswith("❌ sshipit: Deploy failed on 1 of 1 host")
    assert "command 1 `echo a \\| tr a b; exit 4` exited with status 4" in last  # `|` kept out of the columns


def test_unwritable_ci_files_cost_one_warning_not_the_deploy(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    """The image runs as uid 1000: a card path or a GitHub file it may not write must not fail the deploy."""
    site(workspace)
    blocked = tmp_path / "not-a-file"
    blocked.mkdir()  # writing to a directory fails, even as root
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist")
    env |= {"DRONE_CARD_PATH": str(blocked), "GITHUB_STEP_SUMMARY": str(blocked / "missing/summary.md"),
            "GITHUB_OUTPUT": str(blocked)}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result
    for name in ("DRONE_CARD_PATH", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "the deploy itself is not affected"):
        assert name in warnings[0]
    assert "Traceback" not in result.output and (remote_dir / "dist/page0.html").exists()
    assert list(blocked.iterdir()) == []


def test_bad_settings_still_reach_the_ci_and_secrets_never_do(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    site(workspace)
    summary, output, card = tmp_path / "summary.md", tmp_path / "output", tmp_path / "card.json"
    ci = {"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output), "DRONE_CARD_PATH": str(card)}
    env = plugin_env(server, keys["ed25519"], sources="dist")  # no target
    result = run_sshipit(env={**env, **ci})
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: settings: sources are set but target is not [setting: target]; ")
    assert output.read_text() == "release=\nresult=failed\nhosts_failed=0\n"
    data = json.loads(card.read_text())["data"]
    assert data["result"] == "failed" and data["error"].startswith("settings: sources are set but target is not")
    assert "sources are set but target is not" in summary.read_text()

    # A secret in a failing command's text is masked in the card and the summary, as on the console.
    secret = "hunter2-not-for-logs"
    for path in (summary, output, card):
        path.unlink()
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", password=secret,
                     script=f"echo {secret}; exit 3")
    result = run_sshipit(env={**env, **ci})
    assert result.returncode == 3, result
    assert secret not in result.output and "********" in result.stdout
    for path in (summary, output, card):
        assert secret not in path.read_text()
    assert "`echo ********; exit 3`" in json.loads(card.read_text())["data"]["hosts"][0]["error"]


# --------------------------------------------------------------------------------------------------- errors


def documented_shapes() -> list[re.Pattern[str]]:
    """The message shapes docs/errors.md shows (```text blocks, `<placeholder>` for what varies)."""
    text = (REPO / "docs/errors.md").read_text()
    shapes = []
    for block in re.findall(r"```text\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("error: "):
                parts = re.split(r"(<[^<>]+>)", line)
                pattern = "".join(".+?" if part.startswith("<") and part.endswith(">") else re.escape(part)
                                  for part in parts)
                shapes.append(re.compile(pattern + "$"))
    assert len(shapes) >= 12, "docs/errors.md shows fewer error shapes than expected"
    return shapes


def check_error(result: Result, status: int, phase: str, setting: str, documented: list[re.Pattern[str]]) -> str:
    """Exactly one error line: host, phase, setting and hint, in a shape docs/errors.md documents."""
    assert "Traceback" not in result.output, result
    assert result.returncode == status, result
    errors = [re.sub(r"^\[[^\]]+\] ", "", line) for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, result
    line = errors[0]
    match = (SETTINGS_SHAPE if phase == "settings" else ERROR_SHAPE).match(line)
    assert match, f"not `error: <host>: <phase>: what [setting: X]; hint`:\n{line}"
    assert (match.group("phase"), match.group("setting")) == (phase, setting), line
    assert any(shape.match(line) for shape in documented), f"docs/errors.md shows no shape for:\n{line}"
    return line


@pytest.fixture(scope="module")
def documented() -> list[re.Pattern[str]]:
    return documented_shapes()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a firewall that black-holes, a hung sshd)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def tiny_disk(remote_dir: Path) -> Iterator[Path]:
    """A 1 MB tmpfs owned by the login user; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full case mounts a tmpfs and needs root (run the tests as root)")
    point = remote_dir / "disk"
    point.mkdir()
    user = default_login_user()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={user.pw_uid},gid={user.pw_gid}", "tmpfs",
                           str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full case: {done.stderr.strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def test_connect_errors_name_host_phase_setting_and_hint(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, tmp_path: Path,
    silent_port: int, documented: list[re.Pattern[str]],
) -> None:
    site(workspace)
    stranger = generate_key(tmp_path, "ed25519", name="stranger")
    base = plugin_env(server, keys["ed25519"], script="true", retries=0)

    line = check_error(run_sshipit(env={**base, "PLUGIN_KEY": stranger.private_text}), 1, "connect",
                       "username / key / password", documented)
    assert "authentication failed" in line and "(tried: publickey" in line
    line = check_error(run_sshipit(env={**base, "PLUGIN_FINGERPRINT": "SHA256:" + "A" * 43}), 1, "connect",
                       "fingerprint / known_hosts", documented)
    assert "host key does not match: the server offered" in line
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    check_error(run_sshipit(env={**base, "PLUGIN_HOST": f"127.0.0.1:{free}"}), 1, "connect", "host / port", documented)
    check_error(run_sshipit(env={**base, "PLUGIN_HOST": "nonexistent.invalid"}), 1, "connect", "host", documented)
    check_error(run_sshipit(env={**base, "PLUGIN_HOST": f"127.0.0.1:{silent_port}", "PLUGIN_TIMEOUT": "1s"}), 1,
                "connect", "timeout", documented)


def test_upload_errors_name_host_phase_setting_and_hint(
    server: LocalServer, sftp_only_server: LocalServer, no_tar_server: LocalServer, keys: dict[str, KeyPair],
    workspace: Path, remote_dir: Path, tiny_disk: Path, run_sshipit: RunSshipit, documented: list[re.Pattern[str]],
) -> None:
    site(workspace)
    key = keys["ed25519"]
    locked = remote_dir / "locked"
    locked.mkdir()
    locked.chmod(0o755)  # root's: the login user may not write there
    check_error(run_sshipit(env=plugin_env(server, key, target=str(locked / "app"), sources="dist")), 1, "upload",
                "target / username", documented)
    write_random(workspace / "dist/big.bin", 3)
    check_error(run_sshipit(env=plugin_env(server, key, target=str(tiny_disk / "app"), sources="dist")), 1,
                "upload", "target", documented)
    (workspace / "dist/big.bin").unlink()
    check_error(run_sshipit(env=plugin_env(sftp_only_server, key, target=str(remote_dir), sources="dist",
                                           script="true")), 1, "upload", "commands", documented)
    check_error(run_sshipit(env=plugin_env(no_tar_server, key, target=str(remote_dir), sources="dist",
                                           atomic=True)), 1, "upload", "atomic", documented)


def test_command_release_and_settings_errors_name_host_phase_setting_and_hint(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
    home: Path, documented: list[re.Pattern[str]],
) -> None:
    site(workspace)
    key = keys["ed25519"]
    env = plugin_env(server, key, target=str(remote_dir), sources="dist")
    check_error(run_sshipit(env={**env, "PLUGIN_SCRIPT": "false"}), 1, "commands", "commands", documented)
    check_error(run_sshipit(env={**env, "PLUGIN_SCRIPT": "sleep 30", "PLUGIN_COMMAND_TIMEOUT": "1s"}), 124,
                "commands", "command_timeout", documented)
    atomic = {**env, "PLUGIN_ATOMIC": "true"}
    check_error(run_sshipit(env={**atomic, "PLUGIN_HEALTHCHECK": "exit 1", "PLUGIN_HEALTHCHECK_TIMEOUT": "1s"}), 1,
                "healthcheck", "healthcheck", documented)
    check_error(run_sshipit(env={**atomic, "PLUGIN_ROLLBACK": "true", "PLUGIN_TARGET": str(remote_dir / "none")}), 1,
                "release", "rollback", documented)
    check_error(run_sshipit(env={**env, "PLUGIN_TARGET": ""}), 2, "settings", "target", documented)

    # Another deploy of the same target holds the lock for as long as its command runs.
    holder = subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=clean_env(home, {
        **atomic, "PLUGIN_SCRIPT": "touch started; sleep 8", "DRONE_BUILD_NUMBER": "41"}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not list(remote_dir.glob("releases/*/started")):
            assert time.monotonic() < deadline and holder.poll() is None, "the first deploy never started"
            time.sleep(0.1)
        line = check_error(run_sshipit(env={**atomic, "PLUGIN_LOCK_TIMEOUT": "1s"}), 1, "release", "lock_timeout",
                           documented)
        assert "build 41" in line
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_error_line_puts_host_and_phase_first() -> None:
    """The formatting itself, for the message shapes the modules raise (no server needed for a pure function)."""
    from sshipit.errors import DeployError, SettingsError
    from sshipit.report import FALLBACK_HINT, error_line

    plain = DeployError("web1: the disk holding /srv is full (x)", setting="target", hint="free space", phase="upload")
    assert error_line(plain, "web1") == "web1: upload: the disk holding /srv is full (x) [setting: target]; free space"
    where = DeployError("web1 (10.0.0.5 port 22, via jump host b): connection refused", setting="host / port",
                        hint="is sshd running?", phase="connect")
    assert error_line(where, "web1") == ("web1: connect: 10.0.0.5 port 22, via jump host b: connection refused "
                                         "[setting: host / port]; is sshd running?")
    bare = DeployError("web1: gone", phase=None)
    assert error_line(bare, "web1", "commands") == \
        "web1: commands: gone [setting: commands]; the command's output above shows why"
    assert error_line(DeployError("web1: odd"), "web1", "plan") == f"web1: plan: odd; {FALLBACK_HINT}"
    assert error_line(SettingsError("bad", setting="port", hint="a number")) == \
        "settings: bad [setting: port]; a number"


def test_the_documented_shapes_cover_the_common_errors(documented: list[re.Pattern[str]]) -> None:
    """docs/errors.md has a section with a shape and a fix for each common error."""
    text = (REPO / "docs/errors.md").read_text()
    for needle in ("authentication failed", "host key does not match", "permission denied", "is full",
                   "has no tar", "accepts SFTP only", "connection refused", "no SSH answer", "does not resolve",
                   "lock", "health check failed", "settings: "):
        assert needle in text, f"docs/errors.md does not cover {needle!r}"
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert all("**Fix" in section for section in sections), "every docs/errors.md section says how to fix it"



# ------------------------------------------------------------------------------------------- the demo's words


def test_the_demo_counts_what_was_written_and_tells_bytes_one_way(tmp_path: Path) -> None:
    """`python -m sshipit.demo` (a throwaway sshd): its two-line script is told as two lines, not "1 command";
    the files' bytes and the bytes sent are told together on the upload line, and the summary's `sent` is that
    same number."""
    if os.geteuid() != 0:
        pytest.fail("the demo starts sshd with a login user of its own: run the tests as root")
    env = clean_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "sshipit.demo"], env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^commands: ran a script of 2 lines " + DURATION + "$", done.stdout, re.M), output
    assert "ran 1 command" not in output
    upload = re.search(r"^upload: uploaded 2 files \((\d+ B)\) to \S+ over tar\S*, ([\d.]+ [KM]?B) sent "
                       + DURATION + "$", done.stdout, re.M)
    assert upload, output
    row = re.search(r"^  ok +\S+ +- +\d+\.\d\ds +([\d.]+ [KM]?B)$", done.stdout, re.M)
    assert row and row.group(1) == upload.group(2), output


def test_a_failing_line_is_told_in_the_users_command_and_line(
    server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, run_sshipit: RunSshipit,
    documented: list[re.Pattern[str]],
) -> None:
    """bash's `line 11` of the generated script is told as the user's own command and line: in bash's message
    and in the error, for a block script, a list of commands, script_stop: false, and a syntax error."""
    script = "echo one\necho two\nno-such-command-xyz --flag\necho never\n"
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), script=script))
    line = check_error(result, 127, "commands", "commands", documented)
    assert "command 1, line 3 `no-such-command-xyz --flag` exited with status 127" in line, result
    assert "bash: command 1, line 3: no-such-command-xyz: command not found" in result.stdout.splitlines(), result
    assert "never" not in result.stdout.replace("echo never", "")
    assert not re.search(r"bash: line \d+:", result.output), result

    commands = ["echo first", "false\nif true; then\n  (exit 4)\nfi", "echo last"]  # line 1 fails, tolerated
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), script_stop=False,
                                        script=json.dumps(commands)))
    assert result.returncode == 4, result
    assert "command 2, line 3 `(exit 4)` exited with status 4" in result.stderr, result
    assert "last" in result.stdout.splitlines()

    syntax = ["echo first", "echo second\nif then\necho third"]
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], target=str(remote_dir), script=json.dumps(syntax)))
    assert result.returncode == 2, result
    assert "command 2, line 2 `if then` exited with status 2" in result.stderr, result
    assert re.search(r"^bash: eval: command 2, line 2: syntax error", result.stdout, re.M), result
