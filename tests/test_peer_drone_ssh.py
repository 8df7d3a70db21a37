"""appleboy/drone-ssh's settings, run the way Drone runs the plugin (PLUGIN_* variables) against a real sshd.

The scenarios are drone-ssh's own plugin tests (TestEnvOutput, TestSetExistingENV, TestAllEnvs, TestSSHIPv4Only,
TestSSHIPv6OnlyError, TestProxyCommand, TestWrongFingerprint, TestUseInsecureCipher, script_stop) and its
documented defaults (proxy_port 22, proxy_username root), written here for sshipit.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from conftest import RunSshipit
from helpers import one_error, plugin_env, start_server
from sshipit.localserver import KeyPair, LocalServer

DRONE = {"CI": "true", "DRONE": "true", "DRONE_REPO": "octo/app", "DRONE_STEP_NAME": "ssh"}


def ssh_env(server: LocalServer, key: KeyPair | None, **settings: object) -> dict[str, str]:
    return plugin_env(server, key, **settings) | DRONE


def test_env_output_every_value_arrives_whole(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    """TestEnvOutput: spaces, quotes, commas and shell characters survive the export."""
    values = ["test", "test test", "test ", "  test  test  ", "test'", 'test"', "test,!#;?.@$~'\""]
    env = ssh_env(server, keys["ed25519"], envs=[f"env_{n}" for n in range(1, 8)],
                  script='["' + '", "'.join(f'echo \\"[${{ENV_{n}}}]\\"' for n in range(1, 8)) + '"]')
    env |= {f"ENV_{n}": value for n, value in enumerate(values, 1)}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("[")] == [f"[{v}]" for v in values], result


def test_set_existing_env_empty_is_exported_and_unset_stays_unset(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    """TestSetExistingENV: FOO set, BAR set empty (exported empty), BAZ set nowhere (not exported)."""
    script = ["export FOO", "export BAR", "export BAZ", "env | grep -q '^FOO=Value for foo$'",
              "env | grep -q '^BAR=$'", "if env | grep -q BAZ; then false; else true; fi", "echo all good"]
    env = ssh_env(server, keys["ed25519"], envs=["foo", "bar", "baz"], script=script)
    env |= {"FOO": "Value for foo", "BAR": ""}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "all good" in result.stdout.splitlines()


def test_all_envs(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """TestAllEnvs: INPUT_1, GITHUB_2, PLUGIN_3 reach the script under their own names; no credential does."""
    env = ssh_env(server, keys["ed25519_pass"], allenvs=True,
                  script=["echo [${INPUT_1}]", "echo [${GITHUB_2}]", "echo [${PLUGIN_3}]",
                          "echo [${PLUGIN_KEY-none}] [${PLUGIN_PASSPHRASE-none}]"])
    env |= {"INPUT_1": "foobar", "GITHUB_2": "foobar", "PLUGIN_3": "foobar"}
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert [line for line in result.stdout.splitlines() if line.startswith("[")] == \
        ["[foobar]"] * 3 + ["[none] [none]"]
    assert "unknown setting" not in result.output
    assert keys["ed25519_pass"].passphrase not in result.output  # type: ignore[operator]


def test_ipv4_only_connects(server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit) -> None:
    """TestSSHIPv4Only: protocol tcp4 to localhost and 127.0.0.1."""
    env = ssh_env(server, keys["ed25519"], protocol="tcp4", script="whoami")
    env["PLUGIN_HOST"] = "localhost,127.0.0.1"
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert f"[localhost] {server.user}" in lines and f"[127.0.0.1] {server.user}" in lines, result


def test_ipv6_only_with_an_ipv4_address_fails(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    """TestSSHIPv6OnlyError: tcp6 and 127.0.0.1 fail; so does tcp4 with an IPv6 address."""
    one_error(run_sshipit(env=ssh_env(server, keys["ed25519"], protocol="tcp6", script="whoami")), 2,
              "IPv4 address and protocol is tcp6", "[setting: protocol]")
    env = ssh_env(server, keys["ed25519"], protocol="tcp4", script="whoami") | {"PLUGIN_HOST": "::1"}
    one_error(run_sshipit(env=env), 2, "IPv6 address and protocol is tcp4")


def test_proxy_command_with_drone_ssh_names(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    """TestProxyCommand, with drone-ssh's main names: proxy_ssh_key and proxy_ssh_passphrase."""
    key = keys["ed25519_pass"]
    env = ssh_env(server, keys["ed25519"], script="echo via bastion",
                  proxy_host=server.host, proxy_port=server.port, proxy_username=server.user,
                  proxy_ssh_key=key.private_text, proxy_ssh_passphrase=key.passphrase)
    result = run_sshipit(env=env)
    assert result.returncode == 0, result
    assert "via bastion" in result.stdout.splitlines()
    assert "unknown setting" not in result.output


