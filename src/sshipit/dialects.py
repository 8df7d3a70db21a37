"""The peers' dialects: the settings of drone-ssh, drone-scp, ssh-action, scp-action, drone-rsync and drone-deploy,
translated into sshipit's own settings with the peer's meaning.

Owns: a table per peer (its setting -> ours -> how the value translates; docs/migration.md shows the same tables,
and tests/test_peer_*.py hold them to it) and `translate`, which runs after the raw settings are read and before
the plan is built (drone-rsync's rules, its trailing slash and filters, are in dialect_rsync.py, called from here).
Everything after it (plan, session, upload) knows sshipit's settings only.

Where a peer's name means something else here (`delete`: drone-rsync's boolean, sshipit's list of paths), the
value's shape decides, and an ambiguous value is refused naming both meanings. A peer setting that sshipit cannot
honour is refused with a line saying which peer it belongs to and what to use instead; one that changes nothing
that lands or runs (a cipher list, a temporary path) is accepted. None reaches the generic "unknown setting".
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sshipit import dialect_rsync
from sshipit.dialect_rsync import bool_word
from sshipit.errors import SettingsError
from sshipit.settings import Raw, RawSettings, lookup, normalise, parse_bool, parse_int, parse_list

SSH, SCP, SSH_ACTION, SCP_ACTION, RSYNC, DEPLOY = (
    "drone-ssh", "drone-scp", "ssh-action", "scp-action", "drone-rsync", "drone-deploy")


@dataclass(frozen=True)
class Rule:
    """One peer setting: the sshipit setting it becomes ("" for none) and what differs ("" for nothing)."""

    ours: str
    differs: str = ""


_SAME = Rule  # readability in the tables: _SAME("port") is the same setting, the same meaning

# Settings shared by appleboy's four plugins (drone-ssh/ssh-action run commands, drone-scp/scp-action upload).
# What each name of appleboy's four plugins becomes (drone-ssh and ssh-action run commands, drone-scp and
# scp-action upload; the four share the connection settings). Each peer's own list of names follows.
_APPLEBOY: dict[str, Rule] = {
    "host": Rule("host", "entries may carry user@ and :port; IPv6 as [addr]:port; the same host twice is "
                         "deployed to once"),
    "port": _SAME("port"),
    "protocol": Rule("host", "tcp4/tcp6 refuse an address of the other family, as the peer does"),
    "username": _SAME("username"),
    "user": _SAME("username"),
    "password": Rule("password", "also tried when the key cannot be read, as the peer does (with a warning)"),
    "key": _SAME("key"),
    "ssh_key": _SAME("key"),
    "key_path": _SAME("key_path"),
    "passphrase": _SAME("passphrase"),
    "ssh_passphrase": _SAME("passphrase"),
    "fingerprint": Rule("fingerprint", "a list, any key type; known_hosts text is accepted too"),
    "timeout": _SAME("timeout"),
    "command_timeout": Rule("command_timeout", "limits the whole command run; exit status 124"),
    "ciphers": Rule("", "accepted: sshipit offers only AES-GCM, ChaCha20-Poly1305 and AES-CTR"),
    "cipher": Rule("", "accepted: sshipit offers only AES-GCM, ChaCha20-Poly1305 and AES-CTR"),
    "use_insecure_cipher": Rule("", "false is accepted; true is refused: no insecure ciphers are offered"),
    "proxy_host": Rule("proxy_host", "`jump` for several hops"),
    "proxy_port": Rule("proxy_port", "unset means 22, as for the peer"),
    "proxy_protocol": Rule("proxy_host", "as protocol, for the jump host"),
    "proxy_username": Rule("proxy_username", "unset means root, as for the peer"),
    "proxy_user": Rule("proxy_username", "unset means root, as for the peer"),
    "proxy_password": Rule("proxy_password", "unset: the target's password"),
    "proxy_key": Rule("proxy_key", "unset: the target's key"),
    "proxy_ssh_key": Rule("proxy_key", "unset: the target's key"),
    "proxy_key_path": Rule("proxy_key_path", "unset: the target's key_path"),
    "proxy_passphrase": _SAME("proxy_passphrase"),
    "proxy_ssh_passphrase": _SAME("proxy_passphrase"),
    "proxy_fingerprint": Rule("proxy_fingerprint", "unset: the jump host is checked against fingerprint and "
                                                   "known_hosts"),
    "proxy_timeout": Rule("", "accepted: `timeout` is the connect timeout of every hop"),
    "proxy_ciphers": Rule("", "accepted, as ciphers"),
    "proxy_cipher": Rule("", "accepted, as ciphers"),
    "proxy_use_insecure_cipher": Rule("", "as use_insecure_cipher"),
    "debug": Rule("debug", "settings (secrets masked), the remote script, tracebacks"),
    # Commands
    "script": Rule("commands", "one shell; stops at the first failing command (script_stop: false restores the "
                               "peer's default); commas survive"),
    "script_file": _SAME("script_file"),
    "script_path": Rule("script_file", "a file in the workspace whose text is the script"),
    "script_stop": Rule("script_stop", "default true here, false for the peer"),
    "envs": Rule("envs", "a setting's value, else the environment variable; a name set nowhere stays unset"),
    "envs_format": Rule("envs", "`export PREFIX_{NAME}_SUFFIX={VALUE}` renames the exported variables; values "
                                "are always quoted; other formats are refused"),
    "allenvs": Rule("envs", "exports DRONE_*, GITHUB_*, INPUT_*, PLUGIN_* under their names, never credentials"),
    "sync": Rule("parallel", "sync: true is parallel: false"),
    "request_pty": _SAME("request_pty"),
    # Uploads
    "source": Rule("sources", "files, directories, globs (** too); !pattern excludes"),
    "target": Rule("target", "several targets: uploaded into each, one after another (not with commands)"),
    "rm": Rule("rm", "empties the target's contents; the directory itself stays"),
    "strip_components": _SAME("strip_components"),
    "tar_dereference": Rule("dereference", "links leaving the workspace or looping are refused"),
    "overwrite": Rule("", "accepted: files are always replaced whole"),
    "unlink_first": Rule("", "accepted: files are always replaced whole (a new file, renamed into place)"),
    "tar_tmp_path": Rule("", "accepted: there is no temporary archive"),
    "tar_exec": Rule("", "accepted: no local tar is run; the server's tar (or SFTP) unpacks"),
    "env_file": Rule("", "read: KEY=VALUE lines (settings as PLUGIN_*, variables for envs); a variable already "
                         "set wins"),
    # The GitHub actions' own inputs
    "capture_stdout": Rule("", "the commands' output becomes the step output `stdout`"),
    "curl_insecure": Rule("", "accepted: nothing is downloaded"),
    "version": Rule("", "accepted: the version of the peer's binary to download; nothing is downloaded"),
}
_CONNECT = ("host", "port", "protocol", "username", "password", "key", "key_path", "passphrase", "fingerprint",
            "timeout", "command_timeout", "use_insecure_cipher", "proxy_host", "proxy_port", "proxy_username",
            "proxy_password", "proxy_key", "proxy_key_path", "proxy_passphrase", "proxy_fingerprint", "proxy_timeout",
            "proxy_use_insecure_cipher", "debug")
_DRONE_SPELLINGS = ("user", "ssh_key", "ssh_passphrase", "ciphers", "proxy_protocol", "proxy_user", "proxy_ssh_key",
                    "proxy_ssh_passphrase", "proxy_ciphers")
_RUN = ("script", "script_stop", "envs", "envs_format", "allenvs", "sync", "request_pty")
_COPY = ("target", "source", "rm", "strip_components", "overwrite", "tar_dereference", "tar_tmp_path", "tar_exec")
_ACTION = ("curl_insecure", "capture_stdout", "version")


def _names(*groups: tuple[str, ...]) -> dict[str, Rule]:
    return {name: _APPLEBOY[name] for group in groups for name in group}


PEERS: dict[str, dict[str, Rule]] = {
    SSH: _names(_CONNECT, _DRONE_SPELLINGS, _RUN, ("script_file",)),
    SSH_ACTION: _names(_CONNECT, ("cipher", "proxy_protocol", "proxy_cipher"), _RUN, ("script_path",), _ACTION),
    SCP: _names(_CONNECT, _DRONE_SPELLINGS, _COPY, ("unlink_first", "env_file")),
    SCP_ACTION: _names(_CONNECT, _COPY, _ACTION),
    RSYNC: {
        "hosts": Rule("host", "entries may carry user@ and :port"),
        "port": _SAME("port"),
        "ports": Rule("host", "one port per host, in order; a host without one gets port"),
        "user": Rule("username", "RSYNC_USER wins over it, as in the peer"),
        "key": Rule("key", "RSYNC_KEY is read when key is unset"),
        "source": Rule("sources", "rsync's rule: ./dist/ is dist's contents, ./dist is dist itself; default ./"),
        "target": _SAME("target"),
        "include": Rule("sources", "rsync's rules (first match wins), checked against rsync's meaning on the "
                                   "workspace; rules that cannot be written exactly are refused"),
        "exclude": Rule("sources", "rsync's rules (first match wins), as include"),
        "filter": Rule("sources", "`+ pattern` and `- pattern` rules; others refused"),
        "recursive": Rule("", "accepted: the peer always ran rsync -a, which is recursive"),
        "delete": Rule("rm", "delete: true removes remote files that are not in the source (rsync --delete), within "
                             "what is synced; with include/exclude/filter it is refused"),
        "script": Rule("commands", "run in the login's home, as the peer does; stops at the first failure"),
        "prescript": Rule("", "run on every host before the sync, in the login's home; a failure stops the step "
                              "before anything is uploaded"),
        "args": Rule("", "options that change only rsync's reporting (--blocking-io, -v, --progress, ...) are "
                         "accepted; others refused: sshipit does not run rsync"),
        "log_level": Rule("", "accepted: the ssh client's log level; debug: true shows more"),
        "pull": Rule("", "refused when true: sshipit only uploads"),
    },
    DEPLOY: {
        "host": _SAME("host"),
        "port": _SAME("port"),
        "user": _SAME("username"),
        "password": _SAME("password"),
        "key": Rule("key", "not only RSA: ECDSA and Ed25519 too"),
        "sources": _SAME("sources"),
        "target": _SAME("target"),
        "delete": Rule("delete", "paths relative to target; `..` refused"),
        "commands": Rule("commands", "in target, in one shell; stops at the first failure"),
        "envs": _SAME("envs"),
    },
}

# Names that belong to a peer but not to sshipit's catalogue, handled below (never "unknown setting").
_ACCEPTED = {"ciphers", "cipher", "proxy_ciphers", "proxy_cipher", "proxy_timeout", "overwrite", "unlink_first",
             "tar_tmp_path", "tar_exec", "curl_insecure", "version", "recursive", "log_level"}
# Peer spellings of sshipit settings that the catalogue does not list as aliases.
_RENAMES = {"script_path": "script_file", "proxy_ssh_passphrase": "proxy_passphrase"}
# rsync options that change only how rsync talks or reports, never what lands (drone-rsync passes `args` on).
_HARMLESS_ARGS = {"--blocking-io", "--no-blocking-io", "-v", "--verbose", "-q", "--quiet", "--progress", "--stats",
                  "-h", "--human-readable", "-z", "--compress", "-a", "--archive", "-r", "--recursive",
                  "-i", "--itemize-changes", "-P", "--partial"}
_SECRET_WORDS = ("PASSWORD", "PASSPHRASE", "SECRET", "TOKEN", "PRIVATE", "_KEY")
_ENV_PREFIXES = ("DRONE_", "PLUGIN_", "INPUT_", "GITHUB_")


@dataclass
class Translated:
    """sshipit's own settings: one set per deploy run (several targets: one each), and what the CI report adds."""

    runs: list[RawSettings]
    capture_stdout: bool = False
    notes: list[str] = field(default_factory=list)


