"""Recovering the command list that Drone or Woodpecker flattened into one comma-joined string.

Both CIs join a list of scalars with `,`, so `["echo a,b", "ls"]` and `["echo a", "b", "ls"]` arrive alike.
This module uses the lossless sources first (a JSON array, a block string, the pipeline file read back and
verified against what arrived) and only then splits, at top-level commas, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sshipit.settings import Raw, json_list, normalise

AMBIGUITY_HINT = (
    "a comma-joined list cannot tell 'a,b' from two items; write the commands as one block "
    "(commands: |), or as a JSON array string, to be exact"
)


@dataclass
class Commands:
    items: list[str]
    how: str  # flags, json, pipeline-file, block, single, split
    warning: str | None = None


def read_commands(raw: Raw, name: str, environ: Mapping[str, str], workspace: Path) -> Commands:
    if raw.items is not None:
        return Commands([item for item in raw.items if item.strip()], "flags")
    text = raw.text or ""
    from_json = json_list(text, name)
    if from_json is not None:
        return Commands([item for item in from_json if item.strip()], "json")
    if "," in text:
        recovered = recover_from_pipeline_file(raw.origin, text, environ, workspace)
        if recovered is not None:
            return Commands([item for item in recovered if item.strip()], "pipeline-file")
    if "\n" in text.strip():
        # A block string (`script: |`) is one script; if/else, loops and heredocs inside stay whole.
        return Commands([text], "block")
    parts = split_top_level(text)
    if len(parts) <= 1:
        return Commands([text.strip()] if text.strip() else [], "single")
    warning = (
        f"{raw.origin} was split at top-level commas into {len(parts)} commands; {AMBIGUITY_HINT}"
    )
    return Commands(parts, "split", warning)


def split_top_level(text: str) -> list[str]:
    """Split at commas outside quotes, brackets, `$(...)`, `${...}` and backticks.

    A comma followed by white space is kept too: the CIs join items with a bare comma, and prose in a command
    (`echo Hello, world`) has a space after it.
    """
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0 and not text[i + 1: i + 2].isspace():
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


# --------------------------------------------------------------------------------------- pipeline file read-back

_SUBST = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """Drone's and Woodpecker's pre-parse substitution: `${VAR}` -> value or empty, `$$` -> `$`."""
    return _SUBST.sub(lambda m: "$" if m.group(0) == "$$" else environ.get(m.group(1), ""), text)


def pipeline_files(workspace: Path) -> list[Path]:
    candidates = [workspace / ".drone.yml", workspace / ".drone.yaml", workspace / ".woodpecker.yml",
                  workspace / ".woodpecker.yaml"]
    folder = workspace / ".woodpecker"
    if folder.is_dir():
        candidates += sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])
    return [path for path in candidates if path.is_file()]


def _steps(document: object) -> Iterator[tuple[str, Mapping[str, object]]]:
    if not isinstance(document, Mapping):
        return
    for key in ("steps", "pipeline"):
        steps = document.get(key)
        if isinstance(steps, list):
            for step in steps:
                if isinstance(step, Mapping) and isinstance(step.get("name"), str):
                    yield step["name"], step
        elif isinstance(steps, Mapping):  # Woodpecker's and Drone 0.8's map form: name -> step
            for name, step in steps.items():
                if isinstance(step, Mapping):
                    yield str(step.get("name", name)), step


def _candidate_lists(step: Mapping[str, object], env_var: str) -> Iterable[list[object]]:
    settings = step.get("settings")
    sources = [settings] if isinstance(settings, Mapping) else []
    sources.append(step)  # Drone 0.8 put plugin settings on the step itself
    wanted = env_var.partition("_")[2]
    for source in sources:
        assert isinstance(source, Mapping)
        for key, value in source.items():
            if not isinstance(value, list):
                continue
            key = str(key)
            # Drone: PLUGIN_ + upper-cased key; Woodpecker: `-` and `.` become `_` first.
            if key.upper() == wanted or normalise(key).upper() == normalise(wanted).upper():
                yield value


def recover_from_pipeline_file(
    env_var: str, received: str, environ: Mapping[str, str], workspace: Path
) -> list[str] | None:
    """The list as written in the pipeline file, but only if joining it reproduces exactly what arrived.

    The file may have been templated, converted or substituted before the CI used it, so an unverified read is
    never trusted.
    """
    step_name = environ.get("DRONE_STEP_NAME") or environ.get("CI_STEP_NAME")
    if not step_name or not env_var.startswith(("PLUGIN_", "INPUT_")):
        return None
    files = pipeline_files(workspace)
    if not files:
        return None
    import yaml  # only needed on this path; keeps start-up light

    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for document in documents:
            for name, step in _steps(document):
                if name != step_name:
                    continue
                for items in _candidate_lists(step, env_var):
                    if not all(isinstance(item, str) for item in items):
                        continue
                    strings = [str(item) for item in items]
                    for candidate in (strings, [substitute(item, environ) for item in strings]):
                        if ",".join(candidate) == received:
                            return candidate
    return None
