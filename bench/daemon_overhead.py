#!/usr/bin/env python3
"""What `llmrun serve` adds to a stream, next to what LiteLLM's proxy adds, in one run.

    python3 bench/daemon_overhead.py             # 30 single streams, 3 bursts of 200, about 2 min
    python3 bench/daemon_overhead.py --quick     # 8 single streams, 1 burst of 50
    python3 bench/daemon_overhead.py --no-litellm

The same answer, 20 content chunks 20 ms apart, read four ways with the same minimal asyncio
HTTP client (see server_load.py), in rotating order so that drift on the machine hits all alike:

- llmrun, directly: `runner.stream()` of an in-process scripted runner, in this process;
- llmrun, served: the same runner inside `llmrun serve` on 127.0.0.1, read as SSE;
- upstream, directly: a fake OpenAI-compatible API (tests/mock_openai_chat.py's MockOpenAIChat,
  in a process of its own) streaming the same 20 chunks;
- LiteLLM, served: LiteLLM's proxy on 127.0.0.1 relaying that fake upstream;
- floors, the same runner served with nothing of llmrun's server: a bare asyncio HTTP server,
  a bare ASGI app under uvicorn, and a FastAPI app of one route (the stack `llmrun serve` is
  built on).

Each at concurrency 1 (one stream at a time) and at once (200 streams started together).
Overhead = served - directly, per percentile, for the whole answer and for the first chunk.
LiteLLM's proxy (litellm[proxy]) comes from $LLMRUN_LITELLM_BIN, else from a venv of the bench's
own (/tmp/llmrun-bench-litellm, made on first use from bench/requirements-litellm.txt); when
neither can be had, its rows are left out with the reason. Nothing asserts on times.
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from fastapi import FastAPI, Request  # noqa: E402  (the floor's route resolves its annotations here)
from fastapi.responses import StreamingResponse  # noqa: E402
from realcli import litellm_env  # noqa: E402
from server_load import CHUNKS, GAP, Daemon, PacedRunner, free_port, timed_stream  # noqa: E402
from venvs import private_venv  # noqa: E402

from llmrun.types import ChatRequest  # noqa: E402

Timing = tuple[float, float]  # (first content chunk, whole answer) in seconds
# Content that is not empty, in any JSON spacing (OpenAI's role chunk has "content": "").
NON_EMPTY_CONTENT = re.compile(rb'"content": ?"[^"]')
MASTER_KEY = "sk-litellm-master"
LITELLM_VENV = Path(tempfile.gettempdir()) / "llmrun-bench-litellm"


# --- the fake upstream ----------------------------------------------------------------------


def serve_upstream() -> None:
    """Runs in a process of its own (`--serve-upstream`): prints its port, serves until killed."""
    from mock_openai_chat import MockOpenAIChat, _Answer
    from mockserver import MockServer

    MockServer.request_queue_size = 1024  # socketserver's 5 drops a burst's connections (SYN retries)

    class Paced(MockOpenAIChat):
        def _answer(self, scenario: str, body: dict[str, object]) -> _Answer:
            return _Answer(str(body.get("model") or "paced"), [f"tok{i} " for i in range(CHUNKS)])

    mock = Paced(token_delay=GAP)
    mock.requests = _Forgetful()  # a long run would otherwise keep every request
    print(mock.port, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    mock.close()


# --- floors: the same runner served with nothing of llmrun's server ------------------------


def _event(text: str) -> bytes:
    delta = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(delta).encode() + b"\n\n"


async def _paced_events() -> AsyncIterator[bytes]:
    async for chunk in PacedRunner().stream(ChatRequest.of("hi")):
        if chunk.delta:
            yield _event(chunk.delta)
    yield b"data: [DONE]\n\n"


def serve_floor(kind: str, port: int) -> None:
    """`--serve-floor asyncio|uvicorn|fastapi PORT`: a bare asyncio HTTP server, a bare ASGI
    app under uvicorn (asyncio loop, h11 or httptools as installed), or a FastAPI app of one
    route that reads the JSON body and returns a StreamingResponse, streaming the paced runner."""
    if kind == "fastapi":
        import uvicorn

        api = FastAPI()

        @api.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @api.post("/{path:path}")
        async def chat(request: Request) -> StreamingResponse:
            await request.json()
            return StreamingResponse(_paced_events(), media_type="text/event-stream")

        uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", loop="asyncio", lifespan="off")
        return
    if kind == "uvicorn":
        import uvicorn

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()  # the request's body, in one message at this size
            head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            async for data in _paced_events():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio", lifespan="off")
        return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        async for data in _paced_events():
            writer.write(data)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class _Forgetful(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def litellm_binary() -> tuple[str | None, str]:
    """LiteLLM's proxy: $LLMRUN_LITELLM_BIN, else the bench's own venv (made on first use from
    bench/requirements-litellm.txt); (None, why not) when neither can be had."""
    if binary := os.environ.get("LLMRUN_LITELLM_BIN"):
        return binary, ""
    python, found = private_venv(LITELLM_VENV, HERE / "requirements-litellm.txt", "import litellm.proxy.proxy_server")
    if python is None:
        return None, found
    return str(Path(python).parent / "litellm"), ""


def start_litellm(binary: str, upstream: str, tmp: Path) -> tuple[Process, str]:
    config = {
        "model_list": [
            {
                "model_name": "paced",
                "litellm_params": {"model": "openai/paced", "api_base": f"{upstream}/v1", "api_key": "sk-fake"},
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},  # the proxy refuses to start without one
    }
    path = tmp / "litellm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    home = tmp / "home"
    home.mkdir()
    port = free_port()
    env = litellm_env(home, os.environ.get("PATH", "/usr/bin:/bin"))
    argv = [binary, "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    proxy = Process(argv, env, tmp / "litellm.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            raise SystemExit(f"litellm exited:\n{(tmp / 'litellm.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as response:
                if response.status == 200:
                    return proxy, url
        except OSError:
            pass
        time.sleep(0.25)
    proxy.stop()
    raise SystemExit("litellm did not start within 180 s")


# --- clients --------------------------------------------------------------------------------


def http_stream(url: str, model: str) -> Callable[[], Awaitable[Timing]]:
    """One streamed chat completion over a fresh connection, read as raw bytes."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {MASTER_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def one() -> Timing:
        started = time.perf_counter()
        first = None
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            tail = b""
            while data := await reader.read(65536):
                seen = tail + data
                if first is None and NON_EMPTY_CONTENT.search(seen):
                    first = time.perf_counter() - started
                if b"data: [DONE]" in seen:
                    return (first or 0.0, time.perf_counter() - started)
                tail = seen[-64:]
            raise RuntimeError("the stream ended before [DONE]")
        finally:
            writer.close()

    return one


