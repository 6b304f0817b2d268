"""End to end: llmrun's CopilotRunner driving the real `copilot` against tests/mock_openai_chat.py.

Every test runs the installed GitHub Copilot CLI (CI installs it with
`npm install -g @github/copilot`) in a throwaway HOME, in copilot's offline BYOK mode
(`realcli.copilot_env`: COPILOT_OFFLINE, COPILOT_PROVIDER_BASE_URL at the mock,
COPILOT_PROVIDER_API_KEY=sk-test, COPILOT_MODEL), so it talks only to the mock OpenAI Chat
Completions API on 127.0.0.1 and needs no GitHub login. Run them inside a loopback-only
network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_copilot.py'

They are skipped when `copilot` is not installed.

copilot 1.0.102 retries a 401 twice (about 1 s apart), a 5xx five times (about 15 s in
all) and a 429 five times with 6-13 s between attempts, with no setting to change that.
The runner stops a run after `max_retries` retries (default 2); the tests show that, and
that a timeout ends copilot's own retrying. `LLMRUN_SLOW_TESTS=1` adds the test that
waits for copilot's own report of a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, ChatResponse, Message
from llmrun.runners.copilot import CopilotRunner

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, SLOW_WORDS, THINKING_DELTAS, TOOL_PREAMBLE, MockOpenAIChat
from realcli import become, copilot_env, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 40.0  # hard limit given to every run: a broken run fails instead of hanging
SLOW_DELAY = 0.15
KILL_GRACE = 3.0  # process.Limits().kill_grace: SIGTERM, then SIGKILL after this long
MARKER = "mock-tool-ran"
SHELL_CALL = {"command": f"echo {MARKER} > marker.txt; echo {MARKER}"}


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def copilot_binary() -> str:
    """Skips every test of this module, with the install command, when copilot is absent."""
    return require_binary("copilot")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copilot unpacks its package (235 MB) into the cache on first use: once per module."""
    return tmp_path_factory.mktemp("copilot-cache")


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat, cache_dir: Path) -> dict[str, str]:
    """Make this process's environment the isolated one that copilot must see."""
    isolated = copilot_env(tmp_path, api.base_url, cache_dir=cache_dir)
    return become(monkeypatch, tmp_path, isolated)


