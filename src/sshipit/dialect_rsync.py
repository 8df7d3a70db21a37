"""drone-rsync's dialect: which steps are drone-rsync's, and its settings as sshipit's.

Owns rsync's meanings that sshipit reproduces: the trailing-slash rule of `source` (`dist/` is dist's contents,
`dist` is dist itself, nothing is the whole workspace), `include` / `exclude` / `filter` (rsync's first-match-wins
rules, written as the gitignore lines of sshipit's `!pattern` sources), `delete: true` (rsync --delete, within the
synced directory only), `ports`, the RSYNC_KEY / RSYNC_USER variables, the script run in the login's home and
`prescript` run before the sync. dialects.py holds the table and calls these; nothing after the plan knows them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sshipit.errors import SettingsError
from sshipit.settings import Raw, RawSettings, parse_int, parse_list

# drone-rsync's own names: any of them (or `hosts`, its spelling of host, with a target) means its step.
RSYNC_ONLY = ("include", "exclude", "filter", "prescript", "ports", "args", "recursive", "log_level", "pull")


def bool_word(entry: Raw) -> str | None:
    """"true"/"false" for a value shaped like a boolean, "ambiguous" for one that could be either, else None."""
    if entry.items is not None:
        return None
    word = (entry.text or "").strip().lower()
    if word in ("true", "false"):
        return word
    if word in ("yes", "no", "on", "off", "1", "0", "y", "n"):
        return "ambiguous"
    return None


def _items(raw: RawSettings, name: str) -> list[str]:
    entry = raw.known.get(name)
    return parse_list(entry, name) if entry is not None else []


def is_rsync(raw: RawSettings, environ: Mapping[str, str]) -> str | None:
    """A step written for drone-rsync: "named" when one of its own settings or its RSYNC_* secrets says so,
    "hosts" when only `hosts` (its spelling of host, also an alias of ours) with a target and no `sources` of
    ours does; None otherwise."""
    if any(name in raw.extra for name in RSYNC_ONLY) or environ.get("RSYNC_KEY") or environ.get("RSYNC_USER"):
        return "named"
    host, sources = raw.known.get("host"), raw.known.get("sources")
    spelled_hosts = host is not None and host.origin.upper().endswith("_HOSTS")
    # drone-rsync needs a target; without one, `hosts` is sshipit's own alias of host (a commands-only step).
    if spelled_hosts and "target" in raw.known and (sources is None or sources.origin.upper().endswith("_SOURCE")):
        return "hosts"
    return None


def apply(raw: RawSettings, environ: Mapping[str, str], signal: str = "named") -> None:
    known, extra = raw.known, raw.extra
    # Secrets drone-rsync reads from its own variables; RSYNC_USER wins over user there.
    if environ.get("RSYNC_KEY") and "key" not in known and "key_path" not in known:
        known["key"] = Raw(origin="RSYNC_KEY", text=environ["RSYNC_KEY"])
    if environ.get("RSYNC_USER"):
        known["username"] = Raw(origin="RSYNC_USER", text=environ["RSYNC_USER"])
    ports = extra.pop("ports", None)
    if ports is not None:
        _ports(raw, parse_list(ports, "ports"))
    rules = _rsync_rules(raw)
    source_entry = known.get("sources")
    source = "./"
    if source_entry is None and signal == "hosts":
        # Nothing but `hosts` says drone-rsync here, and the two meanings differ in what lands: refuse, never
        # guess (the whole workspace, .git included, is not something to send by accident).
        raise SettingsError("hosts and target without a source: drone-rsync would send the whole workspace, "
                            "sshipit would send nothing", setting="source",
                            hint="set source: ./ for drone-rsync's meaning, or write host instead of hosts for a "
                                 "step that only runs commands")
    if source_entry is not None:
        given = parse_list(source_entry, "source")
        if len(given) != 1:
            raise SettingsError(f"source: drone-rsync syncs one source, got {len(given)}", setting="source",
                                hint="name one directory (dist/ for its contents, dist for itself)")
        source = given[0]
    target = known.get("target")
    if target is None or not (target.text or target.items):
        raise SettingsError("target is not set (drone-rsync needs one: the remote directory to sync into)",
                            setting="target", hint="set target")
    root, sources, strip = rsync_sources(source, rules, Path.cwd())
    origin = source_entry.origin if source_entry else "source (drone-rsync's default ./)"
    if source_entry is None:
        raw.warnings.append("no source: the whole workspace is sent, as drone-rsync does (this step sets "
                            "drone-rsync's own settings); set source to send less")
    known["sources"] = Raw(origin=origin, items=sources)
    if strip:
        if "strip_components" in known:
            raise SettingsError("strip_components cannot be combined with drone-rsync's source ending in /",
                                setting="strip_components", hint="remove strip_components")
        known["strip_components"] = Raw(origin=origin, text=str(strip))
    delete = known.get("delete")
    if delete is not None and bool_word(delete) == "true":
        if rules:
            raise SettingsError("delete: true with include/exclude/filter: rsync keeps remote files its filters "
                                "exclude, sshipit would remove them", setting="delete",
                                hint="remove delete, or drop the filters and list what to upload in source")
        if any(c in source for c in "*?["):
            raise SettingsError("delete: true with a glob source is not supported", setting="delete",
                                hint="name a directory in source (dist/ for its contents)")
        del known["delete"]
        if root:  # `dist` lands as target/dist: rsync --delete cleans target/dist only
            known["delete"] = Raw(origin=delete.origin, items=[root])
        else:  # `dist/` or `./`: the target's contents are the source's
            known["rm"] = Raw(origin=delete.origin, text="true")
    elif delete is not None and bool_word(delete) == "false":
        del known["delete"]
    commands = known.get("commands")
    if commands is not None:  # drone-rsync runs its script in the login's home, not in target
        from sshipit.commas import read_commands

        read = read_commands(commands, "commands", environ, Path.cwd())
        if read.warning:
            raw.warnings.append(read.warning)
        known["commands"] = Raw(origin=commands.origin, items=['cd "$HOME"', *read.items])


def _ports(raw: RawSettings, ports: list[str]) -> None:
    hosts = _items(raw, "host")
    if len(ports) > len(hosts):
        raise SettingsError(f"ports names {len(ports)} ports for {len(hosts)} hosts", setting="ports",
                            hint="give one port per host, in the order of hosts")
    entries = []
    for n, host in enumerate(hosts):
        port = ports[n].strip() if n < len(ports) else ""
        if port:
            parse_int(port, "ports", minimum=1, maximum=65535)
            bare = host.rpartition("@")[2]
            if (bare.startswith("[") and "]:" in bare) or (":" in bare and bare.count(":") == 1):
                raise SettingsError(f"host {host!r} names a port and ports names {port} for it", setting="ports",
                                    hint="give the port in one place")
            if bare.count(":") > 1 and not bare.startswith("["):  # a bare IPv6 address
                user = host[: len(host) - len(bare)]
                host = f"{user}[{bare}]"
            host = f"{host}:{port}"
        entries.append(host)
    raw.known["host"] = Raw(origin=raw.known["host"].origin, items=entries)


@dataclass(frozen=True)
class FilterRule:
    include: bool
    pattern: str


def _rsync_rules(raw: RawSettings) -> list[FilterRule]:
    """include, exclude and filter in the order drone-rsync hands them to rsync (first match wins)."""
    rules: list[FilterRule] = []
    for name in ("include", "exclude", "filter"):
        entry = raw.extra.pop(name, None)
        if entry is None:
            continue
        for item in parse_list(entry, name):
            if name != "filter":
                rules.append(FilterRule(name == "include", item))
                continue
            match = re.fullmatch(r"(\+|-|include|exclude) (.+)", item.strip())
            if not match:
                raise SettingsError(f"filter {item!r}: only `+ pattern` and `- pattern` rules are supported "
                                    "(drone-rsync passes it to rsync --filter)", setting="filter",
                                    hint="write the rule with include or exclude, or as `+ pattern` / `- pattern`")
            rules.append(FilterRule(match.group(1) in ("+", "include"), match.group(2)))
    return rules


def rsync_sources(source: str, rules: list[FilterRule], workspace: Path) -> tuple[str, list[str], int]:
    """drone-rsync's one source and filter rules as sshipit's sources: (name of the source under target, or ""
    when its contents land in target; the sources list; strip_components).

    rsync's trailing-slash rule: `dist/` sends dist's contents, `dist` sends dist itself. Its filter rules (first
    match wins, each path on its own) become gitignore lines (last match wins, a directory's match reaching into
    it), written in reverse: an exclusion as `!line`, an inclusion as `!!line` (a gitignore re-inclusion). The two
    languages differ where an inclusion matches a directory, so the result is checked against rsync's own rules on
    the workspace as it is (`rsync_selection`); where they differ, the exact paths rsync leaves out are written
    instead, and where those are too many the rules are refused: never a silent difference.
    """
    text = source.strip()
    contents = text.endswith("/") or text in (".", "")
    path = os.path.normpath(text) if text else "."
    if path.startswith("../") or path == ".." or path.startswith("/"):
        raise SettingsError(f"source {source!r} is outside the workspace", setting="source",
                            hint="give a path relative to the workspace")
    path = "" if path == "." else path
    if any(c in path for c in "*?["):  # the shell drone-rsync runs expands the glob: each match by its name
        parent = os.path.dirname(path)
        root, strip, transfer = "", parent.count("/") + 1 if parent else 0, parent
    elif contents:
        root, strip, transfer = "", path.count("/") + 1 if path else 0, path
    else:
        parent = os.path.dirname(path)
        root, strip, transfer = os.path.basename(path), parent.count("/") + 1 if parent else 0, parent
    lines: list[str] = []
    for rule in reversed(rules):
        for line in rsync_pattern(rule.pattern, transfer):
            lines.append(("!!" if rule.include else "!") + line)
    if rules:
        lines = _checked(workspace, path, contents, transfer, rules, lines)
    return root, [path or ".", *lines], strip


# Above this many paths left out one by one, the rules are refused (each line costs every file a match).
EXACT_LIMIT = 200


def _tops(workspace: Path, path: str, contents: bool) -> list[str]:
    """The source's first entries, relative to the workspace, as rsync names them on its command line."""
    if any(c in path for c in "*?["):
        import glob

        return sorted(os.path.relpath(m, workspace) for m in glob.glob(str(workspace / path)))
    if contents:
        base = workspace / path if path else workspace
        return sorted(os.path.join(path, n) if path else n for n in os.listdir(base)) if base.is_dir() else []
    return [path] if os.path.lexists(workspace / path) else []


