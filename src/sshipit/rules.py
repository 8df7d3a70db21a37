"""Shared rules every stage obeys: shell quoting, secret masking, neutralising text for a CI log, and remote path
checks.

They live here, once, so that no module quotes, masks, escapes or checks paths its own way.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import unicodedata

from sshipit.errors import SettingsError

MASK = "********"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def quote(value: str) -> str:
    """Quote one value for a POSIX shell; every value sshipit puts in a remote command goes through here."""
    return shlex.quote(value)


def is_shell_name(name: str) -> bool:
    """True for a name a POSIX shell accepts as a variable name."""
    return bool(_NAME.match(name))


class Masker:
    """Replaces every known secret in text with ********.

    A multi-line secret (a private key) is also masked line by line, because remote output is read a line at a time.
    Where two secrets overlap in the text, the union of both is masked (no tail of either is left).
    """

    def __init__(self, secrets: list[str] | tuple[str, ...] = ()) -> None:
        self._needles: list[str] = []
        self.longest = 0  # the longest secret that fits on one line: what a cut must not split
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        pieces = {secret.strip()}
        if "\n" in secret.strip():
            # Short lines (a PEM header, a 3-character tail) would mask innocent text; key bodies are long.
            pieces |= {line.strip() for line in secret.splitlines() if len(line.strip()) >= 16}
        for piece in pieces:
            if len(piece) >= 3 and piece not in self._needles:
                self._needles.append(piece)
        self._needles.sort(key=len, reverse=True)
        self.longest = max((len(n) for n in self._needles if "\n" not in n and "\r" not in n), default=0)

    def __call__(self, text: str) -> str:
        spans = self._spans(text)
        if not spans:
            return text
        out, at = [], 0
        for start, end in spans:
            out += [text[at:start], MASK]
            at = end
        out.append(text[at:])
        return "".join(out)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Every occurrence of every secret, merged where they overlap, in order."""
        found: list[tuple[int, int]] = []
        for needle in self._needles:
            at = text.find(needle)
            while at >= 0:
                found.append((at, at + len(needle)))
                at = text.find(needle, at + 1)
        if not found:
            return []
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            if start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def safe_cut(self, text: str) -> int:
        """Where a line too long to hold may be cut so that no secret is split in two halves that would each be
        printed unmasked: all but the last `longest - 1` characters (a secret starting there may go on in text
        not yet read), moved past any secret that straddles that point (it is whole in `text`)."""
        cut = len(text) - max(self.longest - 1, 0)
        if cut <= 0:
            return 0
        moved = True
        while moved:
            moved = False
            for needle in self._needles:
                if "\n" in needle:
                    continue
                at = text.find(needle, max(0, cut - len(needle) + 1), cut + len(needle) - 1)
                while 0 <= at < cut:
                    if at + len(needle) > cut:
                        cut, moved = at + len(needle), True
                        break
                    at = text.find(needle, at + 1, cut + len(needle) - 1)
        return cut

    def __bool__(self) -> bool:
        return bool(self._needles)


# What a CI or a terminal acts on in a log line (see `neutralise`): C0 controls but tab (ESC starts CSI and OSC
# sequences, CR and LF a new line), DEL, C1 controls (U+009B and U+009D are one-character CSI and OSC), the bidi
# overrides (a line then displays other than it reads), and bytes that were not UTF-8 (surrogateescape).
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_ACTS = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}\udc80-\udcff]")
# ... each shown as a visible escape, through one table (str.translate: linear, in C, for any text).
_ESCAPES: dict[int, str] = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0))}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r"}
_ESCAPES |= {code: f"\\x{code - 0xDC00:02x}" for code in range(0xDC80, 0xDD00)}  # the byte itself
_ESCAPES |= {ord(c): f"\\u{ord(c):04x}" for c in _BIDI}
_AZURE = re.compile(r"#(?=#(?:vso)?\[)", re.IGNORECASE)


def _blank(char: str) -> bool:
    """What any CI may skip before a line's first word (.NET's TrimStart, Python's strip, and the invisible
    format characters besides)."""
    return char.isspace() or unicodedata.category(char) in ("Zs", "Zl", "Zp", "Cf")


def is_blank(text: str) -> bool:
    """Only what a CI skips before a line's first word (see `neutralise`)."""
    return all(_blank(char) for char in text)


def neutralise(text: str, line_start: bool = True) -> str:
    """Text as one inert log line: nothing a CI runner or a terminal would act on, still readable.

    - Control characters (ESC of CSI and OSC sequences, Drone's card `ESC]1338;`, CR and LF that would start a new
      line), C1 controls, bidi overrides and non-UTF-8 bytes are shown as visible escapes (`\\x1b`, `\\n`).
    - `##[` and `##vso[` (Azure Pipelines' and GitHub's older commands, honoured anywhere in a line) become
      `\\x23#[`, `\\x23#vso[`.
    - A line whose first visible text is `::` (a GitHub Actions workflow command: `::error::`, `::add-mask::`,
      `::stop-commands::`...) starts `\\x3a:` instead.
    `line_start` is False for a piece that continues a line already begun with other text.
    """
    if _ACTS.search(text):
        text = text.translate(_ESCAPES)
    if "#" in text:
        text = _AZURE.sub(r"\\x23", text)
    if line_start and "::" in text:
        lead = 0
        while lead < len(text) and _blank(text[lead]):
            lead += 1
        if text.startswith("::", lead):
            text = text[:lead] + "\\x3a" + text[lead + 1:]
    return text