def translate(raw: RawSettings, environ: Mapping[str, str]) -> Translated:
    """Rewrite the peers' settings in `raw` into sshipit's (in place), and split it per target (and, for
    drone-rsync's prescript, a run of those commands first). `environ` gains what drone-scp's env_file sets."""
    _env_file(raw, environ)
    rsync = dialect_rsync.is_rsync(raw, environ)  # before the names that only say "drone-rsync" are consumed
    extra = raw.extra
    for peer_name, ours in _RENAMES.items():
        entry = extra.pop(peer_name, None)
        if entry is None:
            continue
        present = raw.known.get(ours)
        if present is not None and present.text != entry.text:
            raise SettingsError(f"{entry.origin} and {present.origin} both set {ours} with different values",
                                setting=ours, hint="keep one of them")
        raw.known.setdefault(ours, entry)
    for name in _ACCEPTED:
        extra.pop(name, None)
    _refuse_peer_only(raw)
    _secure_ciphers(raw)
    capture = _flag(extra.pop("capture_stdout", None), "capture_stdout")
    prescript = extra.pop("prescript", None)
    if rsync:
        dialect_rsync.apply(raw, environ, rsync)
    _delete_shape(raw)
    _protocol(raw, "protocol", "host")
    _protocol(raw, "proxy_protocol", "proxy_host")
    _envs(raw, environ)
    _password_fallback(raw)
    _same_host_twice(raw)
    runs = _per_target(raw)
    if prescript is not None:
        runs.insert(0, dialect_rsync.prescript_run(raw, prescript, environ))
    return Translated(runs, capture)


