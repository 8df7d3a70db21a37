"""From raw settings to a validated plan: everything a deploy will do, decided before any host is contacted.

Owns: the remote target, the file list, the commands, the environment to export, the fleet's pace (batches,
failure budget, retries), and the new release's name and metadata (ReleaseSpec; release.py makes the name final
per host under the lock). Who and where (hosts, credentials, host key pins, jump hosts) is hosts.py's. A `Plan` is
complete and checked; the session stage only carries it out.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sshipit.commas import read_commands
from sshipit.errors import SettingsError
from sshipit.hosts import (
    Credentials,
    HostKeyPolicy,
    HostSpec,
    JumpHop,
    load_keys,
    normalise_key_text,
    pin,
    plan_jumps,
    read_hosts,
)
from sshipit.rules import Masker, clean_relative, is_precious, is_shell_name, remote_target
from sshipit.settings import (
    CATALOGUE,
    Raw,
    RawSettings,
    Values,
    parse_int,
    suggest,
)
from sshipit.sources import Collected, Listing, collect


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


# ---------------------------------------------------------------------------------------------------- releases
# The new release's name and metadata: proposed here, once for all hosts; release.py makes the name final on each
# host once that host's lock is held (ReleaseManager.lock).


@dataclass(frozen=True)
class ReleaseSpec:
    """What the new release is called and what its metadata says."""

    id: str
    commit: str = ""
    build: str = ""
    repo: str = ""
    created: str = ""

    def metadata(self, result: str, **extra: str) -> str:
        data = {"id": self.id, "commit": self.commit, "build": self.build, "repo": self.repo,
                "created": self.created, "result": result, **extra}
        return json.dumps(data, sort_keys=True)

    def owner(self) -> str:
        parts = [f"release {self.id}"]
        if self.build:
            parts.append(f"build {self.build}")
        if self.repo:
            parts.append(f"of {self.repo}")
        return " ".join(parts)


_UNSAFE = re.compile(r"[^0-9A-Za-z]")


def release_stamp(now: float) -> str:
    """The time part of a release id, to the millisecond: 20261123-204612.345 (ids sort by it)."""
    millis = round(now * 1000)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}"


def new_release(environ: Mapping[str, str], now: float | None = None) -> ReleaseSpec:
    """Release ids sort by time and carry the short commit: 20261123-204612.345-abc1234."""
    now = time.time() if now is None else now
    commit = next((environ[v] for v in ("DRONE_COMMIT_SHA", "CI_COMMIT_SHA", "GITHUB_SHA") if environ.get(v)), "")
    short = _UNSAFE.sub("", commit)[:7]
    build = next((environ[v] for v in ("DRONE_BUILD_NUMBER", "CI_PIPELINE_NUMBER", "GITHUB_RUN_NUMBER")
                  if environ.get(v)), "")
    repo = next((environ[v] for v in ("DRONE_REPO", "CI_REPO", "GITHUB_REPOSITORY") if environ.get(v)), "")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return ReleaseSpec(release_stamp(now) + (f"-{short}" if short else ""), commit[:64], build[:32], repo[:200],
                       created)


# ------------------------------------------------------------------------------------------------------- build


# ------------------------------------------------------------------------------------------------------- build


def build(raw: RawSettings, environ: dict[str, str], workspace: Path) -> Plan:
    """Check every setting and decide the whole deploy. Raises SettingsError with one clear line."""
    values = Values(raw)
    # The source directories are listed by another process while the settings are checked (sources.Listing).
    listing = Listing.start(workspace, values.items("sources"))
    try:
        return _build(values, raw, environ, workspace, listing)
    finally:
        listing.close()


def _build(values: Values, raw: RawSettings, environ: dict[str, str], workspace: Path, listing: Listing) -> Plan:
    warnings = list(raw.warnings)
    masker = Masker()
    for name in ("password", "key", "passphrase"):
        masker.add(values.text(name))
    if values.text("key"):  # a key pasted with literal \n escapes: mask its real lines too
        masker.add(normalise_key_text(values.text("key") or ""))

    # Credentials: parsed once here, kept in memory only.
    credentials = Credentials(password=values.text("password") or None)
    load_keys(credentials, values, workspace, masker=masker)
    credentials.agent_path = environ.get("SSH_AUTH_SOCK") or None

    # Hosts: `host` entries (text or maps), an inventory, each looked up in ssh_config (_hosts)
    hosts = read_hosts(values, raw, workspace, credentials, masker, warnings)
    seen: set[tuple[str, int, str]] = set()
    for host in hosts:
        key = (host.hostname, host.port, host.username)
        if key in seen:
            raise SettingsError(f"host {host.written!r} is listed twice", setting="host")
        seen.add(key)
    if not credentials.keys and not credentials.password and not credentials.agent_path \
            and not all(host.credentials for host in hosts):
        raise SettingsError(
            "no credentials: set key, key_path or password, or run an ssh-agent (SSH_AUTH_SOCK)",
            setting="key",
        )

    # Host keys
    fingerprints = [pin(fingerprint, "fingerprint") for fingerprint in values.items("fingerprint")]
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
        if target is None and not all(host.target for host in hosts):
            raise SettingsError("sources are set but target is not", setting="target",
                                hint="set target to the remote directory to upload into")
        upload = collect(workspace, sources, strip, listing, values.flag("dereference"))
        warnings += upload.warnings
    rm = values.flag("rm")
    delete = [clean_relative(path, "delete") for path in values.items("delete")]
    if (rm or delete) and target is None and not all(host.target for host in hosts):
        raise SettingsError("rm and delete need a target", setting="target")
    # Spellings known here; the server resolves the rest (the home as /home/u, a link to it): rules.clearing_guard.
    clearing = next((name for name, used in (("rm", rm), ("delete", delete), ("prune", values.flag("prune")))
                     if used), None)
    if clearing and target is not None and is_precious(target):
        raise SettingsError(f"{clearing} refuses to work in target {target_text!r}: it is the login's home or a "
                            "system directory", setting="target", hint="deploy into a directory of its own")
    for host in hosts:
        if clearing and host.target and is_precious(host.target):
            raise SettingsError(f"{clearing} refuses to work in {host.label}'s target {host.target!r}: it is the "
                                "login's home or a system directory", setting="target",
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
    if (atomic or rollback) and target is None and not all(host.target for host in hosts):
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
            # Left unset, as drone-ssh does (its users test `env | grep`): unset and empty differ to `${X-default}`.
            warnings.append(f"envs: {name} is neither a setting nor an environment variable; left unset")
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


def _fleet(plan: Plan, values: Values) -> None:
    """Fill the plan's fleet fields (jumps, max_parallel, batch_size, max_failures, retries, keepalive)."""
    for name in ("proxy_password", "proxy_key", "proxy_passphrase"):
        plan.masker.add(values.text(name))
    if values.text("proxy_key"):  # a key pasted with literal \n escapes: mask its real lines too
        plan.masker.add(normalise_key_text(values.text("proxy_key") or ""))
    plan.jumps = plan_jumps(values, plan.hosts, plan.credentials, plan.host_keys, plan.workspace, plan.masker)
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
