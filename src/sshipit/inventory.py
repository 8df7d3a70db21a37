"""Hosts with settings of their own: Ansible inventories (INI and YAML), group selection, structured host entries.

Owns: reading an Ansible inventory file of the workspace (`inventory`), choosing hosts from it with an Ansible
host pattern (`limit`: `web`, `web:&eu`, `all:!db3`, `*.example.com`), the per-host connection variables
Ansible users already write (ansible_host, ansible_port, ansible_user, ansible_ssh_private_key_file, ProxyJump or
ProxyCommand inside ansible_ssh_common_args, sshipit_target), and host entries written as maps in the `host`
list (`{"host": "web2", "port": 2222, "username": "deploy", "key_path": ..., "target": ..., "jump": ...}`).
It produces plain `HostEntry` values; plan.py turns them into HostSpecs (keys loaded, jump hops built).
Inventory variables that would change what runs but are not used (ansible_become, ansible_password...) are
warned about, never silently dropped.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sshipit.errors import SettingsError


@dataclass
class HostEntry:
    """One host as a source wrote it: None means "not said here" (the ssh_config or the defaults decide)."""

    name: str  # the inventory name or the entry as written: how output labels it
    hostname: str  # where to connect (ansible_host), before ssh_config's HostName
    port: int | None = None
    username: str | None = None
    key_paths: list[str] = field(default_factory=list)
    target: str | None = None
    jump: list[str] | None = None  # jump hops, in order ([] means "none", overriding the plan's)
    proxy_command: str | None = None
    forward_agent: bool | None = None
    origin: str = ""  # "inventory hosts.ini, groups web, eu"
    command_expanded: bool = False  # proxy_command's %-tokens expanded already (ssh_config's, by asyncssh)
    explicit: bool = False  # user/port written in a `user@host:port` entry (they beat every other source)


# ------------------------------------------------------------------------------------------- Ansible inventory


@dataclass
class _Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    groups: dict[str, _Group]
    host_vars: dict[str, dict[str, Any]]  # in the order the file lists them
    path: str

    def members(self, group: str) -> list[str]:
        """Hosts of a group and of its children, in inventory order."""
        found: set[str] = set()
        todo, seen = [group], set()
        while todo:
            name = todo.pop()
            if name in seen or name not in self.groups:
                continue
            seen.add(name)
            found.update(self.groups[name].hosts)
            todo += self.groups[name].children
        return [h for h in self.host_vars if h in found]

    def groups_of(self, host: str) -> list[str]:
        """The groups a host is in (directly or through children), parents before children, then by name."""
        depth = self._depths()
        return sorted((g for g in self.groups if g != "all" and host in self.members(g)),
                      key=lambda g: (depth.get(g, 1), g))

    def _depths(self) -> dict[str, int]:
        depth: dict[str, int] = {}

        def walk(name: str, level: int, trail: tuple[str, ...]) -> None:
            if name in trail:
                raise SettingsError(f"inventory {self.path}: group {name} is its own child", setting="inventory")
            depth[name] = max(depth.get(name, 0), level)
            for child in self.groups[name].children:
                if child in self.groups:
                    walk(child, level + 1, (*trail, name))

        for name in self.groups:
            walk(name, 0 if name == "all" else 1, ())
        return depth

    def variables(self, host: str) -> dict[str, Any]:
        """Ansible's order: all, then groups from parents to children (by name at one depth), then the host."""
        merged: dict[str, Any] = dict(self.groups["all"].vars) if "all" in self.groups else {}
        for group in self.groups_of(host):
            merged.update(self.groups[group].vars)
        merged.update(self.host_vars[host])
        return merged


_RANGE = re.compile(r"\[([0-9a-z]+):([0-9a-z]+)(?::(\d+))?\]")


def expand_range(name: str, path: str) -> list[str]:
    """Ansible's host ranges: `www[01:50].example.com`, `db-[a:f]`, `[1:9:2]` (a step)."""
    match = _RANGE.search(name)
    if match is None:
        return [name]
    first, last, step = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = name[:match.start()], name[match.end():]
    if first.isdigit() and last.isdigit():
        width = len(first) if first.startswith("0") else 0
        values = [str(n).zfill(width) for n in range(int(first), int(last) + 1, step)]
    elif len(first) == 1 and len(last) == 1 and first.isalpha() and last.isalpha():
        values = [chr(c) for c in range(ord(first), ord(last) + 1, step)]
    else:
        raise SettingsError(f"inventory {path}: host range {match.group(0)!r} is neither numbers nor letters",
                            setting="inventory", hint="write it like web[01:20] or db-[a:f]")
    if not values or len(values) > 10000:
        raise SettingsError(f"inventory {path}: host range {match.group(0)!r} is empty or too large",
                            setting="inventory")
    return [name for value in values for name in expand_range(head + value + tail, path)]


