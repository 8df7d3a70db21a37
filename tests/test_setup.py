"""The README's first command on a fresh Debian machine: a clean root with nothing but git, ca-certificates and
python3 (made with debootstrap, as scripts/docker-engine.sh makes the image's base), the repository cloned with
git as a newcomer would, then `scripts/demo`. It must exit 0 with the demo's files on its server, with only
sshipit and OpenSSH installed (no test extras, no benchmark tools), and remove the system user it made. Then the
README's other way, `pipx install .` (Debian's pipx), must give a working ~/.local/bin/sshipit.

How the root is run: in its own mount and PID namespaces (`unshare`), with /proc, /dev and the host's DNS,
apt's network settings (`Acquire::*`: proxy, snapshot validity) and the host's extra CA certificates (the ones
this machine trusts beyond Debian's bundle, needed to reach the package registries here). As in Debian's
container images, /usr/sbin/policy-rc.d keeps package scripts from starting services (openssh-server's postinst
would otherwise start an sshd on port 22 of this machine). Every process in the root ends with its namespace.

Cache: the debootstrapped root is kept as a tarball in SSHIPIT_ROOT_CACHE (default /var/cache/sshipit-test),
made once per machine (about 45 s; `rm` it to remake). Nothing else is cached: apt and pip fetch what a newcomer's
machine would. Clone: the repository's HEAD, cloned inside the root with the root's own git; uncommitted changes
of the working tree (tracked and untracked, not ignored) are copied over the clone so that a developer tests what
they have (CI's fresh clone has none).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshipit.localserver import DEFAULT_ROOT_USER

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SSHIPIT_ROOT_CACHE", "/var/cache/sshipit-test"))
INCLUDE = "git,ca-certificates,python3"  # what the newcomer had
SUITES = ("bookworm", "trixie")  # Debian 12 and 13
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEMO_TIMEOUT = 900  # seconds: apt-get and pip from the registries, on a loaded CI machine


def _run(argv: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              check=False, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv[:6])} ... did not finish in {timeout}s:\n{exc.stdout}\n{exc.stderr}")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_tarball(suite: str) -> Path:
    """The cached clean root of `suite`: debootstrap minbase with only git, ca-certificates and python3."""
    tarball = CACHE / f"{suite}-minbase-git-ca-python3.tar"
    with _locked(CACHE / ".lock"):
        if tarball.is_file():
            return tarball
        if shutil.which("debootstrap") is None:
            pytest.fail("debootstrap is missing: `scripts/install --test` installs it (apt-get install debootstrap)")
        mirror = _run(["bash", str(REPO / "scripts/debian-mirror.sh")], 30).stdout.strip()
        root = Path(tempfile.mkdtemp(prefix=f"sshipit-{suite}-", dir="/var/tmp"))
        root.chmod(0o755)  # the root directory of a machine: mkdtemp's 0700 would lock out every other user
        try:
            started = time.monotonic()
            made = _run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", suite, str(root), mirror], 1200)
            log = _tail(made.stdout + made.stderr)
            assert made.returncode == 0, f"debootstrap {suite} from {mirror} failed:\n{log}"
            _run(["chroot", str(root), "apt-get", "clean"], 120)
            for lists in (root / "var/lib/apt/lists").glob("*_*"):
                lists.unlink()
            partial = tarball.with_suffix(".partial")
            packed = _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], 600)
            assert packed.returncode == 0, packed.stderr
            partial.rename(tarball)
            print(f"test_setup: made the clean {suite} root in {time.monotonic() - started:.0f} s: {tarball}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return tarball


def _extra_ca_certificates() -> list[str]:
    """PEM certificates the host trusts beyond Debian's own bundle (its local CA directory)."""
    found: list[str] = []
    local = Path("/usr/local/share/ca-certificates")
    for path in sorted(local.rglob("*.crt")) if local.is_dir() else []:
        found += re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", path.read_text(), re.S)
    return found


