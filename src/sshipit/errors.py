"""The one error type sshipit raises on purpose, and the exit statuses it maps to.

Every failure a user can cause or meet (bad settings, an unreachable host, a refused key, a full disk) is a
`DeployError`: one line saying what is wrong, which setting to look at, and how to fix it. Anything else that
escapes is a bug, and the CLI shows its traceback only with `debug`.
"""

from __future__ import annotations

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
