"""Which release goes live: a deploy split in phases across CI jobs (prepare per shard, then one switch), stable
release ids that a re-run meets again, and rollbacks to a named release; against twelve real OpenSSH servers.

Each "CI job" is a separate `sshipit` process with the same build environment, run in the order (and, for the
parallel shard jobs, at the same time) a CI would run them. What is checked is on disk, on every server.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, at_home, login_home, one_error, plugin_env, rmtree
from sshipit.localserver import HOST_KEY_KINDS, KeyPair, LocalServer, default_login_user

SIZE = 12
OLD = {"DRONE_COMMIT_SHA": "1111111aaaaaaaa", "DRONE_BUILD_NUMBER": "41", "DRONE_REPO": "acme/web"}
NEW = {"DRONE_COMMIT_SHA": "2222222bbbbbbbb", "DRONE_BUILD_NUMBER": "42", "DRONE_REPO": "acme/web"}
NEW_ID = "42-2222222"  # what every job of build 42 derives


@dataclass
class Machine:
    server: LocalServer
    home: Path  # where its sessions start: each server stands for a machine of its own

    @property
    def label(self) -> str:
        return f"{self.server.host}:{self.server.port}"


@pytest.fixture(scope="module")
def machines(keys: dict[str, KeyPair]) -> Iterator[list[Machine]]:
    """Twelve sshd processes logging in the same user, each starting its sessions in a home of its own (as
    test_fleet does); they share one set of host keys, made once."""
    root = Path(tempfile.mkdtemp(prefix="sshipit-phases-"))
    root.chmod(0o711)
    started: list[Machine] = []

    def make(number: int) -> Machine:
        workdir, home = root / f"{number:02d}", root / f"{number:02d}-home"
        login_home(home)
        if number:  # copies of the first server's host keys: generating 36 keys is slow
            workdir.mkdir()
            for kind in HOST_KEY_KINDS:
                for suffix in ("", ".pub"):
                    name = f"ssh_host_{kind}_key{suffix}"
                    shutil.copy2(root / "00" / name, workdir / name)
        server = LocalServer(workdir, extra_config=at_home(home))
        server.authorize(keys["ed25519"].public_text)
        return Machine(server, home)

    try:
        first = make(0)
        started.append(first)
        started += [make(number) for number in range(1, SIZE)]
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda m: m.server.start(), started))
        assert len({m.server.port for m in started}) == SIZE
        yield started
    finally:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda m: m.server.stop(), started))
        rmtree(root)


@pytest.fixture
def target(machines: list[Machine]) -> Iterator[str]:
    name = f"app-{time.monotonic_ns()}"
    yield name
    for machine in machines:
        rmtree(machine.home / f"outside-{name}")
        path = machine.home / name
        if path.exists():
            for sub in path.rglob("*"):  # a test made one read-only
                if sub.is_dir() and not sub.is_symlink():
                    sub.chmod(0o755)
        rmtree(path)


@pytest.fixture
def dist(workspace: Path) -> Path:
    (workspace / "dist").mkdir()
    (workspace / "dist/index.html").write_text("v1\n")
    return workspace / "dist"


def env_for(members: list[Machine], key: KeyPair, target: str, build: dict[str, str], **settings: object
            ) -> dict[str, str]:
    env = plugin_env(members[0].server, key, target=target, **settings)
    env.pop("PLUGIN_PORT")
    env["PLUGIN_HOST"] = ",".join(m.label for m in members)
    env["PLUGIN_FINGERPRINT"] = ",".join(members[0].server.fingerprints().values())
    return {**env, **build}


def current(machine: Machine, target: str) -> str | None:
    link = machine.home / target / "current"
    return os.readlink(link).split("/")[-1] if link.is_symlink() else None


def meta(machine: Machine, target: str, release: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((machine.home / target / "releases" / release / ".sshipit-release.json")
                                      .read_text())
    return data


def served(machine: Machine, target: str) -> str:
    return (machine.home / target / "current/dist/index.html").read_text()


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error: " in line]


def jobs(run_sshipit: RunSshipit, envs: list[dict[str, str]], *args: str) -> list[Result]:
    """Parallel CI jobs: one sshipit process each, all at once."""
    with ThreadPoolExecutor(len(envs)) as pool:
        return list(pool.map(lambda env: run_sshipit(*args, env=env, timeout=180), envs))


def live_everywhere(run_sshipit: RunSshipit, members: list[Machine], key: KeyPair, target: str) -> str:
    """Build 41 deployed the ordinary way (phase all): the release every host runs before the split deploy."""
    first = run_sshipit(env=env_for(members, key, target, OLD, sources="dist", atomic=True), timeout=180)
    assert first.returncode == 0, first
    old = {current(m, target) for m in members}
    assert len(old) == 1 and None not in old, old
    return str(old.pop())


def shard_envs(members: list[Machine], key: KeyPair, target: str, **settings: object) -> list[dict[str, str]]:
    return [env_for(members, key, target, NEW, sources="dist", phase="prepare", shard=f"{k}/3", **settings)
            for k in (1, 2, 3)]


# ------------------------------------------------------------------------------------------- prepare, switch


def test_three_shard_jobs_then_one_switch_put_one_release_on_every_host(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    old = live_everywhere(run_sshipit, machines, key, target)
    (dist / "index.html").write_text("v2\n")
    envs = shard_envs(machines, key, target)

    # `sshipit plan` for the first shard job: its four hosts, nothing changed.
    plan = run_sshipit("plan", env=envs[0], timeout=180)
    assert plan.returncode == 0, plan
    assert plan.stdout.count("switch nothing (phase: prepare, shard 1/3: 4 of 12 hosts)") == 4, plan
    assert not any((m.home / target / "releases" / NEW_ID).exists() for m in machines)

    # The first shard job alone: exactly its four hosts hold the new release, prepared, and nothing switched.
    card = dist.parent / "card.json"
    first = run_sshipit(env={**envs[0], "DRONE_CARD_PATH": str(card)}, timeout=180)
    assert first.returncode == 0, first
    assert "summary: 4 hosts, all ok" in first.stdout, first
    assert json.loads(card.read_text())["data"]["title"] == f"Prepared release {NEW_ID} on 4 hosts; nothing switched"
    holding = [m for m in machines if (m.home / target / "releases" / NEW_ID).is_dir()]
    assert holding == machines[:4], [m.label for m in holding]
    assert all(meta(m, target, NEW_ID)["result"] == "prepared" for m in holding)
    assert all(current(m, target) == old for m in machines)

    # The other two at once, as parallel CI jobs.
    for result in jobs(run_sshipit, envs[1:]):
        assert result.returncode == 0, result
        assert "summary: 4 hosts, all ok" in result.stdout, result
    for machine in machines:
        data = meta(machine, target, NEW_ID)
        assert (data["result"], data["commit"], data["build"]) == ("prepared", NEW["DRONE_COMMIT_SHA"], "42")
        assert (machine.home / target / "releases" / NEW_ID / "dist/index.html").read_text() == "v2\n"
        assert current(machine, target) == old and served(machine, target) == "v1\n"

    # `sshipit plan` for the switch job: every host checked, nothing changed.
    switch_env = env_for(machines, key, target, NEW, phase="switch")
    plan = run_sshipit("plan", env=switch_env, timeout=180)
    assert plan.returncode == 0, plan
    assert plan.stdout.count(f"would switch current from {old} to {NEW_ID}") == SIZE, plan
    assert all(current(m, target) == old for m in machines)

    # The switch job: every host at once.
    switched = run_sshipit(env=switch_env, timeout=180)
    assert switched.returncode == 0, switched
    assert f"summary: {SIZE} hosts, all ok" in switched.stdout, switched
    for machine in machines:
        assert current(machine, target) == NEW_ID and served(machine, target) == "v2\n"
        assert meta(machine, target, NEW_ID)["result"] == "ok"
        assert sorted(p.name for p in (machine.home / target / "releases").iterdir()) == sorted([old, NEW_ID])


def test_one_failing_shard_leaves_every_host_on_the_old_release_and_the_switch_names_the_hosts(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    old = live_everywhere(run_sshipit, machines, key, target)
    (dist / "index.html").write_text("v2\n")
    broken = machines[5]  # in shard 2 (hosts 5-8): its releases/ is read-only for the login
    (broken.home / target / "releases").chmod(0o555)
    results = jobs(run_sshipit, shard_envs(machines, key, target))
    assert [r.returncode == 0 for r in results] == [True, False, True], results
    assert broken.label in "\n".join(error_lines(results[1])), results[1]
    assert not (broken.home / target / "releases" / NEW_ID).exists()

    switch_env = env_for(machines, key, target, NEW, phase="switch")
    refused = run_sshipit(env=switch_env, timeout=180)
    assert refused.returncode != 0, refused
    assert "Traceback" not in refused.output
    lacking = [line for line in error_lines(refused) if f"release {NEW_ID} is not on this host" in line]
    assert len(lacking) == 1 and broken.label in lacking[0], refused
    others = [line for line in error_lines(refused) if line not in lacking]
    assert len(others) == SIZE - 1, refused
    assert all(f"{broken.label} cannot switch to release {NEW_ID}" in line for line in others), refused
    assert f"the previous release stays on {SIZE} hosts" in refused.stdout, refused
    for machine in machines:
        assert current(machine, target) == old and served(machine, target) == "v1\n", machine.label
    # In batches of four too: the broken host is in the second batch, and the first does not switch either.
    batched = run_sshipit(env={**switch_env, "PLUGIN_BATCH_SIZE": "4"}, timeout=180)
    assert batched.returncode != 0, batched
    assert "checking that each of the 12 hosts can switch before the first batch does" in batched.stdout, batched
    assert any(f"release {NEW_ID} is not on this host" in line and broken.label in line
               for line in error_lines(batched)), batched
    assert "batch 1 of 3" not in batched.stdout, batched
    assert all(current(m, target) == old for m in machines)

    # A re-run of the failed shard job, once the host is fixed: its three good hosts reuse their release (no
    # upload), the broken one gets it; then the switch goes through.
    (broken.home / target / "releases").chmod(0o755)
    rerun = run_sshipit(env=shard_envs(machines, key, target)[1], timeout=180)
    assert rerun.returncode == 0, rerun
    assert rerun.stdout.count(f"release {NEW_ID}: reused (complete, same commit)") == 3, rerun
    assert "upload:" in "\n".join(line for line in rerun.stdout.splitlines() if broken.label in line), rerun
    switched = run_sshipit(env={**switch_env, "PLUGIN_BATCH_SIZE": "4"}, timeout=180)
    assert switched.returncode == 0, switched
    assert "batch 3 of 3" in switched.stdout, switched
    assert all(current(m, target) == NEW_ID and served(m, target) == "v2\n" for m in machines)


def test_a_rerun_replaces_an_incomplete_or_foreign_release_and_never_the_live_one(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    three = machines[:3]
    old = live_everywhere(run_sshipit, three, key, target)
    (dist / "index.html").write_text("v2\n")
    login = default_login_user()
    # Host 0: a crashed prepare of the same id (still "preparing") left a stray file. Host 1: a complete
    # release of that id, but made from another commit, with a file of its own. Host 2: nothing.
    for machine, result, commit in ((three[0], "preparing", NEW["DRONE_COMMIT_SHA"]), (three[1], "prepared",
                                                                                     "9999999cccc")):
        folder = machine.home / target / "releases" / NEW_ID
        folder.mkdir()
        (folder / "stray.txt").write_text("from another upload\n")
        (folder / ".sshipit-release.json").write_text(json.dumps({"id": NEW_ID, "commit": commit,
                                                                  "result": result}) + "\n")
        for path in (folder, folder / "stray.txt", folder / ".sshipit-release.json"):
            os.chown(path, login.pw_uid, login.pw_gid)
    # Host 2: the login made the release a symlink to a directory outside the target, whose metadata claims a
    # complete release of this very commit: never reused (its metadata would be written through the link).
    outside = three[2].home / f"outside-{target}"
    outside.mkdir()
    (outside / ".sshipit-release.json").write_text(json.dumps({"id": NEW_ID, "commit": NEW["DRONE_COMMIT_SHA"],
                                                               "result": "prepared"}) + "\n")
    (outside / "keep.txt").write_text("not the deploy's\n")
    for path in (outside, *outside.iterdir()):
        os.chown(path, login.pw_uid, login.pw_gid)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    (three[2].home / target / "releases" / NEW_ID).symlink_to(outside)
    env = env_for(three, key, target, NEW, sources="dist", phase="prepare")
    result = run_sshipit(env=env, timeout=180)
    assert result.returncode == 0, result
    assert result.stdout.count(f"removed unfinished release {NEW_ID}") == 2, result
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert not (three[2].home / target / "releases" / NEW_ID).is_symlink()
    assert f"release {NEW_ID}: replaced (from commit 9999999)" in result.stdout, result
    for machine in three:
        folder = machine.home / target / "releases" / NEW_ID
        assert not (folder / "stray.txt").exists(), machine.label  # never two uploads in one directory
        assert (folder / "dist/index.html").read_text() == "v2\n"
        assert meta(machine, target, NEW_ID)["result"] == "prepared"
        assert current(machine, target) == old

    # Switched by a later build (a promotion) naming the release: its metadata stays the prepare jobs' own.
    promotion = {**NEW, "DRONE_BUILD_NUMBER": "50", "DRONE_COMMIT_SHA": "5555555fffffff"}
    switched = run_sshipit(env=env_for(three, key, target, promotion, phase="switch", release_id=NEW_ID),
                           timeout=180)
    assert switched.returncode == 0, switched
    for machine in three:
        data = meta(machine, target, NEW_ID)
        assert (data["result"], data["commit"], data["build"]) == ("ok", NEW["DRONE_COMMIT_SHA"], "42"), data
    # Then prepared again by a job of another commit that names the same release_id: refused, the live release
    # untouched.
    other = {**NEW, "DRONE_COMMIT_SHA": "3333333dddddddd"}
    clash = run_sshipit(env=env_for(three, key, target, other, sources="dist", phase="prepare",
                                    release_id=NEW_ID), timeout=180)
    assert clash.returncode != 0, clash
    assert "a live release is never replaced" in clash.stderr and "[setting: release_id]" in clash.stderr, clash
    for machine in three:
        assert current(machine, target) == NEW_ID and meta(machine, target, NEW_ID)["commit"] == NEW[
            "DRONE_COMMIT_SHA"]


def test_a_prepared_release_outlives_leftover_cleaning_and_pruning(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    one = machines[:1]
    live_everywhere(run_sshipit, one, key, target)
    prepared = run_sshipit(env=env_for(one, key, target, NEW, sources="dist", phase="prepare"), timeout=180)
    assert prepared.returncode == 0, prepared
    # An ordinary deploy after it, keeping one release: the prepared one is newer than what was live, so neither
    # the leftover cleaning nor pruning removes it; one more deploy, and it is older than the live one: pruned.
    names = []
    for build in ("43", "44"):
        later = {**NEW, "DRONE_BUILD_NUMBER": build, "DRONE_COMMIT_SHA": f"{build}44444eeeee"}
        result = run_sshipit(env=env_for(one, key, target, later, sources="dist", atomic=True, keep_releases=1),
                             timeout=180)
        assert result.returncode == 0, result
        names.append(sorted(p.name for p in (one[0].home / target / "releases").iterdir()))
    assert NEW_ID in names[0] and len(names[0]) == 3, names  # the one before, the prepared one, the live one
    assert NEW_ID not in names[1] and len(names[1]) == 2, names


# ----------------------------------------------------------------------------------------- named rollbacks


def test_rollback_to_a_named_release_back_and_forward(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    three = machines[:3]
    ids = []
    for version in ("1", "2", "3"):
        (dist / "index.html").write_text(f"v{version}\n")
        build = {"DRONE_COMMIT_SHA": version * 7 + "abcdef", "DRONE_BUILD_NUMBER": version}
        result = run_sshipit(env=env_for(three, key, target, build, sources="dist", atomic=True), timeout=180)
        assert result.returncode == 0, result
        ids.append(current(three[0], target))
    first, _, third = ids
    assert first and third

    back = run_sshipit(env=env_for(three, key, target, NEW, rollback=first), timeout=180)
    assert back.returncode == 0, back
    assert all(current(m, target) == first and served(m, target) == "v1\n" for m in three)
    assert all(meta(m, target, third)["result"] == "rolled-back" for m in three)

    forward = run_sshipit("rollback", third, env=env_for(three, key, target, NEW), timeout=180)
    assert forward.returncode == 0, forward
    assert all(current(m, target) == third and served(m, target) == "v3\n" for m in three)

    plan = run_sshipit("plan", env=env_for(three, key, target, NEW, switch_to=first), timeout=180)
    assert plan.returncode == 0 and plan.stdout.count(f"would switch current from {third} to {first}") == 3, plan
    assert all(current(m, target) == third for m in three)


def test_rollback_to_a_release_missing_or_broken_on_one_host_changes_nothing(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    key = keys["ed25519"]
    three = machines[:3]
    ids = []
    for version in ("1", "2"):
        (dist / "index.html").write_text(f"v{version}\n")
        build = {"DRONE_COMMIT_SHA": version * 7 + "abcdef", "DRONE_BUILD_NUMBER": version}
        assert run_sshipit(env=env_for(three, key, target, build, sources="dist", atomic=True),
                           timeout=180).returncode == 0
        ids.append(current(three[0], target))
    first, second = ids
    assert first and second
    rmtree(three[1].home / target / "releases" / first)  # gone from one host
    for wanted, needle in ((first, f"release {first} is not on this host"), ("no-such-release", "is not on this")):
        result = run_sshipit(env=env_for(three, key, target, NEW, rollback=wanted), timeout=180)
        assert result.returncode != 0 and "Traceback" not in result.output, result
        assert any(needle in line and three[1].label in line for line in error_lines(result)), result
        assert all(current(m, target) == second and served(m, target) == "v2\n" for m in three)
    # On another host the release is there but its deploy failed: not complete, refused the same way.
    meta_path = three[2].home / target / "releases" / first / ".sshipit-release.json"
    meta_path.write_text(meta_path.read_text().replace('"result": "ok"', '"result": "failed"'))
    result = run_sshipit(env=env_for(three, key, target, NEW, rollback=first), timeout=180)
    assert result.returncode != 0, result
    assert any(f"release {first} is not complete on this host (its state: failed)" in line and three[2].label in line
               for line in error_lines(result)), result
    assert any(f"release {first} is not on this host" in line and three[1].label in line
               for line in error_lines(result)), result
    assert any(line.startswith(f"[{three[0].label}] error: ") and "not switched, because" in line
               and three[1].label in line and three[2].label in line for line in error_lines(result)), result
    assert all(current(m, target) == second for m in three)


# -------------------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(("settings", "setting", "needle"), [
    ({"phase": "prepare", "shard": "0/3"}, "shard", "shards count from 1"),
    ({"phase": "prepare", "shard": "4/3"}, "shard", "there is no shard 4 of 3"),
    ({"phase": "prepare", "shard": "two of three"}, "shard", "is not K/N"),
    ({"phase": "prepare", "shard": "2/3"}, "shard", "holds no host"),  # one host: shard 2 of 3 is empty
    ({"shard": "1/2"}, "shard", "but phase is all"),
    ({"phase": "switch", "shard": "1/2"}, "shard", "but phase is switch"),
    ({"phase": "deploy"}, "phase", "is not one of all, prepare, switch"),
    ({"phase": "prepare", "release_id": "../etc"}, "release_id", "is not a usable release id"),
    ({"phase": "prepare", "release_id": ".hidden"}, "release_id", "is not a usable release id"),
    ({"rollback": "a b"}, "rollback", "is not a usable release id"),
    ({"rollback": "true", "phase": "prepare"}, "phase", "rollback switches to a release"),
    ({"rollback": "true", "release_id": "x1"}, "release_id", "rollback deploys none"),
    ({"phase": "switch", "sources": "dist"}, "sources", "belongs to phase: prepare"),
    ({"phase": "prepare", "post_commands": "true"}, "post_commands", "phase: prepare switches nothing"),
])
def test_bad_phase_settings_are_one_line_and_contact_no_host(
    settings: dict[str, str], setting: str, needle: str, machines: list[Machine], keys: dict[str, KeyPair],
    dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    machine = machines[0]
    before = len(machine.server.log_text())
    settings = {"sources": "dist", **settings} if settings.get("phase") != "switch" and "rollback" not in settings \
        else settings
    result = run_sshipit(env=env_for([machine], keys["ed25519"], target, NEW, **settings))
    line = one_error(result, 2, f"[setting: {setting}]", needle)
    assert "Traceback" not in result.output and line
    assert "Connection from" not in machine.server.log_text()[before:]
    assert not (machine.home / target).exists()


def test_a_split_deploy_without_a_build_or_commit_asks_for_release_id(
    machines: list[Machine], keys: dict[str, KeyPair], dist: Path, target: str, run_sshipit: RunSshipit,
) -> None:
    result = run_sshipit(env=env_for(machines[:1], keys["ed25519"], target, {}, sources="dist", phase="prepare"))
    one_error(result, 2, "[setting: release_id]", "none can be derived")


# ------------------------------------------------------------------------------------------------ pure logic


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=1, max_value=64))
def test_every_host_is_in_exactly_one_shard_and_shards_are_even(count: int, total: int) -> None:
    from sshipit.phases import shard_hosts

    hosts = list(range(count))
    shares = [shard_hosts(hosts, k, total) for k in range(1, total + 1)]  # type: ignore[arg-type]
    assert [h for share in shares for h in share] == hosts  # each once, in order
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1
    assert shares == [shard_hosts(list(hosts), k, total) for k in range(1, total + 1)]  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=999), st.integers(min_value=0, max_value=999), st.sampled_from(
    ["{k}/{n}", " {k} / {n} ", "{k}/{n}\n"]))
def test_shard_text_is_read_or_refused_in_one_line(number: int, total: int, form: str) -> None:
    from sshipit.errors import SettingsError
    from sshipit.phases import parse_shard

    text = form.format(k=number, n=total)
    if 1 <= number <= total:
        assert parse_shard(text) == (number, total)
    else:
        with pytest.raises(SettingsError) as raised:
            parse_shard(text)
        assert "\n" not in raised.value.message and raised.value.setting == "shard"


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.booleans()), min_size=1, max_size=12,
                unique_by=lambda t: t[0]))
def test_releases_are_ordered_by_time_whether_their_ids_are_stamps_or_names(made: list[tuple[int, bool]]) -> None:
    """Stamped ids and fixed ids (derived, release_id) mixed: ordered by when each was made, and the previous good
    release is the newest ok one before the live one."""
    from sshipit.plan import release_stamp
    from sshipit.release import parse_state

    lines, expected = [], []
    for seconds, named in sorted(made):
        stamp = release_stamp(1.8e9 + seconds / 1000)
        name = f"{seconds}-abc1234" if named else f"{stamp}-abc1234"
        data = {"id": name, "stamp": stamp, "result": "ok"} if named else {"id": name, "result": "ok"}
        lines.append(f"release {name} {json.dumps(data)}")
        expected.append(name)
    lines.reverse()  # the server lists them in any order
    state = parse_state("\n".join([f"current releases/{expected[-1]}", *lines]), "web1", "/srv/app")
    assert [r.id for r in state.releases] == expected
    assert state.previous_good() == (expected[-2] if len(expected) > 1 else None)
