"""`sshipit releases` / list_releases: each host's releases, read from real sshd "machines", changing nothing.

Three sshd processes stand for three machines: each runs every command in a home of its own (ForceCommand), so
one relative target is three directories, and each counts the commands it runs (one per listing is the promise).
Releases are made by real atomic deploys (a good one, one whose health check fails, a rollback, one deployed to
a single host); hostile ones are written by the login itself. Every field the listing shows is checked against
what is on disk, and every tree is compared before and after.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, at_home, login_home, plugin_env, rmtree, ssh, start_server, tree
from helpers import one_error as _one_error
from sshipit.localserver import KeyPair, LocalServer, default_login_user
from sshipit.release_list import LIMIT, META_LIMIT, parse_listing, read_metadata
from sshipit.report import human_bytes
from test_privileges import root_dir, sudo_server, sudoers  # noqa: F401 (fixtures: a login that may sudo)

# ------------------------------------------------------------------------------------------------------ machines


@dataclass
class Machine:
    server: LocalServer
    home: Path  # where its commands run
    execs: Path  # one line per command the login ran

    @property
    def label(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    def commands(self) -> int:
        return len(self.execs.read_text().splitlines()) if self.execs.exists() else 0


@pytest.fixture(scope="module")
def machines(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[list[Machine]]:
    login = default_login_user()
    started: list[Machine] = []
    try:
        for number in range(3):
            workdir = server_root / f"listing-{number}"
            home = login_home(workdir / "home")
            execs = workdir / "execs"
            execs.touch()
            os.chown(execs, login.pw_uid, login.pw_gid)
            config = at_home(home, f"echo run >> {execs}; ")
            started.append(Machine(start_server(workdir, keys, config, authorize=("ed25519",)), home, execs))
        yield started
    finally:
        for machine in started:
            machine.server.stop()


@pytest.fixture
def target(machines: list[Machine]) -> Iterator[str]:
    name = f"app-{time.monotonic_ns()}"
    yield name
    for machine in machines:
        rmtree(machine.home / name)


@pytest.fixture
def site(workspace: Path) -> Path:
    (workspace / "dist").mkdir()
    (workspace / "dist/index.html").write_text("v1\n")
    return workspace / "dist"


def env_for(hosts: list[Machine], key: KeyPair, target: str, **settings: object) -> dict[str, str]:
    env = plugin_env(hosts[0].server, key, target=target, **settings)
    env.pop("PLUGIN_PORT")
    env["PLUGIN_HOST"] = ",".join(machine.label for machine in hosts)
    env["PLUGIN_FINGERPRINT"] = ",".join(fp for m in hosts for fp in m.server.fingerprints().values())
    return env


def deploy(run_sshipit: RunSshipit, hosts: list[Machine], key: KeyPair, target: str, commit: str,
           **settings: object) -> Result:
    settings.setdefault("sources", "dist")
    env = env_for(hosts, key, target, atomic=True, **settings)
    result = run_sshipit(env={**env, "DRONE_COMMIT_SHA": commit, "DRONE_BUILD_NUMBER": "7"})
    time.sleep(0.01)  # release ids are stamped to the millisecond: keep them apart
    return result


def on_disk(machine: Machine, target: str) -> dict[str, dict[str, str]]:
    folder = machine.home / target / "releases"
    return {path.name: json.loads((path / ".sshipit-release.json").read_text()) for path in folder.iterdir()}


def live(machine: Machine, target: str) -> str | None:
    link = machine.home / target / "current"
    return os.readlink(link).split("/")[-1] if link.is_symlink() else None


def du_kib(path: Path) -> int:
    return int(subprocess.run(["du", "-skl", "--", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def rows(result: Result, machine: Machine | None = None) -> dict[str, list[str]]:
    """The table rows the listing printed (for one machine's tag when several hosts), by release id."""
    found: dict[str, list[str]] = {}
    tag = f"[{machine.label}] " if machine is not None else ""
    for line in result.stdout.splitlines():
        if not line.startswith(tag + "  ") or line.startswith(tag + "  id "):
            continue
        cells = re.split(r"\s{2,}", line[len(tag):].strip())
        found[cells[0]] = cells
    return found


def snapshot(machines: list[Machine], target: str) -> list[dict[str, object]]:
    return [tree(machine.home / target) for machine in machines]


def tree_with_fifos(root: Path) -> dict[str, object]:
    """helpers.tree, where a FIFO is recorded as one instead of read (reading it would wait for a writer)."""
    seen: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(mode):
            seen[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(mode):
            seen[rel] = "dir"
        elif stat.S_ISFIFO(mode):
            seen[rel] = "fifo"
        else:
            seen[rel] = path.read_bytes()
    return seen


def one_error(result: Result, status: int, *needles: str) -> str:
    """helpers.one_error, and the line is one of the shapes docs/errors.md shows."""
    from test_output import documented_shapes

    line = _one_error(result, status, *needles)
    assert any(shape.match(line) for shape in documented_shapes()), f"docs/errors.md shows no shape for:\n{line}"
    return line


def as_login(machine: Machine, key: KeyPair, command: str, tmp_path: Path) -> None:
    """Run `command` as the login, in the machine's home: how a hostile file gets there."""
    result = ssh(machine.server, key, command, tmp_path / "known_hosts")
    assert result.returncode == 0, result


# ------------------------------------------------------------------------------------------------------- listing


def test_every_field_matches_the_disk_and_nothing_changes(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, site: Path, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    a, b = machines[0], machines[1]
    assert deploy(run_sshipit, [a, b], key, target, "a" * 40).returncode == 0
    site.joinpath("big.bin").write_bytes(os.urandom(300_000))  # sizes differ per release
    bad = deploy(run_sshipit, [a, b], key, target, "b" * 40, healthcheck="false", healthcheck_timeout="1s")
    assert bad.returncode != 0 and "switched back" in bad.stderr, bad
    assert deploy(run_sshipit, [a, b], key, target, "c" * 40).returncode == 0
    back = run_sshipit("rollback", env=env_for([a, b], key, target))
    assert back.returncode == 0, back
    only_a = deploy(run_sshipit, [a], key, target, "d" * 40)
    assert only_a.returncode == 0, only_a

    before = snapshot(machines, target)
    execs = [m.commands() for m in (a, b)]
    result = run_sshipit("releases", env=env_for([a, b], key, target))
    assert result.returncode == 0, result
    assert "Traceback" not in result.output
    assert snapshot(machines, target) == before  # nothing written, nothing removed, no lock left
    assert [m.commands() for m in (a, b)] == [e + 1 for e in execs]  # one command per host: one round trip

    expected_state = {"ok": "good", "failed": "failed", "rolled-back": "rolled-back"}
    all_ids = set(on_disk(a, target)) | set(on_disk(b, target))
    for machine, other in ((a, b), (b, a)):
        metadata = on_disk(machine, target)
        shown = rows(result, machine)
        assert set(shown) == set(metadata), result
        current = live(machine, target)
        assert f"[{machine.label}] releases: {len(metadata)} in {target}/releases, live: {current}" in result.stdout
        for release, meta in metadata.items():
            cells = shown[release]
            state = "live" if release == current else expected_state[meta["result"]]
            size = human_bytes(du_kib(machine.home / target / "releases" / release) * 1024)
            assert cells[1:5] == [meta["created"], meta["commit"][:7], state, size], (release, cells, result)
            missing = release not in on_disk(other, target)
            assert ("not on " + other.label in cells[-1]) == missing, (cells, result)
        order = list(shown)  # newest first
        assert order == sorted(metadata, reverse=True), result
    # what each deploy left: the rolled-back release, the failed one, a release only host a holds
    states_a = {cells[0]: cells[3] for cells in rows(result, a).values()}
    assert sorted(states_a.values()) == ["failed", "good", "live", "rolled-back"], result
    assert rows(result, b)[live(b, target)][3] == "live" and live(a, target) != live(b, target)
    assert len(all_ids) == 4 and "releases: 1 release is not on every host" in result.stdout, result
    # the summary: one row per host, its live release
    assert re.search(r"^summary: 2 hosts, all ok", result.stdout, re.M), result
    for machine in (a, b):
        assert re.search(rf"^  ok\s+{re.escape(machine.label)}\s+{re.escape(live(machine, target) or '')}\s",
                         result.stdout, re.M), result


def test_a_held_lock_is_shown_not_waited_for_and_not_touched(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, site: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    key = keys["ed25519"]
    a = machines[0]
    assert deploy(run_sshipit, [a], key, target, "e" * 40).returncode == 0
    # A deploy that is running: its lock holder is alive (a shell of the login's, as release.py's lock is).
    holder = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.setuid(default_login_user().pw_uid))
    try:
        lock = a.home / target / ".sshipit/lock"
        as_login(a, key, f"mkdir {target}/.sshipit/lock && echo {holder.pid} > {target}/.sshipit/lock/pid && "
                 f"echo 'release 20991231-000000.000-x (started now)' > {target}/.sshipit/lock/owner", tmp_path)
        before = tree(a.home / target)
        started = time.monotonic()
        result = run_sshipit("releases", env=env_for([a], key, target, lock_timeout="30s"))
        assert result.returncode == 0, result
        assert time.monotonic() - started < 20, "the listing waited for the lock"
        assert "releases: a deploy holds the lock now: release 20991231-000000.000-x (started now)" in result.stdout
        assert tree(a.home / target) == before and lock.is_dir()
        assert (lock / "pid").read_text().strip() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()


def test_hostile_releases_are_shown_safely(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, site: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    key = keys["ed25519"]
    a = machines[2]
    assert deploy(run_sshipit, [a], key, target, "f" * 40).returncode == 0
    good = live(a, target)
    secret = a.home / "secret.txt"  # outside the target: must never be read into the log
    secret.write_text("TOP-SECRET-OUTSIDE\n")
    os.chown(secret, default_login_user().pw_uid, -1)
    r = f"{target}/releases"
    nested = "[" * 3000
    as_login(a, key, " && ".join([
        # control characters, workflow commands and a second line in every field
        f"mkdir {r}/20200101-000000.000-ctl",
        f"printf '%s' '{{\"result\": \"ok\", \"commit\": \"::error::x\", \"created\": \"\\u001b]1338;x\\nY\"}}' "
        f"> {r}/20200101-000000.000-ctl/.sshipit-release.json",
        f"mkdir {r}/20200101-000001.000-big", f"head -c 2000000 /dev/zero > {r}/20200101-000001.000-big/"
        ".sshipit-release.json",
        f"mkdir {r}/20200101-000002.000-nojson",
        f"printf '\\033[31m##[error]x\\n::warning::y\\000z' > {r}/20200101-000002.000-nojson/.sshipit-release.json",
        f"mkdir {r}/20200101-000003.000-deep",
        f"printf '{nested}' > {r}/20200101-000003.000-deep/.sshipit-release.json",
        f"mkdir {r}/20200101-000004.000-link", f"ln -s ../../../secret.txt {r}/20200101-000004.000-link/"
        ".sshipit-release.json",
        f"ln -s .. {r}/20200101-000005.000-outside",  # a release that is a link out of releases/
        f"mkdir {r}/20200101-000006.000-fifo", f"mkfifo {r}/20200101-000006.000-fifo/.sshipit-release.json",
        f"mkdir \"{r}/$(printf '20200101-000007.000-\\033[2J\\n::error::name')\"",
    ]), tmp_path)
    before = tree_with_fifos(a.home / target)
    result = run_sshipit("releases", env=env_for([a], key, target), timeout=90)
    assert result.returncode == 0, result
    assert "Traceback" not in result.output
    assert tree_with_fifos(a.home / target) == before
    assert "TOP-SECRET-OUTSIDE" not in result.output
    for line in result.output.splitlines():
        assert "\x1b" not in line and not line.lstrip().startswith("::") and "##[" not in line, line
    shown = rows(result)
    assert shown[good][3] == "live"
    notes = {name: cells[-1] for name, cells in shown.items()}
    assert shown["20200101-000000.000-ctl"][1:4] == ["-", "-", "good"], result  # malformed fields: not shown
    assert "malformed created time" in notes["20200101-000000.000-ctl"]
    assert "malformed commit" in notes["20200101-000000.000-ctl"]
    assert shown["20200101-000001.000-big"][3] == "unknown"
    assert f"larger than {META_LIMIT} bytes" in notes["20200101-000001.000-big"]
    assert "not JSON" in notes["20200101-000002.000-nojson"] and "not JSON" in notes["20200101-000003.000-deep"]
    assert "not a regular file" in notes["20200101-000004.000-link"]
    assert "not a regular file" in notes["20200101-000006.000-fifo"]
    assert shown["20200101-000005.000-outside"][3:5] == ["unknown", "?"]
    assert "a symlink, not a release directory" in notes["20200101-000005.000-outside"]
    assert "20200101-000007.000-\\x1b[2J\\n::error::name" in shown, result  # escaped, on its own row


def test_a_target_without_releases(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    a = machines[0]
    result = run_sshipit("releases", env=env_for([a], key, target))
    assert result.returncode == 0, result
    assert f"releases: {target} does not exist: no releases" in result.stdout
    assert not (a.home / target).exists()  # not created by the listing
    (a.home / target).mkdir()
    os.chown(a.home / target, default_login_user().pw_uid, -1)
    result = run_sshipit(env=env_for([a], key, target, list_releases=True))
    assert result.returncode == 0, result
    assert f"releases: 0 in {target}/releases, live: none" in result.stdout
    assert tree(a.home / target) == {}


def test_releases_as_a_symlink_is_refused_without_reading_through_it(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, run_sshipit: RunSshipit, tmp_path: Path,
) -> None:
    key = keys["ed25519"]
    a = machines[1]
    as_login(a, key, f"mkdir -p {target}-elsewhere/20200101-000000.000-x {target} && "
             f"ln -s ../{target}-elsewhere {target}/releases", tmp_path)
    try:
        result = run_sshipit("releases", env=env_for([a], key, target))
        one_error(result, 1, f"{target}/releases is a symlink", "[setting: target]")
        assert "20200101-000000.000-x" not in result.output
    finally:
        rmtree(a.home / f"{target}-elsewhere")


def test_an_sftp_only_account_is_one_line(
    sftp_only_server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    env = plugin_env(sftp_only_server, keys["ed25519"], target="app", list_releases=True)
    one_error(run_sshipit(env=env), 1, "runs no commands", "releases cannot be read")


def test_plan_says_it_would_only_list(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, run_sshipit: RunSshipit,
) -> None:
    a = machines[0]
    execs = a.commands()
    result = run_sshipit("plan", env=env_for([a], keys["ed25519"], target, list_releases=True))
    assert result.returncode == 0, result
    assert f"plan: would only list the releases in {target}/releases" in result.stdout, result
    assert "nothing was changed" in result.stdout and not (a.home / target).exists()
    assert a.commands() == execs  # the plan reads nothing to say so


@pytest.mark.parametrize(("setting", "value"), [("sources", "dist"), ("commands", "echo hi"),
                                                 ("rollback", "true"), ("healthcheck", "true")])
def test_a_deploy_setting_with_list_releases_is_refused(
    server: LocalServer, keys: dict[str, KeyPair], site: Path, run_sshipit: RunSshipit, setting: str, value: str,
) -> None:
    env = plugin_env(server, keys["ed25519"], target="app", list_releases=True, **{setting: value})
    one_error(run_sshipit(env=env), 2, f"list_releases only lists the releases and changes nothing, but {setting} "
              "is set too", f"[setting: {setting}]")


def test_list_releases_needs_a_target(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    one_error(run_sshipit("releases", env=plugin_env(server, keys["ed25519"])), 2, "list_releases needs a target")


# ------------------------------------------------------------------------------------------- what CIs show


def test_github_outputs_and_summary_and_drone_card(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, site: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    key = keys["ed25519"]
    a, b = machines[0], machines[1]
    assert deploy(run_sshipit, [a, b], key, target, "1" * 40).returncode == 0
    assert deploy(run_sshipit, [a], key, target, "2" * 40).returncode == 0
    output, summary = tmp_path / "output", tmp_path / "summary.md"
    output.write_text("")
    summary.write_text("")
    env = env_for([a, b], key, target, list_releases=True)
    env = {"INPUT_" + name[len("PLUGIN_"):]: value for name, value in env.items()}
    result = run_sshipit(env={**env, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, result
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert json.loads(outputs["releases"]) == {a.label: live(a, target), b.label: live(b, target)}
    assert outputs["result"] == "ok" and outputs["hosts_failed"] == "0"
    text = summary.read_text()
    assert "sshipit: Releases on 2 hosts" in text, text
    for machine in (a, b):
        for release in on_disk(machine, target):
            state = "live" if release == live(machine, target) else "good"
            assert re.search(rf"^\| {re.escape(machine.label)} \| {re.escape(release)} \| .* \| {state} \|", text,
                             re.M), text
    assert "not on " + b.label in text

    card = tmp_path / "card.json"
    result = run_sshipit(env={**env_for([a, b], key, target, list_releases=True), "DRONE_CARD_PATH": str(card)})
    assert result.returncode == 0, result
    data = json.loads(card.read_text())["data"]
    assert data["title"] == "Releases on 2 hosts" and data["mode"] == "releases"
    listed = {(row["host"], row["id"]): row for row in data["releases"]}
    assert set(listed) == {(m.label, r) for m in (a, b) for r in on_disk(m, target)}
    only_a = next(r for r in on_disk(a, target) if r not in on_disk(b, target))
    assert listed[(a.label, only_a)]["state"] == "live" and b.label in listed[(a.label, only_a)]["note"]
    on_stdout = run_sshipit(env={**env_for([a], key, target, list_releases=True), "DRONE_CARD_PATH": "/dev/stdout"})
    payload = re.search(r"\x1b\]1338;([A-Za-z0-9+/=]+)\x1b\]0m", on_stdout.stdout)
    assert payload is not None and json.loads(base64.b64decode(payload.group(1)))["data"]["mode"] == "releases"


# ------------------------------------------------------------------------------------------------ parsing, pure


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_metadata_of_any_bytes_is_read_or_refused_never_raised(raw: bytes) -> None:
    fields, problem = read_metadata(raw)
    assert all(isinstance(v, str) for v in fields.values())
    assert bool(problem) or isinstance(json.loads(raw.decode("utf-8")), dict)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30), st.booleans())
def test_any_answer_parses_or_is_refused(tokens: list[bytes], marked: bool) -> None:
    raw = b"\0".join([b"sshipit-releases", b"ok", *tokens] if marked else tokens)
    try:
        listed = parse_listing(raw, "app")
    except (ValueError, PermissionError, IsADirectoryError):
        return
    assert all(r.id.encode("utf-8", "surrogateescape") in tokens for r in listed.releases)
    assert listed.current is None or listed.current in {r.id for r in listed.releases}


def test_only_the_newest_are_listed_beyond_the_limit() -> None:
    names = [f"20260101-000000.{n:03d}" for n in range(5)]
    records = b"".join(b"R\0" + name.encode() + b"\0d\0n\0\0\0" for name in names)
    listed = parse_listing(b"sshipit-releases\0ok\0N\0" + str(LIMIT + 3).encode() + b"\0" + records + b"E\0", "a")
    assert listed.omitted == 3 and [r.id for r in listed.releases] == names[::-1]


def test_the_card_renders_the_listing_and_a_deploy_card_has_no_listing(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, site: Path, run_sshipit: RunSshipit,
    tmp_path: Path,
) -> None:
    from test_card_render import render  # docs/card.json expanded and drawn as Drone's UI does

    key = keys["ed25519"]
    a, b = machines[1], machines[2]
    deployed = tmp_path / "deploy-card.json"
    first = run_sshipit(env={**env_for([a, b], key, target, atomic=True, sources="dist"),
                             "DRONE_CARD_PATH": str(deployed)})
    assert first.returncode == 0, first
    assert deploy(run_sshipit, [a], key, target, "3" * 40).returncode == 0
    listed = tmp_path / "list-card.json"
    result = run_sshipit(env={**env_for([a, b], key, target, list_releases=True), "DRONE_CARD_PATH": str(listed)})
    assert result.returncode == 0, result
    text = render(json.loads(listed.read_text()), tmp_path, tmp_path / "list.png")
    joined = "\n".join(text)
    assert "Releases on 2 hosts" in text and "State" in text and "releases" in text, joined
    for machine in (a, b):
        for release in on_disk(machine, target):
            assert release in text, joined
    assert "live" in text and "good" in text and f"not on {b.label}" in text, joined
    assert not any("${" in part for part in text), joined
    deploy_text = render(json.loads(deployed.read_text()), tmp_path, tmp_path / "deploy.png")
    assert "Deployed to 2 hosts" in deploy_text and "State" not in deploy_text, deploy_text


def test_a_bare_busybox_server_is_listed_without_sizes(
    bare_server: LocalServer, keys: dict[str, KeyPair], site: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """Only BusyBox's basic tools (no du, no timeout, no gzip): every field but the size, which shows "?"."""
    target = str(remote_dir / "app")
    env = plugin_env(bare_server, keys["ed25519"], target=target)
    deployed = run_sshipit(env={**env, "PLUGIN_SOURCES": "dist", "PLUGIN_ATOMIC": "true",
                                "DRONE_COMMIT_SHA": "5" * 40})
    assert deployed.returncode == 0, deployed
    result = run_sshipit("releases", env=env)
    assert result.returncode == 0, result
    (release,) = [p.name for p in (remote_dir / "app/releases").iterdir()]
    meta = json.loads((remote_dir / "app/releases" / release / ".sshipit-release.json").read_text())
    assert rows(result)[release][:5] == [release, meta["created"], "5555555", "live", "?"], result


def test_past_the_limit_the_newest_are_listed_and_the_rest_counted(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, run_sshipit: RunSshipit,
) -> None:
    a = machines[2]
    login = default_login_user()
    names = [f"20250101-{n // 60:04d}{n % 60:02d}.000-{n:07d}" for n in range(LIMIT + 3)]
    for path in [a.home / target, a.home / target / "releases"]:
        path.mkdir()
        os.chown(path, login.pw_uid, login.pw_gid)
    for name in names:
        folder = a.home / target / "releases" / name
        folder.mkdir()
        (folder / ".sshipit-release.json").write_text(json.dumps({"id": name, "result": "ok"}))
    result = run_sshipit("releases", env=env_for([a], keys["ed25519"], target), timeout=110)
    assert result.returncode == 0, result
    shown = [name for name in rows(result) if name in names]
    assert shown == sorted(names, reverse=True)[:LIMIT], result.stdout[-2000:]
    assert f"releases: {LIMIT + 3} in {target}/releases, live: none" in result.stdout
    assert f"releases: 3 older releases are not listed (the newest {LIMIT} are)" in result.stdout


def test_one_unreachable_host_fails_the_step_and_the_others_are_still_listed(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, site: Path, run_sshipit: RunSshipit,
) -> None:
    import socket

    a = machines[0]
    assert deploy(run_sshipit, [a], keys["ed25519"], target, "6" * 40).returncode == 0
    with socket.socket() as closed:  # a port nobody listens on: refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = env_for([a], keys["ed25519"], target, retries=0)
    env["PLUGIN_HOST"] += f",127.0.0.1:{port}"
    result = run_sshipit("releases", env=env)
    assert result.returncode == 1, result
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], result
    assert rows(result, a)[live(a, target) or ""][3] == "live", result
    assert re.search(r"^summary: 2 hosts, 1 failed", result.stdout, re.M), result


def test_a_target_the_login_cannot_enter_is_one_line(
    machines: list[Machine], keys: dict[str, KeyPair], target: str, run_sshipit: RunSshipit,
) -> None:
    a = machines[1]
    (a.home / target).mkdir(mode=0o700)  # root's: the login may not enter it
    result = run_sshipit("releases", env=env_for([a], keys["ed25519"], target))
    one_error(result, 1, f"{target} cannot be entered by this login (permission denied)", "[setting: target]")


def test_with_sudo_the_listing_reads_as_the_deploy_wrote(
    sudo_server: LocalServer, root_dir: Path,  # noqa: F811 (test_privileges' fixtures, imported above)
    keys: dict[str, KeyPair], site: Path, run_sshipit: RunSshipit,
) -> None:
    """A target only root may enter: with sudo: true the listing reads it as root, as the deploy wrote it."""
    target = root_dir / "app"
    env = plugin_env(sudo_server, keys["ed25519"], target=str(target), sudo="true")
    deployed = run_sshipit(env={**env, "PLUGIN_SOURCES": "dist", "PLUGIN_ATOMIC": "true"})
    assert deployed.returncode == 0, deployed
    target.chmod(0o700)  # root's alone now
    before = tree(target)
    result = run_sshipit("releases", env=env)
    assert result.returncode == 0, result
    assert tree(target) == before
    (release,) = [p.name for p in (target / "releases").iterdir()]
    size = human_bytes(du_kib(target / "releases" / release) * 1024)
    assert rows(result)[release][3:5] == ["live", size], result
    without = run_sshipit("releases", env={**env, "PLUGIN_SUDO": "false"})
    one_error(without, 1, f"{target} cannot be entered by this login (permission denied)")