def _ini_value(text: str) -> Any:
    """INI values: numbers as numbers, everything else as its text (only connection variables are read)."""
    return int(text) if text.isdigit() else text


def parse_ini(text: str, path: str) -> Inventory:
    groups: dict[str, _Group] = {"all": _Group("all"), "ungrouped": _Group("ungrouped")}
    groups["all"].children.append("ungrouped")
    host_vars: dict[str, dict[str, Any]] = {}
    section, kind = "ungrouped", "hosts"
    for number, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue

        def bad(why: str, hint: str | None = None, line_number: int = number) -> SettingsError:
            return SettingsError(f"inventory {path} line {line_number}: {why}", setting="inventory", hint=hint)

        header = re.fullmatch(r"\[([^\]:]+)(?::(\w+))?\]", line)
        if header:
            section, kind = header.group(1).strip(), header.group(2) or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise bad(f"section [{section}:{kind}] is not :vars or :children")
            group = groups.setdefault(section, _Group(section))
            if section != "all" and section not in groups["all"].children:
                groups["all"].children.append(section)
            del group
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise bad(f"cannot read {line!r} ({exc})") from None
        if not words:
            continue
        if kind == "vars":
            name, has, value = line.partition("=")
            if not has:
                raise bad(f"{line!r} is not name=value")
            groups[section].vars[name.strip()] = _ini_value(" ".join(shlex.split(value, comments=True)))
        elif kind == "children":
            groups[section].children.append(words[0])
        else:
            variables: dict[str, Any] = {}
            for word in words[1:]:
                name, has, value = word.partition("=")
                if not has:
                    raise bad(f"{word!r} is not name=value", "host lines are: name var=value var=value")
                variables[name] = _ini_value(value)
            name = words[0]
            port = re.fullmatch(r"(.+?):(\d+)", name) if name.count(":") == 1 else None
            if port:  # `host:port`, as Ansible's INI allows
                name = port.group(1)
                variables.setdefault("ansible_port", int(port.group(2)))
            for host in expand_range(name, path):
                host_vars.setdefault(host, {}).update(variables)
                groups[section].hosts.append(host)
    for group in groups.values():
        for child in group.children:
            if child not in groups:
                raise SettingsError(f"inventory {path}: group {group.name} names child group {child!r}, which is "
                                    "not defined", setting="inventory")
    return Inventory(groups, host_vars, path)


