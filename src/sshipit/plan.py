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
from dataclasses import dataclass, field, replace
from pathlib import Path

from sshipit.commands import Facts
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
from sshipit.phases import phase_settings, read_phase, read_rollback
from sshipit.privilege import Privileges, chmod_entries, read_privileges
from sshipit.rules import Masker, clean_relative, is_precious, is_shell_name, release_name, remote_target
from sshipit.settings import (
    CATALOGUE,
    Raw,
    RawSettings,
    Values,
    parse_int,
    suggest,
)
from sshipit.sources import Collected, Listing, Pending, check_named, collect


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
    checksum: bool = False  # hash every file, even one whose size and mtime match the manifest (rsync -c)
    privileges: Privileges = field(default_factory=Privileges)  # sudo, owner, chmod (privilege.py)
    list_releases: bool = False  # only list each host's releases (release_list.py); nothing is deployed
    # Releases chosen by name, split deploys (phases.py): set at the end of _build.
    phase: str = "all"  # all, prepare (switch nothing) or switch (switch to a release every host holds)
    shard: tuple[int, int] | None = None  # (K, N): this job prepares the K-th of N shares of the hosts
    all_hosts: int = 0  # hosts before sharding
    rollback_to: str | None = None  # rollback to this release id; None: the previous good one
    check_only: bool = False  # only check that each host can switch (deploy.py, before batches switch)
    # Commands around the deploy (hooks.py): run_once on one host before any switch, the hooks on each host.
    run_once: list[str] = field(default_factory=list)
    before_upload: list[str] = field(default_factory=list)
    on_failure: list[str] = field(default_factory=list)
    after_rollback: list[str] = field(default_factory=list)
    facts: Facts = field(default_factory=Facts)  # this host's (session.deploy_host gives each host its own)


# ---------------------------------------------------------------------------------------------------- releases
# The new release's name and metadata: proposed here, once for all hosts; release.py makes the name final on each
# host once that host's lock is held (ReleaseManager.lock).


@dataclass(frozen=True)
class ReleaseSpec:
    """What the new release is called and what its metadata says.

    `fixed`: the id was given (release_id) or derived from the build, so every job of a split deploy uses it: it
    is never renamed (release.py reuses or replaces a release of that id instead). `stamp`: when it was made, to
    the millisecond; releases are ordered by it (an id that starts with a stamp is ordered by that).
    """

    id: str
    commit: str = ""
    build: str = ""
    repo: str = ""
    created: str = ""
    stamp: str = ""
    fixed: bool = False

    def metadata(self, result: str, **extra: str) -> str:
        data = {"id": self.id, "commit": self.commit, "build": self.build, "repo": self.repo,
                "created": self.created, "stamp": self.stamp, "result": result, **extra}
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


def new_release(environ: Mapping[str, str], now: float | None = None, *, release_id: str | None = None,
                derived: bool = False) -> ReleaseSpec:
    """The new release. By default its id sorts by time and carries the short commit: 20261123-204612.345-abc1234,
    unique per run. `release_id` names it; `derived` (a split deploy: several jobs, one release) makes it the same
    in every job of a build: <build number>-<short commit>, e.g. 42-abc1234."""
    now = time.time() if now is None else now
    commit = next((environ[v] for v in ("DRONE_COMMIT_SHA", "CI_COMMIT_SHA", "GITHUB_SHA") if environ.get(v)), "")
    short = _UNSAFE.sub("", commit)[:7]
    build = next((environ[v] for v in ("DRONE_BUILD_NUMBER", "CI_PIPELINE_NUMBER", "GITHUB_RUN_NUMBER")
                  if environ.get(v)), "")
    repo = next((environ[v] for v in ("DRONE_REPO", "CI_REPO", "GITHUB_REPOSITORY") if environ.get(v)), "")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    stamp = release_stamp(now)
    spec = ReleaseSpec(stamp + (f"-{short}" if short else ""), commit[:64], build[:32], repo[:200], created, stamp)
    if release_id is not None:
        return replace(spec, id=release_id, fixed=True)
    if derived:
        parts = [part for part in (_UNSAFE.sub("", build)[:20], short) if part]
        if not parts:
            raise SettingsError("the jobs of a split deploy need one release id, and none can be derived here (no "
                                "build number or commit in the environment)", setting="release_id",
                                hint="set release_id to the same name in every job (e.g. the build number)")
        return replace(spec, id="-".join(parts), fixed=True)
    return spec


