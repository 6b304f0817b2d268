#!/usr/bin/env python3
"""Warm sessions against cold runs, for every installed AI CLI with a warm mode.

    unshare -n sh -c 'ip link set lo up && python3 bench/warm.py'
    unshare -n sh -c 'ip link set lo up && python3 bench/warm.py --runs 3 --turns 5 --runner claude_code'

Each installed tool of tests/warmtools.py (claude_code, codex, gemini, qwen, copilot, opencode,
cline, kilo, droid, vibe) runs against its loopback mock API (tests/mockapi.py,
tests/mock_gemini.py, tests/mock_openai_chat.py; the mock answers at once), in a throwaway
HOME of its own with fake keys, and is timed four ways in the same run:

a. cold turn: `runner.complete()`, which starts the tool for the one answer (median of --runs);
b. warm turns 2..--turns of one session: the tool process is already up (median and p90);
c. pre-warmed first turn: `await session.start()`, then the first `complete()` at once (median
   over --runs sessions; the time start() took is reported too), and the same in as many more
   sessions left after start() until the tool's processes stop using CPU (what a spare started
   long before its first request sees);
d. resident memory of the session's tool processes after its first turn
   (`llmrun.process.rss_bytes(session.pids())`).

Cold runs and pre-warmed sessions alternate, after one untimed cold run per tool (which fills
caches: copilot unpacks its package into the fresh HOME on first use), so drift on the machine
affects both alike. For claude_code only, claude-agent-sdk-python's `ClaudeSDKClient` drives
the same `claude` binary through the same warm turns, alternating turn by turn with llmrun's
session. It is not a llmrun dependency; install it beforehand (outside the namespace), either
into this interpreter (`python3 -m pip install claude-agent-sdk`) or into a private venv that
this script finds by itself:

    python3 -m venv --system-site-packages /tmp/llmrun-bench-sdk
    /tmp/llmrun-bench-sdk/bin/pip install claude-agent-sdk

The mocks' connections get TCP_NODELAY (see `no_delay`; --mock-nagle leaves them as the tests
have them). The run must happen in a network namespace with loopback only (the script checks, and says
how to get one otherwise). After every session the script checks that `session.pids()` is
empty and that no process is left in the session's working directory. Exits 1 when a runner
failed or left a process behind; nothing asserts on times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # a plain checkout runs without installing llmrun
sys.path.insert(1, str(ROOT / "tests"))  # the mock APIs and the env builders of the real-CLI tests

from mockapi import MockAnthropic  # noqa: E402
from realcli import claude_env, loopback_only, processes_in  # noqa: E402
from warmtools import WARM_TOOLS, WarmTool  # noqa: E402

import llmrun  # noqa: E402
from llmrun.process import rss_bytes  # noqa: E402

SDK_VENV = Path(os.environ.get("LLMRUN_BENCH_SDK_VENV", Path(tempfile.gettempdir()) / "llmrun-bench-sdk"))
TURN_LIMIT = 180.0  # hard limit on any one turn or start: a broken tool fails instead of hanging
UNSHARE_HINT = "unshare -n sh -c 'ip link set lo up && python3 bench/warm.py'"
TARGETS = {"cold/warm": 10.0, "cold/prewarmed": 5.0, "llmrun/sdk": 1.1}


@dataclass
class Result:
    runner: str
    version: str = ""
    skipped: str | None = None
    error: str | None = None
    cold_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    prewarmed_ms: list[float] = field(default_factory=list)
    start_ms: list[float] = field(default_factory=list)
    ready_ms: list[float] = field(default_factory=list)
    ready_first_ms: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    rss_after_last_turn: int | None = None
    requests_per_warm_turn: float | None = None
    sdk_note: str | None = None
    sdk_warm_ms: list[float] = field(default_factory=list)
    sdk_connect_ms: float | None = None
    sdk_rss_bytes: int | None = None
    leaks: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        cold = median(self.cold_ms)
        warm = median(self.warm_ms)
        prewarmed = median(self.prewarmed_ms)
        ready_first = median(self.ready_first_ms)
        sdk = median(self.sdk_warm_ms)
        return {
            "cold_median_ms": cold,
            "warm_median_ms": warm,
            "warm_p90_ms": p90(self.warm_ms),
            "prewarmed_median_ms": prewarmed,
            "start_median_ms": median(self.start_ms),
            "ready_median_ms": median(self.ready_ms),
            "ready_first_median_ms": ready_first,
            "rss_median_mb": median([b / 2**20 for b in self.rss_bytes]),
            "cold_over_warm": ratio(cold, warm),
            "cold_over_prewarmed": ratio(cold, prewarmed),
            "cold_over_ready_first": ratio(cold, ready_first),
            "sdk_warm_median_ms": sdk,
            "sdk_warm_p90_ms": p90(self.sdk_warm_ms),
            "llmrun_over_sdk": ratio(warm, sdk),
        }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def p90(values: list[float]) -> float | None:
    """90th percentile, interpolated between the two nearest values (as numpy's default)."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def isolated_environ(env: dict[str, str], config: Path) -> Iterator[None]:
    """This process's environment becomes the tool's isolated one (runners pass their own on)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    os.environ["LLMRUN_CONFIG"] = str(config)  # no user config can change the command line
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def timed(work: Awaitable[object]) -> float:
    started = time.perf_counter()
    await work
    return (time.perf_counter() - started) * 1000


async def gone(workdir: str, within: float = 10.0) -> list[str]:
    """Processes still running in `workdir` once `within` seconds have passed (none, we hope)."""
    deadline = time.monotonic() + within
    while (left := processes_in(workdir)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return [f"pid {pid}: {cmd[:160]}" for pid, cmd in left]


def cpu_ticks(pids: list[int]) -> int:
    """User plus system CPU time of these processes, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


async def until_idle(pids: Callable[[], list[int]], started: float, limit: float = 60.0) -> float:
    """Wait until the processes have used at most one tick of CPU in each of 5 polls 0.1 s apart;
    the ms from `started` to the beginning of that quiet spell (the tool's own start-up)."""
    last = cpu_ticks(pids())
    quiet_since: float | None = None
    quiet = 0
    while time.perf_counter() - started < limit:
        polled = time.perf_counter()
        await asyncio.sleep(0.1)
        ticks = cpu_ticks(pids())
        if ticks - last <= 1:
            quiet_since = polled if quiet == 0 else quiet_since
            quiet += 1
            if quiet >= 5 and quiet_since is not None:
                return (quiet_since - started) * 1000
        else:
            quiet = 0
        last = ticks
    return limit * 1000


def load_sdk() -> tuple[Any, str]:
    """claude_agent_sdk from this interpreter or from the private venv; (module or None, note)."""
    try:
        import claude_agent_sdk
    except ImportError:
        found = sorted(glob.glob(str(SDK_VENV / "lib" / "python*" / "site-packages")))
        if not found:
            return None, f"claude-agent-sdk is not installed (not importable, no venv at {SDK_VENV})"
        sys.path.append(found[-1])
        try:
            import claude_agent_sdk
        except ImportError as exc:
            return None, f"claude-agent-sdk could not be imported from {found[-1]}: {exc}"
    return claude_agent_sdk, f"claude-agent-sdk {claude_agent_sdk.__version__}"


def tool_version(binary: str) -> str:
    import subprocess

    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0] if done.stdout or done.stderr else "?"