# ------------------------------------------------------------------------------------------------------ helpers


def _flag(entry: Raw | None, name: str) -> bool:
    return entry is not None and entry.text is not None and parse_bool(entry.text, name)


def _items(raw: RawSettings, name: str) -> list[str]:
    entry = raw.known.get(name)
    return parse_list(entry, name) if entry is not None else []


def _refuse_peer_only(raw: RawSettings) -> None:
    extra = raw.extra
    args = extra.get("args")
    if args is not None and not set((args.text or "").split()) <= _HARMLESS_ARGS:
        raise SettingsError(f"args ({args.text.strip() if args.text else ''}) are options of the rsync that "
                            "drone-rsync runs; sshipit does not run rsync", setting="args",
                            hint="remove args: delete: true, include, exclude and filter keep rsync's meaning")
    extra.pop("args", None)
    pull = extra.pop("pull", None)
    if _flag(pull, "pull"):
        raise SettingsError("pull: true (drone-rsync: copy from the hosts into the workspace) is not supported: "
                            "sshipit only uploads", setting="pull", hint="fetch the files with scp or rsync")


def _secure_ciphers(raw: RawSettings) -> None:
    for name in ("use_insecure_cipher", "proxy_use_insecure_cipher"):
        entry = raw.extra.pop(name, None)
        if _flag(entry, name):
            raise SettingsError(f"{name}: true (drone-ssh, drone-scp, ssh-action, scp-action: offer CBC and other "
                                "weak ciphers) is not supported: sshipit never offers insecure ciphers",
                                setting=name, hint="remove it, and enable AES-CTR or AES-GCM on the server's sshd")


