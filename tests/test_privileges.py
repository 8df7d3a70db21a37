"""Deploying as another user: `sudo` (with and without a password), `owner` and `chmod`, on real servers.

Three logins, made once as root (the tests run as root, as CI does): `sshipit-sudo` may sudo without a password
(a file in /etc/sudoers.d/ that this module writes and removes), `sshipit-sudopw` may sudo with its password (set
with chpasswd), and the suite's `sshipit-test` may not sudo at all. Targets are below a directory owned by root, so
a deploy that lands there went through sudo. Files land owned by www-data, modes as asked, on the tar and the SFTP
paths; a wrong, missing or unneeded password, a server without sudo and an SFTP-only account each give one clear
line and change nothing. While the password deploys run, every process's argv and environment on this machine
(the server's too: it is this machine) is sampled and must never hold the password.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunSshipit
from helpers import one_error, plugin_env, rmtree, start_server
from sshipit.errors import SettingsError
from sshipit.localserver import KeyPair, LocalServer, ensure_user
from sshipit.privilege import apply_chmod, parse_chmod, parse_owner

SUDO_USER = "sshipit-sudo"
SUDOPW_USER = "sshipit-sudopw"
PASSWORD = "sudo-Secret-4-tests"  # distinctive: searched for in every process's argv and in all output
SUDOERS = Path(f"/etc/sudoers.d/sshipit-tests-{os.getpid()}")  # its own: other runs go on at once
WWW = pwd.getpwnam("www-data")
ROOT_MANIFESTS = Path(pwd.getpwnam("root").pw_dir) / ".cache" / "sshipit" / "manifests"


def _sudo_installed() -> str:
    for path in ("/usr/bin/sudo", "/bin/sudo"):
        if os.access(path, os.X_OK):
            return path
    pytest.fail("sudo is not installed (scripts/install test installs it: apt-get install -y sudo)")


@pytest.fixture(scope="module")
def sudoers() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("these tests make logins and a sudoers file: run them as root, as CI does")
    _sudo_installed()
    ensure_user(SUDO_USER)
    ensure_user(SUDOPW_USER)
    text = (f"{SUDO_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n{SUDOPW_USER} ALL=(ALL:ALL) ALL\n"
            f"Defaults:{SUDOPW_USER} lecture=never\n")
    SUDOERS.write_text(text)
    SUDOERS.chmod(0o440)
    checked = subprocess.run(["visudo", "-cf", str(SUDOERS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    before = set(ROOT_MANIFESTS.glob("*")) if ROOT_MANIFESTS.is_dir() else set()
    yield
    SUDOERS.unlink(missing_ok=True)
    for path in set(ROOT_MANIFESTS.glob("*")) - before if ROOT_MANIFESTS.is_dir() else ():
        path.unlink()  # what these deploys stored in root's home (where manifests go under sudo)


@pytest.fixture(scope="module")
def sudo_server(sudoers: None, server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    srv = start_server(server_root / "sudo", keys, user=SUDO_USER)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sudopw_server(sudoers: None, server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    srv = start_server(server_root / "sudopw", keys, user=SUDOPW_USER)
    srv.set_password(PASSWORD)
    yield srv
    srv.stop()


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory owned by root (0755): only root can create anything in it."""
    path = Path(tempfile.mkdtemp(prefix="sshipit-priv-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    rmtree(path)


def build(workspace: Path) -> None:
    (workspace / "dist" / "css").mkdir(parents=True)
    (workspace / "dist" / "index.html").write_text("<h1>hi</h1>\n")
    (workspace / "dist" / "css" / "site.css").write_text("body{}\n")
    (workspace / "dist" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (workspace / "dist" / "index.html").chmod(0o600)
    (workspace / "dist" / "run.sh").chmod(0o700)
    (workspace / "dist" / "css").chmod(0o700)


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (uid, gid, mode) of everything below root."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))
    return found


class ArgvWatch:
    """Samples every process's argv and environment on this machine (the server's processes too) until stopped;
    remembers any holding the password, except sshipit's own environment, where the CI put it."""

    def __init__(self, needle: str) -> None:
        self.needle = needle.encode()
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{entry.name}/{what}").read_bytes()
                    except OSError:
                        continue
                    # sshipit itself was given it as PLUGIN_SUDO_PASSWORD: anywhere else is a leak
                    if self.needle in data.replace(b"PLUGIN_SUDO_PASSWORD=" + self.needle, b""):
                        self.hits.append(f"pid {entry.name} {what}: {data[:200]!r}")
            self.samples += 1
            self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------- passwordless sudo


def test_sudo_lands_owned_by_another_user_with_modes_and_redeploys_nothing(
    sudo_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    target = root_dir / "site"
    env = plugin_env(sudo_server, keys["ed25519"], sources="dist/**", strip_components=1, target=str(target),
                     become="true", owner="www-data:www-data", chmod="Du=rwx,go=rx,F644",
                     commands=json.dumps(["id -u", "id -un"]))
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "$ id -u\n0\n$ id -un\nroot\n" in result.stdout, result  # the commands ran as root
    found = tree(target)
    assert set(found) == {"index.html", "css", "css/site.css", "run.sh"}, found
    for path, (uid, gid, mode) in found.items():
        assert (uid, gid) == (WWW.pw_uid, WWW.pw_gid), (path, found)
        assert mode == (0o755 if (target / path).is_dir() else 0o644), (path, oct(mode))
    assert (target / "index.html").read_text() == "<h1>hi</h1>\n"
    assert root_dir.stat().st_uid == 0  # the login cannot write there: what landed came through sudo

    again = run_sshipit(env=env)
    assert again.returncode == 0, again
    assert "uploaded 0 files" in again.stdout, again  # same chmod, same owner: nothing to send
    assert "4 unchanged files" in again.stdout or "3 unchanged files" in again.stdout, again
    assert tree(target) == found

    # The manifest went to the sudo user's home: nothing of root's was left in the login's home.
    assert [p for p in sudo_server.home.rglob("*") if p.lstat().st_uid == 0] == []
    assert any(ROOT_MANIFESTS.glob("*.json"))
    # Another owner: every file must get it, unchanged content or not.
    changed = run_sshipit(env={**env, "PLUGIN_OWNER": "root:root", "PLUGIN_COMMANDS": "true"})
    assert changed.returncode == 0, changed
    assert {(uid, gid) for uid, gid, _ in tree(target).values()} == {(0, 0)}, tree(target)


def test_sudo_atomic_release_switches_links_and_runs_as_root(
    sudo_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    target = root_dir / "app"
    env = plugin_env(sudo_server, keys["ed25519"], sources="dist/**", strip_components=1, target=str(target),
                     sudo="true", owner="www-data", chmod="D755,F640", atomic="true", shared="storage/",
                     commands="id -u > ran-as", post_commands="id -u")
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    current = target / "current"
    assert current.is_symlink(), tree(target)
    assert current.lstat().st_uid == 0  # the switch ran as root
    assert (current / "ran-as").read_text().strip() == "0"
    assert (current / "storage").is_symlink()
    assert (target / "shared" / "storage").stat().st_uid == WWW.pw_uid  # made by sshipit: the app's to write
    assert (current / "index.html").stat().st_uid == WWW.pw_uid
    assert stat.S_IMODE((current / "index.html").stat().st_mode) == 0o640
    assert stat.S_IMODE((current / "css").stat().st_mode) == 0o755
    assert "$ id -u\n0\npost_commands: ran 1 command" in result.stdout, result  # post_commands as root too


# ---------------------------------------------------------------------------------------------- sudo with a password


def test_sudo_password_is_fed_on_stdin_never_in_argv_or_output(
    sudopw_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    # Big enough that the stream takes a while: the tar stream follows the password on the same stdin.
    (workspace / "dist" / "big.bin").write_bytes(os.urandom(8 << 20))
    target = root_dir / "pw"
    env = plugin_env(sudopw_server, keys["ed25519"], sources="dist/**", strip_components=1, target=str(target),
                     sudo="true", sudo_password=PASSWORD, compress="none",
                     commands=json.dumps(["id -u", "cat big.bin | wc -c"]))
    watch = ArgvWatch(PASSWORD)
    try:
        result = run_sshipit(env=env)
    finally:
        watch.stop()
    assert result.returncode == 0, result
    assert watch.samples > 3, watch.samples
    assert watch.hits == [], watch.hits
    assert PASSWORD not in result.output
    assert (target / "big.bin").read_bytes() == (workspace / "dist" / "big.bin").read_bytes()
    assert (target / "big.bin").stat().st_uid == 0
    assert str(8 << 20) in result.stdout, result
    assert "$ id -u\n0\n" in result.stdout, result


def test_sudo_password_atomic_release_with_its_lock_and_switch(
    sudopw_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """Every exec of a release (the lock holder, state, create, switch, prune) takes the password line first."""
    build(workspace)
    target = root_dir / "rel"
    env = plugin_env(sudopw_server, keys["ed25519"], sources="dist/**", strip_components=1, target=str(target),
                     sudo="true", sudo_password=PASSWORD, atomic="true", keep_releases=1, commands="id -u")
    for _ in range(3):
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "$ id -u\n0\n" in result.stdout and PASSWORD not in result.output, result
    assert (target / "current").is_symlink() and (target / "current").lstat().st_uid == 0
    assert len(list((target / "releases").iterdir())) == 2  # the first pruned, as root (the previous is kept)
    assert (target / "current" / "index.html").read_text() == "<h1>hi</h1>\n"


def test_sudo_password_in_a_terminal_is_not_echoed(
    sudopw_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    env = plugin_env(sudopw_server, keys["ed25519"], target=str(root_dir / "t"), sudo="true",
                     sudo_password=PASSWORD, request_pty="true",
                     commands=json.dumps(["id -u", "tty >/dev/null && echo tty"]))
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert PASSWORD not in result.output and "********" not in result.output, result
    assert any(line.rstrip().endswith("tty") for line in result.stdout.splitlines()), result
    assert (root_dir / "t").stat().st_uid == 0


def test_wrong_sudo_password_is_one_line_and_changes_nothing(
    sudopw_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    target = root_dir / "wrong"
    env = plugin_env(sudopw_server, keys["ed25519"], sources="dist/**", target=str(target), sudo="true",
                     sudo_password="not-" + PASSWORD, commands="touch /var/tmp/sshipit-priv-must-not-run")
    result = run_sshipit(env=env)
    one_error(result, result.returncode, "sudo_password")
    assert result.returncode != 0
    assert PASSWORD not in result.output
    assert not target.exists() and not Path("/var/tmp/sshipit-priv-must-not-run").exists()
    assert list(root_dir.iterdir()) == []

    missing = run_sshipit(env={**env, "PLUGIN_SUDO_PASSWORD": ""})
    line = one_error(missing, missing.returncode, "sudo_password", "password")
    assert missing.returncode != 0 and "NOPASSWD" in missing.output, line
    assert list(root_dir.iterdir()) == []


def test_unneeded_sudo_password_is_said_and_not_sent(
    sudo_server: LocalServer, keys: dict[str, KeyPair], root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    env = plugin_env(sudo_server, keys["ed25519"], target=str(root_dir / "x"), become="true",
                     become_password=PASSWORD, commands="cat")  # a password line sent by mistake would show here
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "sudo_password is not used" in result.output, result
    assert PASSWORD not in result.output and "********" not in result.output, result


# ---------------------------------------------------------------------------------------------- refusals


def test_rm_under_sudo_still_refuses_the_logins_home_through_a_link(
    sudo_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    """Under sudo, HOME is root's: the guard must still know the login's home, however the target reaches it."""
    build(workspace)
    keep = sudo_server.home / "keep-me"
    keep.write_text("mine\n")
    link = root_dir / "home-link"
    link.symlink_to(sudo_server.home)
    env = plugin_env(sudo_server, keys["ed25519"], sources="dist/**", target=str(link), sudo="true", rm="true")
    result = run_sshipit(env=env)
    one_error(result, result.returncode, "the login's home", "target")
    assert keep.read_text() == "mine\n"
    keep.unlink()



def test_login_without_sudo_rights_is_one_line_and_changes_nothing(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(server, keys["ed25519"], sources="dist/**", target=str(root_dir / "n"), sudo="true")
    result = run_sshipit(env=env)
    one_error(result, result.returncode, "sudo", "nothing was uploaded")
    assert result.returncode != 0
    with_password = run_sshipit(env={**env, "PLUGIN_SUDO_PASSWORD": PASSWORD})
    one_error(with_password, with_password.returncode, "sudo_password", "did not accept")
    assert PASSWORD not in with_password.output
    assert list(root_dir.iterdir()) == []


def test_server_without_sudo_is_one_line(
    bare_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(bare_server, keys["ed25519"], sources="dist/**", target=str(root_dir / "b"), sudo="true")
    result = run_sshipit(env=env)
    one_error(result, result.returncode, "sudo is not installed", "sudo")
    assert list(root_dir.iterdir()) == []


def test_sftp_only_account_refuses_sudo(
    sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(sftp_only_server, keys["ed25519"], sources="dist/**", target=str(remote_dir), sudo="true")
    result = run_sshipit(env=env)
    one_error(result, result.returncode, "SFTP only", "sudo")
    assert list(remote_dir.iterdir()) == []


def test_owner_without_sudo_needs_root(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(server, keys["ed25519"], sources="dist/**", target=str(remote_dir / "o"), owner="www-data")
    result = run_sshipit(env=env)
    one_error(result, result.returncode, "owner", "root")
    assert list(remote_dir.iterdir()) == []


def test_owner_over_sftp_needs_numeric_ids_and_root(
    sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(sftp_only_server, keys["ed25519"], sources="dist/**", target=str(remote_dir), owner="www-data")
    named = run_sshipit(env=env)
    one_error(named, named.returncode, "owner", "numeric")
    numeric = run_sshipit(env={**env, "PLUGIN_OWNER": f"{WWW.pw_uid}:{WWW.pw_gid}"})
    one_error(numeric, numeric.returncode, "permission denied")  # the login is not root: refused in the staging
    assert list(remote_dir.iterdir()) == []


def test_chmod_on_the_sftp_path(
    sftp_only_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path,
    run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(sftp_only_server, keys["ed25519"], sources="dist/**", strip_components=1,
                     target=str(remote_dir), chmod="Dgo=rx,u=rwx,Fgo=r,Fu-x")
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    modes = {path: mode for path, (_uid, _gid, mode) in tree(remote_dir).items()}
    assert modes == {"index.html": 0o600 | 0o044, "css": 0o755, "css/site.css": 0o644, "run.sh": 0o644}, modes


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("chmod", "D8,F644", "chmod"), ("chmod", "Dq+r", "chmod"), ("owner", "www data", "owner"),
    ("owner", "-r:x", "owner"), ("sudo_user", "root;id", "sudo_user"), ("sudo_password", "x", "sudo"),
])
def test_bad_settings_are_one_line(
    server: LocalServer, keys: dict[str, KeyPair], workspace: Path, run_sshipit: RunSshipit, name: str, value: str,
    needle: str,
) -> None:
    result = run_sshipit(env=plugin_env(server, keys["ed25519"], commands="true", **{name: value}))
    one_error(result, result.returncode, needle)
    assert result.returncode != 0


def test_plan_shows_sudo_owner_and_chmod(
    sudo_server: LocalServer, keys: dict[str, KeyPair], workspace: Path, root_dir: Path, run_sshipit: RunSshipit,
) -> None:
    build(workspace)
    env = plugin_env(sudo_server, keys["ed25519"], sources="dist/**", target=str(root_dir / "p"), sudo="true",
                     sudo_user="www-data", owner="www-data:www-data", chmod="D755,F644")
    result = run_sshipit("plan", env=env)
    assert result.returncode == 0, result
    assert "as www-data through sudo" in result.output, result
    assert "owned by www-data:www-data" in result.output and "D755,F644" in result.output, result
    assert list(root_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- chmod, pure


def test_parse_owner_forms() -> None:
    assert parse_owner("www-data:www-data") == "www-data:www-data"
    assert parse_owner(":33") == ":33" and parse_owner("deploy") == "deploy"
    for bad in ("", ":", "a:b:c", "$(id)", "a b"):
        with pytest.raises(SettingsError):
            parse_owner(bad)


_WHO = st.text(alphabet="ugoa", max_size=2)
_ACTION = st.tuples(st.sampled_from("+-="), st.text(alphabet="rwxX", max_size=3)).map("".join)
_SYMBOLIC = st.tuples(_WHO, st.lists(_ACTION, min_size=1, max_size=2).map("".join)).map("".join)
_OCTAL = st.integers(0, 0o777).map(lambda mode: f"{mode:o}")
_CLAUSES = st.lists(st.one_of(_SYMBOLIC, _OCTAL), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(clauses=_CLAUSES, start=st.integers(0, 0o777), is_dir=st.booleans())
def test_apply_chmod_matches_the_chmod_command(clauses: list[str], start: int, is_dir: bool) -> None:
    """Each clause, applied as chmod(1) applies it (umask 0) to a real file or directory, gives our mode."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "p"
        if is_dir:
            path.mkdir()
        else:
            path.write_bytes(b"")
        os.chmod(path, start)
        for clause in clauses:
            subprocess.run(["sh", "-c", 'umask 0; exec chmod -- "$0" "$1"', clause, str(path)], check=True)
        real = stat.S_IMODE(path.stat().st_mode)
        os.chmod(path, 0o700)
    ours = apply_chmod(parse_chmod(",".join(clauses)), start, is_dir)
    assert ours == real, (clauses, oct(start), is_dir, oct(ours), oct(real))


@given(clauses=_CLAUSES, start=st.integers(0, 0o7777))
def test_chmod_d_and_f_prefixes_apply_to_their_kind_only(clauses: list[str], start: int) -> None:
    parts = parse_chmod(",".join("D" + clause for clause in clauses))
    assert apply_chmod(parts, start, is_dir=False) == start
    parts = parse_chmod(",".join("F" + clause for clause in clauses))
    assert apply_chmod(parts, start, is_dir=True) == start


@given(text=st.text(alphabet="DFugoa+-=rwxXst01789, ;$", max_size=12))
def test_parse_chmod_says_what_is_wrong_or_gives_parts(text: str) -> None:
    """Any text is either a mode (parts that apply to any start mode) or one SettingsError naming chmod."""
    try:
        parts = parse_chmod(text)
    except SettingsError as exc:
        assert exc.setting == "chmod"
        return
    assert parts
    for start in (0, 0o644, 0o7777):
        assert 0 <= apply_chmod(parts, start, is_dir=True) <= 0o7777
