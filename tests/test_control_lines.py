"""Output that lies or leaks: a server's output and a file's name never become a CI's control line, a secret is
masked even where a long line is cut, and output is handled in time linear and memory bounded for any bytes.

A CI reads a step's log line by line (GitHub's and Azure's runners end a line at CR, LF or CRLF) and acts on:
GitHub workflow commands (a line whose first visible text is `::`), `##[` and `##vso[` anywhere in a line
(Azure Pipelines, GitHub's older form), and escape sequences (OSC, among them Drone's card `ESC]1338;...ESC]0m`;
CSI; their one-character C1 forms). Each test runs the real `sshipit` against a real OpenSSH server and reads
its raw bytes (no universal-newline decoding that would hide a CR).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from helpers import PeakMemory, clean_env, plugin_env
from sshipit.commands import LINE_LIMIT
from sshipit.localserver import KeyPair, LocalServer
from sshipit.rules import MASK, Masker, neutralise

CARD = re.compile(r"\x1b\]1338;([A-Za-z0-9+/=]*)\x1b\]0m")
SCHEMA = "https://raw.githubusercontent.com/sshipit/sshipit/main/docs/card.json"


# ---------------------------------------------------------------------------------------------------- the CI's eye


def ci_lines(text: str) -> list[str]:
    """The lines a CI runner reads: CR, LF and CRLF each end one."""
    return re.split(r"\r\n|\r|\n", text)


def _skipped(char: str) -> bool:
    """Anything a runner might trim before a line's first word: .NET's white space, Python's, and invisible
    format characters (zero-width space, BOM)."""
    return char.isspace() or unicodedata.category(char) in ("Zs", "Zl", "Zp", "Cf")


def control_problems(line: str) -> list[str]:
    """Why a CI would act on `line` (empty: it would not)."""
    problems = []
    lead = 0
    while lead < len(line) and _skipped(line[lead]):
        lead += 1
    if line.startswith("::", lead):
        problems.append("a GitHub workflow command (::)")
    if re.search(r"##(vso)?\[", line, re.IGNORECASE):
        problems.append("an Azure/GitHub ##[ or ##vso[ command")
    if re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", line):
        problems.append("a control character (ESC, BEL, C1...)")
    if re.search("[\u202a-\u202e\u2066-\u2069]", line):
        problems.append("a bidi override")
    return problems


def assert_inert(raw: bytes, cards: int = 0) -> str:
    """No line of `raw` is a control line, except exactly `cards` Drone cards of sshipit's own; returns the text."""
    text = raw.decode("utf-8", "surrogateescape")
    own = 0
    for line in ci_lines(text):
        card = CARD.fullmatch(line)
        if card is not None:
            assert json.loads(base64.b64decode(card.group(1)))["schema"] == SCHEMA, line
            own += 1
            continue
        assert not control_problems(line), f"{control_problems(line)} in {line[:300]!r}"
    assert own == cards, f"{own} cards of sshipit's own, expected {cards}\n{text[-3000:]}"
    return text


def run_raw(env: dict[str, str], workspace: Path, home: Path, stdout: int | None = None,
            timeout: float = 180) -> tuple[int, bytes, bytes, float, int]:
    """Run `python -m sshipit` with its output in raw bytes (to files: no pipe to drain, no universal newlines);
    returns (status, stdout, stderr, seconds, this child's own peak RSS in KiB: helpers.PeakMemory)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "sshipit"], cwd=workspace, env=clean_env(home, env),
                                stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else out, stderr=err,
                                start_new_session=True)
        peak = PeakMemory(proc.pid)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            _, wait_status = os.waitpid(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        printed, problems = out.read(), err.read()
    assert not expired.is_set(), f"sshipit did not finish within {timeout}s\n{problems.decode(errors='replace')}"
    return proc.returncode, printed, problems, seconds, peak.result()


def printf_command(payload: bytes) -> str:
    """A shell command that prints `payload` exactly, without the bytes themselves in the command's text."""
    escaped = "".join(chr(b) if 0x20 <= b < 0x7F and chr(b) not in "\\'%" else f"\\{b:03o}" for b in payload)
    return f"printf '{escaped}'"


