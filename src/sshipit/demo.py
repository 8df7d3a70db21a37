"""`python -m sshipit.demo`: a real deploy to a throwaway local OpenSSH server, for newcomers.

Starts sshd on a free 127.0.0.1 port with its own keys, makes a small build output in a temporary workspace,
runs sshipit exactly as Drone runs the plugin (settings in PLUGIN_* variables), shows what landed, and cleans up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sshipit.localserver import LocalServer, generate_key


def _workspace(root: Path) -> Path:
    workspace = root / "workspace"
    (workspace / "dist/assets").mkdir(parents=True)
    (workspace / "dist/index.html").write_text("<!doctype html><h1>Hello from sshipit</h1>\n")
    (workspace / "dist/assets/app.js").write_text("console.log('shipped');\n")
    (workspace / "dist/assets/app.js.map").write_text("{}\n")
    return workspace


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sshipit-demo-") as temp:
        root = Path(temp)
        root.chmod(0o711)
        server_dir = root / "server"
        server_dir.mkdir()
        key = generate_key(root, "ed25519")
        server = LocalServer(server_dir)
        server.authorize(key.public_text)
        with server.start():
            target = f"{server.home}/sshipit-demo/site"
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "INPUT_"))},
                "PLUGIN_HOST": f"{server.user}@{server.host}:{server.port}",
                "PLUGIN_KEY": key.private_text,
                "PLUGIN_FINGERPRINT": ",".join(server.fingerprints().values()),
                "PLUGIN_TARGET": target,
                "PLUGIN_SOURCES": "dist,!*.map",
                "PLUGIN_STRIP_COMPONENTS": "1",
                "PLUGIN_RM": "true",
                "PLUGIN_SCRIPT": "echo \"deployed $(find . -type f | wc -l) files to $PWD\"\nls -la\n",
            }
            print(f"demo: throwaway sshd on {server.host}:{server.port}, login {server.user}, target {target}")
            print("demo: running `sshipit` with PLUGIN_HOST, PLUGIN_KEY, PLUGIN_TARGET, PLUGIN_SOURCES=dist,!*.map, "
                  "PLUGIN_SCRIPT ...\n", flush=True)
            status = subprocess.run([sys.executable, "-m", "sshipit"], cwd=_workspace(root), env=env).returncode
            print(f"\ndemo: sshipit exited with {status}; the server now holds:")
            site = Path(target)
            for path in sorted(site.rglob("*")):
                print(f"  {path.relative_to(site)}")
            subprocess.run(["rm", "-rf", str(site.parent)], check=False)
        return status


if __name__ == "__main__":
    raise SystemExit(main())
