"""The plugin image, built from the repository's Dockerfile and run the way Drone, Woodpecker and
GitHub Actions run it: settings in PLUGIN_* / INPUT_* variables, the workspace mounted as the working
directory, against a real OpenSSH server on 127.0.0.1 (`--network=host`).

One build, two tags (README.md, "The plugin image"): `image` is the Drone / Woodpecker target (uid 1000),
`github_image` the GitHub Actions target that action.yml runs (root, no WORKDIR, as GitHub requires). The
GitHub tests run the latter exactly as actions/runner's ContainerActionHandler does: `--workdir
/github/workspace`, the runner's four directories mounted from directories owned by the runner's uid (1001
on hosted runners), GITHUB_OUTPUT / GITHUB_STEP_SUMMARY naming files the runner created, every input of
action.yml as INPUT_<NAME> with its default (empty if it has none).

The session fixture `image` starts (or reuses) a Docker engine with scripts/docker-engine.sh and builds
both tags with scripts/build-image.sh. If either fails, every test here FAILS with the reason: a machine
that cannot build the image is a broken CI machine, not a reason to skip.

Environment:
    SSHIPIT_DOCKER_HOST   use this engine (e.g. unix:///var/run/docker.sock) instead of running
                          scripts/docker-engine.sh; the image is still built by scripts/build-image.sh.
    SSHIPIT_TEST_IMAGE    tag to build and test (default sshipit:dev; the GitHub tag is this + "-github").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sshipit.dialects import PEERS, SCP_ACTION, SSH_ACTION
from sshipit.localserver import KeyPair, LocalServer
from sshipit.settings import lookup

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
IMAGE_TAG = os.environ.get("SSHIPIT_TEST_IMAGE", "sshipit:dev")
# scripts/build-image.sh's name for the GitHub target: TAG-github, or NAME:github for a TAG without a tag part.
GITHUB_TAG = IMAGE_TAG + "-github" if ":" in IMAGE_TAG.rsplit("/", 1)[-1] else IMAGE_TAG + ":github"
# The runner's user on GitHub-hosted runners is uid 1001; its group does not matter here (the modes give the
# group no write), so the test uses 1001 for both.
RUNNER_UID = RUNNER_GID = 1001
RUN_TIMEOUT = 180  # seconds for one `docker run`

# The settings the GitHub action must expose (action.yml), with their defaults.
ACTION_INPUTS = {
    "host": None, "port": "22", "username": None, "password": None, "key": None, "key_path": None,
    "passphrase": None, "fingerprint": None, "known_hosts": None, "timeout": "30s", "target": None,
    "sources": None, "strip_components": None, "rm": None, "delete": None, "commands": None,
    "script_file": None, "script_stop": None, "command_timeout": None, "envs": None, "request_pty": None,
    "parallel": None, "debug": None,
}  # fmt: skip


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class DockerRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n[exit code {self.returncode}]\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


@dataclass
class Image:
    """The built image and the Docker client environment that reaches its engine."""

    tag: str
    docker: str
    env: dict[str, str]

    def docker_cmd(self, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.docker, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        mount: tuple[Path, str] | None = None,
        entrypoint: str | None = None,
        user: str | None = None,
    ) -> DockerRun:
        """`docker run --rm --network=host` with every variable of `env` handed over as `-e NAME`: the
        values travel in the docker client's environment, never in its argv (they include the key)."""
        options = ["run", "--rm", "--network=host"]
        for name in env or {}:
            options += ["-e", name]
        if mount is not None:
            host_dir, container_dir = mount
            options += ["-v", f"{host_dir}:{container_dir}", "-w", container_dir]
        if entrypoint is not None:
            options += ["--entrypoint", entrypoint]
        if user is not None:
            options += ["--user", user]
        return self.run_argv(options, args, env)

    def run_argv(self, options: list[str], args: tuple[str, ...] | list[str] = (),
                 env: Mapping[str, str] | None = None) -> DockerRun:
        """`docker OPTIONS TAG ARGS`, with `env`'s variables in the client's environment (the caller's
        OPTIONS name them as `-e NAME`)."""
        client_env = {**self.env, **(env or {})}
        argv = [self.docker, *options, self.tag, *args]
        try:
            proc = subprocess.run(
                argv,
                env=client_env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"docker run did not finish in {RUN_TIMEOUT}s: {' '.join(argv)}\n{exc.stdout}\n{exc.stderr}")
        return DockerRun(argv, proc.returncode, proc.stdout, proc.stderr)


