"""Turning the runs into medians, the Markdown table, the targets (PASS/MISS) and the chart."""

from __future__ import annotations

import shutil
import statistics
from collections import defaultdict
from pathlib import Path

BASELINES = (("tar", "OpenSSH tar"), ("rsync", "rsync -a"))
LINK_TITLES = {"loopback": "loopback (127.0.0.1)", "50mbit": "50 Mbit/s link (veth + tbf, both directions)"}
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
EVERYDAY_BEGIN, EVERYDAY_END = "<!-- bench-everyday:begin -->", "<!-- bench-everyday:end -->"


def medians(runs: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """link -> scenario -> tool -> {seconds, sent, received, peak_rss, ok, n} (medians of the good runs)."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["link"], run["scenario"], run["tool"])].append(run)
    result: dict = defaultdict(lambda: defaultdict(dict))
    for (link, scenario, tool), group in groups.items():
        good = [r for r in group if r.get("ok")]
        entry: dict = {"n": len(group), "ok": len(good)}
        for key in ("seconds", "cpu", "sent", "received", "peak_rss"):
            values = [r[key] for r in good if key in r]
            if values:
                entry[key] = statistics.median(values)
        if len(good) < len(group):
            entry["error"] = next(r.get("error", "") for r in group if not r.get("ok"))
        result[link][scenario][tool] = entry
    return {link: dict(by_scenario) for link, by_scenario in result.items()}


# ---------------------------------------------------------------------------
# formatting


def fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s" if s < 100 else f"{s:.0f} s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "–"
    return f"{b / 1e3:.0f} kB" if b < 1e6 else f"{b / 1e6:.1f} MB" if b < 1e9 else f"{b / 1e9:.2f} GB"


def fmt_ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    r = value / base
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}" if r >= 0.001 else f"{r:.0e}"


def _tool_order(results: dict) -> list[str]:
    return list(results["tools"])


def scenario_table(results: dict, link: str, scenario: str) -> str:
    rows = results["medians"][link][scenario]
    labels = {k: v["label"] for k, v in results["tools"].items()}
    head = ["tool", "time"] + [f"×{b}" for b, _ in BASELINES] + ["sent"] + [f"×{b}" for b, _ in BASELINES]
    head += ["peak RSS"] + [f"×{b}" for b, _ in BASELINES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tool in _tool_order(results):
        if tool not in rows:
            continue
        m = rows[tool]
        cells = [f"**{labels[tool]}**" if tool == "sshipit" else labels[tool]]
        if m["ok"] == 0:
            lines.append("| " + " | ".join(cells + [f"FAILED ({m.get('error', '')[:60]})"] + [""] * 8) + " |")
            continue
        for key, fmt in (("seconds", fmt_time), ("sent", fmt_bytes), ("peak_rss", fmt_bytes)):
            cells.append(fmt(m.get(key)))
            for base, _label in BASELINES:
                cells.append(fmt_ratio(m.get(key), rows.get(base, {}).get(key)))
        if m["ok"] < m["n"]:
            cells[0] += f" ({m['n'] - m['ok']}/{m['n']} runs failed)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# targets


def _get(results: dict, link: str, scenario: str, tool: str, key: str = "seconds") -> float | None:
    m = results["medians"].get(link, {}).get(scenario, {}).get(tool)
    if not m or not m.get("ok"):
        return None
    return m.get(key)


def _many_hosts(scenario: str) -> bool:
    return scenario.startswith("fanout-") and scenario != "fanout-1"


EVERYDAY_REDEPLOYS = (("nochange-kept", "no-change redeploy, mtimes kept"),
                      ("nochange-new", "no-change redeploy, new mtimes"),
                      ("changed-kept", "1%-changed redeploy, mtimes kept"),
                      ("changed-new", "1%-changed redeploy, new mtimes"))


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, PASS/MISS/n/a) for each of the issue's targets."""
    out: list[tuple[str, str, str, str]] = []

    def ratio_row(name: str, value: float | None, base: float | None, goal: float, base_name: str,
                  higher_is_better: bool = False) -> None:
        if value is None or not base:
            out.append((name, "not measured", f"{'≥' if higher_is_better else '≤'} {goal}× {base_name}", "n/a"))
            return
        r = value / base
        ok = r >= goal if higher_is_better else r <= goal
        out.append((name, f"{r:.2f}× {base_name}", f"{'≥' if higher_is_better else '≤'} {goal}×",
                    "PASS" if ok else "MISS"))

    if results["meta"]["workload"]["name"] == "everyday":  # run.py --everyday: the everyday goals
        ratio_row("everyday build, fresh deploy: time", _get(results, "loopback", "fresh", "sshipit"),
                  _get(results, "loopback", "fresh", "tar"), 1.0, "OpenSSH tar")
        for scenario, title in EVERYDAY_REDEPLOYS:
            ratio_row(f"everyday build, {title}: time", _get(results, "loopback", scenario, "sshipit"),
                      _get(results, "loopback", scenario, "rsync"), 1.0, "rsync -a")
        return out
    ratio_row("fresh deploy, loopback: time", _get(results, "loopback", "fresh", "sshipit"),
              _get(results, "loopback", "fresh", "tar"), 1.1, "OpenSSH tar")
    for scenario, title in (("nochange", "no-change redeploy"), ("changed", "1%-changed redeploy")):
        for link in ("loopback", "50mbit"):
            ratio_row(f"{title}, {link}: time", _get(results, link, scenario, "sshipit"),
                      _get(results, link, scenario, "rsync"), 1.0, "rsync -a")
    candidates = [v for v in (_get(results, "50mbit", "fresh", "rsync-z"), _get(results, "50mbit", "fresh", "tar-gz"))
                  if v is not None]
    ratio_row("fresh deploy, 50 Mbit/s: time", _get(results, "50mbit", "fresh", "sshipit"),
              min(candidates) if candidates else None, 1.0, "best of rsync -az, tar|gzip")
    tar_large, ours_large = _get(results, "loopback", "large", "tar"), _get(results, "loopback", "large", "sshipit")
    ratio_row("large file, loopback: throughput", tar_large, ours_large, 0.8, "OpenSSH tar", higher_is_better=True)
    # The memory goal is about the artifact's size (one host); many hosts share one process, so they are shown
    # apart, per host.
    peaks = [m["peak_rss"] for by_s in results["medians"].values() for scenario, by_t in by_s.items()
             if not _many_hosts(scenario) for tool, m in by_t.items() if tool == "sshipit" and "peak_rss" in m]
    if peaks:
        worst = max(peaks)
        out.append(("peak memory, every one-host scenario", f"{worst / 1e6:.0f} MB", "< 100 MB",
                    "PASS" if worst < 100e6 else "MISS"))
    else:
        out.append(("peak memory, every one-host scenario", "not measured", "< 100 MB", "n/a"))
    fan_peaks = [(int(scenario.split("-")[1]), m["peak_rss"]) for scenario, by_t in
                 results["medians"].get("loopback", {}).items() if _many_hosts(scenario)
                 for tool, m in by_t.items() if tool == "sshipit" and "peak_rss" in m]
    if fan_peaks:
        hosts, peak = max(fan_peaks)
        out.append((f"peak memory, {hosts} hosts from one process", f"{peak / 1e6:.0f} MB "
                    f"({peak / hosts / 1e6:.1f} MB a host)", "(no goal)", "info"))
    fan = sorted((int(s.split("-")[1]), s) for s in results["medians"].get("loopback", {}) if s.startswith("fanout-"))
    if len(fan) >= 2:
        (_one, first), (most, last) = fan[0], fan[-1]
        ratio_row(f"fan-out: {most} hosts vs 1: time", _get(results, "loopback", last, "sshipit"),
                  _get(results, "loopback", first, "sshipit"), 2.0, "one host")
    return out


# ---------------------------------------------------------------------------
# the report


def body(results: dict) -> str:
    """The tables and targets, without a title (what the README's Benchmark section holds)."""
    meta = results["meta"]
    wl = meta["workload"]
    parts = [
        f"Run {meta['date']} on {meta['machine']} ({meta['ssh']}; {meta['rsync']}); sshipit at "
        f"{meta['git']['commit']}{' + uncommitted changes' if meta['git']['src_dirty'] == 'yes' else ''}. "
        f"Workload `{wl['name']}`: {wl['files']} files, {wl['bytes'] / 1e6:.0f} MB ({wl['changed']} changed in the "
        f"1% variant), large file {wl['large_bytes'] / 1e6:.0f} MB; redeploys with "
        f"{'kept or new (as the scenario says)' if wl['name'] == 'everyday' else meta['mtimes']} mtimes; "
        f"targets on {meta.get('targets', 'disk')}. "
        f"Medians of {meta['runs']} run(s) per tool"
        + (f" ({meta['slow_runs']} on the 50 Mbit/s link)" if "50mbit" in meta["links"] else "")
        + ", interleaved. Ratios: ×tar = divided by OpenSSH tar's figure, ×rsync = by rsync -a's, same scenario "
        "and link (lower is better)." + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        "| target | measured | goal | result |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | **{d}** |" for a, b, c, d in targets(results)),
    ]
    for link in meta["links"]:
        if link not in results["medians"]:
            continue
        parts += ["", f"#### {LINK_TITLES.get(link, link)}"]
        for scenario, title in results["scenarios"].items():
            if scenario in results["medians"][link]:
                parts += ["", f"{title}:", "", scenario_table(results, link, scenario)]
    if not meta.get("bytes_measured"):
        parts += ["", "Bytes on the wire were not measured (needs root and iptables)."]
    return "\n".join(parts) + "\n"