# ------------------------------------------------------------------------------------------------------- build


# ------------------------------------------------------------------------------------------------------- build


def build(raw: RawSettings, environ: dict[str, str], workspace: Path, sources_later: bool = False) -> Plan:
    """Check every setting and decide the whole deploy. Raises SettingsError with one clear line.

    `sources_later` (the sshipit command): where nothing but a read-only look at the server comes before the
    upload (sources_may_wait), the sources' walk is read on first use (sources.Pending), while the server answers.
    """
    values = Values(raw)
    # The source directories are listed by another process while the settings are checked (sources.Listing).
    listing = Listing.start(workspace, values.items("sources"))
    try:
        plan = _build(values, raw, environ, workspace, listing)
        if isinstance(plan.upload, Pending):
            at = plan.warnings.index(_SOURCES_WARNINGS)
            if sources_later and sources_may_wait(plan):
                del plan.warnings[at]  # said when they are read (cli.py: Pending.on_read)
            else:
                plan.warnings[at:at + 1] = plan.upload.warnings  # read now, and said where they always were
    except BaseException:
        listing.close()
        raise
    if plan.upload is None:
        listing.close()
    return plan


_SOURCES_WARNINGS = "\0sources"  # where the sources' warnings go in the plan's list, once they are read


def sources_may_wait(plan: Plan) -> bool:
    """Whether nothing runs on a server before the upload but its read-only probe and listing: a plain deploy
    (no releases, no dry run, no listing) without before_upload or sudo/owner (privilege.become checks first).
    Only then may a sources error be found after connecting: it still ends the deploy with its one line, exit 2,
    and nothing changed on any server."""
    return not (plan.atomic or plan.dry_run or plan.list_releases or plan.before_upload
                or plan.privileges.sudo or plan.privileges.owner)


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
    all_hosts = len(hosts)
    phase, shard, hosts = read_phase(values, hosts)
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
        check_named(workspace, sources)  # now, whenever the walk is read: a missing source contacts no host
        dereference = values.flag("dereference")

        def sources_now() -> Collected:
            collected = collect(workspace, sources, strip, listing, dereference)
            if plan.privileges.chmod:  # before any manifest compares modes: as they will land
                chmod_entries(collected.entries, plan.privileges.chmod)
            return collected

        upload = Pending(sources_now)
        warnings.append(_SOURCES_WARNINGS)
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
    rollback, rollback_to = read_rollback(values)
    release_id = values.text("release_id")
    if rollback and phase != "all":
        raise SettingsError(f"rollback switches to a release the hosts hold already; phase: {phase} is for "
                            "deploying a new one", setting="phase", hint="remove phase from the rollback step")
    if rollback and release_id:
        raise SettingsError("release_id names a new release, and rollback deploys none", setting="release_id",
                            hint="to switch every host to an existing release, write rollback: <its id>")
    shared = [clean_relative(p, "shared") + ("/" if p.endswith("/") else "") for p in values.items("shared")]
    post_commands = command_list("post_commands")
    around = {name: command_list(name) for name in AROUND}
    healthcheck = (values.text("healthcheck") or "").strip() or None
    list_releases = _listing_only(values, target is not None or all(host.target for host in hosts))
    if (atomic or rollback or phase != "all") and target is None and not all(host.target for host in hosts):
        raise SettingsError("atomic releases need a target", setting="target",
                            hint="set target to the directory that will hold releases/, current and shared/")
    if not atomic and not rollback and phase == "all":
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
    phase_settings(phase, values, post_commands, healthcheck)
    if not upload and not commands and not rm and not delete and not rollback and phase != "switch" \
            and not list_releases and not around["run_once"]:
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
        checksum=values.flag("checksum"),
        prune=values.flag("prune"),
        compress=compress,
        atomic=atomic or rollback or phase != "all",
        rollback=rollback,
        keep_releases=keep_releases,
        shared=shared,
        post_commands=post_commands,
        healthcheck=healthcheck,
        healthcheck_timeout=values.duration("healthcheck_timeout"),
        lock_timeout=values.duration("lock_timeout"),
        release=new_release(environ, release_id=release_name(release_id, "release_id") if release_id else None,
                            derived=phase != "all"),
        parallel=parallel,
        debug=values.flag("debug"),
        workspace=workspace,
        masker=masker,
        warnings=warnings,
        shown={},
    )
    _fleet(plan, values)
    plan.privileges = read_privileges(values.text, values.flag)
    masker.add(plan.privileges.sudo_password)
    plan.phase, plan.shard, plan.all_hosts, plan.rollback_to = phase, shard, all_hosts, rollback_to
    plan.list_releases = list_releases
    _around(plan, around)
    plan.shown = _shown(raw, masker)
    _warn_unknown(raw, values.items("envs"), warnings)
    return plan


