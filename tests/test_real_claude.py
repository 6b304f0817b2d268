"""End to end: llmrun's ClaudeCodeRunner driving the real `claude` against tests/mockapi.py.

Every test runs the installed Claude Code CLI (CI installs it with
`npm install -g @anthropic-ai/claude-code`) in a throwaway HOME, with a fake API key,
telemetry off and `CLAUDE_CODE_MAX_RETRIES=0`, talking only to the mock Anthropic API on
127.0.0.1. The tests are skipped when `claude` is not installed.

The runner hands its child `os.environ` (minus a strip list), so each test replaces the
environment of this process with `realcli.claude_env()` through monkeypatch. Each run
gets its own working directory, which is also how the tests find the processes of a run
in /proc afterwards: none may survive a timeout or a cancellation.

The behaviour of claude 2.1.197 that these tests rely on is described in
/tmp/claude-real-runs/FINDINGS.md (errors exit 1 with the status in `result`, an unknown
`--resume` id exits 1, the system prompt lands in the last `system` block, and so on).
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
from llmrun.runners.claude_code import SYSTEM_PROMPT_ARGV_LIMIT, ClaudeCodeRunner

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mockapi import (
    DEFAULT_TEXT,
    SLOW_WORDS,
    STRUCTURED_INPUT,
    STRUCTURED_TOOL,
    THINKING_DELTAS,
    TOOL_INPUT,
    TOOL_NAME,
    TOOL_PREAMBLE,
    MockAnthropic,
)
from realcli import assert_no_processes_in, become, claude_env, processes_in, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 30.0  # hard limit given to every run: a broken run fails instead of hanging
SLOW_DELAY = 0.15  # seconds between the mock's deltas in the `slow` scenario
CANCEL_DELAY = 1.0  # so slow that a run left alone outlives the cancellation checks


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def claude_binary() -> str:
    """Skips every test of this module, with the install command, when claude is absent."""
    return require_binary("claude")


@pytest.fixture
def api():
    with MockAnthropic() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockAnthropic) -> dict[str, str]:
    """Make this process's environment the isolated one that claude must see.

    Everything is removed except PATH-like basics (and pytest's own variables), so no
    ANTHROPIC_*, CLAUDE*, LLMRUN_* or proxy variable of the developer's shell can leak into
    the child; llmrun's config file is pointed at a path that does not exist.
    """
    isolated = claude_env(tmp_path, api.url)
    env = become(monkeypatch, tmp_path, isolated)
    assert "LLMRUN_CLAUDE_CODE_BIN" not in os.environ
    return env


@pytest.fixture
def runner(env: dict[str, str]) -> ClaudeCodeRunner:
    made = llmrun.get_runner("claude_code")
    assert isinstance(made, ClaudeCodeRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


# --- helpers ------------------------------------------------------------------------------


def last_request(api: MockAnthropic) -> dict[str, Any]:
    requests = api.message_requests
    assert requests, "claude sent no /v1/messages request"
    body = requests[-1]["json"]
    assert isinstance(body, dict)
    return body


def text_blocks(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]


def user_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages") or [] if m.get("role") == "user"]


def last_user_texts(body: dict[str, Any]) -> list[str]:
    users = user_messages(body)
    assert users, f"no user message in {body.get('messages')!r}"
    return text_blocks(users[-1]["content"])


def tool_results_on_wire(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        block
        for message in user_messages(body)
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def claude_version() -> str:
    out = subprocess.run(["claude", "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"\d+\.\d+\.\d+", out)
    assert match, out
    return match.group(0)


# --- 1. a plain answer --------------------------------------------------------------------


async def test_complete_text(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.usage.total_tokens == 19
    assert response.cost_usd is not None and response.cost_usd > 0
    assert response.session_id and uuid.UUID(response.session_id)
    assert response.model is not None and response.model.startswith("claude-")
    assert response.runner == "claude_code"
    assert response.thinking == "" and response.agent_events == []
    assert len(api.message_requests) == 1


async def test_cached_usage_is_reported(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "usage_cached"
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 7)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (100, 20)
    assert usage.to_openai()["prompt_tokens"] == 132


async def test_multibyte_text_survives(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.text = "Héllo wörld 日本語 🙂 – ünïcödé ✓"
    response = await runner.complete(request("Say it", workdir))

    assert response.content == api.text


# --- 2. token streaming -------------------------------------------------------------------


async def test_stream_yields_token_deltas_as_they_arrive(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    api.scenario, api.token_delay = "slow", SLOW_DELAY
    deltas: list[tuple[float, str]] = []
    chunks = []
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.delta:
                deltas.append((time.monotonic(), chunk.delta))

    texts = [text for _, text in deltas]
    assert len(texts) >= 4, texts
    assert "".join(texts) == "".join(SLOW_WORDS)
    # The mock waits SLOW_DELAY before each of its deltas; had anything between it and this
    # loop buffered the answer, the deltas would arrive together at the end. A lower bound
    # only, so a slow machine cannot make this fail.
    spread = deltas[-1][0] - deltas[0][0]
    assert spread >= 3 * SLOW_DELAY, f"deltas arrived within {spread:.3f} s: not streamed"
    # Only the last chunk is final, and it comes after every delta.
    assert [c.is_final for c in chunks].count(True) == 1 and chunks[-1].is_final
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 7

    assert ChatResponse.from_chunks(chunks).content == "".join(texts)


# --- 3. what reaches the API --------------------------------------------------------------


async def test_request_carries_model_system_prompt_and_no_tools(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    prompt = f"What is the colour of the sky? ({uuid.uuid4().hex})"
    response = await runner.complete(request(prompt, workdir, system="Be terse"))

    body = last_request(api)
    assert runner.default_model is None  # none asked for: claude's own default model answers
    assert body["model"].startswith("claude-")
    assert response.model == body["model"]
    system = body.get("system")
    assert isinstance(system, list) and system, system
    assert system[-1]["text"] == "Be terse"
    assert prompt in last_user_texts(body)
    assert not body.get("tools"), f"agent tools were offered: {[t.get('name') for t in body['tools']]}"


async def test_claudes_own_model_setting_is_kept(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's own provider may serve models claude does not know: ANTHROPIC_MODEL must reach
    # the API as it is, with no model of llmrun's in its place.
    monkeypatch.setenv("ANTHROPIC_MODEL", "my-own-model")
    response = await runner.complete(request("hi", workdir))

    assert last_request(api)["model"] == "my-own-model"
    assert response.model == "my-own-model"
    assert runner.tool_default_model() == "my-own-model"


async def test_the_configured_model_is_asked_for(
    env: dict[str, str], api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_MODEL", "my-own-model")
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_MODEL", "haiku")  # llmrun's setting wins over claude's own
    response = await llmrun.get_runner("claude_code").complete(request("hi", workdir))

    model = last_request(api)["model"]
    assert model.startswith("claude-haiku-"), model
    assert response.model == model


async def test_model_alias_is_passed_on(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    response = await runner.complete(request("hi", workdir, model="haiku"))

    model = last_request(api)["model"]
    assert model.startswith("claude-haiku-"), model
    assert response.model == model


async def test_system_messages_join_the_system_prompt(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    req = ChatRequest(
        messages=[Message.system("Rule one."), Message.user("hi")], system="Rule two.", cwd=workdir, timeout=RUN_LIMIT
    )
    await runner.complete(req)

    body = last_request(api)
    assert body["system"][-1]["text"] == "Rule one.\n\nRule two."
    assert "hi" in last_user_texts(body)


async def test_history_without_a_session_is_flattened_into_one_prompt(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    history = [Message.user("first"), Message.assistant("an earlier answer"), Message.user("second question")]
    await runner.complete(ChatRequest(messages=history, cwd=workdir, timeout=RUN_LIMIT))

    body = last_request(api)
    assert [m["role"] for m in body["messages"] if m.get("role") in ("user", "assistant")] == ["user"]
    prompt = last_user_texts(body)[-1]
    assert "first" in prompt and "an earlier answer" in prompt
    assert prompt.rstrip().endswith("second question")


async def test_every_option_is_accepted_without_print_mode(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    # One-shot turns run claude with stream-json input and no -p: claude still takes every option.
    options = {
        "permission_mode": "plan",
        "max_turns": 1,
        "effort": "low",
        "fallback_model": "haiku",
        "max_budget_usd": 5,
    }
    response = await runner.complete(request("hi", workdir, model="sonnet", options=options))

    assert response.content == DEFAULT_TEXT
    body = last_request(api)
    assert body["model"].startswith("claude-sonnet-"), body["model"]
    assert "hi" in last_user_texts(body)


async def test_max_turns_holds_without_print_mode(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "tool_use"  # the model asks for a tool on every turn it gets
    with pytest.raises(llmrun.RunnerError, match="maximum number of turns"):
        await runner.complete(request("run it", workdir, allow_tools=True, options={"max_turns": 1}))
    assert len(api.message_requests) == 1


async def test_json_schema_answers_through_claudes_structured_output_tool(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    api.scenario = "structured"
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    response = await runner.complete(request("What is 2+2?", workdir, json_schema=schema))

    assert json.loads(response.content) == STRUCTURED_INPUT
    offered = [tool.get("name") for tool in api.message_requests[0]["json"].get("tools") or []]
    assert STRUCTURED_TOOL in offered


async def test_empty_prompt_fails_cleanly(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    # claude itself would exit 1 on an empty stdin; llmrun refuses before starting it.
    with pytest.raises(llmrun.InvalidRequest, match="no message"):
        await runner.complete(request("", workdir))
    assert api.message_requests == []


async def test_sampling_parameters_have_no_way_into_claude(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    response = await runner.complete(request("hi", workdir, temperature=0.3, max_tokens=2, top_p=0.5, seed=7))

    body = last_request(api)
    assert body.get("temperature") != 0.3 and "top_p" not in body and "seed" not in body
    assert body["max_tokens"] > 2
    assert [warning.split(":")[0] for warning in response.warnings] == [
        "ignored parameter temperature",
        "ignored parameter top_p",
        "ignored parameter seed",
    ]
    # llmrun holds the limit itself, at about 4 characters a token.
    assert (response.content, response.finish_reason) == (DEFAULT_TEXT[:8], "length")


async def test_claudes_output_cap_is_no_limit_on_the_answer(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why llmrun does not pass max_tokens as CLAUDE_CODE_MAX_OUTPUT_TOKENS: at the cap claude
    # asks the model to go on, three times, then fails the run.
    answer = api._answer

    def cut_at_the_cap(scenario: str, body: dict[str, Any]) -> Any:
        cut = answer("text", body)
        cut.stop_reason = "max_tokens"
        return cut

    monkeypatch.setattr(api, "_answer", cut_at_the_cap)
    monkeypatch.setenv("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "3")
    with pytest.raises(llmrun.RunnerError, match="exceeded the 3 output token maximum"):
        await runner.complete(request("hi", workdir))
    resumed = [r for r in api.message_requests if "Output token limit hit" in json.dumps(r["json"]["messages"][-1])]
    assert (len(api.message_requests), len(resumed)) == (4, 3)


async def test_allow_tools_offers_the_agent_tools(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    await runner.complete(request("hi", workdir, allow_tools=True))

    names = [tool.get("name") for tool in last_request(api).get("tools") or []]
    assert TOOL_NAME in names, names


# --- 4. big inputs ------------------------------------------------------------------------


async def test_long_system_prompt_goes_through_a_temp_file(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    line = "Rule: answer in one word. Regel: antworte kurz, ünïcödé ✓ 日本語.\n"
    system = "".join(f"{n:05d} {line}" for n in range(SYSTEM_PROMPT_ARGV_LIMIT // len(line) + 50))
    assert len(system.encode()) > SYSTEM_PROMPT_ARGV_LIMIT + 1024

    api.scenario, api.token_delay = "slow", 0.05
    seen_file: list[str] = []
    async with contextlib.aclosing(runner.stream(request("hi", workdir, system=system))) as stream:
        async for chunk in stream:
            if chunk.delta and not seen_file:
                # While claude runs: its command line names the file, not the text.
                (cmdline,) = [cmd for _, cmd in processes_in(workdir)]
                assert "--system-prompt-file" in cmdline and "Regel" not in cmdline, cmdline
                seen_file = [p.name for p in temp_dir.rglob("*") if p.is_file()]
    assert seen_file and all(name.startswith("system-") for name in seen_file), seen_file

    assert last_request(api)["system"][-1]["text"] == system
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == [], "the system prompt file was not removed"


async def test_200kb_prompt_arrives_intact(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    # Larger than one argv argument may be (128 KiB): only stdin can carry it.
    prompt = "".join(f"line {n:06d}: the quick brown fox – ünïcödé ✓\n" for n in range(4500)) + "END"
    assert len(prompt.encode()) > 200_000

    response = await runner.complete(request(prompt, workdir))

    assert response.content == DEFAULT_TEXT
    assert prompt in last_user_texts(last_request(api))


# --- 5. thinking --------------------------------------------------------------------------


async def test_thinking_is_returned_once(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "thinking"
    response = await runner.complete(request("Think first", workdir))

    # Streamed as deltas and then repeated as a whole `assistant` line: exactly once here.
    assert response.thinking == "".join(THINKING_DELTAS)
    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"


# --- 6. the model asking for a tool -------------------------------------------------------


async def test_tool_use_is_denied_by_default(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "tool_use"
    response = await runner.complete(request("Run something", workdir))

    assert response.finish_reason == "stop"
    assert response.content.startswith(TOOL_PREAMBLE)
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")
    kinds = [event.kind for event in response.agent_events]
    assert kinds == ["tool_use", "tool_result"], response.agent_events
    use, result = response.agent_events
    assert (use.name, use.input) == (TOOL_NAME, TOOL_INPUT)
    assert result.id == use.id and result.is_error
    assert "No such tool available" in json.dumps(result.output)
    # The command never ran: its output is nowhere, not in the answer nor on the wire.
    assert "mock-tool-ran" not in response.content
    assert "mock-tool-ran" not in json.dumps(result.output)
    wire = tool_results_on_wire(last_request(api))
    assert wire and "mock-tool-ran" not in json.dumps(wire)
    assert len(api.message_requests) == 2  # the tool turn and the answer after the refusal
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)  # both turns


async def test_tool_use_runs_when_allowed(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "tool_use"
    response = await runner.complete(request("Run something", workdir, allow_tools=True))

    assert response.finish_reason == "stop"
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")
    use, result = [e for e in response.agent_events if e.kind in ("tool_use", "tool_result")]
    assert use.name == TOOL_NAME and result.id == use.id
    assert not result.is_error
    assert "mock-tool-ran" in json.dumps(result.output)
    assert "mock-tool-ran" in json.dumps(tool_results_on_wire(last_request(api)))


# --- 7. errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "error", "words"),
    [
        ("http_401", llmrun.AuthenticationError, "API key"),
        ("http_429", llmrun.RateLimitError, "429"),
        ("http_500", llmrun.ServiceUnavailable, "500"),
        ("http_529", llmrun.ServiceUnavailable, "529"),
    ],
)
async def test_http_errors_are_typed(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, scenario: str, error: type, words: str
) -> None:
    api.scenario = scenario
    with pytest.raises(llmrun.RunnerError) as caught:
        await runner.complete(request("hi", workdir))

    exc = caught.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert exc.process_exit_code == 1
    assert exc.runner == "claude_code"
    assert words in str(exc)
    # CLAUDE_CODE_MAX_RETRIES=0 from the environment wins over llmrun's default of 2.
    assert len(api.message_requests) == 1
    await assert_no_processes_in(workdir, within=0)


async def test_missing_api_key_is_an_authentication_error(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await runner.complete(request("hi", workdir))

    assert caught.value.process_exit_code == 1
    assert caught.value.hint and "ANTHROPIC_API_KEY" in caught.value.hint
    assert api.message_requests == []


async def test_default_retries_are_bounded_and_reported(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without CLAUDE_CODE_MAX_RETRIES in the environment llmrun asks for 2 retries, so an
    # overloaded API fails after 3 requests instead of minutes of silent back-off.
    monkeypatch.delenv("CLAUDE_CODE_MAX_RETRIES")
    api.scenario = "http_529"
    chunks = []
    with pytest.raises(llmrun.ServiceUnavailable):
        async with contextlib.aclosing(runner.stream(request("hi", workdir))) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    retries = [c.agent_event for c in chunks if c.agent_event is not None and c.agent_event.kind == "retry"]
    assert len(retries) == 2, chunks
    assert all("529" in (r.message or "") for r in retries), retries
    assert len(api.message_requests) == 3


# --- 8. sessions --------------------------------------------------------------------------


async def test_resume_sends_only_the_new_turn_into_the_session(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str
) -> None:
    first = await runner.complete(request("first", workdir))
    session = first.session_id
    assert session

    history = [Message.user("first"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
    second = await runner.complete(ChatRequest(messages=history, session_id=session, cwd=workdir, timeout=RUN_LIMIT))

    assert second.content == DEFAULT_TEXT
    assert second.session_id == session
    assert len(api.message_requests) == 2
    body = last_request(api)
    conversation = [m for m in body["messages"] if m.get("role") in ("user", "assistant")]
    assert len(conversation) >= 3, conversation
    assert "first" in text_blocks(conversation[0]["content"])
    assert DEFAULT_TEXT in text_blocks(conversation[1]["content"])
    new_turn = last_user_texts(body)
    assert "second question" in new_turn
    # The session holds the history; llmrun must not send it again as a transcript.
    assert not any("conversation_so_far" in text for text in new_turn), new_turn


async def test_unknown_session_is_session_not_found(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
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

    exc = caught.value
    assert isinstance(exc, llmrun.SessionNotFound), f"{type(exc).__name__}: {exc}"
    assert made_up in str(exc)
    assert exc.process_exit_code == 1
    assert api.message_requests == []


# --- 9 and 10. no process outlives its run ------------------------------------------------


async def test_stall_timeout_ends_a_hanging_run(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "hang"
    run = asyncio.ensure_future(runner.complete(request("hi", workdir, stall_timeout=5)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 15.0), "claude never called the API"
        assert processes_in(workdir), "claude is not running in the work dir (or /proc cannot show it)"
        with pytest.raises(llmrun.RunnerTimeout) as caught:
            await asyncio.wait_for(run, timeout=20)
    finally:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
    assert "stall" in str(caught.value)
    assert caught.value.runner == "claude_code"
    await assert_no_processes_in(workdir)


async def test_hard_timeout_ends_a_hanging_run(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario = "hang"
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await asyncio.wait_for(runner.complete(request("hi", workdir, timeout=2)), timeout=20)

    assert "time limit" in str(caught.value)
    assert len(api.message_requests) == 1
    await assert_no_processes_in(workdir)


async def test_leaving_a_stream_early_stops_claude(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    # Left alone, claude would stream for another 5 s: it must be gone long before that.
    api.scenario, api.token_delay = "slow", CANCEL_DELAY
    deltas = []
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            if chunk.delta:
                deltas.append(chunk.delta)
                assert processes_in(workdir), "claude is not running in the work dir (or /proc cannot show it)"
                break
    assert deltas == [SLOW_WORDS[0]]
    await assert_no_processes_in(workdir, within=2.0)


async def test_cancelling_the_task_stops_claude(runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", CANCEL_DELAY
    first_delta = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
            async for chunk in stream:
                if chunk.delta:
                    first_delta.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(first_delta.wait(), timeout=20)
    assert processes_in(workdir)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_no_processes_in(workdir, within=2.0)


# --- 11. health ---------------------------------------------------------------------------


async def test_health_ok_with_api_key(runner: ClaudeCodeRunner, api: MockAnthropic) -> None:
    report = await runner.health()

    assert report.status == "ok", report
    assert report.version == claude_version()
    assert report.authenticated is True
    assert report.binary and os.path.basename(report.binary) == "claude"
    assert api.message_requests == []  # checks are local; only probe=True sends a prompt


async def test_health_without_api_key_is_unauthenticated(
    runner: ClaudeCodeRunner, api: MockAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    report = await runner.health()

    assert report.status == "unauthenticated", report
    assert report.authenticated is False
    assert report.hint and "ANTHROPIC_API_KEY" in report.hint
    assert not report.ok


async def test_health_probe_asks_the_model(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)  # the probe runs claude in the current directory
    report = await runner.health(probe=True)

    assert report.status == "ok", report
    assert report.authenticated is True
    assert report.latency_ms is not None and report.latency_ms >= 0
    assert len(api.message_requests) == 1
    assert any("ok" in text for text in last_user_texts(last_request(api)))


async def test_health_probe_reports_a_failing_api(
    runner: ClaudeCodeRunner, api: MockAnthropic, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    api.scenario = "http_500"
    report = await runner.health(probe=True)

    assert report.status == "error", report
    assert "ServiceUnavailable" in report.message


# --- 12. the command ----------------------------------------------------------------------


def run_llmrun(env: dict[str, str], cwd: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    child_env = dict(env, PYTHONPATH=str(ROOT))  # this checkout, even where it is not installed
    return subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "claude_code", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env,
        cwd=cwd,
        timeout=60,
    )


def test_command_jsonl_from_stdin(env: dict[str, str], api: MockAnthropic, workdir: str) -> None:
    prompt = "A prompt on stdin\nwith two lines"
    done = run_llmrun(env, workdir, "--jsonl", "-", stdin=prompt)

    assert done.returncode == 0, done.stderr
    chunks = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(chunks) >= 2, done.stdout
    assert all(isinstance(chunk, dict) for chunk in chunks)
    assert "".join(chunk.get("delta", "") for chunk in chunks) == DEFAULT_TEXT
    assert [("finish_reason" in chunk) for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final["finish_reason"] == "stop"
    assert (final["usage"]["input_tokens"], final["usage"]["output_tokens"]) == (12, 7)
    assert final["session_id"]
    assert prompt in last_user_texts(last_request(api))


def test_command_prints_the_answer(env: dict[str, str], api: MockAnthropic, workdir: str) -> None:
    done = run_llmrun(env, workdir, "Say hi")

    assert done.returncode == 0, done.stderr
    assert done.stdout == DEFAULT_TEXT + "\n"
    assert "Say hi" in last_user_texts(last_request(api))


def test_command_maps_errors_to_exit_codes(env: dict[str, str], api: MockAnthropic, workdir: str) -> None:
    api.scenario = "http_401"
    done = run_llmrun(env, workdir, "--jsonl", "Say hi")

    assert done.returncode == llmrun.AuthenticationError.exit_code, (done.stdout, done.stderr)
    error = json.loads(done.stdout.splitlines()[-1])["error"]
    assert error["type"] == "AuthenticationError"
    assert error["exit_code"] == 1
    assert "AuthenticationError" in done.stderr
