"""Drone's card as users see it: docs/card.json filled with a real deploy's card data (DRONE_CARD_PATH) by the
Adaptive Cards templating library and drawn by the Adaptive Cards renderer, the npm packages `adaptivecards-templating`
and `adaptivecards` that Drone's UI renders a step's card with: the template is expanded by tests/card/expand.js in
Node (the library's browser build expects a bundler), the card is rendered in headless Chromium (Debian's
`chromium`). The rendered page's text must show the title, each host, the release and the result; a screenshot is
taken.

The renderer comes from tests/card/ (package.json and package-lock.json pin it; `scripts/install --test` runs
`npm ci` there, into tests/card/node_modules/, not committed). docs/card.png, the README's picture, is this test's
screenshot of the successful deploy: SSHIPIT_UPDATE_CARD_PNG=1 writes it there, otherwise it goes to tmp_path.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import plugin_env
from sshipit.localserver import KeyPair, LocalServer

REPO = Path(__file__).resolve().parents[1]
MODULES = REPO / "tests/card/node_modules"
TEMPLATE = REPO / "docs/card.json"
COMMIT = "5f2a0c1d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49"
DRONE = {"DRONE": "true", "CI": "true", "DRONE_REPO": "octo/app", "DRONE_COMMIT_SHA": COMMIT,
         "DRONE_BUILD_NUMBER": "42", "DRONE_COMMIT_BRANCH": "main"}
# As the issue asks: a fresh profile, and nothing that reaches out of this machine.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>card</title>
<link rel="stylesheet" href="{css}">
<style>body {{ margin: 0; padding: 16px; background: #f5f5f5; font-family: "DejaVu Sans", sans-serif; }}
#card {{ width: 640px; background: #fff; border: 1px solid #e0e0e0; border-radius: 4px; }}</style>
</head><body><div id="card"></div><div id="status">rendering</div>
<script src="{renderer}"></script>
<script>
try {{
  const payload = {payload};
  const card = new AdaptiveCards.AdaptiveCard();
  card.parse(payload);
  document.getElementById("card").appendChild(card.render());
  document.getElementById("status").textContent = "rendered";
  document.getElementById("status").style.display = "none";
}} catch (e) {{
  document.getElementById("status").textContent = "render error: " + e + " " + e.stack;
}}
</script></body></html>
"""


class _Text(HTMLParser):
    """The visible text of the rendered card, one string per text node."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(" ".join(data.split()))


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is missing: `scripts/install --test` installs Debian's chromium")
    for name in ("adaptivecards/dist/adaptivecards.min.js", "adaptivecards-templating/package.json"):
        if not (MODULES / name).is_file():
            pytest.fail(f"tests/card/node_modules/{name} is missing: scripts/install --test runs npm ci in tests/card")
    return path


def render(card: dict[str, object], workdir: Path, screenshot: Path) -> list[str]:
    """Render `card` (what sshipit wrote to DRONE_CARD_PATH) with docs/card.json; return the visible text."""
    chromium = _chromium()
    assert card["schema"] == "https://raw.githubusercontent.com/sshipit/sshipit/main/docs/card.json", card
    expand = ["node", str(REPO / "tests/card/expand.js"), str(TEMPLATE)]
    expanded = subprocess.run(expand, input=json.dumps(card["data"]), capture_output=True, text=True, timeout=60,
                              check=False)
    assert expanded.returncode == 0, f"adaptivecards-templating failed on docs/card.json:\n{expanded.stderr}"
    page = workdir / "card.html"
    page.write_text(PAGE.format(
        css=(MODULES / "adaptivecards/dist/adaptivecards.css").as_uri(),
        renderer=(MODULES / "adaptivecards/dist/adaptivecards.min.js").as_uri(),
        payload=expanded.stdout.replace("</", "<\\/"),
    ))

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        profile = workdir / f"profile-{len(list(workdir.glob('profile-*')))}"
        argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"chromium did not finish in 120 s: {exc.stderr}")

    dom = run("--dump-dom")
    assert dom.returncode == 0, f"chromium --dump-dom failed ({dom.returncode}):\n{dom.stderr[-3000:]}"
    parser = _Text()
    parser.feed(dom.stdout)
    text = [html.unescape(part) for part in parser.parts]
    assert "rendered" in text, f"the card did not render: {text}\n{dom.stderr[-2000:]}"
    assert "ac-adaptiveCard" in dom.stdout, "no Adaptive Card element in the page"

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = run(f"--screenshot={screenshot}", "--window-size=680,420")
    assert shot.returncode == 0 and screenshot.is_file(), f"chromium --screenshot failed:\n{shot.stderr[-3000:]}"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000
    return text


def deploy_card(server: LocalServer, key: KeyPair, run_sshipit: RunSshipit, workspace: Path, tmp_path: Path,
                target: str, **settings: object) -> tuple[dict[str, object], int]:
    (workspace / "dist/assets").mkdir(parents=True)
    (workspace / "dist/index.html").write_text("<h1>app</h1>\n")
    (workspace / "dist/assets/app.js").write_text("console.log('app')\n")
    card_path = tmp_path / "card.out"
    env = {**plugin_env(server, key, target=target, sources="dist", strip_components=1, atomic=True, **settings),
           **DRONE, "DRONE_CARD_PATH": str(card_path)}
    result = run_sshipit(env=env)
    assert card_path.is_file(), f"no card written\n{result.stdout}\n{result.stderr}"
    return json.loads(card_path.read_text()), result.returncode


def test_card_of_a_deploy_as_drone_shows_it(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
                                            workspace: Path, tmp_path: Path, remote_dir: Path) -> None:
    card, status = deploy_card(server, keys["ed25519"], run_sshipit, workspace, tmp_path, str(remote_dir / "app"),
                               commands="test -f index.html")
    assert status == 0, card
    data = card["data"]
    assert isinstance(data, dict)
    release = str(data["release"])
    assert re.fullmatch(r"\d{8}-\d{6}\.\d{3}-5f2a0c1", release), release
    update = os.environ.get("SSHIPIT_UPDATE_CARD_PNG") == "1"
    text = render(card, tmp_path, REPO / "docs/card.png" if update else tmp_path / "card.png")
    joined = "\n".join(text)
    assert "Deployed to 1 host" in text, joined
    assert "octo/app · build 42" in joined, joined
    host = str(data["hosts"][0]["host"])  # type: ignore[index]
    assert host.split(":")[0] == server.host, host
    assert host in text, joined  # the host's row
    assert release in text, joined  # the Release fact (and the host's release column)
    assert "ok" in text, joined  # the host's result
    assert "1 ok, 0 failed, 0 not attempted" in text, joined
    assert "5f2a0c1" in text and "atomic" in text, joined
    assert not any("${" in part for part in text), f"an unfilled template binding: {joined}"


def test_card_of_a_failed_deploy_shows_the_failure(server: LocalServer, keys: dict[str, KeyPair],
                                                   run_sshipit: RunSshipit, workspace: Path, tmp_path: Path,
                                                   remote_dir: Path) -> None:
    card, status = deploy_card(server, keys["ed25519"], run_sshipit, workspace, tmp_path, str(remote_dir / "app"),
                               commands="echo checking; exit 7")
    assert status == 7, card
    text = render(card, tmp_path, tmp_path / "failed.png")
    joined = "\n".join(text)
    assert "Deploy failed on 1 of 1 host" in text, joined
    assert "failed" in text, joined  # the host's result
    assert "0 ok, 1 failed, 0 not attempted" in text, joined
    assert any("7" in part and "exit" in part.lower() for part in text), f"the host's error is not shown: {joined}"