def deadline() -> contextlib.AbstractAsyncContextManager[object]:
    """TURN_LIMIT on the SDK's calls, in the calling task (anyio's scopes must not change task).
    Python 3.10 has no asyncio.timeout: no limit there."""
    timeout = getattr(asyncio, "timeout", None)
    return timeout(TURN_LIMIT) if timeout is not None else contextlib.nullcontext()


class SdkClient:
    """ClaudeSDKClient on the same binary with the flags llmrun's warm session gives claude."""

    def __init__(self, sdk: Any, binary: str, workdir: str, env: dict[str, str]) -> None:
        options = sdk.ClaudeAgentOptions(
            cli_path=binary,
            cwd=workdir,
            model="sonnet",  # llmrun's default model for claude_code
            tools=[],  # --tools "" as llmrun sends without allow_tools
            # Claude Code's own system prompt, as llmrun leaves it (the SDK's default is an empty one).
            system_prompt={"type": "preset", "preset": "claude_code"},
            include_partial_messages=True,
            env=env,
        )
        self.sdk = sdk
        self.client = sdk.ClaudeSDKClient(options=options)

    async def connect(self) -> None:
        async with deadline():
            await self.client.connect()

    async def turn(self, prompt: str) -> None:
        async with deadline():
            await self.client.query(prompt)
            async for message in self.client.receive_response():
                if isinstance(message, self.sdk.ResultMessage) and message.is_error:
                    raise RuntimeError(f"ClaudeSDKClient turn failed: {message.result}")

    async def close(self) -> None:
        await self.client.disconnect()


