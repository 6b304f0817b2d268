"""OpenAI Codex specifics: its command line, its JSONL events, its errors and health."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.registry import canonical_name, get_runner, get_runner_class
from llmrun.runners.codex import (
    DEFAULT_CONFIG,
    TOOLS_OFF_CONFIG,
    CodexParser,
    CodexRunner,
    error_from_message,
    thread_usage,
    toml_value,
)

from .conftest import FAKE_BIN, FAKE_TOOLS, FIXTURES, FakeRun, still_alive

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_responses import MockResponses

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CAPTURES = FIXTURES / "codex"
CODEX = next(tool for tool in FAKE_TOOLS if tool.runner == "codex")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


pytestmark = pytest.mark.usefixtures("temp_dir")  # each test sees the temp files of its own runs


@pytest.fixture
def codex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(CODEX, monkeypatch, record)


def parse(name: str, **options: object) -> tuple[list[llmrun.ChatChunk], CodexParser]:
    parser = CodexParser(**options)  # type: ignore[arg-type]
    return feed(parser, (CAPTURES / f"{name}.stdout").read_text().splitlines())


def feed(parser: CodexParser, lines: list[str]) -> tuple[list[llmrun.ChatChunk], CodexParser]:
    chunks = []
    for line in lines:
        chunks += parser.feed(line)
        if parser.finished:
            break
    return chunks + parser.close(), parser


def events(chunks: list[llmrun.ChatChunk]) -> list[llmrun.AgentEvent]:
    return [c.agent_event for c in chunks if c.agent_event is not None]


def invocation(request: ChatRequest, **settings: object) -> llmrun.process.Invocation:
    return CodexRunner(**settings).build_invocation(request, "codex")  # type: ignore[arg-type]


def settings_in(argv: list[str]) -> dict[str, str]:
    """The `-c key=value` settings given before `exec`."""
    head = argv[: argv.index("exec")]
    return dict(head[i + 1].split("=", 1) for i, arg in enumerate(head) if arg == "-c")


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- the command line -------------------------------------------------------------------


def test_command_line_defaults() -> None:
    inv = invocation(ChatRequest.of("hello"))
    argv = inv.argv
    exec_at = argv.index("exec")
    assert argv[exec_at : exec_at + 5] == ["exec", "--json", "--skip-git-repo-check", "--sandbox", "read-only"]
    assert "-m" not in argv  # none asked for: codex's own choice applies
    assert argv[-1] == "-" and "hello" not in " ".join(argv)
    assert inv.stdin == b"hello"
    assert "-C" not in argv and inv.cwd is None
    assert settings_in(argv) == dict(DEFAULT_CONFIG + TOOLS_OFF_CONFIG)
    assert settings_in(argv)["features.shell_tool"] == "false"
    assert "--dangerously-bypass-approvals-and-sandbox" not in argv


def test_allow_tools_opens_the_workspace_and_keeps_the_tools() -> None:
    argv = invocation(ChatRequest.of("hi", allow_tools=True, cwd="/work/dir")).argv
    assert option(argv, "--sandbox") == "workspace-write"
    assert option(argv, "-C") == "/work/dir"
    assert settings_in(argv) == dict(DEFAULT_CONFIG)


def test_sandbox_option() -> None:
    argv = invocation(ChatRequest.of("hi", allow_tools=True, options={"sandbox": "danger-full-access"})).argv
    assert option(argv, "--sandbox") == "danger-full-access"
    with pytest.raises(llmrun.UnsupportedFeature, match="needs allow_tools"):
        invocation(ChatRequest.of("hi", options={"sandbox": "workspace-write"}))
    with pytest.raises(llmrun.UnsupportedFeature, match="unknown codex sandbox"):
        invocation(ChatRequest.of("hi", allow_tools=True, options={"sandbox": "yolo"}))


def test_model_and_options_follow_the_request() -> None:
    request = ChatRequest.of(
        "hi",
        model="gpt-5.5",
        cwd="/w",
        options={
            "effort": "high",
            "profile": "work",
            "config": {"model_verbosity": "low", "sandbox_workspace_write.network_access": True},
            "extra_args": ["--ephemeral"],
        },
    )
    inv = invocation(request)
    argv = inv.argv
    assert option(argv, "-m") == "gpt-5.5" and option(argv, "--profile") == "work"
    assert inv.cwd == "/w"
    settings = settings_in(argv)
    assert settings["model_reasoning_effort"] == '"high"'
    assert settings["model_verbosity"] == '"low"'
    assert settings["sandbox_workspace_write.network_access"] == "true"
    assert argv[-2:] == ["--ephemeral", "-"]


def test_settings_the_user_gives_are_not_overridden() -> None:
    user = ["-c", "analytics.enabled=true", "--enable", "shell_tool", "--config=web_search='live'", "-s", "x"]
    argv = invocation(ChatRequest.of("hi"), extra_args=user).argv
    settings = settings_in(argv)
    assert "analytics.enabled" not in settings and "features.shell_tool" not in settings
    assert "web_search" not in settings
    assert settings["feedback.enabled"] == "false"
    assert "--sandbox" not in argv  # the user chose a sandbox


def test_configured_default_model_and_extra_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[runners.codex]\ndefault_model = "gpt-5.5"\nextra_args = ["-c", "model_provider=azure"]\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    runner = get_runner("codex")
    assert runner.default_model == "gpt-5.5"
    assert isinstance(runner, CodexRunner) and runner.extra_args == ["-c", "model_provider=azure"]


def test_history_is_flattened_without_a_session() -> None:
    request = ChatRequest(messages=[Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")])
    prompt = invocation(request).stdin.decode()  # type: ignore[union-attr]
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.index("Times 3?")
    assert prompt.rstrip().endswith("Times 3?")


def test_resuming_a_session_sends_only_the_new_turn() -> None:
    request = ChatRequest(
        messages=[Message.user("first"), Message.assistant("answer"), Message.user("second")],
        session_id="01a1fe8b-b019-7a13-b919-e8f59b295991",
        cwd="/w",
    )
    inv = invocation(request)
    assert inv.argv[-4:] == ["resume", "--", "01a1fe8b-b019-7a13-b919-e8f59b295991", "-"]
    # exec's own options come before `resume`, which has no --sandbox or -C of its own.
    assert inv.argv.index("--sandbox") < inv.argv.index("resume") and inv.argv.index("-C") < inv.argv.index("resume")
    assert inv.stdin == b"second"


def test_system_prompt_replaces_the_base_instructions_through_a_file() -> None:
    system = 'Be "terse"\nand kind ✓'
    inv = invocation(ChatRequest(messages=[Message.system(system), Message.user("hi")]))
    path = tomllib.loads("v = " + settings_in(inv.argv)["model_instructions_file"])["v"]
    assert Path(path).read_text() == system and path in inv.temp_files
    assert "terse" not in " ".join(inv.argv)
    for temp in inv.temp_files:
        Path(temp).unlink()


def test_json_schema_goes_to_output_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    inv = invocation(ChatRequest.of("hi", json_schema=schema))
    path = option(inv.argv, "--output-schema")
    assert json.loads(Path(path).read_text()) == schema and inv.temp_files == [path]
    Path(path).unlink()


def test_images_are_attached_from_data_before_any_other_option(temp_dir: Path) -> None:
    data_url = llmrun.ImagePart(url=f"data:image/png;base64,{PNG}")
    raw = llmrun.ImagePart(data=PNG, media_type="image/jpeg")
    inv = invocation(ChatRequest(messages=[Message.user("look", images=[data_url, raw])]))
    argv = inv.argv
    exec_at = argv.index("exec")
    # `-i` takes values up to the next option, so nothing positional may follow the images.
    assert argv[exec_at + 1] == "-i" and argv[exec_at + 3] == "-i" and argv[exec_at + 5] == "--json"
    first, second = argv[exec_at + 2], argv[exec_at + 4]
    assert first.endswith(".png") and second.endswith(".jpg")
    assert Path(first).read_bytes() == base64.b64decode(PNG) and inv.temp_files == [first, second]
    # Private files (0600) in a private directory (0700).
    assert Path(first).stat().st_mode & 0o777 == 0o600 and Path(first).parent.stat().st_mode & 0o777 == 0o700
    for temp in inv.temp_files:
        Path(temp).unlink()
    url = llmrun.ImagePart(url="https://e.invalid/a.png")
    with pytest.raises(llmrun.UnsupportedFeature, match="not from URLs"):
        invocation(ChatRequest(messages=[Message.user("x", images=[raw, url])]))
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == []  # the first image's file went with the refusal
    with pytest.raises(llmrun.UnsupportedFeature, match="base64"):
        invocation(
            ChatRequest(messages=[Message.user("x", images=[llmrun.ImagePart(data="@@", media_type="image/png")])])
        )


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'quote " and back\\slash',
        "new\nline\ttab",
        "bell\x07 del\x7f",
        "ünïcödé 日本 🙂",
        True,
        3,
        2.5,
        ["a", 1],
    ],
)
def test_toml_values_read_back_as_given(value: object) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_toml_tables() -> None:
    assert tomllib.loads(f"v = {toml_value({'a b': 'c', 'n': [True]})}")["v"] == {"a b": "c", "n": [True]}


async def test_temporary_files_are_removed_after_the_run(codex: FakeRun) -> None:
    codex.scenario("runner-schema")  # an answer that holds the JSON asked for
    request = ChatRequest.of("hi", system="Be terse", json_schema={"type": "object"})
    await codex.runner().complete(request)
    (recorded,) = codex.invocations()
    schema = option(recorded["argv"], "--output-schema")
    system = tomllib.loads("v = " + settings_in(["codex", *recorded["argv"]])["model_instructions_file"])["v"]
    assert not Path(schema).exists() and not Path(system).exists()


async def test_sampling_parameters_are_named_as_ignored_or_refused(codex: FakeRun) -> None:
    request = ChatRequest.of("hi", temperature=0.3, top_p=0.5, seed=7, max_tokens=100)
    response = await codex.runner().complete(request)
    assert CodexRunner.honoured_parameters == {}  # codex has no setting for any of them
    assert response.warnings == [
        f"ignored parameter {name}: OpenAI Codex has no way to set it" for name in ("temperature", "top_p", "seed")
    ]
    (recorded,) = codex.invocations()
    assert not any(word in " ".join(recorded["argv"]) for word in ("temperature", "top_p", "seed"))
    with pytest.raises(llmrun.UnsupportedFeature, match="temperature"):
        await codex.runner().complete(ChatRequest.of("hi", temperature=0.3, strict_params=True))
    assert len(codex.invocations()) == 1  # refused before codex started


# --- reading the captured output ---------------------------------------------------------


def test_plain_answer_usage_and_session() -> None:
    chunks, parser = parse("mock-exec-json", model="mock-model")
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    final = chunks[-1]
    assert final.finish_reason == "stop" and parser.finished and parser.error is None
    assert final.usage == llmrun.Usage(input_tokens=12, output_tokens=7)
    assert final.session_id == "01a1fe66-87b3-7fe3-a2c0-7356381cf643" and final.model == "mock-model"
    # The non-fatal "Model metadata ... not found" item is a notice, not an error or text.
    (notice,) = events(chunks)
    assert notice.kind == "notice" and "Model metadata" in (notice.message or "")


def test_reasoning_is_thinking_and_counted() -> None:
    chunks, _ = parse("runner-reasoning")
    assert "".join(c.thinking for c in chunks).startswith("**Thinking it over**")
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    usage = chunks[-1].usage
    assert usage is not None and (usage.output_tokens, usage.reasoning_tokens) == (10, 3)


def test_cached_tokens_are_not_counted_twice() -> None:
    chunks, _ = parse("runner-cached")
    usage = chunks[-1].usage
    assert usage is not None and (usage.input_tokens, usage.cache_read_tokens) == (12, 100)
    assert usage.to_openai()["prompt_tokens"] == 112 and usage.total_tokens == 119


def test_agent_commands_are_events_and_messages_paragraphs() -> None:
    chunks, _ = parse("runner-tooluse-allowed")
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    use, result = events(chunks)
    assert (use.kind, use.name, use.input) == (
        "tool_use",
        "command_execution",
        {"command": "/bin/bash -lc 'echo mock-tool-ran'"},
    )
    assert (result.kind, result.id, result.output, result.is_error) == ("tool_result", use.id, "mock-tool-ran\n", False)


def test_file_changes_are_events() -> None:
    chunks, _ = parse("runner-patch-allowed")
    use, result = events(chunks)
    assert use.name == "file_change" and use.input["changes"][0]["kind"] == "add"
    assert result.kind == "tool_result" and result.output["status"] == "completed" and not result.is_error


def test_without_tools_the_call_is_refused_before_it_runs() -> None:
    # The model asked for the shell; codex had not offered it and answered "unsupported call".
    chunks, _ = parse("runner-tooluse-toolsoff")
    assert events(chunks) == []
    assert "".join(c.delta for c in chunks).endswith("Tool finished: Hello from mock")
    assert "unsupported call: exec_command" in (CAPTURES / "runner-tooluse-toolsoff.stderr").read_text()


def item_line(kind: str, **item: object) -> str:
    return json.dumps({"type": kind, "item": item})


def test_other_items_and_unknown_events() -> None:
    lines = [
        '{"type":"thread.started","thread_id":"t-1"}',
        '{"type":"brand.new","x":1}',
        "not json",
        item_line("item.started", id="m1", type="mcp_tool_call", server="docs", tool="search", arguments={"q": "x"}),
        item_line("item.updated", id="m1", type="mcp_tool_call", server="docs", tool="search", status="in_progress"),
        item_line(
            "item.completed",
            id="m1",
            type="mcp_tool_call",
            server="docs",
            tool="search",
            arguments={"q": "x"},
            result={"content": [{"type": "text", "text": "found"}]},
            status="completed",
        ),
        item_line(
            "item.completed", id="m2", type="mcp_tool_call", server="docs", tool="get", error={"message": "boom"}
        ),
        item_line("item.completed", id="c1", type="command_execution", command="ls", exit_code=2, status="failed"),
        item_line("item.completed", id="c2", type="command_execution", command="rm -rf x", status="declined"),
        item_line("item.completed", id="w1", type="web_search", query="llmrun", action={"type": "search"}),
        item_line("item.completed", id="t1", type="todo_list", items=[{"text": "a", "completed": False}]),
        item_line("item.completed", id="r1", type="reasoning", text="one"),
        item_line("item.completed", id="r2", type="reasoning", text="two"),
        item_line("item.completed", id="a1", type="agent_message", text=""),
        '{"type":"turn.completed","usage":{"input_tokens":5,"output_tokens":1}}',
    ]
    chunks, parser = feed(CodexParser(), lines)
    found = [(e.kind, e.id, e.name, e.is_error) for e in events(chunks)]
    assert found == [
        ("tool_use", "m1", "docs.search", False),
        ("tool_result", "m1", "docs.search", False),
        ("tool_use", "m2", "docs.get", False),
        ("tool_result", "m2", "docs.get", True),
        ("tool_use", "c1", "command_execution", False),
        ("tool_result", "c1", "command_execution", True),
        ("tool_use", "c2", "command_execution", False),
        ("permission_denied", "c2", "command_execution", True),
        ("tool_use", "w1", "web_search", False),
        ("tool_result", "w1", "web_search", False),
    ]
    assert events(chunks)[1].output == {"content": [{"type": "text", "text": "found"}]}
    assert events(chunks)[3].output == "boom"
    assert "".join(c.thinking for c in chunks) == "one\n\ntwo"
    assert not any(c.delta for c in chunks)
    assert chunks[-1].session_id == "t-1" and parser.error is None


@pytest.mark.parametrize(
    ("capture", "error", "words"),
    [
        ("mock-401-json-noretry", llmrun.AuthenticationError, "401 Unauthorized"),
        ("mock-nokey-env", llmrun.AuthenticationError, "OPENAI_API_KEY"),
        ("mock-500-json-noretry", llmrun.ServiceUnavailable, "high demand"),
        ("runner-503", llmrun.ServiceUnavailable, "503"),
        ("connrefused-json-bounded", llmrun.ServiceUnavailable, "Connection failed"),
        ("runner-429-retries2", llmrun.RateLimitError, "429"),
        ("runner-context-length", llmrun.ContextLengthExceeded, "context window"),
        ("runner-model-not-found", llmrun.ModelNotFound, "no-such-model"),
    ],
)
def test_failed_turns_become_typed_errors(capture: str, error: type, words: str) -> None:
    chunks, parser = parse(capture)
    assert type(parser.error) is error, parser.error
    assert words in str(parser.error)
    assert not any(c.delta or c.is_final for c in chunks)


def test_missing_key_carries_a_login_hint() -> None:
    _, parser = parse("mock-nokey-env")
    assert parser.error is not None and parser.error.hint and "codex login" in parser.error.hint


def test_error_words() -> None:
    assert isinstance(error_from_message("unexpected status 403 Forbidden: no"), llmrun.AuthenticationError)
    assert isinstance(
        error_from_message("exceeded retry limit, last status: 502 Bad Gateway"), llmrun.ServiceUnavailable
    )
    assert isinstance(error_from_message("Quota exceeded. Check your plan"), llmrun.RateLimitError)
    assert isinstance(error_from_message("stream disconnected before completion"), llmrun.ServiceUnavailable)
    assert type(error_from_message("something odd")) is llmrun.RunnerError


def test_a_rejected_key_ends_the_run_at_its_first_retry() -> None:
    chunks, parser = parse("mock-401-json")  # codex itself retries it five times
    assert [e.kind for e in events(chunks)] == ["notice", "retry"]
    assert isinstance(parser.error, llmrun.AuthenticationError) and parser.finished


def test_retries_of_service_errors_are_bounded_and_reported() -> None:
    chunks, parser = parse("mock-500-json-defaultretries", max_retries=2)
    retries = [e for e in events(chunks) if e.kind == "retry"]
    assert len(retries) == 3 and "1/5" in (retries[0].message or "")
    assert isinstance(parser.error, llmrun.ServiceUnavailable)
    assert "stopped after 2 retries" in str(parser.error)


def test_retries_left_to_codex() -> None:
    chunks, parser = parse("mock-429-json-defaultretries", max_retries=None)
    assert len([e for e in events(chunks) if e.kind == "retry"]) == 5
    assert isinstance(parser.error, llmrun.RateLimitError) and "stopped" not in str(parser.error)
    # Codex's own bound below llmrun's: it gives up by itself.
    _, parser = parse("runner-429-retries2", max_retries=2)
    assert isinstance(parser.error, llmrun.RateLimitError) and "stopped" not in str(parser.error)


def test_lost_connections_and_websocket_failures_do_not_count() -> None:
    # Offline: WebSocket attempts, then a fallback to HTTPS; codex bounds these itself.
    chunks, parser = parse("noauth-exec-json-skipgit", max_retries=0)
    assert not parser.finished and len([e for e in events(chunks) if e.kind == "retry"]) == 4
    assert any("Falling back" in (e.message or "") for e in events(chunks) if e.kind == "notice")
    lines = [
        '{"type":"error","message":"Reconnecting... 1/5 (unexpected status 404 Not Found: x, url: ws://h/v1/responses)"}',
        '{"type":"error","message":"Reconnecting... waiting for network (Connection failed: error sending request)"}',
    ]
    _, parser = feed(CodexParser(max_retries=0), lines)
    assert parser.error is None and not parser.finished


def test_an_error_without_turn_failed_is_still_reported() -> None:
    _, parser = feed(CodexParser(), ['{"type":"error","message":"unexpected status 500 Internal Server Error"}'])
    assert isinstance(parser.error, llmrun.ServiceUnavailable) and not parser.finished


def test_resumed_usage_is_per_turn() -> None:
    chunks, _ = parse("runner-resume", resumed=True, baseline={"input_tokens": 12, "output_tokens": 7})
    assert chunks[-1].usage == llmrun.Usage(input_tokens=12, output_tokens=7)
    chunks, _ = parse("runner-resume", resumed=True)  # the earlier total is unknown
    assert chunks[-1].usage == llmrun.Usage(input_tokens=24, output_tokens=14)
    assert "running total" in (events(chunks)[0].message or "")


def write_session(codex_home: Path, thread_id: str, totals: list[dict[str, int]]) -> Path:
    day = codex_home / "sessions" / "2026" / "11" / "21"
    day.mkdir(parents=True)
    path = day / f"rollout-2026-11-21T14-38-50-{thread_id}.jsonl"
    lines = [json.dumps({"type": "session_meta", "payload": {"id": thread_id}})]
    for total in totals:
        info = {"total_token_usage": total, "last_token_usage": {}}
        lines.append(json.dumps({"type": "event_msg", "payload": {"type": "token_count", "info": info}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_thread_usage_from_the_session_file(tmp_path: Path) -> None:
    thread = "01a1fe8b-b019-7a13-b919-e8f59b295991"
    write_session(tmp_path, thread, [{"input_tokens": 5, "output_tokens": 1}, {"input_tokens": 12, "output_tokens": 7}])
    assert thread_usage(str(tmp_path), thread) == {"input_tokens": 12, "output_tokens": 7}
    assert thread_usage(str(tmp_path), "01a1fe8b-0000-0000-0000-000000000000") is None
    assert thread_usage(str(tmp_path), "../../etc/passwd") is None
    write_session(tmp_path / "other", thread, [])
    assert thread_usage(str(tmp_path / "other"), thread) == {}  # no turn counted yet


async def test_resume_reports_the_turn_not_the_thread(
    codex: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    thread = json.loads((CAPTURES / "runner-resume.stdout").read_text().splitlines()[0])["thread_id"]
    write_session(tmp_path / "codex-home", thread, [{"input_tokens": 12, "output_tokens": 7}])
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    codex.scenario("runner-resume")
    history = [Message.user("first"), Message.assistant("Hello from mock"), Message.user("second")]
    response = await codex.runner().complete(ChatRequest(messages=history, session_id=thread))
    assert response.session_id == thread and response.content == "Hello from mock"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    (recorded,) = codex.invocations()
    assert recorded["argv"][-4:] == ["resume", "--", thread, "-"] and recorded["stdin"] == "second"


async def test_unknown_session_is_session_not_found(codex: FakeRun) -> None:
    codex.scenario("runner-resume-missing")
    made_up = "01a1fe88-0000-7000-8000-000000000000"
    with pytest.raises(llmrun.SessionNotFound, match=made_up) as caught:
        await codex.runner().complete(ChatRequest(messages=[Message.user("q")], session_id=made_up))
    assert caught.value.process_exit_code == 1


async def test_a_run_stopped_after_its_retries_ends_at_once(codex: FakeRun) -> None:
    # The tool keeps retrying (here: hangs) after llmrun has seen enough; it is stopped.
    codex.scenario("mock-500-json-defaultretries")
    codex.fault("hang_after=7")
    with pytest.raises(llmrun.ServiceUnavailable, match="stopped after 2 retries"):
        await codex.runner().complete(ChatRequest.of("hi"))
    assert still_alive(codex.pids(), within=1) == []


def test_exit_errors() -> None:
    runner = CodexRunner()
    old = runner.error_for_exit(2, "error: unexpected argument '--json' found\n")
    assert isinstance(old, llmrun.ProcessFailed) and old.hint and "npm install" in old.hint
    config = runner.error_for_exit(1, "Error loading config.toml: bad key\nin `model_providers`")
    assert isinstance(config, llmrun.ProcessFailed) and "configuration" in str(config)
    assert "No prompt provided" in str(runner.error_for_exit(1, "No prompt provided via stdin.\n"))


# --- health and models ------------------------------------------------------------------


def login_status_not_logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["login", "status"], "login-status"]]))
    for name in ("CODEX_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


async def test_health_ok_when_logged_in(codex: FakeRun) -> None:
    report = await codex.runner().health()
    assert (report.status, report.version, report.authenticated) == ("ok", "0.169.0", True)
    assert "API key configured" in report.message


async def test_health_unauthenticated(codex: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    login_status_not_logged_in(monkeypatch)
    report = await codex.runner().health()
    assert report.status == "unauthenticated" and report.authenticated is False
    assert report.message == "Not logged in"
    assert report.hint and "codex login" in report.hint and "CODEX_API_KEY" in report.hint


async def test_health_with_keys_in_the_environment(codex: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    login_status_not_logged_in(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    report = await codex.runner().health()
    # Custom providers read it; codex's own openai provider does not: llmrun cannot tell.
    assert report.status == "ok" and report.authenticated is None and "OPENAI_API_KEY" in report.message
    report = await codex.runner(env={"CODEX_API_KEY": "sk-test"}).health()
    assert report.status == "ok" and report.authenticated is True


async def test_health_probe_that_fails_auth(codex: FakeRun) -> None:
    codex.scenario("mock-401-json-noretry")
    report = await codex.runner().health(probe=True)
    assert report.status == "unauthenticated"


async def test_health_outdated_and_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "codex"
    old.write_text("#!/bin/sh\necho 'codex-cli 0.39.0'\n")
    old.chmod(0o755)
    report = await CodexRunner(binary=str(old)).health()
    assert report.status == "outdated" and report.version == "0.39.0"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = await CodexRunner().health()
    assert report.status == "not_installed" and report.hint and "npm install -g @openai/codex" in report.hint


async def test_models_from_the_catalog(codex: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('model = "gpt-5.5"\n')
    models = await codex.runner().available_models()
    ids = [m.id for m in models]
    assert ids[0] == "gpt-6.1-sol"
    assert [m.id for m in models if m.is_default] == ["gpt-5.5"]  # the model of codex's own config
    assert "gpt-5.5" in ids and "codex-auto-review" not in ids  # hidden in the catalog
    assert all(m.source == "builtin" for m in models)  # codex lists what llmrun already knows


async def test_models_when_the_catalog_is_unreadable(codex: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["debug", "models"], "version"]]))
    assert [m.id for m in await codex.runner().available_models()] == [m for m, _ in CodexRunner.builtin_models]


# --- lookup -----------------------------------------------------------------------------


def test_names_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    assert canonical_name("codex") == canonical_name("OpenAI-Codex") == "codex"
    assert get_runner_class("codex-cli") is CodexRunner
    monkeypatch.setenv("LLMRUN_CODEX_BIN", str(FAKE_BIN / "codex"))
    assert CodexRunner().resolve_binary() == str(FAKE_BIN / "codex")


def test_metadata() -> None:
    meta = CodexRunner().metadata()
    assert meta.display_name == "OpenAI Codex" and meta.default_model is None  # codex's own choice
    caps = meta.capabilities
    assert caps.streaming and not caps.token_streaming and caps.prompt_via_stdin
    assert caps.sessions and caps.agent_tools and caps.json_schema and caps.images and not caps.cost


# --- the mock Responses API the real-binary tests use -----------------------------------


def post_responses(url: str, body: dict[str, object]) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url + "/responses", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_mock_streams_the_responses_event_sequence() -> None:
    with MockResponses() as api:
        status, raw = post_responses(api.url, {"model": "m", "stream": True, "input": []})
        assert status == 200
        data = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
        kinds = [event["type"] for event in data]
        assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
        assert kinds[-2:] == ["response.output_item.done", "response.completed"]
        assert "".join(e["delta"] for e in data if e["type"] == "response.output_text.delta") == "Hello from mock"
        assert data[-1]["response"]["usage"]["input_tokens"] == 12

        api.scenario = "tool_use"
        _, raw = post_responses(api.url, {"model": "m", "input": []})
        assert b'"name": "exec_command"' in raw and b"echo mock-tool-ran" in raw
        output = {"type": "function_call_output", "call_id": "c", "output": "done"}
        _, raw = post_responses(api.url, {"model": "m", "input": [output]})
        assert b"Tool finished: Hello from mock" in raw
        assert api.tool_outputs() == ["done"]

        api.scenario = "http_429"
        status, raw = post_responses(api.url, {"model": "m", "input": []})
        assert status == 429 and json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
        assert len(api.responses_requests) == 4
