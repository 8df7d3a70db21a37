"""drillster/drone-rsync's settings, run the way Drone runs the plugin (PLUGIN_* variables) against a real sshd.

The scenarios are those of drone-rsync's DOCS.md and README (hosts, ports, source, include/exclude, delete, script,
the RSYNC_KEY / RSYNC_USER secrets); rsync's own selection (the real rsync, run locally with --dry-run) is the
reference for what its trailing-slash and filter rules send.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import one_error, rmtree, setting_value
from sshipit.dialect_rsync import FilterRule, rsync_sources
from sshipit.localserver import KeyPair, LocalServer, default_login_user
from sshipit.sources import collect

DRONE = {"CI": "true", "DRONE": "true", "DRONE_REPO": "octo/app", "DRONE_BUILD_NUMBER": "7",
         "DRONE_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567", "DRONE_STEP_NAME": "rsync"}


def rsync_env(server: LocalServer, key: KeyPair | None, **settings: object) -> dict[str, str]:
    """What Drone hands drone-rsync: `hosts`, `user`, `key` (its spellings), no host key pin (it has none)."""
    env = {"PLUGIN_HOSTS": server.host, "PLUGIN_PORT": str(server.port), "PLUGIN_USER": server.user, **DRONE}
    if key is not None:
        env["PLUGIN_KEY"] = key.private_text
    for name, value in settings.items():
        if value is None:
            env.pop("PLUGIN_" + name.upper(), None)
        else:
            env["PLUGIN_" + name.upper()] = setting_value(value)
    return env


def own(path: Path) -> None:
    user = default_login_user()
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)
    os.chown(path, user.pw_uid, user.pw_gid)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def package(version: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = f"{version}\n".encode()
        info = tarfile.TarInfo("version.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build(workspace: Path) -> None:
    dist = workspace / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "app.tar.gz").write_bytes(package("v2"))
    (dist / "app.tar.gz.md5").write_text(f"{hashlib.md5(package('v2')).hexdigest()}  app.tar.gz\n")
    (dist / "index.html").write_text("<h1>new</h1>\n")
    (dist / "assets/app.js").write_text("new\n")
    (dist / "LICENSE").write_text("MIT\n")  # no dot: rsync's `**.*` does not exclude it
    (workspace / "README.md").write_text("readme\n")


def test_the_docs_example_ships_only_the_package_its_md5_and_what_rsync_would(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """DOCS.md: include app.tar.gz and its .md5, exclude `**.*`, then check and unpack in the script."""
    build(workspace)
    packages, app = remote_dir / "packages", remote_dir / "app"
    packages.mkdir()
    app.mkdir()
    (packages / "app.tar.gz").write_bytes(package("v1"))  # the old package: the script must not unpack it
    own(remote_dir)
    env = rsync_env(server, keys["ed25519"], source="./dist/", target=str(packages),
                    include=["app.tar.gz", "app.tar.gz.md5"], exclude=["**.*"],
                    script=[f"cd {packages}", "md5sum -c app.tar.gz.md5", f"tar -xf app.tar.gz -C {app}"])
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert files_under(packages) == {"app.tar.gz", "app.tar.gz.md5", "LICENSE"} == rsync_selects(
        workspace, "./dist/", [FilterRule(True, "app.tar.gz"), FilterRule(True, "app.tar.gz.md5"),
                               FilterRule(False, "**.*")])
    assert (app / "version.txt").read_text() == "v2\n"
    assert "app.tar.gz: OK" in result.stdout


@pytest.mark.parametrize("source, landed", [
    ("./dist/", {"app.tar.gz", "index.html"}),  # the contents: rsync's trailing-slash rule
    ("./dist", {"dist/app.tar.gz", "dist/index.html"}),  # dist itself
])
def test_delete_true_removes_what_is_not_in_the_source_within_the_target_only(
    source: str, landed: set[str], server: LocalServer, keys: dict[str, KeyPair], workspace: Path,
    remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "dist").mkdir()
    (workspace / "dist/app.tar.gz").write_bytes(b"pkg")
    (workspace / "dist/index.html").write_text("new\n")
    target = remote_dir / "site"
    (target / "dist").mkdir(parents=True)
    (target / "stale.html").write_text("old\n")
    (target / "dist/stale.js").write_text("old\n")
    (remote_dir / "outside.txt").write_text("keep\n")
    own(remote_dir)
    keep = {"stale.html"} if source == "./dist" else set()  # outside what rsync --delete looks at
    result = run_sshipit(env=rsync_env(server, keys["ed25519"], source=source, target=str(target), delete=True))
    assert result.returncode == 0, result
    assert files_under(target) == landed | keep
    assert not (target / "true").exists()
    assert (remote_dir / "outside.txt").read_text() == "keep\n"


def test_no_source_sends_the_whole_workspace(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """drone-rsync's own way to hand it the key (the RSYNC_KEY secret) says whose step it is."""
    build(workspace)
    env = rsync_env(server, None, target=str(remote_dir))
    env["RSYNC_KEY"] = keys["ed25519"].private_text
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "the whole workspace is sent" in result.stderr + result.stdout
    assert files_under(remote_dir) == files_under(workspace) == rsync_selects(workspace, "./", [])


