"""Commands that run once, hooks around a deploy, and the deploy's facts as variables, against three real sshd.

Each server stands for a machine of its own (its sessions start in a home of their own, so the same relative
target is three directories); they log in as one user, so a command on any of them can append to one ledger
outside every target, and read where each machine's `current` points: that is how "exactly once" and "before any
host switched" are observed, not assumed.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import Result, at_home, login_home, plugin_env, rmtree, start_server
from sshipit.commands import Facts, build_script
from sshipit.hooks import Once
from sshipit.hosts import HostSpec
from sshipit.localserver import KeyPair, LocalServer, default_login_user
from sshipit.plan import Plan

MACHINES = 3
FAIL_STATUS = 7


@dataclass
class Machine:
    server: LocalServer
    home: Path  # where its sessions start

    @property
    def label(self) -> str:
        return f"{self.server.host}:{self.server.port}"


@pytest.fixture(scope="module")
def machines(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[list[Machine]]:
    def start(number: int) -> Machine:
        workdir = server_root / f"hooks-{number}"
        home = login_home(workdir / "home")
        return Machine(start_server(workdir, keys, at_home(home), authorize=("ed25519",)), home)

    with ThreadPoolExecutor(MACHINES) as pool:
        started = list(pool.map(start, range(MACHINES)))
    yield started
    for machine in started:
        machine.server.stop()


@dataclass
class Stage:
    """One test's target name on every machine, and a ledger directory outside all of them."""

    target: str
    ledger: Path
    machines: list[Machine]

    def root(self, machine: Machine) -> Path:
        return machine.home / self.target

    def current(self, machine: Machine) -> str | None:
        link = self.root(machine) / "current"
        return os.readlink(link).split("/")[-1] if link.is_symlink() else None

    def releases(self, machine: Machine) -> list[str]:
        directory = self.root(machine) / "releases"
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def lines(self, name: str) -> list[str]:
        path = self.ledger / name
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def stage(machines: list[Machine], server_root: Path) -> Iterator[Stage]:
    login = default_login_user()
    ledger = Path(tempfile.mkdtemp(prefix="ledger-", dir=server_root))
    os.chown(ledger, login.pw_uid, login.pw_gid)
    ledger.chmod(0o755)
    name = f"app-{time.monotonic_ns()}"
    yield Stage(name, ledger, machines)
    rmtree(ledger)
    for machine in machines:
        rmtree(machine.home / name)


def env_for(stage: Stage, key: KeyPair, **settings: object) -> dict[str, str]:
    servers = [machine.server for machine in stage.machines]
    env = plugin_env(servers[0], key, target=stage.target, **settings)
    env.pop("PLUGIN_PORT")
    env["PLUGIN_HOST"] = ",".join(machine.label for machine in stage.machines)
    env["PLUGIN_FINGERPRINT"] = ",".join(fp for srv in servers for fp in srv.fingerprints().values())
    return env


def on(machine: Machine, status: int = FAIL_STATUS) -> str:
    """A command that exits `status` on `machine` only (told apart by the server port in SSH_CONNECTION)."""
    return f'case "$SSH_CONNECTION" in *" {machine.server.port}") exit {status};; esac; true'


def errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error: " in line]


def warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "warning: " in line]


def error_of(result: Result, machine: Machine) -> str:
    found = [line for line in errors(result) if line.startswith((f"[{machine.label}] error: ", "error: "))]
    assert len(found) == 1, result
    return found[0].split("error: ", 1)[1]


def build(workspace: Path, version: str) -> None:
    (workspace / "dist").mkdir(exist_ok=True)
    (workspace / "dist/version").write_text(version + "\n")


def deploy(run_sshipit: RunSshipit, env: dict[str, str], commit: str, status: int = 0) -> Result:
    result = run_sshipit(env={**env, "DRONE_COMMIT_SHA": commit})
    assert "Traceback" not in result.output, result
    assert result.returncode == status, result
    return result


def witness(stage: Stage, name: str) -> str:
    """A command that appends to the ledger: which host, which release, in which directory, and where every
    machine's current pointed at that moment."""
    currents = " ".join(f'$(readlink {machine.home}/{stage.target}/current || echo none)'
                        for machine in stage.machines)
    return f'echo "$SSHIPIT_HOST $SSHIPIT_RELEASE $(pwd -P) {currents}" >> {stage.ledger}/{name}'


