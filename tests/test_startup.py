"""The fixed start-up cost of every deploy (issue 17): what the sshipit command does before its first byte that it
need not do, measured on real processes (audit hooks in a fresh interpreter) and a real deploy to a real sshd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import plugin_env
from sshipit.localserver import KeyPair, LocalServer

SRC = Path(__file__).resolve().parents[1] / "src"
NAMES = ["c", "z", "ssl", "crypto", "oqs", "liboqs", "sshipit-no-such-library"]
SEARCHERS = {"ldconfig", "gcc", "cc", "ld", "objdump", "ld.so"}  # what ctypes.util.find_library runs

# A fresh interpreter that records every process it starts (the audit events of subprocess and os.exec/spawn).
HOOK = textwrap.dedent("""
    import json, os, sys
    started = []

    def hook(event, args):
        if event == "subprocess.Popen":
            started.append(os.path.basename(str(args[0])))
        elif event in ("os.posix_spawn", "os.exec"):
            started.append(os.path.basename(str(args[0])))

    sys.addaudithook(hook)
""")


def python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=120)


def real_answers(env: dict[str, str] | None = None) -> dict[str, str | None]:
    code = f"import ctypes.util, json; print(json.dumps({{n: ctypes.util.find_library(n) for n in {NAMES!r}}}))"
    done = python(code, env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_quick_library_search_answers_as_find_library_does_and_spawns_nothing_for_missing_ones() -> None:
    real = real_answers()
    assert real["c"] is not None, "this machine's find_library finds no libc: the comparison below means nothing"
    assert real["sshipit-no-such-library"] is None
    code = HOOK + textwrap.dedent(f"""
        import ctypes.util
        from sshipit.wire import quick_library_search
        quick_library_search()
        out = {{}}
        for name in {NAMES!r}:
            before = len(started)
            out[name] = [ctypes.util.find_library(name), started[before:]]
        print(json.dumps(out))
    """)
    done = python(code)
    assert done.returncode == 0, done.stderr
    quick = json.loads(done.stdout)
    for name in NAMES:
        found, spawned = quick[name]
        assert found == real[name], f"{name}: quick search said {found!r}, find_library {real[name]!r}"
        if real[name] is None:
            assert not SEARCHERS & set(spawned), f"{name}: a missing library still ran {spawned}"


def test_a_library_only_in_ld_library_path_is_still_searched_for(tmp_path: Path) -> None:
    places = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib", "/lib64", "/usr/lib64")
    libz = next((Path(d) / "libz.so.1" for d in places if (Path(d) / "libz.so.1").exists()), None)
    assert libz is not None, "no libz.so.1 on this machine to copy as a stand-in library"
    shutil.copy(libz, tmp_path / "libsshipitprobe.so.1")
    (tmp_path / "libsshipitprobe.so").symlink_to("libsshipitprobe.so.1")
    env = {"LD_LIBRARY_PATH": str(tmp_path)}
    done = python("from sshipit.wire import _library_may_exist as may\n"
                  "print(may('sshipitprobe'), may('sshipit-no-such-library'))", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


IMPORT = HOOK + textwrap.dedent("""
    {quick}
    import asyncssh.crypto.pq as pq
    print(json.dumps([[pq.sntrup_available, pq.mlkem_available], started]))
""")


def asyncssh_import(quick: bool) -> tuple[list[bool], list[str]]:
    """The key exchanges asyncssh offers and the library searches (processes) its import runs."""
    code = IMPORT.replace("{quick}", "from sshipit.wire import quick_library_search; quick_library_search()"
                          if quick else "")
    done = python(code)
    assert done.returncode == 0, done.stderr
    offered, spawned = json.loads(done.stdout)
    return offered, [name for name in spawned if name in SEARCHERS]


def test_loading_asyncssh_searches_only_for_libraries_that_exist_and_offers_the_same_key_exchanges() -> None:
    real = real_answers()
    assert real["oqs"] is None and real["liboqs"] is None, \
        "liboqs is installed here: its search is not skipped, so this machine cannot show the cut"
    plain_offered, plain_searches = asyncssh_import(quick=False)
    offered, searches = asyncssh_import(quick=True)
    assert offered == plain_offered  # sntrup761 and ML-KEM offered exactly as before
    # asyncssh looks for liboqs twice (oqs, liboqs), each search a process or more (ldconfig, gcc, ld): both are
    # answered without one; a library that exists (libnettle) is still searched for as before.
    assert len(searches) <= len(plain_searches) - 2, (plain_searches, searches)


def test_a_deploy_searches_for_no_library_beyond_what_asyncssh_needs(
        server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, tmp_path: Path) -> None:
    _offered, needed = asyncssh_import(quick=True)  # e.g. libnettle (umac MACs), which is installed
    (workspace / "dist").mkdir()
    (workspace / "dist" / "index.html").write_text("hello\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), **plugin_env(server, keys["ed25519"], source="dist/*", target=str(remote_dir),
                                           strip_components=1)}
    code = HOOK + textwrap.dedent("""
        from sshipit.cli import main
        status = main([])
        sys.stdout.flush()
        print("STARTED", json.dumps(started))
        sys.exit(status)
    """)
    done = python(code, env, cwd=workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (remote_dir / "index.html").read_text() == "hello\n"
    spawned = json.loads(done.stdout.split("STARTED", 1)[1])
    assert [name for name in spawned if name in SEARCHERS] == needed, f"the deploy ran {spawned}"


def test_the_command_deploys_without_loading_ssl_or_x509(
        server: LocalServer, keys: dict[str, KeyPair], workspace: Path, remote_dir: Path, tmp_path: Path) -> None:
    """`sshipit` leaves out `ssl` and asyncssh's X.509 support (cli._lighter_imports): ~20 ms of every start. The
    deploy still works with each key type the tests have, and the modules are really not loaded."""
    (workspace / "dist").mkdir()
    (workspace / "dist" / "index.html").write_text("hello\n")
    home = tmp_path / "home"
    home.mkdir()
    assert keys, "no test keys"
    for name, key in keys.items():
        env = {**os.environ, "PYTHONPATH": str(SRC), "HOME": str(home), "PYTHONPROFILEIMPORTTIME": "1",
               **plugin_env(server, key, source="dist/*", target=str(remote_dir / name), strip_components=1,
                            script="echo ran-$((6*7))")}
        done = subprocess.run([sys.executable, "-m", "sshipit"], capture_output=True, text=True, env=env,
                              cwd=workspace, timeout=120)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        assert (remote_dir / name / "index.html").read_text() == "hello\n"
        assert "ran-42" in done.stdout + done.stderr, done.stdout
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "asyncssh.connection" in imported, "-X importtime printed nothing: the check below means nothing"
        # A refused import still prints its line (a few microseconds): what `ssl` and asyncssh's X.509 module
        # would load below them is what shows they really did not load.
        loaded = {"_ssl", "cryptography.x509", "cryptography.x509.name"} & imported
        assert not loaded, f"{name}: loaded {loaded}"
