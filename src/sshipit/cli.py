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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sshipit import __version__
from sshipit.errors import EXIT_FAILED, EXIT_SETTINGS, DeployError
from sshipit.settings import CATALOGUE, Raw, RawSettings, from_environment

if TYPE_CHECKING:
    from sshipit.report import Console

_EPILOG = """\
Every setting can also be given as an environment variable: PLUGIN_<NAME> (Drone, Woodpecker) or
INPUT_<NAME> (GitHub Actions), e.g. PLUGIN_HOST=web1 PLUGIN_SCRIPT_STOP=false. Flags win over variables.
Lists: repeat the flag (--command a --command b), or in a variable give a JSON array or comma-joined text.
Subcommands: `sshipit rollback [settings]` switches every host back to its previous good release;
`sshipit plan [settings]` shows per host what a deploy would do, changing nothing.
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
        help_text = f"{setting.help}{default}. Env: PLUGIN_{setting.name.upper()}"
        if setting.kind in ("list", "commands"):
            group.add_argument(*flags, dest=setting.name, action="append", metavar="VALUE",
                               help=help_text + "; repeat the flag for more")
        elif setting.kind == "bool":
            group.add_argument(*flags, dest=setting.name, nargs="?", const="true", metavar="BOOL", help=help_text)
        else:
            metavar = "SECRET" if setting.secret else setting.kind.upper() if setting.kind != "str" else "TEXT"
            group.add_argument(*flags, dest=setting.name, metavar=metavar, help=help_text)
    return parser


# `sshipit rollback ...` is `--rollback` with the same settings; `sshipit plan ...` is `--dry-run`.
SUBCOMMANDS = {"rollback": "rollback", "plan": "dry_run"}


def read_settings(argv: list[str], environ: dict[str, str]) -> RawSettings:
    raw = from_environment(environ)
    if argv and argv[0] in SUBCOMMANDS:
        raw.known[SUBCOMMANDS[argv[0]]] = Raw(origin=argv[0], text="true")
        argv = argv[1:]
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

    for name in list(os.environ):
        prefix = next((p for p in PREFIXES if name.startswith(p)), None)
        setting = lookup(name[len(prefix):]) if prefix else None
        if setting is not None and setting.secret:
            del os.environ[name]


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
        from sshipit.plan import build

        debug_raw = raw.known.get("debug")
        debug = bool(debug_raw and (debug_raw.text or "").strip().lower() in ("true", "yes", "on", "1", "y"))
        plan = build(raw, environ, Path.cwd())
        gc.freeze()  # the plan (an entry per source file) lives to the end: later collections need not visit it
        console.masker = plan.masker
        for warning in plan.warnings:
            console.warn(warning)
        if plan.debug:
            for name, value in plan.shown.items():
                console.info(f"setting {name} = {value}")
        import asyncio

        from sshipit.deploy import deploy, exit_status

        results = asyncio.run(deploy(plan, console))
        seconds = time.monotonic() - started
        console.summary(results, seconds)
        status = exit_status(results)
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


def run() -> NoReturn:
    """The `sshipit` command: main(), then exit without tearing the interpreter down.

    A deploy of a big build ends holding hundreds of thousands of objects (entries, hashes, the manifest);
    freeing them one by one at exit took 70-120 ms, a share of a one-command deploy that `ssh` does not pay.
    Everything sshipit writes is closed when main() returns; only the standard streams need a flush.
    """
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            status = status or EXIT_FAILED
    os._exit(status)


def _ci_report(console: Console, environ: Mapping[str, str], seconds: float, status: int, **what: Any) -> None:
    """Drone's card, GitHub's summary and outputs: extras that must never change how the deploy ends."""
    try:
        from sshipit.ci_report import publish

        publish(console, environ, seconds, status, **what)
    except Exception as exc:  # a bug in the extras: one warning, the deploy's own status stands
        console.warn(f"could not write the CI report: {type(exc).__name__}: {exc}")
