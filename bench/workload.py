"""The benchmark's workload: a deterministic (seeded) web-app build output, and its variants.

Layout of a generated workload directory (each variant is a workspace holding `app/`, the tree to deploy):

    v1/app/      the build: ~20,000 small text files (JS, CSS, HTML, JSON, Markdown, source maps, .d.ts) in
                 nested directories (node_modules/<pkg>/..., static/js, locales/<lang>/...), ~80 MB, plus a few
                 large, nearly incompressible binary assets (~400 MB in all: video, installer, font/image bundles)
    v2/app/      the next build: 1% of the text files changed (half keep their size, half do not); everything else
                 hard-linked to v1 (same content)
    web-v1/app/, web-v2/app/
                 the same two builds without the large assets (hard links), for the fan-out scenario
    large/app/   one large incompressible file alone (~400 MB)
    STAMP        the parameters it was made with; a directory whose STAMP matches is reused as it is

Every byte and name comes from `random.Random(seed)`, so two machines generate the same tree. File mtimes are
fixed at generation; the runner gives files fresh mtimes before a redeploy, as a CI checkout and build would.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

GEN_VERSION = 3  # bump when the generator's output changes
FIXED_MTIME = 1_700_000_000
MB = 1_000_000


@dataclass(frozen=True)
class Spec:
    """What to generate. `full()` is the benchmark's workload, `quick()` a tiny one for smoke tests,
    `everyday()` the size most builds are."""

    name: str
    seed: int
    text_files: int
    text_bytes: int
    assets: tuple[tuple[str, int, float], ...]  # (path under app/, size, fraction that is compressible)
    large_bytes: int
    changed_fraction: float = 0.01

    @staticmethod
    def full() -> Spec:
        return Spec(
            name="full",
            seed=20240905,
            text_files=20_000,
            text_bytes=80 * MB,
            assets=(
                ("static/media/product-tour.mp4", 170 * MB, 0.0),
                ("static/media/intro.webm", 110 * MB, 0.0),
                ("downloads/desktop-installer.bin", 75 * MB, 0.15),
                ("static/fonts/icons-and-fonts.bundle", 45 * MB, 0.10),
            ),
            large_bytes=400 * MB,
        )

    @staticmethod
    def everyday() -> Spec:
        """The everyday build: 5,000 small files and one 100 MB file (run.py --everyday)."""
        return Spec(
            name="everyday",
            seed=20240905,
            text_files=5_000,
            text_bytes=20 * MB,
            assets=(("static/media/app-bundle.bin", 100 * MB, 0.0),),
            large_bytes=1 * MB,
        )

    @staticmethod
    def quick() -> Spec:
        return Spec(
            name="quick",
            seed=20240905,
            text_files=400,
            text_bytes=1_600_000,
            assets=(
                ("static/media/intro.webm", 3 * MB, 0.0),
                ("downloads/desktop-installer.bin", 1 * MB, 0.15),
            ),
            large_bytes=8 * MB,
        )

    def stamp(self) -> str:
        return json.dumps({"generator": GEN_VERSION, **asdict(self)}, sort_keys=True)


@dataclass
class Workload:
    root: Path
    spec: Spec
    changed: list[str]  # names (relative to app/) of the text files that differ between v1 and v2

    def variant(self, name: str) -> Path:
        """The workspace of a variant: v1, v2, web-v1, web-v2 or large (the tree itself is `<workspace>/app`)."""
        return self.root / name

    def summary(self) -> dict[str, int]:
        files = total = 0
        for _path, size in iter_files(self.variant("v1") / "app"):
            files += 1
            total += size
        return {"files": files, "bytes": total, "changed": len(self.changed),
                "large_bytes": self.spec.large_bytes}


def iter_files(top: Path) -> Iterator[tuple[str, int]]:
    """(relative path, size) of every regular file under `top`, sorted."""
    found = []
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            found.append((os.path.relpath(path, top), os.lstat(path).st_size))
    return iter(sorted(found))


def ensure(cache: Path, spec: Spec, log: callable = print) -> Workload:  # type: ignore[valid-type]
    """The workload for `spec` under `cache`, generated once; reused while its STAMP matches."""
    root = cache / f"workload-{spec.name}"
    stamp = root / "STAMP"
    if stamp.exists():
        try:
            data = json.loads(stamp.read_text())
        except ValueError:
            data = {}
        if data.get("spec") == spec.stamp():
            return Workload(root, spec, data["changed"])
    log(f"generating the {spec.name} workload in {root} (once; reused while {stamp.name} matches)")
    building = cache / f".building-{spec.name}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    changed = _generate(building, spec)
    (building / "STAMP").write_text(json.dumps({"spec": spec.stamp(), "changed": changed}))
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return Workload(root, spec, changed)


# ---------------------------------------------------------------------------
# generation

_WORDS = (  # noqa: SIM905
    "function return const let var export import default from async await promise value result error "
    "options config module require props state render component element children style class name type "
    "index length push map filter reduce object array string number boolean undefined null true false this "
    "prototype constructor event listener handler callback request response status headers body json parse "
    "stringify buffer stream read write open close path resolve join dirname basename process env version "
    "cache key data item items list node tree parent child root next prev size count offset limit page user "
    "id token session auth login logout route router params query hash search match test expect describe it "
    "before after each mock spy assert equal deep strict warn info debug trace log format locale message"
).split()
_CSS_PROPS = (  # noqa: SIM905
    "margin padding display position top left right bottom width height color background border "
    "font-size font-weight line-height flex grid gap align-items justify-content z-index opacity "
    "transition transform overflow cursor box-shadow border-radius").split()
_LANGS = ["en", "de", "fr", "es", "it", "nl", "pl", "pt", "sv", "da", "fi", "no", "cs", "sk", "hu", "ro", "bg", "el",
          "tr", "ru", "uk", "ja", "ko", "zh", "ar", "he", "hi", "th", "vi", "id"]


class _Text:
    """Pools of plausible lines per file type; files are lines drawn from them (compresses ~3-4x with gzip)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.idents = [self._ident() for _ in range(6000)]
        self._cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(self.idents))))
        self.pools = {kind: [make() for _ in range(12000)] for kind, make in (
            ("js", self._js_line), ("css", self._css_line), ("html", self._html_line),
            ("json", self._json_line), ("md", self._md_line), ("map", self._map_line),
        )}

    def _ident(self) -> str:
        rng = self.rng
        parts = rng.choices(_WORDS, k=rng.randint(1, 3))
        name = parts[0] + "".join(p.capitalize() for p in parts[1:])
        if rng.random() < 0.3:
            name += str(rng.randint(0, 99))
        return name

    def _id(self) -> str:
        # Zipf-like: a few identifiers are everywhere, as in real code.
        return self.rng.choices(self.idents, cum_weights=self._cum)[0]

    def _js_line(self) -> str:
        rng, i = self.rng, self._id
        indent = "  " * rng.randint(0, 4)
        shapes = (
            lambda: f"const {i()} = {i()}({i()}, {rng.randint(0, 4096)});",
            lambda: f"if ({i()}.{i()} === {rng.choice(['null', 'undefined', repr(i())])}) return {i()};",
            lambda: f"export function {i()}({i()}, {i()}) {{",
            lambda: f"{i()}.{i()}({i()} => {i()}.{i()}({i()}));",
            lambda: f"// {' '.join(rng.choices(_WORDS, k=rng.randint(3, 12)))}",
            lambda: f"return {{ {i()}: {i()}, {i()}: {rng.random():.4f}, {i()}: '{i()}' }};",
            lambda: "}",
            lambda: f"var {i()}=function({i()},{i()}){{return {i()}[{i()}]||{rng.randint(0, 9)}}};",
            lambda: f"import {{ {i()}, {i()} }} from './{i()}.js';",
        )
        return indent + rng.choice(shapes)()

    def _css_line(self) -> str:
        rng = self.rng
        if rng.random() < 0.2:
            return f".{self._id()}-{rng.choice(['wrap', 'item', 'title', 'btn', 'icon'])} {{"
        if rng.random() < 0.1:
            return "}"
        value = rng.choice([f"{rng.randint(0, 64)}px", f"#{rng.randrange(16**6):06x}", "auto", "inherit",
                            f"{rng.random():.2f}", "1px solid #ddd", "center"])
        return f"  {rng.choice(_CSS_PROPS)}: {value};"

    def _html_line(self) -> str:
        rng, i = self.rng, self._id
        tag = rng.choice(["div", "span", "p", "a", "li", "section", "button", "h2", "td"])
        words = " ".join(rng.choices(_WORDS, k=rng.randint(1, 10)))
        attrs = f'class="{i()} {i()}" data-{i()}="{rng.randint(0, 999)}"'
        return f'{"  " * rng.randint(0, 6)}<{tag} {attrs}>{words}</{tag}>'

    def _json_line(self) -> str:
        rng, i = self.rng, self._id
        value = rng.choice([f'"{i()}"', str(rng.randint(0, 100000)), "true", "false",
                            f'"{" ".join(rng.choices(_WORDS, k=rng.randint(1, 8)))}"',
                            f'"^{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"'])
        return f'{"  " * rng.randint(1, 3)}"{i()}": {value},'

    def _md_line(self) -> str:
        rng = self.rng
        words = " ".join(rng.choices(_WORDS, k=rng.randint(4, 16)))
        return rng.choice(["", "## ", "- ", "", "    ", "> "]) + words.capitalize()

    def _map_line(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:  # sourcesContent: the original source, quoted
            return '"' + self._js_line().replace('"', '\\"') + '\\n" +'
        alphabet = "ACDEGIKMOQSUWYgikmoqsuwy" + string.digits[:4]
        return '"' + ";".join(
            ",".join("".join(rng.choices(alphabet, k=rng.randint(2, 6))) for _ in range(rng.randint(2, 8)))
            for _ in range(rng.randint(2, 6))
        ) + '",'

    def make(self, kind: str, size: int) -> bytes:
        """`size` bytes of text of this kind (exactly)."""
        pool = self.pools["js" if kind in ("ts", "min.js") else kind]
        # Lines average ~45 bytes; draw a few more than needed, then cut.
        lines = self.rng.choices(pool, k=size // 40 + 2)
        text = "\n".join(lines).encode()
        while len(text) < size:
            text += b"\n" + "\n".join(self.rng.choices(pool, k=64)).encode()
        return text[: size - 1] + b"\n" if size else b""


def _sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """Lognormal sizes (most files a few KB, a long tail up to ~1 MB) scaled to sum to `total`."""
    raw = [min(max(rng.lognormvariate(7.4, 1.25), 30.0), 1.5e6) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(16, int(s * scale)) for s in raw]
    sizes[0] += total - sum(sizes)
    return sizes


def _tree_names(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(relative path, kind) of `count` text files, shaped like a built web app with its node_modules."""
    syll = ["re", "act", "lo", "dash", "ex", "press", "web", "pack", "ba", "bel", "core", "js", "vue", "ui",
            "date", "fns", "axi", "os", "chalk", "yarg", "mini", "mist", "glob", "rim", "raf", "semver", "ws",
            "util", "has", "own", "is", "array", "buf", "fer", "esc", "ape", "deep", "merge", "post", "css"]
    names: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str, kind: str) -> None:
        if path not in seen:
            seen.add(path)
            names.append((path, kind))

    # The app's own output: ~12% of the files.
    add("index.html", "html")
    add("robots.txt", "md")
    add("manifest.json", "json")
    own = count // 8
    for n in range(own):
        h = f"{rng.getrandbits(32):08x}"
        pick = rng.random()
        if pick < 0.35:
            add(f"static/js/{rng.choice(['chunk', 'vendor', 'page', 'route'])}-{n}.{h}.js", "min.js")
        elif pick < 0.5:
            add(f"static/js/{rng.choice(['chunk', 'page'])}-{n}.{h}.js.map", "map")
        elif pick < 0.62:
            add(f"static/css/{rng.choice(['main', 'theme', 'page'])}-{n}.{h}.css", "css")
        elif pick < 0.8:
            lang = rng.choice(_LANGS)
            add(f"locales/{lang}/{rng.choice(_WORDS)}-{n}.json", "json")
        else:
            section = rng.choice(["docs", "blog", "help", "legal", "pages"])
            sub = rng.choice(_WORDS)
            add(f"templates/{section}/{sub}/{rng.choice(_WORDS)}-{n}.html", "html")
    # node_modules: packages of 5-60 files, some with nested node_modules.
    while len(names) < count:
        pkg = "-".join("".join(rng.choices(syll, k=rng.randint(1, 3))) for _ in range(rng.randint(1, 2)))
        if rng.random() < 0.25:
            pkg = f"@{rng.choice(syll)}{rng.choice(syll)}/{pkg}"
        base = f"node_modules/{pkg}"
        if rng.random() < 0.15 and names:
            parents = [p for p, _ in names[-200:] if p.startswith("node_modules/") and p.endswith("package.json")]
            if parents:
                base = f"{rng.choice(parents).rsplit('/', 1)[0]}/node_modules/{pkg}"
        add(f"{base}/package.json", "json")
        add(f"{base}/README.md", "md")
        add(f"{base}/LICENSE", "md")
        for n in range(rng.randint(3, 57)):
            if len(names) >= count:
                break
            depth = rng.choice(["lib", "lib/internal", "dist", "dist/esm", "dist/cjs", "src", "types", "lib/utils"])
            stem = rng.choice(_WORDS) + (str(n) if rng.random() < 0.5 else "")
            kind = rng.choices(["js", "ts", "map", "json", "css", "md"], weights=[55, 15, 12, 8, 5, 5])[0]
            ext = {"js": "js", "ts": "d.ts", "map": "js.map", "json": "json", "css": "css", "md": "md"}[kind]
            add(f"{base}/{depth}/{stem}.{ext}", kind)
    return names[:count]


def _write_binary(path: Path, size: int, compressible: float, rng: random.Random) -> None:
    """Random bytes (like compressed media), with a `compressible` fraction of repetitive blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = 1 << 20
    pattern = (b"\0" * 2048 + bytes(range(256)) * 8) * 32
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(pattern[:n] if rng.random() < compressible else rng.randbytes(n))
            left -= n


def _mutate(rng: random.Random, text: _Text, data: bytes, kind: str, keep_size: bool) -> bytes:
    """The file's next version: a rewritten span (same size), or a span rewritten plus lines added/removed."""
    if keep_size:
        span = max(1, min(len(data), rng.randint(16, 2048)))
        start = rng.randrange(0, len(data) - span + 1)
        new = text.make(kind, span + 1)[:span]
        if new == data[start : start + span]:
            new = bytes((b + 1) % 256 for b in new)
        return data[:start] + new + data[start + span :]
    delta = max(8, int(len(data) * rng.uniform(0.02, 0.25)))
    if rng.random() < 0.7 or len(data) <= delta + 16:
        cut = rng.randrange(0, len(data) + 1)
        return data[:cut] + text.make(kind, delta) + data[cut:]
    cut = rng.randrange(0, len(data) - delta)
    return data[:cut] + data[cut + delta :]


def _generate(root: Path, spec: Spec) -> list[str]:
    rng = random.Random(spec.seed)
    text = _Text(random.Random(spec.seed + 1))
    v1 = root / "v1" / "app"
    names = _tree_names(rng, spec.text_files)
    sizes = _sizes(rng, len(names), spec.text_bytes)
    dirs: set[Path] = set()
    for (rel, kind), size in zip(names, sizes, strict=True):
        path = v1 / rel
        if path.parent not in dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(path.parent)
        path.write_bytes(text.make(kind, size))
    asset_rng = random.Random(spec.seed + 2)
    for rel, size, compressible in spec.assets:
        _write_binary(v1 / rel, size, compressible, asset_rng)
    _write_binary(root / "large" / "app" / "release-bundle.bin", spec.large_bytes, 0.0, random.Random(spec.seed + 3))

    # v2: hard links to v1, except the changed files (1%: half the same size, half not).
    change_rng = random.Random(spec.seed + 4)
    count = max(2, round(len(names) * spec.changed_fraction))
    picked = sorted(change_rng.sample(range(len(names)), count))
    changed = [names[i][0] for i in picked]
    _link_tree(v1, root / "v2" / "app")
    for n, index in enumerate(picked):
        rel, kind = names[index]
        path = root / "v2" / "app" / rel
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(_mutate(change_rng, text, data, kind, keep_size=n % 2 == 0))
    # web-v1/web-v2: the same builds without the large assets (for the fan-out scenario).
    skip = {rel for rel, _size, _c in spec.assets}
    for src, dst in (("v1", "web-v1"), ("v2", "web-v2")):
        _link_tree(root / src / "app", root / dst / "app", skip)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    return changed


def _link_tree(src: Path, dst: Path, skip: set[str] | None = None) -> None:
    for dirpath, _dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out = dst / rel_dir if rel_dir != "." else dst
        out.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if skip and rel in skip:
                continue
            os.link(os.path.join(dirpath, name), out / name)


def set_mtimes(top: Path, when: float) -> None:
    """Give every file and directory under `top` (and `top`) the mtime `when`, as a fresh checkout would."""
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (when, when))
        os.utime(dirpath, (when, when))


if __name__ == "__main__":
    import sys
    import time

    started = time.time()
    made = ensure(Path(sys.argv[1]), Spec.quick() if "--quick" in sys.argv else Spec.full())
    print(made.summary(), f"{time.time() - started:.1f}s")
