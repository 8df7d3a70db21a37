"""Fixtures: client keys, real throwaway OpenSSH servers, a CI workspace and a clean `sshipit` runner."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import Result, plugin_env, rmtree, server_bin_dir, ssh, start_server
from helpers import run_sshipit as _run_sshipit
from sshipit.localserver import KeyPair, LocalServer, default_login_user, generate_key

__all__ = ["plugin_env"]

# name -> (kind, traditional PEM format?, passphrase)
KEY_SPECS: dict[str, tuple[str, bool, str | None]] = {
    "rsa_pem": ("rsa", True, None),
    "rsa_openssh": ("rsa", False, None),
    "ecdsa": ("ecdsa", False, None),
    "ecdsa_pem": ("ecdsa", True, None),
    "ed25519": ("ed25519", False, None),
    "ed25519_pass": ("ed25519", False, "correct horse battery staple"),
    "rsa_pem_pass": ("rsa", True, "pem-passphrase"),
    "ecdsa_pass": ("ecdsa", False, "ecdsa passphrase"),
}

RunSshipit = Callable[..., Result]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """Client key pairs by name: every format and encryption the tool has to read."""
    directory = tmp_path_factory.mktemp("keys")
    return {
        name: generate_key(directory, kind, passphrase=passphrase, pem=pem, name=name)
        for name, (kind, pem, passphrase) in KEY_SPECS.items()
    }


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    """Where the session's servers keep their files: outside pytest's 0700 basetemp, since sshd
    reads authorized_keys as the (unprivileged) login user."""
    root = Path(tempfile.mkdtemp(prefix="sshipit-servers-"))
    root.chmod(0o711)
    yield root
    rmtree(root)


@pytest.fixture(scope="session")
def server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """A real sshd on 127.0.0.1 that accepts every key of `keys`."""
    srv = start_server(server_root / "main", keys)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def sftp_only_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd that serves SFTP only: any command runs internal-sftp instead."""
    srv = start_server(server_root / "sftp-only", keys, "ForceCommand internal-sftp\n")
    yield srv
    srv.stop()


def busybox_config(bin_dir: Path) -> str:
    """sshd_config lines that make `tar` in remote commands BusyBox's tar (bin_dir holds the link)."""
    return f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin\n"


def _busybox(fixture: str) -> str:
    busybox = shutil.which("busybox") or next(
        (p for p in ("/bin/busybox", "/usr/bin/busybox") if os.access(p, os.X_OK)), None
    )
    if busybox is None:
        pytest.fail(f"busybox is not installed (apt-get install -y busybox): {fixture} needs it")
    return busybox


@pytest.fixture(scope="session")
def busybox_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd whose remote commands find BusyBox's tar first on PATH."""
    workdir = server_root / "busybox"
    bin_dir = server_bin_dir(workdir / "busybox-bin")
    (bin_dir / "tar").symlink_to(_busybox("busybox_server"))
    srv = start_server(workdir, keys, busybox_config(bin_dir))
    try:
        result = ssh(srv, keys["ed25519"], "command -v tar; tar --help 2>&1", workdir / "known_hosts")
        if not result.stdout.startswith(f"{bin_dir}/tar\n") or "BusyBox" not in result.stdout:
            pytest.fail(
                "busybox_server: `tar` in a remote command is not BusyBox's tar\n"
                f"exit code {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def bare_server(server_root: Path, keys: dict[str, KeyPair]) -> Iterator[LocalServer]:
    """An sshd whose remote commands find only BusyBox's basic tools: tar, find, cp... but no gzip, no zstd."""
    busybox = _busybox("bare_server")
    workdir = server_root / "bare"
    bin_dir = server_bin_dir(workdir / "bare-bin")
    for tool in ("sh", "tar", "find", "cat", "mkdir", "cp", "mv", "rm", "ls", "grep", "sleep", "kill", "ln",
                 "readlink", "head", "tr", "sed", "env", "id", "uname", "dirname", "basename", "chmod", "touch",
                 "date"):
        (bin_dir / tool).symlink_to(busybox)
    srv = start_server(workdir, keys, f"SetEnv PATH={bin_dir}\n")
    try:
        result = ssh(srv, keys["ed25519"], "command -v tar; command -v gzip; command -v zstd; true",
                     workdir / "known_hosts")
        if result.stdout != f"{bin_dir}/tar\n":
            pytest.fail(f"bare_server: PATH is not the bare one\nstdout: {result.stdout}\nstderr: {result.stderr}")
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A fresh directory acting as the CI workspace (the tool's working directory)."""
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def remote_dir() -> Iterator[Path]:
    """A fresh, empty directory in the login user's home on the servers, owned by that user."""
    entry = default_login_user()
    path = Path(tempfile.mkdtemp(prefix="remote-", dir=entry.pw_dir))
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o755)
    yield path
    rmtree(path)


@pytest.fixture
def run_sshipit(workspace: Path, tmp_path: Path) -> RunSshipit:
    """Run `python -m sshipit ARGS` in `workspace`, in a clean environment with an empty HOME."""
    home = tmp_path / "home"
    home.mkdir()

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
        input: str | None = None,
    ) -> Result:
        return _run_sshipit(*args, cwd=cwd or workspace, home=home, env=env, timeout=timeout, input=input)

    return run
