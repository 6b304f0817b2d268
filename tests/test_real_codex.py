"""End to end: llmrun's CodexRunner driving the real `codex` against tests/mock_responses.py.

Every test runs the installed OpenAI Codex CLI (CI installs it with
`npm install -g @openai/codex`) in a throwaway HOME and CODEX_HOME, with a fake API key,
talking only to the mock Responses API on 127.0.0.1. Codex has no base-URL variable: the
runner is given a provider named `mock` through its `extra_args` setting, as a user would
configure one (`codex_provider_args`), with codex's own retries at 0 unless a test says
otherwise. The tests are skipped when `codex` is not installed.

The runner hands its child `os.environ`, so each test replaces the environment of this
process with `realcli.codex_env()` through monkeypatch. Each run gets its own working
directory, which is also how the tests find the processes of a run in /proc afterwards:
none may survive an error, a timeout or a cancellation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.codex import CodexRunner

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_responses import (
    DEFAULT_TEXT,
    PATCH_FILE_NAME,
    REASONING_TEXT,
    TOOL_COMMAND,
    TOOL_PREAMBLE,
    TOOL_PREFIX,
    WRITE_FILE_NAME,
    MockResponses,
    codex_provider_args,
)
from realcli import assert_no_processes_in, become, codex_env, processes_in, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 30.0  # hard limit given to every run: a broken run fails instead of hanging
TOOL_MODEL = "gpt-5.5"  # a catalog model whose tools include the shell (`exec_command`) and `apply_patch`


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def codex_binary() -> str:
    """Skips every test of this module, with the install command, when codex is absent."""
    return require_binary("codex")


@pytest.fixture
def api():
    with MockResponses() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Make this process's environment the isolated one that codex must see.

    Everything is removed except PATH-like basics (and pytest's own variables), so no
    OPENAI_*, CODEX_*, LLMRUN_* or proxy variable of the developer's shell can leak into
    the child; llmrun's config file is pointed at a path that does not exist.
    """
    isolated = codex_env(tmp_path)
    return become(monkeypatch, tmp_path, isolated)


def make_runner(api: MockResponses, *, retries: int | None = 0, offline: bool = True) -> CodexRunner:
    made = llmrun.get_runner("codex", extra_args=codex_provider_args(api.url, retries=retries, offline=offline))
    assert isinstance(made, CodexRunner)
    return made


@pytest.fixture
def runner(env: dict[str, str], api: MockResponses) -> CodexRunner:
    return make_runner(api)


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


# --- helpers ------------------------------------------------------------------------------


def last_request(api: MockResponses) -> dict[str, Any]:
    requests = api.responses_requests
    assert requests, "codex sent no /v1/responses request"
    body = requests[-1]["json"]
    assert isinstance(body, dict), "the request body was not JSON (compressed?)"
    return body


def messages(body: dict[str, Any], role: str) -> list[list[dict[str, Any]]]:
    return [
        item.get("content") or []
        for item in body.get("input") or []
        if item.get("type") == "message" and item.get("role") == role
    ]


def texts(content: list[dict[str, Any]]) -> list[str]:
    return [part.get("text", "") for part in content if part.get("type") in ("input_text", "output_text")]


def tool_names(body: dict[str, Any]) -> list[str]:
    def names(tools: list[dict[str, Any]]) -> list[str]:
        out = []
        for tool in tools:
            out += names(tool.get("tools") or []) if tool.get("type") == "namespace" else [tool.get("name") or ""]
        return out

    found = names(body.get("tools") or [])
    for item in body.get("input") or []:
        if item.get("type") == "additional_tools":
            found += names(item.get("tools") or [])
    return found


