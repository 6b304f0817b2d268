"""The daemon under load and faults: concurrency limits, the queue, 429s, clients that go away.

Tool processes are counted twice: by the fake's own records (one file per run it started)
and by /proc (live children of this process running the fake).
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import FakeRun, is_alive, still_alive
from .server_support import LiveServer, claude_fake, fake_children, settings

pytestmark = pytest.mark.timeout(60)

TEXT = "Hello from mock"
CHAT = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
LOG_PROBLEMS = ("Task exception was never retrieved", "Exception in ASGI application", "Traceback", "never awaited")


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def stream_text(url: str, body: dict | None = None) -> str:
    """A streaming chat completion's text, read to [DONE]."""
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**(body or CHAT), "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                text.append(choices[0].get("delta", {}).get("content") or "")
    return "".join(text)


def alive_runs(claude: FakeRun) -> list[int]:
    return [inv["pid"] for inv in claude.invocations() if is_alive(inv["pid"])]


def log_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    return [r.getMessage() for r in caplog.records if any(p in r.getMessage() for p in LOG_PROBLEMS)] + [
        r.getMessage() for r in caplog.records if r.exc_info is not None
    ]


class Peak:
    """Samples /proc in the background: the most fake processes alive at any one time."""

    def __init__(self) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(fake_children()))
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_n_plus_5_slow_requests_run_exactly_n_processes(claude: FakeRun, tmp_path: Path) -> None:
    n = 3
    claude.delay(0.25)  # about 3 s per run
    config = settings(tmp_path, max_per_runner=n, max_concurrency=10, max_queue=20, queue_timeout=30)
    with LiveServer(config) as live, Peak() as peak, ThreadPoolExecutor(n + 5) as pool:
        futures = [pool.submit(stream_text, live.url) for _ in range(n + 5)]
        wait_until(lambda: len(claude.invocations()) >= n, what="the first runs")
        time.sleep(0.5)  # room for a wrongly admitted fourth run to show up
        assert len(alive_runs(claude)) == n
        assert len(fake_children()) == n
        assert live.state.limiter.stats()["active"] == n
        assert live.state.limiter.stats()["waiting"] == 5
        results = [f.result(timeout=45) for f in futures]
    assert results == [TEXT] * (n + 5)
    assert len(claude.invocations()) == n + 5
    assert peak.most == n, f"{peak.most} fake processes were alive at once"
    assert alive_runs(claude) == []


def test_full_queue_is_429_with_retry_after(claude: FakeRun, tmp_path: Path) -> None:
    claude.fault("hang_after=5")  # the first delta, then silence until killed
    config = settings(tmp_path, max_per_runner=1, max_queue=1, queue_timeout=30, shutdown_timeout=0.5)
    with ThreadPoolExecutor(2) as pool:
        with LiveServer(config) as live:
            running = pool.submit(stream_text, live.url)
            wait_until(lambda: len(claude.invocations()) == 1, what="the first run")
            queued = pool.submit(stream_text, live.url)
            wait_until(lambda: live.state.limiter.stats()["waiting"] == 1, what="a queued request")
            client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="k", max_retries=0, timeout=10)
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(**CHAT)
            assert int(caught.value.response.headers["retry-after"]) >= 1
            assert caught.value.body["code"] == "server_busy"
            assert len(claude.invocations()) == 1
        # Stopping the server cancelled both: the running one's tool is gone, the queued one never ran.
        assert running.result(timeout=10) == "Hello "
        with pytest.raises(AssertionError):
            queued.result(timeout=10)
    assert len(claude.invocations()) == 1
    assert still_alive(claude.pids(), within=5) == []


def test_queue_timeout_is_429(claude: FakeRun, tmp_path: Path) -> None:
    claude.fault("hang_after=5")
    config = settings(tmp_path, max_per_runner=1, max_queue=5, queue_timeout=0.5, shutdown_timeout=0.5)
    with ThreadPoolExecutor(1) as pool, LiveServer(config) as live:
        pool.submit(stream_text, live.url)
        wait_until(lambda: len(claude.invocations()) == 1, what="the first run")
        started = time.monotonic()
        late = httpx.post(f"{live.url}/v1/messages", json={**CHAT, "max_tokens": 5}, timeout=10)
        waited = time.monotonic() - started
    assert late.status_code == 429 and "retry-after" in late.headers
    assert late.json()["error"]["type"] == "rate_limit_error"
    assert 0.4 <= waited < 5
    assert still_alive(claude.pids(), within=5) == []


def test_disconnect_mid_stream_kills_the_process_group(
    claude: FakeRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    claude.fault("hang_after=5,grandchild")  # the first delta, then silence until killed
    with LiveServer(settings(tmp_path)) as live:
        body = {**CHAT, "stream": True}
        with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=30) as response:
            # Keep a reference: an abandoned line iterator is closed at once, and with it the connection.
            lines = response.iter_lines()
            for line in lines:
                if '"content": "Hello "' in line:
                    break
            pids = claude.pids()
            assert len(pids) == 2 and all(is_alive(p) for p in pids)  # the fake and its grandchild
            left = time.monotonic()
        # Leaving the block closed the connection mid-stream.
        assert still_alive(pids, within=3.5) == [], "the tool's process group outlived the client"
        assert time.monotonic() - left < 3.5
        wait_until(lambda: live.state.limiter.stats()["active"] == 0, what="the slot to be released")
        assert live.state.inflight.runs == set()
    assert log_problems(caplog) == []


def test_disconnect_while_waiting_for_a_whole_answer(
    claude: FakeRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    claude.fault("hang_after=5")
    with LiveServer(settings(tmp_path)) as live:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live.url}/v1/chat/completions", json=CHAT, timeout=httpx.Timeout(10, read=2.0))
        pids = claude.pids()
        assert len(pids) == 1
        assert still_alive(pids, within=3.5) == []
        wait_until(lambda: live.state.limiter.stats()["active"] == 0, what="the slot to be released")
    assert log_problems(caplog) == []


def test_disconnect_while_queued_frees_the_place(claude: FakeRun, tmp_path: Path) -> None:
    claude.fault("hang_after=5")
    config = settings(tmp_path, max_per_runner=1, max_queue=3, queue_timeout=30, shutdown_timeout=0.5)
    with ThreadPoolExecutor(1) as pool, LiveServer(config) as live:
        pool.submit(stream_text, live.url)
        wait_until(lambda: len(claude.invocations()) == 1, what="the first run")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live.url}/v1/chat/completions", json=CHAT, timeout=httpx.Timeout(10, read=0.5))
        wait_until(lambda: live.state.limiter.stats()["waiting"] == 0, what="the queue to empty")
        assert len(claude.invocations()) == 1