def _walk_kept(workspace: Path, tops: list[str], transfer: str,
               excluded: Callable[[str, str, bool], bool]) -> tuple[set[str], list[str]]:
    """(paths kept, topmost paths left out) for a walk that does not enter what is left out or a symlink.
    `excluded(name relative to the transfer root, path relative to the workspace, is a directory)`."""
    kept: set[str] = set()
    out: list[str] = []
    todo = list(reversed(tops))
    while todo:
        rel = todo.pop()
        full = workspace / rel
        is_dir = full.is_dir() and not full.is_symlink()
        name = rel[len(transfer) + 1:] if transfer else rel
        if excluded(name, rel, is_dir):
            out.append(rel)
            continue
        kept.add(rel)
        if is_dir:
            try:
                children = sorted(os.listdir(full))
            except OSError:
                continue  # collect() says what is wrong with it
            todo += [f"{rel}/{child}" for child in reversed(children)]
    return kept, out


def _checked(workspace: Path, path: str, contents: bool, transfer: str, rules: list[FilterRule],
             lines: list[str]) -> list[str]:
    import pathspec

    matchers = [(rule.include, rsync_matcher(rule.pattern)) for rule in rules]

    def by_rsync(name: str, _rel: str, is_dir: bool) -> bool:
        return next((not include for include, match in matchers if match(name, is_dir)), False)

    spec = pathspec.GitIgnoreSpec.from_lines([line[1:] for line in lines])

    def by_gitignore(_name: str, rel: str, is_dir: bool) -> bool:
        return bool(spec.match_file(rel + "/" if is_dir else rel))

    tops = _tops(workspace, path, contents)
    want, out = _walk_kept(workspace, tops, transfer, by_rsync)
    if want == _walk_kept(workspace, tops, transfer, by_gitignore)[0]:
        return lines
    if len(out) > EXACT_LIMIT:
        raise SettingsError(f"include/exclude/filter: these rules cannot be written as sshipit's exclusions for this "
                            f"workspace ({len(out)} paths would be left out one by one)", setting="include",
                            hint="drop directory includes such as `*/`; exclude what is not wanted instead")
    return ["!/" + re.sub(r" \Z", r"\\ ", _GLOB.sub(r"\\\1", rel)) for rel in out]  # gitignore drops a trailing space


