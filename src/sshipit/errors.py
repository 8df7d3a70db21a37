"""The one error type sshipit raises on purpose, and the exit statuses it maps to.

Every failure a user can cause or meet (bad settings, an unreachable host, a refused key, a full disk) is a
`DeployError`: one line saying what is wrong, which setting to look at, and how to fix it. Anything else that
escapes is a bug, and the CLI shows its traceback only with `debug`. Also owns telling an error of a file on
this machine (named, with the system's reason) from one of the network.
"""

from __future__ import annotations

import errno
import os

EXIT_FAILED = 1  # a host could not be deployed (connect, auth, upload)
EXIT_SETTINGS = 2  # the settings are wrong; nothing was attempted
EXIT_TIMEOUT = 124  # command_timeout ran out (the same status as timeout(1))


class DeployError(Exception):
    """A failure with a message fit for a CI log: what happened, the setting to check, a hint."""

    def __init__(
        self,
        message: str,
        *,
        setting: str | None = None,
        hint: str | None = None,
        phase: str | None = None,
        exit_status: int = EXIT_FAILED,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.setting = setting
        self.hint = hint
        self.phase = phase
        self.exit_status = exit_status

    def line(self) -> str:
        """The whole error as one line."""
        text = self.message
        if self.setting:
            text += f" [setting: {self.setting}]"
        if self.hint:
            text += f"; {self.hint}"
        return text


class SettingsError(DeployError):
    """The settings cannot be turned into a plan; raised before any host is contacted."""

    def __init__(self, message: str, *, setting: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, setting=setting, hint=hint, phase="settings", exit_status=EXIT_SETTINGS)


_LOCAL_HINTS = {
    errno.ENOENT: "it was removed or renamed while the deploy ran: do not change the build output during the deploy",
    errno.EACCES: "make it readable by the user running sshipit, or leave it out of sources",
    errno.EISDIR: "a directory replaced it while the deploy ran: do not change the build output during the deploy",
    errno.ENAMETOOLONG: "this system opens paths of at most 4,095 bytes: shorten the directory names, or deploy "
                        "from a shallower directory",
}


def local_file_error(path: str | bytes, exc: OSError, what: str = "read", phase: str | None = "upload") -> DeployError:
    """A file on this machine (the CI's) that could not be read: its path and the system's reason, never
    "the connection was lost", since the server had nothing to do with it."""
    shown = os.fsdecode(path)
    if len(shown) > 200:  # a 4 KiB path would drown the line: its two ends say which file it is
        size = len(os.fsencode(shown))
        shown = f"{shown[:80]}...{shown[-100:]} (a path of {size:,} bytes)"
    reason = exc.strerror or type(exc).__name__
    return DeployError(f"cannot {what} {shown} on this machine: {reason}", setting="sources",
                       hint=_LOCAL_HINTS.get(exc.errno or 0, "check that file on the machine running sshipit"),
                       phase=phase)


def local_cause(exc: BaseException) -> OSError | None:
    """`exc` when it is an error of a file on this machine (it names the file), not of the network."""
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
        return exc
    return None