def codex_version() -> str:
    out = subprocess.run(["codex", "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"\d+\.\d+\.\d+", out)
    assert match, out
    return match.group(0)


# --- 1. answers ---------------------------------------------------------------------------


async def test_complete_text(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    prompt = f"-Say hello ({uuid.uuid4().hex})"  # a leading dash is nothing special on stdin
    response = await runner.complete(request(prompt, workdir))

    assert response.content == DEFAULT_TEXT
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.usage.total_tokens == 19
    assert response.session_id and uuid.UUID(response.session_id)
    assert response.runner == "codex"
    assert response.thinking == "" and response.agent_events == []
    body = last_request(api)
    # None asked for: codex's own default answers, and the response names it as codex used it.
    assert body["model"].startswith("gpt-") and response.model == body["model"]
    assert texts(messages(body, "user")[-1]) == [prompt]
    assert len(api.responses_requests) == 1
    await assert_no_processes_in(workdir, within=1)


async def test_codexs_own_configured_model_is_kept(
    runner: CodexRunner, api: MockResponses, workdir: str, env: dict[str, str]
) -> None:
    # A model of the user's own provider, unknown to codex's catalog: it must reach the API as
    # the config names it, with no model of llmrun's in its place.
    (Path(env["CODEX_HOME"]) / "config.toml").write_text('model = "my-own-model"\n')
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT
    assert last_request(api)["model"] == "my-own-model"
    assert response.model == "my-own-model"  # from codex's session file
    assert runner.tool_default_model() == "my-own-model"


async def test_the_configured_model_is_asked_for(
    env: dict[str, str], api: MockResponses, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (Path(env["CODEX_HOME"]) / "config.toml").write_text('model = "my-own-model"\n')
    monkeypatch.setenv("LLMRUN_CODEX_MODEL", "gpt-5.5")  # llmrun's setting wins over codex's own
    response = await make_runner(api).complete(request("Say hello", workdir))

    assert last_request(api)["model"] == "gpt-5.5" == response.model


async def test_this_codex_knows_every_setting_llmrun_gives(
    env: dict[str, str], api: MockResponses, workdir: str
) -> None:
    # Only the provider is configured here, so all of llmrun's default settings reach codex
    # (those of a run with tools are a subset); one it did not know would come back as a
    # notice ("Codex is ignoring ... unrecognized configuration settings").
    runner = make_runner(api, offline=False)
    response = await runner.complete(request("Say hello", workdir))
    assert response.content == DEFAULT_TEXT
    assert response.agent_events == [], response.agent_events
    assert [r["path"] for r in api.requests] == ["/v1/responses"]


async def test_cached_usage_and_reasoning(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    api.scenario = "usage_cached"
    usage = (await runner.complete(request("Say hello", workdir))).usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (12, 100, 7)
    assert usage.to_openai()["prompt_tokens"] == 112

    api.scenario = "reasoning"
    response = await runner.complete(request("Think first", workdir))
    assert response.thinking == REASONING_TEXT
    assert response.content == DEFAULT_TEXT
    assert (response.usage.output_tokens, response.usage.reasoning_tokens) == (10, 3)


async def test_multibyte_text_and_a_200kb_prompt(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    api.text = "Héllo wörld 日本語 🙂 – ünïcödé ✓"
    prompt = "".join(f"line {n:06d}: the quick brown fox – ünïcödé ✓\n" for n in range(4500)) + "END"
    assert len(prompt.encode()) > 200_000  # over what one argv argument may hold

    response = await runner.complete(request(prompt, workdir))

    assert response.content == api.text
    assert texts(messages(last_request(api), "user")[-1]) == [prompt]


async def test_messages_arrive_whole_as_codex_finishes_them(
    runner: CodexRunner, api: MockResponses, workdir: str
) -> None:
    # Codex prints each message once it is complete: one delta, however the model streamed it.
    api.scenario, api.token_delay = "slow", 0.05
    chunks = [chunk async for chunk in runner.stream(request("Count", workdir))]
    assert [c.delta for c in chunks if c.delta] == ["one two three four five six"]
    assert chunks[-1].is_final and [c.is_final for c in chunks].count(True) == 1
    assert not runner.capabilities.token_streaming


# --- 2. what reaches the API --------------------------------------------------------------


async def test_system_prompt_replaces_the_base_instructions(
    runner: CodexRunner, api: MockResponses, workdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_dir = tmp_path / "temp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    system = f"You are a pirate. ({uuid.uuid4().hex})\nAnswer in one line."
    response = await runner.complete(
        ChatRequest(messages=[Message.system(system), Message.user("hi")], cwd=workdir, timeout=RUN_LIMIT)
    )

    assert response.content == DEFAULT_TEXT
    developer = messages(last_request(api), "developer")
    assert texts(developer[0]) == [system]
    assert not any("Codex" in text for text in texts(developer[0]))
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == [], "the system prompt file was not removed"


async def test_history_without_a_session_is_flattened(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    history = [Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")]
    await runner.complete(ChatRequest(messages=history, cwd=workdir, timeout=RUN_LIMIT))

    (prompt,) = texts(messages(last_request(api), "user")[-1])
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.rindex("Times 3?")


async def test_sampling_parameters_have_no_way_into_codex(
    runner: CodexRunner, api: MockResponses, workdir: str
) -> None:
    response = await runner.complete(request("hi", workdir, temperature=0.3, max_tokens=2, top_p=0.5, seed=7))

    body = last_request(api)
    assert not {"temperature", "top_p", "max_output_tokens", "seed"} & body.keys(), sorted(body)
    assert [warning.split(":")[0] for warning in response.warnings] == [
        "ignored parameter temperature",
        "ignored parameter top_p",
        "ignored parameter seed",
    ]
    # llmrun holds the limit itself, at about 4 characters a token.
    assert (response.content, response.finish_reason) == (DEFAULT_TEXT[:8], "length")


async def test_json_schema_and_image_reach_the_model(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["answer", "n"],
        "additionalProperties": False,
    }
    image = llmrun.ImagePart(data=base64.b64encode(tiny_png()).decode(), media_type="image/png")
    response = await runner.complete(
        ChatRequest(
            messages=[Message.user("Describe", images=[image])], json_schema=schema, cwd=workdir, timeout=RUN_LIMIT
        )
    )

    assert json.loads(response.content) == {"answer": DEFAULT_TEXT, "n": 42}
    body = last_request(api)
    assert body["text"]["format"]["schema"] == schema
    parts = messages(body, "user")[-1]
    (url,) = [p["image_url"] for p in parts if p.get("type") == "input_image"]
    assert base64.b64decode(url.split(",", 1)[1]) == tiny_png()
    assert "Describe" in texts(parts)


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = (2).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\x00\xff\x00\x00\xff\x00\x00" * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# --- 3. agent tools -----------------------------------------------------------------------


async def test_the_shell_is_not_offered_by_default(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    api.scenario = "tool_use"  # the mock asks for the shell even so
    response = await runner.complete(request("Run something", workdir, model=TOOL_MODEL))

    assert response.content == f"{TOOL_PREAMBLE}\n\n{TOOL_PREFIX}{DEFAULT_TEXT}"
    assert response.agent_events == []
    first, second = api.responses_requests
    assert "exec_command" not in tool_names(first["json"])
    assert "web_search" not in tool_names(first["json"])
    # Codex refused the call it had not offered: the command never ran.
    assert api.tool_outputs() == ["unsupported call: exec_command"]


async def test_writes_are_refused_by_default(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    # gpt-5.x models keep their own `apply_patch` tool: the read-only sandbox refuses it.
    api.scenario = "patch"
    response = await runner.complete(request("Add a file", workdir, model=TOOL_MODEL))

    assert response.content.endswith(f"{TOOL_PREFIX}{DEFAULT_TEXT}")
    assert not (Path(workdir) / PATCH_FILE_NAME).exists()
    (output,) = api.tool_outputs()
    assert "read-only sandbox" in output


async def test_read_only_sandbox_with_tools(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    # With tools but a read-only sandbox a command runs, and its write is refused.
    api.scenario = "tool_write"
    response = await runner.complete(
        request("Make a file", workdir, model=TOOL_MODEL, allow_tools=True, options={"sandbox": "read-only"})
    )

    assert response.content.endswith(f"{TOOL_PREFIX}{DEFAULT_TEXT}")
    assert not (Path(workdir) / WRITE_FILE_NAME).exists()
    (output,) = api.tool_outputs()
    assert "Read-only file system" in output


async def test_tools_run_when_allowed(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    api.scenario = "tool_use"
    response = await runner.complete(request("Run something", workdir, model=TOOL_MODEL, allow_tools=True))

    assert response.content == f"{TOOL_PREAMBLE}\n\n{TOOL_PREFIX}{DEFAULT_TEXT}"
    use, result = response.agent_events
    assert use.kind == "tool_use" and use.name == "command_execution" and TOOL_COMMAND in use.input["command"]
    assert result.kind == "tool_result" and result.id == use.id and not result.is_error
    assert result.output == "mock-tool-ran\n"
    assert "mock-tool-ran" in api.tool_outputs()[0]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)  # both requests

    api.scenario = "patch"
    response = await runner.complete(request("Add a file", workdir, model=TOOL_MODEL, allow_tools=True))
    assert (Path(workdir) / PATCH_FILE_NAME).read_text() == "patched by mock\n"
    use, result = response.agent_events
    assert use.name == "file_change" and result.output["status"] == "completed"


# --- 4. errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "error", "words"),
    [
        ("http_401", llmrun.AuthenticationError, "401"),
        ("http_429", llmrun.RateLimitError, "429"),
        ("http_500", llmrun.ServiceUnavailable, "high demand"),
        ("http_503", llmrun.ServiceUnavailable, "503"),
        ("context_length", llmrun.ContextLengthExceeded, "context window"),
        ("model_not_found", llmrun.ModelNotFound, "does not exist"),
    ],
)
async def test_errors_are_typed_within_seconds(
    runner: CodexRunner, api: MockResponses, workdir: str, scenario: str, error: type, words: str
) -> None:
    api.scenario = scenario
    with pytest.raises(llmrun.RunnerError) as caught:
        await runner.complete(request("hi", workdir))

    exc = caught.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert words in str(exc) and exc.runner == "codex" and exc.process_exit_code == 1
    assert len(api.responses_requests) == 1
    await assert_no_processes_in(workdir, within=1)


async def test_missing_api_key_is_an_authentication_error(
    runner: CodexRunner, api: MockResponses, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await runner.complete(request("hi", workdir))

    assert "OPENAI_API_KEY" in str(caught.value)
    assert caught.value.hint and "codex login" in caught.value.hint
    assert api.responses_requests == []


async def test_codex_retries_are_cut_short(env: dict[str, str], api: MockResponses, workdir: str) -> None:
    # Codex's own retries left at its defaults (five, with back-off, 401s included).
    runner = make_runner(api, retries=None)
    api.scenario = "http_401"
    with pytest.raises(llmrun.AuthenticationError):
        await runner.complete(request("hi", workdir))
    # Codex alone makes 6 requests over 7 s; it is stopped once it says it retries a 401.
    assert len(api.responses_requests) < 6

    api.scenario = "http_429"
    chunks: list[llmrun.ChatChunk] = []
    with pytest.raises(llmrun.RateLimitError, match="stopped after 1 retries"):
        async with contextlib.aclosing(runner.stream(request("hi", workdir, options={"max_retries": 1}))) as stream:
            async for chunk in stream:
                chunks.append(chunk)
    retries = [c.agent_event for c in chunks if c.agent_event and c.agent_event.kind == "retry"]
    assert len(retries) == 2 and all("429" in (r.message or "") for r in retries)
    await assert_no_processes_in(workdir)


# --- 5. sessions --------------------------------------------------------------------------


async def test_resume_sends_only_the_new_turn(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    first = await runner.complete(request("first question", workdir))
    assert first.session_id

    history = [Message.user("first question"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
    second = await runner.complete(
        ChatRequest(messages=history, session_id=first.session_id, cwd=workdir, timeout=RUN_LIMIT)
    )

    assert second.content == DEFAULT_TEXT and second.session_id == first.session_id
    # Codex reports the thread's running total (24/14); llmrun reports this turn's.
    assert (second.usage.input_tokens, second.usage.output_tokens) == (12, 7)
    assert second.agent_events == []
    body = last_request(api)
    users = [texts(content) for content in messages(body, "user")]
    assert ["first question"] in users and users[-1] == ["second question"]
    assert [DEFAULT_TEXT] in [texts(content) for content in messages(body, "assistant")]
    assert len(api.responses_requests) == 2


async def test_unknown_session_is_session_not_found(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    made_up = "01a1fe88-0000-7000-8000-000000000000"
    with pytest.raises(llmrun.SessionNotFound, match=made_up) as caught:
        await runner.complete(ChatRequest(messages=[Message.user("a")], session_id=made_up, cwd=workdir))

    assert caught.value.process_exit_code == 1
    assert api.responses_requests == []


# --- 6. no process outlives its run -------------------------------------------------------


async def test_stall_timeout_ends_a_hanging_run(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    api.scenario = "hang"
    run = asyncio.ensure_future(runner.complete(request("hi", workdir, stall_timeout=5)))
    try:
        assert await asyncio.to_thread(api.wait_for_requests, 1, 15.0), "codex never called the API"
        assert processes_in(workdir), "codex is not running in the work dir (or /proc cannot show it)"
        with pytest.raises(llmrun.RunnerTimeout, match="stall"):
            await asyncio.wait_for(run, timeout=20)
    finally:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
    await assert_no_processes_in(workdir)


async def test_leaving_a_stream_early_stops_codex(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    # An unknown model makes codex say so first ("Model metadata ... not found"), then it hangs.
    api.scenario = "hang"
    async with contextlib.aclosing(runner.stream(request("hi", workdir, model="mock-model"))) as stream:
        async for chunk in stream:
            assert chunk.agent_event is not None and chunk.agent_event.kind == "notice"
            assert processes_in(workdir)
            break
    await assert_no_processes_in(workdir)


async def test_cancelling_the_task_stops_codex(runner: CodexRunner, api: MockResponses, workdir: str) -> None:
    api.scenario = "hang"
    task = asyncio.ensure_future(runner.complete(request("hi", workdir)))
    assert await asyncio.to_thread(api.wait_for_requests, 1, 15.0), "codex never called the API"
    assert processes_in(workdir)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_no_processes_in(workdir)


# --- 7. health and models -----------------------------------------------------------------


async def test_health_with_an_api_key_in_the_environment(runner: CodexRunner, api: MockResponses) -> None:
    report = await runner.health()

    # Not logged in, but OPENAI_API_KEY is set: the mock provider uses it, codex's own would not.
    assert report.status == "ok", report
    assert report.version == codex_version()
    assert report.authenticated is None and "OPENAI_API_KEY" in report.message
    assert report.binary and os.path.basename(report.binary) == "codex"
    assert api.requests == []


async def test_health_without_credentials_is_unauthenticated(
    runner: CodexRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    report = await runner.health()

    assert report.status == "unauthenticated", report
    assert report.message == "Not logged in"
    assert report.hint and "codex login" in report.hint


async def test_health_after_codex_login(runner: CodexRunner, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["codex", "login", "--with-api-key"], input="sk-test\n", capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    report = await runner.health()
    assert report.status == "ok" and report.authenticated is True
    assert report.message.startswith("API key configured")


async def test_health_probe_asks_the_model(
    runner: CodexRunner, api: MockResponses, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    report = await runner.health(probe=True)
    assert report.status == "ok", report
    assert len(api.responses_requests) == 1

    api.scenario = "http_500"
    report = await runner.health(probe=True)
    assert report.status == "error" and "ServiceUnavailable" in report.message


async def test_models_from_codex_catalog(runner: CodexRunner, env: dict[str, str]) -> None:
    models = await runner.available_models()
    ids = [m.id for m in models]
    assert "gpt-6.1-sol" in ids and "codex-auto-review" not in ids
    assert [m.id for m in models if m.is_default] == []  # codex's own choice, which its config does not name
    (Path(env["CODEX_HOME"]) / "config.toml").write_text('model = "gpt-5.5"\n')
    assert [m.id for m in await runner.available_models() if m.is_default] == ["gpt-5.5"]


# --- 8. the command -----------------------------------------------------------------------


def run_llmrun(api: MockResponses, env: dict[str, str], cwd: str, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    config = Path(cwd) / "llmrun.toml"
    config.write_text(f"[runners.codex]\nextra_args = {json.dumps(codex_provider_args(api.url))}\n")
    child_env = dict(env, PYTHONPATH=str(ROOT), LLMRUN_CONFIG=str(config))
    return subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "codex", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env,
        cwd=cwd,
        timeout=60,
    )


def test_command_prints_the_answer(env: dict[str, str], api: MockResponses, workdir: str) -> None:
    done = run_llmrun(api, env, workdir, "Say hi")

    assert done.returncode == 0, done.stderr
    assert done.stdout == DEFAULT_TEXT + "\n"
    assert texts(messages(last_request(api), "user")[-1]) == ["Say hi"]


def test_command_jsonl_from_stdin(env: dict[str, str], api: MockResponses, workdir: str) -> None:
    prompt = "A prompt on stdin\nwith two lines"
    done = run_llmrun(api, env, workdir, "--jsonl", "-", stdin=prompt)

    assert done.returncode == 0, done.stderr
    chunks = [json.loads(line) for line in done.stdout.splitlines()]
    assert "".join(chunk.get("delta", "") for chunk in chunks) == DEFAULT_TEXT
    final = chunks[-1]
    assert final["finish_reason"] == "stop" and final["session_id"]
    assert (final["usage"]["input_tokens"], final["usage"]["output_tokens"]) == (12, 7)


def test_command_maps_errors_to_exit_codes(env: dict[str, str], api: MockResponses, workdir: str) -> None:
    api.scenario = "http_401"
    done = run_llmrun(api, env, workdir, "--jsonl", "Say hi")

    assert done.returncode == llmrun.AuthenticationError.exit_code, (done.stdout, done.stderr)
    error = json.loads(done.stdout.splitlines()[-1])["error"]
    assert error["type"] == "AuthenticationError" and error["exit_code"] == 1
