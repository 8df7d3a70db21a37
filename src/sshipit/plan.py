"""From raw settings to a validated plan: everything a deploy will do, decided before any host is contacted.

Owns: host entry parsing, credential loading (keys are parsed here, once, and held in memory only),
host key policy, the remote target, the file list, the commands and the environment to export. A `Plan` is
complete and checked; the session stage only carries it out.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshipit.commas import read_commands
from sshipit.errors import SettingsError
from sshipit.release import ReleaseSpec, new_release
from sshipit.rules import Masker, clean_relative, is_precious, is_shell_name, remote_target
from sshipit.settings import (
    CATALOGUE,
    Raw,
    RawSettings,
    Setting,
    parse_bool,
    parse_duration,
    parse_int,
    parse_list,
    suggest,
)
from sshipit.sources import Collected, Listing, collect

if TYPE_CHECKING:
    from asyncssh import SSHKey


@dataclass(frozen=True)
class HostSpec:
    hostname: str
    port: int
    username: str
    written: str  # the entry as the user wrote it

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
class Plan:
    hosts: list[HostSpec]
    credentials: Credentials
    host_keys: HostKeyPolicy
    connect_timeout: float
    target: str | None
    upload: Collected | None
    rm: bool
    delete: list[str]
    commands: list[str]
    script_stop: bool
    command_timeout: float
    exports: list[tuple[str, str]]
    request_pty: bool
    dry_run: bool
    incremental: bool
    prune: bool
    compress: str
    atomic: bool
    rollback: bool
    keep_releases: int
    shared: list[str]
    post_commands: list[str]
    healthcheck: str | None
    healthcheck_timeout: float
    lock_timeout: float
    release: ReleaseSpec
    parallel: bool
    debug: bool
    workspace: Path
    masker: Masker
    warnings: list[str]
    shown: dict[str, str]  # resolved settings for `debug`, secrets masked
    # Fleets (jump hosts, batches, retries): set by _fleet() at the end of this module. Defaults keep every
    # other constructor of Plan working.
    jumps: list[JumpHop] = field(default_factory=list)  # in order: the first is reached directly
    max_parallel: int = 10  # hosts worked on at once (1 with parallel: false)
    batch_size: int | None = None  # hosts per rolling batch; None: one batch of all hosts
    max_failures: int = 0  # failed hosts tolerated before the rest is stopped (a count, percentages resolved)
    retries: int = 2  # connection attempts after the first, for transient errors only
    keepalive: float = 15.0


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


def load_keys(credentials: Credentials, values: _Values, workspace: Path, prefix: str = "") -> None:
    """Add the keys of `<prefix>key` (text) and `<prefix>key_path` (a file) to `credentials`.

    prefix is "" for the targets and "proxy_" for jump hosts; a jump host's key falls back to the main passphrase.
    """
    passphrase = values.text(f"{prefix}passphrase") or values.text("passphrase") or None
    for setting in (f"{prefix}key", f"{prefix}key_path"):
        value = values.text(setting)
        if not value:
            continue
        text = value if not setting.endswith("_path") else _read_key_file(value, workspace, setting)
        key = load_key(normalise_key_text(text), passphrase, setting, f"{prefix}passphrase")
        credentials.keys.append(key)
        credentials.key_descriptions.append(_key_label(key, setting))


def _read_key_file(path_text: str, workspace: Path, setting: str) -> str:
    path = Path(os.path.expanduser(path_text))
    if not path.is_absolute():
        path = workspace / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise SettingsError(f"cannot read {setting} {path_text}: {reason}", setting=setting) from None


def _key_label(key: SSHKey, origin: str) -> str:
    algorithm = key.get_algorithm()
    short = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(algorithm, algorithm.replace("ecdsa-sha2-", "ecdsa "))
    return f"{short} key from {origin}"


# ------------------------------------------------------------------------------------------------------- build


class _Values:
    """Typed access to raw settings, remembering which ones were used."""

    def __init__(self, raw: RawSettings) -> None:
        self.raw = raw

    def has(self, name: str) -> bool:
        return name in self.raw.known

    def text(self, name: str) -> str | None:
        raw = self.raw.known.get(name)
        if raw is None:
            setting = _setting(name)
            return setting.default
        if raw.items is not None:
            return ",".join(raw.items)
        return raw.text

    def flag(self, name: str) -> bool:
        text = self.text(name)
        return parse_bool(text, name) if text is not None else False

    def number(self, name: str, **bounds: Any) -> int:
        text = self.text(name)
        return parse_int(text, name, **bounds) if text is not None else 0

    def duration(self, name: str) -> float:
        text = self.text(name)
        assert text is not None
        return parse_duration(text, name)

    def items(self, name: str) -> list[str]:
        raw = self.raw.known.get(name)
        return parse_list(raw, name) if raw is not None else []


def _setting(name: str) -> Setting:
    return next(s for s in CATALOGUE if s.name == name)


def build(raw: RawSettings, environ: dict[str, str], workspace: Path) -> Plan:
    """Check every setting and decide the whole deploy. Raises SettingsError with one clear line."""
    values = _Values(raw)
    # The source directories are listed by another process while the settings are checked (sources.Listing).
    listing = Listing.start(workspace, values.items("sources"))
    try:
        return _build(values, raw, environ, workspace, listing)
    finally:
        listing.close()


def _build(values: _Values, raw: RawSettings, environ: dict[str, str], workspace: Path, listing: Listing) -> Plan:
    warnings = list(raw.warnings)
    masker = Masker()
    for name in ("password", "key", "passphrase"):
        masker.add(values.text(name))
    if values.text("key"):  # a key pasted with literal \n escapes: mask its real lines too
        masker.add(normalise_key_text(values.text("key") or ""))

    # Hosts
    entries = values.items("host")
    if not entries:
        raise SettingsError("no host to deploy to", setting="host", hint="set host (PLUGIN_HOST, --host)")
    port = values.number("port", minimum=1, maximum=65535)
    username = (values.text("username") or "root").strip()
    hosts = [parse_host(entry, port, username) for entry in entries]
    seen: set[tuple[str, int, str]] = set()
    for host in hosts:
        key = (host.hostname, host.port, host.username)
        if key in seen:
            raise SettingsError(f"host {host.written!r} is listed twice", setting="host")
        seen.add(key)

    # Credentials: parsed once here, kept in memory only.
    credentials = Credentials(password=values.text("password") or None)
    load_keys(credentials, values, workspace)
    credentials.agent_path = environ.get("SSH_AUTH_SOCK") or None
    if not credentials.keys and not credentials.password and not credentials.agent_path:
        raise SettingsError(
            "no credentials: set key, key_path or password, or run an ssh-agent (SSH_AUTH_SOCK)",
            setting="key",
        )

    # Host keys
    fingerprints = [_pin(fingerprint, "fingerprint") for fingerprint in values.items("fingerprint")]
    known_hosts = values.text("known_hosts")
    if known_hosts:
        import asyncssh

        try:
            asyncssh.import_known_hosts(known_hosts)
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise SettingsError(f"known_hosts could not be read ({exc})", setting="known_hosts",
                                hint="paste lines as `ssh-keyscan` prints them") from None
    host_keys = HostKeyPolicy(tuple(fingerprints), known_hosts or None)

    # Target and upload
    target_text = values.text("target")
    target = remote_target(target_text.strip()) if target_text and target_text.strip() else None
    sources = values.items("sources")
    strip = values.number("strip_components", minimum=0, maximum=1000)
    upload = None
    if sources:
        if target is None:
            raise SettingsError("sources are set but target is not", setting="target",
                                hint="set target to the remote directory to upload into")
        upload = collect(workspace, sources, strip, listing)
        warnings += upload.warnings
    rm = values.flag("rm")
    delete = [clean_relative(path, "delete") for path in values.items("delete")]
    if (rm or delete) and target is None:
        raise SettingsError("rm and delete need a target", setting="target")
    if rm and target is not None and is_precious(target):
        raise SettingsError(f"rm refuses to empty {target_text!r}", setting="rm",
                            hint="deploy into a directory of its own")

    # Commands
    def command_list(name: str) -> list[str]:
        if name not in raw.known:
            return []
        read = read_commands(raw.known[name], name, environ, workspace)
        if read.warning:
            warnings.append(read.warning)
        return read.items

    commands = command_list("commands")
    script_file = values.text("script_file")
    if script_file:
        path = workspace / script_file
        try:
            commands.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text file"
            raise SettingsError(f"cannot read script_file {script_file}: {reason}", setting="script_file") from None
    # Atomic releases
    atomic = values.flag("atomic")
    rollback = values.flag("rollback")
    shared = [clean_relative(p, "shared") + ("/" if p.endswith("/") else "") for p in values.items("shared")]
    post_commands = command_list("post_commands")
    healthcheck = (values.text("healthcheck") or "").strip() or None
    if (atomic or rollback) and target is None:
        raise SettingsError("atomic releases need a target", setting="target",
                            hint="set target to the directory that will hold releases/, current and shared/")
    if not atomic and not rollback:
        for name, used in (("shared", shared), ("post_commands", post_commands), ("healthcheck", healthcheck)):
            if used:
                raise SettingsError(f"{name} needs atomic: true", setting=name,
                                    hint="set atomic: true, or move these commands into commands")
    if atomic and (rm or delete):
        warnings.append("rm and delete are ignored with atomic: true (every release starts empty)")
        rm, delete = False, []
    keep_releases = values.number("keep_releases", minimum=1, maximum=1000)
    compress = (values.text("compress") or "auto").strip().lower()
    if compress not in ("auto", "zstd", "gzip", "none"):
        raise SettingsError(f"compress: {compress!r} is not one of auto, zstd, gzip, none", setting="compress")
    if not upload and not commands and not rm and not delete and not rollback:
        raise SettingsError("nothing to do: no sources and no commands", setting="sources",
                            hint="set sources and target to upload, commands to run, or both")

    # Environment to export
    exports = _exports(values.items("envs"), raw, environ, warnings)

    parallel = values.flag("parallel")
    if values.has("sync") and not values.has("parallel"):
        parallel = not values.flag("sync")

    plan = Plan(
        hosts=hosts,
        credentials=credentials,
        host_keys=host_keys,
        connect_timeout=values.duration("timeout"),
        target=target,
        upload=upload,
        rm=rm,
        delete=delete,
        commands=commands,
        script_stop=values.flag("script_stop"),
        command_timeout=values.duration("command_timeout"),
        exports=exports,
        request_pty=values.flag("request_pty"),
        dry_run=values.flag("dry_run"),
        incremental=values.flag("incremental"),
        prune=values.flag("prune"),
        compress=compress,
        atomic=atomic or rollback,
        rollback=rollback,
        keep_releases=keep_releases,
        shared=shared,
        post_commands=post_commands,
        healthcheck=healthcheck,
        healthcheck_timeout=values.duration("healthcheck_timeout"),
        lock_timeout=values.duration("lock_timeout"),
        release=new_release(environ),
        parallel=parallel,
        debug=values.flag("debug"),
        workspace=workspace,
        masker=masker,
        warnings=warnings,
        shown={},
    )
    _fleet(plan, values)
    plan.shown = _shown(raw, masker)
    _warn_unknown(raw, values.items("envs"), warnings)
    return plan


_CREDENTIALS = {"password", "key", "ssh_key", "key_path", "passphrase", "ssh_passphrase",
                "proxy_password", "proxy_key", "proxy_ssh_key", "proxy_key_path", "proxy_passphrase"}


def _exports(envs: list[str], raw: RawSettings, environ: dict[str, str], warnings: list[str]) -> list[tuple[str, str]]:
    exports: dict[str, str] = {}

    def put(name: str, value: str) -> None:
        exports[name] = value
        if name.upper() != name:
            exports[name.upper()] = value

    for name in envs:
        if name.lower() == "all":
            for key, entry in sorted(raw.extra.items()):
                shell_name = key.upper()
                if is_shell_name(shell_name) and entry.text is not None:
                    exports[shell_name] = entry.text
                else:
                    warnings.append(f"envs: all: {entry.origin} is not a valid shell variable name; not exported")
            continue
        if name.lower() in _CREDENTIALS:
            raise SettingsError(f"envs: {name} is a credential and is never exported", setting="envs",
                                hint="export it under another setting name if a command truly needs it")
        if not is_shell_name(name):
            raise SettingsError(f"envs: {name!r} is not a valid shell variable name", setting="envs",
                                hint="use letters, digits and _")
        entry = raw.extra.get(name.lower())
        if entry is not None and entry.text is not None:
            put(name, entry.text)
        elif name in environ:
            put(name, environ[name])
        elif name.upper() in environ:
            put(name, environ[name.upper()])
        else:
            warnings.append(f"envs: {name} is neither a setting nor an environment variable; exported empty")
            put(name, "")
    return list(exports.items())


def _warn_unknown(raw: RawSettings, envs: list[str], warnings: list[str]) -> None:
    named = {name.lower() for name in envs}
    exporting_all = "all" in named
    for key, entry in sorted(raw.extra.items()):
        if key in named:
            continue
        guess = suggest(key)
        if guess:
            warnings.append(f"unknown setting {entry.origin}: did you mean {guess}?")
        elif not exporting_all:
            warnings.append(f"unknown setting {entry.origin} is ignored (name it in envs to export it)")


def _shown(raw: RawSettings, masker: Masker) -> dict[str, str]:
    shown = {}
    for setting in CATALOGUE:
        entry: Raw | None = raw.known.get(setting.name)
        if entry is None:
            continue
        text = ",".join(entry.items) if entry.items is not None else (entry.text or "")
        shown[setting.name] = "********" if setting.secret else masker(text)
    return shown


# ------------------------------------------------------------------------------------------------------ fleets
# Jump hosts, rolling batches, the failure budget, connection retries and keepalives (README: "Fleets").


@dataclass
class JumpHop:
    """One jump host on the way to every target, and what it is authenticated and verified with."""

    host: HostSpec
    credentials: Credentials
    host_keys: HostKeyPolicy
    pin_setting: str  # the setting its host keys come from, for error messages


# Settings that mean nothing without a jump host: set alone they are a mistake worth stopping for.
_PROXY_ONLY = ("proxy_port", "proxy_username", "proxy_password", "proxy_key", "proxy_key_path", "proxy_passphrase",
               "proxy_fingerprint")


def _fleet(plan: Plan, values: _Values) -> None:
    """Fill the plan's fleet fields (jumps, max_parallel, batch_size, max_failures, retries, keepalive)."""
    for name in ("proxy_password", "proxy_key", "proxy_passphrase"):
        plan.masker.add(values.text(name))
    if values.text("proxy_key"):  # a key pasted with literal \n escapes: mask its real lines too
        plan.masker.add(normalise_key_text(values.text("proxy_key") or ""))
    plan.jumps = _jumps(plan, values)
    total = len(plan.hosts)
    plan.max_parallel = values.number("max_parallel", minimum=1, maximum=1000)
    if not plan.parallel:
        if values.has("max_parallel"):
            plan.warnings.append("max_parallel is ignored with parallel: false (one host at a time)")
        plan.max_parallel = 1
    if values.has("batch_size"):
        plan.batch_size = _share(values.text("batch_size") or "", "batch_size", total, at_least_one=True)
    plan.max_failures = _share(values.text("max_failures") or "0", "max_failures", total, at_least_one=False)
    plan.retries = values.number("retries", minimum=0, maximum=10)
    plan.keepalive = values.duration("keepalive")


