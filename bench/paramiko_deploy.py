"""The old Python plugin's way to deploy, for the benchmark: tar.gz the sources in Python, upload the archive with
paramiko's SFTP client, then untar and remove it with one exec on the same connection.

    python bench/paramiko_deploy.py --host H --port P --user U --key KEY --known-hosts FILE \
        --target /abs/target --source app --scratch /tmp/x.tar.gz
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tarfile

import paramiko


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("host", "user", "key", "known-hosts", "target", "source", "scratch"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--port", type=int, default=22)
    args = parser.parse_args()

    # tarfile's gzip at its default level (9), as the plugin did.
    with tarfile.open(args.scratch, "w:gz") as archive:
        for name in sorted(os.listdir(args.source)):
            archive.add(os.path.join(args.source, name), arcname=name)
    client = paramiko.SSHClient()
    client.load_host_keys(args.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(args.host, port=args.port, username=args.user, key_filename=args.key, allow_agent=False,
                   look_for_keys=False, timeout=30)
    try:
        remote = f"{args.target}.paramiko-upload.tar.gz"
        sftp = client.open_sftp()
        sftp.put(args.scratch, remote)
        sftp.close()
        target = shlex.quote(args.target)
        command = f"mkdir -p {target} && tar -xzf {shlex.quote(remote)} -C {target} && rm -f {shlex.quote(remote)}"
        _stdin, stdout, stderr = client.exec_command(command)
        status = stdout.channel.recv_exit_status()
        if status != 0:
            sys.stderr.write(stderr.read().decode(errors="replace"))
            return status
    finally:
        client.close()
        os.unlink(args.scratch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