def test_hosts_and_target_alone_are_ambiguous_and_refused(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """`hosts` is drone-rsync's spelling and an alias of ours: with nothing else of drone-rsync's, a step without
    a source could mean the whole workspace (drone-rsync) or nothing (sshipit). One line names both; nothing lands."""
    build(workspace)
    result = run_sshipit(env=rsync_env(server, keys["ed25519"], target=str(remote_dir), script=["touch ran"]))
    line = one_error(result, 2, "drone-rsync would send the whole workspace", "sshipit would send nothing",
                     "[setting: source]")
    assert "source: ./" in line and "host instead of hosts" in line
    assert files_under(remote_dir) == set()


def test_ports_give_each_host_its_port_and_rsync_key_and_user_are_read(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """README: PLUGIN_PORTS (one per host; PLUGIN_PORT is for hosts without one); the rsync_key / rsync_user
    secrets arrive as RSYNC_KEY / RSYNC_USER, and RSYNC_USER wins over user."""
    (workspace / "a.txt").write_text("a\n")
    env = rsync_env(server, None, source="a.txt", target=str(remote_dir), ports=[server.port], port=1,
                    user="nobody-here", script="echo hello from $(whoami)")
    env |= {"RSYNC_KEY": keys["ed25519"].private_text, "RSYNC_USER": server.user}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert (remote_dir / "a.txt").read_text() == "a\n"
    assert f"hello from {server.user}" in result.stdout.splitlines()
    assert keys["ed25519"].private_text.splitlines()[1] not in result.output


def test_prescript_runs_before_the_sync_and_its_failure_stops_everything(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """README: PLUGIN_PRESCRIPT runs on the host before rsync; a failing prescript ends the step (exit status
    non-zero) before anything is synced."""
    (workspace / "a.txt").write_text("a\n")
    env = rsync_env(server, keys["ed25519"], source="a.txt", target=str(remote_dir),
                    prescript=[f"test -e {remote_dir}/a.txt && echo present > {remote_dir}/before.txt "
                               f"|| echo absent > {remote_dir}/before.txt"],
                    script=f"cat {remote_dir}/before.txt")
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert (remote_dir / "before.txt").read_text() == "absent\n"  # it ran before a.txt was synced
    assert (remote_dir / "a.txt").read_text() == "a\n"
    failing = rsync_env(server, keys["ed25519"], source="a.txt", target=str(remote_dir / "new"),
                        prescript=["false"], script=f"touch {remote_dir}/script-ran")
    failed = run_sshipit(env=failing)
    assert failed.returncode == 1, failed
    assert not (remote_dir / "new").exists() and not (remote_dir / "script-ran").exists()


def test_the_script_runs_in_the_login_home_and_stops_at_the_first_failure(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "a.txt").write_text("a\n")
    name = f"where-{remote_dir.name}.txt"
    home = Path(default_login_user().pw_dir)
    try:
        result = run_sshipit(env=rsync_env(server, keys["ed25519"], source="a.txt", target=str(remote_dir),
                                           script=[f"pwd > {name}", "false", "echo not reached"]))
        assert result.returncode == 1, result
        assert (home / name).read_text().strip() == str(home)
        assert "not reached" not in result.stdout.splitlines()
    finally:
        (home / name).unlink(missing_ok=True)


@pytest.mark.parametrize("settings, needles", [
    ({"args": "--chmod=755"}, ["args (--chmod=755)", "drone-rsync", "[setting: args]"]),
    ({"pull": True}, ["pull: true (drone-rsync", "[setting: pull]"]),
    ({"filter": "merge .rsync-filter"}, ["only `+ pattern` and `- pattern`", "[setting: filter]"]),
    ({"delete": True, "exclude": "*.log"}, ["rsync keeps remote files its filters exclude", "[setting: delete]"]),
])
def test_what_is_not_supported_is_refused_with_a_drone_rsync_line(
    settings: dict[str, object], needles: list[str], server: LocalServer, keys: dict[str, KeyPair],
    workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "a.txt").write_text("a\n")
    result = run_sshipit(env=rsync_env(server, keys["ed25519"], target=str(remote_dir), **settings))
    one_error(result, 2, *needles)
    assert "unknown setting" not in result.output
    assert not any(remote_dir.iterdir())


def test_accepted_settings_change_nothing_and_are_not_unknown(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    (workspace / "a.txt").write_text("a\n")
    result = run_sshipit(env=rsync_env(server, keys["ed25519"], source="a.txt", target=str(remote_dir),
                                       recursive=True, log_level="ERROR", args="--blocking-io", pull=False))
    assert result.returncode == 0, result
    assert "unknown setting" not in result.output
    assert (remote_dir / "a.txt").read_text() == "a\n"


# ------------------------------------------------------------------------------- the selection, against rsync


def rsync_selects(workspace: Path, source: str, rules: list[FilterRule]) -> set[str]:
    """The files the real rsync sends for drone-rsync's command line (include, then exclude, then filter)."""
    dest = workspace.parent / "rsync-dest"
    dest.mkdir(exist_ok=True)
    flags = [f"--{'include' if r.include else 'exclude'}={r.pattern}" for r in rules]
    out = subprocess.run(["rsync", "-a", "--dry-run", "--out-format=%n", *flags, source, str(dest) + "/"],
                         cwd=workspace, capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if line and not line.endswith("/")}


def ours_selects(workspace: Path, source: str, rules: list[FilterRule]) -> set[str]:
    _, sources, strip = rsync_sources(source, rules, workspace)
    return {e.name for e in collect(workspace, sources, strip).entries if e.kind == "file"}


TREE = ["dist/app.tar.gz", "dist/app.tar.gz.md5", "dist/index.html", "dist/LICENSE", "dist/assets/app.js",
        "dist/assets/app.js.map", "dist/assets/img/logo.png", "dist/tmp/cache.bin", "dist/v1.2/notes",
        "dist/dist/inner.txt", "README.md", "node_modules/x/index.js", "logs/a.log"]


@pytest.mark.parametrize("source", ["./dist/", "./dist", "./", "dist/assets/"])
@pytest.mark.parametrize("rules", [
    [],
    [FilterRule(True, "app.tar.gz"), FilterRule(True, "app.tar.gz.md5"), FilterRule(False, "**.*")],
    [FilterRule(False, "*.map"), FilterRule(False, "tmp/")],
    [FilterRule(True, "*.js"), FilterRule(False, "*.*")],
    [FilterRule(True, "*/"), FilterRule(True, "*.js"), FilterRule(False, "*")],  # rsync's "walk every directory"
    [FilterRule(True, "/dist"), FilterRule(False, "*.js")],  # an inclusion matching a directory, not its contents
    [FilterRule(False, "/assets"), FilterRule(False, "node_modules")],
    [FilterRule(False, "assets/img/")],
    [FilterRule(False, "dist/inner.txt")],
    [FilterRule(False, "img/***")],
    [FilterRule(True, "**/index.*"), FilterRule(False, "**.js*")],
])
def test_the_selection_is_what_rsync_sends(source: str, rules: list[FilterRule], tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    for name in TREE:
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(name)
    expected = rsync_selects(workspace, source, rules)
    try:
        got = ours_selects(workspace, source, rules)
    except Exception as exc:  # selecting nothing is refused by sshipit (it is an error there, not in rsync)
        assert not expected and "nothing" in str(exc), exc
        return
    assert got == expected


def test_rules_that_gitignore_lines_cannot_express_are_refused_beyond_a_limit(tmp_path: Path) -> None:
    """`+ /dist` then `- *.js`: rsync's inclusion of dist says nothing about what is inside it, a gitignore
    re-inclusion of dist reaches into it. Such rules are written as the exact paths rsync leaves out; with more of
    those than EXACT_LIMIT they are refused, never approximated."""
    from sshipit.dialect_rsync import EXACT_LIMIT

    workspace = tmp_path / "ws"
    for n in range(EXACT_LIMIT + 1):
        (workspace / f"dist/d{n}.js").mkdir(parents=True)
        (workspace / f"dist/d{n}.js/a").write_text("x")
    (workspace / "dist/keep.txt").write_text("x")
    rules = [FilterRule(True, "/dist"), FilterRule(False, "*.js")]
    with pytest.raises(Exception, match="cannot be written as sshipit's exclusions"):
        rsync_sources("./", rules, workspace)
    rmtree(workspace / f"dist/d{EXACT_LIMIT}.js")
    assert ours_selects(workspace, "./", rules) == rsync_selects(workspace, "./", rules) == {"dist/keep.txt"}


NAMES = ["a", "b.txt", "c.js", "d.min.js", "e.map", "v1.2", "tmp", "dist"]
PATTERNS = ["*.js", "*.map", "tmp/", "tmp", "/a", "/dist", "b.txt", "**.js", "dist/*.js", "*/c.js", "v1.2/",
            "**/tmp", "a/***", "*", "*.*", "?.js", "[bc].*"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3), min_size=1, max_size=12),
       rules=st.lists(st.tuples(st.booleans(), st.sampled_from(PATTERNS)), max_size=4),
       source=st.sampled_from(["./", "./dist/", "./dist", "dist/tmp/"]))
def test_the_selection_is_what_rsync_sends_for_any_tree_and_rules(
    paths: list[list[str]], rules: list[tuple[bool, str]], source: str, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Property: for any small tree and any rules drawn from the patterns drone-rsync users write (directory-only
    includes aside: refused), sshipit sends exactly the files the real rsync sends."""
    workspace = tmp_path_factory.mktemp("ws")
    for parts in paths:
        rel = "dist/" + "/".join(parts)
        target = workspace / rel
        if any(p.is_file() for p in [*target.parents, target] if p != workspace and p.exists()) or target.is_dir():
            continue  # a name already used for a file (or a directory): skip this path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rel)
    filter_rules = [FilterRule(include, pattern) for include, pattern in rules
                    if not (include and pattern.endswith("/"))]
    if not (workspace / source).is_dir():  # the tree drawn has no such directory (or a file of that name)
        return
    expected = rsync_selects(workspace, source, filter_rules)
    try:
        got = ours_selects(workspace, source, filter_rules)
    except Exception as exc:
        assert not expected and "nothing" in str(exc), exc
        return
    assert got == expected, (source, filter_rules)