FORGED_CARD = base64.b64encode(json.dumps({"schema": SCHEMA, "data": {"title": "forged"}}).encode())

FORMS: list[bytes] = [
    b"::set-output name=release::forged",
    b"::add-mask::forged",
    b"::error::forged-error",
    b"::warning file=app.js,line=1::forged-warning",
    b"::stop-commands::tok123",
    b"::error::after-stop-commands",
    b"::tok123::",
    b"   ::notice::indented",
    b"\t::debug::tabbed",
    "\u00a0::error::nbsp".encode(),
    "\u3000::error::ideographic-space".encode(),
    "\u200b::error::zero-width-space".encode(),
    "\ufeff::error::bom".encode(),
    b"##vso[task.setvariable variable=release]forged",
    b"text before ##vso[task.complete result=Failed;]done",
    b"##VSO[task.logissue type=error]upper-case",
    b"##[error]forged",
    b"##[group]forged group",
    b"\x1b]1338;" + FORGED_CARD + b"\x1b]0m",
    b"\x1b]0;window title\x07",
    b"\x1b]8;;https://example.invalid\x1b\\a link\x1b]8;;\x1b\\",
    b"\x1b[2J\x1b[H\x1b[31mred\x1b[0m",
    b"\x1b[0Ksection_start:1700000000:forged\r\x1b[0K",
    b"innocent\r::error::behind-a-carriage-return",
    b"innocent\r\n::error::after-crlf",
    "\u009b31mC1 CSI".encode(),
    "\u009d0;C1 OSC\u009c".encode(),
    "\u202e::error::right-to-left-override".encode(),
    b"\x1b]1338;unterminated",
]


# ---------------------------------------------------------------------------------------------------- 11: forged lines


def test_remote_output_never_forges_a_control_line(server: LocalServer, keys: dict[str, KeyPair],
                                                   remote_dir: Path, workspace: Path, tmp_path: Path) -> None:
    """Every form, printed by a command on the server, arrives readable and inert; only sshipit's own card is
    a control sequence. Forms printed without a newline before the next command's marker, and a form after the
    64 KiB cut of a long line, too."""
    home = tmp_path / "home"
    home.mkdir()
    (workspace / "dist").mkdir()
    (workspace / "dist/index.html").write_text("ok\n")
    payload = b"\n".join(FORMS) + b"\n"
    commands = [printf_command(payload),
                printf_command(b"::error::no-newline-before-the-next-marker"),
                f"head -c {LINE_LIMIT + 3} /dev/zero | tr '\\0' a; "
                "for i in $(seq 4000); do printf '::error::after-the-cut'; done; echo",
                "printf '\\033]1338;%s\\033]0m\\n' \"$(printf '{\"schema\":\"x\"}' | base64 -w0)\""]
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", script=json.dumps(commands))
    env["DRONE_CARD_PATH"] = "/dev/stdout"
    status, out, err, _, _ = run_raw(env, workspace, home)
    text = assert_inert(out, cards=1)
    assert status == 0, err.decode(errors="replace") + text[-3000:]
    assert_inert(err)
    lines = text.split("\n")
    # Readable: each form is there, shown with visible escapes where it would have acted.
    for shown in ("\\x3a:set-output name=release::forged", "\\x3a:add-mask::forged", "\\x3a:error::forged-error",
                  "\\x3a:stop-commands::tok123", "   \\x3a:notice::indented", "\t\\x3a:debug::tabbed",
                  "\u00a0\\x3a:error::nbsp", "\u200b\\x3a:error::zero-width-space",
                  "\\x23#vso[task.setvariable variable=release]forged",
                  "text before \\x23#vso[task.complete result=Failed;]done", "\\x23#[error]forged",
                  "\\x1b]1338;" + FORGED_CARD.decode() + "\\x1b]0m", "\\x1b]0;window title\\x07",
                  "\\x1b[2J\\x1b[H\\x1b[31mred\\x1b[0m", "\\x9b31mC1 CSI", "\\u202e::error::right-to-left-override",
                  "\\x3a:error::no-newline-before-the-next-marker"):
        assert shown in lines, f"{shown!r} not shown as a line\n{text[-5000:]}"
    # A CR ends a line as the CIs read it: the text behind it is a line of its own, and inert.
    assert "innocent" in lines and "\\x3a:error::behind-a-carriage-return" in lines
    assert "\\x3a:error::after-crlf" in lines and "innocent\\r" not in text
    # The long line was cut (so the cut was tested) and no part of it starts a command.
    parts = [line for line in lines if "after-the-cut" in line]
    assert len(parts) >= 2 and sum(len(p) for p in parts) >= 4000 * len("::error::after-the-cut")


