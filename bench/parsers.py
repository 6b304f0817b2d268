#!/usr/bin/env python3
"""How fast llmrun's parsers read a tool's output, next to claude-agent-sdk's and bare JSON decoders.

    python3 bench/parsers.py            # 200,000 events per transcript, 5 rounds, about 2 minutes
    python3 bench/parsers.py --quick    # 20,000 events, 2 rounds, a smoke test

For each runner, a transcript of N events is built from a real capture (fixtures/<tool>/):
its first lines, its answer lines (text deltas, or whole messages for a tool that prints no
deltas) repeated until N lines in all, its last lines. Each contender reads every line once,
per round, and the rounds rotate the order so that drift on the machine hits all alike:

- llmrun: `runner.new_parser(request).feed(line)` for every line, as a run does;
- llmrun, fast paths off: the same with the text-delta shortcuts off and pydantic's
  validating constructor for text chunks (what the parsers did before them);
- json.loads, orjson.loads, msgspec: the bare decoders, the floor for a parser on each;
- claude-agent-sdk: `parse_message(json.loads(line))`, how the SDK reads claude's output, on
  claude's transcript. The SDK (with orjson and msgspec) is installed from
  bench/requirements.txt into a venv of its own (--venv, made on first use) and timed in a
  worker process of that venv's interpreter; without it those rows are left out with a note.

Figures are events per second, medians over the rounds; nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from venvs import private_venv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "fixtures"
REQUIREMENTS = HERE / "requirements.txt"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "llmrun-bench-venv"
SDK = "claude-agent-sdk (venv)"


@dataclass
class Spec:
    runner: str
    capture: str  # fixtures/<capture>.stdout
    answer: str  # a line holding this is an answer line, repeated to fill the transcript


SPECS = [
    Spec("claude_code", "claude/mock-stream-json-partial", '"content_block_delta"'),
    Spec("qwen", "qwen/mock-stream-json-partial", '"content_block_delta"'),
    Spec("gemini", "gemini/stream-json-text", '"delta":true'),
    Spec("copilot", "copilot/llmrun-text", '"assistant.message_delta"'),
    Spec("codex", "codex/runner-text", '"agent_message"'),
    Spec("opencode", "opencode/llmrun-text", '"type":"text"'),
]


def transcript(spec: Spec, events: int) -> list[str]:
    """The capture's lines with its answer lines repeated: `events` lines in all."""
    lines = [line for line in (FIXTURES / f"{spec.capture}.stdout").read_text("utf-8").splitlines() if line.strip()]
    answer = [i for i, line in enumerate(lines) if spec.answer in line]
    head, body, tail = lines[: answer[0]], lines[answer[0] : answer[-1] + 1], lines[answer[-1] + 1 :]
    body = [line for line in body if spec.answer in line]
    fill = events - len(head) - len(tail)
    return head + [body[i % len(body)] for i in range(fill)] + tail


def decode_all(decode: Callable[[str], object], lines: list[str]) -> None:
    for line in lines:
        decode(line)  # nothing kept, as a parser keeps nothing of a line once read


def timed(run: Callable[[], None], events: int) -> float:
    started = time.perf_counter()
    run()
    return events / (time.perf_counter() - started)


# --- the worker: claude-agent-sdk and the decoders of its venv ---------------------------


def worker(paths: list[str]) -> None:
    """The bench venv's side: names its contenders, then times one pass per request
    ("<transcript path> <contender>" on stdin, events/s on stdout), so that its passes take
    turns with llmrun's in the same rounds."""
    decoders: dict[str, Callable[[str], object]] = {"json.loads (venv)": json.loads}
    with contextlib.suppress(ImportError):
        import orjson

        decoders["orjson.loads (venv)"] = orjson.loads
    with contextlib.suppress(ImportError):
        import msgspec

        decoders["msgspec.json (venv)"] = msgspec.json.Decoder().decode
    from claude_agent_sdk._internal.message_parser import parse_message

    def sdk(lines: list[str]) -> None:
        for line in lines:
            parse_message(json.loads(line))

    lines = {path: Path(path).read_text("utf-8").splitlines() for path in paths}
    runs: dict[str, Callable[[list[str]], None]] = {
        name: functools.partial(decode_all, decode) for name, decode in decoders.items()
    }
    runs[SDK] = sdk
    print(json.dumps(list(runs)), flush=True)
    for request in sys.stdin:
        path, name = request.rstrip("\n").split(" ", 1)
        print(timed(functools.partial(runs[name], lines[path]), len(lines[path])), flush=True)


def sdk_python(venv: Path) -> tuple[str | None, str]:
    """The bench venv's interpreter once claude-agent-sdk imports there, made on first use;
    (None, why not) when it cannot be."""
    return private_venv(venv, REQUIREMENTS, "import claude_agent_sdk; print(claude_agent_sdk.__version__)")


# --- llmrun's side -----------------------------------------------------------------------