def _start_engine() -> str:
    """DOCKER_HOST of a running engine: SSHIPIT_DOCKER_HOST, else the one scripts/docker-engine.sh gives."""
    if os.environ.get("SSHIPIT_DOCKER_HOST"):
        return os.environ["SSHIPIT_DOCKER_HOST"]
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "docker-engine.sh")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/docker-engine.sh did not finish in {exc.timeout}s:\n{_tail(str(exc.stderr))}")
    match = re.search(r"^export DOCKER_HOST=(\S+)$", proc.stdout, re.M)
    if proc.returncode != 0 or match is None:
        pytest.fail(
            f"could not start a Docker engine: scripts/docker-engine.sh exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr (tail):\n{_tail(proc.stderr)}"
        )
    return match.group(1)


@pytest.fixture(scope="session")
def image() -> Image:
    """Start or reuse the Docker engine, build the image; fail (never skip) if either cannot be done."""
    docker_host = _start_engine()
    docker = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
    if docker is None:
        pytest.fail("no docker client on this machine (scripts/docker-engine.sh installs Debian's docker.io)")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PLUGIN_", "INPUT_", "DRONE", "CI_", "GITHUB_", "DOCKER_"))
    }
    env["DOCKER_HOST"] = docker_host
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "build-image.sh"), IMAGE_TAG],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/build-image.sh did not finish in {exc.timeout}s:\n{_tail(str(exc.stderr))}")
    if proc.returncode != 0:
        pytest.fail(f"building {IMAGE_TAG} failed (exit {proc.returncode}):\n{_tail(proc.stderr, 60)}")
    return Image(IMAGE_TAG, docker, env)


@pytest.fixture(scope="session")
def github_image(image: Image) -> Image:
    """The GitHub Actions tag of the same build (scripts/build-image.sh tags both)."""
    return Image(GITHUB_TAG, image.docker, image.env)


# ---------------------------------------------------------------------------------------------------
# helpers for runs against the test server


def make_dist(workspace: Path) -> dict[str, str]:
    """A small build output in workspace/dist, readable by the container's non-root user.
    Returns relative path (under dist/) -> content."""
    files = {
        "index.html": "<h1>shipped</h1>\n",
        "assets/app.js": "console.log('shipped');\n",
        "assets/deep/data.txt": "deep file\n",
    }
    for rel, text in files.items():
        path = workspace / "dist" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # pytest's tmp dirs are 0700 and owned by root: the container runs as uid 1000.
    for path in [workspace, *workspace.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return files


def assert_uploaded(remote_dir: Path, files: Mapping[str, str], run: DockerRun) -> None:
    """Every file of `files` landed under `remote_dir` (as dist/<rel> or <rel>) with its content."""
    landed = sorted(str(p.relative_to(remote_dir)) for p in remote_dir.rglob("*") if p.is_file())
    for rel, text in files.items():
        candidates = [remote_dir / "dist" / rel, remote_dir / rel]
        found = [p for p in candidates if p.is_file()]
        assert found, f"{rel} did not land in {remote_dir}; files there: {landed}\n{run}"
        assert found[0].read_text() == text, f"{found[0]} has the wrong content\n{run}"


def ssh_settings(prefix: str, server: LocalServer, key: KeyPair, remote_dir: Path) -> dict[str, str]:
    settings = {
        "HOST": server.host,
        "PORT": str(server.port),
        "USERNAME": server.user,
        "KEY": key.private_text,
        "FINGERPRINT": ",".join(server.fingerprints().values()),
        "TARGET": str(remote_dir),
    }
    if key.passphrase:
        settings["PASSPHRASE"] = key.passphrase
    return {prefix + name: value for name, value in settings.items()}


DRONE_CONTEXT = {
    "CI": "true",
    "DRONE": "true",
    "DRONE_WORKSPACE": "/drone/src",
    "DRONE_STEP_NAME": "deploy",
    "DRONE_STEP_NUMBER": "2",
    "DRONE_REPO": "octocat/hello-world",
    "DRONE_BUILD_NUMBER": "42",
    "DRONE_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
}


# ---------------------------------------------------------------------------------------------------
# the image itself


def test_help_exits_zero(image: Image) -> None:
    run = image.run("--help")
    assert run.returncode == 0, str(run)
    assert "usage" in run.stdout.lower(), str(run)


def test_two_tags_of_one_build(image: Image, github_image: Image) -> None:
    """The GitHub tag is the same build: every layer of it is a layer of the Drone tag, same entry point;
    it differs in running as root (GitHub's contract for container actions) with no WORKDIR."""
    configs, layers = {}, {}
    for tagged in (image, github_image):
        inspect = tagged.docker_cmd("image", "inspect", "-f", "{{json .Config}}\n{{json .RootFS.Layers}}", tagged.tag)
        assert inspect.returncode == 0, inspect.stderr
        config_text, layers_text = inspect.stdout.strip().split("\n", 1)
        configs[tagged.tag], layers[tagged.tag] = json.loads(config_text), json.loads(layers_text)
    drone, github = configs[image.tag], configs[github_image.tag]
    assert layers[image.tag][: len(layers[github_image.tag])] == layers[github_image.tag], layers
    assert len(layers[image.tag]) - len(layers[github_image.tag]) <= 1, f"more than WORKDIR differs: {layers}"
    assert github["User"] in ("", "0", "root"), github
    assert github["WorkingDir"] in ("", "/"), github  # GitHub sets --workdir /github/workspace itself
    assert github["Entrypoint"] == drone["Entrypoint"] == ["sshipit"], (github, drone)
    assert github["Env"] == drone["Env"], (github["Env"], drone["Env"])
    run = github_image.run("-u", entrypoint="id")
    assert run.returncode == 0 and run.stdout.strip() == "0", str(run)


def test_runs_as_non_root_in_drone_workspace(image: Image) -> None:
    run = image.run("-u", entrypoint="id")
    assert run.returncode == 0, str(run)
    assert int(run.stdout.strip()) != 0, f"the image runs as root\n{run}"

    inspect = image.docker_cmd("image", "inspect", "-f", "{{json .Config}}", image.tag)
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)
    assert config["User"] not in ("", "0", "root", "0:0", "root:root"), config["User"]
    assert config["WorkingDir"] == "/drone/src", config
    assert config["Entrypoint"] == ["sshipit"], config