def test_file_names_are_data_in_the_plan_listing_and_warnings(server: LocalServer, keys: dict[str, KeyPair],
                                                             remote_dir: Path, workspace: Path,
                                                             tmp_path: Path) -> None:
    """Hostile names in the build are shown escaped, each on its one line, in the dry run's listing of what would
    be uploaded and in the warning about a file that is neither a file nor a directory; they still land as named."""
    home = tmp_path / "home"
    home.mkdir()
    dist = workspace / "dist"
    dist.mkdir()
    names = [b"evil\n::error::file-name", b"\x1b]1338;QUFB\x1b]0m.txt", b"cr\r##vso[task.complete result=Failed]",
             b"\xff\xfe not utf-8 ::", "\u202eevil.txt".encode()]
    for name in names:
        Path(os.fsdecode(os.fsencode(dist) + b"/" + name)).write_text("x\n")
    os.mkfifo(os.fsdecode(os.fsencode(dist) + b"/fifo\n::warning::fifo-name"))
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), sources="dist", dry_run=True)
    status, out, err, _, _ = run_raw(env, workspace, home)
    text = assert_inert(out)
    problems = assert_inert(err)
    assert status == 0, problems + text
    listed = text.split("\n")
    for shown in ("dist/evil\\n::error::file-name", "dist/\\x1b]1338;QUFB\\x1b]0m.txt",
                  "dist/cr\\r\\x23#vso[task.complete result=Failed]", "dist/\\xff\\xfe not utf-8 ::",
                  "dist/\\u202eevil.txt"):
        assert any(line.strip() == shown for line in listed), f"{shown!r} not listed on one line\n{text}"
    assert "fifo\\n::warning::fifo-name" in problems and problems.count("\n") == 1, problems
    # The real deploy: the names land byte for byte (they are data, not only in what is printed).
    env.pop("PLUGIN_DRY_RUN")
    status, out, err, _, _ = run_raw(env, workspace, home)
    assert_inert(out)
    assert_inert(err)
    assert status == 0, err
    landed = set(os.listdir(os.fsencode(remote_dir / "dist")))
    assert set(names) <= landed, landed


@given(st.text())
def test_neutralised_text_is_one_inert_line(text: str) -> None:
    """For any text: one line as any CI reads it, and nothing in it a CI or a terminal acts on."""
    shown = neutralise(text)
    assert len(ci_lines(shown)) == 1
    assert not control_problems(shown), (text, shown)


@given(st.text(alphabet=st.sampled_from(list(":#[vsoVSO \t\u00a0\u200b\x1b\r\nab]")), max_size=40))
def test_neutralised_command_like_text_is_inert(text: str) -> None:
    """Text made of the characters that commands are made of: never a command once neutralised."""
    assert not control_problems(neutralise(text)), (text, neutralise(text))


