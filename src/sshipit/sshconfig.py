"""An OpenSSH client config file of the repository (`ssh_config`), and the ProxyCommand it may name.

Owns: looking each host up in that file with asyncssh's own ssh_config parser (Host and Match blocks, patterns,
first value wins, %h %p %r %n tokens), what sshipit takes from it (HostName, User, Port, IdentityFile, ProxyJump,
ProxyCommand, ForwardAgent), the warning that names every other keyword as not used, and running a
ProxyCommand (`/bin/sh -c 'exec COMMAND'`, as ssh runs it) as the transport of a host's SSH connection.
~/.ssh/config and /etc/ssh/ssh_config are never read: only the file the `ssh_config` setting names. `Include` and
`Match exec` are refused (the first reads files outside it, the second runs commands while planning).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sshipit.errors import SettingsError
from sshipit.inventory import HostEntry, read_workspace_text, workspace_file

# Keywords sshipit takes from the file; Host and Match choose blocks. IdentitiesOnly changes nothing here:
# sshipit never offers default key files.
USED = {"host", "match", "hostname", "user", "port", "identityfile", "proxyjump", "proxycommand", "forwardagent",
        "identitiesonly"}
_WHY = {
    "stricthostkeychecking": "host keys are checked against fingerprint / known_hosts",
    "userknownhostsfile": "host keys are checked against fingerprint / known_hosts",
    "globalknownhostsfile": "host keys are checked against fingerprint / known_hosts",
    "serveraliveinterval": "set keepalive", "connecttimeout": "set timeout",
    "requesttty": "set request_pty", "setenv": "set envs", "sendenv": "set envs",
}


@dataclass
class SSHConfig:
    path: Path
    name: str  # as the setting wrote it
    warnings: list[str] = field(default_factory=list)


def read_config(path_text: str, workspace: Path) -> SSHConfig:
    """Check the file once: readable, no Include or Match exec; keywords not used are named in one warning."""
    path = workspace_file(path_text, workspace)
    text = read_workspace_text(path_text, workspace, "ssh_config",
                               "name an OpenSSH client config file of the repository")
    config = SSHConfig(path, path_text)
    unused: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = re.split(r"[\s=]+", line.strip(), maxsplit=2)
        keyword = words[0].lower() if words and words[0] and not words[0].startswith("#") else ""
        if not keyword:
            continue
        if keyword == "include":
            raise SettingsError(f"ssh_config {path_text} line {number}: Include is not supported (it would read "
                                "files outside the repository's config)", setting="ssh_config",
                                hint="copy the included Host blocks into this file")
        if keyword == "match" and re.search(r"(^|\s)!?exec(\s|$)", line.lower()):
            raise SettingsError(f"ssh_config {path_text} line {number}: Match exec is not supported (it runs a "
                                "command while the deploy is planned)", setting="ssh_config",
                                hint="use Host patterns, or Match host / user")
        if keyword not in USED:
            unused.setdefault(words[0], []).append(str(number))
    if unused:
        said = [f"{k} (line {', '.join(v)}{'; ' + _WHY[k.lower()] if k.lower() in _WHY else ''})"
                for k, v in unused.items()]
        config.warnings.append(f"ssh_config {path_text}: not used by sshipit: {', '.join(said)}")
    return config


def _load(config: SSHConfig, alias: str, local_user: str, user: str | None, port: int | None) -> Any:
    from asyncssh.config import ConfigParseError, SSHClientConfig

    try:
        return SSHClientConfig.load(None, [config.path], False, False, False, local_user,
                                    () if user is None else user, alias, () if port is None else port)
    except (ConfigParseError, ValueError, OSError) as exc:
        raise SettingsError(f"ssh_config {config.name}: {exc}", setting="ssh_config") from None


def resolve(config: SSHConfig, entry: HostEntry, default_port: int, default_user: str) -> None:
    """Fill what the entry does not say from the file's blocks for its host name; what the entry says wins, as
    ssh's command line wins over its config (and Ansible's ansible_* variables over the user's config)."""
    alias = entry.hostname
    found = _load(config, alias, default_user, entry.username, entry.port)
    # Tokens (%p, %r) are expanded with the values the file left unset filled from sshipit's own defaults.
    user = entry.username or found.get("User")
    port = entry.port or found.get("Port")
    if user is None or port is None:
        found = _load(config, alias, default_user, user or default_user, port or default_port)
    entry.username = str(found.get("User") or default_user)
    entry.port = int(found.get("Port") or default_port)  # type: ignore[call-overload]
    hostname = found.get("Hostname")
    if hostname and hostname != alias:
        entry.hostname = str(hostname)
        entry.origin = (entry.origin + "; " if entry.origin else "") + f"ssh_config {config.name}"
    elif any(found.get(k) for k in ("ProxyJump", "ProxyCommand", "IdentityFile", "ForwardAgent")) or \
            found.get("User") or found.get("Port"):
        entry.origin = (entry.origin + "; " if entry.origin else "") + f"ssh_config {config.name}"
    entry.key_paths += [str(p) for p in (found.get("IdentityFile") or [])]
    jump, command = found.get("ProxyJump"), found.get("ProxyCommand")
    if entry.jump is None and entry.proxy_command is None:
        if jump and command:
            raise SettingsError(f"ssh_config {config.name}: host {alias} has both ProxyJump and ProxyCommand",
                                setting="ssh_config", hint="keep one of them for this host")
        if jump:
            entry.jump = [h.strip() for h in str(jump).split(",") if h.strip()]
        if command:
            entry.proxy_command, entry.command_expanded = str(command), True
    forward = found.get("ForwardAgent")
    if entry.forward_agent is None and forward is not None:
        if not isinstance(forward, bool):
            raise SettingsError(f"ssh_config {config.name}: ForwardAgent {forward} (an agent socket) is not "
                                "supported", setting="ssh_config", hint="write ForwardAgent yes; sshipit forwards "
                                "the agent of SSH_AUTH_SOCK")
        entry.forward_agent = forward