@pytest.fixture
def runner(env: dict[str, str]) -> CopilotRunner:
    made = llmrun.get_runner("copilot")
    assert isinstance(made, CopilotRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


# --- helpers ------------------------------------------------------------------------------


def native_binary() -> str:
    """The real copilot that the `copilot` node launcher on PATH starts."""
    loader = os.path.realpath(shutil.which("copilot") or "copilot")
    found = glob.glob(os.path.join(os.path.dirname(loader), "node_modules", "@github", "copilot-*", "copilot"))
    assert found, f"no native copilot next to {loader}"
    return found[0]


def processes_running(path: str) -> set[int]:
    """Pids of live processes whose command line names `path`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if path in cmdline and state not in ("Z", "X"):
            found.add(int(entry))
    return found


async def assert_gone(pids: set[int], path: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (left := processes_running(path) & pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, f"copilot processes survived: {left}"


def last_request(api: MockOpenAIChat) -> dict[str, Any]:
    requests = api.chat_requests
    assert requests, "copilot sent no chat request"
    body = requests[-1]["json"]
    assert isinstance(body, dict)
    return body


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def user_texts(body: dict[str, Any]) -> list[str]:
    # Copilot puts `<current_datetime>…</current_datetime>` and a blank line before each prompt.
    texts = [text_of(m["content"]) for m in body["messages"] if m.get("role") == "user"]
    return [re.sub(r"^<current_datetime>.*?</current_datetime>\n\n", "", t, flags=re.S) for t in texts]


def copilot_version() -> str:
    out = subprocess.run(["copilot", "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"\d+\.\d+\.\d+", out)
    assert match, out
    return match.group(0)


# --- a plain answer -----------------------------------------------------------------------


async def test_complete_text(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 7, 19)
    assert response.session_id and uuid.UUID(response.session_id)
    assert response.model == "mock-model" and response.runner == "copilot"
    assert response.agent_events == []
    assert len(api.chat_requests) == 1
    body = last_request(api)
    assert body["stream"] is True and body["model"] == "mock-model"
    assert user_texts(body) == ["Say hello"]  # the prompt came whole over stdin


async def test_cached_tokens_are_reported_once(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "usage_cached"
    usage = (await runner.complete(request("Say hello", workdir))).usage

    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (12, 100, 7)
    assert usage.to_openai()["prompt_tokens"] == 112


async def test_the_model_asked_for_is_used(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    response = await runner.complete(request("hi", workdir, model="mock-model-large"))

    assert last_request(api)["model"] == "mock-model-large"
    assert response.model == "mock-model-large"


async def test_no_private_file_outlives_the_run(runner: CopilotRunner, workdir: str) -> None:
    await runner.complete(request("hi", workdir, system="Answer briefly."))

    assert runner._private is not None and os.listdir(runner._private) == []
    await runner.aclose()
    assert not os.path.exists(runner._private or "/nonexistent")


# --- token streaming ----------------------------------------------------------------------


async def test_stream_yields_token_deltas_as_they_arrive(
    runner: CopilotRunner, api: MockOpenAIChat, workdir: str
) -> None:
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
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 7
    assert ChatResponse.from_chunks(chunks).content == "".join(SLOW_WORDS)


async def test_thinking_is_returned_once(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "thinking"
    response = await runner.complete(request("Think first", workdir))

    assert response.thinking == "".join(THINKING_DELTAS)
    assert response.content == DEFAULT_TEXT


# --- what reaches the API -----------------------------------------------------------------


async def test_system_prompt_is_added_to_copilots_own(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    req = ChatRequest(
        messages=[Message.system("-Rule one."), Message.user("hi")], system="Rule two.", cwd=workdir, timeout=RUN_LIMIT
    )
    await runner.complete(req)

    system = text_of(last_request(api)["messages"][0]["content"])
    assert "GitHub Copilot CLI" in system  # copilot's own prompt stays
    assert "-Rule one.\n\nRule two." in system
    assert user_texts(last_request(api)) == ["hi"]


async def test_200kb_prompt_arrives_intact(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    prompt = "-" + "".join(f"line {n:06d}: the quick brown fox – ünïcödé ✓\n" for n in range(4500)) + "END"
    assert len(prompt.encode()) > 200_000

    response = await runner.complete(request(prompt, workdir))

    assert response.content == DEFAULT_TEXT
    assert user_texts(last_request(api)) == [prompt]


async def test_history_without_a_session_is_flattened(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    history = [Message.user("first"), Message.assistant("an earlier answer"), Message.user("second question")]
    await runner.complete(ChatRequest(messages=history, cwd=workdir, timeout=RUN_LIMIT))

    (prompt,) = user_texts(last_request(api))
    assert "first" in prompt and "an earlier answer" in prompt
    assert prompt.rstrip().endswith("second question")


# --- the model asking for a tool -------------------------------------------------------


async def test_tool_call_is_left_unexecuted_by_default(
    runner: CopilotRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL
    response = await runner.complete(request("Run something", workdir))

    assert not (Path(workdir) / "marker.txt").exists(), "the shell command ran"
    assert response.content == f"{TOOL_PREAMBLE}\n\nTool finished: {DEFAULT_TEXT}"
    use, denied = response.agent_events
    assert (use.kind, use.name, use.input) == ("tool_use", "bash", SHELL_CALL)
    # Denied by llmrun's rule: without it copilot refuses the write only for want of a user to ask.
    assert denied.kind == "permission_denied" and denied.id == use.id and "rules: `shell`" in (denied.message or "")
    tool_messages = [m for m in last_request(api)["messages"] if m.get("role") == "tool"]
    assert tool_messages and MARKER not in json.dumps(tool_messages)
    assert len(api.chat_requests) == 2
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)  # both model calls


async def test_read_only_command_is_denied_too(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    # Copilot runs read-only commands like `echo` unasked; llmrun denies the shell as a whole.
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", {"command": f"echo {MARKER}"}
    response = await runner.complete(request("Run something", workdir))

    assert [e.kind for e in response.agent_events] == ["tool_use", "permission_denied"]
    assert MARKER not in json.dumps([m for m in last_request(api)["messages"] if m.get("role") == "tool"])


async def test_tool_call_runs_when_allowed(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL
    response = await runner.complete(request("Run something", workdir, allow_tools=True))

    assert (Path(workdir) / "marker.txt").read_text().strip() == MARKER
    use, result = response.agent_events
    assert use.name == "bash" and result.kind == "tool_result" and result.id == use.id and not result.is_error
    assert MARKER in json.dumps(result.output)
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")


# --- errors -------------------------------------------------------------------------------


async def test_401_is_an_authentication_error_never_an_answer(
    runner: CopilotRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "http_401"
    chunks: list[llmrun.ChatChunk] = []
    with pytest.raises(llmrun.RunnerError) as caught:
        async with contextlib.aclosing(runner.stream(request("hi", workdir))) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    exc = caught.value
    assert type(exc) is llmrun.AuthenticationError, f"{type(exc).__name__}: {exc}"
    assert "HTTP 401" in str(exc) and exc.process_exit_code == 1
    assert exc.hint and "COPILOT_PROVIDER_API_KEY" in exc.hint
    assert not any(c.delta or c.is_final for c in chunks), chunks
    assert len(api.chat_requests) == 3  # copilot retries a 401 twice ("transient_auth_error")


async def test_429_is_a_rate_limit_error(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_429"
    with pytest.raises(llmrun.RateLimitError) as caught:
        await runner.complete(request("hi", workdir, options={"max_retries": 0}))

    assert "HTTP 429" in str(caught.value) and "Rate limit reached" in str(caught.value)
    assert caught.value.process_exit_code is not None
    assert len(api.chat_requests) == 1  # stopped before copilot's first retry, 6-7 s later


async def test_500_retries_are_bounded_and_typed(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_500"
    chunks: list[llmrun.ChatChunk] = []
    with pytest.raises(llmrun.ServiceUnavailable) as caught:
        async with contextlib.aclosing(runner.stream(request("hi", workdir))) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    assert "HTTP 500" in str(caught.value) and "(stopped after 2 retries)" in str(caught.value)
    assert len(api.chat_requests) == 3
    retries = [c.agent_event for c in chunks if c.agent_event is not None]
    assert [e.kind for e in retries] == ["retry", "retry"]
    assert not any(c.delta for c in chunks)


async def test_a_timeout_ends_copilots_own_retrying(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_429"
    before = processes_running(native_binary())
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await runner.complete(request("hi", workdir, timeout=6, options={"max_retries": None}))

    assert "time limit" in str(caught.value)
    assert 1 <= len(api.chat_requests) <= 2
    await assert_gone(processes_running(native_binary()) - before, native_binary(), within=1)


@pytest.mark.skipif(not os.environ.get("LLMRUN_SLOW_TESTS"), reason="waits ~20 s for copilot; set LLMRUN_SLOW_TESTS=1")
async def test_copilots_own_report_of_500_is_typed(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_500"
    started = time.monotonic()
    with pytest.raises(llmrun.ServiceUnavailable) as caught:
        await runner.complete(request("hi", workdir, options={"max_retries": None}))
    print(f"copilot reported the 500 after {time.monotonic() - started:.1f} s")
    assert "retried 5 times" in str(caught.value) and caught.value.process_exit_code == 1
    assert len(api.chat_requests) == 6


async def test_without_a_login_copilot_says_how_to_log_in(
    runner: CopilotRunner, api: MockOpenAIChat, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("COPILOT_OFFLINE", "COPILOT_PROVIDER_BASE_URL", "COPILOT_PROVIDER_API_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await runner.complete(request("hi", workdir))

    assert str(caught.value).startswith("No authentication information found") and caught.value.process_exit_code == 1
    assert caught.value.hint and "gh auth login" in caught.value.hint and "COPILOT_GITHUB_TOKEN" in caught.value.hint
    assert api.chat_requests == []


# --- sessions -----------------------------------------------------------------------------


async def test_resume_sends_only_the_new_turn_into_the_session(
    runner: CopilotRunner, api: MockOpenAIChat, workdir: str
) -> None:
    first = await runner.complete(request("first", workdir))
    session = first.session_id
    assert session

    history = [Message.user("first"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
    second = await runner.complete(ChatRequest(messages=history, session_id=session, cwd=workdir, timeout=RUN_LIMIT))

    assert second.content == DEFAULT_TEXT
    assert second.session_id == session
    assert (second.usage.input_tokens, second.usage.output_tokens) == (12, 7)  # this run's, not the session's
    assert second.agent_events == []
    assert len(api.chat_requests) == 2
    body = last_request(api)
    assert user_texts(body) == ["first", "second question"]
    assert DEFAULT_TEXT in [text_of(m["content"]) for m in body["messages"] if m.get("role") == "assistant"]


async def test_unknown_session_is_session_not_found(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
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
    assert made_up in str(caught.value) and caught.value.process_exit_code == 1
    assert api.chat_requests == []


# --- no process outlives its run ----------------------------------------------------------


def test_the_launcher_alone_does_not_pass_a_signal_on(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    """Why the group kill matters: SIGTERM to the `copilot` launcher orphans the real copilot."""
    api.scenario = "hang"
    native = native_binary()
    before = processes_running(native)
    launcher = subprocess.Popen(
        ["copilot", "--output-format=json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        assert launcher.stdin is not None
        launcher.stdin.write(b"hi")
        launcher.stdin.close()
        assert api.wait_for_requests(1, 30), "copilot never called the API"
        started = processes_running(native) - before
        assert started, "no native copilot process seen"
        launcher.terminate()  # the launcher only, not its group
        launcher.wait(timeout=10)
        time.sleep(0.5)
        assert processes_running(native) & started, "the native copilot went with its launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)


async def test_cancelling_a_run_leaves_no_copilot_process(
    runner: CopilotRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "hang"
    native = native_binary()
    before = processes_running(native)
    task = asyncio.ensure_future(runner.complete(request("hi", workdir)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 30.0), "copilot never called the API"
        started = processes_running(native) - before
        assert started, "no native copilot process seen"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_gone(started, native, within=1.0)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    assert processes_running(native) <= before


async def test_stall_timeout_ends_a_hanging_run(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "hang"
    native = native_binary()
    before = processes_running(native)
    # Generous enough for copilot's silent start-up on a busy machine (about 1 s when idle).
    run = asyncio.ensure_future(runner.complete(request("hi", workdir, stall_timeout=4)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 30.0), "copilot never called the API"
        with pytest.raises(llmrun.RunnerTimeout) as caught:
            await asyncio.wait_for(run, timeout=30)
    finally:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run

    assert "stall" in str(caught.value)
    assert len(api.chat_requests) == 1
    await assert_gone(processes_running(native) - before, native)


async def test_leaving_a_stream_early_stops_copilot(runner: CopilotRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", 0.5
    native = native_binary()
    before = processes_running(native)
    deltas = []
    async with contextlib.aclosing(runner.stream(request("Count", workdir))) as stream:
        async for chunk in stream:
            if chunk.delta:
                deltas.append(chunk.delta)
                running = processes_running(native) - before
                assert running
                break
    assert deltas == [SLOW_WORDS[0]]
    await assert_gone(running, native)


# --- health -------------------------------------------------------------------------------


async def test_health_ok(runner: CopilotRunner, api: MockOpenAIChat) -> None:
    report = await runner.health()

    assert report.status == "ok", report
    assert report.version == copilot_version()
    assert report.authenticated is True and api.base_url in report.message
    assert report.binary and os.path.basename(report.binary) == "copilot"
    assert api.requests == []


async def test_probe_sees_a_missing_login(runner: CopilotRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COPILOT_OFFLINE", "COPILOT_PROVIDER_BASE_URL", "COPILOT_PROVIDER_API_KEY"):
        monkeypatch.delenv(name)
    report = await runner.health()
    assert report.status == "ok" and report.authenticated is None  # copilot cannot tell without a request

    report = await runner.health(probe=True)
    assert report.status == "unauthenticated", report
    assert "No authentication information found" in report.message and report.hint


# --- the command ----------------------------------------------------------------------------


def test_command_says_hi(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "copilot", "Say hi"],
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