def test_neutralise_keeps_plain_text_as_it_is() -> None:
    for text in ("deployed 2 files to /srv/app", "a::b", "# heading", "ok [#12]", "100%", "tab\tseparated",
                 "naïve café ✓", "C:: drive"):
        assert neutralise(text) == text


# ---------------------------------------------------------------------------------------------------- 12: cut secrets


def test_a_secret_straddling_the_cut_of_a_long_line_is_masked(server: LocalServer, keys: dict[str, KeyPair],
                                                              remote_dir: Path, workspace: Path,
                                                              tmp_path: Path) -> None:
    """One 700 KB line, no newline, made of the password and `-aaaa` over and over: a copy of it straddles 65536
    and nearly every other point, so wherever the line is cut into printed parts, a cut through a secret would
    show. Every copy shows as ********, and the printed parts rejoin into exactly the masked line."""
    home = tmp_path / "home"
    home.mkdir()
    password = "pw-" + secrets.token_hex(16)  # 35 characters, then 5 of `-aaaa`: position 65536 is in a copy
    copies = 1 << 14
    assert 65536 % (len(password) + 5) < len(password)
    encoded = base64.b64encode(password.encode()).decode()
    # Made on the server (too long for a command): doubled 14 times, printed at once.
    command = (f"B=\"$(printf %s {encoded} | base64 -d)-aaaa\"; for i in $(seq 14); do B=\"$B$B\"; done; "
               "printf %s \"$B\"; echo")
    env = plugin_env(server, keys["ed25519"], target=str(remote_dir), script=command, password=password)
    status, out, err, _, _ = run_raw(env, workspace, home)
    text = out.decode()
    assert status == 0, err
    # Every printed part of the line, however short (the last one can be a few characters: what a cut held back)
    printed = [row for row in text.split("\n") if row and set(row) <= set(MASK + "-a")]
    assert len(printed) >= 2, "the long line was not cut: the test did not test the cut"
    assert password not in text
    assert "".join(printed) == (MASK + "-aaaa") * copies


def test_safe_cut_never_splits_a_secret() -> None:
    masker = Masker(["s3cr3t-value", "other-secret-longer"])
    for text in ("x" * 100 + "s3cr3t-value", "x" * 95 + "s3cr3t-value" + "y" * 7, "other-secret-longer" * 9):
        cut = masker.safe_cut(text)
        assert masker(text[:cut]) + masker(text[cut:]) == masker(text), (text, cut)
        assert 0 <= len(text) - cut <= len("other-secret-longer") - 1  # what is held stays bounded


@given(st.text(alphabet="ab", max_size=60), st.text(alphabet="ab", min_size=3, max_size=8))
def test_masked_parts_of_a_cut_line_never_rejoin_into_the_secret(text: str, secret: str) -> None:
    masker = Masker([secret])
    cut = masker.safe_cut(text)
    assert 0 <= len(text) - cut <= len(secret) - 1  # all but a possible secret's start is printed
    assert secret not in masker(text[:cut]) + masker(text[cut:])


# ---------------------------------------------------------------------------------------------------- 13: any bytes


