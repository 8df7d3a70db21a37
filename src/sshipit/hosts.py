"""Who and where: host entries and their own settings, credentials, host key pins and jump hosts.

Owns: parsing `host` entries (text or maps) and the hosts an inventory selects (inventory.py reads the file,
sshconfig.py the ssh_config), loading keys (parsed here, once, and held in memory only; their text goes to the
masker), the host key policy, and the jump hops every target is reached through. plan.py builds the rest.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshipit.errors import SettingsError
from sshipit.rules import Masker, remote_target
from sshipit.settings import RawSettings, Values

if TYPE_CHECKING:
    from asyncssh import SSHKey


@dataclass(frozen=True)
class HostSpec:
    hostname: str
    port: int
    username: str
    written: str  # the entry as the user wrote it
    # A host's own settings (an inventory, a host map, ssh_config; inventory.py, sshconfig.py): None means the
    # plan's. Compared by address and target only.
    target: str | None = None
    credentials: Credentials | None = field(default=None, compare=False)  # its own keys first, then the plan's
    jumps: tuple[JumpHop, ...] | None = field(default=None, compare=False)  # its own jump chain; () for none
    proxy_command: str | None = field(default=None, compare=False)  # tokens expanded; run by /bin/sh
    forward_agent: bool = field(default=False, compare=False)
    origin: str = field(default="", compare=False)  # where its own settings came from, for `plan` output

    @property
    def label(self) -> str:
        """How output names this host: short, but unique among hosts that differ only by port or user."""
        return self.written


@dataclass
class Credentials:
    password: str | None = None
    keys: list[SSHKey] = field(default_factory=list)
    key_descriptions: list[str] = field(default_factory=list)  # "ed25519 key from key" for error messages
    agent_path: str | None = None

    def __repr__(self) -> str:  # never let a secret reach a log through repr()
        return f"Credentials(password={'set' if self.password else 'unset'}, keys={self.key_descriptions})"

    def methods(self) -> list[str]:
        methods = [f"publickey ({d})" for d in self.key_descriptions]
        if self.agent_path:
            methods.append("publickey (ssh-agent)")
        if self.password:
            methods.append("password")
        return methods


@dataclass(frozen=True)
class HostKeyPolicy:
    fingerprints: tuple[str, ...] = ()
    known_hosts: str | None = None

    @property
    def pinned(self) -> bool:
        return bool(self.fingerprints or self.known_hosts)


@dataclass
class JumpHop:
    """One jump host on the way to every target, and what it is authenticated and verified with."""

    host: HostSpec
    credentials: Credentials
    host_keys: HostKeyPolicy
    pin_setting: str  # the setting its host keys come from, for error messages


# Settings that mean nothing without a jump host: set alone they are a mistake worth stopping for.


# ------------------------------------------------------------------------------------------------ host entries

_HOSTNAME = re.compile(r"[A-Za-z0-9_.%-]+\Z")


def parse_host(entry: str, default_port: int, default_user: str) -> HostSpec:
    """`host`, `host:port`, `user@host`, `user@host:port`, `[ipv6]:port`, `[ipv6]` or a bare IPv6 address."""
    text = entry.strip()
    user = default_user
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user or any(c.isspace() or c in "'\"`$;\\" for c in user) or user.startswith("-"):
            raise SettingsError(f"host {entry!r}: {user!r} is not a valid user name", setting="host")
    port = default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SettingsError(f"host {entry!r}: missing ']'", setting="host", hint="write [2001:db8::1]:2222")
        hostname, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise SettingsError(f"host {entry!r}: unexpected {rest!r}", setting="host")
            port = _port(rest[1:], entry)
        _check_ip6(hostname, entry)
    elif text.count(":") > 1:
        hostname = text  # a bare IPv6 address carries no port; brackets are needed for one
        _check_ip6(hostname, entry)
    elif ":" in text:
        hostname, _, port_text = text.partition(":")
        port = _port(port_text, entry)
    else:
        hostname = text
    if not hostname or not _HOSTNAME.match(hostname.replace(":", "")) or hostname.startswith("-"):
        raise SettingsError(f"host {entry!r} is not a valid host name or address", setting="host")
    return HostSpec(hostname=hostname, port=port, username=user, written=entry.strip())


def _check_ip6(address: str, entry: str) -> None:
    try:
        ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        raise SettingsError(f"host {entry!r}: {address!r} is not an IPv6 address", setting="host") from None


def _port(text: str, entry: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:  # not '²' (crashes int) or '١٢'
        raise SettingsError(f"host {entry!r}: port {text!r} is not a number from 1 to 65535", setting="host")
    return int(text)


def read_hosts(values: Values, raw: RawSettings, workspace: Path, credentials: Credentials, masker: Masker,
           warnings: list[str]) -> list[HostSpec]:
    """Every host with its own settings: `host` entries (text, or maps), the hosts `limit` selects from
    `inventory`, each looked up in `ssh_config`. inventory.py and sshconfig.py read those; here each becomes a
    HostSpec (key files read once each, jump hops built)."""
    from sshipit import inventory, sshconfig

    port = values.number("port", minimum=1, maximum=65535)
    username = (values.text("username") or "root").strip()
    host_raw = raw.known.get("host")
    maps = inventory.structured_entries(host_raw.text) if host_raw is not None and host_raw.items is None else None
    entries: list[inventory.HostEntry] = []
    for n, item in enumerate(maps if maps is not None else values.items("host"), 1):
        text, entry = inventory.entry_from_map(item, n) if isinstance(item, dict) else \
            (str(item), inventory.HostEntry(str(item), str(item)))
        written = parse_host(text, 0, "")  # port 0, user "": not written, so other sources may say
        entry.hostname, entry.explicit = written.hostname, True
        entry.port, entry.username = written.port or entry.port, written.username or entry.username
        entries.append(entry)
    if values.text("inventory"):
        found = inventory.read_inventory(values.text("inventory") or "", workspace)
        entries += inventory.inventory_entries(found, values.text("limit"), warnings)
    elif values.has("limit"):
        raise SettingsError("limit is set but inventory is not", setting="limit",
                            hint="set inventory to an Ansible inventory file of the repository")
    if not entries:
        raise SettingsError("no host to deploy to", setting="host",
                            hint="set host (PLUGIN_HOST, --host) or inventory")
    config = sshconfig.read_config(values.text("ssh_config") or "", workspace) if values.text("ssh_config") else None
    if config is not None:
        warnings += config.warnings
    forward = values.flag("forward_agent") if values.has("forward_agent") else None
    command = (values.text("proxy_command") or "").strip() or None  # Kamal's ssh.proxy_command: every host
    if command and (values.text("proxy_host") or values.items("jump")):
        raise SettingsError("proxy_command and proxy_host / jump both say how to reach the hosts",
                            setting="proxy_command", hint="keep one of them")
    keys: dict[str, tuple[Any, str]] = {}  # key file -> (key, description): each file read and parsed once
    hop_credentials = credentials  # a host's own jump hosts log in as the plan's do: proxy_* else the targets'
    if any(values.has(name) for name in ("proxy_password", "proxy_key", "proxy_key_path")):
        hop_credentials = Credentials(password=values.text("proxy_password") or None,
                                      agent_path=credentials.agent_path)
        load_keys(hop_credentials, values, workspace, prefix="proxy_", masker=masker)

    def own_credentials(paths: list[str], what: str, base: Credentials = credentials) -> Credentials | None:
        mine = Credentials(base.password, agent_path=base.agent_path)
        for path_text in paths:
            if path_text not in keys:
                path = inventory.workspace_file(path_text, workspace)
                if not path.is_file() and what.startswith("ssh_config"):  # as ssh: a missing IdentityFile is skipped
                    warnings.append(f"{what}: IdentityFile {path_text} does not exist (skipped)")
                    continue
                text = _read_key_file(path_text, workspace, what)
                masker.add(text)
                key = load_key(normalise_key_text(text), values.text("passphrase"), f"{what} ({path_text})")
                keys[path_text] = (key, _key_label(key, path_text))
            key, label = keys[path_text]
            mine.keys.append(key)
            mine.key_descriptions.append(label)
        if not mine.keys:
            return None
        mine.keys += base.keys
        mine.key_descriptions += base.key_descriptions
        return mine

    hosts = []
    for entry in entries:
        if config is not None:
            sshconfig.resolve(config, entry, port, username)
        if command and entry.proxy_command is None and entry.jump is None:
            entry.proxy_command = command
        spec = parse_host(entry.hostname if ":" not in entry.hostname else f"[{entry.hostname}]",
                          entry.port or port, entry.username or username)
        if entry.username:
            parse_host(f"{entry.username}@x", 22, "")  # the same user name check as written entries
        if entry.proxy_command and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]*", spec.username):
            # as OpenSSH since 9.6: a name a shell would interpret never reaches a ProxyCommand through %r
            raise SettingsError(f"{entry.name}: user name {spec.username!r} has characters a shell would "
                                "interpret, and the host's ProxyCommand runs in a shell", setting="username")
        if entry.proxy_command and not entry.command_expanded:
            entry.proxy_command = sshconfig.expand_tokens(entry.proxy_command, spec.hostname, spec.port,
                                                          spec.username, entry.name, "proxy_command")
        where = entry.origin if entry.origin and entry.origin != "host entry" else "host"
        jumps = None
        if entry.jump is not None:
            chain = sshconfig.hop_chain(config, entry.jump, port, username)
            jumps = tuple(_hop(values, hop, own_credentials(hop.key_paths, where, hop_credentials) or hop_credentials)
                          for hop in chain)
        forwarding = entry.forward_agent if forward is None else forward
        if forwarding and not credentials.agent_path:
            raise SettingsError(f"{entry.name}: agent forwarding is on but there is no ssh-agent (SSH_AUTH_SOCK)",
                                setting="forward_agent", hint="start ssh-agent and add the key, or turn it off")
        hosts.append(HostSpec(
            spec.hostname, spec.port, spec.username, entry.name,
            target=remote_target(entry.target.strip()) if entry.target and entry.target.strip() else None,
            credentials=own_credentials(entry.key_paths, where), jumps=jumps, proxy_command=entry.proxy_command,
            forward_agent=bool(forwarding), origin=entry.origin if entry.origin != "host entry" else ""))
    return hosts


def _hop(values: Values, entry: Any, credentials: Credentials) -> JumpHop:
    """A jump host of one host's own chain: verified like the plan's hops (proxy_fingerprint, else the targets'
    pins, relaxed for a hop that logs in with keys only: _jumps says why)."""
    port = values.number("proxy_port", minimum=1, maximum=65535)  # 22 unless set: the peers' and `ssh -J`'s
    user = (values.text("proxy_username") or "root").strip()
    spec = parse_host(entry.hostname if ":" not in entry.hostname else f"[{entry.hostname}]",
                      entry.port or port, entry.username or user)
    pins = values.items("proxy_fingerprint")
    fingerprints = [pin(fp, "fingerprint") for fp in values.items("fingerprint")]
    known = values.text("known_hosts") or None
    if pins:
        return JumpHop(spec, credentials, HostKeyPolicy(tuple(pin(fp, "proxy_fingerprint") for fp in pins)),
                       "proxy_fingerprint")
    if fingerprints and not credentials.password:
        return JumpHop(spec, credentials, HostKeyPolicy((), known), "fingerprint / known_hosts")
    return JumpHop(spec, credentials, HostKeyPolicy(tuple(fingerprints), known), "fingerprint / known_hosts")


# ------------------------------------------------------------------------------------------------- credentials


def normalise_key_text(text: str) -> str:
    """Keys pasted into CI secrets arrive with CRLF, literal \\n, or without the final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    return text + "\n"


