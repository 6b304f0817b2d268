"""What the command remembers of the tools between calls (llmrun/check_cache.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmrun import check_cache
from llmrun.cli.app import app

from .cli_support import claude_fake, only_installed, private_state
from .conftest import FAKE_BIN, ROOT, FakeRun

cli = CliRunner()

SECRET = "sk-ant-not-a-real-key-0123456789"


@pytest.fixture(autouse=True)
def state_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return private_state(monkeypatch, tmp_path)


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    """The claude fake, through a launcher of this test's own (its mtime is the test's to change);
    every other runner looks not installed."""
    run = next(claude_fake(monkeypatch, tmp_path))
    launcher = tmp_path / "bin" / "claude"
    launcher.parent.mkdir()
    launcher.write_text(f'#!/bin/sh\nexec {FAKE_BIN / "claude"} "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_BIN", str(launcher))
    only_installed(monkeypatch, "claude_code")
    yield run
    for pid in run.pids():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def checks(run: FakeRun) -> list[list[str]]:
    """The version and login checks the fake was run for, in no particular order."""
    return [inv["argv"] for inv in run.invocations() if inv["argv"][:1] in (["--version"], ["auth"])]


def runners_json(*args: str) -> dict[str, Any]:
    result = cli.invoke(app, ["runners", "--json", *args])
    assert result.exit_code == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def cache_file() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(check_cache.cache_path().read_text())
    return data


def kept(kind: str, runner: str = "claude_code") -> dict[str, Any]:
    """The latest entry of a kind for a runner."""
    entry: dict[str, Any] = cache_file()[kind][runner][0]
    return entry


def test_a_second_runners_runs_no_tool(claude: FakeRun) -> None:
    first = runners_json()["claude_code"]
    assert sorted(checks(claude)) == [["--version"], ["auth", "status"]]
    count = len(claude.invocations())
    second = runners_json()["claude_code"]
    assert len(claude.invocations()) == count  # nothing started at all
    assert (second["version"], second["authenticated"], second["status"]) == ("2.1.197", True, "ok")
    assert (first["version"], first["authenticated"], first["status"]) == ("2.1.197", True, "ok")
    assert "--refresh" in second["message"]  # a remembered login says so


def test_a_changed_binary_is_checked_again(claude: FakeRun, tmp_path: Path) -> None:
    runners_json()
    runners_json()
    assert len(checks(claude)) == 2
    launcher = tmp_path / "bin" / "claude"
    info = launcher.stat()
    os.utime(launcher, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # as an upgrade does
    before = len(checks(claude))
    assert runners_json()["claude_code"]["version"] == "2.1.197"
    assert sorted(checks(claude)[before:]) == [["--version"], ["auth", "status"]]


def test_refresh_checks_again_and_keeps_the_answers(claude: FakeRun) -> None:
    runners_json()
    runners_json("--refresh")
    assert len(checks(claude)) == 4
    result = cli.invoke(app, ["health", "--refresh", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["version"] == "2.1.197"
    assert len(checks(claude)) == 6
    runners_json()
    result = cli.invoke(app, ["health", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["status"] == "ok"
    assert len(checks(claude)) == 6


def test_health_probe_never_takes_what_was_remembered(claude: FakeRun) -> None:
    runners_json()
    before = len(checks(claude))
    result = cli.invoke(app, ["health", "--probe", "--json"])
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)[0]["message"] == "probe answered"
    assert sorted(checks(claude)[before:]) == [["--version"], ["auth", "status"]]


def test_a_run_failing_on_authentication_forgets_the_login(claude: FakeRun) -> None:
    runners_json()
    assert "claude_code" in cache_file()["logins"]
    claude.scenario("mock-401-stream")
    result = cli.invoke(app, ["chat", "-r", "claude", "hi"])
    assert result.exit_code == 4, result.stderr  # AuthenticationError
    assert "claude_code" not in cache_file()["logins"]
    assert "claude_code" in cache_file()["versions"]
    before = len(checks(claude))
    runners_json()
    assert checks(claude)[before:] == [["auth", "status"]]  # the version is still known


def test_login_is_kept_only_for_the_seconds_configured(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_LOGIN_CACHE_SECONDS", "0")
    runners_json()
    runners_json()
    assert sorted(checks(claude)) == [["--version"], ["auth", "status"], ["auth", "status"]]


def test_another_environment_checks_the_login_again(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    runners_json()
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", '[[["auth","status"],"auth-status"]]')  # logged out
    row = runners_json()["claude_code"]
    assert row["status"] == "unauthenticated" and row["authenticated"] is False


def test_a_few_environments_are_kept_apart(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    runners_json()
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/.venv")  # as activating a virtualenv does
    runners_json()
    monkeypatch.delenv("VIRTUAL_ENV")
    assert runners_json()["claude_code"]["authenticated"] is True
    assert sorted(checks(claude)) == [["--version"], ["auth", "status"], ["auth", "status"]]
    for n in range(check_cache.KEPT + 1):
        monkeypatch.setenv("PROJECT", str(n))
        runners_json()
    assert len(cache_file()["logins"]["claude_code"]) == check_cache.KEPT


def test_a_corrupt_cache_file_is_ignored_and_rewritten(claude: FakeRun) -> None:
    path = check_cache.cache_path()
    path.parent.mkdir(parents=True)
    for garbage in (
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"format": 1, "versions": [], "logins": {"claude_code": 3}}',
        b'{"format": 1, "versions": {"claude_code": [1, "x", {"key": 2}]}, "logins": {"claude_code": {}}}',
    ):
        path.write_bytes(garbage)
        assert runners_json()["claude_code"]["version"] == "2.1.197"
        assert kept("versions")["version"] == "2.1.197"
        assert kept("logins")["authenticated"] is True


def test_the_cache_holds_versions_models_and_login_booleans_only(
    claude: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    claude.scenario("mock-stream-json-partial")
    runners_json()
    listing(monkeypatch, ["claude-next", "claude-other"])
    assert cli.invoke(app, ["models", "-r", "listing", "--json"]).exit_code == 0
    text = check_cache.cache_path().read_text()
    assert SECRET not in text and "auth method" not in text and "apiKey" not in text
    data = json.loads(text)
    assert set(data) == {"format", "versions", "logins", "models"}
    fields = {"versions": {"version": str}, "logins": {"authenticated": (bool, type(None))}, "models": {"models": list}}
    for kind, runners in data.items():
        if kind == "format":
            continue
        for entry in (entry for entries in runners.values() for entry in entries):
            assert set(entry) == {"key", "checked", *fields[kind]}
            assert len(entry["key"]) == 64 and int(entry["key"], 16) >= 0 and isinstance(entry["checked"], float)
            for name, kind_of in fields[kind].items():
                assert isinstance(entry[name], kind_of)
    assert kept("models", "listing")["models"] == ["claude-next", "claude-other"]
    folder = check_cache.cache_path().parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(check_cache.cache_path().stat().st_mode) == 0o600


def listing(monkeypatch: pytest.MonkeyPatch, found: list[str]) -> list[int]:
    """A runner `listing` whose tool lists `found`; the list returned counts the askings."""
    from llmrun import registry
    from llmrun.runners.claude_code import ClaudeCodeRunner

    asked: list[int] = []

    class Listing(ClaudeCodeRunner):
        name = "listing"

        async def discover_models(self, binary: str) -> list[str]:
            asked.append(1)
            return found

    monkeypatch.setattr(sys.modules[__name__], "Listing", Listing, raising=False)
    monkeypatch.setitem(registry.BUILTIN, "listing", f"{__name__}:Listing")
    monkeypatch.setenv("LLMRUN_LISTING_BIN", os.environ["LLMRUN_CLAUDE_CODE_BIN"])
    return asked


def test_models_are_asked_once_until_refreshed(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = listing(monkeypatch, ["claude-next"])
    for args in ([], [], ["--refresh"], []):
        result = cli.invoke(app, ["models", "-r", "listing", "--json", *args])
        assert result.exit_code == 0, result.stderr
        assert "claude-next" in {m["id"] for m in json.loads(result.stdout)}
    assert len(asked) == 2


def test_an_empty_list_of_models_is_not_kept(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = listing(monkeypatch, [])
    for _ in range(2):
        assert cli.invoke(app, ["models", "-r", "listing", "--json"]).exit_code == 0
    assert len(asked) == 2


# --- chat without -r ---------------------------------------------------------------------------


def test_chat_without_runner_takes_the_remembered_checks(claude: FakeRun) -> None:
    for _ in range(2):
        result = cli.invoke(app, ["chat", "hi"])
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "Hello from mock\n"
    assert sorted(checks(claude)) == [["--version"], ["auth", "status"]]
    assert len(claude.invocations()) == 4  # two checks, two answers


def test_a_remembered_choice_loads_no_other_runner(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun import registry

    assert cli.invoke(app, ["chat", "hi"]).exit_code == 0
    loaded: list[str] = []
    get_runner = registry.get_runner

    def counting(name: str, **settings: Any) -> Any:
        loaded.append(name)
        return get_runner(name, **settings)

    monkeypatch.setattr(registry, "get_runner", counting)
    assert cli.invoke(app, ["chat", "hi"]).exit_code == 0
    assert set(loaded) == {"claude_code"}
    monkeypatch.setenv("LLMRUN_LOGIN_CACHE_SECONDS", "0")  # nothing to go by: every runner is checked at once
    loaded.clear()
    assert cli.invoke(app, ["chat", "hi"]).exit_code == 0
    assert set(loaded) == set(registry.runner_names())


@pytest.mark.parametrize("prompt", ["", "  \n"])
def test_an_empty_prompt_is_refused_before_any_tool_is_checked(claude: FakeRun, prompt: str) -> None:
    result = cli.invoke(app, ["chat", prompt])
    assert result.exit_code == 2
    assert "InvalidRequest: the request has no message to send" in result.stderr
    assert claude.invocations() == []


def test_a_login_since_the_last_check_is_seen(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.runners.claude_code import ClaudeCodeRunner

    logged_in = False

    async def check_auth(self: ClaudeCodeRunner, binary: str) -> tuple[bool | None, str]:
        return logged_in, "as the test says"

    monkeypatch.setattr(ClaudeCodeRunner, "check_auth", check_auth)
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 4 and "logged out: claude_code" in result.stderr
    assert kept("logins")["authenticated"] is False
    logged_in = True  # the user followed the hint; the remembered "no" must not stand in the way
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 0, result.stderr
    assert kept("logins")["authenticated"] is True


# --- the file -----------------------------------------------------------------------------------

WRITER = """
import asyncio, sys
from llmrun import check_cache

class Runner:
    env = {}
    extra_args = []
    def __init__(self, name):
        self.name = name
    async def check_auth(self, binary):
        return True, ""

async def main():
    with check_cache.used():
        for i in range(25):
            await check_cache.login(Runner(f"{sys.argv[1]}-{i}"), sys.executable)

asyncio.run(main())
"""


def test_concurrent_writers_lose_nothing() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, name], env=env, cwd=ROOT) for name in ("first", "second")
    ]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    logins = cache_file()["logins"]
    assert set(logins) == {f"{name}-{i}" for name in ("first", "second") for i in range(25)}


def test_nothing_is_kept_outside_the_command(claude: FakeRun) -> None:
    import asyncio

    from llmrun import get_runner

    report = asyncio.run(get_runner("claude_code").health())
    assert report.status == "ok"
    assert not check_cache.cache_path().exists()
