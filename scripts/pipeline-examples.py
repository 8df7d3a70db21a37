"""Write every pipeline example of README.md and docs/*.md into a directory, one YAML file per pipeline, grouped by
the check-jsonschema built-in schema that fits its CI (scripts/lint validates them):

    OUT/drone-ci/..., OUT/woodpecker-ci/..., OUT/github-workflows/..., OUT/gitlab-ci/...

The blocks and their CI come from tests/test_docs.py (the same reading that runs them). A block that is only a
part of a pipeline (GitHub steps, a Drone step list) is wrapped in the smallest pipeline around it, so the schema
checks the part as the CI would see it. Prints one line per file: `schema file page:line`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from test_docs import BLOCKS  # noqa: E402  (tests/ on the path first)

SCHEMAS = {"drone": "drone-ci", "woodpecker": "woodpecker-ci", "github": "github-workflows", "gitlab": "gitlab-ci"}


def pipelines(ci: str, text: str) -> list[Any]:
    """The pipelines a block holds, each as the whole document its CI reads."""
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    found: list[Any] = []
    for data in documents:
        if isinstance(data, dict) and True in data:  # YAML 1.1 reads GitHub's `on:` key as the boolean true
            data = {("on" if key is True else key): value for key, value in data.items()}
        if ci == "github":
            if isinstance(data, list):  # steps
                data = {"steps": data}
            if isinstance(data, dict) and "jobs" not in data:
                if "steps" in data and "runs-on" not in data:
                    data = {"runs-on": "ubuntu-latest", **data}
                data = {"name": "example", "on": "push", "jobs": {"deploy": data}}
        elif ci == "drone":
            if isinstance(data, dict) and "kind" not in data:
                if "image" not in data:  # a step's settings
                    data = {"image": "sshipit/sshipit", **data}
                data = [{"name": "deploy", **data}]  # a step
            if isinstance(data, list):  # a step list
                data = {"kind": "pipeline", "type": "docker", "name": "default", "steps": data}
        found.append(data)
    return found


def main(out: Path) -> int:
    count = 0
    for block in BLOCKS:
        schema = SCHEMAS.get(block.ci)
        if schema is None or block.lang != "yaml":
            continue
        for n, data in enumerate(pipelines(block.ci, block.text)):
            path = out / schema / f"{block.page.stem}-{block.line}-{n}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            print(f"{schema} {path} {block.id}")
            count += 1
    return 0 if count else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