def _loader() -> Any:
    """PyYAML's safe loader, knowing Ansible's `!vault` tag (so that it can be refused with a clear message) and
    `!unsafe` (plain text). Made on first use: PyYAML is imported only for YAML inventories."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!vault", lambda loader, node: "\x00vault")
    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
    return Loader


def parse_yaml(text: str, path: str) -> Inventory:
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())  # a SafeLoader
    except yaml.YAMLError as exc:
        raise SettingsError(f"inventory {path} is not valid YAML ({str(exc).splitlines()[0]})",
                            setting="inventory") from None
    if not isinstance(data, dict):
        raise SettingsError(f"inventory {path}: expected groups at the top (all:, web:, ...)", setting="inventory")
    groups: dict[str, _Group] = {"all": _Group("all")}
    host_vars: dict[str, dict[str, Any]] = {}

    def group(name: str, body: Any, where: str) -> None:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise SettingsError(f"inventory {path}: group {where} must be a map of hosts, vars and children",
                                setting="inventory")
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            raise SettingsError(f"inventory {path}: group {where} has {sorted(unknown)[0]!r}; a group holds "
                                "hosts, vars and children", setting="inventory")
        own = groups.setdefault(name, _Group(name))
        if name != "all" and name not in groups["all"].children:
            groups["all"].children.append(name)
        own.vars.update(_map(body.get("vars"), f"{where} vars"))
        for host, variables in _map(body.get("hosts"), f"{where} hosts").items():
            for expanded in expand_range(str(host), path):
                host_vars.setdefault(expanded, {}).update(_map(variables, f"host {host}"))
                own.hosts.append(expanded)
        for child, child_body in _map(body.get("children"), f"{where} children").items():
            if str(child) not in own.children:
                own.children.append(str(child))
            group(str(child), child_body, str(child))

    def _map(value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SettingsError(f"inventory {path}: {where} must be a map", setting="inventory")
        return value

    for name, body in data.items():
        group(str(name), body, str(name))
    return Inventory(groups, host_vars, path)


def workspace_file(path_text: str, workspace: Path) -> Path:
    """A file named by a setting: relative to the workspace (the repository), as key_path is."""
    path = Path(path_text.strip()).expanduser()
    return path if path.is_absolute() else workspace / path


def read_workspace_text(path_text: str, workspace: Path, setting: str, hint: str | None = None) -> str:
    """The text of the file a setting names (inventory, ssh_config, key_path, ...), or one line saying why not."""
    try:
        return workspace_file(path_text, workspace).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise SettingsError(f"cannot read {setting} {path_text}: {reason}", setting=setting, hint=hint) from None


def read_inventory(path_text: str, workspace: Path) -> Inventory:
    path = workspace_file(path_text, workspace)
    text = read_workspace_text(path_text, workspace, "inventory",
                               "name an Ansible inventory file of the repository (INI or YAML)")
    # Ansible tells the formats apart by trying them; a YAML inventory starts with a group map.
    looks_yaml = path.suffix in (".yml", ".yaml") or (
        re.match(r"\s*(---|[\w.-]+:\s*$)", text, re.M) is not None and not re.search(r"^\s*\[", text, re.M))
    return parse_yaml(text, path_text) if looks_yaml else parse_ini(text, path_text)


# ---------------------------------------------------------------------------------------------- host patterns


def select(inventory: Inventory, pattern: str | None) -> list[str]:
    """The hosts an Ansible host pattern names: `web`, `web,db`, `web:&eu`, `all:!db3`, `*.example.com`,
    `~web[0-9]+` (a regular expression). A term that names nothing is an error, not an empty deploy."""
    every = list(inventory.host_vars)
    text = (pattern or "all").strip()
    terms = [t.strip() for t in re.split(r"[,:]", text) if t.strip()] if not text.startswith("~") else [text]
    chosen: list[str] = []
    for term in terms:
        op = term[0] if term[0] in "!&" else ""
        hosts = _term(inventory, term[len(op):], every)
        if not hosts:
            raise SettingsError(f"limit: {term[len(op):]!r} matches no group or host of inventory {inventory.path}",
                                setting="limit", hint=f"groups: {', '.join(sorted(inventory.groups)) or 'none'}")
        if op == "!":
            chosen = [h for h in chosen if h not in hosts]
        elif op == "&":
            chosen = [h for h in chosen if h in hosts]
        else:
            chosen += [h for h in hosts if h not in chosen]
    if not chosen:
        raise SettingsError(f"limit {text!r} leaves no host of inventory {inventory.path}", setting="limit")
    order = {host: n for n, host in enumerate(every)}
    return sorted(chosen, key=order.__getitem__)


def _term(inventory: Inventory, term: str, every: list[str]) -> list[str]:
    if term in ("all", "*"):
        return every
    if term in inventory.groups:
        return inventory.members(term)
    if term.startswith("~"):
        try:
            regex = re.compile(term[1:])
        except re.error as exc:
            raise SettingsError(f"limit: {term!r} is not a regular expression ({exc})", setting="limit") from None
        return [h for h in every if regex.search(h)]
    if any(c in term for c in "*?["):
        groups = [g for g in inventory.groups if fnmatch.fnmatchcase(g, term)]
        return [h for h in every if fnmatch.fnmatchcase(h, term) or any(h in inventory.members(g) for g in groups)]
    return [term] if term in inventory.host_vars else []


# ------------------------------------------------------------------------------------- variables -> HostEntry

# Variables that change how Ansible connects or what it runs, but mean nothing to sshipit: said, not dropped.
_NOT_USED = {
    "ansible_password": "set password (a secret) instead",
    "ansible_ssh_pass": "set password (a secret) instead",
    "ansible_become": "commands run as the login user; use sudo in commands",
    "ansible_become_user": "commands run as the login user; use sudo in commands",
    "ansible_become_method": "commands run as the login user; use sudo in commands",
    "ansible_become_password": "commands run as the login user; use sudo in commands",
    "ansible_become_pass": "commands run as the login user; use sudo in commands",
    "ansible_ssh_extra_args": None,  # read like ansible_ssh_common_args
    "ansible_ssh_executable": "sshipit speaks SSH itself",
    "ansible_host_key_checking": "host keys are checked against fingerprint / known_hosts",
    "ansible_ssh_host_key_checking": "host keys are checked against fingerprint / known_hosts",
    "ansible_shell_type": "commands run in the login's shell",
}
_ALIASES = {"ansible_ssh_host": "ansible_host", "ansible_ssh_port": "ansible_port",
            "ansible_ssh_user": "ansible_user", "ansible_private_key_file": "ansible_ssh_private_key_file"}


def inventory_entries(inventory: Inventory, pattern: str | None, warnings: list[str]) -> list[HostEntry]:
    said: list[str] = []  # warnings, each said once however many hosts share the variable
    entries = _entries(inventory, pattern, said)
    warnings += [warning for warning in dict.fromkeys(said) if warning not in warnings]
    return entries


def _entries(inventory: Inventory, pattern: str | None, warnings: list[str]) -> list[HostEntry]:
    entries = []
    unused: dict[str, str] = {}
    for name in select(inventory, pattern):
        variables = {_ALIASES.get(k, k): v for k, v in inventory.variables(name).items()}

        def text(var: str, host: str = name, values: dict[str, Any] = variables) -> str | None:
            value = values.get(var)
            if value is None:
                return None
            if value == "\x00vault":
                raise SettingsError(f"inventory {inventory.path}: {var} of {host} is vault-encrypted; sshipit "
                                    "cannot decrypt Ansible Vault", setting="inventory",
                                    hint="give the value as a setting, or in the inventory in plain text")
            if isinstance(value, (dict, list)):
                raise SettingsError(f"inventory {inventory.path}: {var} of {host} must be a single value",
                                    setting="inventory")
            return str(value).strip()

        connection = text("ansible_connection")
        if connection and connection not in ("ssh", "smart", "paramiko", "paramiko_ssh"):
            raise SettingsError(f"inventory {inventory.path}: host {name} has ansible_connection={connection}; "
                                "sshipit deploys over SSH only", setting="limit",
                                hint="leave this host out with limit (e.g. all:!" + name + ")")
        where = f"inventory {inventory.path}"
        groups = inventory.groups_of(name)
        entry = HostEntry(name=name, hostname=text("ansible_host") or name,
                          origin=where + (f", group{'s' if len(groups) > 1 else ''} {', '.join(groups)}"
                                          if groups else ""))
        port = text("ansible_port")
        if port is not None:
            entry.port = _port(port, f"{where}: ansible_port of {name}", "inventory")
        entry.username = text("ansible_user")
        key = text("ansible_ssh_private_key_file")
        if key:
            entry.key_paths.append(key)
        entry.target = text("sshipit_target")
        for var in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
            args = text(var)
            if args:
                _ssh_args(entry, args, f"{where}: {var}", warnings)
        for var, why in _NOT_USED.items():
            if why and var in variables:
                unused.setdefault(var, why)
        entries.append(entry)
    for var, why in unused.items():
        warnings.append(f"inventory {inventory.path}: {var} is not used: {why}")
    return entries


def _port(text: str, what: str, setting: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SettingsError(f"{what}: {text!r} is not a port number from 1 to 65535", setting=setting)
    return int(text)


def _ssh_args(entry: HostEntry, args: str, what: str, warnings: list[str]) -> None:
    """The ssh options Ansible users put in ansible_ssh_common_args: -J, -o ProxyJump=, -o ProxyCommand=,
    -o ForwardAgent=, -A, -p, -l, -i. Any other option is reported as not used."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise SettingsError(f"{what}: cannot read {args!r} ({exc})", setting="inventory") from None
    n = 0
    while n < len(words):
        word = words[n]
        value = words[n + 1] if n + 1 < len(words) else ""
        if word in ("-J", "-o", "-p", "-l", "-i") and not value:
            raise SettingsError(f"{what}: {word} needs a value", setting="inventory")
        if word == "-A":
            entry.forward_agent = True
            n += 1
            continue
        if word == "-J":
            entry.jump = [] if value.lower() == "none" else [h for h in value.split(",") if h]
        elif word == "-p":
            entry.port = _port(value, what, "inventory")
        elif word == "-l":
            entry.username = value
        elif word == "-i":
            entry.key_paths.append(value)
        elif word == "-o":
            name, has, option = value.partition("=")
            if not has:  # -o "ProxyJump bastion"
                name, _, option = value.partition(" ")
            key = name.strip().lower()
            option = option.strip()
            if key == "proxyjump":
                entry.jump = [] if option.lower() == "none" else [h for h in option.split(",") if h]
            elif key == "proxycommand":
                entry.proxy_command = None if option.lower() == "none" else option
            elif key == "forwardagent":
                entry.forward_agent = option.lower() in ("yes", "true")
            else:
                warnings.append(f"{what}: -o {name} is not used by sshipit")
        else:
            warnings.append(f"{what}: {word} is not used by sshipit")
            n += 1
            continue
        n += 2


