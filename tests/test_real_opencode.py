"""End to end: llmrun's OpencodeRunner driving the real `opencode` against tests/mock_openai_chat.py.

Every test runs the installed OpenCode (CI installs it with `npm install -g opencode-ai`)
in a throwaway HOME (`realcli.opencode_env`), with the mock OpenAI Chat Completions API on
127.0.0.1 as provider `mock` in OPENCODE_CONFIG_CONTENT and a fake key. Run them inside a
loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_opencode.py'

They are skipped when `opencode` is not installed.

opencode 1.18.33 retries a 429 and a 5xx answer with back-off (about 2, 4, 8, 17 s) and no
end, printing nothing on stdout meanwhile; with no provider configured it does the same
with its hosted default model, unreachable from the namespace. The tests show that
llmrun's timeouts end such runs with an error that quotes opencode's last logged failure
and says what to configure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.opencode import OpencodeRunner

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, THINKING_DELTAS, TOOL_PREAMBLE, MockOpenAIChat
from realcli import assert_no_processes_in, become, opencode_env, opencode_provider, processes_in, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 40.0  # hard limit given to every run: a broken run fails instead of hanging
KILL_GRACE = 3.0
# Limits of the runs that only a timeout ends: opencode prints nothing while it starts (10 s and
# more on a loaded machine) or retries, so a shorter one would end it before it called the API.
STARTUP_ALLOWANCE = 30.0  # process.Limits().kill_grace: SIGTERM, then SIGKILL after this long
MARKER = "mock-tool-ran"
SHELL_CALL = {"command": f"echo {MARKER} > marker.txt; echo {MARKER}", "description": "Leave a marker"}
WRITE_TOOLS = {"bash", "edit", "write", "webfetch", "task"}


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def opencode_binary() -> str:
    """Skips every test of this module, with the install command, when opencode is absent."""
    return require_binary("opencode")


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_url: str | None) -> dict[str, str]:
    """Make this process's environment the isolated one that opencode must see."""
    isolated = opencode_env(tmp_path, base_url)
    return become(monkeypatch, tmp_path, isolated)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return isolate(monkeypatch, tmp_path, api.base_url)


