"""Deploying as another user on the server: sudo, the owner of what lands, and its modes.

Owns: reading `chmod` (rsync's --chmod form) and applying it to the entries' modes (a pure function, so the tar
stream, SFTP and the manifest all see the same modes and an unchanged redeploy sends nothing); reading `owner`;
finding out at connect time whether sudo works for this login (installed, needs a password, the password right);
and `Become`, the connection every step receives instead of the raw one when sudo is on: it wraps each remote
command in `sudo` and feeds the password as the first stdin line, so commands.py, release.py, upload.py and
manifest.py need not know.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sshipit.errors import DeployError, SettingsError
from sshipit.manifest import plain_manifest_key, user_manifest_path
from sshipit.remote import capture
from sshipit.rules import neutralise, quote, shell_path

if TYPE_CHECKING:
    from asyncssh import SSHClientConnection

    from sshipit.hosts import HostSpec
    from sshipit.plan import Plan
    from sshipit.sources import Entry

# ------------------------------------------------------------------------------------------------------ chmod

_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}
_CLAUSE = re.compile(r"([DF]?)(?:([0-7]{1,4})|([ugoa]*)((?:[-+=][rwxXst]*)+))")
_ACTION = re.compile(r"([-+=])([rwxXst]*)")
CHMOD_HINT = "use rsync's --chmod form: a comma list, each part optionally for D(irectories) or F(iles) only: " \
             "D755,F644 or Du=rwx,go=rx,Fgo-w"


@dataclass(frozen=True)
class ChmodPart:
    applies: str  # "D", "F" or "" (both)
    octal: int | None  # an absolute mode, or None for a symbolic change
    who: int = 0  # the bits `who` covers (0: not named, which acts as `a`)
    actions: tuple[tuple[str, str], ...] = ()  # (operator, letters)


def parse_chmod(text: str) -> tuple[ChmodPart, ...]:
    """rsync's --chmod value as parts; a SettingsError names what is wrong."""
    parts = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        match = _CLAUSE.fullmatch(item)
        if match is None:
            raise SettingsError(f"chmod: {item!r} is not a mode", setting="chmod", hint=CHMOD_HINT)
        applies, octal, who, actions = match.groups()
        if octal is not None:
            parts.append(ChmodPart(applies, int(octal, 8)))
            continue
        mask = 0
        for letter in who:
            mask |= _WHO[letter]
        parts.append(ChmodPart(applies, None, mask, tuple(_ACTION.findall(actions))))
    if not parts:
        raise SettingsError("chmod is set but names no mode", setting="chmod", hint=CHMOD_HINT)
    return tuple(parts)


def apply_chmod(parts: tuple[ChmodPart, ...], mode: int, is_dir: bool) -> int:
    """The permission bits `mode` gets from `parts`, applied in order as chmod(1) applies a symbolic mode (with a
    umask of 0: an unnamed `who` is `a`). `X` is execute where the path is a directory or already executable for
    someone; `s` is set-user/group-ID for `u`/`g`, `t` the sticky bit (with `o` or `a`)."""
    mode &= 0o7777
    for part in parts:
        if part.applies == ("F" if is_dir else "D"):
            continue
        if part.octal is not None:
            mode = part.octal
            continue
        who = part.who or 0o7777
        for op, letters in part.actions:
            bits = 0
            for letter in letters:
                bits |= {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}.get(letter, 0)
                if letter == "X" and (is_dir or mode & 0o111):
                    bits |= 0o111
            bits &= who
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:  # `=`: what `who` covers is replaced (its s and t bits too)
                mode = (mode & ~who) | bits
    return mode & 0o7777


def chmod_entries(entries: list[Entry], parts: tuple[ChmodPart, ...]) -> None:
    """Give every file and directory the mode `parts` make of it (symlinks have no mode of their own)."""
    for entry in entries:
        if entry.kind != "symlink":
            entry.mode = apply_chmod(parts, entry.mode, entry.kind == "dir")


# ------------------------------------------------------------------------------------------------------ owner

_NAME = r"(?:[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]+)"
_OWNER = re.compile(rf"({_NAME})?(?::({_NAME})?)?")


def parse_owner(text: str) -> str:
    """`user:group`, `user` or `:group`, checked (names as useradd takes them, or numeric ids)."""
    value = text.strip()
    match = _OWNER.fullmatch(value)
    if not value or match is None or not (match.group(1) or match.group(2)):
        raise SettingsError(f"owner: {text!r} is not user:group, user or :group", setting="owner",
                            hint="e.g. owner: www-data:www-data (names or numeric ids)")
    return value


def sftp_owner(host: HostSpec, owner: str) -> tuple[int, int]:
    """`owner` as the numeric ids SFTP's chown takes: SFTP (version 3) cannot look names up on the server."""
    user, _, group = owner.partition(":")
    if not (user.isdigit() and group.isdigit()):
        raise DeployError(f"{host.label}: owner {owner} cannot be applied over SFTP, which takes numeric ids only; "
                          "nothing was uploaded", setting="owner",
                          hint="give uid:gid (e.g. 33:33), or a login with a shell and tar", phase="upload")
    return int(user), int(group)


