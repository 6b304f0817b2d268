"""Runners defined in the config file, against the fakes fixtures/bin/text-cli and jsonl-cli.

The JSON-lines one (`jsonl_cli`, JSONL_CLI_CONFIG) also runs the whole contract suite; these
tests cover what is particular to a runner made of configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmrun
from llmrun import ChatRequest, Message
from llmrun.cli.app import app
from llmrun.registry import canonical_name, get_runner, get_runner_class, runner_names
from llmrun.runners.configured import JsonlParser, JsonlSpec, Pick, render_command

from .conftest import FAKE_BIN, FAKE_TOOLS, JSONL_CLI_CONFIG, FakeRun, FakeTool, is_alive, still_alive

cli = CliRunner()

ANSWER = "Hello from the text tool.\nIt streams line by line,\nas plain text."

TEXT_CONFIG = """\
[runners.texty]
command = ["text-cli", "--model", "{model}", "--system", "{system}", "--color=never"]
models = ["mini", "maxi"]
version_command = ["text-cli", "--version"]
install_hint = "pipx install text-cli"
stall_timeout = 30
env = { NO_COLOR = "1" }
"""


def start(tool: FakeTool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    record = tmp_path / "record"
    record.mkdir()
    run = FakeRun(tool, monkeypatch, record)
    yield run
    for pid in run.pids():
        if is_alive(pid):
            os.kill(pid, 9)


@pytest.fixture
def texty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    """The text runner `texty`, its program found through LLMRUN_TEXTY_BIN."""
    yield from start(FakeTool("texty", "answer", ANSWER, config=TEXT_CONFIG), monkeypatch, tmp_path)


@pytest.fixture
def jsonl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    (tool,) = [t for t in FAKE_TOOLS if t.runner == "jsonl_cli"]
    yield from start(tool, monkeypatch, tmp_path)


def redefine(run: FakeRun, text: str) -> None:
    """Another definition in the same config file (LLMRUN_<NAME>_BIN still points at the fake)."""
    Path(os.environ["LLMRUN_CONFIG"]).write_text(text)


def write_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    monkeypatch.setenv("LLMRUN_CONFIG", str(path))
    return path


async def collect(runner: llmrun.Runner, request: ChatRequest) -> list[llmrun.ChatChunk]:
    async with aclosing(runner.stream(request)) as stream:
        return [chunk async for chunk in stream]


# --- end to end through `llmrun chat` --------------------------------------------------------


def test_chat_runs_a_text_runner_found_on_path(texty: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMRUN_TEXTY_BIN")
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    result = cli.invoke(app, ["chat", "-r", "texty", "Say hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ANSWER + "\n"
    (invocation,) = texty.invocations()
    # No model and no system prompt: both options are gone, the literal one stays.
    assert invocation["argv"] == ["--color=never"]
    assert invocation["stdin"] == "Say hi"
    assert invocation["env"]["NO_COLOR"] == "1"


def test_chat_with_model_and_system_fills_the_template(texty: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "texty", "-m", "maxi", "-s", "Be terse", "--json", "Say hi"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["content"] == ANSWER and body["runner"] == "texty" and body["model"] == "maxi"
    (invocation,) = texty.invocations()
    assert invocation["argv"] == ["--model", "maxi", "--system", "Be terse", "--color=never"]


def test_chat_jsonl_runner_reports_usage_session_and_cost(jsonl: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "jsonl-cli", "--json", "Say hi"])  # "-" finds "_"
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["content"] == "Hello from mock" and body["runner"] == "jsonl_cli"
    assert body["session_id"] == "sess-7f3a2c" and body["model"] == "mock-large"
    assert body["usage"]["input_tokens"] == 12 and body["usage"]["cache_read_tokens"] == 3
    assert body["cost_usd"] == pytest.approx(0.00042)
    (invocation,) = jsonl.invocations()
    assert invocation["argv"] == ["--model", "mock-large", "--format", "jsonl"]


def test_chat_streams_pieces_before_the_tool_exits(texty: FakeRun) -> None:
    texty.delay(0.4)
    child = subprocess.Popen(
        [sys.executable, "-m", "llmrun", "chat", "-r", "texty", "--jsonl", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        first = json.loads(child.stdout.readline())
        (invocation,) = texty.invocations()
        assert first["delta"] == "Hello from the text tool."
        assert not texty.exited(invocation["pid"]), "the first piece came only after the tool had finished"
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.communicate()


def test_chat_reports_a_failing_tool_with_its_stderr(texty: FakeRun) -> None:
    texty.scenario("model-error")
    result = cli.invoke(app, ["chat", "-r", "texty", "--json", "hi"])
    assert result.exit_code == 11  # ProcessFailed
    error = json.loads(result.stdout.splitlines()[-1])["error"]
    assert error["type"] == "ProcessFailed" and error["exit_code"] == 2
    assert "model 'mock-huge' is not available" in error["stderr"]
    assert "model 'mock-huge' is not available" in error["message"]


# --- the command line --------------------------------------------------------------------------


VALUES = {"model": "", "system": "", "prompt": "the prompt"}


@pytest.mark.parametrize(
    ("template", "values", "argv"),
    [
        (["t", "--model", "{model}", "-s", "{system}", "-q"], {}, ["t", "-q"]),
        (["t", "--model", "{model}"], {"model": "m1"}, ["t", "--model", "m1"]),
        (["t", "--model={model}", "--system={system}"], {"system": "S"}, ["t", "--system=S"]),
        (["t", "run", "{model}"], {}, ["t", "run"]),  # a word that is no option stays
        (["t", "--x", "model:{model}"], {}, ["t", "--x", "model:"]),  # not only a placeholder: kept
        (["t", "{{model}}", '{"a": 1}'], {"model": "m"}, ["t", "{model}", '{"a": 1}']),
        (["t", "-p", "{prompt}"], {"prompt": "-x"}, ["t", "-p", " -x"]),
        (["t", "--", "{prompt}"], {"prompt": "-x"}, ["t", "--", "-x"]),
        (["t", "--prompt={prompt}"], {"prompt": "-x"}, ["t", "--prompt=-x"]),
        (["t", "--system", "{system}"], {"system": "- be terse"}, ["t", "--system", " - be terse"]),
    ],
)
def test_placeholders_fill_and_empty_options_drop(template: list[str], values: dict[str, str], argv: list[str]) -> None:
    assert render_command(tuple(template), {**VALUES, **values}) == argv


def test_an_argument_over_128_kib_is_refused() -> None:
    big = "x" * (128 * 1024)
    with pytest.raises(llmrun.UnsupportedFeature, match="the prompt is over the 128 KiB") as caught:
        render_command(("t", "{prompt}"), {**VALUES, "prompt": big})
    assert caught.value.hint and "stdin" in caught.value.hint
    with pytest.raises(llmrun.UnsupportedFeature, match="the system prompt"):
        render_command(("t", "--system={system}"), {**VALUES, "system": big})
    assert render_command(("t", "{prompt}"), {**VALUES, "prompt": big[:-1]})[1] == big[:-1]


async def test_prompt_goes_on_stdin_unless_the_command_takes_it(texty: FakeRun) -> None:
    redefine(texty, TEXT_CONFIG.replace('"--color=never"', '"--color=never", "--prompt", "{prompt}"'))
    runner = texty.runner()
    assert runner.capabilities.prompt_via_stdin is False
    assert (await runner.complete(ChatRequest.of("-v means verbose?"))).content == ANSWER
    (invocation,) = texty.invocations()
    assert invocation["argv"] == ["--color=never", "--prompt", " -v means verbose?"]
    assert invocation["stdin"] == ""

    with pytest.raises(llmrun.UnsupportedFeature) as caught:
        await runner.complete(ChatRequest.of("long " * 40_000))
    assert caught.value.runner == "texty"
    assert len(texty.invocations()) == 1  # refused before anything ran


async def test_system_prompt_without_a_place_in_the_command_leads_the_prompt(texty: FakeRun) -> None:
    redefine(texty, TEXT_CONFIG.replace('"--system", "{system}", ', ""))
    request = ChatRequest(messages=[Message.system("Be terse"), Message.user("Say hi")])
    await texty.runner().complete(request)
    (invocation,) = texty.invocations()
    assert invocation["argv"] == ["--color=never"]
    assert invocation["stdin"].startswith("<system_instructions>\nBe terse\n</system_instructions>")
    assert invocation["stdin"].endswith("Say hi")


async def test_a_model_cannot_be_asked_of_a_command_without_model(texty: FakeRun) -> None:
    redefine(texty, TEXT_CONFIG.replace('"--model", "{model}", ', ""))
    with pytest.raises(llmrun.UnsupportedFeature, match=re.escape("no {model}")) as caught:
        await texty.runner().complete(ChatRequest.of("hi", model="maxi"))
    assert caught.value.hint and "{model}" in caught.value.hint
    assert texty.invocations() == []


async def test_a_session_to_resume_is_refused(jsonl: FakeRun) -> None:
    runner = jsonl.runner()
    assert runner.capabilities.sessions is False
    with pytest.raises(llmrun.UnsupportedFeature, match="no sessions"):
        await runner.complete(ChatRequest.of("hi", session_id="sess-7f3a2c"))


# --- reading the output --------------------------------------------------------------------


async def test_text_output_keeps_inner_newlines_and_drops_the_last(texty: FakeRun) -> None:
    texty.fault("split_writes")
    chunks = await collect(texty.runner(), ChatRequest.of("hi"))
    assert "".join(c.delta for c in chunks) == ANSWER
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is None
    texty.scenario("multibyte")
    assert (await texty.runner().complete(ChatRequest.of("hi"))).content == "Héllo wörld\n日本語 🙂"


async def test_terminal_escapes_are_not_answer_text(texty: FakeRun) -> None:
    texty.fault("garbage")
    assert (await texty.runner().complete(ChatRequest.of("hi"))).content == ANSWER


async def test_openai_chunks_read_through_indexed_paths(jsonl: FakeRun) -> None:
    redefine(
        jsonl,
        JSONL_CLI_CONFIG.split("[runners.jsonl_cli.jsonl]")[0]
        + """