@pytest.fixture
def runner(env: dict[str, str]) -> OpencodeRunner:
    made = llmrun.get_runner("opencode")
    assert isinstance(made, OpencodeRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


# --- helpers ------------------------------------------------------------------------------


def last_request(api: MockOpenAIChat) -> dict[str, Any]:
    requests = api.chat_requests
    assert requests, "opencode sent no chat request"
    body = requests[-1]["json"]
    assert isinstance(body, dict)
    return body


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def user_texts(body: dict[str, Any]) -> list[str]:
    return [text_of(m["content"]) for m in body["messages"] if m.get("role") == "user"]


def offered_tools(body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in body.get("tools") or []}


def opencode_version() -> str:
    out = subprocess.run(["opencode", "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"\d+\.\d+\.\d+", out)
    assert match, out
    return match.group(0)


# --- a plain answer -----------------------------------------------------------------------


async def test_complete_text(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 7, 19)
    assert response.cost_usd == 0.0
    assert response.session_id and response.session_id.startswith("ses_")
    assert response.runner == "opencode" and response.agent_events == []
    assert len(api.chat_requests) == 1  # no second call to title the session
    body = last_request(api)
    assert body["stream"] is True and body["model"] == "mock-model"
    assert user_texts(body) == ["Say hello"]  # the prompt came whole over stdin


async def test_the_model_asked_for_is_used_and_cached_tokens_counted_once(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "usage_cached"
    response = await runner.complete(request("hi", workdir, model="mock/mock-model-large"))

    assert last_request(api)["model"] == "mock-model-large"
    assert response.model == "mock/mock-model-large"
    usage = response.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (12, 100, 7)
    assert usage.to_openai()["prompt_tokens"] == 112


async def test_sampling_parameters_reach_the_api(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = opencode_provider(api.base_url)
    config["provider"]["mock"]["models"]["mock-model"]["temperature"] = True  # type: ignore[index]
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", json.dumps(config))
    asked = {"temperature": 0.3, "max_tokens": 77, "top_p": 0.5, "seed": 7}

    response = await runner.complete(request("Say hello", workdir, **asked))

    assert response.content == DEFAULT_TEXT
    body = last_request(api)
    assert {name: body.get(name) for name in ("temperature", "max_tokens", "top_p")} == {
        "temperature": 0.3,
        "max_tokens": 77,
        "top_p": 0.5,
    }
    assert "seed" not in body
    assert response.warnings == ["ignored parameter seed: OpenCode has no way to set it"]

    # A model whose entry does not allow temperature gets none, with opencode's own agent too.
    await runner.complete(request("Say hello", workdir, model="mock/mock-model-large", allow_tools=True, **asked))
    body = last_request(api)
    assert "temperature" not in body and (body.get("max_tokens"), body.get("top_p")) == (77, 0.5)


async def test_thinking_once_and_text_as_whole_parts(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    # opencode's JSON output has no token deltas: a part is printed once it is complete.
    api.scenario, api.token_delay = "thinking", 0.1
    chunks = [chunk async for chunk in runner.stream(request("Think first", workdir))]

    assert [c.thinking for c in chunks if c.thinking] == ["".join(THINKING_DELTAS)]
    assert [c.delta for c in chunks if c.delta] == [DEFAULT_TEXT]
    assert chunks[-1].is_final and [c.is_final for c in chunks].count(True) == 1


# --- what reaches the API -----------------------------------------------------------------


async def test_system_prompt_replaces_opencodes_own(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    req = ChatRequest(
        messages=[Message.system("-Rule one. {env:HOME}"), Message.user("hi")],
        system="Rule two.",
        cwd=workdir,
        timeout=RUN_LIMIT,
    )
    await runner.complete(req)

    system = text_of(last_request(api)["messages"][0]["content"])
    assert system.startswith("-Rule one. {env:HOME}\n\nRule two.")  # as written, not substituted
    assert "You are opencode" not in system
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == [], "the run's temp files were not removed"


async def test_200kb_prompt_arrives_intact(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    prompt = "-" + "".join(f"line {n:06d}: the quick brown fox – ünïcödé ✓\n" for n in range(4500)) + "END"
    assert len(prompt.encode()) > 200_000

    response = await runner.complete(request(prompt, workdir))

    assert response.content == DEFAULT_TEXT
    assert user_texts(last_request(api)) == [prompt]


# --- the model asking for a tool -------------------------------------------------------


def allow_everything_in_the_users_config(env: dict[str, str]) -> Path:
    """A user's opencode.json that allows the shell and edits, also for the build agent."""
    config = Path(env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    rules = {"*": "allow", "bash": "allow", "edit": "allow", "webfetch": "allow"}
    # With "$schema" in it: opencode itself adds that line to a config file that lacks it.
    user = {
        "$schema": "https://opencode.ai/config.json",
        "permission": rules,
        "agent": {"build": {"permission": rules}},
    }
    config.write_text(json.dumps(user, indent=2))
    return config


async def test_tool_call_is_left_unexecuted_by_default(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str, env: dict[str, str]
) -> None:
    config = allow_everything_in_the_users_config(env)
    before = config.read_bytes()
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL
    response = await runner.complete(request("Run something", workdir))

    assert not (Path(workdir) / "marker.txt").exists(), "the shell command ran"
    assert response.content == f"{TOOL_PREAMBLE}\n\nTool finished: {DEFAULT_TEXT}"
    use, result = response.agent_events
    assert (use.kind, use.name, use.input) == ("tool_use", "bash", SHELL_CALL)
    assert result.kind == "tool_result" and result.id == use.id and result.is_error
    assert MARKER not in json.dumps(result.output)
    offered = offered_tools(api.chat_requests[0]["json"])
    assert "read" in offered and not WRITE_TOOLS & offered, offered
    assert len(api.chat_requests) == 2
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)  # both steps
    # The user's files are read, never written (opencode itself adds a .gitignore beside them).
    assert config.read_bytes() == before
    assert sorted(p.name for p in config.parent.glob("*.json*")) == ["opencode.json"]


async def test_tool_call_runs_when_allowed(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL
    response = await runner.complete(request("Run something", workdir, allow_tools=True))

    assert (Path(workdir) / "marker.txt").read_text().strip() == MARKER
    use, result = response.agent_events
    assert use.name == "bash" and result.kind == "tool_result" and result.id == use.id and not result.is_error
    assert MARKER in json.dumps(result.output)
    assert "bash" in offered_tools(api.chat_requests[0]["json"])
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")


# --- errors -------------------------------------------------------------------------------


async def test_401_is_an_authentication_error_never_an_answer(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "http_401"
    chunks: list[llmrun.ChatChunk] = []
    with pytest.raises(llmrun.RunnerError) as caught:
        async with contextlib.aclosing(runner.stream(request("hi", workdir))) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    exc = caught.value
    assert type(exc) is llmrun.AuthenticationError, f"{type(exc).__name__}: {exc}"
    assert "Incorrect API key" in str(exc) and exc.process_exit_code == 1
    assert exc.hint and "opencode auth login" in exc.hint
    assert not any(c.delta or c.is_final for c in chunks), chunks
    assert len(api.chat_requests) == 1


@pytest.mark.parametrize(
    ("scenario", "words"), [("http_429", "Rate limit reached"), ("http_500", "The server had an error")]
)
async def test_retries_without_end_are_ended_by_a_timeout(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str, scenario: str, words: str
) -> None:
    api.scenario = scenario
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await runner.complete(request("hi", workdir, timeout=STARTUP_ALLOWANCE))

    error = caught.value
    assert "time limit" in str(error)
    assert f"still retrying mock/mock-model after: AI_APICallError: {words}" in str(error)
    assert error.hint and "OPENCODE_CONFIG_CONTENT" in error.hint
    # Attempts about 2, 4, 8 and 17 s apart: at most six fit in the limit, whatever the start-up took.
    assert 1 <= len(api.chat_requests) <= 6, len(api.chat_requests)
    await assert_no_processes_in(workdir, within=1)


async def test_without_a_provider_the_stall_says_what_to_configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat, workdir: str
) -> None:
    isolate(monkeypatch, tmp_path, None)
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await llmrun.get_runner("opencode").complete(request("hi", workdir, stall_timeout=STARTUP_ALLOWANCE))

    error = caught.value
    assert "stall" in str(error) and "opencode/big-pickle" in str(error)
    assert "its fallback when no provider is configured" in str(error)
    assert error.hint and "opencode auth login" in error.hint and "opencode.json" in error.hint
    assert api.requests == []
    await assert_no_processes_in(workdir, within=1)


async def test_unknown_model_is_model_not_found(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    with pytest.raises(llmrun.ModelNotFound) as caught:
        await runner.complete(request("hi", workdir, model="mock/no-such-model"))

    assert "Model not found: mock/no-such-model" in str(caught.value) and caught.value.process_exit_code == 1
    assert api.chat_requests == []


# --- sessions -----------------------------------------------------------------------------


async def test_resume_sends_only_the_new_turn_into_the_session(
    runner: OpencodeRunner, api: MockOpenAIChat, workdir: str
) -> None:
    first = await runner.complete(request("first", workdir))
    session = first.session_id
    assert session

    history = [Message.user("first"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
    second = await runner.complete(ChatRequest(messages=history, session_id=session, cwd=workdir, timeout=RUN_LIMIT))

    assert second.content == DEFAULT_TEXT
    assert second.session_id == session
    assert (second.usage.input_tokens, second.usage.output_tokens) == (12, 7)  # this run's, not the session's
    assert len(api.chat_requests) == 2
    body = last_request(api)
    assert user_texts(body) == ["first", "second question"]
    assert DEFAULT_TEXT in [text_of(m["content"]) for m in body["messages"] if m.get("role") == "assistant"]


async def test_unknown_session_is_session_not_found(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    with pytest.raises(llmrun.RunnerError) as caught:
        await runner.complete(
            ChatRequest(
                messages=[Message.user("a"), Message.assistant("b"), Message.user("c")],
                session_id="ses_" + uuid.uuid4().hex,
                cwd=workdir,
                timeout=RUN_LIMIT,
            )
        )

    assert isinstance(caught.value, llmrun.SessionNotFound), f"{type(caught.value).__name__}: {caught.value}"
    assert caught.value.process_exit_code == 1
    assert api.chat_requests == []


# --- no process outlives its run ----------------------------------------------------------


async def test_cancelling_a_run_leaves_no_process(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "hang"
    binary = os.path.realpath(shutil.which("opencode") or "opencode")
    task = asyncio.ensure_future(runner.complete(request("hi", workdir)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 30.0), "opencode never called the API"
        assert any(binary in cmd or "opencode" in cmd for _, cmd in processes_in(workdir))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_no_processes_in(workdir, within=1.0)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_stall_timeout_ends_a_hanging_run(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "hang"
    run = asyncio.ensure_future(runner.complete(request("hi", workdir, stall_timeout=STARTUP_ALLOWANCE)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 2 * STARTUP_ALLOWANCE), "opencode never called the API"
        with pytest.raises(llmrun.RunnerTimeout) as caught:
            await asyncio.wait_for(run, timeout=2 * STARTUP_ALLOWANCE)
    finally:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run

    assert "stall" in str(caught.value) and "opencode said nothing meanwhile" in str(caught.value)
    assert len(api.chat_requests) == 1
    await assert_no_processes_in(workdir)


async def test_leaving_a_stream_early_stops_opencode(runner: OpencodeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL
    api.token_delay = 1.0  # the answer after the tool call is slow
    async with contextlib.aclosing(runner.stream(request("Run something", workdir))) as stream:
        async for chunk in stream:
            if chunk.delta:
                assert processes_in(workdir)
                break
    await assert_no_processes_in(workdir)


# --- health and models --------------------------------------------------------------------


async def test_health_ok(runner: OpencodeRunner, api: MockOpenAIChat) -> None:
    report = await runner.health()

    assert report.status == "ok", report
    assert report.version == opencode_version()
    assert report.authenticated is True and "OPENCODE_CONFIG_CONTENT" in report.message
    assert report.binary and os.path.basename(report.binary) == "opencode"
    assert api.requests == []


async def test_health_without_a_provider(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path, None)
    report = await llmrun.get_runner("opencode").health()
    assert report.status == "ok" and report.authenticated is None
    assert "hosted models" in report.message

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    report = await llmrun.get_runner("opencode").health()
    assert report.authenticated is True and "1 provider key(s) in the environment" in report.message


async def test_available_models_include_the_configured_provider(runner: OpencodeRunner, api: MockOpenAIChat) -> None:
    models = [m.id for m in await runner.available_models()]

    assert "mock/mock-model" in models and "mock/mock-model-large" in models
    assert any(m.startswith("opencode/") for m in models)
    assert api.requests == []


# --- the command ----------------------------------------------------------------------------


def test_command_says_hi(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "opencode", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == DEFAULT_TEXT + "\n"
    assert user_texts(last_request(api)) == ["Say hi"]
