"""Shared rules every stage obeys: shell quoting, secret masking and remote path checks.

They live here, once, so that no module quotes or checks paths its own way.
"""

from __future__ import annotations

import posixpath
import re
import shlex

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
    """

    def __init__(self, secrets: list[str] | tuple[str, ...] = ()) -> None:
        self._needles: list[str] = []
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

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._needles)


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


def shell_path(path: str) -> str:
    """A quoted remote path that cannot be taken for an option (a leading '-')."""
    if path.startswith("-"):
        path = "./" + path
    return quote(path)
