"""What `llmrun chat -r claude_code` adds over running claude directly, and how soon claude's
cold turn reaches the model with each way of giving it the prompt.

    python3 bench/command_overhead.py              # the fake claude, 20 interleaved runs
    python3 bench/command_overhead.py --quick      # 5 runs, a smoke test only
    unshare -n sh -c 'ip link set lo up && python3 bench/command_overhead.py --real'

1. Command overhead. Each row is a fresh process, as a shell starts it, the rows taking turns
   (round-robin, after one untimed warm-up run each), medians compared:
   - the tool run directly with exactly the argv, stdin and environment llmrun gives it (built
     by the runner's own `prepared_invocation` for the request `chat` makes of "hi");
   - `llmrun chat -r claude_code hi`, stdout piped, with a private XDG cache, data and state
     home (so it logs the turn to its SQLite log and remembers the session, as for a user);
   - the same with `--no-log`.
   The tool is the fake claude of fixtures/bin (a replay of a real capture); with --real, also
   /usr/bin/claude against a loopback mock of the Anthropic API (the mock of the real-CLI tests,
   answering at once), only inside a network namespace with loopback only.
2. With --real, claude's cold turn by invocation: `-p` with the prompt as text on stdin (what
   llmrun ran before), `-p --input-format stream-json` with the prompt as one user message,
   and stream-json input without `-p` (what llmrun runs now, as claude-agent-sdk does); stdin
   is closed after the prompt in all three. Timed: spawn to the mock receiving the `POST /v1/messages`, and spawn
   to exit. Interleaved, medians.

Standard library, llmrun and the tests' mocks only; nothing asserts on times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a plain checkout runs without installing llmrun
sys.path.insert(1, str(ROOT / "tests"))  # the mock API and the env builder of the real-CLI tests
FAKE_CLAUDE = ROOT / "fixtures" / "bin" / "claude"
TARGET_MS = 60.0
"""`llmrun chat -r NAME` should add at most this much to the tool's own run (median)."""
PACKAGES = ("pydantic", "rich", "typer", "sqlite3", "asyncio", "fastapi", "litellm", "openai", "re2")


RELAY = """
import json, subprocess, sys
done = subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read(), capture_output=True)
for line in done.stdout.splitlines():
    event = json.loads(line)
    if event.get("type") == "stream_event":
        delta = event["event"].get("delta") or {}
        if delta.get("type") == "text_delta":
            sys.stdout.write(delta["text"])
sys.stdout.write("\\n")
"""
"""The least any Python wrapper costs: start, run the tool, parse its stream-json, print the text."""
DEPS = "import asyncio, typer, llmrun.types\n"
"""What llmrun's command cannot start without today: typer, asyncio, and its pydantic models."""


@dataclass
class Row:
    label: str
    run_once: Callable[[], tuple[float, float]]
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """CPU time (user + system) of the process and its children: less moved by other load."""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r  {text:30}", end="", file=sys.stderr, flush=True)


def interleave(rows: list[Row], runs: int) -> None:
    for row in rows:  # warm-up: compiled bytecode, page cache, the check cache; not timed
        row.run_once()
    for round_ in range(runs):
        shift = round_ % len(rows)
        for row in rows[shift:] + rows[:shift]:
            wall, cpu = row.run_once()
            row.times.append(wall)
            row.cpu.append(cpu)
        progress(f"round {round_ + 1}/{runs}")
    progress("")


def timed_run(
    argv: list[str], env: dict[str, str], stdin: bytes | None, label: str
) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            argv, env=env, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True
        )
        elapsed = (time.perf_counter() - started) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
        if done.returncode != 0:
            raise SystemExit(f"{label}: exit {done.returncode}\n{done.stderr.decode(errors='replace')[-2000:]}")
        return elapsed, cpu

    return run


def llmrun_argv() -> list[str]:
    """The console script next to this interpreter (no shell shim) when it runs this
    checkout's llmrun, else `python -m llmrun`."""
    script = Path(sys.executable).parent / "llmrun"
    if script.is_file():
        with open(script, "rb") as fh:
            if b"llmrun" in fh.read(4096):
                return [str(script)]
    return [sys.executable, "-m", "llmrun"]


