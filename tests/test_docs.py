"""Every example in README.md and docs/*.md, run: each fenced `yaml` and `sh` block is a deploy that must work.

How a block runs:

- CI YAML (Drone, Woodpecker, GitHub Actions, GitLab CI): the sshipit step is found and its settings are encoded
  exactly the way that CI encodes them (`drone_env`, `woodpecker_env`, `github_env`, `gitlab_job`), secrets
  resolved to test values; sshipit then runs in a workspace holding the build output the examples name
  (WORKSPACE). The plugins of migration.md's "before" pipelines run with only the image swapped for sshipit's.
  A pipeline with several sshipit steps that say what they follow (a split deploy: prepare steps, then a switch
  step after them; Drone/Woodpecker `depends_on`, GitHub jobs with `needs` and a matrix) runs each step as a
  process of its own, in an order the CI would run them (ci_order), with that step's (or matrix job's) variables.
- sh: run by bash, with `sshipit` and `docker` on PATH as small shims (`docker run ... sshipit/sshipit` gets the
  container's variables and workspace, and runs sshipit as the image would).

Both reach sshipit through the same shim (`shim_main`), which maps what the examples name onto real servers:

- HOSTS: each host name of the examples is a "machine": a real sshd in a mount namespace of its own, where
  /srv and the login's home are that machine's own directories, so /srv/app on web1 and on web2 are two
  directories, as on two machines. Every login name becomes the servers' test user.
- Every `SHA256:...` fingerprint in an example becomes the machines' (they share their host keys).
- SECRETS (Drone, Woodpecker, GitHub) and GITLAB_VARIABLES: what each secret name stands for.
- STUBS: programs the examples call that cannot run here (systemctl, npm, curl, ...) are stand-ins on the
  servers' PATH that record their arguments; the test checks that they were called.

A block preceded by `<!-- docs-test: exit N; text -->` documents a failure: it must exit N and print text.
`<!-- docs-test: after the previous example [twice] -->` runs the previous runnable block of the page first.
NOT_RUN lists the few README lines that are not sshipit examples (setting up this repository), with why and
what is checked instead. A block that cannot be run fails its test: nothing is skipped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from helpers import REPO, clean_env, rmtree, ssh
from sshipit import localserver
from sshipit.localserver import HOST_KEY_KINDS, KeyPair, LocalServer, default_login_user

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
CI_PAGES = ("drone.md", "woodpecker.md", "github-actions.md", "gitlab-ci.md", "migration.md", "errors.md")

# Host names of the examples -> the machine that stands for them.
HOSTS = {
    "web1": "web1", "web1.example.com": "web1",
    "web2": "web2", "web2.example.com": "web2",
    "web3": "web3", "web3.example.com": "web3",
    **{f"10.0.1.{11 + n}": f"app{n + 1}" for n in range(6)},
    "bastion": "bastion", "bastion.example.com": "bastion",
    "10.0.0.5": "bastion2",
}
MACHINES = sorted(set(HOSTS.values()))
# Machines whose login may sudo without a password (a sudoers.d file the site fixture writes and removes): the
# "Deploy as another user" examples run there. No other machine's login may sudo.
SUDO_LOGINS = {"web3": "sshipit-docs-sudo"}
SUDOERS = Path(f"/etc/sudoers.d/sshipit-docs-{os.getpid()}")  # its own: other runs go on at once

# What the examples' secrets stand for (filled in per machine set: the key text, fingerprints, known_hosts).
SECRET_KINDS = {
    "deploy_key": "key", "ssh_key": "key", "bastion_key": "key", "DEPLOY_KEY": "key",
    "deploy_fingerprint": "fingerprint", "host_fingerprints": "fingerprint", "app_fingerprints": "fingerprint",
    "web1_fingerprint": "fingerprint", "web2_fingerprint": "fingerprint", "DEPLOY_FINGERPRINT": "fingerprint",
    "deploy_known_hosts": "known_hosts",
    "sentry_dsn": "https://public@sentry.example.com/1",
}
# GitLab CI/CD variables: DEPLOY_KEY is of type File (its value is a path), as docs/gitlab-ci.md says.
GITLAB_VARIABLES = {"DEPLOY_KEY": "key_file", "DEPLOY_FINGERPRINT": "fingerprint"}

# Stand-ins for programs the examples call that cannot run on the test servers: each records `name args`.
STUBS = {
    "systemctl": "exit 0",
    "npm": "exit 0",
    "curl": "exit 0",
    "docker-compose": "exit 0",
    # The real sudo where the login may use it (SUDO_LOGINS), else a stand-in that runs the command as the login.
    "sudo": 'if /usr/bin/sudo -n true 2>/dev/null; then exec /usr/bin/sudo "$@"; fi; exec "$@"',
}

# The build output the examples deploy (what their build steps would have produced).
WORKSPACE = {
    "dist/index.html": "<h1>app</h1>\n",
    "dist/app.js": "console.log('app')\n",
    "dist/app.js.map": "{}\n",
    "dist/migrate.sh": "#!/bin/sh\n# the app's migrations: leave a mark where they ran\ndate > .migrated\n",
    "public/index.html": "<h1>public</h1>\n",
    "package.json": '{"name": "app", "version": "1.0.0"}\n',
    "package-lock.json": '{"lockfileVersion": 3}\n',
    "docker-compose.yml": "services: {}\n",
}

# README lines that are not sshipit examples: what they do instead, and what is checked for them.
NOT_RUN = {
    "scripts/demo": "installs packages with apt-get and runs a demo deploy (needs root and a package mirror)",
    "scripts/test": "runs this very test suite",
    "scripts/install": "tests/test_setup.py runs it (through scripts/demo) in a clean Debian root",
    'export PATH="$PWD/.venv/bin:$PATH"': "tests/test_setup.py checks that .venv/bin/sshipit is there and runs",
    "pipx install .": "tests/test_setup.py runs it in a clean Debian root and runs ~/.local/bin/sshipit",
    "docker build -t sshipit .": "tests/test_image.py builds the image from this Dockerfile and runs it",
    "scripts/build-image.sh": "tests/test_image.py builds the image the same way",
    "scripts/install --test": "scripts/test (run by .ci/run) runs it first",
    "sudo .venv/bin/python bench/run.py": "the full benchmark runs for over an hour; tests/test_bench.py runs the "
                                          "same script",
    ".venv/bin/python bench/run.py --wan": "runs for minutes; tests/test_wire.py measures the same round trips",
    ".venv/bin/python bench/run.py --everyday": "runs for minutes; the same script as the --quick smoke test",
    ".venv/bin/python bench/run.py --quick": "tests/test_bench.py runs it (--loopback-only) and checks its report",
}

PLUGIN_IMAGES = ("sshipit/sshipit", "appleboy/drone-ssh", "appleboy/drone-scp", "cupcakearmy/drone-deploy",
                 "drillster/drone-rsync")
ACTIONS = ("sshipit/sshipit", "appleboy/ssh-action", "appleboy/scp-action")  # migration.md's "before" steps
COMMIT = "5f2a0c1d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49"
DRONE = {
    "CI": "true", "DRONE": "true", "DRONE_REPO": "octo/app", "DRONE_REPO_NAME": "app", "DRONE_REPO_OWNER": "octo",
    "DRONE_COMMIT_SHA": COMMIT, "DRONE_COMMIT_BRANCH": "main", "DRONE_BRANCH": "main", "DRONE_BUILD_NUMBER": "42",
    "DRONE_BUILD_EVENT": "push", "DRONE_WORKSPACE": "/drone/src", "DRONE_CARD_PATH": "/dev/stdout",
}
WOODPECKER = {
    "CI": "woodpecker", "CI_REPO": "octo/app", "CI_COMMIT_SHA": COMMIT, "CI_COMMIT_BRANCH": "main",
    "CI_PIPELINE_NUMBER": "42", "CI_PIPELINE_EVENT": "push", "CI_WORKSPACE": "/woodpecker/src/octo/app",
    "DRONE_COMMIT_SHA": COMMIT, "DRONE_REPO": "octo/app", "DRONE_BUILD_NUMBER": "42",
}
GITHUB = {
    "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_SHA": COMMIT, "GITHUB_REPOSITORY": "octo/app",
    "GITHUB_RUN_NUMBER": "42", "GITHUB_REF": "refs/heads/main",
}
GITLAB = {
    "CI": "true", "GITLAB_CI": "true", "CI_COMMIT_SHA": COMMIT, "CI_COMMIT_BRANCH": "main",
    "CI_PROJECT_PATH": "octo/app", "CI_PIPELINE_IID": "42",
}


# ------------------------------------------------------------------------------------------------- the blocks


@dataclass
class Block:
    page: Path
    line: int
    lang: str  # yaml or sh
    text: str
    ci: str  # drone, woodpecker, github, gitlab, or sh
    note: str = ""  # the docs-test comment before the block, if any
    previous: Block | None = None  # the page's runnable block before this one
    files: dict[str, str] = field(default_factory=dict)  # the page's files so far (`docs-test: file PATH`)

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def _ci_of(page: Path, heading: str, lang: str) -> str:
    if lang == "sh":
        return "sh"
    by_page = {"woodpecker.md": "woodpecker", "github-actions.md": "github", "gitlab-ci.md": "gitlab"}
    if page.name in by_page:
        return by_page[page.name]
    for name, ci in (("Woodpecker", "woodpecker"), ("GitHub", "github"), ("GitLab", "gitlab")):
        if name in heading:
            return ci
    return "drone"


def collect_blocks() -> list[Block]:
    found: list[Block] = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        heading = ""
        previous: Block | None = None
        files: dict[str, str] = {}  # repository files the page shows (an inventory, an ssh_config)
        n = 0
        while n < len(lines):
            line = lines[n]
            if line.startswith("#"):
                heading = line
            fence = re.match(r"^```(\w*)\s*$", line)
            if not fence:
                n += 1
                continue
            end = next(i for i in range(n + 1, len(lines)) if lines[i].startswith("```"))
            lang = {"yml": "yaml", "bash": "sh", "shell": "sh"}.get(fence.group(1), fence.group(1))
            before = next((lines[i] for i in range(n - 1, -1, -1) if lines[i].strip()), "")
            note = re.fullmatch(r"<!-- docs-test: (.*) -->", before.strip())
            as_file = re.fullmatch(r"file (\S+)", note.group(1)) if note else None
            if as_file:  # a file of the repository the page's next examples use: written into their workspace
                files[as_file.group(1)] = "\n".join(lines[n + 1:end]) + "\n"
            elif lang in ("yaml", "sh"):
                block = Block(page, n + 1, lang, "\n".join(lines[n + 1:end]) + "\n", _ci_of(page, heading, lang),
                              note.group(1) if note else "", previous, dict(files))
                found.append(block)
                previous = block
            n = end + 1
    return found


BLOCKS = collect_blocks()


# ------------------------------------------------------------------------------------------------ the machines


@dataclass
class Machine:
    name: str
    server: LocalServer
    srv: Path  # this machine's /srv
    home: Path  # this machine's home of the login user

    @property
    def calls(self) -> str:
        path = self.srv / ".calls"
        return path.read_text() if path.exists() else ""

    def path(self, remote: str) -> Path:
        """Where a remote path of this machine is, seen from the test (targets live in /srv or the home)."""
        if remote.startswith("/srv/"):
            return self.srv / remote[len("/srv/"):]
        if remote.startswith("/"):
            raise AssertionError(f"doc examples deploy under /srv (each machine has its own): {remote}")
        return self.home / remote.removeprefix("~/")

    def reset(self) -> None:
        """A fresh machine: an empty /srv/app owned by the deploy user, an empty home, no recorded calls."""
        user = pwd.getpwnam(self.server.user)
        for root in (self.srv, self.home):
            for child in root.iterdir():
                if child.name == ".machine":
                    continue
                if child.is_dir() and not child.is_symlink():
                    rmtree(child)
                else:
                    child.unlink()
        (self.srv / "app").mkdir()
        os.chown(self.srv / "app", user.pw_uid, user.pw_gid)


@dataclass
class Site:
    """The machines, and what the examples' names stand for on them."""

    machines: dict[str, Machine]
    key: KeyPair
    fingerprint: str
    known_hosts: str
    shims: Path
    root: Path
    secrets: dict[str, str] = field(default_factory=dict)
    gitlab: dict[str, str] = field(default_factory=dict)