def rsync_matcher(pattern: str) -> Callable[[str, bool], bool]:
    """rsync's own meaning of one include/exclude pattern, for a name relative to the transfer root."""
    text = pattern.strip()
    dir_only = text.endswith("/") and not text.endswith("/***")
    anchored = text.startswith("/")
    body = text.strip("/") if dir_only else text.lstrip("/")
    tail_all = body.endswith("/***")
    if tail_all:
        body = body[:-4]
    regex = _glob_regex(body)
    whole = re.compile(regex + r"\Z", re.S)
    inside = re.compile(regex + r"/.*\Z", re.S)  # `dir/***`: what is in dir (dir itself: as `dir/`)
    full_path = "/" in body or "**" in body or tail_all
    depth = body.count("/") + 1

    def fits(text: str, is_dir: bool) -> bool:
        if tail_all:
            return bool(inside.match(text)) or (is_dir and bool(whole.match(text)))
        return (is_dir or not dir_only) and bool(whole.match(text))

    def match(name: str, is_dir: bool) -> bool:
        if anchored:
            return fits(name, is_dir)
        parts = name.split("/")
        if not full_path:
            return fits(parts[-1], is_dir)
        if "**" in body or tail_all:  # at any directory boundary, the root's too (`**/tmp` matches `tmp`)
            return fits("/" + name, is_dir) or any(fits("/".join(parts[n:]), is_dir) for n in range(len(parts)))
        return len(parts) >= depth and fits("/".join(parts[-depth:]), is_dir)

    return match