# ------------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Privileges:
    """The plan's part: who runs the remote side, and who owns what lands, with which modes."""

    sudo: bool = False
    sudo_user: str = "root"
    sudo_password: str | None = None
    owner: str = ""
    chmod: tuple[ChmodPart, ...] = ()
    chmod_text: str = ""

    def describe(self) -> list[str]:
        """Lines for `sshipit plan` and the debug output (never the password)."""
        lines = []
        if self.sudo:
            lines.append(f"runs the upload, the release steps and the commands as {self.sudo_user} through sudo"
                         f"{' (with sudo_password)' if self.sudo_password else ' (sudo -n: no password)'}")
        if self.owner:
            lines.append(f"what lands is owned by {self.owner}")
        if self.chmod:
            lines.append(f"modes: {self.chmod_text} applied to every uploaded file and directory")
        return lines


def read_privileges(text: Any, flag: Any) -> Privileges:
    """From the settings (`text(name)` and `flag(name)` of settings.Values)."""
    sudo = bool(flag("sudo"))
    user = (text("sudo_user") or "root").strip()
    if not re.fullmatch(_NAME, user):
        raise SettingsError(f"sudo_user: {user!r} is not a user name", setting="sudo_user",
                            hint="a login name on the server, e.g. root or www-data")
    password = text("sudo_password") or None
    if password is not None and ("\n" in password or "\r" in password or "\0" in password):
        raise SettingsError("sudo_password holds a line break", setting="sudo_password",
                            hint="sudo reads one line: set the password alone, without a trailing newline")
    if (password or text("sudo_user")) and not sudo:
        name = "sudo_password" if password else "sudo_user"
        raise SettingsError(f"{name} is set but sudo is off", setting="sudo", hint="set sudo: true, or remove "
                            f"{name}")
    owner = parse_owner(text("owner")) if (text("owner") or "").strip() else ""
    chmod_text = (text("chmod") or "").strip()
    return Privileges(sudo, user, password, owner, parse_chmod(chmod_text) if chmod_text else (), chmod_text)


def plain_manifest_file(conn: object, privileges: Privileges, dest: str) -> str:
    """Where a plain deploy's manifest lives, keyed by the target and the owner (a changed owner must reach every
    file, so it starts from no manifest: a full upload). Without sudo: in the login's home. With sudo: in the sudo
    user's home (a manifest written by root into the login's ~/.cache would lock the login's own tools out of
    it), keyed by the login's home too, so two logins' relative `site` do not share one."""
    key = dest + (f"\0owner={privileges.owner}" if privileges.owner else "")
    if not isinstance(conn, Become):
        return user_manifest_path(plain_manifest_key(key))
    return posixpath.join(conn.home, user_manifest_path(plain_manifest_key(conn.login_home + "\0" + key)))


def chown_step(owner: str, path: str) -> str:
    """Shell step giving `path` and everything below it (links themselves, never what they point to) to `owner`."""
    return f"chown -R -h -- {quote(owner)} {shell_path(path)}"


# ------------------------------------------------------------------------------------------------------ sudo

_LOGIN_HOME = "SSHIPIT_LOGIN_HOME"  # the login's home, for rules.clearing_guard (sudo sets HOME to the user's)


class Become:
    """The host's connection, with every remote command run through sudo as `user`.

    Everything else (SFTP excepted, which is refused) goes to the real connection. The password, when sudo needs
    one, is the first line of each command's stdin (`sudo -S` reads it a byte at a time, so the rest of stdin,
    a tar stream or a script, reaches the command untouched); it is never in an argv or a file.
    """

    def __init__(self, conn: SSHClientConnection, label: str, user: str, password: str | None, home: str,
                 login_home: str) -> None:
        self._conn = conn
        self.label = label
        self.user = user
        self._password = password
        self.home = home  # the sudo user's, where its manifests live
        self.login_home = login_home

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def wrap(self, command: str) -> str:
        how = "-S -k -p ''" if self._password is not None else "-n"
        return (f"exec sudo {how} -u {quote(self.user)} -- env {_LOGIN_HOME}=\"$HOME\" "
                f"sh -c {quote(command)}")

    async def create_process(self, command: str, *args: Any, **kwargs: Any) -> Any:
        if self._password is not None and kwargs.get("request_pty"):
            # A terminal would echo the password line before sudo turns echo off: the terminal starts without it.
            import asyncssh

            kwargs["term_modes"] = {**kwargs.get("term_modes", {}), asyncssh.PTY_ECHO: 0}
        process = await self._conn.create_process(self.wrap(command), *args, **kwargs)
        if self._password is not None:
            encoding, _errors = process.channel.get_encoding()
            line = self._password + "\n"
            process.stdin.write(line if encoding else line.encode())
        return process

    def start_sftp_client(self, *args: Any, **kwargs: Any) -> Any:
        raise DeployError(f"{self.label}: the server has no tar, and SFTP cannot run through sudo; nothing was "
                          "uploaded", setting="sudo", hint="install tar on the server, or deploy without sudo",
                          phase="upload")