def _stub_dir(root: Path) -> Path:
    stubs = root / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        path = stubs / name
        path.write_text(f'#!/bin/sh\n# stands in for {name} on the test servers: records the call, then {body}\n'
                        f'echo "{name} $*" >> /srv/.calls\n{body}\n')
        path.chmod(0o755)
    stubs.chmod(0o755)
    return stubs


def _start_machine(name: str, root: Path, key: KeyPair, stubs: Path, host_keys: Path | None) -> Machine:
    user = localserver.ensure_user(SUDO_LOGINS[name]) if name in SUDO_LOGINS else default_login_user()
    workdir, srv, home = root / name / "sshd", root / name / "srv", root / name / "home"
    for path in (workdir, srv, home):
        path.mkdir(parents=True)
    (root / name).chmod(0o711)
    for path in (srv, home):
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o755)
    (srv / ".machine").write_text(name + "\n")
    if host_keys is not None:  # every machine shows the same host keys: one fingerprint pins them all
        for kind in HOST_KEY_KINDS:
            for suffix in ("", ".pub"):
                shutil.copy2(host_keys / f"ssh_host_{kind}_key{suffix}", workdir / f"ssh_host_{kind}_key{suffix}")
    wrapper = workdir / "sshd-in-namespace"
    wrapper.write_text(
        "#!/bin/sh\n# sshd of one stand-in machine: a mount namespace of its own, with its own /srv and home\n"
        f"exec unshare --mount --propagation private /bin/sh -c 'mount --bind \"$0\" /srv && "
        f"mount --bind \"$1\" \"$2\" && shift 2 && exec {localserver.SSHD} \"$@\"' "
        f"{srv} {home} {user.pw_dir} \"$@\"\n")
    wrapper.chmod(0o755)
    server = LocalServer(workdir, extra_config=f"SetEnv PATH={stubs}:/usr/local/bin:/usr/bin:/bin\n",
                         user=user.pw_name)
    server.authorize(key.public_text)
    with mock.patch.object(localserver, "SSHD", str(wrapper)):
        server.start()
    return Machine(name, server, srv, home)