def no_delay(mock: Any) -> Any:
    """The mock with TCP_NODELAY on its connections. The mocks write an answer's header and
    events in several small writes; with Nagle's algorithm on, a write that follows one not yet
    acknowledged waits for the client's delayed ACK, about 40 ms on Linux loopback, in some
    turns and not in others. That is the mock's doing, not the tool's (real APIs send through TLS
    with Nagle off), and it would be most of a warm turn."""
    server = mock._server  # the mock's ThreadingHTTPServer
    handler = server.RequestHandlerClass
    server.RequestHandlerClass = type(handler.__name__, (handler,), {"disable_nagle_algorithm": True})
    return mock


async def bench_runner(spec: WarmTool, runs: int, turns: int, sdk: Any, base: Path, nagle: bool) -> Result:
    result = Result(spec.runner)
    binary = shutil.which(spec.binary)
    if binary is None:
        result.skipped = f"`{spec.binary}` is not installed"
        return result
    result.version = tool_version(binary)
    home = Path(tempfile.mkdtemp(prefix=f"{spec.runner}-", dir=base))
    with spec.mock() as api, isolated_environ(spec.env(home, api), home / "no-such-llmrun-config.toml"):
        if not nagle:
            no_delay(api)
        runner = llmrun.get_runner(spec.runner, **spec.settings(api))
        if not runner.capabilities.warm:
            result.skipped = f"{spec.runner} has no warm mode in this llmrun"
            return result
        cold_dir = home / "cold"
        cold_dir.mkdir()

        async def cold() -> float:
            request = llmrun.ChatRequest.of("Say hi.", cwd=str(cold_dir), timeout=TURN_LIMIT)
            return await timed(runner.complete(request))

        say(f"{spec.runner}: untimed cold run (fills caches)")
        await cold()
        for i in range(runs):
            say(f"{spec.runner}: round {i + 1}/{runs}: cold run")
            result.cold_ms.append(await cold())
            say(f"{spec.runner}: round {i + 1}/{runs}: pre-warmed session" + (f", {turns} turns" if i == 0 else ""))
            first = turns if i == 0 else 1
            await one_session(spec, runner, home / f"session-{i}", result, first, sdk, binary, api, nagle)
            say(f"{spec.runner}: round {i + 1}/{runs}: pre-warmed session, first turn once the tool is idle")
            await one_session(spec, runner, home / f"session-{i}-idle", result, 1, None, binary, api, nagle, idle=True)
        result.leaks += await gone(str(home))
    return result


async def one_session(
    spec: WarmTool,
    runner: llmrun.Runner,
    workdir: Path,
    result: Result,
    turns: int,
    sdk: Any,
    binary: str,
    api: Any,
    nagle: bool,
    idle: bool = False,
) -> None:
    """One pre-warmed session: start(), then the first turn at once (or, with `idle`, once the
    tool's processes have stopped using CPU), then turns 2..`turns`."""
    workdir.mkdir()
    session = runner.session(cwd=str(workdir), timeout=TURN_LIMIT)
    client: SdkClient | None = None
    mocks = contextlib.ExitStack()  # the SDK's claude talks to a mock of its own: requests are counted apart
    sdk_dir = workdir.parent / f"{workdir.name}-sdk"
    try:
        started = time.perf_counter()
        await session.start()  # the session's timeout bounds the start
        result.start_ms.append((time.perf_counter() - started) * 1000)
        if idle:
            result.ready_ms.append(await until_idle(session.pids, started))
            result.ready_first_ms.append(await timed(session.complete("Turn 1. Say hi.")))
        else:
            result.prewarmed_ms.append(await timed(session.complete("Turn 1. Say hi.")))
        pids = session.pids()
        result.processes.append(len(pids))
        result.rss_bytes.append(rss_bytes(pids))
        if turns > 1 and sdk is not None:
            sdk_dir.mkdir()
            sdk_home = sdk_dir / "home-root"
            sdk_api = mocks.enter_context(MockAnthropic())
            if not nagle:
                no_delay(sdk_api)
            client = SdkClient(sdk, binary, str(sdk_dir), claude_env(sdk_home, sdk_api.url))
            result.sdk_connect_ms = await timed(client.connect())
            await client.turn("Turn 1. Say hi.")
            sdk_pids = [pid for pid, _ in processes_in(str(sdk_dir))]
            result.sdk_rss_bytes = rss_bytes(sdk_pids)
        requests_before = len(api.requests)
        for turn in range(2, turns + 1):
            prompt = f"Turn {turn}. Say hi."
            # Alternate which goes first, so that neither always follows the other's wake-up.
            if client is not None and turn % 2:
                result.sdk_warm_ms.append(await timed(client.turn(prompt)))
            result.warm_ms.append(await timed(session.complete(prompt)))
            if client is not None and not turn % 2:
                result.sdk_warm_ms.append(await timed(client.turn(prompt)))
        if turns > 1:
            sent = len(api.requests) - requests_before
            result.requests_per_warm_turn = sent / (turns - 1)
            result.rss_after_last_turn = rss_bytes(session.pids())
    finally:
        try:
            await session.aclose()
        finally:
            try:
                if client is not None:
                    await client.close()
            finally:
                mocks.close()
        if left := session.pids():
            result.leaks.append(f"{spec.runner}: session.pids() after close: {left}")
        result.leaks += await gone(str(workdir))
        if sdk_dir.exists():
            result.leaks += [f"ClaudeSDKClient: {leak}" for leak in await gone(str(sdk_dir))]


