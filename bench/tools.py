"""The deploy tools under test, each as the command line a user would type.

A tool turns (servers, workspace, target) into the argv of ONE client command; the runner times that command.
OpenSSH-based tools run with the system client's defaults (cipher, no compression) and `-F /dev/null`, so no
ssh_config on the machine changes them. Tools that cannot deploy to several hosts by themselves are run once per
host, all at once (`cmd & cmd & wait`), as a user's shell loop would.

To add a tool: subclass `Tool`, set `key`/`label`, implement `per_host` (or `command` for native multi-host),
and list it in `TOOLS`.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from servers import Endpoint

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass
class Context:
    """What a command needs besides the servers: the client key, known_hosts files, a scratch dir, sshipit's src."""

    key: Path
    scratch: Path
    sshipit_src: Path
    home: Path  # HOME of every client (empty: no ~/.ssh, no agent)
    other_src: Path | None = None  # run.py --against: a second sshipit, measured in the same run (SshipitOther)

    def known_hosts_file(self, ep: Endpoint) -> Path:
        path = self.scratch / f"known_hosts-{ep.host}-{ep.port}"
        if not path.exists():
            path.write_text(ep.known_hosts)
        return path

    def ssh_options(self, ep: Endpoint, port_flag: str = "-p") -> list[str]:
        return ["-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts_file(ep)}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", port_flag, str(ep.port)]

    def env(self) -> dict[str, str]:
        scrub = ("PLUGIN_", "INPUT_", "DRONE", "CI_", "GITHUB_", "SSHIPIT_")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(scrub) and k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "PYTHONPATH")}
        env.update(HOME=str(self.home), NO_COLOR="1", PYTHONPATH=str(self.sshipit_src), LC_ALL="C.UTF-8")
        return env


def remote_path(ep: Endpoint, target: str) -> str:
    """`target` is relative to the login's home (sshipit's `~/...`); OpenSSH tools get the absolute path."""
    return str(ep.home / target)


class Tool:
    key = ""
    label = ""
    incremental = False  # skips unchanged files on a redeploy (prepared by itself, not by a local copy)
    links: tuple[str, ...] = ("loopback", "50mbit")
    note = ""

    def command(self, eps: list[Endpoint], workspace: Path, target: str, ctx: Context) -> list[str]:
        parts = [self.per_host(ep, workspace, target, ctx) for ep in eps]
        if len(parts) == 1 and isinstance(parts[0], list):
            return parts[0]
        scripts = [shlex.join(p) if isinstance(p, list) else p for p in parts]
        if len(scripts) == 1:
            return ["bash", "-c", "set -eo pipefail; " + scripts[0]]
        body = "pids=()\n" + "".join(f"( set -eo pipefail; {s} ) & pids+=($!)\n" for s in scripts)
        body += 'rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc\n'
        return ["bash", "-c", body]

    def per_host(self, ep: Endpoint, workspace: Path, target: str, ctx: Context) -> list[str] | str:
        raise NotImplementedError


class Sshipit(Tool):
    key, label = "sshipit", "sshipit"
    incremental = True
    note = "python -m sshipit (defaults: incremental, compress auto); all hosts in one process"

    def command(self, eps: list[Endpoint], workspace: Path, target: str, ctx: Context) -> list[str]:
        argv = [sys.executable, "-m", "sshipit"]
        for ep in eps:
            argv += ["--host", ep.spec]
        known = "".join(ep.known_hosts for ep in eps)
        return [*argv, "--key-path", str(ctx.key), "--known-hosts", known, "--target", f"~/{target}",
                "--source", "app", "--strip-components", "1"]


class SshipitOther(Sshipit):
    """The sshipit under run.py --against DIR, beside this checkout's in the same run: before/after figures that
    share the machine's load (the runs interleave), which two runs an hour apart do not."""

    key, label = "sshipit-b", "sshipit (--against)"
    note = "python -m sshipit from the --against src directory"

    def command(self, eps: list[Endpoint], workspace: Path, target: str, ctx: Context) -> list[str]:
        if ctx.other_src is None:
            raise RuntimeError("sshipit-b runs only with --against")
        return ["env", f"PYTHONPATH={ctx.other_src}", *super().command(eps, workspace, target, ctx)]


