"""End to end: llmrun's GeminiRunner driving the real `gemini` against tests/mock_gemini.py.

Every test runs the installed Gemini CLI (CI installs it with `npm install -g
@google/gemini-cli`) in a throwaway HOME whose settings pin the `gemini-api-key` auth type
and switch telemetry and updates off, with GEMINI_API_KEY=fake and GOOGLE_GEMINI_BASE_URL
pointing at the mock on 127.0.0.1 (see `realcli.gemini_env`). Skipped when `gemini` is not
installed. Run them in a loopback-only namespace:
`unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_gemini.py'`.

gemini's own retries (429/5xx, 5–30 s back-off) are bounded by the runner through a system
defaults file, which gemini reads only when it is root's; for other users the throwaway
settings bound them instead, and the test of the runner's bound is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, ChatResponse, Message
from llmrun.runners.gemini import GeminiRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_gemini import DEFAULT_TEXT, HTTP_ERRORS, SLOW_WORDS, TOOL_INPUT, TOOL_NAME, TOOL_PREAMBLE, MockGemini
from realcli import assert_no_processes_in, become, gemini_env, processes_in, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
# gemini sometimes exits holding its lock on ~/.gemini/projects.json; the next start in that
# HOME then backs off until the lock counts as stale, 13 s or (loaded) far more, before it does
# anything. A run's limit sits well above that.
RUN_LIMIT = 120.0
SLOW_DELAY = 0.15
IS_ROOT = os.geteuid() == 0
# What headless gemini may offer in its default approval mode: nothing that writes or runs.
READ_ONLY_TOOLS = {
    "update_topic",
    "list_directory",
    "read_file",
    "grep_search",
    "glob",
    "google_web_search",
    "enter_plan_mode",
    "invoke_agent",
    "read_many_files",
    "search_file_content",
    "save_memory",
    "get_internal_docs",
    "ask_user",
}


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def gemini_binary() -> str:
    return require_binary("gemini")


@pytest.fixture
def api():
    with MockGemini() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockGemini) -> dict[str, str]:
    """This process's environment becomes the isolated one gemini must see (the runner passes
    its own environment on); nothing of the developer's GEMINI_*/GOOGLE_* or proxies leaks."""
    isolated = gemini_env(tmp_path, api.url, max_attempts=None if IS_ROOT else 1)
    return become(monkeypatch, tmp_path, isolated)