# ------------------------------------------------------------------------------------------- shapes and meanings


def _delete_shape(raw: RawSettings) -> None:
    """`delete` is drone-rsync's boolean (rsync --delete) and sshipit's (and drone-deploy's) list of paths."""
    entry = raw.known.get("delete")
    if entry is None:
        return
    shape = bool_word(entry)
    if shape is None:
        return
    if shape == "false":
        del raw.known["delete"]
        return
    word = (entry.text or "").strip()
    raise SettingsError(
        f"delete: {word!r} is either drone-rsync's delete: true (remove remote files that are not in the source; "
        "sshipit does that for a step written for drone-rsync, with hosts:) or sshipit's list of paths to remove "
        f"(a file named {word})", setting="delete",
        hint=f"for the paths write delete: ['./{word}']; to empty the target before the upload write rm: true")


def _protocol(raw: RawSettings, name: str, hosts_setting: str) -> None:
    """drone-ssh's protocol (tcp, tcp4, tcp6): an address of the other family fails there, so it fails here."""
    entry = raw.extra.pop(name, None)
    if entry is None or entry.text is None:
        return
    family = entry.text.strip().lower()
    if family not in ("tcp", "tcp4", "tcp6"):
        raise SettingsError(f"{name}: {entry.text!r} is not tcp, tcp4 or tcp6", setting=name,
                            hint="use tcp (either family), tcp4 (IPv4) or tcp6 (IPv6)")
    if family == "tcp":
        return
    want = 4 if family == "tcp4" else 6
    try:
        items = _items(raw, hosts_setting)
    except SettingsError:
        raise SettingsError(f"{name} needs {hosts_setting} written as text entries (host, host:port)",
                            setting=name, hint=f"remove {name}, or write {hosts_setting} as a list of names") from None
    for item in items:
        address = _host_part(item)
        try:
            version = ipaddress.ip_address(address.split("%")[0]).version
        except ValueError:  # a name: it must have an address of that family
            try:
                socket.getaddrinfo(address, None, socket.AF_INET if want == 4 else socket.AF_INET6)
            except OSError:
                raise SettingsError(f"{hosts_setting} {item!r} has no IPv{want} address and {name} is {family}",
                                    setting=name, hint="use protocol: tcp, or a host with such an address") from None
            continue
        if version != want:
            raise SettingsError(f"{hosts_setting} {item!r} is an IPv{version} address and {name} is {family} "
                                "(drone-ssh fails the same way)", setting=name,
                                hint=f"use protocol: tcp{version} or tcp, or an IPv{want} address")