# ------------------------------------------------------------------------------------------ around the deploy

AROUND = ("run_once", "before_upload", "on_failure", "after_rollback")  # what hooks.py runs
FACTS_PREFIX = "SSHIPIT_"  # the facts' names (Facts.exports): never the user's envs


def _around(plan: Plan, around: dict[str, list[str]]) -> None:
    """run_once and the hooks, checked against the deploy's shape: one that could not run is refused or said."""
    if around["after_rollback"] and not plan.atomic:
        raise SettingsError("after_rollback needs atomic: true (only releases are switched back)",
                            setting="after_rollback", hint="set atomic: true, or remove after_rollback")
    if around["run_once"] and plan.phase == "prepare":
        raise SettingsError("run_once runs right before the switch, and phase: prepare switches nothing",
                            setting="run_once", hint="move run_once to the switch job's settings")
    if around["before_upload"] and plan.phase == "switch":
        raise SettingsError("before_upload runs before the upload, and phase: switch uploads nothing",
                            setting="before_upload", hint="move before_upload to the prepare jobs' settings")
    if plan.rollback:
        for name in ("run_once", "before_upload"):
            if around[name]:
                plan.warnings.append(f"{name} does not run with rollback (no new release is deployed)")
    plan.run_once, plan.before_upload = around["run_once"], around["before_upload"]
    plan.on_failure, plan.after_rollback = around["on_failure"], around["after_rollback"]


_CREDENTIALS = {"password", "key", "ssh_key", "key_path", "passphrase", "ssh_passphrase",
                "proxy_password", "proxy_key", "proxy_ssh_key", "proxy_key_path", "proxy_passphrase",
                "sudo_password", "become_password"}


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
                if shell_name.startswith(FACTS_PREFIX):
                    warnings.append(f"envs: all: {entry.origin} would replace sshipit's own {shell_name}; "
                                    "not exported")
                elif is_shell_name(shell_name) and entry.text is not None:
                    exports[shell_name] = entry.text
                else:
                    warnings.append(f"envs: all: {entry.origin} is not a valid shell variable name; not exported")
            continue
        if name.upper().startswith(FACTS_PREFIX):
            raise SettingsError(f"envs: {name} is one of sshipit's own variables (the deploy's facts)",
                                setting="envs", hint=f"export it under a name that does not start with {FACTS_PREFIX}")
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


# ---------------------------------------------------------------------------------------------- listing releases
# `sshipit releases` / list_releases: true reads each host's releases and changes nothing (release_list.py).

# What a deploy would upload, run, switch or remove: a listing does none of it, so each is refused, never ignored.
_NOT_WITH_LISTING = ("sources", "commands", "script_file", "rm", "delete", "shared", "post_commands",
                     "healthcheck", "rollback", "phase", "shard", "release_id", "owner", "chmod")


def _listing_only(values: Values, has_target: bool) -> bool:
    """list_releases, checked: it needs a target and no setting of a deploy."""
    if not values.flag("list_releases"):
        return False
    for name in _NOT_WITH_LISTING:
        text = (values.text(name) or "").strip() if values.has(name) else ""
        if text and text.lower() not in ("false", "no", "off", "0", "all"):
            raise SettingsError(f"list_releases only lists the releases and changes nothing, but {name} is set "
                                "too", setting=name, hint=f"list releases in a step of their own, without {name}")
    if not has_target:
        raise SettingsError("list_releases needs a target", setting="target",
                            hint="set target to the directory that holds releases/ and current")
    return True