def load_key(text: str, passphrase: str | None, origin: str, passphrase_setting: str = "passphrase") -> SSHKey:
    """Parse private key text from setting `origin`; errors name the setting to fix."""
    import asyncssh

    kind_hint = "expected an OpenSSH or PEM private key (RSA, ECDSA or Ed25519)"
    the_passphrase = "the passphrase" if passphrase_setting == "passphrase" else passphrase_setting
    if "PRIVATE KEY" not in text:
        if text.startswith(("ssh-", "ecdsa-")):
            raise SettingsError(f"{origin} holds a public key, not a private key", setting=origin,
                                hint="use the private half (the file without .pub)")
        raise SettingsError(f"{origin} is not a private key", setting=origin, hint=kind_hint)
    try:
        return asyncssh.import_private_key(text, passphrase or None)
    except asyncssh.KeyEncryptionError as exc:
        if "bcrypt" in str(exc):  # not the passphrase's fault: this install cannot decrypt OpenSSH-format keys
            raise SettingsError(f"{origin} is an encrypted OpenSSH key and the bcrypt package is missing",
                                setting=origin, hint="install sshipit with its dependencies (bcrypt)") from None
        wrong = bool(passphrase)
    except asyncssh.KeyImportError as exc:
        # A wrong passphrase on a PEM key reads "Unable to decrypt PKCS#1 private key" (PKCS#8 likewise).
        if not ("passphrase" in str(exc).lower() or (passphrase and "unable to decrypt" in str(exc).lower())):
            raise SettingsError(f"{origin} could not be read ({exc})", setting=origin, hint=kind_hint) from None
        wrong = bool(passphrase)
    if wrong:
        raise SettingsError(f"{the_passphrase} does not decrypt {origin}", setting=passphrase_setting,
                            hint=f"check the {passphrase_setting} secret")
    raise SettingsError(f"{origin} is encrypted", setting=passphrase_setting,
                        hint=f"set {passphrase_setting} to the key's passphrase")