def _host_part(entry: str) -> str:
    text = entry.strip().rpartition("@")[2]
    if text.startswith("["):
        return text[1:text.find("]")]
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


# ------------------------------------------------------------------------------------------------------ exports


def _envs(raw: RawSettings, environ: Mapping[str, str]) -> None:
    """allenvs and envs_format (drone-ssh, ssh-action), as sshipit's envs."""
    allenvs = raw.extra.pop("allenvs", None)
    envs = _items(raw, "envs")
    if _flag(allenvs, "allenvs"):
        secrets = {(e.text or "").strip() for name, e in raw.known.items()
                   if (s := lookup(name)) is not None and s.secret and e.text}
        for var in sorted(environ):
            if not var.startswith(_ENV_PREFIXES) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                continue
            setting = lookup(var.split("_", 1)[1]) if var.startswith(("PLUGIN_", "INPUT_")) else None
            if setting is not None and (setting.secret or setting.name.endswith("key_path")):
                continue
            if any(word in var.upper() for word in _SECRET_WORDS) or environ[var].strip() in secrets:
                continue
            envs.append(var)
            if setting is None and var.startswith(("PLUGIN_", "INPUT_")):  # exported: not an unknown setting
                raw.extra.pop(normalise(var.split("_", 1)[1]), None)
    fmt = raw.extra.pop("envs_format", None)
    if fmt is not None and fmt.text and fmt.text.strip() != "export {NAME}={VALUE}":
        match = re.fullmatch(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)?\{NAME\}([A-Za-z0-9_]*)=\{VALUE\}\s*",
                             fmt.text)
        if not match:
            raise SettingsError(f"envs_format {fmt.text!r}: sshipit exports each variable quoted, and can only rename "
                                "it (export PREFIX_{NAME}_SUFFIX={VALUE})", setting="envs_format",
                                hint="use that form, or remove envs_format")
        prefix, suffix = match.group(1) or "", match.group(2)
        renamed = []
        for name in envs:
            if name.lower() == "all" or name.lower() in _CREDENTIAL_NAMES:
                renamed.append(name)  # the plan refuses credentials with its own line
                continue
            value = _env_value(raw, environ, name)
            raw.extra.pop(name.lower(), None)
            if value is None:
                continue
            new = f"{prefix}{name.upper()}{suffix}"
            raw.extra[new.lower()] = Raw(origin=f"envs_format ({name})", text=value)
            renamed.append(new)
        envs = renamed
    if allenvs is not None or fmt is not None:
        if envs:
            raw.known["envs"] = Raw(origin=(raw.known.get("envs") or allenvs or fmt or Raw("envs")).origin,
                                    items=envs)
        else:
            raw.known.pop("envs", None)


_CREDENTIAL_NAMES = {"password", "key", "ssh_key", "key_path", "passphrase", "ssh_passphrase", "proxy_password",
                     "proxy_key", "proxy_ssh_key", "proxy_key_path", "proxy_passphrase"}


def _env_value(raw: RawSettings, environ: Mapping[str, str], name: str) -> str | None:
    entry = raw.extra.get(name.lower())
    if entry is not None and entry.text is not None:
        return entry.text
    return environ.get(name, environ.get(name.upper()))


# --------------------------------------------------------------------------------------------- hosts, targets