def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def verdict(value: float | None, key: str) -> str:
    if value is None:
        return ""
    target = TARGETS[key]
    met = value <= target if key == "llmrun/sdk" else value >= target
    return "met" if met else "MISSED"


def print_table(results: list[Result], runs: int, turns: int) -> None:
    done = [r for r in results if not r.skipped and not r.error]
    print()
    print(f"  wall time per turn, ms (medians over {runs} runs; warm = turns 2..{turns} of one session)")
    print(
        f"  {'runner':<12} {'cold':>7} {'warm p50':>9} {'warm p90':>9} {'start()':>8} {'then 1st':>9}"
        f" {'idle at':>8} {'then 1st':>9} {'RSS MB':>7} {'procs':>6}"
    )
    for result in results:
        if result.skipped or result.error:
            print(f"  {result.runner:<12} {'skipped: ' + result.skipped if result.skipped else 'FAILED (below)'}")
            continue
        s = result.summary()
        procs = "/".join(map(str, sorted(set(result.processes)))) or "-"
        print(
            f"  {result.runner:<12} {fmt(s['cold_median_ms']):>7} {fmt(s['warm_median_ms']):>9}"
            f" {fmt(s['warm_p90_ms']):>9} {fmt(s['start_median_ms']):>8} {fmt(s['prewarmed_median_ms']):>9}"
            f" {fmt(s['ready_median_ms']):>8} {fmt(s['ready_first_median_ms']):>9}"
            f" {fmt(s['rss_median_mb']):>7} {procs:>6}"
        )
    print("  start(): `await session.start()`; then 1st: the first complete() right after it returns;")
    print("  idle at: start() until the tool's processes stop using CPU; then 1st: the first complete() after that;")
    print("  RSS: the session's processes (session.pids()) after turn 1, median over all sessions")
    print()
    print(f"  {'ratios':<12} {'cold/warm':>10} {'cold/pre-warmed':>16} {'cold/(pre-warmed, idle)':>24}")
    print(f"  {'(target)':<12} {'>=10x':>10} {'>=5x':>16} {'':>24}")
    for result in done:
        s = result.summary()
        warm, pre = s["cold_over_warm"], s["cold_over_prewarmed"]
        print(
            f"  {result.runner:<12} {fmt(warm, '.1f', 'x'):>6} {verdict(warm, 'cold/warm'):<3}"
            f" {fmt(pre, '.1f', 'x'):>12} {verdict(pre, 'cold/prewarmed'):<3}"
            f" {fmt(s['cold_over_ready_first'], '.1f', 'x'):>24}"
        )
    print()
    for result in done:
        after = result.rss_after_last_turn
        print(
            f"  {result.runner}: {result.version}; API requests per warm turn:"
            f" {fmt(result.requests_per_warm_turn, '.1f')}; RSS after turn {turns}:"
            f" {fmt(after / 2**20 if after else None)} MB"
        )
    claude = next((r for r in done if r.runner == "claude_code"), None)
    if claude is not None:
        print()
        if claude.sdk_warm_ms:
            s = claude.summary()
            value = s["llmrun_over_sdk"]
            print(f"  claude_code warm turns 2..{turns}, same binary, alternating turn by turn ({claude.sdk_note}):")
            print(f"    {'':<28} {'p50 ms':>7} {'p90 ms':>7} {'start/connect ms':>17} {'RSS MB':>7}")
            print(
                f"    {'llmrun session':<28} {fmt(s['warm_median_ms']):>7} {fmt(s['warm_p90_ms']):>7}"
                f" {fmt(claude.start_ms[0] if claude.start_ms else None):>17}"
                f" {fmt(claude.rss_bytes[0] / 2**20 if claude.rss_bytes else None):>7}"
            )
            print(
                f"    {'ClaudeSDKClient':<28} {fmt(s['sdk_warm_median_ms']):>7} {fmt(s['sdk_warm_p90_ms']):>7}"
                f" {fmt(claude.sdk_connect_ms):>17}"
                f" {fmt(claude.sdk_rss_bytes / 2**20 if claude.sdk_rss_bytes else None):>7}"
            )
            target = verdict(value, "llmrun/sdk")
            print(f"    llmrun / ClaudeSDKClient, p50: {fmt(value, '.2f', 'x')} (target <=1.1x: {target})")
        else:
            print(f"  ClaudeSDKClient comparison skipped: {claude.sdk_note}")
    for result in results:
        if result.error:
            print(f"\n  {result.runner} FAILED:\n" + "\n".join("    " + line for line in result.error.splitlines()))
        for leak in result.leaks:
            print(f"  {result.runner}: LEFT BEHIND: {leak}")


