#!/usr/bin/env python3
"""What `llmrun serve` adds under load, and whether it leaks processes or file descriptors.

    python3 bench/server_load.py            # 200 concurrent streams per phase, about a minute
    python3 bench/server_load.py --quick    # 50 streams, a smoke test

Two phases, each timed twice in the same run: through the daemon (a separate process on
127.0.0.1, read as SSE) and by calling `runner.stream()` directly in this
process with the same concurrency. The difference is what the server adds: HTTP, the
limiter and SSE encoding (the client is a minimal asyncio one, so that its own cost stays small).

1. in-process runner: a runner inside the daemon that yields 20 chunks 20 ms apart, no
   subprocess. This isolates the server's own cost: first one request at a time, then all
   at once.
2. fake CLI: the `claude_code` runner on fixtures/bin/claude (a real subprocess per
   request, replaying a captured answer). Afterwards the daemon must have no child left,
   every fake must have exited, and the daemon's open file descriptors must be back to
   what they were before the load.

Needs the `server` extra. Exits 1 when a request failed or something leaked;
nothing asserts on times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAKE = ROOT / "fixtures" / "bin" / "claude"
sys.path.insert(0, str(ROOT))  # a plain checkout runs without installing llmrun

from llmrun.config import RunnerSettings  # noqa: E402
from llmrun.runners.base import Runner  # noqa: E402
from llmrun.runners.claude_code import ClaudeCodeRunner  # noqa: E402
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport, Usage  # noqa: E402

# A model writes some 20 to 100 tokens a second; 50 a second per stream, 200 streams at once.
CHUNKS = 20
GAP = 0.02
SINGLE_RUNS = 20
NON_EMPTY_CONTENT = re.compile(rb'"content": "[^"]')
TEXT = "Hello from mock"

Timing = tuple[float, float]  # (first chunk, whole answer) in seconds
Burst = tuple[list[Timing], int, float]  # timings, failures, wall time from first request to last answer


class PacedRunner(Runner):
    """Answers without a subprocess: CHUNKS chunks, GAP seconds apart, like a fast model."""

    name = "paced"
    display_name = "Paced (benchmark)"
    default_model = "paced"
    capabilities = Capabilities(streaming=True, token_streaming=True, usage=True)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        for index in range(CHUNKS):
            await asyncio.sleep(GAP)
            yield ChatChunk(delta=f"tok{index} ")
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=CHUNKS))

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


# --- the daemon -----------------------------------------------------------------------------


def serve_paced(port: int) -> None:
    """Runs in the daemon's process (`--serve-paced PORT`): the app with the paced runner added."""
    from llmrun.server.run import make_server
    from llmrun.server.settings import ServerSettings

    settings = ServerSettings(
        port=port, max_concurrency=1000, max_per_runner=1000, sessions=Path(tempfile.mkdtemp()) / "s.sqlite3"
    )
    make_server(settings.validate(), runners={"paced": PacedRunner()}, log_level="warning").run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    def __init__(self, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the daemon did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.05)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def children(self) -> list[int]:
        return [pid for pid in _pids() if _ppid(pid) == self.proc.pid]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[1])


# --- clients --------------------------------------------------------------------------------


async def through_server(url: str, model: str, streams: int) -> Burst:
    """`streams` concurrent SSE requests over plain asyncio sockets.

    A minimal HTTP/1.1 client on purpose: a full client library costs more CPU per event
    than the server does, and that would be counted as the server's.
    """
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def one() -> Timing | None:
        started = time.perf_counter()
        first = None
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + body)
            status = await reader.readuntil(b"\r\n\r\n")
            if not status.startswith(b"HTTP/1.1 200"):
                return None
            tail = b""
            while data := await reader.read(65536):
                seen = tail + data
                if first is None and NON_EMPTY_CONTENT.search(seen):
                    first = time.perf_counter() - started
                if b"data: [DONE]" in seen:
                    return (first or 0.0, time.perf_counter() - started)
                tail = seen[-64:]
            return None
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(5)))  # warm-up: imports, caches
    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
    wall = time.perf_counter() - started
    timings = [r for r in results if isinstance(r, tuple)]
    return timings, streams - len(timings), wall


async def timed_stream(runner: Runner, request: ChatRequest) -> Timing:
    """One answer of the runner in this process: time to its first text and to its end."""
    started = time.perf_counter()
    first = None
    async for chunk in runner.stream(request):
        if first is None and chunk.delta:
            first = time.perf_counter() - started
    return (first or 0.0, time.perf_counter() - started)


async def directly(make: Callable[[], Runner], streams: int) -> Burst:
    runner = make()
    request = ChatRequest.of("hi")

    await asyncio.gather(*(timed_stream(runner, request) for _ in range(5)))
    started = time.perf_counter()
    results = await asyncio.gather(*(timed_stream(runner, request) for _ in range(streams)), return_exceptions=True)
    wall = time.perf_counter() - started
    timings = [r for r in results if isinstance(r, tuple)]
    return timings, streams - len(timings), wall


# --- report ---------------------------------------------------------------------------------


