"""What a CI shows besides the log: Drone's card, GitHub's step summary and step outputs.

- Drone (server 2.6+, docker runner 1.8+) sets `DRONE_CARD_PATH`, `/dev/stdout` by default. One Adaptive Card
  per step, as JSON `{"schema": <template URL>, "data": {...}}`: on stdout it travels base64-encoded between
  ESC `]1338;` and ESC `]0m`, alone at the start of a line (the runner cuts it out of the log and shows the
  card); any other path gets the raw JSON. The template is docs/card.json, fetched by the Drone UI.
- GitHub Actions names two files to append to: `GITHUB_STEP_SUMMARY` (Markdown shown on the run's page) and
  `GITHUB_OUTPUT` (`name=value` lines: `release`, `result`, `hosts_failed`).

These are extras: a file that cannot be written (the Drone tag of the image runs as uid 1000) costs one warning,
never the deploy. Every text that goes out passes the secret masker and is made inert (rules.neutralise: a
server's text or a file name shows its control characters as escapes), like every console line.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from sshipit.report import Console, HostResult, human_bytes
from sshipit.rules import neutralise

if TYPE_CHECKING:
    from sshipit.plan import Plan

# The Adaptive Card template the Drone UI renders the card's data with (this repository's docs/card.json).
CARD_SCHEMA = "https://raw.githubusercontent.com/sshipit/sshipit/main/docs/card.json"
CARD_START, CARD_END = "\x1b]1338;", "\x1b]0m"
_COMMITS = ("DRONE_COMMIT_SHA", "CI_COMMIT_SHA", "GITHUB_SHA")


def publish(
    console: Console,
    environ: Mapping[str, str],
    seconds: float,
    status: int,
    results: list[HostResult] | None = None,
    plan: Plan | None = None,
    error: str | None = None,
) -> None:
    """Write whatever the CI running us can show. `error` is the line of a failure that stopped the deploy
    before any host (bad settings); `results` are the hosts' outcomes otherwise."""
    if plan is not None and plan.dry_run:
        return  # a plan changes nothing: no card, no outputs that a later step could take for a deploy
    card_path = environ.get("DRONE_CARD_PATH", "")
    summary_path = environ.get("GITHUB_STEP_SUMMARY", "")
    output_path = environ.get("GITHUB_OUTPUT", "")
    if not (card_path or summary_path or output_path):
        return
    data = cast(dict[str, object], _masked(card_data(results or [], plan, environ, seconds, status, error), console))
    problems: list[str] = []
    if card_path:
        text = json.dumps({"schema": CARD_SCHEMA, "data": data}, sort_keys=True)
        if card_path == "/dev/stdout":
            console.card(CARD_START + base64.b64encode(text.encode()).decode() + CARD_END)
        else:
            problems += _write("DRONE_CARD_PATH", card_path, text, "w")
    if summary_path:
        problems += _write("GITHUB_STEP_SUMMARY", summary_path, markdown(data), "a")
    if output_path:
        outputs = {"release": data["release_id"], "result": data["result"], "hosts_failed": data["hosts_failed"]}
        if data["mode"] == "releases":  # list_releases: the live release per host, as JSON (null: none)
            outputs["releases"] = json.dumps(data["live"], separators=(",", ":"), sort_keys=True)
        lines = "".join(f"{name}={' '.join(str(value).split())}\n" for name, value in outputs.items())
        problems += _write("GITHUB_OUTPUT", output_path, lines, "a")
    if problems:
        console.warn(f"could not write {'; '.join(problems)}; the deploy itself is not affected")


def card_data(
    results: list[HostResult], plan: Plan | None, environ: Mapping[str, str], seconds: float, status: int,
    error: str | None = None,
) -> dict[str, object]:
    """The card's data (docs/card.json binds these names), also the source of the GitHub summary and outputs."""
    failed = [r for r in results if not r.ok and not r.skipped]
    skipped = [r for r in results if r.skipped]
    ok = status == 0 and error is None
    releases = sorted({r.release for r in results if r.ok and r.release})
    rollback = plan is not None and plan.rollback
    total = len(results)
    noun = f"{total} host{'s' if total != 1 else ''}"
    if error is not None:
        title = "Deploy failed before any host was contacted"
    elif not ok:
        title = f"Deploy failed on {len(failed)} of {noun}"
    elif failed:
        title = f"Deployed to {total - len(failed) - len(skipped)} of {noun} ({len(failed)} failed, within " \
                "max_failures)"
    else:
        title = f"Rolled back {noun}" if rollback else f"Deployed to {noun}"
        if plan is not None and plan.phase == "prepare":  # a split deploy's prepare job: nothing went live
            title = f"Prepared release {plan.release.id} on {noun}; nothing switched"
    listing = plan is not None and plan.list_releases
    if listing:
        title = f"Releases on {noun}" if ok and error is None else \
            f"Listing releases failed on {len(failed)} of {noun}" if error is None else title
    commit = plan.release.commit if plan is not None else next((environ[v] for v in _COMMITS if environ.get(v)), "")
    repo = plan.release.repo if plan is not None else ""
    build = plan.release.build if plan is not None else ""
    files = sum(r.upload.files for r in results if r.upload is not None)
    size = sum(r.upload.bytes for r in results if r.upload is not None)
    sent = sum(r.upload.wire_bytes or r.upload.bytes for r in results if r.upload is not None)
    subtitle = " · ".join(part for part in (repo, f"build {build}" if build else "", f"{seconds:.1f}s") if part)
    return {
        "title": title,
        "subtitle": subtitle,
        "result": "ok" if ok else "failed",
        "color": "Good" if ok and not failed else "Warning" if ok else "Attention",
        "error": error or "",
        "mode": "releases" if listing else "rollback" if rollback else "atomic" if plan is not None and plan.atomic
        else "plain",
        "release": ", ".join(releases) or "-",
        "release_id": releases[0] if len(releases) == 1 else ",".join(releases),
        "commit": commit[:7] or "-",
        "commit_sha": commit,
        "repo": repo,
        "build": build,
        "hosts_total": total,
        "hosts_ok": sum(1 for r in results if r.ok),
        "hosts_failed": len(failed),
        "hosts_skipped": len(skipped),
        "files": files,
        "bytes": size,
        "size": human_bytes(size),
        "sent_bytes": sent,
        "sent": human_bytes(sent),
        "seconds": round(seconds, 3),
        "duration": f"{seconds:.1f}s",
        "hosts": [_host_row(r) for r in results],
        "releases": _release_rows(results) if listing else [],
        "live": {r.host.label: r.release for r in results if r.listing is not None},
    }