async def main_async(args: argparse.Namespace) -> list[Result]:
    wanted = args.runner or [spec.runner for spec in WARM_TOOLS]
    unknown = set(wanted) - {spec.runner for spec in WARM_TOOLS}
    if unknown:
        known = ", ".join(tool.runner for tool in WARM_TOOLS)
        raise SystemExit(f"unknown runner(s): {', '.join(sorted(unknown))}; known: {known}")
    sdk = None
    sdk_note = "not asked for (--no-sdk)"
    if "claude_code" in wanted and not args.no_sdk:
        sdk, sdk_note = load_sdk()
    results = []
    with tempfile.TemporaryDirectory(prefix="llmrun-warm-bench-") as base:
        for spec in WARM_TOOLS:
            if spec.runner not in wanted:
                continue
            try:
                with_sdk = sdk if spec.runner == "claude_code" else None
                result = await bench_runner(spec, args.runs, args.turns, with_sdk, Path(base), args.mock_nagle)
            except Exception as exc:
                result = Result(spec.runner, error="".join(traceback.format_exception(exc)).rstrip())
                say(f"{spec.runner}: FAILED: {exc!r}")
                result.leaks += await gone(base)
            if spec.runner == "claude_code":
                result.sdk_note = sdk_note
            if result.skipped:
                say(f"{spec.runner}: skipped: {result.skipped}")
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="cold runs and pre-warmed sessions per tool (5)")
    parser.add_argument("--turns", type=int, default=10, help="turns of the warm session; 2.. are timed (10)")
    parser.add_argument("--runner", action="append", help="only this runner (repeatable)")
    parser.add_argument("--no-sdk", action="store_true", help="leave out the ClaudeSDKClient comparison")
    parser.add_argument(
        "--mock-nagle",
        action="store_true",
        help="leave Nagle's algorithm on in the mock APIs, as the tests do (adds ~40 ms to some turns)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    if args.runs < 1 or args.turns < 2:
        parser.error("--runs must be at least 1 and --turns at least 2")
    if not loopback_only():
        print("bench/warm.py runs real AI CLIs and must not reach the network: a non-loopback interface is up.")
        print("Run it in a network namespace with loopback only (as root):")
        print(f"    {UNSHARE_HINT}")
        raise SystemExit(2)

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = asyncio.run(main_async(args))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    failed = any(r.error or r.leaks for r in results)
    if args.json:
        document = {
            "date": stamp,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "runs": args.runs,
            "turns": args.turns,
            "mock_nagle": args.mock_nagle,
            "targets": TARGETS,
            "results": [{**asdict(r), "summary": r.summary()} for r in results],
        }
        print(json.dumps(document, indent=2))
    else:
        print(
            f"llmrun warm-session bench: Python {platform.python_version()}, {os.cpu_count()} CPUs,"
            f" {args.runs} runs, {args.turns} turns, {stamp}"
        )
        print(f"  load average before: {' '.join(load_before)}; after: {' '.join(load_after)}")
        print(f"  mock APIs: Nagle's algorithm {'on (--mock-nagle)' if args.mock_nagle else 'off (TCP_NODELAY)'}")
        print_table(results, args.runs, args.turns)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