# -------------------------------------------------------------------------------------------------- run_once


class TestRunOnce:
    def test_atomic_runs_exactly_once_in_the_first_hosts_new_release_before_any_switch(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        first, *others = stage.machines
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, run_once=witness(stage, "migrations"))
        deploy(run_sshipit, env, "1111111")
        old = [stage.current(m) for m in stage.machines]
        build(workspace, "2")
        result = deploy(run_sshipit, env, "2222222")
        new = [stage.current(m) for m in stage.machines]
        assert all(n and n.endswith("-2222222") for n in new), new
        runs = stage.lines("migrations")
        assert len(runs) == 2, runs  # one per deploy, for three hosts
        host, release, cwd, *currents = runs[1].split()
        assert (host, release) == (first.label, new[0])
        assert cwd == str(stage.root(first) / "releases" / new[0])  # the new release, not current
        assert [c.split("/")[-1] for c in currents] == old  # no host had switched yet
        assert f"[{first.label}] run_once: ran 1 command" in result.stdout
        assert not any(f"[{m.label}] run_once:" in result.stdout for m in others)

    def test_rolling_batches_run_it_once_before_the_first_batch_switches(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, batch_size=1,
                      run_once=witness(stage, "migrations"))
        deploy(run_sshipit, env, "1111111")
        runs = stage.lines("migrations")
        assert len(runs) == 1, runs
        host, _release, _cwd, *currents = runs[0].split()
        assert host == stage.machines[0].label
        assert currents == ["none"] * MACHINES  # before the first batch's switch
        assert all(stage.current(m) for m in stage.machines)

    def test_a_failing_run_once_leaves_every_host_on_the_old_release(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        first, *others = stage.machines
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True)
        deploy(run_sshipit, env, "1111111")
        before = {m.label: (stage.current(m), stage.releases(m)) for m in stage.machines}
        build(workspace, "2")
        env["PLUGIN_RUN_ONCE"] = "echo migrating; exit 42"
        result = deploy(run_sshipit, env, "2222222", status=42)  # the command's own status
        for machine in stage.machines:  # old release live, the new one discarded everywhere
            assert (stage.current(machine), stage.releases(machine)) == before[machine.label], machine.label
            assert (stage.root(machine) / "current/dist/version").read_text() == "1\n"
        line = error_of(result, first)
        assert "run_once: command 1 `echo migrating; exit 42` exited with status 42" in line, line
        for machine in others:
            assert f"not switched, because run_once failed on {first.label}" in error_of(result, machine)
        assert "switch: current ->" not in result.stdout

    def test_split_deploy_runs_it_in_the_switch_job_before_any_switch(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        first = stage.machines[0]
        build(workspace, "1")
        ci = {"DRONE_BUILD_NUMBER": "42"}
        prepare = env_for(stage, keys["ed25519"], sources="dist", phase="prepare")
        deploy(run_sshipit, {**prepare, **ci}, "2222222")
        assert stage.lines("migrations") == [] and all(stage.current(m) is None for m in stage.machines)
        switch = env_for(stage, keys["ed25519"], phase="switch", run_once=witness(stage, "migrations"))
        deploy(run_sshipit, {**switch, **ci}, "2222222")
        runs = stage.lines("migrations")
        assert len(runs) == 1, runs
        host, release, cwd, *currents = runs[0].split()
        assert (host, release) == (first.label, "42-2222222")
        assert cwd == str(stage.root(first) / "releases/42-2222222")
        assert currents == ["none"] * MACHINES
        assert all(stage.current(m) == "42-2222222" for m in stage.machines)

    def test_plain_runs_on_the_first_host_after_its_upload_and_the_others_commands_wait(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        build(workspace, "1")
        upload = f'test -f "$SSHIPIT_TARGET/dist/version" && echo uploaded >> {stage.ledger}/migrations'
        # Every host's commands count the migrations that ran before them: always exactly one.
        count = f"grep -c uploaded {stage.ledger}/migrations >> {stage.ledger}/seen"
        env = env_for(stage, keys["ed25519"], sources="dist", run_once=upload, commands=count,
                      max_parallel=3)
        deploy(run_sshipit, env, "1111111")
        assert stage.lines("migrations") == ["uploaded"]
        assert stage.lines("seen") == ["1"] * MACHINES

    def test_plain_failing_run_once_stops_every_hosts_commands(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        first, *others = stage.machines
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", run_once="exit 3",
                      commands=f"echo ran >> {stage.ledger}/commands")
        result = deploy(run_sshipit, env, "1111111", status=3)
        assert stage.lines("commands") == []
        assert "run_once: command 1 `exit 3` exited with status 3" in error_of(result, first)
        for machine in others:
            assert f"commands not run, because run_once failed on {first.label}" in error_of(result, machine)


# ------------------------------------------------------------------------------------------------------ hooks


class TestHooks:
    def test_before_upload_failing_leaves_nothing_uploaded(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        _first, second, _third = stage.machines
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True)
        deploy(run_sshipit, env, "1111111")
        before = {m.label: stage.releases(m) for m in stage.machines}
        build(workspace, "2")
        # It runs before the upload (the new release's directory is not there yet), on every host.
        env["PLUGIN_BEFORE_UPLOAD"] = (f'test ! -e "$SSHIPIT_RELEASE_PATH" && echo "$SSHIPIT_HOST" >> '
                                       f'{stage.ledger}/before; {on(second, 5)}')
        result = deploy(run_sshipit, env, "2222222", status=5)
        assert sorted(stage.lines("before")) == sorted(m.label for m in stage.machines)
        for machine in stage.machines:
            assert stage.releases(machine) == before[machine.label], machine.label
            assert (stage.root(machine) / "current/dist/version").read_text() == "1\n"
        assert "before_upload: command 1 `" in error_of(result, second)
        assert f"[{second.label}] upload:" not in result.stdout

    def test_before_upload_failing_in_plain_mode_uploads_nothing(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", before_upload="exit 4")
        deploy(run_sshipit, env, "1111111", status=4)
        for machine in stage.machines:
            assert not (stage.root(machine) / "dist").exists()

    def test_on_failure_runs_on_the_failed_host_only_with_the_error(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        _first, second, _third = stage.machines
        build(workspace, "1")
        hook = (f'printf "%s\\n" "$SSHIPIT_HOST" "$SSHIPIT_ERROR" "$(pwd -P)" > {stage.ledger}/failed-$SSHIPIT_HOST;'
                " exit 9")  # and it fails itself: a warning, never the deploy's error or status
        env = env_for(stage, keys["ed25519"], sources="dist", commands=on(second), on_failure=hook)
        result = deploy(run_sshipit, env, "1111111", status=FAIL_STATUS)
        assert sorted(p.name for p in stage.ledger.iterdir()) == [f"failed-{second.label}"]
        host, told, cwd = stage.lines(f"failed-{second.label}")
        assert host == second.label
        assert told == error_of(result, second)  # the one error line, as printed
        assert "exited with status 7" in told
        assert cwd == str(stage.root(second))
        assert len(errors(result)) == 1, result
        assert any("on_failure: command 1" in w and "exited with status 9" in w and "the error above stands" in w
                   for w in warnings(result)), result

    def test_on_failure_in_an_atomic_deploy_skips_the_hosts_stopped_by_another(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        _first, _second, third = stage.machines
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, commands=on(third),
                      on_failure=f'echo "$SSHIPIT_RELEASE" > {stage.ledger}/failed-$SSHIPIT_HOST')
        deploy(run_sshipit, env, "1111111", status=FAIL_STATUS)
        assert [p.name for p in stage.ledger.iterdir()] == [f"failed-{third.label}"]
        assert stage.lines(f"failed-{third.label}")[0].endswith("-1111111")  # the release that failed
        assert all(stage.current(m) is None for m in stage.machines)

    def test_a_secret_in_the_error_is_masked(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        secret = "pa55-w0rd-in-a-command"
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", password=secret,
                      commands=f"test x = {secret}",
                      on_failure=f'printf "%s\\n" "$SSHIPIT_ERROR" > {stage.ledger}/told-$SSHIPIT_HOST')
        result = deploy(run_sshipit, env, "1111111", status=1)
        for machine in stage.machines:
            told = stage.lines(f"told-{machine.label}")[0]
            assert secret not in told and "test x = ********" in told, told
        assert secret not in result.output

    def test_on_failure_has_the_command_timeout(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        stage.machines = stage.machines[:1]
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", commands="exit 6", on_failure="sleep 60",
                      command_timeout="2s")
        started = time.monotonic()
        result = deploy(run_sshipit, env, "1111111", status=6)
        assert time.monotonic() - started < 30
        assert any("on_failure did not finish within 2s" in w for w in warnings(result)), result


class TestAfterRollback:
    def test_after_an_automatic_switch_back(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        _first, second, _third = stage.machines
        hook = (f'echo "$SSHIPIT_RELEASE $SSHIPIT_PREVIOUS_RELEASE $(pwd -P)" > '
                f'{stage.ledger}/back-$SSHIPIT_HOST')
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, after_rollback=hook)
        deploy(run_sshipit, env, "1111111")
        old = {m.label: stage.current(m) for m in stage.machines}
        assert not list(stage.ledger.iterdir())  # a deploy that went well switched nothing back
        build(workspace, "2")
        env |= {"PLUGIN_HEALTHCHECK": on(second, 1), "PLUGIN_HEALTHCHECK_TIMEOUT": "1s"}
        deploy(run_sshipit, env, "2222222", status=1)
        for machine in stage.machines:  # every host switched back, and ran it in the release live again
            assert stage.current(machine) == old[machine.label]
            live, rolled_from, cwd = stage.lines(f"back-{machine.label}")[0].split()
            assert live == old[machine.label] and rolled_from.endswith("-2222222")
            assert cwd == str(stage.root(machine) / "releases" / live)

    def test_after_rollback_true(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        hook = f'echo "$SSHIPIT_RELEASE $SSHIPIT_PREVIOUS_RELEASE" > {stage.ledger}/back-$SSHIPIT_HOST'
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, after_rollback=hook)
        deploy(run_sshipit, env, "1111111")
        first = {m.label: stage.current(m) for m in stage.machines}
        build(workspace, "2")
        deploy(run_sshipit, env, "2222222")
        second = {m.label: stage.current(m) for m in stage.machines}
        env.pop("PLUGIN_SOURCES")
        deploy(run_sshipit, {**env, "PLUGIN_ROLLBACK": "true"}, "3333333")
        for machine in stage.machines:
            assert stage.current(machine) == first[machine.label]
            assert stage.lines(f"back-{machine.label}") == [f"{first[machine.label]} {second[machine.label]}"]

    def test_a_failing_after_rollback_fails_the_rollback_but_it_stands(
        self, stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
    ) -> None:
        stage.machines = stage.machines[:1]
        build(workspace, "1")
        env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, after_rollback="exit 8")
        deploy(run_sshipit, env, "1111111")
        first = stage.current(stage.machines[0])
        build(workspace, "2")
        deploy(run_sshipit, env, "2222222")
        env.pop("PLUGIN_SOURCES")
        result = deploy(run_sshipit, {**env, "PLUGIN_ROLLBACK": "true"}, "3333333", status=8)
        assert stage.current(stage.machines[0]) == first
        assert f"current stays releases/{first}" in error_of(result, stage.machines[0])


# ------------------------------------------------------------------------------------------------------ facts


def test_facts_reach_every_command_with_the_right_values(
    stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
) -> None:
    stage.machines = stage.machines[:2]
    names = ["SSHIPIT_HOST", "SSHIPIT_TARGET", "SSHIPIT_COMMIT", "SSHIPIT_RELEASE", "SSHIPIT_PREVIOUS_RELEASE",
             "SSHIPIT_RELEASE_PATH", "SSHIPIT_ERROR"]

    def record(step: str) -> str:
        shown = " ".join(f"{name}=${{{name}-unset}}" for name in names)
        return f'echo "{step} {shown}" >> {stage.ledger}/facts-$SSHIPIT_HOST'

    build(workspace, "1")
    env = env_for(stage, keys["ed25519"], sources="dist", atomic=True)
    deploy(run_sshipit, env, "1111111")
    old = {m.label: stage.current(m) for m in stage.machines}
    build(workspace, "2")
    commit = "2222222" + "a" * 33
    env |= {"PLUGIN_COMMANDS": record("commands"), "PLUGIN_POST_COMMANDS": record("post_commands"),
            "PLUGIN_HEALTHCHECK": record("healthcheck"), "PLUGIN_RUN_ONCE": record("run_once"),
            "PLUGIN_BEFORE_UPLOAD": record("before_upload")}
    deploy(run_sshipit, env, commit)
    for number, machine in enumerate(stage.machines):
        new = stage.current(machine)
        assert new is not None and new != old[machine.label]
        root = stage.root(machine)
        expected = {"SSHIPIT_HOST": machine.label, "SSHIPIT_TARGET": str(root), "SSHIPIT_COMMIT": commit,
                    "SSHIPIT_RELEASE": new, "SSHIPIT_PREVIOUS_RELEASE": old[machine.label],
                    "SSHIPIT_RELEASE_PATH": str(root / "releases" / new), "SSHIPIT_ERROR": "unset"}
        steps = ["before_upload", "commands", *(["run_once"] if number == 0 else []), "post_commands",
                 "healthcheck"]
        seen = stage.lines(f"facts-{machine.label}")
        assert [line.split()[0] for line in seen] == steps, seen
        for line in seen:
            assert dict(word.split("=", 1) for word in line.split()[1:]) == expected, line

    # Plain mode: no release; the path is the target.
    plain = stage.target + "-plain"
    env = env_for(stage, keys["ed25519"], sources="dist", commands=record("plain"))
    env["PLUGIN_TARGET"] = plain
    deploy(run_sshipit, env, commit)
    for machine in stage.machines:
        try:
            line = next(x for x in stage.lines(f"facts-{machine.label}") if x.startswith("plain "))
            facts = dict(word.split("=", 1) for word in line.split()[1:] if "=" in word)
            assert facts["SSHIPIT_RELEASE"] == "" and facts["SSHIPIT_PREVIOUS_RELEASE"] == ""
            assert facts["SSHIPIT_TARGET"] == facts["SSHIPIT_RELEASE_PATH"] == str(machine.home / plain)
            assert facts["SSHIPIT_HOST"] == machine.label and facts["SSHIPIT_COMMIT"] == commit
        finally:
            rmtree(machine.home / plain)


def test_hostile_facts_arrive_as_written_and_run_nothing(
    stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
) -> None:
    stage.machines = stage.machines[:1]
    machine = stage.machines[0]
    marker = stage.ledger / "ran"
    stage.target = f"it's a $(touch {marker}) dir"
    commit = "$(touch pwned)`touch pwned`'\"\\"  # the commit is cut at 64 characters: short, relative
    build(workspace, "1")
    env = env_for(stage, keys["ed25519"], sources="dist", atomic=True,
                  commands=f'printf "%s\\n" "$SSHIPIT_COMMIT" "$SSHIPIT_TARGET" > {stage.ledger}/facts')
    deploy(run_sshipit, env, commit)
    assert stage.lines("facts") == [commit, str(machine.home / stage.target)]
    assert not marker.exists() and not list(machine.home.rglob("pwned"))


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(facts=st.builds(Facts, host=_TEXT, target=_TEXT, commit=_TEXT, release=_TEXT, previous=_TEXT, path=_TEXT,
                       error=st.none() | _TEXT))
def test_the_script_exports_each_fact_exactly(facts: Facts, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any text survives the export, read back by a real sh; remote paths become absolute from the start
    directory, as a relative target is (commands.absolute)."""
    start = tmp_path_factory.mktemp("start")
    out = start.parent / f"{start.name}.out"
    names = [name for name, _value, _path in facts.exports()]
    plan = Plan.__new__(Plan)  # build_script reads only these three
    plan.facts, plan.exports, plan.script_stop = facts, [], True
    command = "printf '%s\\0' " + " ".join(f'"${name}"' for name in names) + f" > '{out}'"
    script = build_script(plan, "n0nce", [command], None)
    done = subprocess.run(["sh", "-c", script], cwd=start, capture_output=True, timeout=20, check=False)
    assert done.returncode == 0, done
    got = out.read_bytes().decode().split("\0")[:-1]

    def absolute(path: str) -> str:
        if not path or path.startswith("/"):
            return path
        normal = posixpath.normpath(path)
        return str(start) if normal == "." else f"{start}/{normal}"

    expected = [absolute(value) if is_path else value for _name, value, is_path in facts.exports()]
    assert got == expected


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(delays=st.lists(st.integers(0, 3), min_size=1, max_size=6), fails=st.booleans(), plain=st.booleans())
def test_once_runs_one_step_and_everyone_learns_its_outcome(delays: list[int], fails: bool, plain: bool) -> None:
    """Whatever order the hosts arrive in, the step runs once, on the first host, and no host waits forever."""
    hosts = [HostSpec(f"h{n}", 22, "u", f"h{n}") for n in range(len(delays))]
    ran: list[str] = []

    async def main() -> list[str | BaseException | None]:
        once = Once(plain)
        once.batch(hosts)

        async def arrive(host: HostSpec, delay: int) -> str | None:
            for _ in range(delay):
                await asyncio.sleep(0)

            async def step() -> None:
                ran.append(host.label)
                await asyncio.sleep(0)
                if fails:
                    raise RuntimeError("migration failed")

            return await once.run(host, step)

        return await asyncio.wait_for(asyncio.gather(*(arrive(h, d) for h, d in zip(hosts, delays, strict=True)),
                                                     return_exceptions=True), 5)

    outcomes = asyncio.run(main())
    assert ran == ["h0"]
    if fails:
        assert isinstance(outcomes[0], RuntimeError)
        assert outcomes[1:] == ["run_once failed on h0"] * (len(hosts) - 1)
    else:
        assert outcomes == [None] * len(hosts)


# -------------------------------------------------------------------------------------------- plan, settings


def test_plan_says_where_and_when_each_runs_and_changes_nothing(
    stage: Stage, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit,
) -> None:
    first, second = stage.machines[:2]
    stage.machines = [first, second]
    build(workspace, "1")
    env = env_for(stage, keys["ed25519"], sources="dist", atomic=True, run_once="./migrate",
                  before_upload="touch maintenance", on_failure="./notify", after_rollback="./restart")
    result = run_sshipit("plan", env=env)
    assert result.returncode == 0, result
    out = result.stdout
    assert f"[{first.label}] plan: would run run_once here (the first host), in the new release" in out
    assert f"[{second.label}] plan: run_once would run on {first.label} only" in out
    assert f"[{second.label}]         $ ./migrate" not in out
    for machine in (first, second):
        assert f"[{machine.label}] plan: would run before_upload in the target, before anything is uploaded" in out
        assert f"[{machine.label}] plan: if this host failed, would run on_failure" in out
        assert f"[{machine.label}] plan: after a switch back, would run after_rollback in current" in out
        assert not stage.root(machine).exists()
    rollback = run_sshipit("plan", env={**env, "PLUGIN_ROLLBACK": "true", "PLUGIN_SOURCES": ""})
    assert "plan: run_once would not run: a rollback deploys no new release" in rollback.stdout, rollback
    assert "run_once does not run with rollback" in rollback.stderr, rollback


@pytest.mark.parametrize(("settings", "needles"), [
    ({"after_rollback": "x"}, ("after_rollback needs atomic: true", "[setting: after_rollback]")),
    ({"atomic": "true", "run_once": "x", "phase": "prepare", "release_id": "r1"},
     ("run_once runs right before the switch", "[setting: run_once]", "switch job")),
    ({"envs": "SSHIPIT_RELEASE"}, ("SSHIPIT_RELEASE is one of sshipit's own variables", "[setting: envs]")),
])
def test_settings_that_cannot_work_are_one_line(
    settings: dict[str, str], needles: tuple[str, ...], keys: dict[str, KeyPair], tmp_path: Path,
    run_sshipit: RunSshipit, workspace: Path,
) -> None:
    env = {"PLUGIN_HOST": "127.0.0.1:1", "PLUGIN_KEY_PATH": str(keys["ed25519"].private_path),
           "PLUGIN_TARGET": "app", "PLUGIN_COMMANDS": "true"}
    env |= {f"PLUGIN_{name.upper()}": value for name, value in settings.items()}
    result = run_sshipit(env=env)
    assert result.returncode == 2, result
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result
    for needle in needles:
        assert needle in lines[0], (needle, result)
