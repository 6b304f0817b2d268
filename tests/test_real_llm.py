"""End to end: llmrun's LlmRunner driving the real `llm` (Simon Willison's) offline.

The models: llm-echo's `echo` (answers with the prompt it got, as JSON) and
`echo-needs-key`, llm-markov's `markov` (streams words with a delay), and llm's own OpenAI
plugin as `mock-chat`, pointed at tests/mock_openai_chat.py on 127.0.0.1 through
`extra-openai-models.yaml` in a throwaway llm user dir (`realcli.llm_env`). Nothing touches
the developer's own llm dir. Run them inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_llm.py'

They are skipped when `llm` or its two plugins are not installed (CI installs them with
`python3 -m pip install llm llm-echo llm-markov`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, ImagePart, Message
from llmrun.runners.llm import SYSTEM_PROMPT_ARGV_LIMIT, LlmRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, SLOW_WORDS, MockOpenAIChat
from realcli import become, llm_env, processes_in

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(60)]

RUN_LIMIT = 30.0
INSTALL = "python3 -m pip install llm llm-echo llm-markov"
# llm-echo's canned reasoning with its `thinking` option.
ECHO_THINKING = "First I consider the prompt, then I decide what to say."
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5d2b1d60000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module", autouse=True)
def llm_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Skips the module, with the install command, when llm or a plugin is missing."""
    path = shutil.which("llm")
    if path is None:
        pytest.skip(f"llm is not installed (CI installs it with: {INSTALL})")
    user_dir = tmp_path_factory.mktemp("llm-probe")
    env = {**os.environ, "LLM_USER_PATH": str(user_dir)}
    listed = subprocess.run([path, "models", "list"], capture_output=True, text=True, env=env, timeout=30).stdout
    missing = [name for name in ("Echo: echo", "Markov: markov") if name not in listed]
    if missing:
        pytest.skip(f"llm lacks the plugin models {missing} (install them with: {INSTALL})")
    return path


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    """Make this process's environment the isolated one that llm must see."""
    isolated = llm_env(tmp_path, api.base_url)
    return become(monkeypatch, tmp_path, isolated)


