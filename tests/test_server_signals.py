"""What the daemon tells clients besides the answer: whether an error is worth retrying, and
that a stream whose tool is still silent is alive.

Retry signals: every error response says `x-should-retry` (the OpenAI and Anthropic SDKs, and
the clients built on them, honour it before their own rules), with `retry-after` when a retry
can help. Keep-alive: a stream with nothing to send after `first_chunk_grace` sends its
status, headers and then the API's keep-alive every `keepalive_interval` until the first chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from llmrun.errors import (
    AuthenticationError,
    BinaryNotFound,
    ContextLengthExceeded,
    LlmrunError,
    ProcessFailed,
    RateLimitError,
    ServiceUnavailable,
)
from llmrun.server.common import error_headers
from llmrun.server.limits import Busy

from .server_support import SILENT_ANSWER as ANSWER
from .server_support import LiveServer, SilentRunner, settings

pytestmark = pytest.mark.timeout(90)


def serve(tmp_path: Path, runner: SilentRunner, **fields: float) -> LiveServer:
    return LiveServer(settings(tmp_path, **fields), runners={"silent": runner})


CHAT = {"model": "silent", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "silent", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


# --- retry signals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retry", "retry_after"),
    [
        (AuthenticationError("not logged in"), "false", None),
        (ContextLengthExceeded("too long"), "false", None),
        (BinaryNotFound("claude is not installed"), "false", None),
        (ProcessFailed("the tool crashed"), "false", None),
        (RateLimitError("quota"), "true", "5"),
        (ServiceUnavailable("overloaded"), "true", "5"),
        (Busy("queue full", runner="x", retry_after=7), "true", "7"),
    ],
)
def test_error_headers_say_whether_to_retry(error: LlmrunError, retry: str, retry_after: str | None) -> None:
    headers = error_headers(error)
    assert headers["x-should-retry"] == retry
    assert headers.get("retry-after") == retry_after


@pytest.fixture
def logged_out(tmp_path: Path) -> Iterator[LiveServer]:
    with serve(tmp_path, SilentRunner(error=AuthenticationError("the tool is not logged in"))) as live:
        yield live


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)])
def test_a_backend_401_says_do_not_retry(logged_out: LiveServer, path: str, body: dict, stream: bool) -> None:
    response = httpx.post(logged_out.url + path, json={**body, "stream": stream}, timeout=30)
    assert response.status_code == 401
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers


def test_errors_the_server_raises_itself_carry_the_signal(logged_out: LiveServer) -> None:
    unknown = httpx.post(logged_out.url + "/v1/chat/completions", json={**CHAT, "model": "nosuch"}, timeout=30)
    assert (unknown.status_code, unknown.headers["x-should-retry"]) == (404, "false")
    not_json = httpx.post(logged_out.url + "/v1/messages", content=b"{", timeout=30)
    assert (not_json.status_code, not_json.headers["x-should-retry"]) == (415, "false")


def test_sdks_do_not_retry_a_401_and_anthropic_errors_keep_their_request_id(logged_out: LiveServer) -> None:
    runner = logged_out.state.pool.get("silent")
    assert isinstance(runner, SilentRunner)
    # Retries left at the SDKs' defaults (2): the header alone must stop them.
    oai = openai.OpenAI(base_url=f"{logged_out.url}/v1", api_key="k", timeout=30)
    with pytest.raises(openai.AuthenticationError):
        oai.chat.completions.create(model="silent", messages=[{"role": "user", "content": "hi"}])
    claude = anthropic.Anthropic(base_url=logged_out.url, api_key="k", timeout=30)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude.messages.create(model="silent", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert len(runner.requests) == 2  # one per client, none retried

    body = caught.value.body
    assert isinstance(body, dict) and body["request_id"].startswith("req_")
    assert caught.value.request_id == body["request_id"]


def test_a_rate_limited_backend_says_retry_after(tmp_path: Path) -> None:
    with serve(tmp_path, SilentRunner(error=RateLimitError("slow down"))) as live:
        response = httpx.post(live.url + "/v1/messages", json=MESSAGES, timeout=30)
    assert response.status_code == 429
    assert (response.headers["x-should-retry"], response.headers["retry-after"]) == ("true", "5")


# --- keep-alive -------------------------------------------------------------------------------


def raw_stream(url: str, body: dict) -> tuple[int, list[str]]:
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as response:
        return response.status_code, list(response.iter_lines())


def test_a_silent_openai_stream_opens_and_pings_until_its_first_chunk(tmp_path: Path) -> None:
    with serve(tmp_path, SilentRunner(silence=2.0), first_chunk_grace=0.2, keepalive_interval=0.1) as live:
        status, lines = raw_stream(live.url + "/v1/chat/completions", CHAT)
    assert status == 200
    events = [line for line in lines if line]
    first_content = next(i for i, e in enumerate(events) if ANSWER in e)
    role = json.loads(events[0].removeprefix("data: "))
    assert role["choices"][0]["delta"]["role"] == "assistant"  # the stream opened as usual
    pings = events[1:first_content]
    assert pings and set(pings) == {": ping"}
    assert ": ping" not in events[first_content:]
    assert events[-1] == "data: [DONE]"


def test_a_silent_anthropic_stream_sends_ping_events(tmp_path: Path) -> None:
    with serve(tmp_path, SilentRunner(silence=2.0), first_chunk_grace=0.2, keepalive_interval=0.1) as live:
        status, lines = raw_stream(live.url + "/v1/messages", MESSAGES)
        client = anthropic.Anthropic(base_url=live.url, api_key="k", max_retries=0, timeout=60)
        with client.messages.stream(model="silent", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
            text = s.get_final_text()
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert status == 200
    assert names[0] == "message_start"
    assert "ping" in names[1 : names.index("content_block_start")]
    assert text == ANSWER


def test_a_silent_responses_stream_repeats_in_progress(tmp_path: Path) -> None:
    with serve(tmp_path, SilentRunner(silence=2.0), first_chunk_grace=0.2, keepalive_interval=0.1) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="k", max_retries=0, timeout=60)
        events = list(client.responses.create(model="silent", input="hi", stream=True))
    kinds = [event.type for event in events]
    first_delta = kinds.index("response.output_text.delta")
    assert kinds[0] == "response.created"
    assert kinds[1:first_delta].count("response.in_progress") >= 2  # the opening one, then keep-alives
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == ANSWER


def test_keep_alives_carry_a_client_past_its_read_timeout(tmp_path: Path) -> None:
    # The tool is silent three times longer than the client waits for a byte.
    with serve(tmp_path, SilentRunner(silence=9.0), first_chunk_grace=0.2, keepalive_interval=0.2) as live:
        client = openai.OpenAI(
            base_url=f"{live.url}/v1", api_key="k", max_retries=0, timeout=openai.Timeout(60, read=3)
        )
        chunks = client.chat.completions.create(
            model="silent", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER


def test_an_error_after_the_grace_ends_the_opened_stream(tmp_path: Path) -> None:
    runner = SilentRunner(silence=1.0, error=AuthenticationError("the tool is not logged in"))
    with serve(tmp_path, runner, first_chunk_grace=0.1, keepalive_interval=0.1) as live:
        status, lines = raw_stream(live.url + "/v1/chat/completions", CHAT)
    assert status == 200
    last = json.loads([line for line in lines if line.startswith("data: ")][-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_authentication_failed"
    assert "data: [DONE]" not in lines


def test_a_client_leaving_during_keep_alives_stops_the_run(tmp_path: Path) -> None:
    runner = SilentRunner(silence=600.0)
    with serve(tmp_path, runner, first_chunk_grace=0.1, keepalive_interval=0.1) as live:
        with httpx.stream("POST", live.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            while next(lines) != ": ping":
                pass
        # The run's generator is closed (its tool killed) once the server sees the client gone.
        assert runner.closed.wait(60)
        deadline = time.monotonic() + 60
        while live.state.inflight.runs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.state.inflight.runs == set()