@pytest.fixture(scope="module")
def site(keys: dict[str, KeyPair]) -> Iterator[Site]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("the docs examples run on stand-in machines (sshd in mount namespaces): this needs root and "
                    "unshare(1) from util-linux")
    key = keys["ed25519"]
    root = Path(tempfile.mkdtemp(prefix="sshipit-docs-"))
    root.chmod(0o711)
    machines: dict[str, Machine] = {}
    SUDOERS.parent.mkdir(exist_ok=True)  # made by the sudo package, which scripts/install installs
    SUDOERS.write_text("".join(f"{login} ALL=(ALL:ALL) NOPASSWD: ALL\n" for login in SUDO_LOGINS.values()))
    SUDOERS.chmod(0o440)
    try:
        stubs = _stub_dir(root)
        for name in MACHINES:
            first = next(iter(machines.values()), None)
            machines[name] = _start_machine(name, root, key, stubs, first.server.workdir if first else None)
        for machine in machines.values():  # each machine sees its own /srv, and the stubs on PATH
            probe = ssh(machine.server, key, "cat /srv/.machine; command -v systemctl", root / "known_hosts")
            assert probe.stdout.split() == [machine.name, str(stubs / "systemctl")], \
                f"machine {machine.name} is not set up: {probe.stdout!r} {probe.stderr!r}"
        first = next(iter(machines.values()))
        fingerprint = first.server.fingerprints()["ssh-ed25519"]
        known_hosts = "".join(m.server.known_hosts() for m in machines.values())
        key_file = root / "deploy_key_file"
        key_file.write_text(key.private_text)
        key_file.chmod(0o600)
        values = {"key": key.private_text, "fingerprint": fingerprint, "known_hosts": known_hosts,
                  "key_file": str(key_file)}
        shims = _shims(root, machines, fingerprint)
        yield Site(machines, key, fingerprint, known_hosts, shims, root,
                   secrets={name: values.get(kind, kind) for name, kind in SECRET_KINDS.items()},
                   gitlab={name: values[kind] for name, kind in GITLAB_VARIABLES.items()})
    finally:
        for machine in machines.values():
            machine.server.stop()
        rmtree(root)
        SUDOERS.unlink(missing_ok=True)


def _shims(root: Path, machines: dict[str, Machine], fingerprint: str) -> Path:
    """`sshipit` and `docker` for the sh examples: both end in `shim_main`, in a process of their own."""
    shims = root / "shims"
    shims.mkdir()
    config = {
        "hosts": {alias: machines[name].server.port for alias, name in HOSTS.items()},
        "machines": HOSTS,
        "login": default_login_user().pw_name,
        "logins": {alias: SUDO_LOGINS[name] for alias, name in HOSTS.items() if name in SUDO_LOGINS},
        "fingerprint": fingerprint,
        "python": sys.executable,
    }
    (root / "shim.json").write_text(json.dumps(config))
    for name in ("sshipit", "docker"):
        path = shims / name
        path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n"
                        "from test_docs import shim_main\nraise SystemExit(shim_main(sys.argv))\n")
        path.chmod(0o755)
    return shims


# ----------------------------------------------------------------------------------------------------- the shim


HOST_SETTINGS = {"host", "jump", "proxy_host"}
USER_SETTINGS = {"username", "proxy_username"}
PIN_SETTINGS = {"fingerprint", "proxy_fingerprint"}


def shim_main(argv: list[str]) -> int:
    """Entry point of the `sshipit` and `docker` shims: map the example's names, record, exec sshipit."""
    config = json.loads(Path(os.environ["DOCS_TEST_CONFIG"]).read_text())
    env = dict(os.environ)
    args = argv[1:]
    if Path(argv[0]).name == "docker":
        args, env, cwd = _docker_run(args, env)
        os.chdir(cwd)
    try:
        args, env, machines = _rewrite(args, env, config)
    except LookupError as exc:
        print(f"docs test: {exc}", file=sys.stderr)
        return 99
    _record(args, env, machines)
    os.execve(config["python"], [config["python"], "-m", "sshipit", *args], env)
    return 0  # not reached


def _docker_run(args: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str], str]:
    """`docker run [--rm] [-e NAME[=VALUE]] [-v SRC:DST] [-w DIR] sshipit/sshipit [ARGS]`, as the container sees it:
    only the -e variables, the workspace mounted at its working directory (/drone/src by default)."""
    if not args or args[0] != "run":
        raise SystemExit(f"docs test: only `docker run` is emulated, not {args[:1]}")
    inside = {name: env[name] for name in ("PATH", "PYTHONPATH", "HOME", "DOCS_TEST_CONFIG", "NO_COLOR", "LANG")
              if name in env}
    mounts: dict[str, str] = {}
    workdir = "/drone/src"
    n = 1
    while n < len(args) and args[n].startswith("-"):
        option = args[n]
        if option == "--rm":
            n += 1
            continue
        value = args[n + 1]
        if option in ("-e", "--env"):
            name, has, text = value.partition("=")
            if has:
                inside[name] = text
            elif name in env:
                inside[name] = env[name]
        elif option in ("-v", "--volume"):
            source, target = value.split(":")[:2]
            mounts[target] = source
        elif option in ("-w", "--workdir"):
            workdir = value
        else:
            raise SystemExit(f"docs test: docker option {option} is not emulated")
        n += 2
    image = args[n].split(":")[0] if n < len(args) else ""
    if image != "sshipit/sshipit":
        raise SystemExit(f"docs test: docker runs {image!r}, not sshipit/sshipit")
    if workdir not in mounts:
        raise SystemExit(f"docs test: no workspace is mounted at {workdir}")
    return args[n + 1:], inside, mounts[workdir]