# Run inside the image, as root so that no directory is hidden from it; prints JSON.
INSPECT_SCRIPT = textwrap.dedent(
    r"""
    import fnmatch, json, os, shutil
    SKIP = ("/proc", "/sys", "/dev")
    VENV_SITE = "/opt/sshipit/lib/python3.11/site-packages"
    found = {"key_like": [], "git": [], "project_tests": [], "build_trees": []}
    for root, dirs, files in os.walk("/"):
        if root.startswith(SKIP):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(root, name)
            if name == ".git":
                found["git"].append(path)
            if name in ("conftest.py", "test_image.py") or path.startswith(VENV_SITE + "/tests"):
                found["project_tests"].append(path)
            if name in ("pip-build-env", ".cache") or name.startswith(("pip-req-build", "pip-install", "pip-ephem")):
                found["build_trees"].append(path)
            if not root.startswith("/usr/share") and any(
                fnmatch.fnmatch(name, pat) for pat in ("*.pem", "id_*", "*_key")
            ):
                found["key_like"].append(path)
    found["drone_src"] = sorted(os.listdir("/drone/src")) if os.path.isdir("/drone/src") else None
    found["build_dir"] = os.path.exists("/build")
    found["compilers"] = {c: shutil.which(c) for c in ("gcc", "cc", "c++", "g++", "clang", "tcc", "cpp")
                          if shutil.which(c)}
    found["venv_pip"] = os.path.exists("/opt/sshipit/bin/pip")
    print(json.dumps(found))
    """
)

# Public CA certificates, not keys: the base image's certificate store and certifi's bundle.
PUBLIC_CERT_PATHS = re.compile(r"^(/etc/ssl/certs/|/usr/lib/ssl/cert\.pem$|.*/certifi/cacert\.pem$)")


def test_image_holds_no_workspace_tests_git_keys_or_compiler(image: Image) -> None:
    run = image.run("-c", INSPECT_SCRIPT, entrypoint="python3", user="0")
    assert run.returncode == 0, str(run)
    found = json.loads(run.stdout)
    assert found["drone_src"] == [], f"/drone/src is not empty in the image: {found['drone_src']}"
    assert found["git"] == [], f".git in the image: {found['git']}"
    assert found["project_tests"] == [], f"test files in the image: {found['project_tests']}"
    keys = [path for path in found["key_like"] if not PUBLIC_CERT_PATHS.match(path)]
    assert keys == [], f"key-like files in the image: {keys}"
    assert found["compilers"] == {}, f"compilers in the final image: {found['compilers']}"
    assert not found["build_dir"], "the build tree /build is in the final image"
    assert found["build_trees"] == [], f"pip caches or build trees in the image: {found['build_trees']}"
    assert not found["venv_pip"], "pip is left in the runtime venv"


