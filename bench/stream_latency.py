#!/usr/bin/env python3
"""How much llmrun's process layer adds between an AI CLI and the caller.

    python3 bench/stream_latency.py            # full run, under a minute
    python3 bench/stream_latency.py --quick    # a few seconds, for a smoke test

Three measurements, each side by side with a bare-subprocess baseline taken in the same
run (the machine may be shared and noisy, so absolute times mean little; the ratios and
differences are the figures to read):

1. chunk latency: a delta written by the tool until `runner.stream()` yields it,
2. `runner.complete()` wall time against the bare fake CLI, and the import cost,
3. throughput of one big answer written as fast as the tool can.

Standard library and llmrun only. Nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EMITTER = HERE / "emit_stream_json.py"
FAKE = ROOT / "fixtures" / "bin" / "claude"
FAKE_ENV = {"LLMRUN_FAKE_SCENARIO": "mock-stream-json-partial", "LLMRUN_FAKE_DELAY": "0"}

sys.path.insert(0, str(ROOT))  # a plain checkout runs without installing llmrun

from llmrun.config import RunnerSettings  # noqa: E402
from llmrun.runners.claude_code import ClaudeCodeRunner  # noqa: E402
from llmrun.types import ChatRequest  # noqa: E402


@dataclass
class Plan:
    latency_runs: int
    latency_deltas: int
    gap_us: int
    complete_runs: int
    import_runs: int
    big_deltas: int
    big_runs: int


FULL = Plan(
    latency_runs=10, latency_deltas=200, gap_us=2000, complete_runs=30, import_runs=10, big_deltas=20_000, big_runs=5
)
QUICK = Plan(
    latency_runs=2, latency_deltas=50, gap_us=2000, complete_runs=5, import_runs=3, big_deltas=2_000, big_runs=1
)


# --- helpers ---------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def runner_for(binary: Path, env: dict[str, str]) -> ClaudeCodeRunner:
    # Empty settings: a user's config file or LLMRUN_* variables must not change what is measured.
    return ClaudeCodeRunner(binary=str(binary), env=env, settings=RunnerSettings())


def emitter_env(deltas: int, gap_us: int) -> dict[str, str]:
    return {"EMIT_DELTAS": str(deltas), "EMIT_GAP_US": str(gap_us)}


def delta_text(line: bytes) -> str | None:
    """The text of a stream-json text_delta line, else None."""
    event = json.loads(line)
    inner = event.get("event") or {}
    if event.get("type") == "stream_event" and inner.get("type") == "content_block_delta":
        delta = inner.get("delta") or {}
        if delta.get("type") == "text_delta":
            return str(delta.get("text"))
    return None


# Every reader returns (time the delta reached the caller, the delta's text) pairs and does
# no other work while the stream runs, so what differs is only the path the bytes take.


async def read_with_llmrun(env: dict[str, str]) -> list[tuple[int, str]]:
    runner = runner_for(EMITTER, env)
    seen: list[tuple[int, str]] = []
    async for chunk in runner.stream(ChatRequest.of("hi")):
        if chunk.delta:
            seen.append((time.monotonic_ns(), chunk.delta))
    return seen


def read_bare(env: dict[str, str]) -> list[tuple[int, str]]:
    """The floor: Popen, readline, json.loads, in this same process."""
    seen: list[tuple[int, str]] = []
    with subprocess.Popen(
        [str(EMITTER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env}
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hi")
        proc.stdin.close()
        for line in iter(proc.stdout.readline, b""):
            if (text := delta_text(line)) is not None:
                seen.append((time.monotonic_ns(), text))
    return seen


async def read_asyncio(env: dict[str, str]) -> list[tuple[int, str]]:
    """The event loop's floor: asyncio's own subprocess pipes and readline, no llmrun."""
    seen: list[tuple[int, str]] = []
    # The closing assistant and result lines repeat the whole answer: lift readline's 64 KiB limit.
    proc = await asyncio.create_subprocess_exec(
        str(EMITTER),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        limit=64 * 1024 * 1024,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"hi")
    proc.stdin.close()
    while line := await proc.stdout.readline():
        if (text := delta_text(line)) is not None:
            seen.append((time.monotonic_ns(), text))
    await proc.wait()
    return seen


READERS: dict[str, Callable[[dict[str, str]], list[tuple[int, str]]]] = {
    "bare Popen+readline": read_bare,
    "bare asyncio readline": lambda env: asyncio.run(read_asyncio(env)),
    "llmrun stream()": lambda env: asyncio.run(read_with_llmrun(env)),
}


def check_count(seen: list[tuple[int, str]], expected: int) -> None:
    if len(seen) != expected:
        raise SystemExit(f"expected {expected} deltas, got {len(seen)}")


def latencies_us(seen: list[tuple[int, str]], expected: int) -> list[float]:
    check_count(seen, expected)
    return [(at - int(text)) / 1000 for at, text in seen]


def rotate(runs: int, steps: list[Callable[[], None]]) -> None:
    """Run the steps in turns, each round starting one further on, so drift hits all alike."""
    for i in range(runs):
        for step in steps[i % len(steps) :] + steps[: i % len(steps)]:
            step()


# --- 1. chunk latency ------------------------------------------------------------------


def chunk_latency(plan: Plan) -> dict[str, list[list[float]]]:
    """Per reader, one list of latencies (µs) per run; runs are kept apart to show their spread."""
    env = emitter_env(plan.latency_deltas, plan.gap_us)
    result: dict[str, list[list[float]]] = {name: [] for name in READERS}

    def step(name: str) -> Callable[[], None]:
        return lambda: result[name].append(latencies_us(READERS[name](env), plan.latency_deltas))

    rotate(plan.latency_runs, [step(name) for name in READERS])
    return result


# --- 2. complete() overhead and import cost --------------------------------------------


def complete_overhead(plan: Plan) -> dict[str, list[float]]:
    runner = runner_for(FAKE, FAKE_ENV)
    request = ChatRequest.of("hi")
    # The bare run gets exactly the command line llmrun would build.
    argv = runner.build_invocation(request, str(FAKE)).argv
    env = {**os.environ, **FAKE_ENV}
    times: dict[str, list[float]] = {"bare": [], "llmrun": []}

    async def timed_complete() -> float:
        started = time.perf_counter()
        response = await runner.complete(request)
        elapsed = (time.perf_counter() - started) * 1000
        if response.content != "Hello from mock":
            raise SystemExit(f"unexpected answer from the fake: {response.content!r}")
        return elapsed

    def bare() -> None:
        started = time.perf_counter()
        subprocess.run(argv, input=b"hi", capture_output=True, env=env, check=True)
        times["bare"].append((time.perf_counter() - started) * 1000)

    rotate(plan.complete_runs, [lambda: times["llmrun"].append(asyncio.run(timed_complete())), bare])
    return times


# The attribute access is what loads pydantic: `import llmrun` alone imports names lazily.
IMPORTS = ("pass", "import llmrun", "import llmrun; llmrun.ChatRequest")


def import_cost(plan: Plan) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {code: [] for code in IMPORTS}
    for _ in range(plan.import_runs):
        for code in IMPORTS:  # interleaved: one of each per round
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            times[code].append((time.perf_counter() - started) * 1000)
    return times


# --- 3. throughput ---------------------------------------------------------------------


def rate(seen: list[tuple[int, str]]) -> float:
    """Deltas per second from the first delta written to the last one received."""
    return len(seen) / ((seen[-1][0] - int(seen[0][1])) / 1e9)


def emitter_alone(env: dict[str, str]) -> float:
    """The emitter's own ceiling: deltas per second when it writes to a file."""
    with tempfile.TemporaryFile() as out:
        subprocess.run([str(EMITTER)], input=b"hi", stdout=out, env={**os.environ, **env}, check=True)
        out.seek(0)
        stamps = [int(text) for line in out if (text := delta_text(line)) is not None]
    return len(stamps) / ((stamps[-1] - stamps[0]) / 1e9)