def prepare_root(tarball: Path, root: Path) -> None:
    """Unpack the clean root and give it this machine's network settings (nothing that the newcomer installs)."""
    unpacked = _run(["tar", "--numeric-owner", "-C", str(root), "-xf", str(tarball)], 600)
    assert unpacked.returncode == 0, unpacked.stderr
    root.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    conf = root / "etc/apt/apt.conf.d"
    for path in sorted(Path("/etc/apt/apt.conf.d").iterdir()):
        if path.is_file() and "Acquire::" in path.read_text(errors="replace") and not (conf / path.name).exists():
            shutil.copyfile(path, conf / path.name)
    for n, cert in enumerate(_extra_ca_certificates()):
        (root / f"usr/local/share/ca-certificates/host-{n}.crt").write_text(cert + "\n")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# as in Debian's container images: package scripts start no service\nexit 101\n")
    policy.chmod(0o755)
    if _extra_ca_certificates():
        done = in_root(root, "update-ca-certificates >/dev/null", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def in_root(root: Path, script: str, *, timeout: float, origin: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `script` with bash as root inside `root`, in fresh mount and PID namespaces, with a clean environment."""
    mounts = [
        f'mount -t proc proc "{root}/proc"',
        f'mount --rbind /dev "{root}/dev"',
        f'mount -t tmpfs -o mode=0755 tmpfs "{root}/run"',
    ]
    if origin is not None:
        mounts += [f'mkdir -p "{root}/mnt/origin"', f'mount --bind "{origin}" "{root}/mnt/origin"',
                   f'mount -o remount,bind,ro "{root}/mnt/origin"']
    setup = " && ".join(mounts)
    env = ["env", "-i", "HOME=/root", f"PATH={CHROOT_PATH}", "LANG=C.UTF-8", "TERM=dumb"]
    argv = ["unshare", "--fork", "--pid", "--mount", "--propagation", "private", "bash", "-c",
            f'{setup} && exec chroot "$0" "$@"', str(root), *env, "bash", "-c", script]
    return _run(argv, timeout)


def overlay_worktree(clone: Path) -> int:
    """Copy the working tree's uncommitted changes (tracked and untracked, not ignored) over the clone."""
    changed = _run(["git", "-C", str(REPO), "status", "--porcelain", "-z", "--untracked-files=all"], 60)
    assert changed.returncode == 0, changed.stderr
    entries = [e for e in changed.stdout.split("\0") if e]
    count = 0
    skip = False
    for entry in entries:
        if skip:  # the source path of a rename
            skip = False
            continue
        status, name = entry[:2], entry[3:]
        skip = "R" in status or "C" in status
        source, dest = REPO / name, clone / name
        if source.is_file() or source.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest, follow_symlinks=False)
        elif not source.exists() and dest.exists():
            dest.unlink()
        count += 1
    return count


@pytest.mark.parametrize("suite", SUITES)
def test_readme_demo_on_a_clean_debian_root(suite: str, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the clean-root test needs root (debootstrap, chroot, namespaces), as CI has"
    tarball = base_tarball(suite)
    root = Path(tempfile.mkdtemp(prefix=f"sshipit-root-{suite}-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        started = time.monotonic()
        prepare_root(tarball, root)
        # Nothing but the three packages: no pip, no venv, no OpenSSH.
        bare = in_root(root, "python3 -c 'import ensurepip' 2>/dev/null; echo ensurepip=$?; "
                             "command -v sshd pip3 >/dev/null; echo tools=$?; git --version", timeout=60)
        assert "ensurepip=1" in bare.stdout and "tools=1" in bare.stdout and "git version" in bare.stdout, bare

        cloned = in_root(root, "cd /root && git clone -q /mnt/origin sshipit && git -C sshipit log -1 --format=%h",
                         timeout=300, origin=REPO)
        assert cloned.returncode == 0, f"git clone failed:\n{cloned.stdout}{cloned.stderr}"
        overlaid = overlay_worktree(root / "root/sshipit")

        # The README's command, as the newcomer types it.
        demo = in_root(root, "cd /root/sshipit && scripts/demo", timeout=DEMO_TIMEOUT)
        seconds = time.monotonic() - started
        output = demo.stdout + demo.stderr
        print(f"test_setup: {suite}: clone + scripts/demo in {seconds:.0f} s (uncommitted files overlaid: {overlaid})")
        assert demo.returncode == 0, f"scripts/demo exited {demo.returncode} on a clean {suite} root:\n{_tail(output)}"
        assert "Traceback" not in output, output
        # The demo's files, listed from its server after the deploy: the site without the source map.
        landed = output.split("now holds", 1)[-1]
        assert re.search(r"^\s+index\.html$", landed, re.M), output
        assert re.search(r"^\s+assets/app\.js$", landed, re.M), output
        assert not re.search(r"app\.js\.map$", landed, re.M), output
        # Named in the output, and removed: the system user the throwaway sshd logged in as.
        assert DEFAULT_ROOT_USER in demo.stdout, output
        assert f"removed the system user {DEFAULT_ROOT_USER}" in demo.stdout, output
        passwd = (root / "etc/passwd").read_text()
        assert not re.search(rf"^{DEFAULT_ROOT_USER}:", passwd, re.M), f"{DEFAULT_ROOT_USER} left in /etc/passwd"
        assert not (root / "home" / DEFAULT_ROOT_USER).exists()

        # Where sshipit landed, and nothing beyond sshipit and OpenSSH.
        after = in_root(root, "cd /root/sshipit && .venv/bin/sshipit --help >/dev/null && echo help=ok; "
                              ".venv/bin/python -c 'import pytest' 2>/dev/null; echo pytest=$?; "
                              "for p in iptables iproute2 busybox rsync chromium; do "
                              "dpkg-query -W -f='${Status}\\n' $p 2>/dev/null | grep -q '^install ok' && echo has=$p; "
                              "done; true", timeout=120)
        assert "help=ok" in after.stdout, after
        assert "pytest=1" in after.stdout, f"the demo installed the test extras:\n{after.stdout}"
        assert "has=" not in after.stdout, f"the demo installed more than sshipit and OpenSSH:\n{after.stdout}"

        # The README's way for users who only want the command: pipx, from Debian.
        pipx = in_root(root, "export DEBIAN_FRONTEND=noninteractive; "
                             "apt-get install -y -qq --no-install-recommends pipx >/dev/null && cd /root/sshipit && "
                             "pipx install . >/dev/null && ~/.local/bin/sshipit --version", timeout=600)
        log = _tail(pipx.stdout + pipx.stderr)
        assert pipx.returncode == 0 and "sshipit" in pipx.stdout, f"pipx install . failed:\n{log}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _alive(token: str) -> list[int]:
    """Pids whose command line holds `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def test_the_test_command_stops_what_it_started_even_when_it_fails(tmp_path: Path) -> None:
    """scripts/test on a failing test that leaves two processes behind, one detached (setsid) and one orphaned
    (double fork): both are named and stopped at exit, and the failure still fails the command."""
    token = f"{os.getpid()}{time.monotonic_ns() % 10**6}"  # digits: sleep takes 3000.<token> as seconds
    inner = tmp_path / "test_leaves_processes.py"
    inner.write_text(
        "import subprocess\n"
        "def test_leaves_processes_and_fails():\n"
        f"    subprocess.Popen(['sleep', '3000.{token}'], start_new_session=True)\n"
        f"    subprocess.run(['sh', '-c', 'sleep 3001.{token} </dev/null >/dev/null 2>&1 &'], check=True)\n"
        "    assert False, 'this test fails on purpose'\n"
    )
    try:
        run = _run(["bash", str(REPO / "scripts/test"), str(inner)], 900, cwd=REPO)
        output = run.stdout + run.stderr
        assert run.returncode == 1, f"scripts/test should fail with the failing test:\n{_tail(output)}"
        assert "this test fails on purpose" in output, _tail(output)
        assert "stopping what this run left running: sleep x2" in run.stdout, _tail(output)
        assert _alive(token) == [], f"left running after scripts/test: {_alive(token)}"
    finally:
        for pid in _alive(token):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