def direct_invocation(env: dict[str, str]) -> tuple[list[str], bytes, dict[str, str]]:
    """argv, stdin and environment of the tool exactly as `llmrun chat -r claude_code hi` runs it."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the settings (LLMRUN_*) and the child's environment llmrun would see
    try:
        from llmrun.cli.chat import ChatOptions
        from llmrun.registry import get_runner

        runner: Any = get_runner("claude_code")
        invocation = runner.prepared_invocation(ChatOptions().request("hi", session_id=None))
        child_env = invocation.child_env()
        invocation.remove_files()
        return list(invocation.argv), invocation.stdin or b"", child_env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def imports_of(env: dict[str, str]) -> str:
    """Which of PACKAGES and which runner modules `chat -r claude_code hi` imports (by import
    statement, which -X importtime shows)."""
    argv = [sys.executable, "-X", "importtime", "-m", "llmrun", "chat", "-r", "claude_code", "hi"]
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    modules = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}
    found = [p for p in PACKAGES if p in {m.split(".")[0] for m in modules}]
    runners = sorted(m for m in modules if m.startswith("llmrun.runners.") and m.count(".") == 2)
    return f"{', '.join(found) or 'none of them'}; runner modules: {', '.join(runners) or 'none'}"


def overhead(label: str, env: dict[str, str], runs: int, compare: Path | None) -> None:
    argv, stdin, child_env = direct_invocation(env)
    chat = [*llmrun_argv(), "chat", "-r", "claude_code", "hi"]
    rows = [
        Row("tool directly (llmrun's argv)", timed_run(argv, child_env, stdin, "tool")),
        Row("llmrun chat -r claude_code hi", timed_run(chat, env, None, "llmrun chat")),
        Row("llmrun chat --no-log -r claude_code hi", timed_run([*chat[:-1], "--no-log", "hi"], env, None, "--no-log")),
    ]
    if compare is not None:  # another checkout (e.g. before a change), in the same rounds
        other = {**env, "PYTHONPATH": str(compare)}
        rows += [
            Row(f"  the same, {compare.name}", timed_run(chat, other, None, "compare chat")),
            Row(f"  --no-log, {compare.name}", timed_run([*chat[:-1], "--no-log", "hi"], other, None, "compare")),
        ]
    rows += [
        Row("bare Python relay (floor)", timed_run([sys.executable, "-c", RELAY, *argv], child_env, stdin, "relay")),
        Row(
            "relay + typer, asyncio, llmrun.types",
            timed_run([sys.executable, "-c", DEPS + RELAY, *argv], child_env, stdin, "deps"),
        ),
        Row("python -c pass", timed_run([sys.executable, "-c", "pass"], env, None, "pass")),
    ]
    interleave(rows, runs)
    base = rows[0].median
    print(f"\n  {label}: {runs} runs each, interleaved (ms; cpu: user+system of the process tree)")
    print(f"  argv: {' '.join(a if a else repr(a) for a in argv[1:])}  (stdin {len(stdin)} bytes)")
    print(f"    {'':42} {'median':>8} {'min':>7} {'max':>7}   {'- tool':>7} {'x tool':>6}   {'cpu':>6} {'- tool':>7}")
    cpu_base = statistics.median(rows[0].cpu)
    for row in rows:
        cpu = statistics.median(row.cpu)
        if row.label.startswith(("tool", "python")):
            diff, cpu_diff = f"{'':>7} {'':>6}", ""
        else:
            diff, cpu_diff = f"{row.median - base:+7.1f} {row.median / base:5.2f}x", f"{cpu - cpu_base:+7.1f}"
        print(
            f"    {row.label:42} {row.median:8.1f} {min(row.times):7.1f} {max(row.times):7.1f}"
            f"   {diff}   {cpu:6.1f} {cpu_diff}"
        )
    worst = max(rows[1].median, rows[2].median) - base
    verdict = "met" if worst <= TARGET_MS else "NOT met"
    print(f"    target: at most +{TARGET_MS:.0f} ms over the tool: {verdict} (+{worst:.1f} ms, the slower of the two)")
    print(f"    imported ({', '.join(PACKAGES)}): {imports_of(env)}")


def cold_turns(env: dict[str, str], mock: Any, binary: str, runs: int) -> None:
    """Spawn to request and spawn to exit for each way of giving claude the prompt."""
    argv, json_line, child_env = direct_invocation(env)
    base = [arg for arg in argv if arg != "-p"]
    if "--input-format" in base:  # what llmrun runs now; the other variants are built from it
        at = base.index("--input-format")
        del base[at : at + 2]
    printing = [base[0], "-p", *base[1:]]
    variants = {
        "-p, prompt as text": (printing, b"hi"),
        "-p --input-format stream-json": ([*printing, "--input-format", "stream-json"], json_line),
        "stream-json input, no -p (llmrun)": ([*base, "--input-format", "stream-json"], json_line),
    }
    timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}

    def once(name: str) -> None:
        argv, stdin = variants[name]
        before = len(mock.message_requests)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(argv, env=child_env, input=stdin, capture_output=True)
        ended = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[name].append((after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) * 1000)
        if done.returncode != 0 or b'"type":"result"' not in done.stdout:
            raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr.decode(errors='replace')[-2000:]}")
        new = mock.message_requests[before:]
        if not new:
            raise SystemExit(f"{name}: no request reached the mock")
        timings[name][0].append((new[0]["t"] - started) * 1000)
        timings[name][1].append((ended - started) * 1000)

    names = list(variants)
    for name in names:
        once(name)  # warm-up, not timed
    for name in names:
        timings[name][0].clear()
        timings[name][1].clear()
        cpu[name].clear()
    for round_ in range(runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            once(name)
        progress(f"round {round_ + 1}/{runs}")
    progress("")
    print(f"\n  claude's cold turn by invocation ({binary}), {runs} runs each, interleaved; median (min-max) ms")
    print(f"    {'invocation':34} {'spawn -> request':>22} {'spawn -> exit':>22} {'cpu':>7}")
    first = statistics.median(timings[names[0]][0])
    for name in names:
        request, total = timings[name]
        print(
            f"    {name:34} {statistics.median(request):8.1f} ({min(request):5.0f}-{max(request):5.0f})"
            f" {statistics.median(total):8.1f} ({min(total):5.0f}-{max(total):5.0f})"
            f" {statistics.median(cpu[name]):7.1f}   request {statistics.median(request) - first:+6.1f} vs text"
        )


def stamped(mock: Any) -> Any:
    """The mock, each recorded request with the time it arrived (time.monotonic())."""
    record = mock._record
    mock._record = lambda entry: record({**entry, "t": time.monotonic()})
    server = mock._server  # TCP_NODELAY, as in bench/warm.py: no 40 ms delayed-ACK stalls
    handler = server.RequestHandlerClass
    server.RequestHandlerClass = type(handler.__name__, (handler,), {"disable_nagle_algorithm": True})
    return mock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 runs of each, a smoke test")
    parser.add_argument("--real", action="store_true", help="also /usr/bin/claude against a loopback mock")
    parser.add_argument("--compare", type=Path, help="also time the llmrun of this checkout (PYTHONPATH)")
    parser.add_argument("--cold-only", action="store_true", help="with --real: only claude's cold turn by invocation")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    if args.real:
        from realcli import loopback_only

        if not loopback_only():
            raise SystemExit(
                "--real runs the installed claude, which must not reach the network: run it as\n"
                "  unshare -n sh -c 'ip link set lo up && python3 bench/command_overhead.py --real'"
            )
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"llmrun command overhead: Python {platform.python_version()}, {os.cpu_count()} CPUs, {runs} runs, {now}")
    print(f"  load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="llmrun-bench-overhead-"))
    common = {
        "PYTHONPATH": str(ROOT),
        "LLMRUN_CONFIG": str(work / "no-config.toml"),
    }
    try:
        if not args.cold_only:
            home = work / "fake"
            env = {
                **os.environ,
                **common,
                "XDG_CACHE_HOME": str(home / "cache"),
                "XDG_DATA_HOME": str(home / "data"),
                "XDG_STATE_HOME": str(home / "state"),
                "LLMRUN_CLAUDE_CODE_BIN": str(FAKE_CLAUDE),
                "LLMRUN_FAKE_SCENARIO": "mock-stream-json-partial",
                "LLMRUN_FAKE_DELAY": "0",
            }
            env.pop("LLMRUN_RUNNER", None)
            overhead("fake claude (fixtures/bin/claude, a replayed capture)", env, runs, args.compare)
        if args.real:
            from mockapi import MockAnthropic
            from realcli import claude_env

            binary = shutil.which("claude")
            if binary is None:
                raise SystemExit("--real: no claude on PATH")
            with stamped(MockAnthropic()) as mock:
                env = {**claude_env(work / "real", mock.url), **common, "LLMRUN_CLAUDE_CODE_BIN": binary}
                version = subprocess.run([binary, "--version"], env=env, capture_output=True, text=True).stdout.strip()
                if not args.cold_only:
                    overhead(f"real claude {version} against a loopback mock", env, runs, args.compare)
                cold_turns(env, mock, binary, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