def hop_chain(config: SSHConfig | None, hops: list[str], default_port: int, default_user: str,
              depth: int = 0) -> list[HostEntry]:
    """Jump hosts as ssh reads `ProxyJump a,b`: each looked up in the file, and the first one's own ProxyJump
    followed (it is reached the way `ssh a` would reach it); a ProxyCommand on a hop is not supported."""
    if depth > 8:
        raise SettingsError(f"ssh_config {config.name if config else ''}: ProxyJump chains loop or are deeper "
                            "than 8 hops", setting="ssh_config")
    chain: list[HostEntry] = []
    for n, text in enumerate(hops):
        written = text.removeprefix("ssh://")
        user, at, rest = written.rpartition("@")
        port = None
        name = rest
        match = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+)", rest)
        if match:
            name, port = match.group(1).strip("[]"), int(match.group(2))
        hop = HostEntry(name=written, hostname=name, port=port, username=user if at else None)
        if config is not None:
            resolve(config, hop, default_port, default_user)
            if hop.proxy_command:
                raise SettingsError(f"ssh_config {config.name}: jump host {written} has a ProxyCommand; sshipit "
                                    "runs a ProxyCommand for a target only", setting="ssh_config",
                                    hint="reach the target itself through the ProxyCommand")
            if n == 0 and hop.jump:
                chain += hop_chain(config, hop.jump, default_port, default_user, depth + 1)
        chain.append(hop)
    return chain


# ---------------------------------------------------------------------------------------------- ProxyCommand

_SAFE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@%:-]*\Z")


def expand_tokens(command: str, host: str, port: int, user: str, alias: str, setting: str) -> str:
    """ssh_config(5)'s %h %p %r %n and %% in a ProxyCommand that did not come through the config file (the
    proxy_command setting, a host map, an inventory). A value a shell would interpret is refused, as OpenSSH
    refuses such names since 9.6: the command runs in a shell."""
    values = {"h": host, "p": str(port), "r": user, "n": alias, "%": "%"}

    def one(match: re.Match[str]) -> str:
        token = match.group(1)
        if token not in values:
            raise SettingsError(f"{setting}: %{token} is not a token sshipit expands", setting=setting,
                                hint="use %h (host), %p (port), %r (user), %n (the name as written) or %%")
        value = values[token]
        if token != "%" and not _SAFE.match(value):
            raise SettingsError(f"{setting}: {value!r} (%{token}) has characters a shell would interpret",
                                setting=setting)
        return value

    return re.sub(r"%(.)", one, command)