def markdown(results: dict) -> str:
    return "# sshipit benchmark\n\n" + body(results)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(link, scenario) for link in results["meta"]["links"] for scenario in results["scenarios"]
              if scenario in results["medians"].get(link, {})]
    if not panels:
        return
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    labels = {k: v["label"] for k, v in results["tools"].items()}
    for ax, (link, scenario) in zip(axes.flat, panels, strict=False):
        data = results["medians"][link][scenario]
        tools = [t for t in _tool_order(results) if t in data and "seconds" in data[t]]
        values = [data[t]["seconds"] for t in tools]
        colors = ["#e4572e" if t == "sshipit" else "#4c78a8" if t in ("tar", "rsync") else "#9aa5b1" for t in tools]
        bars = ax.barh(range(len(tools)), values, color=colors)
        ax.set_yticks(range(len(tools)), [labels[t] for t in tools], fontsize=8)
        ax.invert_yaxis()
        short = results.get("scenarios_short", {}).get(scenario, scenario)
        ax.set_title(f"{'loopback' if link == 'loopback' else '50 Mbit/s'}: {short}", fontsize=9)
        ax.set_xlabel("seconds (median, lower is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        top = max(values) if values else 1
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, fmt_time(value),
                    va="center", fontsize=7)
        ax.set_xlim(0, top * 1.25)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"sshipit benchmark — wall time per deploy ({results['meta']['workload']['name']} workload, "
                 f"{results['meta']['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(results: dict, png: Path, repo: Path) -> None:
    """Copy the chart to docs/bench.png and put the tables between the README's bench markers (an everyday run:
    docs/bench-everyday.png and the bench-everyday markers)."""
    everyday = results["meta"]["workload"]["name"] == "everyday"
    begin, end_marker = (EVERYDAY_BEGIN, EVERYDAY_END) if everyday else (README_BEGIN, README_END)
    (repo / "docs").mkdir(exist_ok=True)
    shutil.copyfile(png, repo / "docs" / ("bench-everyday.png" if everyday else "bench.png"))
    readme = repo / "README.md"
    text = readme.read_text()
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        print(f"bench: README.md has no {begin} ... {end_marker} markers; table not published")
        return
    text = text[: start + len(begin)] + "\n" + body(results) + text[end:]
    readme.write_text(text)
    print("bench: published docs/bench.png and the README's Benchmark tables")