def load_keys(credentials: Credentials, values: Values, workspace: Path, prefix: str = "",
              masker: Masker | None = None) -> None:
    """Add the keys of `<prefix>key` (text) and `<prefix>key_path` (a file) to `credentials`, and their text to
    `masker` (a key read from a file is as secret as one given as text: a command may print the file).

    prefix is "" for the targets and "proxy_" for jump hosts; a jump host's key falls back to the main passphrase.
    """
    passphrase = values.text(f"{prefix}passphrase") or values.text("passphrase") or None
    for setting in (f"{prefix}key", f"{prefix}key_path"):
        value = values.text(setting)
        if not value:
            continue
        text = value if not setting.endswith("_path") else _read_key_file(value, workspace, setting)
        if masker is not None:
            masker.add(text)
            masker.add(normalise_key_text(text))
        key = load_key(normalise_key_text(text), passphrase, setting, f"{prefix}passphrase")
        credentials.keys.append(key)
        credentials.key_descriptions.append(_key_label(key, setting))


def _read_key_file(path_text: str, workspace: Path, setting: str) -> str:
    from sshipit.inventory import read_workspace_text

    return read_workspace_text(path_text, workspace, setting)


def _key_label(key: SSHKey, origin: str) -> str:
    algorithm = key.get_algorithm()
    short = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(algorithm, algorithm.replace("ecdsa-sha2-", "ecdsa "))
    return f"{short} key from {origin}"