def throughput(plan: Plan) -> dict[str, list[float]]:
    """Per reader, deltas/s of each run; the readers take turns, as in the latency runs."""
    env = emitter_env(plan.big_deltas, 0)
    rates: dict[str, list[float]] = {"emitter alone, to a file": [emitter_alone(env)]}

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            seen = READERS[name](env)
            check_count(seen, plan.big_deltas)
            rates.setdefault(name, []).append(rate(seen))

        return run

    rotate(plan.big_runs, [step(name) for name in READERS])
    return rates


# --- report ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for a smoke test")
    plan = QUICK if parser.parse_args().quick else FULL

    print(
        f"llmrun stream bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{'quick' if plan is QUICK else 'full'} run, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"   load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    lat = chunk_latency(plan)
    print(
        f"\n1. chunk latency: write -> yield, {plan.latency_runs} runs x {plan.latency_deltas} deltas, "
        f"{plan.gap_us / 1000:g} ms apart (µs)"
    )
    print(f"   {'':24}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}   per-run medians")
    pooled: dict[str, list[float]] = {}
    for name, runs in lat.items():
        values = pooled[name] = [v for run in runs for v in run]
        cells = [statistics.median(values), percentile(values, 90), percentile(values, 99), max(values)]
        medians = [statistics.median(run) for run in runs]
        print(f"   {name:24}" + "".join(f"{v:8.0f}" for v in cells) + f"   {min(medians):.0f}-{max(medians):.0f}")
    floor = statistics.median(pooled["bare Popen+readline"])
    loop = statistics.median(pooled["bare asyncio readline"])
    ours = statistics.median(pooled["llmrun stream()"])
    print(
        f"   llmrun median: {ours / floor:.2f}x the Popen floor, {ours - floor:+.0f} µs "
        f"({ours - loop:+.0f} µs vs bare asyncio)"
    )

    times = complete_overhead(plan)
    bare_ms, llmrun_ms = statistics.median(times["bare"]), statistics.median(times["llmrun"])
    print(
        f"\n2. complete() on the fake CLI (mock-stream-json-partial, no delay), {plan.complete_runs} runs each "
        f"interleaved, median ms"
    )
    print(f"   bare subprocess.run   {bare_ms:7.1f}")
    print(f"   runner.complete()     {llmrun_ms:7.1f}   {llmrun_ms - bare_ms:+.1f} ms, {llmrun_ms / bare_ms:.2f}x")
    imports = import_cost(plan)
    print(f"   import cost, {plan.import_runs} runs each interleaved, median ms:")
    base = statistics.median(imports["pass"])
    for code, values in imports.items():
        extra = "" if code == "pass" else f"   {statistics.median(values) - base:+.1f}"
        print(f"     python -c {code!r:38}{statistics.median(values):7.1f}{extra}")

    rates = throughput(plan)
    print(
        f"\n3. throughput: one answer of {plan.big_deltas:,} deltas written back to back, {plan.big_runs} runs each "
        f"in turns (deltas/s; median, then each run)"
    )
    for name, values in rates.items():
        runs = "  ".join(f"{v:,.0f}" for v in values) if len(values) > 1 else ""
        print(f"   {name:26}{statistics.median(values):10,.0f}   {runs}")
    ours, floor = rates["llmrun stream()"], rates["bare Popen+readline"]
    each = "  ".join(f"{a / b:.2f}x" for a, b in zip(ours, floor, strict=True))
    ratio = statistics.median(ours) / statistics.median(floor)
    print(f"   llmrun stream(): {ratio:.2f}x the Popen reader (each run: {each})")
    print(f"   load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