def _share(text: str, name: str, total: int, *, at_least_one: bool) -> int:
    """A number of hosts, written as a count or as a percentage of all hosts.

    A batch percentage rounds up (10% of 5 hosts is a batch of 1); a failure budget rounds down (10% of 5 hosts
    tolerates none), so that neither ever means more risk than written.
    """
    word = text.strip()
    if not word.endswith("%"):
        return parse_int(word, name, minimum=1 if at_least_one else 0)
    try:
        percent = float(word[:-1])
    except ValueError:
        percent = float("nan")
    if not 0 <= percent <= 100 or (at_least_one and percent == 0):
        low = "above 0" if at_least_one else "from 0"
        raise SettingsError(f"{name}: {text!r} is not a percentage {low} to 100%", setting=name,
                            hint="write a number of hosts (5) or a percentage (25%)")
    share = percent * total / 100
    # The 1e-9 absorbs float noise: 70% of 10 is 7.000000000000001, and must stay 7.
    return max(1, math.ceil(share - 1e-9)) if at_least_one else math.floor(share + 1e-9)


def _jumps(plan: Plan, values: _Values) -> list[JumpHop]:
    proxy_host = (values.text("proxy_host") or "").strip()
    chain = values.items("jump")
    if proxy_host and chain:
        raise SettingsError("proxy_host and jump both name jump hosts", setting="jump",
                            hint="list every hop in jump, in order")
    setting, entries = ("proxy_host", [proxy_host]) if proxy_host else ("jump", chain)
    if not entries:
        stray = next((name for name in _PROXY_ONLY if values.has(name)), None)
        if stray:
            raise SettingsError(f"{stray} is set but there is no jump host", setting=stray,
                                hint="set proxy_host (or jump for several hops), or remove it")
        return []

    if values.has("proxy_port"):
        port = values.number("proxy_port", minimum=1, maximum=65535)
    else:
        port = values.number("port", minimum=1, maximum=65535)
    username = (values.text("proxy_username") or values.text("username") or "root").strip()

    credentials = plan.credentials
    if any(values.has(name) for name in ("proxy_password", "proxy_key", "proxy_key_path")):
        credentials = Credentials(password=values.text("proxy_password") or None,
                                  agent_path=plan.credentials.agent_path)
        load_keys(credentials, values, plan.workspace, prefix="proxy_")
    elif values.has("proxy_passphrase"):
        raise SettingsError("proxy_passphrase is set but neither proxy_key nor proxy_key_path is",
                            setting="proxy_passphrase", hint="set proxy_key, or remove proxy_passphrase")

    host_keys, pin_setting = plan.host_keys, "fingerprint / known_hosts"
    pins = values.items("proxy_fingerprint")
    if pins:
        host_keys, pin_setting = HostKeyPolicy(tuple(_pin(fp, "proxy_fingerprint") for fp in pins)), \
            "proxy_fingerprint"

    hops = []
    for entry in entries:
        try:
            spec = parse_host(entry, port, username)
        except SettingsError as exc:  # parse_host speaks of `host`; this entry came from another setting
            raise SettingsError(exc.message.replace("host ", f"{setting} ", 1), setting=setting,
                                hint=exc.hint) from None
        hops.append(JumpHop(spec, credentials, host_keys, pin_setting))
    return hops


def _pin(fingerprint: str, setting: str) -> str:
    fp = fingerprint.strip()
    if not fp.startswith("SHA256:"):
        raise SettingsError(f"{setting} {fp!r} is not a SHA256 fingerprint", setting=setting,
                            hint="copy it from `ssh-keygen -lf` or from sshipit's warning (SHA256:...)")
    return fp.rstrip("=")