# ------------------------------------------------------------------------------------- structured host entries

_ENTRY_KEYS = {"host", "hostname", "username", "user", "port", "key_path", "target", "jump", "proxy_command"}


def structured_entries(text: str | None) -> list[dict[str, Any]] | None:
    """Host entries written as maps (a JSON array of objects, as Drone and Woodpecker send a YAML list of maps),
    or None when the `host` value is a plain list."""
    if text is None or not text.strip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, list) or not any(isinstance(item, dict) for item in data):
        return None
    for item in data:
        if isinstance(item, dict) and "from_secret" in item:
            return None  # settings.json_list says what is wrong with this one
    return data


def entry_from_map(item: dict[str, Any], n: int) -> tuple[str, HostEntry]:
    """A host map: the `host` text (parsed by hosts.parse_host) and what else it sets."""
    where = f"host entry {n}"
    unknown = sorted(set(item) - _ENTRY_KEYS)
    if unknown:
        raise SettingsError(f"{where}: {unknown[0]!r} is not a host setting", setting="host",
                            hint=f"a host entry may set {', '.join(sorted(_ENTRY_KEYS - {'hostname', 'user'}))}")
    host = item.get("host", item.get("hostname"))
    if not isinstance(host, str) or not host.strip():
        raise SettingsError(f"{where}: no host", setting="host", hint='write {"host": "web1", ...}')
    entry = HostEntry(name=host.strip(), hostname=host.strip(), origin="host entry")
    for key, value in item.items():
        if isinstance(value, dict):
            hint = "CIs resolve from_secret only as a setting's whole value" if "from_secret" in value else None
            raise SettingsError(f"{where}: {key} must be a plain value", setting="host", hint=hint)
    if item.get("port") is not None:
        entry.port = _port(str(item["port"]).strip(), f"{where}: port", "host")
    user = item.get("username", item.get("user"))
    entry.username = str(user).strip() if user is not None else None
    if item.get("key_path"):
        entry.key_paths.append(str(item["key_path"]))
    if item.get("target") is not None:
        entry.target = str(item["target"])
    jump = item.get("jump")
    if jump is not None:
        entry.jump = [str(h).strip() for h in jump] if isinstance(jump, list) else \
            [h.strip() for h in str(jump).split(",") if h.strip()]
    if item.get("proxy_command"):
        entry.proxy_command = str(item["proxy_command"])
    return host.strip(), entry


def describe(host: Any, plan_jumps: list[Any]) -> list[str]:
    """What `sshipit plan` says about a host's own settings before acting: where they came from, the route, the
    key, the target, agent forwarding."""
    lines = []
    if host.origin:
        lines.append(f"settings from {host.origin}")
    if host.proxy_command:
        lines.append(f"reached through ProxyCommand: {host.proxy_command}")
    else:
        jumps = plan_jumps if host.jumps is None else list(host.jumps)
        if jumps:
            lines.append("reached via jump host" + ("s " if len(jumps) > 1 else " ") + " -> ".join(
                f"{hop.host.username}@{hop.host.hostname}:{hop.host.port}" for hop in jumps))
    if host.credentials is not None:
        lines.append(f"logs in with {', '.join(host.credentials.methods())}")
    if host.target is not None:
        lines.append(f"target {host.target} (this host's own)")
    if host.forward_agent:
        lines.append("agent forwarding ON: while connected, root on this server can use the ssh-agent's keys")
    return lines