def _rewrite(args: list[str], env: dict[str, str], config: dict[str, Any]) -> tuple[list[str], dict[str, str],
                                                                                    list[str]]:
    """Hosts, users and fingerprints of the example -> the machines; in flags and in PLUGIN_/INPUT_ variables."""
    from sshipit.settings import lookup

    machines: list[str] = []

    def value(setting: str, text: str) -> str:
        items = None
        stripped = text.strip()
        if stripped.startswith("["):
            with contextlib.suppress(ValueError):
                items = json.loads(stripped)
            if items is not None and setting == "host" and all(isinstance(i, (str, dict)) for i in items) \
                    and not any(isinstance(i, dict) and "from_secret" in i for i in items):
                return json.dumps([{**i, "host": _map(setting, str(i.get("host")), config, machines)}
                                   if isinstance(i, dict) else _map(setting, i, config, machines) for i in items])
            if items is not None and not all(isinstance(item, str) for item in items):
                return text  # maps inside (an unresolved from_secret): sshipit itself must refuse it
        parts = items if items is not None else text.split(",")
        mapped = [_map(setting, part.strip(), config, machines) for part in parts if part.strip()]
        mapped = list(dict.fromkeys(mapped))
        return json.dumps(mapped) if items is not None else ",".join(mapped)

    out = list(args)
    # With an ssh_config, host entries are its Host aliases: they reach the machines through its HostName lines
    # (machine_file rewrote them), so they are left as written and the machines are found through the file.
    mapped = HOST_SETTINGS | USER_SETTINGS | PIN_SETTINGS
    if "--ssh-config" in out or any(a.startswith("--ssh-config=") for a in out) or \
            env.get("PLUGIN_SSH_CONFIG") or env.get("INPUT_SSH_CONFIG"):
        mapped = mapped - {"host", "username"}
    for n, arg in enumerate(out):
        if not arg.startswith("--"):
            continue
        name, has, text = arg[2:].partition("=")
        setting = lookup(name)
        if setting is None or setting.name not in mapped:
            continue
        if has:
            out[n] = f"--{name}={value(setting.name, text)}"
        elif n + 1 < len(out):
            out[n + 1] = value(setting.name, out[n + 1])
    for var, text in list(env.items()):
        if var.startswith(("PLUGIN_", "INPUT_")):
            setting = lookup(var.split("_", 1)[1])
            if setting is not None and setting.name in mapped and text:
                env[var] = value(setting.name, text)
    machines += _file_machines(out, env, config)
    return out, env, machines


def _file_machines(args: list[str], env: dict[str, str], config: dict[str, Any]) -> list[str]:
    """The machines an inventory (with its limit) or an ssh_config sends the run to, found by the ports
    machine_file wrote into those files."""
    from sshipit.cli import read_settings
    from sshipit.errors import SettingsError
    from sshipit.inventory import HostEntry, inventory_entries, read_inventory
    from sshipit.settings import parse_list
    from sshipit.sshconfig import read_config, resolve

    by_port = {port: config["machines"][alias] for alias, port in config["hosts"].items()}
    try:
        raw = read_settings(list(args), env)
    except (SettingsError, SystemExit):
        return []
    text = {name: entry.text for name, entry in raw.known.items()}
    entries: list[HostEntry] = []
    try:
        if text.get("inventory"):
            entries += inventory_entries(read_inventory(text["inventory"] or "", Path.cwd()), text.get("limit"), [])
        if text.get("ssh_config"):
            found = read_config(text["ssh_config"] or "", Path.cwd())
            hosts = parse_list(raw.known["host"], "host") if "host" in raw.known else []
            entries += [HostEntry(h, h) for h in hosts]
            for entry in entries:
                resolve(found, entry, 22, config["login"])
    except SettingsError:
        return []  # sshipit itself says what is wrong
    return [by_port[entry.port] for entry in entries if entry.port in by_port]


def _map(setting: str, item: str, config: dict[str, Any], machines: list[str]) -> str:
    if setting in USER_SETTINGS:
        return config["login"]
    if setting in PIN_SETTINGS:
        if not item.startswith("SHA256:"):
            raise LookupError(f"{setting}: {item!r} is not a SHA256 fingerprint")
        return config["fingerprint"]
    match = re.fullmatch(r"(?:[^@]+@)?(\[[^\]]+\]|[^:]+)(?::\d+)?", item)
    name = match.group(1) if match else item
    if name not in config["hosts"]:
        raise LookupError(f"no machine stands for host {name!r}: add it to HOSTS in tests/test_docs.py")
    if setting == "host":
        machines.append(config["machines"][name])
    return f"{config['logins'].get(name, config['login'])}@127.0.0.1:{config['hosts'][name]}"


def _record(args: list[str], env: dict[str, str], machines: list[str]) -> None:
    """What this run should have done, for the test to check on the machines."""
    from sshipit.cli import read_settings

    known: dict[str, str] = {}
    with contextlib.suppress(Exception):
        raw = read_settings(list(args), env)
        for name, entry in raw.known.items():
            known[name] = entry.text if entry.text is not None else ",".join(entry.items or [])
    record = {"machines": machines, "settings": known, "plan": bool(args) and args[0] == "plan"}
    with open(os.environ["DOCS_TEST_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")


# -------------------------------------------------------------------------------------- CI encodings of settings


def drone_substitute(text: str, environ: dict[str, str]) -> str:
    """Drone's substitution over the whole file: `${VAR}` (empty when undefined), `$$` -> `$`."""
    return re.sub(r"\$\$|\$\{(\w+)\}", lambda m: "$" if m.group(0) == "$$" else environ.get(m.group(1), ""), text)


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    return "" if value is None else str(value)


def go_float(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'g', -1, 64), which Drone uses: the shortest digits, an exponent from 1e+06
    and below 1e-04 (`1.0` -> `1`, `1000000.0` -> `1e+06`)."""
    digits, exponent = Decimal(repr(value)).normalize().as_tuple()[1:]
    assert isinstance(exponent, int)
    point = len(digits) + exponent - 1  # the power of ten of the first digit
    if point < -4 or point >= 6:
        mantissa = "".join(map(str, digits))
        mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        return f"{'-' if value < 0 else ''}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    return format(Decimal(repr(value)).normalize(), "f")


def drone_value(value: object) -> str:
    """Drone's encoder: scalars plainly, scalar lists comma-joined, anything nested as JSON (maps key-sorted)."""
    if isinstance(value, list):
        if all(not isinstance(item, (list, dict)) for item in value):
            return ",".join(_scalar(item) for item in value)
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return _scalar(value)


def drone_env(settings: dict[str, object], secrets: dict[str, str]) -> dict[str, str]:
    """PLUGIN_<UPPER KEY>; from_secret only as a setting's whole value; empty values dropped by the runner."""
    env = {}
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, dict) and list(value) == ["from_secret"]:
            value = _secret(secrets, str(value["from_secret"]))
        text = drone_value(value)
        if text != "":
            env["PLUGIN_" + str(key).upper()] = text
    return env