@pytest.fixture
def runner(env: dict[str, str]) -> GeminiRunner:
    # A model named, as most users' settings do: each run is then one call, with no routing
    # call first (gemini's own choice without one: see test_geminis_own_model_choice_applies).
    made = llmrun.get_runner("gemini", default_model="flash")
    assert isinstance(made, GeminiRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


# --- helpers ------------------------------------------------------------------------------


def last_request(api: MockGemini) -> dict[str, Any]:
    requests = api.generate_requests
    assert requests, "gemini sent no generateContent request"
    body = requests[-1]["json"]
    assert isinstance(body, dict)
    return body


def texts(content: dict[str, Any]) -> list[str]:
    return [part["text"] for part in content.get("parts") or [] if isinstance(part, dict) and "text" in part]


def user_texts(body: dict[str, Any]) -> list[str]:
    """The texts of the last user turn (gemini puts its session context first)."""
    users = [c for c in body.get("contents") or [] if c.get("role") == "user"]
    assert users, body.get("contents")
    return texts(users[-1])


def offered_tools(body: dict[str, Any]) -> set[str]:
    return {decl["name"] for tool in body.get("tools") or [] for decl in tool.get("functionDeclarations") or []}


def gemini_version() -> str:
    return subprocess.run(["gemini", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()


def tmp_reports() -> set[str]:
    return set(glob.glob("/tmp/gemini-client-error-*.json"))


# --- 1. plain answers ---------------------------------------------------------------------


async def test_complete_text(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 7, 19)
    assert response.session_id and uuid.UUID(response.session_id)
    # "flash" is gemini's alias; the model that answered is the one in the request path.
    (call,) = api.generate_requests
    assert call["call"] == "streamGenerateContent" and response.model == call["model"]
    assert response.agent_events == [] and response.thinking == ""


async def test_cached_and_thought_tokens(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario = "usage_cached"
    usage = (await runner.complete(request("hi", workdir))).usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (7, 5, 7)
    assert usage.to_openai()["prompt_tokens"] == 12

    api.scenario = "thinking"
    response = await runner.complete(request("hi", workdir))
    assert response.content == DEFAULT_TEXT  # thoughts stay out of the answer
    assert response.usage.reasoning_tokens == 3


async def test_multibyte_text_survives(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.text = "Héllo wörld 日本語 🙂 – ünïcödé ✓"
    assert (await runner.complete(request("Say it", workdir))).content == api.text


async def test_stream_yields_token_deltas_as_they_arrive(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", SLOW_DELAY
    deltas: list[tuple[float, str]] = []
    chunks = []
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.delta:
                deltas.append((time.monotonic(), chunk.delta))

    assert [text for _, text in deltas] == SLOW_WORDS
    spread = deltas[-1][0] - deltas[0][0]
    assert spread >= 3 * SLOW_DELAY, f"deltas arrived within {spread:.3f} s: not streamed"
    assert [c.is_final for c in chunks].count(True) == 1 and chunks[-1].is_final
    assert ChatResponse.from_chunks(chunks).content == "".join(SLOW_WORDS)


# --- 2. what reaches the API --------------------------------------------------------------


async def test_geminis_own_model_choice_applies(env: dict[str, str], api: MockGemini, workdir: str) -> None:
    # No model asked for: gemini's "auto" routing asks a router model first, then the model
    # it chose answers; the response names that one, and counts the tokens of both calls.
    response = await llmrun.get_runner("gemini").complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    (call,) = api.generate_requests
    assert response.model == call["model"]
    routing = [r for r in api.requests if r not in api.generate_requests and r["call"] == "generateContent"]
    assert len(routing) == 1
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)


async def test_geminis_own_configured_model_is_kept(env: dict[str, str], api: MockGemini, workdir: str) -> None:
    settings_file = Path(env["HOME"]) / ".gemini" / "settings.json"
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**settings, "model": {"name": "gemini-2.5-pro"}}))
    runner = llmrun.get_runner("gemini")
    response = await runner.complete(request("Say hello", workdir))

    assert [r["model"] for r in api.requests] == ["gemini-2.5-pro"]  # no routing, no model of llmrun's
    assert response.model == "gemini-2.5-pro" == runner.tool_default_model()


async def test_request_carries_model_system_prompt_and_read_only_tools(
    runner: GeminiRunner, api: MockGemini, workdir: str
) -> None:
    prompt = f"What colour is the sky? ({uuid.uuid4().hex})"
    response = await runner.complete(request(prompt, workdir, model="gemini-2.5-pro", system="Be terse"))

    body = last_request(api)
    assert api.generate_requests[-1]["model"] == "gemini-2.5-pro" == response.model
    assert texts(body["systemInstruction"]) == ["Be terse"]  # replaces gemini's own prompt
    assert prompt in user_texts(body)
    tools = offered_tools(body)
    assert tools and tools <= READ_ONLY_TOOLS, tools - READ_ONLY_TOOLS
    # Exactly one call: with a model named there is no routing call first.
    assert len(api.requests) == 1


SAMPLING = {"temperature": 0.3, "max_tokens": 77, "top_p": 0.5, "seed": 7, "presence_penalty": 0.1}


@pytest.mark.skipif(not IS_ROOT, reason="gemini reads system settings only from root's files")
async def test_sampling_parameters_reach_the_api(
    runner: GeminiRunner, api: MockGemini, workdir: str, env: dict[str, str]
) -> None:
    # An override of the user's own stays in force beside the request's.
    user_settings = Path(env["HOME"]) / ".gemini" / "settings.json"
    own = json.loads(user_settings.read_text())
    topk = {"match": {"isChatModel": True}, "modelConfig": {"generateContentConfig": {"topK": 5}}}
    own["modelConfigs"] = {"customOverrides": [topk]}
    user_settings.write_text(json.dumps(own))

    response = await runner.complete(request("hi", workdir, frequency_penalty=0.2, **SAMPLING))

    config = last_request(api)["generationConfig"]
    assert (config["temperature"], config["maxOutputTokens"], config["topP"], config["seed"]) == (0.3, 77, 0.5, 7)
    assert (config["presencePenalty"], config["frequencyPenalty"], config["topK"]) == (0.1, 0.2, 5)
    assert response.content == DEFAULT_TEXT and response.warnings == [] and response.finish_reason == "stop"
    assert runner._private and [p for p in os.listdir(runner._private) if p.startswith("system-settings-")] == []

    # An answer that used the whole limit (the mock's is 7 tokens) was cut by it.
    response = await runner.complete(request("hi", workdir, max_tokens=7))
    assert last_request(api)["generationConfig"]["maxOutputTokens"] == 7
    assert (response.content, response.finish_reason) == (DEFAULT_TEXT, "length")


async def test_sampling_parameters_where_gemini_would_not_read_them(
    runner: GeminiRunner, api: MockGemini, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As any user but root: gemini would not read a settings file of llmrun's.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(GeminiRunner, "honoured_parameters", {})
    response = await runner.complete(request("hi", workdir, **SAMPLING))

    config = last_request(api)["generationConfig"]
    assert config["temperature"] == 1 and "seed" not in config  # gemini's own defaults
    assert [warning.split(":")[0] for warning in response.warnings] == [
        f"ignored parameter {name}" for name in ("temperature", "top_p", "seed", "presence_penalty")
    ]
    assert response.content == DEFAULT_TEXT  # within the limit llmrun holds itself


async def test_200kb_prompt_with_a_leading_dash_arrives_intact(
    runner: GeminiRunner, api: MockGemini, workdir: str
) -> None:
    prompt = "-" + "".join(f"line {n:06d}: the quick brown fox – ünïcödé ✓\n" for n in range(4500)) + "END"
    assert len(prompt.encode()) > 200_000
    api.scenario, api.token_delay = "slow", 0.05
    async with contextlib.aclosing(runner.stream(request(prompt, workdir))) as stream:
        async for chunk in stream:
            if chunk.delta == SLOW_WORDS[0]:
                (cmdline,) = [cmd for _, cmd in processes_in(workdir) if "gemini" in cmd]
                assert "quick brown fox" not in cmdline  # the prompt is not in argv

    assert user_texts(last_request(api))[-1] == prompt


async def test_history_without_a_session_is_flattened(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    history = [Message.user("first"), Message.assistant("an earlier answer"), Message.user("second question")]
    await runner.complete(ChatRequest(messages=history, cwd=workdir, timeout=RUN_LIMIT))

    body = last_request(api)
    assert [c["role"] for c in body["contents"]] == ["user"]
    prompt = user_texts(body)[-1]
    assert "an earlier answer" in prompt and prompt.rstrip().endswith("second question")


async def test_empty_prompt_is_refused_before_gemini_starts(
    runner: GeminiRunner, api: MockGemini, workdir: str
) -> None:
    # gemini itself would wait 0.5 s for stdin and exit 42 ("No input provided via stdin").
    with pytest.raises(llmrun.InvalidRequest):
        await runner.complete(request("", workdir))
    assert api.requests == [] and processes_in(workdir) == []


# --- 3. the model asking for a tool -------------------------------------------------------


async def test_tool_call_is_left_unexecuted_by_default(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario = "tool_use"
    response = await runner.complete(request("Run something", workdir))

    assert response.content == f"{TOOL_PREAMBLE}\n\nTool finished: {DEFAULT_TEXT}"
    use, result = response.agent_events
    assert (use.kind, use.name, use.input) == ("tool_use", TOOL_NAME, TOOL_INPUT)
    assert result.kind == "tool_result" and result.id == use.id and result.is_error
    assert f'Tool "{TOOL_NAME}" not found' in str(result.output)
    # The command never ran: not in the answer, not in what went back to the model.
    first, second = api.generate_requests
    assert TOOL_NAME not in offered_tools(first["json"])
    wire = json.dumps(second["json"]["contents"][-1])
    assert "functionResponse" in wire and "mock-tool-ran" not in wire
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)  # both turns


async def test_tool_runs_when_allowed(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario = "tool_use"
    response = await runner.complete(request("Run something", workdir, allow_tools=True))

    use, result = response.agent_events
    assert use.name == TOOL_NAME and result.id == use.id and not result.is_error
    assert result.output == "mock-tool-ran"
    assert TOOL_NAME in offered_tools(api.generate_requests[0]["json"])


# --- 4. errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "error", "exit_code"),
    [
        ("http_401", llmrun.AuthenticationError, 145),
        ("http_429", llmrun.RateLimitError, 173),
        ("http_500", llmrun.ServiceUnavailable, 244),
        ("http_503", llmrun.ServiceUnavailable, 247),
        ("http_404_model", llmrun.ModelNotFound, 1),
        ("http_400_context", llmrun.ContextLengthExceeded, 144),
    ],
)
async def test_http_errors_are_typed_within_seconds(
    runner: GeminiRunner, api: MockGemini, workdir: str, scenario: str, error: type, exit_code: int
) -> None:
    api.scenario = scenario
    reports_before = tmp_reports()
    with pytest.raises(llmrun.RunnerError) as caught:
        await runner.complete(request("hi", workdir))

    exc = caught.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert exc.process_exit_code == exit_code and exc.runner == "gemini"
    # The message is the API's, without gemini's wrapping or its stack trace (which stays in stderr).
    assert HTTP_ERRORS[scenario][2] in exc.message
    assert " at " not in exc.message and "[API Error" not in exc.message
    assert "Error when talking to Gemini API" in exc.stderr
    assert len(api.generate_requests) == 1  # no retries
    # gemini's error report went to the runner's private directory and is gone.
    assert tmp_reports() == reports_before
    assert runner._private and os.listdir(os.path.join(runner._private, "tmp")) == []
    await assert_no_processes_in(workdir, within=0)


@pytest.mark.skipif(not IS_ROOT, reason="gemini reads system settings only from root's files")
async def test_runner_bounds_gemini_retries(runner: GeminiRunner, api: MockGemini, workdir: str, env: dict) -> None:
    settings = json.loads((Path(env["HOME"]) / ".gemini" / "settings.json").read_text())
    assert "maxAttempts" not in settings["general"]  # only the runner's system defaults bound them
    api.scenario = "http_500"
    started = time.monotonic()
    with pytest.raises(llmrun.ServiceUnavailable):
        await runner.complete(request("hi", workdir))
    assert len(api.generate_requests) == 1 and time.monotonic() - started < 10
    assert runner._defaults_file and json.loads(Path(runner._defaults_file).read_text()) == {
        "general": {"maxAttempts": 1}
    }


async def test_missing_api_key_is_an_authentication_error(
    runner: GeminiRunner, api: MockGemini, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await runner.complete(request("hi", workdir))

    assert caught.value.process_exit_code == 41
    assert "GEMINI_API_KEY" in caught.value.message
    assert caught.value.hint and "GEMINI_API_KEY" in caught.value.hint
    assert api.requests == []


async def test_untrusted_directory_names_the_fix(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    with pytest.raises(llmrun.RunnerError) as caught:
        await runner.complete(request("hi", workdir, options={"skip_trust": False}))

    exc = caught.value
    assert exc.process_exit_code == 55
    assert "trusted directory" in exc.message and "\x1b" not in exc.message
    assert exc.hint and "skip_trust" in exc.hint
    assert api.requests == []


# --- 5. sessions --------------------------------------------------------------------------


async def test_resume_sends_only_the_new_turn_into_the_session(
    runner: GeminiRunner, api: MockGemini, workdir: str
) -> None:
    first = await runner.complete(request("first", workdir))
    assert first.session_id

    history = [Message.user("first"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
    second = await runner.complete(
        ChatRequest(messages=history, session_id=first.session_id, cwd=workdir, timeout=RUN_LIMIT)
    )

    assert second.content == DEFAULT_TEXT and second.session_id == first.session_id
    contents = last_request(api)["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert "first" in texts(contents[0]) and texts(contents[1]) == [DEFAULT_TEXT]
    assert texts(contents[2]) == ["second question"]  # no transcript sent again


async def test_unknown_session_is_session_not_found(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    await runner.complete(request("first", workdir))  # the project has a session, just not this one
    made_up = str(uuid.uuid4())
    with pytest.raises(llmrun.SessionNotFound) as caught:
        await runner.complete(request("again", workdir, session_id=made_up))

    assert made_up in str(caught.value) and caught.value.process_exit_code == 42
    assert len(api.generate_requests) == 1


# --- 6. no process outlives its run -------------------------------------------------------


async def test_stall_timeout_ends_a_silent_run(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario = "stall"  # the first word, then silence
    deltas = []
    # The limit must exceed gemini's own start-up (over a second, several under load), which
    # also counts as silence; only the mock's endless pause after the first word may reach it.
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        async with contextlib.aclosing(runner.stream(request("Count", workdir, stall_timeout=6))) as stream:
            async for chunk in stream:
                deltas.append(chunk.delta)
                assert processes_in(workdir)
    assert deltas == [SLOW_WORDS[0]]
    assert "stall" in str(caught.value) and caught.value.runner == "gemini"
    await assert_no_processes_in(workdir)


async def test_hard_timeout_ends_a_hanging_run(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario = "hang"
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await asyncio.wait_for(runner.complete(request("hi", workdir, timeout=3)), timeout=20)
    assert "time limit" in str(caught.value)
    await assert_no_processes_in(workdir)


async def test_leaving_a_stream_early_stops_gemini(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", 0.5
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            if chunk.delta:
                assert chunk.delta == SLOW_WORDS[0] and processes_in(workdir)
                break
    await assert_no_processes_in(workdir)


async def test_cancelling_the_task_stops_gemini(runner: GeminiRunner, api: MockGemini, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", 0.5
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
    await assert_no_processes_in(workdir)


# --- 7. health ----------------------------------------------------------------------------


async def test_health_reports_configured_auth_without_asking_the_model(
    runner: GeminiRunner, api: MockGemini, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    report = await runner.health()
    assert report.status == "ok", report
    assert report.version == gemini_version()
    assert report.authenticated is True and "GEMINI_API_KEY" in report.message
    assert api.requests == []


async def test_health_probe_proves_auth(
    runner: GeminiRunner, api: MockGemini, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    report = await runner.health(probe=True)
    assert report.status == "ok" and report.authenticated is True and report.latency_ms is not None
    assert len(api.generate_requests) == 1


async def test_health_probe_without_a_key_is_unauthenticated(
    runner: GeminiRunner, api: MockGemini, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("GEMINI_API_KEY")  # the settings still name an auth type: configured, not working
    assert (await runner.health()).status == "ok"
    report = await runner.health(probe=True)
    assert report.status == "unauthenticated", report
    assert report.hint and "GEMINI_API_KEY" in report.hint


# --- 8. the command -----------------------------------------------------------------------


def test_command_prints_the_answer(env: dict[str, str], api: MockGemini, workdir: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "gemini", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == DEFAULT_TEXT + "\n"
    assert "Say hi" in user_texts(last_request(api))