def in_process() -> Callable[[], Awaitable[Timing]]:
    runner = PacedRunner()
    request = ChatRequest.of("hi")
    return lambda: timed_stream(runner, request)


# --- measuring ------------------------------------------------------------------------------


async def measure(
    ways: dict[str, Callable[[], Awaitable[Timing]]], singles: int, streams: int, bursts: int
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]], int]:
    names = list(ways)
    for name in names:  # warm-up: imports, caches, connection pools
        await asyncio.gather(*(ways[name]() for _ in range(5)))
    alone: dict[str, list[Timing]] = {n: [] for n in names}
    burst: dict[str, list[Timing]] = {n: [] for n in names}
    failed = 0
    for i in range(singles):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            try:
                alone[name].append(await ways[name]())
            except Exception as exc:
                failed += 1
                print(f"  {name}: {exc!r}", file=sys.stderr)
    for i in range(bursts):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            await asyncio.sleep(0.5)  # the previous burst's connections settle
            results = await asyncio.gather(*(ways[name]() for _ in range(streams)), return_exceptions=True)
            for r in results:
                if isinstance(r, tuple):
                    burst[name].append(r)
                else:
                    failed += 1
                    print(f"  {name}: {r!r}", file=sys.stderr)
    return alone, burst, failed


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def figures(timings: list[Timing]) -> list[float]:
    total = [t for _, t in timings]
    first = [f for f, _ in timings]
    return [pct(total, 50) * 1000, pct(total, 90) * 1000, pct(first, 50) * 1000, pct(first, 90) * 1000]


