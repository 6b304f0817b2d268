"""End to end: llmrun's QwenRunner driving the real `qwen` against tests/mock_openai_chat.py.

Every test runs the installed Qwen Code CLI (CI installs it with
`npm install -g @qwen-code/qwen-code`) in a throwaway HOME (`realcli.qwen_env`), with a
fake key and `--auth-type openai`, talking only to the mock OpenAI Chat Completions API
on 127.0.0.1. Run them inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_qwen.py'

They are skipped when `qwen` is not installed.

qwen 0.15.10 retries a 429 or 5xx 7 times with a backoff of 1.5 s doubling up to 30 s,
whatever its settings say, and only then reports the error (about 72-90 s). The tests
here prove that the runner bounds everything it can (one request per attempt, no retries
inside the OpenAI client), that a timeout or a cancellation ends such a run at once even
though qwen ignores SIGTERM while it waits, and that qwen's final report is typed (also
checked on captures of it in tests/test_qwen.py). `LLMRUN_SLOW_TESTS=1` adds the test
that waits for qwen's own report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, ChatResponse, Message
from llmrun.runners.qwen import SYSTEM_PROMPT_ARGV_LIMIT, QwenRunner

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, SLOW_WORDS, THINKING_DELTAS, TOOL_PREAMBLE, MockOpenAIChat
from realcli import assert_no_processes_in, become, processes_in, qwen_env, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 30.0  # hard limit given to every run: a broken run fails instead of hanging
SLOW_DELAY = 0.15
KILL_GRACE = 3.0  # process.Limits().kill_grace: SIGTERM, then SIGKILL after this long
MARKER = "mock-tool-ran"
SHELL_CALL = {"command": f"echo {MARKER} > marker.txt; echo {MARKER}", "description": "Leave a marker"}


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def qwen_binary() -> str:
    """Skips every test of this module, with the install command, when qwen is absent."""
    return require_binary("qwen")


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    """Make this process's environment the isolated one that qwen must see."""
    isolated = qwen_env(tmp_path, api.base_url)
    return become(monkeypatch, tmp_path, isolated)


@pytest.fixture
def runner(env: dict[str, str]) -> QwenRunner:
    made = llmrun.get_runner("qwen", extra_args=["--auth-type", "openai"])
    assert isinstance(made, QwenRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


# --- helpers ------------------------------------------------------------------------------


def last_request(api: MockOpenAIChat) -> dict[str, Any]:
    requests = api.chat_requests
    assert requests, "qwen sent no chat request"
    body = requests[-1]["json"]
    assert isinstance(body, dict)
    return body


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body["messages"] if m.get("role") == "user"]
    assert users, body["messages"]
    return text_of(users[-1]["content"])


