"""The settings catalogue, and reading raw settings from the environment and the command line.

Owns: every setting's name, aliases, kind, default and help text; how CI systems name them
(`PLUGIN_*` for Drone and Woodpecker, `INPUT_*` for GitHub Actions, flags anywhere); and turning one raw text
into a typed value (booleans, durations, lists). It does not decide what a deploy does: that is `plan`.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from sshipit.errors import SettingsError

Kind = Literal["str", "secret", "int", "bool", "duration", "list", "commands"]


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    help: str
    default: str | None = None
    aliases: tuple[str, ...] = ()
    group: str = "deploy"

    @property
    def secret(self) -> bool:
        return self.kind == "secret"


CATALOGUE: tuple[Setting, ...] = (
    # Where to connect
    Setting("host", "list", "servers: host, host:port, user@host, user@host:port, [ipv6]:port or a bare IPv6 "
            "address", aliases=("hosts",), group="connection"),
    Setting("port", "int", "SSH port where a host entry names none", "22", group="connection"),
    Setting("username", "str", "login name where a host entry names none", "root", aliases=("user",),
            group="connection"),
    Setting("timeout", "duration", "connect timeout (30s, 2m, or seconds)", "30s", group="connection"),
    Setting("inventory", "str", "an Ansible inventory file of the repository (INI or YAML) whose hosts are "
            "deployed to, with their ansible_host, ansible_port, ansible_user, ansible_ssh_private_key_file and "
            "sshipit_target", group="connection"),
    Setting("limit", "str", "which inventory hosts: groups, host names or patterns as in Ansible's --limit "
            "(web, web:&eu, all:!db3)", "all", aliases=("group",), group="connection"),
    Setting("ssh_config", "str", "an OpenSSH client config file of the repository (Host blocks: HostName, User, "
            "Port, IdentityFile, ProxyJump, ProxyCommand, ForwardAgent); ~/.ssh/config is never read",
            group="connection"),
    Setting("forward_agent", "bool", "forward the ssh-agent (SSH_AUTH_SOCK) to the commands, e.g. for git pull; "
            "a risk: root on the server can use your keys while the deploy runs (default: off, or the "
            "ssh_config's ForwardAgent)", aliases=("ssh_forward_agent",), group="authentication"),
    # Who we are
    Setting("password", "secret", "password for password authentication", group="authentication"),
    Setting("key", "secret", "private key text (RSA, ECDSA, Ed25519; PEM or OpenSSH; encrypted or not)",
            aliases=("ssh_key",), group="authentication"),
    Setting("key_path", "str", "path of a private key file", group="authentication"),
    Setting("passphrase", "secret", "passphrase of the key", aliases=("ssh_passphrase",), group="authentication"),
    # Whom we trust
    Setting("fingerprint", "list", "trusted host key fingerprints (SHA256:...), any key type",
            group="host keys"),
    Setting("known_hosts", "str", "OpenSSH known_hosts text naming the trusted host keys", group="host keys"),
    # What we upload
    Setting("target", "str", "remote directory (created if missing); ~/ means the login's home",
            group="upload"),
    Setting("sources", "list", "files, directories and globs (** too) relative to the workspace; !pattern "
            "excludes", aliases=("source",), group="upload"),
    Setting("strip_components", "int", "drop this many leading path parts of each uploaded path", "0",
            group="upload"),
    Setting("dereference", "bool", "upload what symlinks point to (inside the workspace only) instead of the "
            "links themselves", "false", aliases=("tar_dereference",), group="upload"),
    Setting("rm", "bool", "empty the target's contents (never the directory itself) before upload", "false",
            group="upload"),
    Setting("delete", "list", "paths relative to target to remove before upload", group="upload"),
    Setting("incremental", "bool", "send only files whose content differs from what the server holds (by a "
            "manifest of the last deploy, checked against the server)", "true", group="upload"),
    Setting("checksum", "bool", "compare every file by its content, even one whose size and mtime match what the "
            "last deploy recorded (rsync's --checksum); off: such a file is trusted unchanged, as rsync decides",
            "false", group="upload"),
    Setting("prune", "bool", "remove files an earlier deploy uploaded that are no longer among the sources",
            "false", group="upload"),
    Setting("compress", "str", "compress the upload stream: auto, zstd, gzip or none", "auto", group="upload"),
    Setting("owner", "str", "user:group, user or :group that owns every uploaded file and directory (needs sudo "
            "or a root login)", aliases=("chown",), group="upload"),
    Setting("chmod", "str", "modes for what lands, in rsync's --chmod form: D755,F644 or Du=rwx,go=rx,Fgo-w (D: "
            "directories only, F: files only)", group="upload"),
    Setting("sudo", "bool", "run the upload, the release steps and the commands through sudo on the server",
            "false", aliases=("become",), group="privileges"),
    Setting("sudo_user", "str", "the user sudo runs them as (default: root)", aliases=("become_user",),
            group="privileges"),
    Setting("sudo_password", "secret", "the login's sudo password, where sudo asks for one (fed on stdin, never "
            "in a command line)", aliases=("become_password",), group="privileges"),
    # What we run
    Setting("commands", "commands", "commands run in one remote shell in target, or one block of script",
            aliases=("script",), group="commands"),
    Setting("script_file", "str", "a file in the workspace whose text is the script", group="commands"),
    Setting("script_stop", "bool", "stop at the first failing command", "true", group="commands"),
    Setting("command_timeout", "duration", "limit for the whole command run on a host", "10m",
            group="commands"),
    Setting("envs", "list", "names to export in the remote shell (a setting's value, else the environment "
            "variable's), or all", group="commands"),
    Setting("request_pty", "bool", "run the commands in a pseudo-terminal", "false", group="commands"),
    # Around the deploy (Capistrano's primary role, Deployer's once(), Ansible's run_once; their hooks)
    Setting("run_once", "commands", "commands run on the first host only (database migrations): atomic, in its "
            "new release once every host prepared and before any switches, and a failure switches none; plain, "
            "after its upload, before any host's commands", aliases=("once_commands",), group="commands"),
    Setting("before_upload", "commands", "commands run in target on every host before anything is uploaded "
            "(maintenance mode); a failure stops that host before it changes anything", group="commands"),
    Setting("on_failure", "commands", "commands run in target on each host that failed, with the error line in "
            "SSHIPIT_ERROR; their own failure is a warning", group="commands"),
    Setting("after_rollback", "commands", "commands run in target/current on each host after it switched back "
            "(a failed deploy's switch back, or rollback)", group="releases"),
    # Atomic releases
    Setting("atomic", "bool", "deploy as a new release in target/releases/<id> and switch target/current to it "
            "at once", "false", group="releases"),
    Setting("keep_releases", "int", "how many releases to keep on each host", "5", group="releases"),
    Setting("shared", "list", "paths kept across releases in target/shared/ and linked into each release; one "
            "in neither is made an empty directory, a file is taken from the first release that has it",
            group="releases"),
    Setting("post_commands", "commands", "commands run in target/current after the switch", group="releases"),
    Setting("healthcheck", "str", "a command run after the switch; non-zero means the release is bad",
            group="releases"),
    Setting("healthcheck_timeout", "duration", "how long to retry the health check", "60s", group="releases"),
    Setting("rollback", "bool", "instead of deploying, switch every host to another release: true for the "
            "previous good one, or a release id (back or forward) that every host holds complete", "false",
            aliases=("switch_to",), group="releases"),
    Setting("phase", "str", "all (prepare and switch), prepare (upload and ready a release, switch nothing: one "
            "CI job per shard) or switch (every host holds that release prepared? then switch them all)", "all",
            group="releases"),
    Setting("shard", "str", "with phase: prepare, the share of the hosts this job prepares: K/N, 1-based "
            "(GitHub: ${{ strategy.job-index + 1 }}/${{ strategy.job-total }})", group="releases"),
    Setting("release_id", "str", "the new release's directory name (letters, digits, . _ -); default: with phase "
            "prepare or switch, <build number>-<commit> (the same in every job of a build), else <UTC time>-<commit>",
            group="releases"),
    Setting("lock_timeout", "duration", "how long to wait for another deploy of the same target", "2m",
            group="releases"),
    Setting("list_releases", "bool", "instead of deploying, list each host's releases (id, created, commit, "
            "state, size) and which are not on every host, changing nothing; `sshipit releases` does the same",
            "false", group="releases"),
    # Fleets: jump hosts, rolling batches, retries (the proxy_* credentials fall back to the target's own)
    Setting("proxy_host", "str", "jump host (bastion) the targets are reached through; user@host:port allowed",
            group="fleet"),
    Setting("proxy_port", "int", "SSH port of a jump host whose entry names none (as in the peers and ssh -J)",
            "22", group="fleet"),
    Setting("proxy_username", "str", "login name on a jump host whose entry names none (as in the peers)", "root",
            aliases=("proxy_user",), group="fleet"),
    Setting("proxy_password", "secret", "password for the jump hosts (default: password)", group="fleet"),
    Setting("proxy_key", "secret", "private key text for the jump hosts (default: key)", aliases=("proxy_ssh_key",),
            group="fleet"),
    Setting("proxy_key_path", "str", "path of a private key file for the jump hosts (default: key_path)",
            group="fleet"),
    Setting("proxy_passphrase", "secret", "passphrase of proxy_key (default: passphrase)", group="fleet"),
    Setting("proxy_fingerprint", "list", "trusted host key fingerprints of the jump hosts (default: fingerprint "
            "and known_hosts)", group="fleet"),
    Setting("jump", "list", "jump hosts in order, for more than one hop (user@bastion1,bastion2:2222)",
            group="fleet"),
    Setting("proxy_command", "str", "a command whose stdin and stdout carry every host's SSH connection, as "
            "ssh's ProxyCommand (%h %p %r %n expanded; run by /bin/sh), e.g. for AWS SSM or Cloudflare Access",
            group="fleet"),
    Setting("max_parallel", "int", "hosts worked on at once", "10", group="fleet"),
    Setting("batch_size", "str", "rolling deploy: hosts per batch, a number or a percentage; the next batch "
            "starts only when this one succeeded (default: all hosts)", aliases=("serial",), group="fleet"),
    Setting("max_failures", "str", "failed hosts tolerated (a number or a percentage of all hosts) before the "
            "rest is stopped", "0", group="fleet"),
    Setting("retries", "int", "connection attempts after the first, with exponential backoff, for refused, reset "
            "and timed-out connections only", "2", group="fleet"),
    Setting("keepalive", "duration", "interval of SSH keepalives", "15s", group="fleet"),
    # How
    Setting("parallel", "bool", "deploy to all hosts at once", "true", group="behaviour"),
    Setting("sync", "bool", "drone-ssh's name: sync: true means parallel: false", group="behaviour"),
    Setting("dry_run", "bool", "connect and print per host what would be uploaded, removed, linked and run, "
            "changing nothing", "false", group="behaviour"),
    Setting("debug", "bool", "show resolved settings (secrets masked), the remote script, and tracebacks",
            "false", group="behaviour"),
)

_BY_NAME: dict[str, Setting] = {}
for _setting in CATALOGUE:
    for _name in (_setting.name, *_setting.aliases):
        _BY_NAME[_name] = _setting


def lookup(name: str) -> Setting | None:
    """The setting a (normalised) name or alias stands for."""
    return _BY_NAME.get(normalise(name))


def normalise(name: str) -> str:
    """The one spelling of a setting name: Drone keeps `-` and `.`, Woodpecker turns them into `_`."""
    return re.sub(r"[-. ]", "_", name.strip().lower())


def suggest(name: str) -> str | None:
    """The closest known setting name, for a did-you-mean."""
    close = difflib.get_close_matches(normalise(name), list(_BY_NAME), n=1, cutoff=0.7)
    return _BY_NAME[close[0]].name if close else None


@dataclass
class Raw:
    """One setting as received: its text (or, from repeated flags, its items) and where it came from."""

    origin: str  # PLUGIN_HOST, INPUT_HOST or --host
    text: str | None = None
    items: list[str] | None = None


@dataclass
class RawSettings:
    """Everything received, before interpretation."""

    known: dict[str, Raw] = field(default_factory=dict)  # canonical setting name -> raw value
    extra: dict[str, Raw] = field(default_factory=dict)  # unknown names (normalised) -> raw value
    warnings: list[str] = field(default_factory=list)


PREFIXES = ("PLUGIN_", "INPUT_")


def from_environment(environ: dict[str, str], raw: RawSettings | None = None) -> RawSettings:
    """Collect `PLUGIN_*` and `INPUT_*` variables. An empty value counts as absent, as Drone drops it anyway."""
    raw = raw or RawSettings()
    # PLUGIN_ wins over INPUT_ when both name the same setting: sort INPUT_ first so PLUGIN_ overwrites.
    for var in sorted(environ, key=lambda v: (not v.startswith("INPUT_"), v)):
        prefix = next((p for p in PREFIXES if var.startswith(p)), None)
        value = environ[var]
        if prefix is None or value == "":
            continue
        key = normalise(var[len(prefix):])
        setting = _BY_NAME.get(key)
        entry = Raw(origin=var, text=value)
        if setting is None:
            raw.extra[key] = entry
            continue
        previous = raw.known.get(setting.name)
        if previous and previous.origin.startswith(prefix) and previous.text != value:
            raise SettingsError(
                f"{previous.origin} and {var} both set {setting.name} with different values",
                setting=setting.name,
                hint="keep one of them",
            )
        raw.known[setting.name] = entry
    return raw


# ----------------------------------------------------------------------------------------------- value parsing

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


def parse_bool(text: str, name: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SettingsError(f"{name}: {text!r} is not a boolean", setting=name, hint="use true or false")


def parse_int(text: str, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise SettingsError(f"{name}: {text!r} is not a whole number", setting=name) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"from {minimum}" + (f" to {maximum}" if maximum is not None else " up")
        raise SettingsError(f"{name}: {value} is out of range", setting=name, hint=f"use a number {bounds}")
    return value


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str, name: str) -> float:
    """Seconds from `30s`, `2m`, `1h30m`, `500ms`, or a plain number of seconds (Drone sends `1.5` for 1.5)."""
    word = text.strip().lower()
    try:
        seconds = float(word)
    except ValueError:
        seconds = None
    if seconds is None:
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(word):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(word) or not word:
            raise SettingsError(
                f"{name}: {text!r} is not a duration", setting=name, hint="write it like 30s, 2m, 1h or 45"
            )
        seconds = total
    if seconds <= 0 or seconds != seconds or seconds == float("inf"):
        raise SettingsError(f"{name}: {text!r} must be a positive duration", setting=name)
    return seconds


def json_list(text: str, name: str) -> list[str] | None:
    """Items of a value that is a JSON array (how CIs send lists holding maps, and how users write lossless lists).

    Returns None when the text is not a JSON array. A `{"from_secret": ...}` inside means the CI did not resolve it.
    """
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(data, list):
        return None
    items: list[str] = []
    for item in data:
        if isinstance(item, dict) and "from_secret" in item:
            raise SettingsError(
                f"{name}: a from_secret inside a list was not resolved by the CI (Drone resolves it only as a "
                "setting's whole value)",
                setting=name,
                hint="move the secret into its own setting and name that setting in envs",
            )
        if isinstance(item, (dict, list)):
            raise SettingsError(f"{name}: list items must be plain values, got {json.dumps(item)}", setting=name)
        if item is None:
            continue
        if isinstance(item, bool):
            items.append("true" if item else "false")
        else:
            items.append(str(item))
    return items


def parse_list(raw: Raw, name: str) -> list[str]:
    """A list setting: repeated flags, a JSON array, or comma-joined text (how Drone and Woodpecker send lists)."""
    if raw.items is not None:
        return [item for item in raw.items if item != ""]
    assert raw.text is not None
    from_json = json_list(raw.text, name)
    if from_json is not None:
        return [item.strip() for item in from_json if item.strip()]
    if raw.text.strip().startswith("{"):
        if "from_secret" in raw.text:
            raise SettingsError(f"{name}: from_secret was not resolved by the CI", setting=name,
                                hint="define the secret in the CI and reference it as the setting's value")
        raise SettingsError(f"{name}: expected a list, got a map", setting=name)
    return [part.strip() for part in raw.text.split(",") if part.strip()]


class Values:
    """Typed access to raw settings: one not given reads as its catalogue default."""

    def __init__(self, raw: RawSettings) -> None:
        self.raw = raw

    def has(self, name: str) -> bool:
        return name in self.raw.known

    def text(self, name: str) -> str | None:
        raw = self.raw.known.get(name)
        if raw is None:
            setting = lookup(name)
            return setting.default if setting is not None else None
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