def table(results: dict[str, list[Timing]], pairs: list[tuple[str, str, str]]) -> list[str]:
    lines = [f"   {'':<34} {'total p50':>9} {'p90':>7}   {'first p50':>9} {'p90':>7}"]
    for label, direct, served in pairs:
        if served not in results:
            continue
        d, s = figures(results[direct]), figures(results[served])
        lines.append(f"   {direct:<34} {d[0]:9.1f} {d[1]:7.1f}   {d[2]:9.1f} {d[3]:7.1f}")
        lines.append(f"   {served:<34} {s[0]:9.1f} {s[1]:7.1f}   {s[2]:9.1f} {s[3]:7.1f}")
        o = [b - a for a, b in zip(d, s, strict=True)]
        lines.append(f"   {'  ' + label + ' overhead':<34} {o[0]:+9.1f} {o[1]:+7.1f}   {o[2]:+9.1f} {o[3]:+7.1f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 single streams and one burst of 50")
    parser.add_argument("--singles", type=int, help="streams one at a time, per way (30)")
    parser.add_argument("--streams", type=int, help="streams per burst (200)")
    parser.add_argument("--bursts", type=int, help="bursts per way (3)")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="CHECKOUT",
        help="also serve from another checkout of llmrun (e.g. an older commit)",
    )
    parser.add_argument(
        "--with-path",
        type=Path,
        metavar="DIR",
        help="also serve with DIR first on PYTHONPATH (e.g. `pip install --target DIR httptools uvloop`)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-floors", action="store_true", help="leave out the bare servers (the floors)")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return 0
    if args.serve_floor:
        serve_floor(args.serve_floor[0], int(args.serve_floor[1]))
        return 0
    singles = args.singles or (8 if args.quick else 30)
    streams = args.streams or (50 if args.quick else 200)
    bursts = args.bursts or (1 if args.quick else 3)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    binary, no_litellm = (None, "--no-litellm") if args.no_litellm else litellm_binary()

    load_before = os.getloadavg()
    started: list[Daemon | Process] = []
    with tempfile.TemporaryDirectory(prefix="llmrun-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            port = free_port()
            daemon = Daemon(
                [sys.executable, str(HERE / "server_load.py"), "--serve-paced", str(port)], port, dict(os.environ)
            )
            ways = {
                "llmrun: runner in-process": in_process(),
                "llmrun: through llmrun serve": http_stream(daemon.url, "paced"),
            }
            if args.compare is not None:
                port = free_port()
                argv = [sys.executable, str(args.compare / "bench" / "server_load.py"), "--serve-paced", str(port)]
                other = Daemon(argv, port, dict(os.environ))
                started.append(other)
                ways["llmrun: through the other checkout"] = http_stream(other.url, "paced")
            for kind in [] if args.no_floors else ["asyncio", "uvicorn", "fastapi"]:
                port = free_port()
                floor = Daemon([sys.executable, __file__, "--serve-floor", kind, str(port)], port, dict(os.environ))
                started.append(floor)
                ways[f"floor: bare {kind} server"] = http_stream(floor.url, "paced")
            if args.with_path is not None:
                port = free_port()
                argv = [sys.executable, str(HERE / "server_load.py"), "--serve-paced", str(port)]
                env = dict(
                    os.environ, PYTHONPATH=os.pathsep.join([str(args.with_path), os.environ.get("PYTHONPATH", "")])
                )
                other = Daemon(argv, port, env)
                started.append(other)
                ways[f"llmrun: serve, {args.with_path.name} on the path"] = http_stream(other.url, "paced")
            if binary is not None:
                upstream = Process(
                    [sys.executable, __file__, "--serve-upstream"], dict(os.environ), tmp / "upstream.log"
                )
                started.append(upstream)
                assert upstream.proc.stdout is not None
                upstream_url = f"http://127.0.0.1:{int(upstream.proc.stdout.readline())}"
                proxy, proxy_url = start_litellm(binary, upstream_url, tmp)
                started.append(proxy)
                ways["LiteLLM: fake upstream directly"] = http_stream(upstream_url, "paced")
                ways["LiteLLM: through LiteLLM proxy"] = http_stream(proxy_url, "paced")
            alone, burst, failed = asyncio.run(measure(ways, singles, streams, bursts))
        finally:
            daemon.stop()
            for process in started:
                process.stop()
    load_after = os.getloadavg()

    pairs = [
        ("llmrun", "llmrun: runner in-process", "llmrun: through llmrun serve"),
        ("asyncio floor", "llmrun: runner in-process", "floor: bare asyncio server"),
        ("uvicorn floor", "llmrun: runner in-process", "floor: bare uvicorn server"),
        ("FastAPI floor", "llmrun: runner in-process", "floor: bare fastapi server"),
        ("other checkout", "llmrun: runner in-process", "llmrun: through the other checkout"),
        (
            "with path",
            "llmrun: runner in-process",
            f"llmrun: serve, {args.with_path.name} on the path" if args.with_path else "",
        ),
        ("LiteLLM", "LiteLLM: fake upstream directly", "LiteLLM: through LiteLLM proxy"),
    ]
    version = ""
    if binary is not None:
        probe = [
            str(Path(binary).parent / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ]
        version = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
    out = [
        f"daemon overhead: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M')}" + (f", LiteLLM {version}" if version else f", no LiteLLM ({no_litellm})"),
        f"  load average before: {' '.join(f'{x:.2f}' for x in load_before)};"
        f" after: {' '.join(f'{x:.2f}' for x in load_after)}",
        f"  {CHUNKS} content chunks {GAP * 1000:.0f} ms apart; ms from request sent to [DONE] (total) and to the"
        " first content chunk",
        "",
        f"  one stream at a time, {singles} each, interleaved:",
        *table(alone, pairs),
        "",
        f"  {streams} streams at once, {bursts} burst(s) each, interleaved:",
        *table(burst, pairs),
    ]
    if failed:
        out.append(f"  FAILED: {failed} request(s)")
    print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