@pytest.fixture
def runner(env: dict[str, str]) -> LlmRunner:
    made = llmrun.get_runner("llm")
    assert isinstance(made, LlmRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


def logged(env: dict[str, str]) -> list[dict[str, Any]]:
    """What llm logged in the throwaway user dir."""
    database = Path(env["LLM_USER_PATH"]) / "logs.db"
    if not database.exists():
        return []
    out = subprocess.run(
        ["llm", "logs", "list", "--json", "--count=0"], capture_output=True, text=True, env=env, timeout=30
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


# --- plain answers ----------------------------------------------------------------------


async def test_prompt_goes_over_stdin_and_system_prompt_through_its_flag(
    runner: LlmRunner, env: dict[str, str], workdir: str
) -> None:
    prompt = "-starts with a dash\nand runs over lines: ünïcödé ✓ 日本語"
    req = ChatRequest(
        messages=[Message.system("-Rule one."), Message.user(prompt)],
        system="Rule two.",
        model="echo",
        cwd=workdir,
        timeout=RUN_LIMIT,
    )
    response = await runner.complete(req)

    echoed = json.loads(response.content)
    assert echoed["prompt"] == prompt
    assert echoed["system"] == "-Rule one.\n\nRule two."
    assert echoed["stream"] is True
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.session_id is None
    assert logged(env) == [], "a request without `log` left a record in llm's database"


async def test_long_system_prompt_goes_through_a_fragment_file(
    runner: LlmRunner, workdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    line = "Regel: antworte kurz, ünïcödé ✓.\n"
    system = line * (SYSTEM_PROMPT_ARGV_LIMIT // len(line.encode()) + 20)
    assert len(system.encode()) > SYSTEM_PROMPT_ARGV_LIMIT

    response = await runner.complete(request("hi", workdir, model="echo", system=system))

    # llm strips a fragment's trailing newline.
    assert json.loads(response.content)["system"] == system.rstrip("\n")
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == [], "the run's temp files were not removed"


async def test_mock_chat_answers_with_usage(runner: LlmRunner, api: MockOpenAIChat, workdir: str) -> None:
    response = await runner.complete(request("Say hello", workdir, model="mock-chat"))

    assert response.content == DEFAULT_TEXT
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.model == "mock-chat" and response.runner == "llm"
    (call,) = api.chat_requests
    body = call["json"]
    assert body["stream"] is True and body["model"] == "mock-model"
    assert body["messages"][-1] == {"role": "user", "content": "Say hello"}


async def test_sampling_parameters_reach_the_api(runner: LlmRunner, api: MockOpenAIChat, workdir: str) -> None:
    req = request(
        "Say hello",
        workdir,
        model="mock-chat",
        temperature=0.3,
        max_tokens=77,
        top_p=0.5,
        seed=7,
        frequency_penalty=0.25,
        presence_penalty=-0.5,
        strict_params=True,  # nothing may be ignored
    )
    response = await runner.complete(req)

    assert response.content == DEFAULT_TEXT and response.warnings == []
    body = api.chat_requests[-1]["json"]
    sent = {name: body.get(name) for name in ("temperature", "max_tokens", "top_p", "seed")}
    assert sent == {"temperature": 0.3, "max_tokens": 77, "top_p": 0.5, "seed": 7}
    assert (body.get("frequency_penalty"), body.get("presence_penalty")) == (0.25, -0.5)


async def test_cached_tokens_are_reported_once(runner: LlmRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "usage_cached"
    usage = (await runner.complete(request("Say hello", workdir, model="mock-chat"))).usage

    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (12, 100, 7)
    assert usage.to_openai()["prompt_tokens"] == 112


async def test_history_without_a_session_is_flattened(runner: LlmRunner, api: MockOpenAIChat, workdir: str) -> None:
    history = [Message.user("first"), Message.assistant("an earlier answer"), Message.user("second question")]
    await runner.complete(ChatRequest(messages=history, model="mock-chat", cwd=workdir, timeout=RUN_LIMIT))

    prompt = api.chat_requests[-1]["json"]["messages"][-1]["content"]
    assert "first" in prompt and "an earlier answer" in prompt
    assert prompt.rstrip().endswith("second question")


async def test_image_goes_as_an_attachment(runner: LlmRunner, workdir: str) -> None:
    image = ImagePart(data=PNG, media_type="image/png")
    req = ChatRequest(messages=[Message.user("What is this?", images=[image])], model="echo", cwd=workdir)

    echoed = json.loads((await runner.complete(req)).content)

    (attachment,) = echoed["attachments"]
    assert attachment["type"] == "image/png"


# --- token streaming and reasoning ---------------------------------------------------------


async def test_markov_streams_pieces_as_they_come(runner: LlmRunner, workdir: str) -> None:
    words = "the quick brown fox jumps over the lazy dog"
    req = request(words, workdir, model="markov", options={"model_options": {"delay": 0.1, "length": 8}})
    deltas: list[tuple[float, str]] = []
    async with contextlib.aclosing(runner.stream(req)) as stream:
        async for chunk in stream:
            if chunk.delta:
                deltas.append((time.monotonic(), chunk.delta))

    assert len(deltas) >= 4, deltas
    assert deltas[-1][0] - deltas[0][0] >= 0.4, "the pieces arrived together: not streamed"
    assert set("".join(d for _, d in deltas).split()) <= set(words.split())


async def test_mock_tokens_stream_before_the_answer_is_complete(
    runner: LlmRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario, api.token_delay = "slow", 0.15
    stamps: list[float] = []
    text = ""
    async with contextlib.aclosing(runner.stream(request("Count", workdir, model="mock-chat"))) as stream:
        async for chunk in stream:
            if chunk.delta:
                stamps.append(time.monotonic())
                text += chunk.delta

    assert text == "".join(SLOW_WORDS)
    assert len(stamps) >= 3 and stamps[-1] - stamps[0] >= 0.45


async def test_reasoning_comes_back_as_thinking(runner: LlmRunner, workdir: str) -> None:
    req = request("Think first", workdir, model="echo", options={"model_options": {"thinking": True}})
    response = await runner.complete(req)

    assert response.thinking == ECHO_THINKING
    assert json.loads(response.content)["prompt"] == "Think first"


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "error", "words"),
    [
        ("http_401", llmrun.AuthenticationError, "Incorrect API key"),
        ("http_429", llmrun.RateLimitError, "Rate limit reached"),
        ("http_500", llmrun.ServiceUnavailable, "server had an error"),
    ],
)
async def test_api_errors_are_typed(
    runner: LlmRunner, api: MockOpenAIChat, workdir: str, scenario: str, error: type, words: str
) -> None:
    api.scenario = scenario
    chunks: list[llmrun.ChatChunk] = []
    with pytest.raises(llmrun.RunnerError) as caught:
        async with contextlib.aclosing(runner.stream(request("hi", workdir, model="mock-chat"))) as stream:
            async for chunk in stream:
                chunks.append(chunk)

    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert words in str(caught.value)
    assert caught.value.process_exit_code == 1 and "Error code" in caught.value.stderr
    assert not any(c.delta for c in chunks)


async def test_missing_key_is_an_authentication_error_with_the_way_out(runner: LlmRunner, workdir: str) -> None:
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await runner.complete(request("hi", workdir, model="echo-needs-key"))

    assert "No key found" in str(caught.value)
    assert caught.value.hint == "run `llm keys set echo-needs-key`, or set LLM_ECHO_NEEDS_KEY_KEY"


async def test_unknown_model_and_unknown_option(runner: LlmRunner, workdir: str) -> None:
    with pytest.raises(llmrun.ModelNotFound, match="no-such-model"):
        await runner.complete(request("hi", workdir, model="no-such-model"))
    with pytest.raises(llmrun.UnsupportedFeature, match="Extra inputs are not permitted"):
        await runner.complete(request("hi", workdir, model="echo", temperature=0.2))


# --- conversations ------------------------------------------------------------------------


async def test_a_logged_conversation_continues(
    runner: LlmRunner, api: MockOpenAIChat, env: dict[str, str], workdir: str
) -> None:
    first = await runner.complete(request("My name is Ada.", workdir, model="mock-chat", options={"log": True}))
    assert first.session_id, "a logged request carries its conversation id"
    (record,) = logged(env)
    assert record["conversation_id"] == first.session_id

    history = [Message.user("My name is Ada."), Message.assistant(first.content), Message.user("What is my name?")]
    second = await runner.complete(
        ChatRequest(messages=history, model="mock-chat", session_id=first.session_id, cwd=workdir, timeout=RUN_LIMIT)
    )

    assert second.session_id == first.session_id
    messages = api.chat_requests[-1]["json"]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "My name is Ada."),
        ("assistant", DEFAULT_TEXT),
        ("user", "What is my name?"),
    ]
    assert [r["conversation_id"] for r in logged(env)] == [first.session_id] * 2


async def test_missing_conversation_is_session_not_found(runner: LlmRunner, workdir: str) -> None:
    with pytest.raises(llmrun.SessionNotFound):
        await runner.complete(request("hi", workdir, model="echo", session_id="01nosuchconversation00000"))


# --- nothing is left behind ---------------------------------------------------------------


async def test_cancelling_a_run_leaves_no_llm_process(runner: LlmRunner, workdir: str) -> None:
    req = request("a b c d e f g h", workdir, model="markov", options={"model_options": {"delay": 1, "length": 50}})
    task = asyncio.ensure_future(runner.complete(req))
    try:
        deadline = time.monotonic() + 15
        while not processes_in(workdir):
            assert time.monotonic() < deadline, "llm did not start"
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)  # llm is streaming now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert processes_in(workdir) == []
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


# --- health and models --------------------------------------------------------------------


async def test_health_tells_whether_the_model_has_a_key(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    report = await llmrun.get_runner("llm", default_model="mock-chat").health()
    assert report.status == "ok", report
    assert report.version and report.message == "mock-chat needs no key"

    report = await llmrun.get_runner("llm", default_model="echo-needs-key").health()
    assert report.status == "unauthenticated", report
    assert "llm keys set echo-needs-key" in report.message

    monkeypatch.setenv("LLM_ECHO_NEEDS_KEY_KEY", "sk-test")
    report = await llmrun.get_runner("llm", default_model="echo-needs-key").health()
    assert report.status == "ok", report
    assert "LLM_ECHO_NEEDS_KEY_KEY" in report.message


async def test_llms_own_default_model_without_a_key_is_unauthenticated(env: dict[str, str]) -> None:
    report = await llmrun.get_runner("llm").health()

    assert report.status == "unauthenticated", report
    assert "llm keys set openai" in report.message


async def test_available_models_come_from_llm(runner: LlmRunner) -> None:
    models = {m.id for m in await runner.available_models()}

    assert {"echo", "markov", "mock-chat"} <= models