@contextlib.contextmanager
def fast_paths_off() -> Iterator[None]:
    """Parsers as they read without their shortcuts: every `fast_line` pattern off, and text
    chunks built by pydantic's validating constructor (what the parsers did before)."""
    from llmrun.runners import base
    from llmrun.types import ChatChunk

    saved: list[tuple[object, str, object]] = [
        (cls, "fast_line", vars(cls)["fast_line"]) for cls in all_parsers() if "fast_line" in vars(cls)
    ]
    fast_chunk = getattr(base, "delta_chunk", None)  # absent before the fast paths
    if fast_chunk is not None:
        saved += [
            (m, "delta_chunk", fast_chunk)
            for m in list(sys.modules.values())
            if vars(m).get("delta_chunk") is fast_chunk
        ]
    for owner, name, _ in saved:
        setattr(owner, name, None if name == "fast_line" else lambda text: ChatChunk(delta=text))
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def all_parsers() -> list[type]:
    from llmrun.runners.base import Parser

    found, todo = [], [Parser]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def llmrun_contenders(spec: Spec) -> dict[str, Callable[[list[str]], None]]:
    from llmrun.config import RunnerSettings
    from llmrun.registry import get_runner_class
    from llmrun.types import ChatRequest

    runner = get_runner_class(spec.runner)(settings=RunnerSettings())  # type: ignore[call-arg]
    request = ChatRequest.of("hi")

    def parse(lines: list[str]) -> None:
        feed = runner.new_parser(request).feed  # type: ignore[attr-defined]
        for line in lines:
            feed(line)

    def parse_slow(lines: list[str]) -> None:
        with fast_paths_off():
            parse(lines)

    contenders = {
        "llmrun": parse,
        "llmrun, fast paths off": parse_slow,
        "json.loads": lambda ls: decode_all(json.loads, ls),
    }
    with contextlib.suppress(ImportError):
        import orjson

        contenders["orjson.loads"] = lambda ls: decode_all(orjson.loads, ls)
    return contenders


# --- report ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events, 2 rounds: a smoke test")
    parser.add_argument("--events", type=int, help="events per transcript (default 200,000)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the bench venv (default {DEFAULT_VENV})")
    parser.add_argument("--runner", action="append", help="only these runners (repeatable)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    events = args.events or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (2 if args.quick else 5)
    specs = [s for s in SPECS if not args.runner or s.runner in args.runner]
    sys.path.insert(0, str(ROOT))  # a plain checkout runs without installing llmrun

    python, sdk_version = sdk_python(args.venv)
    print(
        f"llmrun parser bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{events:,} events per transcript, {rounds} rounds, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"  load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  claude-agent-sdk {sdk_version}" if python else f"  {sdk_version}")

    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, str] = {}
        lines: dict[str, list[str]] = {}
        for spec in specs:
            lines[spec.runner] = transcript(spec, events)
            files[spec.runner] = os.path.join(tmp, f"{spec.runner}.stdout")  # the worker knows claude's by name
            Path(files[spec.runner]).write_text("\n".join(lines[spec.runner]) + "\n", "utf-8")
        runs: dict[str, dict[str, Callable[[], float]]] = {}
        for spec in specs:
            runs[spec.runner] = {
                name: functools.partial(timed, functools.partial(run, lines[spec.runner]), events)
                for name, run in llmrun_contenders(spec).items()
            }
        with contextlib.ExitStack() as stack:
            if python is not None:
                venv = stack.enter_context(
                    subprocess.Popen(
                        [python, __file__, "--worker", *files.values()],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
                assert venv.stdin is not None and venv.stdout is not None
                names = json.loads(venv.stdout.readline())

                def remote(path: str, name: str) -> float:
                    assert venv.stdin is not None and venv.stdout is not None
                    venv.stdin.write(f"{path} {name}\n")
                    venv.stdin.flush()
                    return float(venv.stdout.readline())

                for spec in specs:
                    for name in names:
                        if name != SDK or spec.runner == "claude_code":
                            runs[spec.runner][name] = functools.partial(remote, files[spec.runner], name)
            rates: dict[str, dict[str, list[float]]] = {spec.runner: {} for spec in specs}
            for i in range(rounds):
                for spec in specs:
                    steps = list(runs[spec.runner].items())
                    for name, run in steps[i % len(steps) :] + steps[: i % len(steps)]:
                        rates[spec.runner].setdefault(name, []).append(run())
            if python is not None:
                assert venv.stdin is not None
                venv.stdin.close()

    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(specs, rates)


def report(specs: list[Spec], rates: dict[str, dict[str, list[float]]]) -> None:
    sdk = rates.get("claude_code", {}).get(SDK)
    print("\n  events/s, median over the rounds (in brackets: lowest-highest)")
    for spec in specs:
        print(f"\n  {spec.runner} ({spec.capture}.stdout)")
        for name, values in rates[spec.runner].items():
            print(f"    {name:34}{statistics.median(values):>11,.0f}   ({min(values):,.0f}-{max(values):,.0f})")
    print(
        "\n  llmrun's parser against claude-agent-sdk's rate on claude's transcript (target >= 1.5x);"
        "\n  x SDK: the median of each round's ratio (the rounds' lowest-highest in brackets)"
    )
    print(f"  {'runner':14}{'llmrun':>11}{'fast off':>11}{'x json.loads':>14}{'x SDK':>8}{'':16}target")
    for spec in specs:
        mine = rates[spec.runner]["llmrun"]
        slow = statistics.median(rates[spec.runner]["llmrun, fast paths off"])
        floor = statistics.median(rates[spec.runner]["json.loads"])
        line = (
            f"  {spec.runner:14}{statistics.median(mine):11,.0f}{slow:11,.0f}{statistics.median(mine) / floor:13.2f}x"
        )
        if sdk:
            ratios = [a / b for a, b in zip(mine, sdk, strict=True)]
            ratio = statistics.median(ratios)
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
            line += f"{ratio:7.2f}x {spread:15}{'met' if ratio >= 1.5 else 'MISSED'}"
        print(line)


if __name__ == "__main__":
    main()
