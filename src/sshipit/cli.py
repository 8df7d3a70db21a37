"""The `sshipit` command: read settings, build the plan, deploy, report, exit.

With no arguments it is a CI plugin (settings from `PLUGIN_*` / `INPUT_*`); flags give the same settings
anywhere and win over the environment. Owns argument parsing, `--help`, and the promise that a failure is one
clear line with a non-zero exit, never a traceback (unless `debug`).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sshipit import __version__
from sshipit.errors import EXIT_FAILED, EXIT_SETTINGS, DeployError
from sshipit.settings import CATALOGUE, Raw, RawSettings, from_environment

if TYPE_CHECKING:
    from sshipit.report import Console
    from sshipit.sources import Collected

_EPILOG = """\
Every setting can also be given as an environment variable: PLUGIN_<NAME> (Drone, Woodpecker) or
INPUT_<NAME> (GitHub Actions), e.g. PLUGIN_HOST=web1 PLUGIN_SCRIPT_STOP=false. Flags win over variables.
Lists: repeat the flag (--command a --command b), or in a variable give a JSON array or comma-joined text.
Subcommands: `sshipit rollback [RELEASE_ID] [settings]` switches every host back to its previous good release,
or to the named one (back or forward) if every host holds it complete;
`sshipit plan [settings]` shows per host what a deploy would do, changing nothing;
`sshipit releases [settings]` lists each host's releases (id, created, commit, state, size), changing nothing.
Exit status: 0 success; a failing command's own status; 124 command_timeout; 2 bad settings; 1 otherwise.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sshipit",
        description="Ship build output to servers over SSH and run the commands that bring it live.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sshipit {__version__}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in CATALOGUE:
        group = groups.setdefault(setting.group, parser.add_argument_group(setting.group))
        flags = [f"--{setting.name.replace('_', '-')}"]
        flags += [f"--{alias.replace('_', '-')}" for alias in setting.aliases]
        if setting.name == "commands":
            flags.append("--command")
        if setting.name == "sources":
            flags = ["--source", *[f for f in flags if f != "--source"]]
        default = f" (default: {setting.default})" if setting.default is not None else ""
        # argparse %-formats help texts: a literal % (proxy_command's %h %p) must be doubled
        help_text = f"{setting.help}{default}. Env: PLUGIN_{setting.name.upper()}".replace("%", "%%")
        if setting.kind in ("list", "commands"):
            group.add_argument(*flags, dest=setting.name, action="append", metavar="VALUE",
                               help=help_text + "; repeat the flag for more")
        elif setting.kind == "bool":
            group.add_argument(*flags, dest=setting.name, nargs="?", const="true", metavar="BOOL", help=help_text)
        else:
            metavar = "SECRET" if setting.secret else setting.kind.upper() if setting.kind != "str" else "TEXT"
            group.add_argument(*flags, dest=setting.name, metavar=metavar, help=help_text)
    return parser


# `sshipit rollback ...` is `--rollback` with the same settings; `sshipit plan ...` is `--dry-run`;
# `sshipit releases ...` is `--list-releases`.
SUBCOMMANDS = {"rollback": "rollback", "plan": "dry_run", "releases": "list_releases"}


def read_settings(argv: list[str], environ: dict[str, str]) -> RawSettings:
    raw = from_environment(environ)
    if argv and argv[0] in SUBCOMMANDS:
        named = argv[0] == "rollback" and len(argv) > 1 and not argv[1].startswith("-")  # rollback <release id>
        raw.known[SUBCOMMANDS[argv[0]]] = Raw(origin=argv[0], text=argv[1] if named else "true")
        argv = argv[2 if named else 1:]
    if argv:
        namespace = _parser().parse_args(argv)
        for setting in CATALOGUE:
            value = getattr(namespace, setting.name, None)
            if value is None:
                continue
            flag = f"--{setting.name.replace('_', '-')}"
            if isinstance(value, list):
                raw.known[setting.name] = Raw(origin=flag, items=list(value))
            else:
                raw.known[setting.name] = Raw(origin=flag, text=value)
    return raw