def offered_tools(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools") or []]


def qwen_version() -> str:
    out = subprocess.run(["qwen", "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"\d+\.\d+\.\d+", out)
    assert match, out
    return match.group(0)


async def collect(runner: QwenRunner, req: ChatRequest) -> list[llmrun.ChatChunk]:
    async with contextlib.aclosing(runner.stream(req)) as stream:
        return [chunk async for chunk in stream]


# --- a plain answer -----------------------------------------------------------------------


async def test_complete_text(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 7, 19)
    assert response.session_id and uuid.UUID(response.session_id)
    assert response.model == "mock-model"
    assert response.runner == "qwen"
    # One call: no managed-memory call after the answer.
    assert len(api.chat_requests) == 1
    body = last_request(api)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "mock-model"
    # The whole prompt came over stdin (qwen adds a blank line after it).
    assert last_user_text(body).rstrip() == "Say hello"


async def test_cached_tokens_are_reported_once(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "usage_cached"
    usage = (await runner.complete(request("Say hello", workdir))).usage

    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (12, 100, 7)
    assert usage.to_openai()["prompt_tokens"] == 112


async def test_users_settings_are_left_alone(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    settings = Path(os.environ["HOME"]) / ".qwen" / "settings.json"
    before = settings.read_bytes()
    await runner.complete(request("Say hello", workdir))

    assert settings.read_bytes() == before
    assert sorted(p.name for p in settings.parent.glob("settings.json*")) == ["settings.json"]


async def test_sampling_parameters_reach_the_api_over_the_users_settings(
    runner: QwenRunner, api: MockOpenAIChat, workdir: str
) -> None:
    settings = Path(os.environ["HOME"]) / ".qwen" / "settings.json"
    own = json.loads(settings.read_text())
    own.setdefault("model", {}).setdefault("generationConfig", {})["samplingParams"] = {"temperature": 0.9, "top_k": 20}
    settings.write_text(json.dumps(own))

    response = await runner.complete(request("hi", workdir, temperature=0.3, max_tokens=77, top_p=0.5, seed=7))

    body = last_request(api)
    assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.3, 77, 0.5)
    assert body["top_k"] == 20  # the user's other settings still hold
    assert "seed" not in body
    assert response.content == DEFAULT_TEXT and response.finish_reason == "stop"
    assert response.warnings == ["ignored parameter seed: Qwen Code has no way to set it"]

    # An answer that used the whole limit (the mock's is 7 tokens) was cut by it.
    response = await runner.complete(request("hi", workdir, max_tokens=7))
    assert last_request(api)["max_tokens"] == 7
    assert (response.content, response.finish_reason) == (DEFAULT_TEXT, "length")


async def test_the_model_asked_for_is_used(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    response = await runner.complete(request("hi", workdir, model="mock-model-large"))

    assert last_request(api)["model"] == "mock-model-large"
    assert response.model == "mock-model-large"


# --- token streaming ----------------------------------------------------------------------


async def test_stream_yields_token_deltas_as_they_arrive(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", SLOW_DELAY
    deltas: list[tuple[float, str]] = []
    chunks = []
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.delta:
                deltas.append((time.monotonic(), chunk.delta))

    texts = [text for _, text in deltas]
    assert texts == SLOW_WORDS
    spread = deltas[-1][0] - deltas[0][0]
    assert spread >= 3 * SLOW_DELAY, f"deltas arrived within {spread:.3f} s: not streamed"
    assert [c.is_final for c in chunks].count(True) == 1 and chunks[-1].is_final
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 7
    assert ChatResponse.from_chunks(chunks).content == "".join(SLOW_WORDS)


async def test_thinking_is_returned_once(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "thinking"
    response = await runner.complete(request("Think first", workdir))

    assert response.thinking == "".join(THINKING_DELTAS)
    assert response.content == DEFAULT_TEXT


# --- what reaches the API -----------------------------------------------------------------


async def test_system_prompt_and_read_only_tools(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    req = ChatRequest(
        messages=[Message.system("-Rule one."), Message.user("hi")], system="Rule two.", cwd=workdir, timeout=RUN_LIMIT
    )
    await runner.complete(req)

    body = last_request(api)
    system = body["messages"][0]
    assert system["role"] == "system"
    assert text_of(system["content"]).startswith("-Rule one.\n\nRule two.")
    tools = offered_tools(body)
    assert "read_file" in tools
    assert not {"run_shell_command", "edit", "write_file"} & set(tools), tools


async def test_long_system_prompt_goes_through_a_file(
    runner: QwenRunner, api: MockOpenAIChat, workdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    line = "Rule: answer in one word. Regel: antworte kurz, ünïcödé ✓ 日本語.\n"
    system = "".join(f"{n:05d} {line}" for n in range(SYSTEM_PROMPT_ARGV_LIMIT // len(line) + 50))
    assert len(system.encode()) > SYSTEM_PROMPT_ARGV_LIMIT + 1024

    api.scenario, api.token_delay = "slow", 0.05
    seen: list[str] = []
    async with contextlib.aclosing(runner.stream(request("hi", workdir, system=system))) as stream:
        async for chunk in stream:
            if chunk.delta and not seen:
                seen = [cmd for _, cmd in processes_in(workdir)]
    assert seen and not any("Regel" in cmd for cmd in seen), seen

    assert text_of(last_request(api)["messages"][0]["content"]).startswith(system)
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == [], "the run's temp files were not removed"


async def test_200kb_prompt_arrives_intact(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    prompt = "-" + "".join(f"line {n:06d}: the quick brown fox – ünïcödé ✓\n" for n in range(4500)) + "END"
    assert len(prompt.encode()) > 200_000

    response = await runner.complete(request(prompt, workdir))

    assert response.content == DEFAULT_TEXT
    assert last_user_text(last_request(api)).rstrip() == prompt


async def test_history_without_a_session_is_flattened(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    history = [Message.user("first"), Message.assistant("an earlier answer"), Message.user("second question")]
    await runner.complete(ChatRequest(messages=history, cwd=workdir, timeout=RUN_LIMIT))

    prompt = last_user_text(last_request(api))
    assert "first" in prompt and "an earlier answer" in prompt
    assert prompt.rstrip().endswith("second question")


# --- the model asking for a tool -------------------------------------------------------


async def test_tool_call_is_left_unexecuted_by_default(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "run_shell_command", SHELL_CALL
    response = await runner.complete(request("Run something", workdir))

    assert not (Path(workdir) / "marker.txt").exists(), "the shell command ran"
    assert response.content == f"{TOOL_PREAMBLE}\n\nTool finished: {DEFAULT_TEXT}"
    kinds = [e.kind for e in response.agent_events]
    assert kinds == ["tool_use", "tool_result", "permission_denied"], response.agent_events
    use, result, denied = response.agent_events
    assert (use.name, use.input) == ("run_shell_command", SHELL_CALL)
    assert result.id == use.id == denied.id and result.is_error
    assert MARKER not in json.dumps(result.output)
    tool_messages = [m for m in last_request(api)["messages"] if m.get("role") == "tool"]
    assert tool_messages and MARKER not in json.dumps(tool_messages)
    assert len(api.chat_requests) == 2


async def test_tool_call_runs_when_allowed(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "run_shell_command", SHELL_CALL
    response = await runner.complete(request("Run something", workdir, allow_tools=True))

    assert (Path(workdir) / "marker.txt").read_text().strip() == MARKER
    use, result = [e for e in response.agent_events if e.kind in ("tool_use", "tool_result")]
    assert use.name == "run_shell_command" and result.id == use.id and not result.is_error
    assert MARKER in json.dumps(result.output)
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")


# --- errors -------------------------------------------------------------------------------


async def test_401_is_an_authentication_error_never_an_answer(
    runner: QwenRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "http_401"
    chunks: list[llmrun.ChatChunk] = []
    with pytest.raises(llmrun.RunnerError) as caught:
        async with contextlib.aclosing(runner.stream(request("hi", workdir))) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    exc = caught.value
    assert type(exc) is llmrun.AuthenticationError, f"{type(exc).__name__}: {exc}"
    assert "401" in str(exc) and "Incorrect API key" in str(exc)
    assert exc.process_exit_code == 0  # qwen itself calls this run a success
    assert exc.hint and "OPENAI_API_KEY" in exc.hint
    assert not any(c.delta for c in chunks), chunks
    assert len(api.chat_requests) == 1
    await assert_no_processes_in(workdir, within=0)


@pytest.mark.parametrize("scenario", ["http_429", "http_500"])
async def test_retries_are_bounded_and_a_timeout_ends_them(
    runner: QwenRunner, api: MockOpenAIChat, workdir: str, scenario: str
) -> None:
    api.scenario = scenario
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await runner.complete(request("hi", workdir, timeout=6))

    assert "time limit" in str(caught.value)
    await assert_no_processes_in(workdir, within=0.5)
    # Without maxRetries 0 the OpenAI client alone sends 4 requests within about 3.5 s;
    # bounded, only qwen's own attempts remain, 1.5 s, 3 s and 6 s apart (±30 %), so at
    # most 3 fit in the 6 s, whatever qwen's start-up took.
    times = [r["time"] for r in api.chat_requests]
    assert 1 <= len(times) <= 3, times
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:])), times


async def test_cancelling_during_backoff_kills_qwen(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    # Between its 3rd and 4th attempt qwen waits 4.2-7.8 s and ignores SIGTERM meanwhile;
    # the process layer's SIGKILL after kill_grace must end it.
    api.scenario = "http_500"
    task = asyncio.ensure_future(runner.complete(request("hi", workdir)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 3, 20.0), "qwen did not retry"
        await asyncio.sleep(0.2)
        assert processes_in(workdir)
        task.cancel()
        await asyncio.sleep(KILL_GRACE - 1)
        assert processes_in(workdir), "qwen was expected to outlive SIGTERM while it backs off"
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_no_processes_in(workdir, within=1.0)
        assert len(api.chat_requests) == 3
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


@pytest.mark.skipif(not os.environ.get("LLMRUN_SLOW_TESTS"), reason="waits ~90 s for qwen; set LLMRUN_SLOW_TESTS=1")
@pytest.mark.timeout(240)
async def test_qwens_own_report_of_429_and_500_is_typed(runner: QwenRunner, workdir: str, tmp_path: Path) -> None:
    async def run(scenario: str, error: type) -> float:
        with MockOpenAIChat(scenario) as api:
            own = llmrun.get_runner("qwen", extra_args=["--auth-type", "openai"], env={"OPENAI_BASE_URL": api.base_url})
            cwd = tmp_path / scenario
            cwd.mkdir()
            started = time.monotonic()
            with pytest.raises(llmrun.RunnerError) as caught:
                await own.complete(ChatRequest.of("hi", cwd=str(cwd), timeout=200))
            assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
            assert caught.value.process_exit_code == 0
            assert len(api.chat_requests) == 7
            return time.monotonic() - started

    took = await asyncio.gather(run("http_429", llmrun.RateLimitError), run("http_500", llmrun.ServiceUnavailable))
    print(f"qwen reported 429 after {took[0]:.1f} s and 500 after {took[1]:.1f} s")


async def test_missing_key_is_an_authentication_error(
    runner: QwenRunner, api: MockOpenAIChat, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await runner.complete(request("hi", workdir))

    assert "Missing API key" in str(caught.value) and caught.value.process_exit_code == 1
    assert caught.value.hint and "qwen auth" in caught.value.hint
    assert api.chat_requests == []


# --- sessions -----------------------------------------------------------------------------


async def test_resume_sends_only_the_new_turn_into_the_session(
    runner: QwenRunner, api: MockOpenAIChat, workdir: str
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
    conversation = [m for m in last_request(api)["messages"] if m.get("role") in ("user", "assistant")]
    texts = [text_of(m["content"]).strip() for m in conversation]
    assert "first" in texts and DEFAULT_TEXT in texts
    assert texts[-1] == "second question"
    assert not any("conversation_so_far" in text for text in texts)


async def test_unknown_session_is_session_not_found(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    made_up = str(uuid.uuid4())
    with pytest.raises(llmrun.RunnerError) as caught:
        await runner.complete(
            ChatRequest(
                messages=[Message.user("a"), Message.assistant("b"), Message.user("c")],
                session_id=made_up,
                cwd=workdir,
                timeout=RUN_LIMIT,
            )
        )

    assert isinstance(caught.value, llmrun.SessionNotFound), f"{type(caught.value).__name__}: {caught.value}"
    assert made_up in str(caught.value)
    assert caught.value.process_exit_code == 1
    assert api.chat_requests == []


# --- no process outlives its run ----------------------------------------------------------


async def test_stall_timeout_ends_a_hanging_run(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "hang"
    # Generous enough for qwen's own silent start-up on a busy machine (about 1 s when idle).
    run = asyncio.ensure_future(runner.complete(request("hi", workdir, stall_timeout=6)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 15.0), "qwen never called the API"
        with pytest.raises(llmrun.RunnerTimeout) as caught:
            await asyncio.wait_for(run, timeout=20)
    finally:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run

    assert "stall" in str(caught.value)
    assert len(api.chat_requests) == 1
    await assert_no_processes_in(workdir)


async def test_leaving_a_stream_early_stops_qwen(runner: QwenRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", 0.5
    deltas = []
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            if chunk.delta:
                deltas.append(chunk.delta)
                assert processes_in(workdir)
                break
    assert deltas == [SLOW_WORDS[0]]
    await assert_no_processes_in(workdir)


# --- health -------------------------------------------------------------------------------


async def test_health_ok(runner: QwenRunner, api: MockOpenAIChat) -> None:
    report = await runner.health()

    assert report.status == "ok", report
    assert report.version == qwen_version()
    assert report.authenticated is True
    assert report.binary and os.path.basename(report.binary) == "qwen"
    assert api.requests == []


async def test_health_without_a_key_is_unauthenticated(
    runner: QwenRunner, api: MockOpenAIChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    report = await runner.health()

    assert report.status == "unauthenticated", report
    assert report.hint and "qwen auth" in report.hint


async def test_health_reads_auth_from_qwens_settings(runner: QwenRunner, env: dict[str, str]) -> None:
    settings = Path(env["HOME"]) / ".qwen" / "settings.json"
    data = json.loads(settings.read_text())
    data["security"] = {"auth": {"selectedType": "openai"}}
    settings.write_text(json.dumps(data))
    report = await llmrun.get_runner("qwen").health()

    assert report.status == "ok", report
    assert "OpenAI-compatible Provider" in report.message


# --- the command ----------------------------------------------------------------------------


def test_command_says_hi(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "qwen", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == DEFAULT_TEXT + "\n"
    assert last_user_text(last_request(api)).rstrip() == "Say hi"