def clean_relative(path: str, setting: str) -> str:
    """Normalise a path that must stay inside the target (delete entries, shared paths).

    Absolute paths, `..` that climbs out, empty paths and the target itself are refused.
    """
    if not path or "\x00" in path or "\n" in path:
        raise SettingsError(f"{path!r} is not a usable path", setting=setting, hint="give a path relative to target")
    if path.startswith("/"):
        raise SettingsError(
            f"{path!r} is absolute", setting=setting, hint="paths here are relative to target and cannot leave it"
        )
    normal = posixpath.normpath(path)
    if normal == "." or normal == ".." or normal.startswith("../"):
        raise SettingsError(
            f"{path!r} leaves or names the target itself",
            setting=setting,
            hint="give a path inside target, without '..'",
        )
    return normal


_RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def release_name(name: str, setting: str) -> str:
    """A release id as given (release_id, rollback): one directory name under releases/, never a path, never
    hidden, never `.`/`..`, and nothing a shell or a CI log reads specially."""
    word = name.strip()
    if not _RELEASE_NAME.match(word) or ".." in word:
        shown = repr(word[:60]) + ("..." if len(word) > 60 else "")
        raise SettingsError(f"{setting}: {shown} is not a usable release id", setting=setting,
                            hint="use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return word


# Targets that `rm` must never empty: the root, home, and the system's top-level directories.
_PRECIOUS = {
    "/", "~", ".", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run",
    "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/www", "/usr/local",
}


def remote_target(target: str) -> str:
    """Validate a remote target directory and return it normalised.

    `~` and `~/x` mean the login user's home; a relative path is relative to home as well (SSH starts there),
    so `~/x` becomes `x`, which needs no tilde expansion and can be quoted like any other path.
    """
    if not target or "\x00" in target or "\n" in target or "\r" in target:
        raise SettingsError("target is empty or holds a control character", setting="target")
    if target == "~":
        return "."
    if target.startswith("~/"):
        target = target[2:] or "."
    elif target.startswith("~"):
        raise SettingsError(
            f"target {target!r}: '~user' is not supported", setting="target", hint="give an absolute path"
        )
    normal = posixpath.normpath(target)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal == "/":
        raise SettingsError("target is the root directory '/'", setting="target", hint="deploy into a directory")
    if normal == ".." or normal.startswith("../"):
        raise SettingsError(
            f"target {target!r} climbs out of the home directory", setting="target", hint="give an absolute path"
        )
    return normal


def is_precious(target: str) -> bool:
    """True for a target that `rm` must refuse to empty."""
    return target in _PRECIOUS or target == "."


REFUSED = "sshipit-refused"  # how a line from clearing_guard() starts


def clearing_guard(delete: list[str] | tuple[str, ...] = ()) -> str:
    """A shell step, run in the target right after `cd` and before anything there is removed, that stops the
    command (exit 3, one `sshipit-refused` line on stderr, read by guard_refusal) when:

    - the target, resolved on the server (`pwd -P`: however it was spelled, `/home/u/.`, `/home/u/../u`, a
      symlink to the home), is `/`, a system directory, the login's home or a directory above the home
      (under sudo, HOME is the sudo user's: privilege.Become passes the login's as SSHIPIT_LOGIN_HOME);
    - a `delete` path leads through a symlink (`rm -rf link/x` would remove what the link points to).
    """
    system = "|".join(sorted(p for p in _PRECIOUS if p.startswith("/")))
    step = (
        't=$(pwd -P) && h=$(cd -P -- "${SSHIPIT_LOGIN_HOME:-${HOME:-/nonexistent}}" 2>/dev/null && pwd -P '
        '|| echo /nonexistent) && '
        f'case "$t" in {system}) printf \'{REFUSED} system %s\\n\' "$t" >&2; exit 3;; esac && '
        f'case "$h/" in "$t"/*) printf \'{REFUSED} home %s %s\\n\' "$t" "$h" >&2; exit 3;; esac'
    )
    ways = sorted({posixpath.dirname(path) for path in delete} - {""})
    parents = sorted({posixpath.join(*way.split("/")[:depth]) for way in ways
                      for depth in range(1, way.count("/") + 2)})
    if parents:
        step += (f" && for p in {' '.join(shell_path(p) for p in parents)}; do "
                 f'if [ -L "$p" ]; then printf \'{REFUSED} link %s\\n\' "$p" >&2; exit 3; fi; done')
    return step


def guard_refusal(stderr: str) -> str | None:
    """What a clearing_guard() refusal in `stderr` says, as the end of a sentence about the target; None if none."""
    for line in stderr.splitlines():
        if not line.startswith(REFUSED + " "):
            continue
        kind, _, rest = line[len(REFUSED) + 1:].partition(" ")
        if kind == "system":
            return f"is {rest} on the server, a system directory"
        if kind == "home":
            real, _, home = rest.rpartition(" ")
            where = "the login's home" if real == home else f"above the login's home {home}"
            return f"is {real} on the server, {where}"
        if kind == "link":
            return f"holds {rest}, a symlink, on the way to a delete path (it would delete outside the target)"
    return None


def precious_reason(real: str, home: str) -> str | None:
    """The SFTP twin of clearing_guard()'s target check, on paths the server resolved (realpath)."""
    if real in _PRECIOUS:
        return f"is {real} on the server, a system directory"
    if real == home or home.startswith(real.rstrip("/") + "/"):
        return f"is {real} on the server, " + ("the login's home" if real == home else f"above the login's home {home}")
    return None


def shell_path(path: str) -> str:
    """A quoted remote path that cannot be taken for an option (a leading '-')."""
    if path.startswith("-"):
        path = "./" + path
    return quote(path)