def _forget_credentials() -> None:
    """Take the credential settings out of this process's environment once read: a child process would inherit
    them (asyncssh runs `ldconfig -p` through ctypes.util.find_library when it is imported)."""
    from sshipit.settings import PREFIXES, lookup

    secret = {"RSYNC_KEY"}  # drone-rsync's key variable (dialects.py reads it from the copy)
    for name in list(os.environ):
        prefix = next((p for p in PREFIXES if name.startswith(p)), None)
        setting = lookup(name[len(prefix):]) if prefix else None
        if setting is not None and setting.secret:
            secret.add(name)
    present = [name for name in secret if name in os.environ]
    if present:
        _blank_environment_block(present)
    for name in present:
        del os.environ[name]


def _blank_environment_block(names: list[str]) -> None:
    """Overwrite the values of `names` in the environment block the process started with.

    unsetenv only drops libc's pointer: the text stays in the block that /proc/PID/environ shows, for this process
    and for a child between fork and exec (when it is still this process's memory), to any process of the user.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        block = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    except (OSError, ValueError):  # no libc `environ` to reach (not Linux/glibc/musl): unsetenv alone
        return
    wanted = {os.fsencode(name) + b"=" for name in names}
    index = 0
    while (address := block[index]) is not None:
        text = ctypes.string_at(address)
        head = text[: text.find(b"=") + 1]
        if head in wanted:
            ctypes.memset(address + len(head), ord("*"), len(text) - len(head))
        index += 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = dict(os.environ)
    _forget_credentials()
    debug = False
    started = time.monotonic()
    from sshipit.report import Console, error_line

    console = Console()
    try:
        raw = read_settings(argv, environ)
        from sshipit.dialects import translate
        from sshipit.plan import build
        from sshipit.wire import quick_library_search

        quick_library_search()  # before asyncssh loads: its liboqs search ran two subprocesses (wire.py)

        debug_raw = raw.known.get("debug")
        debug = bool(debug_raw and (debug_raw.text or "").strip().lower() in ("true", "yes", "on", "1", "y"))
        translated = translate(raw, environ)  # the peers' settings (drone-scp, drone-rsync, ...) as sshipit's
        # One per target, all checked first; the one target's sources may be read while its servers answer the
        # probe (plan.sources_may_wait), never those of several targets: each is checked before the first runs.
        later = len(translated.runs) == 1
        plans = [build(run, environ, Path.cwd(), sources_later=later) for run in translated.runs]
        from sshipit.connect import start_early

        start_early(plans[0])  # TCP connect and versions while asyncssh and the rest load (connect.py, wire.py)
        gc.freeze()  # the plan (an entry per source file) lives to the end: later collections need not visit it
        import asyncio

        from sshipit.deploy import deploy, exit_status
        from sshipit.sources import Pending

        results: list[Any] = []
        captured = _capture_stdout(console) if translated.capture_stdout else None
        for plan in plans:
            console.masker = plan.masker
            if isinstance(plan.upload, Pending):
                plan.upload.on_read = _sources_read(console)
            for warning in plan.warnings:
                console.warn(warning)
            if plan.debug:
                for name, value in plan.shown.items():
                    console.info(f"setting {name} = {value}")
            if len(plans) > 1:  # several targets (drone-scp), or drone-rsync's prescript run before the sync
                console.info(f"target {plan.target}" if plan.target else "prescript: before the upload")
            if plan.list_releases and not plan.dry_run:  # read only; `sshipit plan` says so (dryrun.py)
                from sshipit.release_list import list_releases

                results += asyncio.run(list_releases(plan, console))
            else:
                results += asyncio.run(deploy(plan, console))
            if exit_status(results):
                break  # a target failed: the next ones are not touched
        seconds = time.monotonic() - started
        console.summary(results, seconds)
        status = exit_status(results)
        if captured is not None:
            _write_stdout_output(console, environ, captured)
        _ci_report(console, environ, seconds, status, results=results, plan=plan)
        return status
    except DeployError as exc:
        line = error_line(exc)
        console.error(line)
        _ci_report(console, environ, time.monotonic() - started, exc.exit_status, error=line)
        return exc.exit_status
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_SETTINGS
    except Exception as exc:  # a bug: say so in one line, show the traceback only when asked
        if debug:
            import traceback

            traceback.print_exc()
        console.error(f"internal error: {type(exc).__name__}: {exc} (run with debug: true for details)")
        return EXIT_FAILED
    finally:
        wire = sys.modules.get("sshipit.wire")
        if wire is not None:
            wire.close_early()  # connections opened early for hosts that were never deployed to


def run() -> NoReturn:
    """The `sshipit` command: main(), then exit without tearing the interpreter down.

    A deploy of a big build ends holding hundreds of thousands of objects (entries, hashes, the manifest);
    freeing them one by one at exit took 70-120 ms, a share of a one-command deploy that `ssh` does not pay.
    Everything sshipit writes is closed when main() returns; only the standard streams need a flush.
    """
    _lighter_imports()
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            status = status or EXIT_FAILED
    os._exit(status)


def _lighter_imports() -> None:
    """Leave out two modules the sshipit command never uses, before anything imports them (20 ms of each start):
    `ssl` (asyncio loads it for TLS, which SSH does not use; asyncio and asyncssh run without it) and asyncssh's
    X.509v3 certificates (RFC 6187: `cryptography.x509`), which OpenSSH does not speak; asyncssh then offers
    OpenSSH keys and certificates only, as it does where X.509 support is not installed. The command only:
    `main()` called in a process that has other uses for them changes nothing."""
    for name in ("ssl", "asyncssh.crypto.x509"):
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError: "not installed"


def _sources_read(console: Console) -> Callable[[Collected], None]:
    """What follows reading the sources on first use (sources.Pending): their warnings are said, and their
    entries, which live to the end, are frozen like the plan's (main's gc.freeze)."""

    def read(collected: Collected) -> None:
        gc.freeze()
        for warning in collected.warnings:
            console.warn(warning)

    return read


def _ci_report(console: Console, environ: Mapping[str, str], seconds: float, status: int, **what: Any) -> None:
    """Drone's card, GitHub's summary and outputs: extras that must never change how the deploy ends."""
    try:
        from sshipit.ci_report import publish

        publish(console, environ, seconds, status, **what)
    except Exception as exc:  # a bug in the extras: one warning, the deploy's own status stands
        console.warn(f"could not write the CI report: {type(exc).__name__}: {exc}")


def _capture_stdout(console: Console) -> list[str]:
    """ssh-action's and scp-action's capture_stdout: the lines the remote commands print, kept for the step
    output `stdout` (masked, like every line shown)."""
    lines: list[str] = []
    show = console.output

    def output(host: Any, line: str) -> None:
        show(host, line)
        lines.append((f"{host.label}: " if console.prefix_hosts else "") + console.masker(line))

    console.output = output  # type: ignore[method-assign]
    return lines


def _write_stdout_output(console: Console, environ: Mapping[str, str], lines: list[str]) -> None:
    path = environ.get("GITHUB_OUTPUT", "")
    if not path:
        console.warn("capture_stdout: there is no GITHUB_OUTPUT to write the step output stdout to")
        return
    import secrets

    text = "\n".join(lines)
    delimiter = f"sshipit_{secrets.token_hex(8)}"  # never a line of the output, so it cannot end the value early
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"stdout<<{delimiter}\n{text}\n{delimiter}\n")
    except OSError as exc:
        console.warn(f"could not write the step output stdout to GITHUB_OUTPUT: {exc.strerror or exc}")