# ---------------------------------------------------------------------------------------------------
# Drone


def test_drone_run_uploads_and_runs_commands(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    files = make_dist(workspace)
    env = {
        **DRONE_CONTEXT,
        **ssh_settings("PLUGIN_", server, keys["ed25519"], remote_dir),
        "PLUGIN_SOURCES": "dist",
        "PLUGIN_SCRIPT": "echo hello-from-$(hostname)",
    }
    run = image.run(env=env, mount=(workspace, "/drone/src"))
    assert run.returncode == 0, str(run)
    assert_uploaded(remote_dir, files, run)
    # $(hostname) is expanded by the remote shell, so this text is the command's output, not its echo.
    assert f"hello-from-{socket.gethostname()}" in run.stdout, str(run)


def test_drone_encrypted_key(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    """A passphrase-protected OpenSSH key needs bcrypt, a compiled dependency: it must be in the image."""
    make_dist(workspace)
    key = keys["ed25519_pass"]
    assert key.passphrase
    env = {
        **DRONE_CONTEXT,
        **ssh_settings("PLUGIN_", server, key, remote_dir),
        "PLUGIN_SCRIPT": "echo encrypted-key-ok",
    }
    run = image.run(env=env, mount=(workspace, "/drone/src"))
    assert run.returncode == 0, str(run)
    assert "encrypted-key-ok" in run.stdout, str(run)


def test_drone_failing_command_sets_exit_status(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    make_dist(workspace)
    env = {
        **DRONE_CONTEXT,
        **ssh_settings("PLUGIN_", server, keys["ed25519"], remote_dir),
        # `be""fore` prints "before": the output, unlike the command text, contains the plain word.
        "PLUGIN_SCRIPT": 'echo be""fore,true,exit 7,echo nev""er',
    }
    run = image.run(env=env, mount=(workspace, "/drone/src"))
    assert run.returncode == 7, str(run)
    assert "before" in run.stdout, str(run)
    assert "never" not in run.stdout + run.stderr, str(run)


# ---------------------------------------------------------------------------------------------------
# Woodpecker: same PLUGIN_ prefix, names with `_` for `-`/`.`, workspace under /woodpecker/src


WOODPECKER_WS = "/woodpecker/src/example.org/octocat/hello-world"
WOODPECKER_CONTEXT = {
    "CI": "woodpecker",
    "CI_WORKSPACE": WOODPECKER_WS,
    "CI_STEP_NAME": "deploy",
    "CI_REPO": "octocat/hello-world",
    "CI_PIPELINE_NUMBER": "42",
}


def test_woodpecker_script_stop_false_runs_on(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    files = make_dist(workspace)
    env = {
        **WOODPECKER_CONTEXT,
        **ssh_settings("PLUGIN_", server, keys["ed25519"], remote_dir),
        "PLUGIN_SOURCES": "dist",
        "PLUGIN_SCRIPT": 'false,echo af""ter',
        "PLUGIN_SCRIPT_STOP": "false",
        "PLUGIN_COMMAND_TIMEOUT": "2m",
    }
    run = image.run(env=env, mount=(workspace, WOODPECKER_WS))
    # The exit status is not asserted here: whether a failure that script_stop=false ran past still
    # fails the step is sshipit's own rule, tested without Docker; here: the setting arrives and works.
    assert "after" in run.stdout, f"script_stop=false did not run the command after a failure\n{run}"
    assert_uploaded(remote_dir, files, run)


def test_woodpecker_script_stop_true_stops(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    make_dist(workspace)
    env = {
        **WOODPECKER_CONTEXT,
        **ssh_settings("PLUGIN_", server, keys["ed25519"], remote_dir),
        "PLUGIN_SCRIPT": 'false,echo nev""er',
        "PLUGIN_SCRIPT_STOP": "true",
    }
    run = image.run(env=env, mount=(workspace, WOODPECKER_WS))
    assert run.returncode != 0, str(run)
    assert "never" not in run.stdout + run.stderr, str(run)


# ---------------------------------------------------------------------------------------------------
# GitHub Actions: INPUT_* for every input of action.yml (defaults filled in, unset ones empty),
# workspace at /github/workspace


def action_inputs() -> dict[str, dict]:
    return yaml.safe_load((REPO / "action.yml").read_text())["inputs"]


def test_action_yml_declares_every_setting() -> None:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    # The prebuilt image of this version (release.yml pushes it from this Dockerfile), not a build in every job.
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    # The GitHub tag (the Dockerfile's `github` target, root), not the Drone one (uid 1000).
    assert action["runs"] == {"using": "docker", "image": f"docker://sshipit/sshipit:{version}-github"}
    inputs = action["inputs"]
    missing = sorted(set(ACTION_INPUTS) - set(inputs))
    assert not missing, f"action.yml lacks inputs: {missing}"
    for name, spec in inputs.items():
        # An sshipit setting, or an input of the GitHub actions it stands in for, read with their meaning.
        peer = name in PEERS[SSH_ACTION] or name in PEERS[SCP_ACTION]
        assert lookup(name) is not None or peer, f"action.yml input {name!r} is neither a setting nor a peer's input"
        assert spec.get("description"), f"input {name!r} has no description"
        if name in ACTION_INPUTS:
            assert spec.get("default") == ACTION_INPUTS[name], f"input {name!r}: default {spec.get('default')!r}"


def test_github_action_run(
    github_image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    files = make_dist(workspace)
    # As the runner does: every declared input arrives, with its default or empty.
    env = {f"INPUT_{name.upper()}": str(spec.get("default", "")) for name, spec in action_inputs().items()}
    settings = ssh_settings("INPUT_", server, keys["ed25519"], remote_dir)
    del settings["INPUT_FINGERPRINT"]  # trust the server through known_hosts here
    env.update(settings)
    env.update(
        {
            "INPUT_KNOWN_HOSTS": server.known_hosts(),
            "INPUT_SOURCES": "dist",
            "INPUT_COMMANDS": "echo hello-from-$(hostname)\necho second-line",
            "GITHUB_ACTIONS": "true",
            "CI": "true",
            "GITHUB_WORKSPACE": "/github/workspace",
            "GITHUB_REPOSITORY": "octocat/hello-world",
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        }
    )
    run = github_image.run(env=env, mount=(workspace, "/github/workspace"))
    assert run.returncode == 0, str(run)
    assert_uploaded(remote_dir, files, run)
    assert f"hello-from-{socket.gethostname()}" in run.stdout, str(run)
    assert "second-line" in run.stdout, str(run)


# ---------------------------------------------------------------------------------------------------
# GitHub Actions exactly as actions/runner runs a container action (ContainerActionHandler): the image that
# action.yml names, `docker run --workdir /github/workspace --rm -e ... -v <4 directories> image`, with the
# runner's directories owned by the runner's user and made with its umask (022: directories 0755, files 0644),
# the file-command files created by the runner before the step. Hosted runners put the container on a network
# of their own; here --network host reaches the sshd on 127.0.0.1. The runner also mounts the Docker socket:
# left out, nothing of sshipit uses it (and it would hand the test's engine to the container).

STEP_ID = "0f3c2a9e-5b7d-4c1e-8a6f-2d4b9e7c1a30"  # the runner names each step's files <kind>_<guid>
FILE_COMMANDS = ("set_output", "step_summary", "set_env", "add_path", "save_state")


@dataclass
class Runner:
    """One step's view of a GitHub-hosted runner's work directory (/home/runner/work on the runner)."""

    root: Path

    @property
    def workspace(self) -> Path:  # $GITHUB_WORKSPACE -> /github/workspace
        return self.root / "work" / "hello-world" / "hello-world"

    @property
    def mounts(self) -> dict[Path, str]:
        temp = self.root / "work" / "_temp"
        return {
            temp / "_github_home": "/github/home",
            temp / "_github_workflow": "/github/workflow",
            temp / "_runner_file_commands": "/github/file_commands",
            self.workspace: "/github/workspace",
        }

    def file(self, kind: str) -> Path:
        """A file-command file on the host (GITHUB_OUTPUT is file("set_output"))."""
        return self.root / "work" / "_temp" / "_runner_file_commands" / f"{kind}_{STEP_ID}"

    def outputs(self) -> dict[str, str]:
        return parse_github_output(self.file("set_output").read_text())


def make_runner(tmp_path: Path, dist: bool = True) -> tuple[Runner, dict[str, str]]:
    """The runner's directories for one step, with the checkout (dist/) in the workspace, all owned by the
    runner's uid with the modes its umask gives. Returns the runner and the dist files."""
    runner = Runner(tmp_path / "runner")
    for directory in runner.mounts:
        directory.mkdir(parents=True)
    files = make_dist(runner.workspace) if dist else {}
    (runner.root / "work" / "_temp" / "_github_workflow" / "event.json").write_text(
        json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "octocat/hello-world"}}))
    for kind in FILE_COMMANDS:
        runner.file(kind).write_text("")
    for path in [runner.root, *runner.root.rglob("*")]:
        os.chown(path, RUNNER_UID, RUNNER_GID)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return runner, files


def runner_run(github: Image, runner: Runner, inputs: Mapping[str, str]) -> DockerRun:
    """Run the image as the runner does, with every input of action.yml (`inputs` given, the rest with its
    default, or empty when it has none: the runner passes every declared input) and the runner's variables."""
    declared = action_inputs()
    unknown = sorted(set(inputs) - set(declared))
    assert not unknown, f"not inputs of action.yml: {unknown}"
    env = {f"INPUT_{name.upper().replace(' ', '_')}": str(spec.get("default", "")) if spec else ""
           for name, spec in declared.items()}
    env.update({f"INPUT_{name.upper().replace(' ', '_')}": value for name, value in inputs.items()})
    commands = {kind: f"/github/file_commands/{kind}_{STEP_ID}" for kind in FILE_COMMANDS}
    env.update({
        "HOME": "/github/home",
        "GITHUB_JOB": "deploy", "GITHUB_REF": "refs/heads/main", "GITHUB_REF_NAME": "main",
        "GITHUB_REF_TYPE": "branch", "GITHUB_REF_PROTECTED": "false", "GITHUB_SHA": DRONE_CONTEXT["DRONE_COMMIT_SHA"],
        "GITHUB_REPOSITORY": "octocat/hello-world", "GITHUB_REPOSITORY_OWNER": "octocat", "GITHUB_RUN_ID": "9000",
        "GITHUB_RUN_NUMBER": "42", "GITHUB_RUN_ATTEMPT": "1", "GITHUB_RETENTION_DAYS": "90", "GITHUB_ACTOR": "octocat",
        "GITHUB_TRIGGERING_ACTOR": "octocat", "GITHUB_WORKFLOW": "deploy", "GITHUB_HEAD_REF": "", "GITHUB_BASE_REF": "",
        "GITHUB_EVENT_NAME": "push", "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_API_URL": "https://api.github.com", "GITHUB_GRAPHQL_URL": "https://api.github.com/graphql",
        "GITHUB_WORKSPACE": "/github/workspace", "GITHUB_ACTION": "deploy",
        "GITHUB_EVENT_PATH": "/github/workflow/event.json",
        "GITHUB_ACTION_REPOSITORY": "", "GITHUB_ACTION_REF": "",
        "GITHUB_PATH": commands["add_path"], "GITHUB_ENV": commands["set_env"], "GITHUB_STATE": commands["save_state"],
        "GITHUB_STEP_SUMMARY": commands["step_summary"], "GITHUB_OUTPUT": commands["set_output"],
        "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64", "RUNNER_NAME": "GitHub Actions 2",
        "RUNNER_ENVIRONMENT": "github-hosted", "RUNNER_TOOL_CACHE": "/opt/hostedtoolcache",
        "RUNNER_TEMP": "/home/runner/work/_temp", "RUNNER_WORKSPACE": "/home/runner/work/hello-world",
        "GITHUB_ACTIONS": "true", "CI": "true",
    })  # fmt: skip
    options = ["run", "--workdir", "/github/workspace", "--rm"]
    for name in env:
        options += ["-e", name]
    for host_dir, container_dir in runner.mounts.items():
        options += ["-v", f"{host_dir}:{container_dir}"]
    options += ["--network", "host"]
    return github.run_argv(options, env=env)


def parse_github_output(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT as the runner reads it: `name=value` lines and `name<<DELIMITER` ... `DELIMITER` blocks."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    n = 0
    while n < len(lines):
        line = lines[n]
        n += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, n)  # ValueError: the runner fails the step, so does the test
            outputs[name] = "\n".join(lines[n:end])
            n = end + 1
        else:
            name, _, value = line.partition("=")
            outputs[name] = value
    return outputs


def tree_state(runner: Runner) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every path of the runner's mounted directories: owner, group, mode, and content for files."""
    state = {}
    for top in runner.mounts:
        for path in [top, *top.rglob("*")]:
            st = path.lstat()
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            state[str(path.relative_to(runner.root))] = (st.st_uid, st.st_gid, st.st_mode, content)
    return state


def assert_only_outputs_changed(before: dict, after: dict, runner: Runner, run: DockerRun) -> None:
    """Root in the container created, chowned or chmodded nothing in the runner's directories, and changed no
    content but the two files it is meant to append to."""
    assert sorted(after) == sorted(before), \
        f"paths created or removed in the runner's directories: {sorted(set(after) ^ set(before))}\n{run}"
    appended = {str(runner.file(kind).relative_to(runner.root)) for kind in ("set_output", "step_summary")}
    for rel, (uid, gid, mode, content) in after.items():
        assert (uid, gid, mode) == before[rel][:3], f"{rel}: owner/mode {before[rel][:3]} -> {(uid, gid, mode)}"
        if rel not in appended:
            assert content == before[rel][3], f"{rel} was changed by the action\n{run}"
        elif before[rel][3] is not None and content is not None:
            assert content.startswith(before[rel][3]), f"{rel} was rewritten, not appended to"


def test_github_runner_run_writes_outputs_and_summary(
    github_image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, tmp_path: Path
) -> None:
    runner, files = make_runner(tmp_path)
    (runner.file("set_output")).write_text("earlier=kept\n")  # an earlier output line of the same step survives
    settings = ssh_settings("", server, keys["ed25519"], remote_dir)
    inputs = {name.lower(): value for name, value in settings.items()}
    inputs.update({"sources": "dist", "commands": "echo hello-from-$(hostname)", "capture_stdout": "true"})
    before = tree_state(runner)
    run = runner_run(github_image, runner, inputs)
    after = tree_state(runner)

    assert run.returncode == 0, str(run)
    assert "could not write" not in run.stdout + run.stderr, str(run)
    assert_uploaded(remote_dir, files, run)
    outputs = runner.outputs()
    assert outputs.get("earlier") == "kept", outputs
    assert outputs.get("result") == "ok", f"{outputs}\n{run}"
    assert outputs.get("hosts_failed") == "0", outputs
    assert outputs.get("release") == "", outputs  # a plain deploy has no release id
    assert outputs.get("stdout") == f"hello-from-{socket.gethostname()}", outputs
    summary = runner.file("step_summary").read_text()
    assert "sshipit: Deployed to 1 host" in summary, summary
    assert re.search(r"^\| ok \| .*127\.0\.0\.1", summary, re.M), summary
    assert_only_outputs_changed(before, after, runner, run)


def test_github_runner_failed_deploy_still_reports(
    github_image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, tmp_path: Path
) -> None:
    """A failing command fails the step, and the outputs say so (a later `if: always()` step reads them)."""
    runner, _ = make_runner(tmp_path)
    inputs = {name.lower(): value for name, value in ssh_settings("", server, keys["ed25519"], remote_dir).items()}
    inputs["commands"] = "exit 3"
    before = tree_state(runner)
    run = runner_run(github_image, runner, inputs)
    assert run.returncode == 3, str(run)
    outputs = runner.outputs()
    assert outputs.get("result") == "failed" and outputs.get("hosts_failed") == "1", f"{outputs}\n{run}"
    assert "sshipit: Deploy failed on 1 of 1 host" in runner.file("step_summary").read_text()
    assert_only_outputs_changed(before, tree_state(runner), runner, run)


def test_drone_tag_cannot_serve_github(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, tmp_path: Path
) -> None:
    """Why action.yml runs the -github tag: the uid-1000 image, run as the runner runs it, deploys but cannot
    append to the runner's files (uid 1001, 0644), so the workflow gets no outputs (one warning says so)."""
    runner, files = make_runner(tmp_path)
    inputs = {name.lower(): value for name, value in ssh_settings("", server, keys["ed25519"], remote_dir).items()}
    inputs["sources"] = "dist"
    run = runner_run(image, runner, inputs)
    assert run.returncode == 0, str(run)
    assert_uploaded(remote_dir, files, run)
    assert runner.file("set_output").read_text() == "", "the uid-1000 image wrote GITHUB_OUTPUT after all"
    assert "could not write" in run.stdout + run.stderr and "GITHUB_OUTPUT" in run.stdout + run.stderr, str(run)


def test_drone_run_is_unprivileged(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
) -> None:
    """Run the Drone way (the default tag, as Drone's runner does: no --user), with the card written to a file
    in the workspace: the file sshipit writes there is owned by uid 1000, the process never ran as root."""
    make_dist(workspace)
    workspace.chmod(0o777)  # Drone's workspace volume is writable by the step's user
    env = {
        **DRONE_CONTEXT,
        **ssh_settings("PLUGIN_", server, keys["ed25519"], remote_dir),
        "PLUGIN_SCRIPT": "echo ran",
        "DRONE_CARD_PATH": "/drone/src/.card.json",
    }
    run = image.run(env=env, mount=(workspace, "/drone/src"))
    assert run.returncode == 0, str(run)
    card = workspace / ".card.json"
    assert card.is_file(), f"no card written\n{run}"
    assert json.loads(card.read_text())["data"]["result"] == "ok"
    assert (card.stat().st_uid, card.stat().st_gid) == (1000, 1000), f"card owned by {card.stat().st_uid}"
    written = [p for p in workspace.rglob("*") if p.stat().st_uid not in (os.getuid(), 1000)]
    assert written == [], f"files in the workspace owned by neither the test nor uid 1000: {written}"


# ---------------------------------------------------------------------------------------------------
# docs/github-actions.md's outputs example, run the runner's way: the sshipit step in the -github image, then
# the later steps, with ${{ steps.<id>.outputs.<name> }} taken from what the step wrote to GITHUB_OUTPUT.

DOCS_PAGE = REPO / "docs" / "github-actions.md"
DOCS_SECTION = "## Outputs and the step summary"


def docs_outputs_example() -> dict:
    text = DOCS_PAGE.read_text()
    assert DOCS_SECTION in text, f"{DOCS_PAGE.name} has no section {DOCS_SECTION!r}"
    section = text.split(DOCS_SECTION, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```yaml\n(.*?)^```", section, re.M | re.S)
    assert match, f"{DOCS_PAGE.name}: no yaml example under {DOCS_SECTION!r}"
    return yaml.safe_load(match.group(1))


def github_expressions(text: str, values: Mapping[str, str]) -> str:
    def evaluate(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        assert expression in values, f"the test cannot evaluate ${{{{ {expression} }}}}"
        return values[expression]

    return re.sub(r"\$\{\{(.*?)\}\}", evaluate, text)


def test_github_docs_example_outputs_reach_a_later_step(
    github_image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, tmp_path: Path
) -> None:
    workflow = docs_outputs_example()
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    index = next(n for n, step in enumerate(steps) if str(step.get("uses", "")).startswith("sshipit/sshipit@"))
    ours, later = steps[index], steps[index + 1:]
    step_id = ours.get("id")
    assert step_id, "the example's sshipit step needs an id for later steps to read its outputs"
    uses_outputs = [s for s in later if f"steps.{step_id}.outputs." in json.dumps(s)]
    assert uses_outputs and all("run" in s for s in uses_outputs), f"no later run step reads the outputs: {later}"

    # The example's servers and secrets, mapped onto the test server; every other input as written.
    key = keys["ed25519"]
    secrets = {"secrets.DEPLOY_KEY": key.private_text,
               "secrets.DEPLOY_FINGERPRINT": ",".join(server.fingerprints().values())}
    inputs = {str(name): github_expressions(str(value).lower() if isinstance(value, bool) else str(value), secrets)
              for name, value in ours["with"].items()}
    assert inputs["target"].startswith("/srv/"), inputs["target"]
    inputs.update({"host": server.host, "port": str(server.port), "username": server.user,
                   "target": str(remote_dir / inputs["target"].removeprefix("/srv/"))})
    runner, _ = make_runner(tmp_path)
    run = runner_run(github_image, runner, inputs)
    assert run.returncode == 0, str(run)
    outputs = runner.outputs()
    assert outputs.get("result") == "ok", f"{outputs}\n{run}"

    values = {f"steps.{step_id}.outputs.{name}": value for name, value in outputs.items()}
    for name in ("result", "release", "hosts_failed"):  # an output never written reads as empty in GitHub
        values.setdefault(f"steps.{step_id}.outputs.{name}", "")
    for step in uses_outputs:
        env = {str(k): github_expressions(str(v), values) for k, v in (step.get("env") or {}).items()}
        script = github_expressions(step["run"], values)
        script_file = tmp_path / "step.sh"
        script_file.write_text(script)
        # GitHub's default shell for `run`: bash --noprofile --norc -eo pipefail {0}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_file)],
                              env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                              timeout=30, check=False)
        assert proc.returncode == 0, f"later step {step.get('name')!r} failed:\n{proc.stdout}{proc.stderr}\n{run}"
        for name, value in outputs.items():
            if f"outputs.{name}" in json.dumps(step) and value:
                for line in value.splitlines():
                    assert line in proc.stdout, f"output {name}={value!r} did not reach the later step:\n{proc.stdout}"