# ------------------------------------------------------------------------------------------------------ jump hosts


_PROXY_ONLY = ("proxy_port", "proxy_username", "proxy_password", "proxy_key", "proxy_key_path", "proxy_passphrase",
               "proxy_fingerprint")


def plan_jumps(values: Values, hosts: list[HostSpec], credentials: Credentials, host_keys: HostKeyPolicy,
               workspace: Path, masker: Masker) -> list[JumpHop]:
    proxy_host = (values.text("proxy_host") or "").strip()
    chain = values.items("jump")
    if proxy_host and chain:
        raise SettingsError("proxy_host and jump both name jump hosts", setting="jump",
                            hint="list every hop in jump, in order")
    setting, entries = ("proxy_host", [proxy_host]) if proxy_host else ("jump", chain)
    if not entries:
        stray = next((name for name in _PROXY_ONLY if values.has(name)), None)
        if stray and not any(host.jumps for host in hosts):  # hosts with jump hosts of their own
            raise SettingsError(f"{stray} is set but there is no jump host", setting=stray,
                                hint="set proxy_host (or jump for several hops), or remove it")
        return []

    port = values.number("proxy_port", minimum=1, maximum=65535)  # 22 unless set: the peers' and `ssh -J`'s
    username = (values.text("proxy_username") or "root").strip()

    if any(values.has(name) for name in ("proxy_password", "proxy_key", "proxy_key_path")):
        credentials = Credentials(password=values.text("proxy_password") or None,
                                  agent_path=credentials.agent_path)
        load_keys(credentials, values, workspace, prefix="proxy_", masker=masker)
    elif values.has("proxy_passphrase"):
        raise SettingsError("proxy_passphrase is set but neither proxy_key nor proxy_key_path is",
                            setting="proxy_passphrase", hint="set proxy_key, or remove proxy_passphrase")

    pin_setting = "fingerprint / known_hosts"
    pins = values.items("proxy_fingerprint")
    if pins:
        host_keys, pin_setting = HostKeyPolicy(tuple(pin(fp, "proxy_fingerprint") for fp in pins)), \
            "proxy_fingerprint"
    elif host_keys.fingerprints and not credentials.password:
        # drone-ssh and ssh-action check no jump host they were given no proxy_fingerprint for. A hop that logs in
        # with keys only gains nothing by impersonation (a signature is bound to its own session; the target's pin
        # still guards the session inside the tunnel), so the target's fingerprints are not imposed on it; it is
        # warned about as unverified. A hop that would receive a password must still match them.
        host_keys = HostKeyPolicy((), host_keys.known_hosts)

    hops = []
    for entry in entries:
        try:
            spec = parse_host(entry, port, username)
        except SettingsError as exc:  # parse_host speaks of `host`; this entry came from another setting
            raise SettingsError(exc.message.replace("host ", f"{setting} ", 1), setting=setting,
                                hint=exc.hint) from None
        hops.append(JumpHop(spec, credentials, host_keys, pin_setting))
    return hops


def pin(fingerprint: str, setting: str) -> str:
    fp = fingerprint.strip()
    if not fp.startswith("SHA256:"):
        raise SettingsError(f"{setting} {fp!r} is not a SHA256 fingerprint", setting=setting,
                            hint="copy it from `ssh-keygen -lf` or from sshipit's warning (SHA256:...)")
    return fp.rstrip("=")