class TarSsh(Tool):
    key, label = "tar", "OpenSSH tar"
    z = ""  # "z": gzip on both ends
    note = "tar -C app -cf - . | ssh host 'tar -C target -xf -'"

    def per_host(self, ep: Endpoint, workspace: Path, target: str, ctx: Context) -> str:
        remote = shlex.quote(remote_path(ep, target))
        ssh = shlex.join(["ssh", *ctx.ssh_options(ep), f"{ep.user}@{ep.host}", f"mkdir -p {remote} && "
                          f"tar -C {remote} -x{self.z}f -"])
        return f"tar -C app -c{self.z}f - . | {ssh}"


class TarGzSsh(TarSsh):
    key, label = "tar-gz", "OpenSSH tar|gzip"
    z = "z"
    links = ("50mbit",)
    note = "tar -C app -czf - . | ssh host 'tar -C target -xzf -'"


class Rsync(Tool):
    key, label = "rsync", "rsync -a"
    incremental = True
    flags = "-a"
    note = "rsync -a -e 'ssh ...' app/ host:target/"

    def per_host(self, ep: Endpoint, workspace: Path, target: str, ctx: Context) -> list[str]:
        return ["rsync", self.flags, "-e", shlex.join(["ssh", *ctx.ssh_options(ep)]), "app/",
                f"{ep.user}@{ep.host}:{remote_path(ep, target)}/"]


class RsyncZ(Rsync):
    key, label = "rsync-z", "rsync -az"
    flags = "-az"
    links = ("50mbit",)
    note = "rsync -az -e 'ssh ...' app/ host:target/"


class Scp(Tool):
    key, label = "scp", "scp -r"
    note = "scp -r app/* host:target/ (OpenSSH 9 scp: SFTP protocol)"

    def per_host(self, ep: Endpoint, workspace: Path, target: str, ctx: Context) -> list[str]:
        tops = sorted(os.listdir(workspace / "app"))
        return ["scp", "-r", "-q", *ctx.ssh_options(ep, "-P"), *(f"app/{name}" for name in tops),
                f"{ep.user}@{ep.host}:{remote_path(ep, target)}/"]


class DroneScp(Tool):
    key, label = "drone-scp", "drone-scp method"
    note = "tar -czf local.tar.gz; scp -O it (connection 1); untar (2); rm (3)"

    def per_host(self, ep: Endpoint, workspace: Path, target: str, ctx: Context) -> str:
        remote = remote_path(ep, target)
        local = ctx.scratch / f"drone-scp-{ep.host}-{ep.port}.tar.gz"
        archive = f"{remote}/.drone-scp-upload.tar.gz"
        login = f"{ep.user}@{ep.host}"
        ssh = ["ssh", *ctx.ssh_options(ep), login]
        return "; ".join([
            shlex.join(["tar", "-C", "app", "-czf", str(local), "."]),
            shlex.join(["scp", "-O", "-q", *ctx.ssh_options(ep, "-P"), str(local), f"{login}:{archive}"]),
            shlex.join([*ssh, f"mkdir -p {shlex.quote(remote)} && tar -xzf {shlex.quote(archive)} "
                              f"-C {shlex.quote(remote)}"]),
            shlex.join([*ssh, f"rm -f {shlex.quote(archive)}"]),
            shlex.join(["rm", "-f", str(local)]),
        ])


class ParamikoSftp(Tool):
    key, label = "paramiko", "paramiko SFTP (old plugin)"
    note = "tar.gz in Python (tarfile, level 9), paramiko SFTP put, untar over exec"

    def per_host(self, ep: Endpoint, workspace: Path, target: str, ctx: Context) -> list[str]:
        return [sys.executable, str(BENCH / "paramiko_deploy.py"), "--host", ep.host, "--port", str(ep.port),
                "--user", ep.user, "--key", str(ctx.key), "--known-hosts", str(ctx.known_hosts_file(ep)),
                "--target", remote_path(ep, target), "--source", "app",
                "--scratch", str(ctx.scratch / f"paramiko-{ep.host}-{ep.port}.tar.gz")]


TOOLS: list[Tool] = [Sshipit(), SshipitOther(), TarSsh(), TarGzSsh(), Rsync(), RsyncZ(), Scp(), DroneScp(),
                     ParamikoSftp()]
BY_KEY = {tool.key: tool for tool in TOOLS}