def test_fifty_megabytes_without_a_newline_stream_in_linear_time_and_bounded_memory(
    server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path, tmp_path: Path,
) -> None:
    """`printf '\\037'` (the first byte of sshipit's markers) and then 50 MB without a newline: printed in full,
    in parts, within a generous bound of time, and sshipit's peak memory grows by far less than the output."""
    home = tmp_path / "home"
    home.mkdir()
    size = 50_000_000
    small = plugin_env(server, keys["ed25519"], target=str(remote_dir), script="printf '\\037'; echo small")
    status, _, err, _, baseline = run_raw(small, workspace, home, stdout=subprocess.DEVNULL)
    assert status == 0, err
    big = plugin_env(server, keys["ed25519"], target=str(remote_dir),
                     script=f"printf '\\037'; head -c {size} /dev/zero | tr '\\0' x; echo; echo after-the-flood")
    sink = tmp_path / "stdout"
    with open(sink, "wb") as handle:
        status, _, err, seconds, peak = run_raw(big, workspace, home, stdout=handle.fileno(), timeout=300)
    assert status == 0, err
    assert seconds < 60, f"{size / 1e6:.0f} MB of output took {seconds:.1f}s"
    assert peak - baseline < 40_000, f"peak RSS {peak} KiB against {baseline} KiB for a small output"
    count, lines = 0, 0
    with open(sink, "rb") as handle:
        for row in handle:
            if not row.startswith(b"$ "):  # the command's own echo
                count += row.count(b"x") - row.count(b"\\x1f")
                lines += 1
            assert len(row) <= LINE_LIMIT * 2 + 100
    assert lines > size // (LINE_LIMIT * 2)  # printed in parts as it came, not held whole
    text_tail = sink.read_bytes()[-2000:]
    assert b"after-the-flood\n" in text_tail
    assert count == size
    assert sink.read_bytes()[:200_000].count(b"\\x1f") == 1  # the lone \037 shown, not taken for a marker


# ---------------------------------------------------------------------------------------------------- the reader

NONCE = "0123456789ab"
PIECES = [b"plain text", b"\n", b"\r\n", b"\r", b"\x1f", b"\x1f0123", b"caf\xc3\xa9 \xe2\x9c\x93", b"::error::x",
          b"\x1b]0;t\x07", f"\x1f{NONCE}:cmd:1\x1f\n".encode(), f"\x1f{NONCE}:rc:1:3\x1f\n".encode(),
          f"\x1f{NONCE}:err:12:3\x1f\r\n".encode(), f"\x1f{NONCE}:cmd:2\x1f\n".encode(), b"\x1f" + NONCE.encode()]


def read_all(stream: bytes, cuts: list[int], masker: Masker | None = None) -> tuple[list[str], list[int], object]:
    from sshipit.commands import _Reader

    lines: list[str] = []
    shown: list[int] = []
    reader = _Reader(NONCE, lines.append, shown.append, masker, ["a", "b\nc"], [10, 12])
    at = 0
    for size in cuts:
        reader.feed(stream[at:at + size])
        at += size
    reader.feed(stream[at:])
    reader.finish()
    return lines, shown, (reader.failed, reader.errors)


@given(st.lists(st.sampled_from(PIECES), max_size=30), st.lists(st.integers(1, 40), max_size=30))
def test_the_reader_sees_the_same_lines_and_markers_however_the_stream_is_cut(pieces: list[bytes],
                                                                              cuts: list[int]) -> None:
    """Chunk boundaries (a marker, a CRLF or a UTF-8 character cut in two) change nothing the reader reports."""
    stream = b"".join(pieces)
    assert read_all(stream, cuts) == read_all(stream, [])


@given(st.lists(st.sampled_from(["a", "b", "s3cr3t", "\n"]), max_size=60), st.lists(st.integers(1, 9), max_size=40))
def test_a_secret_is_masked_across_every_chunk_and_cut(words: list[str], cuts: list[int]) -> None:
    """With lines cut every 8 characters (LINE_LIMIT made small), however the stream is chunked, the printed
    parts of each line, masked one by one as the console does, never hold the secret or rejoin into it."""
    import sshipit.commands

    masker = Masker(["s3cr3t"])
    text = "".join(words)
    saved = sshipit.commands.LINE_LIMIT
    sshipit.commands.LINE_LIMIT = 8
    try:
        lines, _, _ = read_all(text.encode(), cuts, masker)
    finally:
        sshipit.commands.LINE_LIMIT = saved
    printed = [masker(line) for line in lines]
    assert not any("s3cr3t" in line for line in printed)
    assert "s3cr3t" not in "".join(printed)
    assert "".join(printed) == "".join(masker(line) for line in text.split("\n"))
