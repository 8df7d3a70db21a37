"""Unit tests for the pure parts: setting names, values, host entries, lists and command recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from sshipit.commas import read_commands, recover_from_pipeline_file, split_top_level, substitute
from sshipit.errors import SettingsError
from sshipit.hosts import parse_host
from sshipit.rules import Masker, clean_relative, remote_target
from sshipit.settings import (
    CATALOGUE,
    Raw,
    from_environment,
    normalise,
    parse_bool,
    parse_duration,
    parse_list,
    suggest,
)


class TestNames:
    def test_drone_and_woodpecker_spellings_meet(self) -> None:
        for variable in ("PLUGIN_SCRIPT_STOP", "PLUGIN_SCRIPT-STOP", "PLUGIN_SCRIPT.STOP", "INPUT_SCRIPT_STOP"):
            raw = from_environment({variable: "false"})
            assert raw.known["script_stop"].text == "false", variable

    def test_aliases_map_to_the_setting(self) -> None:
        raw = from_environment({"PLUGIN_SSH_KEY": "k", "PLUGIN_USER": "deploy", "PLUGIN_SCRIPT": "ls",
                                "PLUGIN_HOSTS": "a,b", "PLUGIN_SOURCE": "dist"})
        assert set(raw.known) == {"key", "username", "commands", "host", "sources"}

    def test_empty_value_is_absent(self) -> None:
        raw = from_environment({"PLUGIN_TARGET": "", "PLUGIN_HOST": "h"})
        assert "target" not in raw.known

    def test_plugin_wins_over_input(self) -> None:
        raw = from_environment({"INPUT_HOST": "from-input", "PLUGIN_HOST": "from-plugin"})
        assert raw.known["host"].text == "from-plugin"

    def test_conflicting_alias_and_name(self) -> None:
        with pytest.raises(SettingsError, match="both set"):
            from_environment({"PLUGIN_HOST": "a", "PLUGIN_HOSTS": "b"})

    def test_unknown_names_are_kept_for_envs_and_suggestions(self) -> None:
        raw = from_environment({"PLUGIN_HOTS": "x", "PLUGIN_MYVAR": "y", "HOME": "/root"})
        assert set(raw.extra) == {"hots", "myvar"}
        assert suggest("hots") == "host"
        assert suggest("myvar") is None

    def test_normalise(self) -> None:
        assert normalise("Dry-Run") == normalise("dry.run") == normalise("DRY_RUN") == "dry_run"


class TestValues:
    @pytest.mark.parametrize("text", ["true", "TRUE", "yes", "on", "1", "y", " True "])
    def test_true(self, text: str) -> None:
        assert parse_bool(text, "rm") is True

    @pytest.mark.parametrize("text", ["false", "No", "off", "0", "n"])
    def test_false(self, text: str) -> None:
        assert parse_bool(text, "rm") is False

    def test_bad_bool_names_setting(self) -> None:
        with pytest.raises(SettingsError) as info:
            parse_bool("maybe", "rm")
        assert info.value.setting == "rm" and "maybe" in info.value.line()

    @pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1h", 3600), ("45", 45),
                                                    ("1.5", 1.5), ("1h30m", 5400), ("500ms", 0.5), ("1e+06", 1e6)])
    def test_durations(self, text: str, seconds: float) -> None:
        assert parse_duration(text, "timeout") == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["", "abc", "10x", "-5s", "0", "s", "1m x"])
    def test_bad_durations(self, text: str) -> None:
        with pytest.raises(SettingsError, match="timeout"):
            parse_duration(text, "timeout")

    def test_lists(self) -> None:
        assert parse_list(Raw("PLUGIN_X", text="a, b,,c"), "x") == ["a", "b", "c"]
        assert parse_list(Raw("PLUGIN_X", text='["a,b", "c", 1, true]'), "x") == ["a,b", "c", "1", "true"]
        assert parse_list(Raw("--x", items=["a,b", "c"]), "x") == ["a,b", "c"]

    def test_from_secret_left_in_a_list_is_an_error(self) -> None:
        with pytest.raises(SettingsError, match="from_secret"):
            parse_list(Raw("PLUGIN_ENVS", text='[{"from_secret":"tok"}]'), "envs")
        with pytest.raises(SettingsError, match="from_secret"):
            parse_list(Raw("PLUGIN_ENVS", text='{"from_secret":"tok"}'), "envs")


class TestHosts:
    @pytest.mark.parametrize(
        ("entry", "hostname", "port", "user"),
        [
            ("web1", "web1", 22, "root"),
            ("web1:2222", "web1", 2222, "root"),
            ("deploy@web1", "web1", 22, "deploy"),
            ("deploy@web1:2200", "web1", 2200, "deploy"),
            ("[2001:db8::1]:2222", "2001:db8::1", 2222, "root"),
            ("2001:db8::1", "2001:db8::1", 22, "root"),
            ("::1", "::1", 22, "root"),
            ("me@[::1]", "::1", 22, "me"),
            ("10.0.0.5", "10.0.0.5", 22, "root"),
        ],
    )
    def test_forms(self, entry: str, hostname: str, port: int, user: str) -> None:
        host = parse_host(entry, 22, "root")
        assert (host.hostname, host.port, host.username) == (hostname, port, user)

    @pytest.mark.parametrize("entry", ["web1:0", "web1:99999", "web1:ab", "[::1", "[nothost]:22", "-oProxy=x",
                                       "a b", "web;rm", "$(id)", "@web1", "[::1]x"])
    def test_bad_entries(self, entry: str) -> None:
        with pytest.raises(SettingsError) as info:
            parse_host(entry, 22, "root")
        assert info.value.setting == "host"


class TestCommas:
    @pytest.mark.parametrize(
        ("text", "parts"),
        [
            ("a,b", ["a", "b"]),
            ("echo 'a,b',ls", ["echo 'a,b'", "ls"]),
            ('echo "x,y",ls', ['echo "x,y"', "ls"]),
            ("echo $(printf a,b),ls", ["echo $(printf a,b)", "ls"]),
            ("echo ${A:-a,b},ls", ["echo ${A:-a,b}", "ls"]),
            ("echo {a,b}.txt", ["echo {a,b}.txt"]),
            ("echo Hello, world", ["echo Hello, world"]),
            ("echo `echo a,b`,ls", ["echo `echo a,b`", "ls"]),
            ("echo a\\,b", ["echo a\\,b"]),
            ("a,", ["a"]),
        ],
    )
    def test_split_top_level(self, text: str, parts: list[str]) -> None:
        assert split_top_level(text) == parts

    def test_json_array_is_exact(self, tmp_path: Path) -> None:
        read = read_commands(Raw("PLUGIN_SCRIPT", text='["echo a,b", "ls"]'), "commands", {}, tmp_path)
        assert read.items == ["echo a,b", "ls"] and read.warning is None

    def test_block_is_one_command(self, tmp_path: Path) -> None:
        block = "if true; then\n  echo a,b\nfi\n"
        read = read_commands(Raw("PLUGIN_SCRIPT", text=block), "commands", {}, tmp_path)
        assert read.items == [block] and read.how == "block"

    def test_ambiguous_split_warns(self, tmp_path: Path) -> None:
        read = read_commands(Raw("PLUGIN_SCRIPT", text="echo a,echo b"), "commands", {}, tmp_path)
        assert read.items == ["echo a", "echo b"]
        assert read.warning and "JSON array" in read.warning

    def test_pipeline_file_recovers_list(self, tmp_path: Path) -> None:
        (tmp_path / ".drone.yml").write_text(
            "kind: pipeline\nname: default\nsteps:\n- name: build\n  image: x\n"
            "- name: deploy\n  image: sshipit\n  settings:\n    script:\n    - echo a,b\n    - ls\n"
            "    script_stop: false\n---\nkind: secret\nname: x\n"
        )
        environ = {"DRONE_STEP_NAME": "deploy"}
        read = read_commands(Raw("PLUGIN_SCRIPT", text="echo a,b,ls"), "commands", environ, tmp_path)
        assert read.items == ["echo a,b", "ls"] and read.how == "pipeline-file" and read.warning is None

    def test_pipeline_file_not_trusted_when_it_differs(self, tmp_path: Path) -> None:
        (tmp_path / ".drone.yml").write_text("steps:\n- name: deploy\n  settings:\n    script: [echo a, b]\n")
        received = "echo x,y"  # the file was templated before use: it no longer matches
        assert recover_from_pipeline_file("PLUGIN_SCRIPT", received, {"DRONE_STEP_NAME": "deploy"}, tmp_path) is None

    def test_pipeline_file_with_substitution(self, tmp_path: Path) -> None:
        (tmp_path / ".drone.yml").write_text(
            "steps:\n- name: deploy\n  settings:\n    script:\n    - echo ${DRONE_COMMIT_SHA},x\n    - echo $$HOME\n"
        )
        environ = {"DRONE_STEP_NAME": "deploy", "DRONE_COMMIT_SHA": "abc123"}
        got = recover_from_pipeline_file("PLUGIN_SCRIPT", "echo abc123,x,echo $HOME", environ, tmp_path)
        assert got == ["echo abc123,x", "echo $HOME"]

    def test_woodpecker_map_steps(self, tmp_path: Path) -> None:
        folder = tmp_path / ".woodpecker"
        folder.mkdir()
        (folder / "deploy.yml").write_text(
            "steps:\n  ship:\n    image: sshipit\n    settings:\n      script-stop: true\n"
            "      commands: ['echo 1,2', 'echo 3']\n"
        )
        environ = {"CI_STEP_NAME": "ship"}
        assert recover_from_pipeline_file("PLUGIN_COMMANDS", "echo 1,2,echo 3", environ, tmp_path) == [
            "echo 1,2", "echo 3"]

    def test_substitute(self) -> None:
        assert substitute("a ${X} $$ $Y ${NOPE}", {"X": "1"}) == "a 1 $ $Y "


class TestRules:
    def test_masker_masks_whole_and_key_lines(self) -> None:
        key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\nAAAA\n-----END"
        masker = Masker(["hunter22", key])
        assert masker("pw=hunter22") == "pw=********"
        assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU" not in masker("line b3BlbnNzaC1rZXktdjEAAAAABG5vbmU= end")

    @pytest.mark.parametrize("path", ["/etc", "..", "../x", "a/../../b", ".", "", "a/.."])
    def test_relative_paths_cannot_escape(self, path: str) -> None:
        with pytest.raises(SettingsError):
            clean_relative(path, "delete")

    def test_relative_paths_normalised(self) -> None:
        assert clean_relative("a/./b/", "delete") == "a/b"
        assert clean_relative("-rf", "delete") == "-rf"

    @pytest.mark.parametrize(("target", "normal"), [("~/app", "app"), ("~", "."), ("/srv/app/", "/srv/app"),
                                                     ("//srv//app", "/srv/app"), ("app", "app")])
    def test_targets(self, target: str, normal: str) -> None:
        assert remote_target(target) == normal

    @pytest.mark.parametrize("target", ["/", "~other/x", "../x", "a\nb", "/srv/../.."])
    def test_bad_targets(self, target: str) -> None:
        with pytest.raises(SettingsError):
            remote_target(target)


class TestRemoteCommands:
    def test_staged_upload_is_one_and_chain(self) -> None:
        """Every step depends on the one before: a failed `cd` must stop everything (no `;` at top level)."""
        import shlex

        from sshipit.staging import staged_extract

        command = " && ".join(["cd -- /t", *staged_extract("tar -xf -", True, ["x"], "n")])
        command = command.replace("\\;", "EXEC_END")  # find -exec's terminator is an argument, not a separator
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        depth, top_level = 0, []
        for token in lexer:
            depth += token.count("{") + token.count("(") - token.count("}") - token.count(")")
            if depth == 0 and token in (";", "||", "&", "|"):
                top_level.append(token)
        assert top_level == []


def settings_table() -> str:
    """The README's settings table as the catalogue makes it: one row per setting, in the catalogue's order."""
    rows = ["| setting | aliases | meaning | default |", "|---|---|---|---|"]
    for setting in CATALOGUE:
        aliases = ", ".join(f"`{alias}`" for alias in setting.aliases)
        rows.append(f"| `{setting.name}` | {aliases} | {setting.help} | {setting.default or ''} |")
    return "\n".join(rows) + "\n"


def test_the_readme_settings_table_is_the_catalogue() -> None:
    """Every setting, alias, meaning and default in the README is the catalogue's (flags and help come from it too)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    expected = settings_table()
    assert expected in readme, f"README.md's settings table differs from the catalogue; it should read:\n{expected}"


def test_help_lists_every_setting_as_a_flag() -> None:
    """`sshipit --help` works and names every setting's flag, with its help text (a `%` in one must not break it)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "sshipit", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for setting in CATALOGUE:
        assert f"--{setting.name.replace('_', '-')}" in result.stdout, setting.name
    assert "(%h %p %r %n expanded" in text