def _joined(bursts: list[Burst]) -> Burst:
    return [t for b in bursts for t in b[0]], sum(b[1] for b in bursts), sum(b[2] for b in bursts)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def table(direct: Burst, served: Burst) -> list[str]:
    lines = [f"   {'':<26} {'p50':>8} {'p99':>8} {'max':>8}   first chunk p50 / p99   wall"]
    for label, (timings, _, wall) in (("runner.stream() directly", direct), ("through llmrun serve", served)):
        total = [t for _, t in timings]
        first = [f for f, _ in timings]
        lines.append(
            f"   {label:<26} {pct(total, 50) * 1000:8.1f} {pct(total, 99) * 1000:8.1f} {max(total) * 1000:8.1f}"
            f"   {pct(first, 50) * 1000:8.1f} / {pct(first, 99) * 1000:6.1f}   {wall * 1000:8.0f}"
        )
    d_total = [t for _, t in direct[0]]
    s_total = [t for _, t in served[0]]
    d_first = [f for f, _ in direct[0]]
    s_first = [f for f, _ in served[0]]
    lines.append(
        f"   added by the server:       p50 {(pct(s_total, 50) - pct(d_total, 50)) * 1000:+.1f} ms,"
        f" p99 {(pct(s_total, 99) - pct(d_total, 99)) * 1000:+.1f} ms;"
        f" first chunk p50 {(pct(s_first, 50) - pct(d_first, 50)) * 1000:+.1f} ms,"
        f" p99 {(pct(s_first, 99) - pct(d_first, 99)) * 1000:+.1f} ms"
    )
    return lines


def run(coro: Coroutine[Any, Any, Burst]) -> Burst:
    return asyncio.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 streams per phase instead of 200")
    parser.add_argument("--streams", type=int, help="concurrent streams per phase")
    parser.add_argument("--serve-paced", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_paced:
        serve_paced(args.serve_paced)
        return 0
    streams = args.streams or (50 if args.quick else 200)
    # 200 tools at once hold 600 pipe ends in one process, over a default limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))

    ok = True
    out = [
        f"llmrun serve load: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{streams} concurrent streams per phase, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"1. in-process runner ({CHUNKS} chunks, {GAP * 1000:.0f} ms apart), request -> [DONE], ms",
    ]
    port = free_port()
    daemon = Daemon([sys.executable, __file__, "--serve-paced", str(port)], port, dict(os.environ))
    try:
        alone = [run(through_server(daemon.url, "paced", 1)) for _ in range(SINGLE_RUNS)]
        served = run(through_server(daemon.url, "paced", streams))
    finally:
        daemon.stop()
    alone_direct = [run(directly(PacedRunner, 1)) for _ in range(SINGLE_RUNS)]
    direct = run(directly(PacedRunner, streams))
    out.append(f"   one stream at a time, {SINGLE_RUNS} requests:")
    out += table(_joined(alone_direct), _joined(alone))
    out.append(f"   {streams} streams at once:")
    out += table(direct, served)
    failed = served[1] + direct[1] + sum(b[1] for b in alone + alone_direct)
    if failed:
        out.append(f"   FAILED: {failed} request(s)")
        ok = False

    with tempfile.TemporaryDirectory(prefix="llmrun-bench-") as tmp:
        record = Path(tmp) / "record"
        record.mkdir()
        env = dict(
            os.environ,
            LLMRUN_CLAUDE_CODE_BIN=str(FAKE),
            LLMRUN_FAKE_SCENARIO="mock-stream-json-partial",
            LLMRUN_FAKE_DELAY="0",
            LLMRUN_FAKE_RECORD=str(record),
            LLMRUN_CONFIG=str(Path(tmp) / "no-config.toml"),
            PYTHONPATH=str(ROOT),
        )
        port = free_port()
        argv = [sys.executable, "-m", "llmrun", "serve", "--port", str(port), "--log-level", "warning"]
        argv += ["--max-concurrency", str(streams), "--max-per-runner", str(streams), "--max-queue", "10"]
        argv += ["--sessions", str(Path(tmp) / "sessions.sqlite3"), "--max-warm", "0"]  # one-shot runs
        daemon = Daemon(argv, port, env)
        try:
            run(through_server(daemon.url, "claude_code", 3))  # settle: first tool start, lazy imports
            time.sleep(0.5)
            fds_before = daemon.fds()
            served = run(through_server(daemon.url, "claude_code", streams))
            time.sleep(1.0)  # closed connections and reaped children settle
            fds_after = daemon.fds()
            children = daemon.children()
            with urllib.request.urlopen(f"{daemon.url}/v1/runners", timeout=10) as response:
                limits = json.load(response)["limits"]
        finally:
            log = daemon.stop()
        runs = [json.loads(p.read_text()) for p in record.glob("invocation-*.json")]
        not_exited = [r["pid"] for r in runs if not (record / f"exited-{r['pid']}").exists()]
        alive = [r["pid"] for r in runs if _ppid(r["pid"]) is not None]

        os.environ.update({k: v for k, v in env.items() if k.startswith("LLMRUN_FAKE")})
        settings = RunnerSettings()
        direct = run(directly(lambda: ClaudeCodeRunner(binary=str(FAKE), settings=settings), streams))

    out += [
        "",
        "2. fake CLI (fixtures/bin/claude, one subprocess per request, no delay), request -> [DONE], ms",
        *table(direct, served),
        f"   daemon afterwards: {len(children)} child process(es), {len(not_exited)} fake(s) not exited,"
        f" {len(alive)} fake(s) alive, fds {fds_before} before / {fds_after} after,"
        f" slots active {limits['active']}, waiting {limits['waiting']}",
    ]
    if served[1] or direct[1]:
        out.append(f"   FAILED: {served[1]} through the server, {direct[1]} directly")
        ok = False
    if children or not_exited or alive or fds_after > fds_before or limits["active"] or limits["waiting"]:
        out.append("   LEAK: see the line above")
        ok = False
    problems = [line for line in log.splitlines() if "Traceback" in line or "never retrieved" in line]
    if problems:
        out.append(f"   daemon log problems: {problems[:3]}")
        ok = False
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