def _password_fallback(raw: RawSettings) -> None:
    """The peers try the password when the key cannot be used; a key that cannot even be read is dropped here,
    with a warning, when a password is set."""
    known = raw.known
    if not (known.get("password") and known["password"].text):
        return
    from sshipit.hosts import load_key, normalise_key_text

    passphrase = (known.get("passphrase") or Raw("")).text
    for name in ("key", "key_path"):
        entry = known.get(name)
        if entry is None or not entry.text:
            continue
        try:
            text = entry.text
            if name == "key_path":
                with open(os.path.expanduser(text), encoding="utf-8") as handle:
                    text = handle.read()
            load_key(normalise_key_text(text), passphrase, name)
        except (SettingsError, OSError, UnicodeDecodeError) as exc:
            reason = exc.message if isinstance(exc, SettingsError) else (getattr(exc, "strerror", None) or str(exc))
            raw.warnings.append(f"{name} cannot be used ({reason}); logging in with password, as drone-ssh and "
                                "ssh-action do")
            del known[name]


def _same_host_twice(raw: RawSettings) -> None:
    """drone-scp and scp-action test a host listed twice: it works there, so here it is deployed to once."""
    entry = raw.known.get("host")
    if entry is None:
        return
    from sshipit.hosts import parse_host

    port_entry, user_entry = raw.known.get("port"), raw.known.get("username")
    try:
        hosts = parse_list(entry, "host")  # host maps (inventory.py) are not a list of text: the plan reads them
        port = parse_int(port_entry.text or "22", "port") if port_entry else 22
        user = (user_entry.text or "root").strip() if user_entry else "root"
        keys = [parse_host(item, port, user) for item in hosts]
    except SettingsError:
        return  # the plan says what is wrong
    kept: list[str] = []
    seen: set[tuple[str, int, str]] = set()
    for item, spec in zip(hosts, keys, strict=True):
        key = (spec.hostname, spec.port, spec.username)
        if key in seen:
            raw.warnings.append(f"host {item!r} is listed twice; it is deployed to once")
            continue
        seen.add(key)
        kept.append(item)
    if len(kept) != len(hosts):
        raw.known["host"] = Raw(origin=entry.origin, items=kept)


def _per_target(raw: RawSettings) -> list[RawSettings]:
    """drone-scp's several targets: the same upload into each, one run per target."""
    entry = raw.known.get("target")
    targets = parse_list(entry, "target") if entry is not None else []
    if len(targets) <= 1:
        return [raw]
    for name in ("commands", "script_file", "atomic", "rollback", "post_commands"):
        if name in raw.known:
            raise SettingsError(f"several targets ({', '.join(targets)}) with {name}: sshipit uploads into several "
                                "targets (as drone-scp does) only without commands", setting="target",
                                hint="use one target, or one step per target")
    runs = []
    for target in dict.fromkeys(targets):
        known = dict(raw.known)
        known["target"] = Raw(origin=entry.origin if entry else "target", text=target)
        runs.append(RawSettings(known=known, extra=dict(raw.extra), warnings=list(raw.warnings)))
    for run in runs[1:]:
        run.warnings.clear()  # said once, with the first target
    return runs


def _env_file(raw: RawSettings, environ: Mapping[str, str]) -> None:
    """drone-scp's env_file: KEY=VALUE lines loaded before its settings are read; a variable already set wins."""
    entry = raw.extra.pop("env_file", None)
    if entry is None or not (entry.text or "").strip():
        return
    from sshipit.settings import from_environment

    path = Path(entry.text.strip()).expanduser()
    try:
        lines = (path if path.is_absolute() else Path.cwd() / path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise SettingsError(f"cannot read env_file {entry.text.strip()}: {reason}", setting="env_file") from None
    loaded: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = re.fullmatch(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)", text)
        if not match:
            raise SettingsError(f"env_file {entry.text.strip()} line {number} is not NAME=VALUE", setting="env_file")
        name, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if name not in environ:
            loaded[name] = value
    if isinstance(environ, dict):
        environ.update(loaded)  # envs may name them, as with drone-scp
    from_environment({k: v for k, v in loaded.items() if k.startswith(("PLUGIN_", "INPUT_"))}, raw)