def woodpecker_yaml(text: str) -> Any:
    """Woodpecker reads YAML 1.2: `yes`/`on` stay text. PyYAML's BaseLoader keeps every scalar as text; only
    null has to be given back its meaning."""

    def nulls(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: nulls(v) for k, v in value.items()}
        if isinstance(value, list):
            return [nulls(v) for v in value]
        return None if value in ("~", "null", "Null", "NULL") else value

    return nulls(yaml.load(text, Loader=yaml.BaseLoader))


def woodpecker_env(settings: dict[str, object], secrets: dict[str, str]) -> dict[str, str]:
    """PLUGIN_ + key with `-`/`.` -> `_`, upper-cased; from_secret at any depth; empty lists kept as ``."""

    def resolve(value: object) -> object:
        if isinstance(value, dict):
            if list(value) == ["from_secret"]:
                return _secret(secrets, str(value["from_secret"]))
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return value

    return {"PLUGIN_" + re.sub(r"[-.]", "_", str(key)).upper(): drone_value(resolve(value))
            for key, value in settings.items() if value is not None}


def _secret(secrets: dict[str, str], name: str) -> str:
    if name not in secrets:
        raise AssertionError(f"the example uses secret {name!r}: add it to SECRET_KINDS in tests/test_docs.py")
    return secrets[name]