CARD_RELEASES = 20  # rows per host on the card and in the summary: the newest; the log lists them all


def _release_rows(results: list[HostResult]) -> list[dict[str, object]]:
    """list_releases: a row per host and release (release_list.py says what each field is)."""
    from sshipit.release_list import missing_on, release_rows

    lacking = missing_on(results)
    return [{"host": r.host.label, "id": row[0], "created": row[1], "commit": row[2], "state": row[3],
             "size": row[4], "note": row[5]}
            for r in results if r.listing is not None for row in release_rows(r.listing, lacking)[:CARD_RELEASES]]


def _host_row(r: HostResult) -> dict[str, object]:
    result = "skipped" if r.skipped else "ok" if r.ok else "failed"
    return {
        "host": r.host.label,
        "result": result,
        "color": {"ok": "Good", "failed": "Attention"}.get(result, "Warning"),
        "release": r.release or "-",
        "duration": f"{r.seconds:.1f}s",
        "files": r.upload.files if r.upload is not None else 0,
        "sent": human_bytes(r.upload.wire_bytes or r.upload.bytes) if r.upload is not None else "-",
        "error": (r.error or "").removeprefix(f"{r.host.label}: ") if not r.ok else "",
    }


def markdown(data: dict[str, object]) -> str:
    """The GitHub step summary: a heading, a row per host, the release line."""
    mark = "✅" if data["result"] == "ok" else "❌"
    lines = [f"### {mark} sshipit: {data['title']}", ""]
    if data["error"]:
        lines += [f"> {_cell(str(data['error']))}", ""]
    hosts = data["hosts"]
    assert isinstance(hosts, list)
    if hosts:
        lines += ["| result | host | release | time | sent | error |", "|---|---|---|--:|--:|---|"]
        lines += [f"| {row['result']} | {_cell(str(row['host']))} | {_cell(str(row['release']))} | "
                  f"{row['duration']} | {row['sent']} | {_cell(str(row['error']))} |" for row in hosts]
        lines.append("")
    releases = data.get("releases")
    if data["mode"] == "releases" and isinstance(releases, list):
        lines += ["| host | release | created | commit | state | size | note |", "|---|---|---|---|---|--:|---|"]
        lines += [f"| {_cell(str(row['host']))} | {_inert(str(row['id']))} | {row['created']} | {row['commit']} | "
                  f"{row['state']} | {row['size']} | {_inert(str(row['note']))} |" for row in releases]
        lines += ["", f"at most {CARD_RELEASES} releases per host, the newest · {data['duration']}"]
        return "\n".join(lines) + "\n\n"
    lines.append(f"release `{data['release']}` · commit `{data['commit']}` · {data['files']} files "
                 f"({data['size']}, {data['sent']} sent) · {data['duration']}")
    return "\n".join(lines) + "\n\n"


def _cell(text: str) -> str:
    """A Markdown table cell: one line, no column breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def _inert(text: str) -> str:
    """A cell of a server's text (a release's name): every Markdown mark escaped, so a name never becomes a link,
    an image, a code span or a column break."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~&])", r"\\\1", " ".join(text.split()))


def _masked(value: object, console: Console) -> object:
    if isinstance(value, str):
        return neutralise(console.masker(value))
    if isinstance(value, list):
        return [_masked(item, console) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item, console) for key, item in value.items()}
    return value


def _write(name: str, path: str, text: str, mode: str) -> list[str]:
    """Write or append; on failure, the reason for the one warning."""
    try:
        with open(path, mode, encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        return [f"{name} ({path}): {exc.strerror or exc}"]
    return []