class ProxyCommandFailed(OSError):
    """The ProxyCommand ended before the SSH connection was made: its exit status and last words."""


class ProxyCommand:
    """A ProxyCommand as asyncssh's `tunnel`: the command's stdin and stdout carry the SSH connection.

    It runs as ssh runs it (`/bin/sh -c 'exec COMMAND'`, tokens already expanded), with sshipit's environment,
    from which the credential settings were removed at start (cli._forget_credentials). Its stderr is kept (the
    last lines) to say why, if it ends before the SSH connection is made.
    """

    def __init__(self, command: str, mask: Callable[[str], str] = str) -> None:
        self.command = command
        self._mask = mask

    async def create_connection(self, session_factory: Callable[[], Any], _host: str, _port: int) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        protocol = _Pipe(session_factory(), self._mask)
        try:
            await loop.subprocess_exec(lambda: protocol, "/bin/sh", "-c", "exec " + self.command,
                                       start_new_session=True)
        except OSError as exc:
            raise ProxyCommandFailed(exc.errno, f"ProxyCommand could not start: {exc.strerror}") from None
        return protocol, protocol.session

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class _Pipe(asyncio.SubprocessProtocol):
    """The SSH connection's transport, made of the command's stdin (writes) and stdout (reads)."""

    def __init__(self, session: Any, mask: Callable[[str], str]) -> None:
        self.session = session
        self._mask = mask
        self._process: asyncio.SubprocessTransport | None = None
        self._stderr = b""
        self._exited = asyncio.get_running_loop().create_future()
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._process = transport  # type: ignore[assignment]
        self.session.connection_made(self)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.session.data_received(data)
        else:
            self._stderr = (self._stderr + data)[-4096:]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and not self._lost:
            task = asyncio.ensure_future(self._report_end(exc))
            _ending.add(task)
            task.add_done_callback(_ending.discard)

    def process_exited(self) -> None:
        if not self._exited.done():
            assert self._process is not None
            self._exited.set_result(self._process.get_returncode())

    async def _report_end(self, exc: Exception | None) -> None:
        """Stdout closed: the connection is over. Say why when the command failed (its status, its stderr)."""
        status = None
        with contextlib.suppress(asyncio.TimeoutError):
            status = await asyncio.wait_for(asyncio.shield(self._exited), 2)
        self._lost = True
        words = self._mask(self._stderr.decode("utf-8", "replace")).strip().splitlines()
        if exc is None and (status or words):
            said = f": {words[-1][:300]}" if words else ""
            ended = f"exited with status {status}" if status else "ended"
            exc = ProxyCommandFailed(None, f"ProxyCommand {ended}{said}")
        self.session.connection_lost(exc)

    # The transport asyncssh sees
    def write(self, data: bytes) -> None:
        pipe = self._process.get_pipe_transport(0) if self._process else None
        if pipe is not None and not pipe.is_closing():
            pipe.write(data)  # type: ignore[attr-defined]

    def is_closing(self) -> bool:
        return self._process is None or self._process.is_closing()

    def close(self) -> None:
        if self._process is not None:
            pipe = self._process.get_pipe_transport(0)
            if pipe is not None:
                pipe.close()
            self._process.close()  # ends the command if it is still running

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._process.get_extra_info(name, default) if self._process else default

    def get_write_buffer_size(self) -> int:
        pipe = self._process.get_pipe_transport(0) if self._process else None
        return pipe.get_write_buffer_size() if pipe is not None else 0  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        pipe = self._process.get_pipe_transport(1) if self._process else None
        if pipe is not None:
            pipe.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        pipe = self._process.get_pipe_transport(1) if self._process else None
        if pipe is not None:
            pipe.resume_reading()  # type: ignore[attr-defined]


_ending: set[asyncio.Task[None]] = set()  # a task only weakly referenced by the loop may vanish mid-way