def test_proxy_port_and_username_default_to_22_and_root(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    """Unset proxy_port is 22 and unset proxy_username is root for drone-ssh, not the target's port and user."""
    env = ssh_env(server, keys["ed25519"], script="true", proxy_host=server.host, retries=0, timeout="5s")
    result = run_sshipit(env=env)
    assert result.returncode == 1, result
    assert "port 22" in one_error(result, 1, "jump host"), result  # not the target's port
    # The bastion's real port given, no user: the login there is root's, not the target's user.
    result = run_sshipit(env={**env, "PLUGIN_PROXY_PORT": str(server.port)})
    assert result.returncode == 0, result
    assert f"jump host {server.host}: connected to {server.host}:{server.port} as root " in result.stdout, result
    assert f"as {server.user} (host key verified)" in result.stdout, result


def test_wrong_fingerprint_fails_before_login(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    env = ssh_env(server, keys["ed25519"], script="echo should not run",
                  fingerprint="SHA256:" + "A" * 43)
    result = run_sshipit(env=env)
    assert result.returncode == 1 and "host key does not match" in result.stderr, result
    assert "should not run" not in result.stdout


@pytest.mark.parametrize("name", ["use_insecure_cipher", "proxy_use_insecure_cipher"])
def test_insecure_ciphers_are_refused_and_cipher_lists_accepted(
    name: str, server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit,
) -> None:
    one_error(run_sshipit(env=ssh_env(server, keys["ed25519"], script="true", **{name: True})), 2,
              f"{name}: true", "never offers insecure ciphers")
    result = run_sshipit(env=ssh_env(server, keys["ed25519"], script="echo ok", proxy_timeout="10s",
                                     ciphers="aes128-ctr,aes256-gcm@openssh.com", **{name: False}))
    assert result.returncode == 0 and "unknown setting" not in result.output, result


def test_script_stop_false_restores_drone_ssh_default(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, tmp_path: Path,
) -> None:
    """sshipit stops at the first failing command; drone-ssh's default ran on. script_stop: false restores it."""
    stopped = run_sshipit(env=ssh_env(server, keys["ed25519"], script=["false", "echo after"]))
    assert stopped.returncode == 1 and "after" not in stopped.stdout.splitlines(), stopped
    ran_on = run_sshipit(env=ssh_env(server, keys["ed25519"], script=["false", "echo after"], script_stop=False))
    assert "after" in ran_on.stdout.splitlines(), ran_on


def test_an_unpinned_bastion_with_a_pinned_target_connects(
    server: LocalServer, keys: dict[str, KeyPair], run_sshipit: RunSshipit, server_root: Path,
) -> None:
    """drone-ssh checks a jump host only against proxy_fingerprint. sshipit does the same for a hop that logs in
    with keys (it is named as unverified); the target's own pin still holds, and a hop that would receive a
    password must still match the pins."""
    bastion = start_server(Path(tempfile.mkdtemp(prefix="peer-bastion-", dir=server_root)), keys)
    try:
        assert set(bastion.fingerprints().values()).isdisjoint(server.fingerprints().values())
        env = ssh_env(server, keys["ed25519"], script="echo through", proxy_host=bastion.host,
                      proxy_port=bastion.port, proxy_username=bastion.user)
        result = run_sshipit(env=env)
        assert result.returncode == 0, result
        assert "through" in result.stdout.splitlines()
        assert re.search(r"warning: .*host key not verified.*pin it with proxy_fingerprint", result.stderr), result
        assert re.search(r"connected to .* \(host key verified\)", result.stdout), result  # the target
        wrong_target = ssh_env(server, keys["ed25519"], script="echo through", proxy_host=bastion.host,
                               proxy_port=bastion.port, proxy_username=bastion.user,
                               fingerprint=",".join(bastion.fingerprints().values()))
        failed = run_sshipit(env=wrong_target)
        assert failed.returncode == 1 and "host key does not match" in failed.stderr, failed
        assert "through" not in failed.stdout
        with_password = env | {"PLUGIN_PROXY_PASSWORD": "never-sent-" + "x" * 8, "PLUGIN_RETRIES": "0"}
        refused = run_sshipit(env=with_password)
        assert refused.returncode == 1, refused
        assert f"jump host {bastion.host}: host key does not match" in refused.stderr, refused
    finally:
        bastion.stop()
