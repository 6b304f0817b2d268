"""Session ids never reach a tool as an option.

An id handed to a tool as an argument of its own is read as a flag when it starts with
"-": `--last` resumed someone else's latest codex session, and
`--dangerously-bypass-approvals-and-sandbox` lifted codex's sandbox. So every runner
passes an id inside one argument (`--resume=ID`) or after `--`, and ids a tool could
misread (a leading "-", whitespace, control characters, empty, absurdly long) are
refused with InvalidRequest: by ChatRequest, by `runner.session(resume=...)`, by
`llmrun chat --session`, and again where the command line is built, before anything
is written or run. The real codex and claude are checked to resume with these forms.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmrun
from llmrun import ChatRequest, Message
from llmrun.cli.app import app
from llmrun.errors import InvalidRequest, LlmrunError
from llmrun.registry import BUILTIN, get_runner, get_runner_class
from llmrun.runners.base import CliRunner as CliToolRunner
from llmrun.runners.base import HistoryKeepingRunner
from llmrun.sessions import SessionSettings
from llmrun.types import SESSION_ID_MAX_LENGTH, check_session_id

from .cli_support import claude_fake, private_state
from .conftest import FAKE_BIN, FakeRun

# Importable whatever pytest's import mode is, like tests/test_real_codex.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_responses import MockResponses, codex_provider_args
from mockapi import DEFAULT_TEXT, MockAnthropic
from realcli import become, claude_env, codex_env, require_binary

HOSTILE = [
    "--last",
    "--dangerously-bypass-approvals-and-sandbox",
    "-x",
    "-",
    "",
    "a\nb",
    "a b",
    "tab\tid",
    "nul\x00id",
    "nbsp\u00a0id",
    "\u202eoverride",  # a bidi override: invisible, not printable
    "lone\ud800surrogate",
    "x" * (SESSION_ID_MAX_LENGTH + 1),
]

VALID = [
    "01871f75-0c93-4e8f-a53a-b32da0c71f20",  # a uuid (claude, gemini, copilot, cursor-agent)
    "01a24e04-fc9c-7642-ae03-027a1759ac8c",  # a codex thread id
    "ses_2a9f0c1d3effe0AbCdEfGhIj",  # opencode
    "01jabcdef0123456789xyzabcd",  # llm's conversation ids
    "latest",  # gemini's own word for the latest session: a library user's choice
    "x" * SESSION_ID_MAX_LENGTH,
]

# The arguments that carry the id, by runner: one `--flag=ID` argument, or after `--`.
ID_ARGUMENTS = {
    "claude_code": lambda sid: [f"--resume={sid}"],
    "codex": lambda sid: ["resume", "--", sid, "-"],
    "gemini": lambda sid: [f"--resume={sid}"],
    "qwen": lambda sid: [f"--resume={sid}"],
    "copilot": lambda sid: [f"--resume={sid}"],
    "opencode": lambda sid: [f"--session={sid}"],
    "llm": lambda sid: [f"--cid={sid}"],
    "ollama": lambda sid: [],  # the runner keeps ollama's sessions: no id on the command line
    "cursor_agent": lambda sid: [f"--resume={sid}"],
    "kimi": lambda sid: [f"--session={sid}"],
    "continue": lambda sid: [f"--fork={sid}"],
    "cline": lambda sid: [],  # no headless resume: the history is sent again (warm sessions load it over ACP)
    "vibe": lambda sid: [f"--resume={sid}"],
    "kilo": lambda sid: [f"--session={sid}"],
    "droid": lambda sid: [f"--fork={sid}"],
    "goose": lambda sid: ["--resume", f"--name={sid}"],
    "kiro": lambda sid: [f"--resume-id={sid}"],
    "gptme": lambda sid: [],  # the runner keeps gptme's conversations, as ollama's
    "aider": lambda sid: [],  # and aider's
}
# The runners that keep conversations themselves pass no id to their tool.
KEEPING = [name for name in ID_ARGUMENTS if issubclass(get_runner_class(name), HistoryKeepingRunner)]
ARGV_RUNNERS = [name for name in ID_ARGUMENTS if name not in KEEPING]

RUN_LIMIT = 30.0
cli = CliRunner()


def resumed_request(session_id: str, **fields: object) -> ChatRequest:
    history = [Message.user("first"), Message.assistant("answer"), Message.user("second")]
    return ChatRequest(messages=history, session_id=session_id, **fields)  # type: ignore[arg-type]


def fake_runner(name: str) -> CliToolRunner:
    """The runner, with its fake CLI as the binary: argv can be built, nothing is run."""
    runner = get_runner(name, binary=str(FAKE_BIN / get_runner_class(name).binary))
    assert isinstance(runner, CliToolRunner)
    return runner


def contains(argv: list[str], part: list[str]) -> bool:
    return any(argv[i : i + len(part)] == part for i in range(len(argv) - len(part) + 1))


def assert_never_an_option(argv: list[str], session_id: str) -> None:
    """Every argument holding the id is `--flag=ID`, or the id alone after `--`."""
    for at, arg in enumerate(argv):
        if session_id not in arg:
            continue
        if arg == session_id:
            assert "--" in argv[:at], f"{session_id!r} stands alone where options are read: {argv}"
        else:
            assert re.fullmatch(r"--[a-z][a-z-]*=" + re.escape(session_id), arg), arg


def everything_in(places: set[Path]) -> set[Path]:
    return {path for place in places if place.is_dir() for path in place.rglob("*")}


pytestmark = pytest.mark.usefixtures("temp_dir")  # each test sees the temp files of its own runs


# --- the command line -----------------------------------------------------------------------


def test_every_builtin_runner_is_covered() -> None:
    assert set(ID_ARGUMENTS) == set(BUILTIN)


@pytest.mark.parametrize("session_id", VALID[:5])
@pytest.mark.parametrize("name", list(ID_ARGUMENTS))
def test_a_valid_id_reaches_the_tool_only_in_a_form_that_is_no_option(name: str, session_id: str) -> None:
    runner = fake_runner(name)
    if name in KEEPING:
        runner._remember(session_id, [Message.user("first"), Message.assistant("answer")])  # type: ignore[attr-defined]
    argv = runner.prepared_invocation(resumed_request(session_id)).argv

    assert contains(argv, ID_ARGUMENTS[name](session_id)), argv
    assert_never_an_option(argv, session_id)
    if name != "codex":
        assert session_id not in argv


def test_claude_warm_mode_resumes_in_the_same_form() -> None:
    session_id = VALID[0]
    connection = fake_runner("claude_code").warm_connection(SessionSettings(), resume=session_id)
    argv = connection.invocation.argv
    assert f"--resume={session_id}" in argv and "--input-format" in argv
    assert_never_an_option(argv, session_id)


# --- hostile ids are refused ------------------------------------------------------------------


@pytest.mark.parametrize("session_id", VALID)
def test_valid_ids_are_accepted(session_id: str) -> None:
    assert ChatRequest.of("hi", session_id=session_id).session_id == session_id
    assert check_session_id(session_id) == session_id


@pytest.mark.parametrize("session_id", HOSTILE, ids=repr)
def test_a_request_with_a_hostile_id_is_refused(session_id: str) -> None:
    with pytest.raises(InvalidRequest, match="session id") as caught:
        ChatRequest.of("hi", session_id=session_id)
    assert caught.value.http_status == 400 and caught.value.exit_code == 2
    with pytest.raises(InvalidRequest):
        ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "session_id": session_id})


@pytest.mark.parametrize("session_id", ["--last", "-x", "a\nb", ""], ids=repr)
@pytest.mark.parametrize("name", list(ID_ARGUMENTS))
def test_a_session_resuming_a_hostile_id_is_refused(name: str, session_id: str) -> None:
    with pytest.raises(InvalidRequest, match="session id"):
        get_runner(name).session(resume=session_id)


@pytest.mark.parametrize("session_id", ["--last", "--dangerously-bypass-approvals-and-sandbox", "-x", "a\nb"], ids=repr)
@pytest.mark.parametrize("name", ARGV_RUNNERS)
def test_the_command_line_refuses_an_id_changed_after_validation(name: str, session_id: str, temp_dir: Path) -> None:
    # A long system prompt: the runners that write it to a file would do so before argv is done.
    runner = fake_runner(name)
    valid = resumed_request(VALID[0], system="be brief. " * 20_000)
    written = runner.prepared_invocation(valid)
    places = {temp_dir, *(parent for path in written.temp_files for parent in Path(path).parents[:2])}
    written.remove_files()
    before = everything_in(places)

    with pytest.raises(InvalidRequest, match="session id"):
        runner.prepared_invocation(valid.model_copy(update={"session_id": session_id}))
    assert everything_in(places) == before


async def test_nothing_runs_for_a_hostile_id(fake: FakeRun) -> None:
    runner = fake.runner()
    hostile = resumed_request(VALID[0]).model_copy(update={"session_id": "--last"})
    with pytest.raises(LlmrunError) as caught:
        await runner.complete(hostile)
    if fake.tool.runner in ARGV_RUNNERS:
        assert isinstance(caught.value, InvalidRequest), caught.value
    with pytest.raises(InvalidRequest):
        async with runner.session(resume="--last") as session:
            await session.complete("hi")
    assert fake.invocations() == []


# --- llmrun chat --session ----------------------------------------------------------------------


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    private_state(monkeypatch, tmp_path)
    yield from claude_fake(monkeypatch, tmp_path)


REFUSED_BY_CHAT = ["--last", "--dangerously-bypass-approvals-and-sandbox", "-x", "a\nb", ""]


@pytest.mark.parametrize("session_id", REFUSED_BY_CHAT, ids=repr)
def test_chat_refuses_a_hostile_session_and_runs_nothing(claude: FakeRun, session_id: str) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", f"--session={session_id}", "hi"])
    assert result.exit_code == 9, result.output  # no tool has a session of such an id
    assert "session id" in result.stderr
    as_json = cli.invoke(app, ["chat", "-r", "claude", "--json", f"--session={session_id}", "hi"])
    assert as_json.exit_code == 9
    assert json.loads(as_json.stdout)["error"]["type"] == "SessionNotFound"
    assert claude.invocations() == []


def test_chat_takes_a_flag_after_session_as_its_value_and_refuses_it(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "--session", "--last", "hi"])
    assert result.exit_code == 9 and "'--last'" in result.stderr, result.output
    assert claude.invocations() == []


# --- the real tools resume with these forms --------------------------------------------------


def user_texts(body: dict) -> list[str]:  # type: ignore[type-arg]
    """Every text of every user message in a Responses or Messages API body."""
    found: list[str] = []
    for item in body.get("input") or body.get("messages") or []:
        if item.get("role") != "user":
            continue
        content = item.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
        found += [part for part in parts if part]
    return found


@pytest.mark.real_cli
@pytest.mark.timeout(120)
async def test_real_codex_resumes_an_id_given_after_a_double_dash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: str
) -> None:
    require_binary("codex")
    with MockResponses() as api:
        become(monkeypatch, tmp_path, codex_env(tmp_path))
        runner = llmrun.get_runner("codex", extra_args=codex_provider_args(api.url))
        assert isinstance(runner, CliToolRunner)
        first = await runner.complete(ChatRequest.of("first question", cwd=workdir, timeout=RUN_LIMIT))
        thread = first.session_id
        assert thread

        history = [Message.user("first question"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
        request = ChatRequest(messages=history, session_id=thread, cwd=workdir, timeout=RUN_LIMIT)
        invocation = runner.prepared_invocation(request)
        assert invocation.argv[-4:] == ["resume", "--", thread, "-"]
        second = await runner.complete(request)
        assert second.session_id == thread and second.content == DEFAULT_TEXT
        texts = user_texts(api.responses_requests[-1]["json"])
        assert "first question" in texts and texts[-1] == "second question"

        # The same command line with `--last` in the id's place: after `--` codex takes it as
        # an id, so it does not resume the latest session.
        hostile = ["--last" if arg == thread else arg for arg in invocation.argv]
        sent = len(api.responses_requests)
        run = subprocess.run(
            hostile, input=b"third question", capture_output=True, env=invocation.child_env(), cwd=workdir, timeout=60
        )
        assert thread not in run.stdout.decode(), run.stdout
        assert all("first question" not in user_texts(r["json"]) for r in api.responses_requests[sent:])


@pytest.mark.real_cli
@pytest.mark.timeout(120)
async def test_real_claude_resumes_an_id_given_as_resume_equals(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: str
) -> None:
    require_binary("claude")
    with MockAnthropic() as api:
        become(monkeypatch, tmp_path, claude_env(tmp_path, api.url))
        runner = llmrun.get_runner("claude_code")
        assert isinstance(runner, CliToolRunner)
        first = await runner.complete(ChatRequest.of("first question", cwd=workdir, timeout=RUN_LIMIT))
        session = first.session_id
        assert session

        history = [Message.user("first question"), Message.assistant(DEFAULT_TEXT), Message.user("second question")]
        request = ChatRequest(messages=history, session_id=session, cwd=workdir, timeout=RUN_LIMIT)
        invocation = runner.prepared_invocation(request)
        assert f"--resume={session}" in invocation.argv and session not in invocation.argv
        second = await runner.complete(request)
        assert second.session_id == session and second.content == DEFAULT_TEXT
        texts = user_texts(api.message_requests[-1]["json"])
        assert any("first question" in text for text in texts) and any("second question" in text for text in texts)

        # The same command line with `--continue` (continue the latest conversation) as the
        # id: inside `--resume=` it stays a value, which claude refuses without a model call.
        hostile = ["--resume=--continue" if arg == f"--resume={session}" else arg for arg in invocation.argv]
        sent = len(api.message_requests)
        run = subprocess.run(
            hostile, input=b"third question", capture_output=True, env=invocation.child_env(), cwd=workdir, timeout=60
        )
        assert run.returncode != 0, run.stdout
        assert len(api.message_requests) == sent