_NO_SUDO = "sshipit-no-sudo"
_NEEDS = "sshipit-sudo-needs"
_HOME = "sshipit-sudo-home="


async def become(conn: SSHClientConnection, host: HostSpec, plan: Plan, privileges: Privileges,
                 warn: Any) -> SSHClientConnection:
    """Check, before anything is sent, that sudo works for this login as the settings ask, and return the
    connection the deploy's steps use (a Become with sudo on). Also checks that `owner` can be applied."""
    timeout = plan.connect_timeout
    if not privileges.sudo:
        if privileges.owner:
            await _check_root(conn, host, timeout)
        return conn
    user = quote(privileges.sudo_user)
    # One exec: is sudo there, and does it let the login in without a password? `true` under sudo also prints
    # the sudo user's home (where its manifests go).
    script = (f"command -v sudo >/dev/null 2>&1 || {{ echo {_NO_SUDO}; exit 0; }}; printf '%s\\n' \"$HOME\"; "
              f"LC_ALL=C sudo -n -u {user} -- sh -c 'printf \"{_HOME}%s\\n\" \"$HOME\"' 2>&1 || echo {_NEEDS}")
    import asyncssh

    try:
        found = await capture(conn, script, timeout)
    except (asyncssh.ChannelOpenError, asyncssh.ProcessError):
        found = None
    lines = found.stdout.splitlines() if found is not None else []
    if not any(line in (_NO_SUDO, _NEEDS) or line.startswith(_HOME) for line in lines):  # ForceCommand sftp
        raise _refused(host, "the account has no shell (SFTP only), so sudo cannot run", "sudo",
                       "give the login a shell, or deploy without sudo")
    if _NO_SUDO in lines:
        raise _refused(host, "sudo is not installed on the server", "sudo",
                       "install sudo there (apt-get install sudo), or deploy without sudo")
    login_home = lines[0] if lines else ""
    home = next((line[len(_HOME):] for line in lines if line.startswith(_HOME)), None)
    password = privileges.sudo_password
    if home is not None:
        if password is not None:  # said, not silently dropped: the server did not ask for it
            warn(f"sudo lets {host.username} in without a password: sudo_password is not used")
        return Become(conn, host.label, privileges.sudo_user, None, home, login_home)  # type: ignore[return-value]
    # sudo's own words (LC_ALL=C: English), as plain text: server output never becomes a CI control line
    said = neutralise(plan.masker(" ".join(line for line in lines[1:] if line != _NEEDS)).strip())[:200]
    if "password is required" not in said:
        raise _refused(host, f"sudo refused {host.username} ({said or 'no message'})", "sudo_user",
                       f"allow {host.username} to run commands as {privileges.sudo_user} in sudoers")
    if password is None:
        raise _refused(host, f"sudo asks {host.username} for a password", "sudo_password",
                       "set sudo_password (a secret), or allow the login sudo without one (NOPASSWD)")
    checked = await capture(conn, f"LC_ALL=C sudo -S -k -p '' -u {user} -- sh -c "
                                  f"'printf \"{_HOME}%s\\n\" \"$HOME\"'", timeout, stdin=(password + "\n").encode())
    home = next((line[len(_HOME):] for line in checked.stdout.splitlines() if line.startswith(_HOME)), None)
    if checked.exit_status != 0 or home is None:
        last = [neutralise(line.strip())[:200] for line in plan.masker(checked.stderr).splitlines() if line.strip()]
        raise _refused(host, f"sudo did not accept sudo_password ({last[-1] if last else 'no message'})",
                       "sudo_password", "set the login's sudo password (a secret)")
    return Become(conn, host.label, privileges.sudo_user, password, home, login_home)  # type: ignore[return-value]


async def _check_root(conn: SSHClientConnection, host: HostSpec, timeout: float) -> None:
    """`owner` without sudo needs a root login: said before anything is sent (an SFTP-only account cannot be
    asked; its chown fails inside the staging, which is then dropped)."""
    import asyncssh

    try:
        found = await capture(conn, "id -u", timeout)
    except (asyncssh.ChannelOpenError, asyncssh.ProcessError):
        return
    if found.exit_status == 0 and found.stdout.strip() not in ("0", ""):
        raise _refused(host, f"owner needs root, and {host.username} is not root", "owner",
                       "set sudo: true (the login may sudo), or log in as root")


def _refused(host: HostSpec, what: str, setting: str, hint: str) -> DeployError:
    return DeployError(f"{host.label}: {what}; nothing was uploaded or changed", setting=setting, hint=hint,
                       phase="connect")