[runners.jsonl_cli.jsonl]
type_key = "object"
delta = { path = "choices.0.delta.content", type = ["chat.completion.chunk"] }
model = "model"
[runners.jsonl_cli.jsonl.usage]
input_tokens = "usage.prompt_tokens"
output_tokens = "usage.completion_tokens"
""",
    )
    jsonl.scenario("openai")
    runner = jsonl.runner()
    assert runner.capabilities.usage and not runner.capabilities.cost
    chunks = await collect(runner, ChatRequest.of("hi"))
    assert [c.delta for c in chunks if c.delta] == ["Hello", " from", " mock"]
    final = chunks[-1]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)
    assert final.model == "gpt-mock" and final.session_id is None
    # No `done` configured: a clean exit ends the answer, even a short one.
    jsonl.fault("stop_after=2,exit=0")
    assert (await runner.complete(ChatRequest.of("hi"))).content == "Hello"


async def test_final_text_is_used_only_when_no_piece_came(jsonl: FakeRun) -> None:
    jsonl.scenario("whole")
    chunks = await collect(jsonl.runner(), ChatRequest.of("hi"))
    assert [c.delta for c in chunks if c.delta] == ["Hello from mock"]
    jsonl.scenario("stream")  # its end event repeats the whole text after the pieces
    assert (await jsonl.runner().complete(ChatRequest.of("hi"))).content == "Hello from mock"


async def test_thinking_has_its_own_path(jsonl: FakeRun) -> None:
    jsonl.scenario("thinking")
    response = await jsonl.runner().complete(ChatRequest.of("hi"))
    assert response.thinking == "The user greets me." and response.content == "Hello from mock"


async def test_an_error_event_wins_over_a_clean_exit(jsonl: FakeRun) -> None:
    jsonl.scenario("error-401")
    jsonl.fault("exit=0")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await jsonl.runner().complete(ChatRequest.of("hi"))
    assert str(caught.value).startswith("401 Unauthorized: invalid API key")
    assert caught.value.process_exit_code == 0 and "jsonl-cli: 401" in caught.value.stderr


def test_parser_picks_by_path_and_type() -> None:
    spec = JsonlSpec(
        type_key=("event", "kind"),
        picks={
            "delta": Pick(("parts", "-1", "text"), ("chunk", "piece")),
            "session_id": Pick(("meta", "id")),
            "error": Pick(("error",), ("failure",)),
            "done": Pick(None, ("finish",)),
        },
        usage={"output_tokens": Pick(("n",), ("finish",))},
    )
    parser = JsonlParser(spec, model="m")
    lines = [
        "not json",
        '{"event": {"kind": "chunk"}, "parts": [{"text": "no"}, {"text": "Hel"}]}',
        '{"event": {"kind": "other"}, "parts": [{"text": "skipped"}]}',
        '{"event": {"kind": "piece"}, "parts": [{"text": "lo"}], "meta": {"id": 42}}',
        '{"event": {"kind": "piece"}, "parts": {"0": {"text": "a dict is no list"}}}',
        '{"event": {"kind": "failure"}, "error": {"message": "quota exceeded", "code": 9}}',
        '{"event": {"kind": "finish"}, "n": "7"}',
    ]
    deltas = [c.delta for line in lines for c in parser.feed(line)]
    assert deltas == ["Hel", "lo"]
    assert parser.finished and isinstance(parser.error, llmrun.RateLimitError)
    (final,) = parser.close()
    assert final.session_id == "42" and final.usage is not None and final.usage.output_tokens == 7


# --- health ----------------------------------------------------------------------------------


def test_health_runs_the_version_command_and_checks_no_login(texty: FakeRun) -> None:
    result = cli.invoke(app, ["health", "-r", "texty", "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["status"] == "ok" and report["version"] == "0.9.1"
    assert report["authenticated"] is None and report["binary"] == str(FAKE_BIN / "text-cli")
    (invocation,) = texty.invocations()
    assert invocation["argv"] == ["--version"]


async def test_health_not_installed_says_how_to_install(texty: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_TEXTY_BIN", "/nonexistent/text-cli")
    report = await texty.runner().health()
    assert report.status == "not_installed" and report.hint and "pipx install text-cli" in report.hint
    redefine(texty, TEXT_CONFIG.replace('install_hint = "pipx install text-cli"\n', ""))
    report = await texty.runner().health()
    assert report.status == "not_installed" and report.hint and "command" in report.hint


async def test_health_is_an_error_when_the_version_command_fails(
    texty: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", '[[["--version"], "version-unsupported"]]')
    report = await texty.runner().health()
    assert report.status == "error" and "exited with 2" in report.message
    assert "unrecognized arguments" in report.message
    redefine(texty, TEXT_CONFIG.replace('version_command = ["text-cli", "--version"]\n', ""))
    report = await texty.runner().health()
    assert report.status == "ok" and report.version is None
    assert len(texty.invocations()) == 1  # the failed version command only: nothing runs now


def test_runners_and_models_list_the_defined_runners(texty: FakeRun) -> None:
    result = cli.invoke(app, ["runners", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.stdout) if r["name"] == "texty"]
    assert row["installed"] and row["version"] == "0.9.1" and row["status"] == "ok"
    assert row["capabilities"]["prompt_via_stdin"] and not row["capabilities"]["usage"]
    result = cli.invoke(app, ["models", "-r", "texty", "--json"])
    assert [m["id"] for m in json.loads(result.stdout)] == ["mini", "maxi"]


# --- timeouts leave nothing behind ------------------------------------------------------------


async def test_stall_timeout_kills_the_tool_and_what_it_started(texty: FakeRun) -> None:
    runner = texty.runner()
    assert runner.stall_timeout == 30  # from the definition's table
    texty.fault("hang_after=1,grandchild,ignore_sigterm")
    with pytest.raises(llmrun.RunnerTimeout, match="stall"):
        await runner.complete(ChatRequest.of("hi", stall_timeout=1))
    assert len(texty.pids()) == 2
    assert still_alive(texty.pids(), within=1) == []


async def test_hard_timeout_from_the_definition(texty: FakeRun) -> None:
    redefine(texty, TEXT_CONFIG + "timeout = 1\n")
    texty.delay(0.6)
    with pytest.raises(llmrun.RunnerTimeout, match="time limit") as caught:
        await texty.runner().complete(ChatRequest.of("hi"))
    assert caught.value.runner == "texty"
    assert still_alive(texty.pids(), within=1) == []


async def test_cancelling_a_run_kills_the_tool(texty: FakeRun) -> None:
    texty.fault("hang_after=1,grandchild")
    task = asyncio.ensure_future(texty.runner().complete(ChatRequest.of("hi")))
    deadline = time.monotonic() + 20
    while len(texty.pids()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert still_alive(texty.pids(), within=1) == []


# --- the registry ------------------------------------------------------------------------------


def test_registry_finds_defined_runners(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, TEXT_CONFIG + JSONL_CLI_CONFIG)
    names = runner_names()
    assert names[-2:] == ["texty", "jsonl_cli"] and "claude_code" in names
    assert canonical_name("JSONL-CLI") == "jsonl_cli" and canonical_name("claude") == "claude_code"
    cls = get_runner_class("texty")
    assert cls.display_name == "texty" and cls.binary == "text-cli"
    runner = get_runner("jsonl_cli", default_model="mock-small")
    assert runner.name == "jsonl_cli" and runner.display_name == "JSONL CLI" and runner.default_model == "mock-small"
    assert [m.id for m in runner.known_models()] == ["mock-small", "mock-large"]
    with pytest.raises(llmrun.RunnerNotFound, match="texty, jsonl_cli"):
        get_runner_class("nope")


def test_config_is_read_only_for_names_that_are_not_built_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, "not toml = = 1\n")
    assert get_runner_class("claude").name == "claude_code"
    assert canonical_name("gemini-cli") == "gemini" and canonical_name("texty") == "texty"
    for look_up in (runner_names, lambda: get_runner_class("texty"), lambda: canonical_name("my-tool")):
        with pytest.raises(llmrun.ConfigError, match="cannot read the config file"):
            look_up()


# --- validation ------------------------------------------------------------------------------

RUNNER = '[runners.mytool]\ncommand = ["mytool"]\n'


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ('[runners.mytool]\ncommand = "mytool --x"\n', "[runners.mytool] command", "expected a list of strings"),
        ("[runners.mytool]\ncommand = []\n", "[runners.mytool] command", "the program first"),
        ('[runners.mytool]\ncommand = ["{model}"]\n', "[runners.mytool] command", "cannot be a placeholder"),
        ('[runners.mytool]\ncommand = ["t", "{modle}"]\n', "[runners.mytool] command", "unknown placeholder {modle}"),
        (RUNNER + 'output = "xml"\n', "[runners.mytool] output", 'expected "text" or "jsonl"'),
        (RUNNER + 'outptu = "text"\n', "[runners.mytool]", "unknown key 'outptu'"),
        (RUNNER + 'models = "a"\n', "[runners.mytool] models", "expected a list of model names"),
        (RUNNER + "version_command = []\n", "[runners.mytool] version_command", "the program first"),
        (RUNNER + "display_name = 3\n", "[runners.mytool] display_name", "expected a string"),
        (RUNNER + 'timeout = "soon"\n', "[runners.mytool] timeout", "expected a number of seconds"),
        (RUNNER + "env = { A = 1 }\n", "[runners.mytool] env", "expected a table of strings"),
        (RUNNER + 'output = "jsonl"\n', "[runners.mytool]", "needs a [runners.mytool.jsonl] table"),
        (RUNNER + '[runners.mytool.jsonl]\ndelta = "a"\n', "[runners.mytool] jsonl", 'only read with output = "jsonl"'),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\ndelta = "a..b"\n',
            "[runners.mytool.jsonl] delta",
            "expected a dotted path",
        ),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\ndeltas = "a"\n',
            "[runners.mytool.jsonl]",
            "unknown key 'deltas'",
        ),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\nsession_id = "s"\n',
            "[runners.mytool.jsonl]",
            "no `delta` and no `text`",
        ),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\ndelta = { path = "t", type = 3 }\n',
            "[runners.mytool.jsonl] delta type",
            "expected a string or a list of strings",
        ),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\ndelta = { type = "x" }\n',
            "[runners.mytool.jsonl] delta",
            "expected a `path`",
        ),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\ndelta = "t"\ndone = {}\n',
            "[runners.mytool.jsonl] done",
            "expected a `path` or a `type`",
        ),
        (
            RUNNER + 'output = "jsonl"\n[runners.mytool.jsonl]\ndelta = "t"\nusage = { tokens = "n" }\n',
            "[runners.mytool.jsonl] usage",
            "unknown key 'tokens'",
        ),
        ('[runners.MyTool]\ncommand = ["t"]\n', "[runners.MyTool]", "lower-case letters, digits and underscores"),
        ('[runners.codex]\ncommand = ["t"]\n', "[runners.codex] command", "'codex' is already a runner's name"),
        ('[runners.claude]\ncommand = ["t"]\n', "[runners.claude] command", "(it names claude_code)"),
        ('[runners.mytool]\ncomand = ["t"]\n', "[runners.mytool]", "unknown runner 'mytool'"),
    ],
)
def test_invalid_definitions_name_file_table_and_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, where: str, expected: str
) -> None:
    path = write_config(monkeypatch, tmp_path, text)
    result = cli.invoke(app, ["runners"])
    assert result.exit_code == 2, result.output
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"llmrun: ConfigError: {path}: {where}") and expected in line, line
    assert "Traceback" not in result.stderr


def test_a_table_without_command_is_told_how_to_define_a_runner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_config(monkeypatch, tmp_path, '[runners.mytool]\noutput = "text"\n')
    result = cli.invoke(app, ["models"])
    assert result.exit_code == 2
    assert "a table with a `command` defines a runner of your own" in result.stderr


def test_a_built_in_table_keeps_its_own_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, '[runners.claude_code]\nmodels = ["x"]\n')
    with pytest.raises(llmrun.ConfigError, match="unknown key 'models'"):
        get_runner("claude_code")
    write_config(monkeypatch, tmp_path, '[runners.claude_code]\ncommand = ["x"]\n')
    with pytest.raises(llmrun.ConfigError, match="claude_code is a built-in runner"):
        get_runner("claude_code")
