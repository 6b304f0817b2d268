"""Unit tests of the Kiro CLI runner: argv and lockdown, the text parser, errors, sessions, health.

Kiro's CLI is not in a package registry the project installs from, so there are no tests of
the real binary: the transcripts in fixtures/kiro-cli/ are hand-made in the shape of its
documented headless output and of its ACP sessions, and fixtures/bin/kiro-cli replays them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.kiro import KiroParser, KiroRunner, classify, saved_session
from llmrun.sessions import SessionSettings

from .conftest import FAKE_BIN, FAKE_TOOLS, FIXTURES, FakeRun

TRANSCRIPTS = FIXTURES / "kiro-cli"
SESSION = "5b1f0c2e-8d47-4a9e-9c1a-2f6b7e3d9a10"
BASE = ["kiro-cli", "chat", "--no-interactive", "--wrap=never"]
TRAILER = "\n ▸ Credits: 0.02 • Time: 1s\n"


def replay(pieces: list[str], stderr: str = TRAILER) -> tuple[KiroParser, list[llmrun.ChatChunk]]:
    parser = KiroParser(session_id="s1")
    chunks = [c for piece in pieces for c in parser.feed(piece)]
    parser.stderr = stderr
    return parser, chunks + parser.close()


def transcript(name: str, suffix: str = "stdout") -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def invocation(request: ChatRequest):  # type: ignore[no-untyped-def]
    return KiroRunner().build_invocation(request, "kiro-cli")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_KIRO_BIN", str(FAKE_BIN / "kiro-cli"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KIRO_API_KEY", raising=False)
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def recorded(record: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line and the lockdown ------------------------------------------------------


def test_plain_request_trusts_no_tool_and_goes_over_stdin() -> None:
    inv = invocation(ChatRequest.of("-hi there", system="Be brief."))

    assert inv.argv == [*BASE, "--trust-tools="]
    assert inv.stdin.decode().endswith("-hi there") and "Be brief." in inv.stdin.decode()
    assert not any("hi there" in arg for arg in inv.argv)


def test_allow_tools_trusts_all_tools() -> None:
    inv = invocation(ChatRequest.of("hi", allow_tools=True))

    assert "--trust-all-tools" in inv.argv and "--trust-tools=" not in inv.argv


def test_model_agent_harness_and_resume() -> None:
    history = [Message.user("first"), Message.assistant("answer"), Message.user("second")]
    req = ChatRequest(
        messages=history,
        model="-odd",
        session_id=SESSION,
        options={"agent": "reviewer", "harness": "v3", "extra_args": ["--verbose"]},
    )
    inv = invocation(req)

    assert inv.argv == [
        *BASE,
        "--trust-tools=",
        "--model=-odd",
        "--agent=reviewer",
        "--v3",
        f"--resume-id={SESSION}",
        "--verbose",
    ]
    assert inv.stdin == b"second"


def test_unknown_harness_is_refused() -> None:
    with pytest.raises(llmrun.UnsupportedFeature):
        invocation(ChatRequest.of("hi", options={"harness": "v9"}))


# --- the parser -------------------------------------------------------------------------------


def test_answer_mark_and_colours_are_dropped() -> None:
    parser, chunks = replay([transcript("answer")])

    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert parser.finished and chunks[-1].finish_reason == "stop" and chunks[-1].session_id == "s1"
    assert chunks[-1].usage is None


def test_mark_and_escapes_split_across_pieces() -> None:
    pieces = ["\x1b[38;5;1", "41m>", " \x1b[0", "mHello", "\n\n", "world\n"]
    _, chunks = replay(pieces)

    assert "".join(c.delta for c in chunks) == "Hello\n\nworld"


def test_a_later_greater_than_sign_is_answer_text() -> None:
    _, chunks = replay([transcript("answer-markdown") + "\n> quoted"])

    assert "".join(c.delta for c in chunks) == "Hello from mock.\n\nHow can I help?\n> quoted"


def test_without_the_trailer_the_turn_did_not_run() -> None:
    parser, chunks = replay(["> Hello"], stderr="")

    assert not parser.finished and not any(c.finish_reason for c in chunks)


def test_trailer_without_answer_text_is_not_a_success() -> None:
    parser, _ = replay([], stderr=TRAILER)

    assert not parser.finished


@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("auth-failed", llmrun.AuthenticationError),
        ("rate-limit", llmrun.RateLimitError),
        ("model-unavailable", llmrun.ServiceUnavailable),
        ("trouble-responding", llmrun.ServiceUnavailable),
        ("model-invalid", llmrun.ModelNotFound),
        ("context-length", llmrun.ContextLengthExceeded),
        ("resume-missing", llmrun.SessionNotFound),
    ],
)
def test_classify_puts_the_real_cause_before_the_tool_approval_sign_off(
    scenario: str, error: type[llmrun.RunnerError]
) -> None:
    found = classify(transcript(scenario, "stderr"))
    assert type(found) is error
    assert "Tool approval" not in str(found)


def test_tool_approval_alone_says_tools_are_not_allowed() -> None:
    found = classify(transcript("tool-approval", "stderr"))

    assert type(found) is llmrun.RunnerError
    assert "allow_tools" in (found.hint or "")


def test_credits_figures_are_not_read_as_http_statuses() -> None:
    assert classify("▸ Credits: 0.403 • Time: 500s") is None


# --- through the runner -------------------------------------------------------------------------


async def test_invalid_key_exits_0_and_is_an_authentication_error(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "auth-failed")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await KiroRunner().complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 0
    assert "kiro-cli login" in (caught.value.hint or "")


async def test_waiting_for_a_device_login_is_an_authentication_error(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "device-login")
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "hang_after=0")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await KiroRunner().complete(ChatRequest.of("hi", stall_timeout=1))
    assert "device login" in str(caught.value)


async def test_a_silent_stall_stays_a_timeout(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "hang_after=0")
    with pytest.raises(llmrun.RunnerTimeout):
        await KiroRunner().complete(ChatRequest.of("hi", stall_timeout=1))


async def test_the_session_the_run_saved_is_its_id_and_resumes(fake: Path) -> None:
    runner = KiroRunner()
    first = await runner.complete(ChatRequest.of("hi"))
    again = await runner.complete(ChatRequest.of("more", session_id=first.session_id))

    assert first.session_id == SESSION and again.session_id == SESSION
    assert recorded(fake)[-1]["argv"][-1] == f"--resume-id={SESSION}"


async def test_flag_this_kiro_does_not_know_says_update(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "stop_after=0,exit=2,stderr=error: unexpected argument '--wrap' found")
    with pytest.raises(llmrun.RunnerError) as caught:
        await KiroRunner().complete(ChatRequest.of("hi"))
    assert "kiro-cli update" in (caught.value.hint or "")


# --- finding the saved session --------------------------------------------------------------------


def write_session(home: Path, relative: str, meta: dict, age: float = 0.0) -> None:  # type: ignore[type-arg]
    path = home / "sessions" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta))
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))


def test_saved_session_takes_the_only_new_one(tmp_path: Path) -> None:
    write_session(tmp_path, "cli/old.json", {"cwd": "/p"}, age=600)
    write_session(tmp_path, "cli/new.json", {"cwd": "/elsewhere"})

    assert saved_session(tmp_path, time.time() - 5, "/p") == "new"


def test_saved_session_of_parallel_runs_is_the_one_of_the_working_directory(tmp_path: Path) -> None:
    write_session(tmp_path, "cli/ours.json", {"cwd": str(tmp_path)})
    write_session(tmp_path, "cli/theirs.json", {"cwd": "/elsewhere"})
    write_session(tmp_path, "cli/helper.json", {"cwd": str(tmp_path), "parent_session_id": "ours"})

    assert saved_session(tmp_path, time.time() - 5, str(tmp_path)) == "ours"


def test_saved_session_of_the_v3_engine(tmp_path: Path) -> None:
    write_session(tmp_path, "ws-key/sess_abc/session.json", {"workspacePaths": ["/p"]})

    assert saved_session(tmp_path, time.time() - 5, "/p") == "sess_abc"


def test_no_saved_session_is_none(tmp_path: Path) -> None:
    assert saved_session(tmp_path, time.time(), "/p") is None


# --- health ------------------------------------------------------------------------------------


async def test_health_with_whoami(fake: Path) -> None:
    report = await KiroRunner().health()

    assert report.status == "ok" and report.version == "2.21.4" and report.authenticated is True


async def test_health_logged_out(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "exit=1")
    runner = KiroRunner()
    authenticated, _ = await runner.check_auth(runner.resolve_binary())

    assert authenticated is False


async def test_health_with_an_api_key(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIRO_API_KEY", "ksk-test")
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "exit=1")  # whoami would fail: the key decides
    runner = KiroRunner()

    assert await runner.check_auth(runner.resolve_binary()) == (True, "KIRO_API_KEY is set")


# --- warm sessions over `kiro-cli acp` ------------------------------------------------------------


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(next(tool for tool in FAKE_TOOLS if tool.runner == "kiro"), monkeypatch, record)


def test_warm_command_takes_model_and_agent_but_no_trust_flag() -> None:
    settings = SessionSettings(model="claude-sonnet-4.5", options={"agent": "reviewer"}, allow_tools=True)
    connection = KiroRunner(binary=str(FAKE_BIN / "kiro-cli")).warm_connection(settings, None)

    assert connection.invocation.argv[1:] == ["acp", "--model=claude-sonnet-4.5", "--agent=reviewer"]


async def test_warm_session_refuses_the_tools_kiro_asks_for(warm: FakeRun) -> None:
    warm.fault("tool_call")
    async with warm.runner().session() as session:
        response = await session.complete("Create a file named hello.txt")

    (asked,) = [json.loads(line) for line in (warm.record / "permissions.jsonl").read_text().splitlines()]
    assert asked["kind"] == "reject_once"
    assert response.content and response.session_id


async def test_warm_session_grants_them_with_allow_tools(warm: FakeRun) -> None:
    warm.fault("tool_call")
    async with warm.runner().session(allow_tools=True) as session:
        await session.complete("Create a file named hello.txt")

    (asked,) = [json.loads(line) for line in (warm.record / "permissions.jsonl").read_text().splitlines()]
    assert asked["kind"].startswith("allow")