def github_expression(text: str, secrets: dict[str, str], context: dict[str, str] | None = None) -> str:
    """`${{ ... }}`: secrets, the github context, and a matrix job's `matrix.*`/`strategy.*` (`context`), with
    `+ N` on a number (`strategy.job-index + 1`)."""
    def evaluate(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression.startswith("secrets."):
            return _secret(secrets, expression.removeprefix("secrets."))
        known = {"github.sha": COMMIT, "github.repository": "octo/app", "github.run_number": "42", **(context or {})}
        name, plus, number = (part.strip() for part in expression.partition("+"))
        if plus and name in known and known[name].isdigit() and number.isdigit():
            return str(int(known[name]) + int(number))
        if expression not in known:
            raise AssertionError(f"the test cannot evaluate ${{{{ {expression} }}}}")
        return known[expression]

    return re.sub(r"\$\{\{(.*?)\}\}", evaluate, text)


def github_env(step: dict[str, Any], secrets: dict[str, str], context: dict[str, str] | None = None
               ) -> dict[str, str]:
    """INPUT_<NAME> (upper-cased, spaces -> `_`, hyphens kept) for every `with` input, and for every input
    action.yml declares with a default; all strings. An input action.yml does not declare is an error here."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    declared: dict[str, Any] = action["inputs"]
    given = {str(k): v for k, v in (step.get("with") or {}).items()}
    unknown = sorted(set(given) - set(declared))
    assert not unknown, f"inputs not declared in action.yml (GitHub warns about them): {unknown}"
    env = {f"INPUT_{name.upper().replace(' ', '_')}": str(spec["default"])
           for name, spec in declared.items() if "default" in spec and name not in given}
    for name, value in given.items():
        env[f"INPUT_{name.upper().replace(' ', '_')}"] = github_expression(_scalar(value), secrets, context)
    for name, value in (step.get("env") or {}).items():
        env[str(name)] = github_expression(_scalar(value), secrets, context)
    return env


def gitlab_expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), text)


def _image(step: dict[str, Any]) -> str:
    image = step.get("image")
    name = image.get("name", "") if isinstance(image, dict) else str(image or "")
    return name.split(":")[0]


def _plugin_steps(steps: list[dict[str, Any]], block: Block) -> list[dict[str, Any]]:
    """The sshipit step (or a plugin it replaces); or several, when they say which steps they follow
    (`depends_on`, a split deploy's prepare and switch steps): then in an order the CI runs them in."""
    found = [step for step in steps if isinstance(step, dict) and _image(step) in PLUGIN_IMAGES]
    if len(found) > 1 and any(step.get("depends_on") for step in found):
        return ci_order({str(step["name"]): step for step in found}, "depends_on")
    assert len(found) == 1, f"{block.id}: expected one sshipit step (or a plugin it replaces), found {len(found)}"
    return found


def ci_order(items: dict[str, dict[str, Any]], follows: str) -> list[dict[str, Any]]:
    """Steps or jobs in an order the CI may run them: each after those it names in `follows` (Drone and
    Woodpecker `depends_on`, GitHub `needs`); the others in the file's order."""
    done: list[str] = []
    while len(done) < len(items):
        ready = [name for name, item in items.items() if name not in done and all(
            before in done or before not in items for before in _names(item.get(follows)))]
        assert ready, f"a cycle in {follows}: {sorted(set(items) - set(done))}"
        done.append(ready[0])
    return [items[name] for name in done]


def _names(value: object) -> list[str]:
    return [str(value)] if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []


def github_jobs(data: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Each sshipit step of a workflow, in job order (`needs`), once per matrix combination of its job (one matrix
    key), with the `matrix.*` and `strategy.*` values the runner gives that job."""
    runs = []
    for job in ci_order({str(name): job for name, job in data["jobs"].items()}, "needs"):
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        assert len(matrix) <= 1, "the test expands a matrix of one key"
        combos = [{f"matrix.{key}": _scalar(value)} for key, values in matrix.items() for value in values] or [{}]
        for index, combo in enumerate(combos):
            context = {**combo, "strategy.job-index": str(index), "strategy.job-total": str(len(combos))}
            runs += [(step, context) for step in job.get("steps", [])
                     if str(step.get("uses", "")).split("@")[0] in ACTIONS]
    return runs


# ---------------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    records: list[dict[str, Any]]
    extra: dict[str, str] = field(default_factory=dict)  # GitHub's output file, ...
    steps: int = 1  # sshipit processes run (a split deploy's steps, one after the other)

    def __str__(self) -> str:
        return f"[exit {self.returncode}]\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"


def run_block(block: Block, site: Site, workspace: Path, home: Path, tmp: Path) -> Outcome:
    log = tmp / "runs.jsonl"
    log.unlink(missing_ok=True)
    base = {"DOCS_TEST_CONFIG": str(site.root / "shim.json"), "DOCS_TEST_LOG": str(log),
            "PATH": f"{site.shims}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    extra: dict[str, str] = {}
    if block.ci == "sh":
        runs = [(["bash", "-e", "-c", block.text], {})]
    elif block.ci == "gitlab":
        runs = [gitlab_job(block, site)]
    else:
        runs = []
        for settings_env, env in _ci_steps(block, site, workspace, tmp):
            runs.append(([str(site.shims / "sshipit")], {**env, **settings_env}))
            if block.ci == "github":
                extra = {"GITHUB_OUTPUT": env["GITHUB_OUTPUT"], "GITHUB_STEP_SUMMARY": env["GITHUB_STEP_SUMMARY"]}
    out, err, status = "", "", 0
    for command, env in runs:  # a split deploy's steps: separate processes, each after those it follows
        proc = subprocess.run(command, cwd=workspace, env=clean_env(home, {**env, **base}), capture_output=True,
                              text=True, timeout=240, stdin=subprocess.DEVNULL, check=False)
        out, err, status = out + proc.stdout, err + proc.stderr, proc.returncode
        if status != 0:  # the CI runs no step after a failed one
            break
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return Outcome(status, out, err, records, extra, len(runs))


def _ci_steps(block: Block, site: Site, workspace: Path, tmp: Path) -> list[tuple[dict[str, str], dict[str, str]]]:
    """For each sshipit step, in the CI's order: the settings as the CI hands them to the plugin, and the CI's own
    variables."""
    if block.ci == "drone":
        data = yaml.safe_load(drone_substitute(block.text, DRONE))
        if isinstance(data, dict) and "settings" in data and "image" not in data:  # a `settings:` fragment
            data = [{"name": "deploy", "image": "sshipit/sshipit", "settings": data["settings"]}]
        steps = data["steps"] if isinstance(data, dict) else data
        (workspace / ".drone.yml").write_text(block.text)  # what sshipit may read back to recover commas
        return [(drone_env(step.get("settings") or {}, site.secrets), {**DRONE, "DRONE_STEP_NAME": step["name"]})
                for step in _plugin_steps(steps, block)]
    if block.ci == "woodpecker":
        data = woodpecker_yaml(block.text)
        steps = data["steps"]
        if isinstance(steps, dict):
            steps = [{"name": name, **step} for name, step in steps.items()]
        (workspace / ".woodpecker.yml").write_text(block.text)
        return [(woodpecker_env(step.get("settings") or {}, site.secrets), {**WOODPECKER, "CI_STEP_NAME": step["name"]})
                for step in _plugin_steps(steps, block)]
    assert block.ci == "github", block.ci
    data = yaml.safe_load(block.text)
    if isinstance(data, dict) and "jobs" in data:
        found = github_jobs(data)
        split = any(job.get("needs") for job in data["jobs"].values())  # jobs after jobs: each runs its step
    else:
        steps = data if isinstance(data, list) else [data]
        found, split = [(s, {}) for s in steps if str(s.get("uses", "")).split("@")[0] in ACTIONS], False
    assert len(found) == 1 or (split and found), \
        f"{block.id}: expected one `uses: sshipit/sshipit@...` step (or an action it replaces)"
    output, summary = tmp / "github_output", tmp / "github_summary.md"
    for path in (output, summary):
        path.write_text("")
    return [(github_env(step, site.secrets, context), {
        **GITHUB, "GITHUB_WORKSPACE": str(workspace), "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary)}) for step, context in found]


def gitlab_job(block: Block, site: Site) -> tuple[list[str], dict[str, str]]:
    """The job's script run by a shell, with GitLab's variables: CI/CD ones, predefined ones and the job's own
    (expanded the way GitLab expands `$NAME` in variables)."""
    data = yaml.safe_load(block.text)
    jobs = {name: job for name, job in data.items() if isinstance(job, dict) and "script" in job}
    ours = {name: job for name, job in jobs.items() if _image(job) == "sshipit/sshipit"}
    assert len(ours) == 1, f"{block.id}: expected one job with image sshipit/sshipit"
    job = next(iter(ours.values()))
    assert isinstance(job["image"], dict) and job["image"].get("entrypoint") == [""], \
        f"{block.id}: the image's entrypoint is sshipit; GitLab needs `entrypoint: [\"\"]` to run a script"
    known = {**GITLAB, **site.gitlab}
    variables = {**(data.get("variables") or {}), **(job.get("variables") or {})}
    env = {**known, **{str(k): gitlab_expand(_scalar(v), known) for k, v in variables.items()}}
    script = job["script"] if isinstance(job["script"], list) else [job["script"]]
    return ["bash", "-e", "-c", "\n".join(str(line) for line in script)], env


# --------------------------------------------------------------------------------------------------- checking


def check_success(block: Block, outcome: Outcome, site: Site) -> None:
    assert outcome.returncode == 0, f"{block.id} failed\n{outcome}"
    assert "Traceback" not in outcome.stderr, outcome
    assert outcome.records, f"{block.id}: sshipit never ran\n{outcome}"
    if outcome.steps > 1:  # a split deploy: every step ran, each as its own process
        assert len(outcome.records) == outcome.steps, f"{block.id}: a step did not run\n{outcome}"
    assert re.search(r"^summary: \d+ hosts?, all ok", outcome.stdout, re.M), outcome
    for record in outcome.records:
        settings = record["settings"]
        assert record["machines"], f"{block.id}: no host of the example reached a machine"
        for name in record["machines"]:
            machine = site.machines[name]
            target = settings.get("target")
            if record["plan"]:
                assert not any(machine.srv.rglob("*.html")), f"{block.id}: `plan` changed {name}"
                continue
            if target and settings.get("sources"):
                root = machine.path(target)
                if settings.get("atomic", "false").lower() in ("true", "yes", "on", "1"):
                    root = root / "current"
                    assert root.is_symlink(), f"{block.id}: no current release on {name}\n{outcome}"
                uploaded = [p for p in root.rglob("*") if p.is_file() and p.name in {Path(f).name for f in WORKSPACE}]
                assert uploaded, f"{block.id}: nothing uploaded to {target} on {name}\n{outcome}"
            if target and settings.get("phase") == "switch":  # a split deploy's last step: the release is live
                assert (machine.path(target) / "current").is_symlink(), f"{block.id}: not switched on {name}"
            commands = " ".join(settings.get(s, "") for s in ("commands", "post_commands", "healthcheck"))
            for stub in STUBS:
                if re.search(rf"(^|[\s;&|,]){re.escape(stub)}\s", commands):
                    assert re.search(rf"^{re.escape(stub)} ", machine.calls, re.M), \
                        f"{block.id}: {stub} was not called on {name}\n{outcome}"
            if settings.get("owner") and target and settings.get("sources"):  # what landed is the owner's
                owner = pwd.getpwnam(settings["owner"].split(":")[0])
                assert all(p.lstat().st_uid == owner.pw_uid for p in uploaded), f"{block.id}: not {owner.pw_name}'s"
            if "migrate.sh" in commands:
                assert list(machine.srv.rglob(".migrated")) or list(machine.home.rglob(".migrated")), \
                    f"{block.id}: migrate.sh did not run on {name}\n{outcome}"
    if block.ci == "drone":
        payloads = re.findall(r"(?:^|\n)\x1b\]1338;([A-Za-z0-9+/=]+)\x1b\]0m\n", outcome.stdout)
        assert len(payloads) == outcome.steps, f"{block.id}: expected one Drone card per step\n{outcome}"
        assert all(json.loads(base64.b64decode(payload))["data"]["result"] == "ok" for payload in payloads)
    if block.ci == "github":
        assert "result=ok\n" in Path(outcome.extra["GITHUB_OUTPUT"]).read_text()
        assert "sshipit: " in Path(outcome.extra["GITHUB_STEP_SUMMARY"]).read_text()


def machine_file(name: str, text: str, site: Site) -> str:
    """A file a page shows (an Ansible inventory, an ssh_config) as it must read to reach the machines: each host
    name of HOSTS becomes 127.0.0.1 and that machine's port, each login name the servers' test user."""
    login = default_login_user().pw_name
    port = {alias: site.machines[machine].server.port for alias, machine in HOSTS.items()}

    def address(match: re.Match[str]) -> str:  # [user@]name[:port] in a ProxyJump or a -J
        if match.group(2) not in port:
            return match.group(0)
        return f"{login}@127.0.0.1:{port[match.group(2)]}"

    hop = r"(?:([\w.-]+)@)?([\w.-]+)(?::\d+)?"
    if re.search(r"^\s*Host\s", text, re.M):  # an ssh_config
        out = []
        for line in text.splitlines():
            words = line.split()
            keyword = words[0].lower() if words else ""
            if keyword == "port":
                continue  # the machine's port comes with its HostName
            if keyword == "hostname":
                assert words[1] in port, f"{name}: no machine stands for HostName {words[1]}: add it to HOSTS"
                indent = line[: len(line) - len(line.lstrip())]
                out += [f"{indent}HostName 127.0.0.1", f"{indent}Port {port[words[1]]}"]
            elif keyword == "user":
                out.append(re.sub(r"(?i)(user\s+)\S+", rf"\g<1>{login}", line))
            elif keyword == "proxyjump":
                out.append(line.split(None, 1)[0] + " " + re.sub(hop, address, line.split(None, 1)[1]))
            else:
                out.append(line)
        return "\n".join(out) + "\n"
    if name.endswith((".yml", ".yaml")):
        data = yaml.safe_load(text)

        def group(body: dict[str, Any]) -> None:
            for key, variables in (body.get("hosts") or {}).items():
                body["hosts"][key] = host_vars(str(key), dict(variables or {}))
            for child in (body.get("children") or {}).values():
                group(child or {})
            if "ansible_user" in (body.get("vars") or {}):
                body["vars"]["ansible_user"] = login

        def host_vars(key: str, variables: dict[str, Any]) -> dict[str, Any]:
            where = str(variables.get("ansible_host", key))
            assert where in port, f"{name}: no machine stands for host {where}: add it to HOSTS"
            variables.update(ansible_host="127.0.0.1", ansible_port=port[where])
            if "ansible_user" in variables:
                variables["ansible_user"] = login
            return variables

        for body in data.values():
            group(body or {})
        return yaml.safe_dump(data, sort_keys=False)
    out = []  # an INI inventory
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        elif stripped and not stripped.startswith(("#", ";")):
            line = re.sub(r"\bansible_user=\S+", f"ansible_user={login}", line)
            line = re.sub(r"\s*\bansible_port=\S+", "", line)
            if not section.endswith((":vars]", ":children]")):
                words = stripped.split()
                where = next((w.split("=", 1)[1] for w in words if w.startswith("ansible_host=")), words[0])
                assert where in port, f"{name}: no machine stands for host {where}: add it to HOSTS"
                line = re.sub(r"\s*\bansible_host=\S+", "", line)
                line += f" ansible_host=127.0.0.1 ansible_port={port[where]}"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture
def home(tmp_path: Path, site: Site) -> Path:
    """The HOME the examples run with: `~/.ssh/deploy` is the deploy key, as the shell examples assume."""
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    (path / ".ssh/deploy").write_text(site.key.private_text)
    (path / ".ssh/deploy").chmod(0o600)
    return path


def fill_workspace(workspace: Path) -> None:
    for name, text in WORKSPACE.items():
        path = workspace / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)


def _commands_of(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _is_setup_block(block: Block) -> bool:
    commands = _commands_of(block.text)
    return block.ci == "sh" and any(command in NOT_RUN for command in commands)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_example(block: Block, site: Site, workspace: Path, home: Path, tmp_path: Path) -> None:
    if _is_setup_block(block):
        check_setup_block(block)
        return
    for machine in site.machines.values():
        machine.reset()
    fill_workspace(workspace)
    for name, text in block.files.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(machine_file(name, text, site))
    note = block.note
    setup = re.fullmatch(r"after the previous example( twice)?", note)
    if setup:
        assert block.previous is not None, f"{block.id}: there is no previous example"
        for _ in range(2 if setup.group(1) else 1):
            first = run_block(block.previous, site, workspace, home, tmp_path)
            check_success(block.previous, first, site)
        note = ""
    outcome = run_block(block, site, workspace, home, tmp_path)
    failure = re.fullmatch(r"exit (\d+); (.+)", note)
    if failure:
        assert outcome.returncode == int(failure.group(1)), f"{block.id}\n{outcome}"
        assert failure.group(2) in outcome.stdout + outcome.stderr, f"{block.id}\n{outcome}"
        assert "Traceback" not in outcome.stderr
        return
    assert not note, f"{block.id}: docs-test note not understood: {note!r}"
    check_success(block, outcome, site)


def check_setup_block(block: Block) -> None:
    """README lines that set up this repository rather than deploy: every one must be in NOT_RUN, and exist."""
    for command in _commands_of(block.text):
        assert command in NOT_RUN, f"{block.id}: {command!r} is neither a sshipit example nor in NOT_RUN"
        if command.startswith("scripts/"):
            script = REPO / command.split()[0]
            assert script.is_file() and os.access(script, os.X_OK), f"{command} is missing or not executable"
            syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
            assert syntax.returncode == 0, f"{command}: {syntax.stderr}"
        elif command.startswith("docker build"):
            assert (REPO / "Dockerfile").is_file() and "docker" in (REPO / "tests/test_image.py").read_text()


# ------------------------------------------------------------------------------------------- the pages themselves


def test_every_ci_has_a_page_with_examples() -> None:
    for name in CI_PAGES:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    for name in ("drone.md", "woodpecker.md", "github-actions.md", "gitlab-ci.md", "migration.md"):
        assert [b for b in BLOCKS if b.page.name == name], f"docs/{name} has no runnable example"
    by_ci = {block.ci for block in BLOCKS}
    assert {"drone", "woodpecker", "github", "gitlab", "sh"} <= by_ci
    assert len([b for b in BLOCKS if b.page.name == "README.md"]) >= 6
    for page in PAGES:  # an example in a fence the test would not run is an example nobody checks
        for lang in re.findall(r"^```(\w+)", page.read_text(), re.M):
            assert lang in ("yaml", "sh", "text", "json"), f"{page.name}: a ```{lang} block is neither run nor text"


def test_migration_tables_map_every_setting(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    """Each peer's table in migration.md is the peer's table in dialects.py, row for row: every setting of the peer,
    the sshipit setting it becomes, and what differs. A peer setting that is not an sshipit setting is known to the
    dialects (accepted or refused there), never the generic "unknown setting"."""
    from sshipit.dialects import PEERS
    from sshipit.settings import lookup

    text = (DOCS / "migration.md").read_text()
    header = r"^\| ([a-z-]+) \| sshipit \| same, or what differs \|\n\|---\|---\|---\|\n"
    tables = re.findall(header + r"((?:\|.*\|\n)+)", text, re.M)
    assert {peer for peer, _ in tables} == set(PEERS) and len(tables) == len(PEERS), [p for p, _ in tables]
    accepted: list[str] = []
    for peer, body in tables:
        rows = re.findall(r"^\| `([a-z_]+)` \| (`[a-z_]+`|none) \| (.+?) \|$", body, re.M)
        assert len(rows) == len(body.splitlines()), f"{peer}: a row is not `name` | `ours` or none | text"
        assert [name for name, _, _ in rows] == list(PEERS[peer]), f"{peer}: the table differs from dialects.py"
        for name, ours, differs in rows:
            rule = PEERS[peer][name]
            assert ours == (f"`{rule.ours}`" if rule.ours else "none"), (peer, name)
            assert differs == (rule.differs or "same"), (peer, name)
            if rule.ours and lookup(rule.ours) is None:
                raise AssertionError(f"{peer}: {name} -> {rule.ours}: no such sshipit setting")
            if lookup(name) is None and rule.differs.startswith("accepted") and peer != "drone-rsync":
                accepted.append(name)
    assert accepted
    # The accepted ones, all at once: a valid plan, no "unknown setting" (drone-rsync's: test_peer_drone_rsync).
    env = {f"PLUGIN_{name.upper()}": "true" for name in set(accepted)}
    env |= {"PLUGIN_HOST": "127.0.0.1:1", "PLUGIN_KEY_PATH": str(keys["ed25519"].private_path),
            "PLUGIN_SCRIPT": "true", "PLUGIN_RETRIES": "0"}
    result = subprocess.run([sys.executable, "-m", "sshipit"], env=clean_env(tmp_path, env), capture_output=True,
                            text=True, timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 1 and "connection refused" in result.stderr, result.stderr
    assert "unknown setting" not in result.stderr, result.stderr


def test_the_card_sample_in_drone_md_has_the_card_fields() -> None:
    from sshipit.ci_report import CARD_SCHEMA, card_data

    sample = re.search(r"```json\n(.*?)```", (DOCS / "drone.md").read_text(), re.S)
    assert sample
    card = json.loads(sample.group(1))
    assert card["schema"] == CARD_SCHEMA
    real = card_data([], None, {}, 1.0, 0)
    assert set(card["data"]) <= set(real), set(card["data"]) - set(real)
    assert CARD_SCHEMA.endswith("/docs/card.json") and json.loads((DOCS / "card.json").read_text())


def test_the_encoders_follow_each_ci() -> None:
    """The encodings this module runs the examples with, on the cases the CIs' own code documents."""
    drone = yaml.safe_load("""
list: ["a,b", c]
holes: [a, null, b]
maps: [{name: john}]
map: {foo: bar}
one: 1.0
million: 1000000.0
small: 0.00001
yes_: yes
octal: 0755
hex: 0x1F
block: |
  line1
  line2
empty: ""
none: []
secret: {from_secret: deploy_key}
""")
    env = drone_env(drone, {"deploy_key": "KEY"})
    assert env == {"PLUGIN_LIST": "a,b,c", "PLUGIN_HOLES": "a,,b", "PLUGIN_MAPS": '[{"name":"john"}]',
                   "PLUGIN_MAP": '{"foo":"bar"}', "PLUGIN_ONE": "1", "PLUGIN_MILLION": "1e+06",
                   "PLUGIN_SMALL": "1e-05", "PLUGIN_YES_": "true", "PLUGIN_OCTAL": "493", "PLUGIN_HEX": "31",
                   "PLUGIN_BLOCK": "line1\nline2\n", "PLUGIN_SECRET": "KEY"}  # empty values dropped
    assert drone_env({"dash-key": "x", "dot.key": "y"}, {}) == {"PLUGIN_DASH-KEY": "x", "PLUGIN_DOT.KEY": "y"}
    assert drone_substitute("${DRONE_BRANCH} ${UNDEFINED} $$HOME $word", DRONE) == "main  $HOME $word"

    woodpecker = woodpecker_yaml("""
dry-run: yes
dry.run2: on
list: [a, ~]
empty: []
nested: [{from_secret: deploy_key}, b]
""")
    env = woodpecker_env(woodpecker, {"deploy_key": "KEY"})
    assert env == {"PLUGIN_DRY_RUN": "yes", "PLUGIN_DRY_RUN2": "on", "PLUGIN_LIST": "a,", "PLUGIN_EMPTY": "",
                   "PLUGIN_NESTED": "KEY,b"}

    step = {"with": {"host": "web1", "rm": True, "strip_components": 1, "key": "${{ secrets.DEPLOY_KEY }}"}}
    env = github_env(step, {"DEPLOY_KEY": "KEY"})
    assert {k: env[k] for k in ("INPUT_HOST", "INPUT_RM", "INPUT_STRIP_COMPONENTS", "INPUT_KEY")} == \
        {"INPUT_HOST": "web1", "INPUT_RM": "true", "INPUT_STRIP_COMPONENTS": "1", "INPUT_KEY": "KEY"}
    assert env["INPUT_PORT"] == "22"  # action.yml's defaults are passed too
    with pytest.raises(AssertionError, match=r"not declared in action\.yml"):
        github_env({"with": {"num-octocats": "2"}}, {})