def _glob_regex(pattern: str) -> str:
    out, n = [], 0
    while n < len(pattern):
        c = pattern[n]
        if pattern.startswith("**", n):
            out.append(".*")
            n += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", n + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                inner = pattern[n + 1:end]
                inner = "^" + inner[1:] if inner.startswith("!") else inner
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                n = end
        elif c == "\\" and n + 1 < len(pattern):
            n += 1
            out.append(re.escape(pattern[n]))
        else:
            out.append(re.escape(c))
        n += 1
    return "".join(out)


_GLOB = re.compile(r"([*?\[\\])")


def rsync_pattern(pattern: str, transfer: str) -> list[str]:
    """One rsync filter pattern as gitignore lines, for a transfer rooted at `transfer` (relative to the workspace).

    A pattern without a leading / matches at any depth below the transfer root (its last components, or the
    whole path for one holding ** or /); a leading / anchors it at the root; a trailing / matches directories;
    `dir/***` is dir and everything in it; ** inside a name matches across directories (here: at any depth).
    """
    text = pattern.strip()
    if not text or text in ("/", "!"):
        raise SettingsError(f"filter pattern {pattern!r} is not supported", setting="exclude",
                            hint="write a file or directory pattern")
    anchored = text.startswith("/")
    body = text.lstrip("/")
    bodies = [body]
    if body.endswith("/***"):
        bodies = [body[:-4] + "/", body[:-4] + "/**"]
    base = _GLOB.sub(r"\\\1", transfer) if transfer else ""
    prefix = (f"/{base}/" if base else "/") if anchored else (f"/{base}/**/" if base else "**/")
    if not anchored and body.startswith("**/"):  # `**/x` already reaches any depth
        prefix = f"/{base}/" if base else ""
    lines = []
    for one in bodies:
        parts = [p if p == "**" else p.replace("**", "*") for p in one.split("/")]
        lines.append(prefix + "/".join(parts))
    return lines


_NOT_IN_PRESCRIPT = ("sources", "strip_components", "dereference", "rm", "delete", "prune", "commands",
                     "script_file", "atomic", "rollback", "shared", "post_commands", "healthcheck", "target")


def prescript_run(raw: RawSettings, prescript: Raw, environ: Mapping[str, str]) -> RawSettings:
    """drone-rsync's prescript: commands run on every host before the sync, in the login's home, stopping at the
    first failure (the sync and script then do not happen)."""
    from sshipit.commas import read_commands

    read = read_commands(prescript, "prescript", environ, Path.cwd())
    known = {name: entry for name, entry in raw.known.items() if name not in _NOT_IN_PRESCRIPT}
    known["commands"] = Raw(origin=prescript.origin, items=['cd "$HOME"', *read.items])
    known["script_stop"] = Raw(origin=prescript.origin, text="true")
    return RawSettings(known=known, extra=dict(raw.extra), warnings=[read.warning] if read.warning else [])
