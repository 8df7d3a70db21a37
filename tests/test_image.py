"""The plugin image, built from the repository's Dockerfile and run the way Drone, Woodpecker and
GitHub Actions run it: settings in PLUGIN_* / INPUT_* variables, the workspace mounted as the working
directory, against a real OpenSSH server on 127.0.0.1 (`--network=host`).

The session fixture `image` starts (or reuses) a Docker engine with scripts/docker-engine.sh and builds
the image with scripts/build-image.sh. If either fails, every test here FAILS with the reason: a machine
that cannot build the image is a broken CI machine, not a reason to skip.

Environment:
    SSHIPIT_DOCKER_HOST   use this engine (e.g. unix:///var/run/docker.sock) instead of running
                          scripts/docker-engine.sh; the image is still built by scripts/build-image.sh.
    SSHIPIT_TEST_IMAGE    tag to build and test (default sshipit:dev).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sshipit.localserver import KeyPair, LocalServer
from sshipit.settings import lookup

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
IMAGE_TAG = os.environ.get("SSHIPIT_TEST_IMAGE", "sshipit:dev")
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
        client_env = dict(self.env)
        for name, value in (env or {}).items():
            options += ["-e", name]
            client_env[name] = value
        if mount is not None:
            host_dir, container_dir = mount
            options += ["-v", f"{host_dir}:{container_dir}", "-w", container_dir]
        if entrypoint is not None:
            options += ["--entrypoint", entrypoint]
        if user is not None:
            options += ["--user", user]
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
    assert action["runs"] == {"using": "docker", "image": "Dockerfile"}
    inputs = action["inputs"]
    missing = sorted(set(ACTION_INPUTS) - set(inputs))
    assert not missing, f"action.yml lacks inputs: {missing}"
    for name, spec in inputs.items():
        assert lookup(name) is not None, f"action.yml input {name!r} is not an sshipit setting"
        assert spec.get("description"), f"input {name!r} has no description"
        if name in ACTION_INPUTS:
            assert spec.get("default") == ACTION_INPUTS[name], f"input {name!r}: default {spec.get('default')!r}"


def test_github_action_run(
    image: Image, server: LocalServer, keys: dict[str, KeyPair], remote_dir: Path, workspace: Path
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
    run = image.run(env=env, mount=(workspace, "/github/workspace"))
    assert run.returncode == 0, str(run)
    assert_uploaded(remote_dir, files, run)
    assert f"hello-from-{socket.gethostname()}" in run.stdout, str(run)
    assert "second-line" in run.stdout, str(run)
