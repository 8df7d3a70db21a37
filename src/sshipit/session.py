"""One host, start to finish: connect -> upload -> commands, over a single SSH connection.

Owns the order of the stages on a host and turning what happened into a `HostResult`. The connection is
opened here once and passed to every stage; no stage opens another.
"""

from __future__ import annotations

import asyncio

from sshipit.commands import build_script, run_commands
from sshipit.connect import connect
from sshipit.errors import DeployError
from sshipit.plan import HostSpec, Plan
from sshipit.remote import probe
from sshipit.report import Console, HostResult
from sshipit.upload import upload_sftp, upload_tar


async def deploy_host(host: HostSpec, plan: Plan, console: Console) -> HostResult:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = HostResult(host=host, ok=False, seconds=0.0)
    try:
        connected = await connect(host, plan)
        for warning in connected.warnings:
            console.warn(warning, host)
        console.info(f"connected to {host.hostname}:{host.port} as {host.username} in {connected.seconds:.2f}s"
                     f"{' (host key verified)' if connected.pinned else ''}", host)
        async with connected.conn as conn:
            if plan.upload is not None or plan.rm or plan.delete:
                traits = await probe(conn, plan.connect_timeout)
                entries = plan.upload.entries if plan.upload is not None else []
                if not traits.shell:
                    if plan.commands:
                        raise DeployError(
                            f"{host.label}: the account accepts SFTP only, so commands cannot run; nothing was "
                            "uploaded",
                            setting="commands", hint="remove commands, or give the user a shell", phase="upload")
                    console.info("the account has no shell: uploading over SFTP", host)
                    result.upload = await upload_sftp(conn, host, plan, entries)
                elif traits.tar == "none":
                    console.info("the server has no tar: uploading over SFTP", host)
                    result.upload = await upload_sftp(conn, host, plan, entries)
                else:
                    result.upload = await upload_tar(conn, host, plan, traits, entries, plan.target or ".")
                upload = result.upload
                console.info(f"uploaded {upload.files} files ({upload.bytes} bytes) to {plan.target} in "
                             f"{upload.seconds:.2f}s over {upload.method}", host)
            if plan.commands:
                if plan.debug:
                    console.info("remote script:\n" + build_script(plan, "NONCE", plan.commands, plan.target), host)
                outcome = await run_commands(
                    conn, host, plan, plan.commands, plan.target,
                    emit=lambda line: console.output(host, line),
                    show_command=lambda n: console.command(host, plan.commands[n - 1]),
                )
                result.commands = outcome
                if outcome.timed_out:
                    raise DeployError(
                        f"{host.label}: the commands did not finish within {plan.command_timeout:g}s and were "
                        "stopped", setting="command_timeout", hint="raise command_timeout or make the command end",
                        phase="commands", exit_status=outcome.exit_status)
                if outcome.exit_status != 0:
                    raise DeployError(_failure_text(host, plan, outcome.failed, outcome.exit_status),
                                      setting="commands", phase="commands", exit_status=outcome.exit_status)
        result.ok = True
    except DeployError as exc:
        result.error = exc.line()
        result.phase = exc.phase
        result.exit_status = exc.exit_status
        console.error(exc.line(), host)
    finally:
        result.seconds = loop.time() - started
    return result


def _failure_text(host: HostSpec, plan: Plan, failed: list[tuple[int, int]], status: int) -> str:
    if not failed:
        return f"{host.label}: the commands exited with status {status}"
    parts = []
    for number, code in failed:
        first_line = plan.commands[number - 1].strip().split("\n")[0]
        if len(first_line) > 60:
            first_line = first_line[:57] + "..."
        parts.append(f"command {number} `{first_line}` exited with status {code}")
    return f"{host.label}: " + "; ".join(parts)
