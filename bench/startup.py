"""Start-up time of the `llmrun` command, against `python -c pass` and Simon Willison's `llm`,
and what remembering the tools' checks (llmrun/check_cache.py) saves.

    python3 bench/startup.py              # 15 interleaved runs of each command, a few minutes
    python3 bench/startup.py --quick      # 3 runs, a smoke test only
    python3 bench/startup.py --no-install # do not install llm when it is missing
    unshare -n sh -c 'ip link set lo up && python3 bench/startup.py --real'  # also the tools installed here

Every command runs as a fresh process, the way a shell starts it; the commands take turns
(round-robin, after one untimed warm-up run each, which also fills the cache), so drift on
the machine affects all alike, and the median of each is reported. The tools are the fake
CLIs of fixtures/bin (every runner has one), with a cache directory of the bench's own;
`--real` adds the tools installed on the machine, only in a network namespace of its own
(no network: the tools' checks must not reach out). `llm` is taken from PATH, else installed
from PyPI into a private venv under /tmp (skipped with a note when that fails). Standard
library and llmrun only; nothing asserts on times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LLM_VENV = Path(tempfile.gettempdir()) / "llmrun-bench-llm"
ROOT = Path(__file__).resolve().parent.parent
FAKE_BIN = ROOT / "fixtures" / "bin"
TARGET = 1.5
"""The second `runners --json` and `chat` without -r should take at most this many times `llmrun --help`."""


@dataclass
class Command:
    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    terminal: bool = False
    expect: int = 0
    """The exit code the command must end with (2: a refused request)."""
    times: list[float] = field(default_factory=list)

    def run(self) -> float:
        env = {**os.environ, **self.env}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as for a user: compiled once, in the warm-up run
        started = time.perf_counter()
        if self.terminal:
            code = _run_in_pty(self.argv, env)
        else:
            code = subprocess.run(self.argv, env=env, stdin=subprocess.DEVNULL, capture_output=True).returncode
        elapsed = (time.perf_counter() - started) * 1000
        if code != self.expect:
            raise SystemExit(f"{self.label}: exited with {code}, not {self.expect}")
        return elapsed

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _run_in_pty(argv: list[str], env: dict[str, str]) -> int:
    """Run with stdout and stderr on a pseudo-terminal, as in an interactive shell."""
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        while True:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:  # EIO: the child closed the terminal
                break
        return child.wait()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def llmrun_argv() -> tuple[list[str], dict[str, str]]:
    """The installed console script next to this interpreter (no shell shim in between), when it
    runs this checkout's llmrun; else `python -m llmrun` on this checkout. Also the environment
    that makes it so."""
    env = {"PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).parent / "llmrun"
    if script.is_file():
        done = subprocess.run([str(script), "--version"], env={**os.environ, **env}, capture_output=True)
        if done.returncode == 0:
            return [str(script)], env
    return [sys.executable, "-m", "llmrun"], env


def fake_tools(names: list[str]) -> dict[str, str]:
    """Every runner pointed at its fake CLI (fixtures/bin), answering at once."""
    from llmrun.registry import get_runner_class

    env = {"LLMRUN_FAKE_DELAY": "0"}
    for name in names:
        fake = FAKE_BIN / get_runner_class(name).binary
        env[f"LLMRUN_{name.upper()}_BIN"] = str(fake) if fake.exists() else f"/nonexistent/{name}"
    return env


def offline() -> bool:
    """Whether this process is in a network namespace with no interface but loopback."""
    try:  # /proc/self/net is this process's namespace (/sys/class/net is the one /sys was mounted in)
        with open("/proc/self/net/dev") as fh:
            lines = fh.read().splitlines()[2:]
    except OSError:
        return False
    return {line.split(":")[0].strip() for line in lines} <= {"lo"}


def find_llm(install: bool) -> tuple[list[str] | None, str | None, str]:
    """(llm argv, its interpreter, note)."""
    found = shutil.which("llm")
    if found:
        with open(found, "rb") as fh:
            first = fh.readline().decode(errors="replace")
        python = first[2:].strip() if first.startswith("#!") and "python" in first else None
        return [found], python, f"llm from PATH: {found}"
    venv_llm = LLM_VENV / "bin" / "llm"
    if not venv_llm.exists() and install:
        print(f"installing llm from PyPI into {LLM_VENV} ...", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(LLM_VENV)], check=True, capture_output=True)
            subprocess.run([str(LLM_VENV / "bin" / "pip"), "install", "-q", "llm"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            return None, None, f"llm skipped: could not install it ({exc})"
    if venv_llm.exists():
        return [str(venv_llm)], str(LLM_VENV / "bin" / "python"), f"llm from a private venv: {LLM_VENV}"
    return None, None, "llm skipped: not on PATH, and installing it was not allowed (--no-install)"


def version_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run([*argv, "--version"], env={**os.environ, **(env or {})}, capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()


def loads(python: str, argv: list[str], env: dict[str, str], packages: tuple[str, ...]) -> str:
    """Which of `packages` a Python script imports (by `import` statements, which -X importtime shows)."""
    done = subprocess.run(
        [python, "-X", "importtime", *argv], env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        return f"(could not tell: exit {done.returncode})"
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    found = [p for p in packages if p in names]
    return ", ".join(found) if found else "none of them"


def interleave(commands: list[Command], runs: int, progress: Callable[[int], None]) -> None:
    for command in commands:  # warm-up: compiled bytecode and page cache, not timed
        command.run()
    for round_ in range(runs):
        for command in commands[round_ % len(commands) :] + commands[: round_ % len(commands)]:
            command.times.append(command.run())
        progress(round_ + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 runs of each, a smoke test")
    parser.add_argument("--no-install", action="store_true", help="do not install llm when it is missing")
    parser.add_argument("--real", action="store_true", help="also the tools installed here (in `unshare -n` only)")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    if args.real and not offline():
        raise SystemExit(
            "--real runs the installed tools' checks, which must not reach the network: run it as\n"
            "  unshare -n sh -c 'ip link set lo up && python3 bench/startup.py --real'"
        )

    sys.path.insert(0, str(ROOT))
    from llmrun.registry import runner_names

    names = runner_names()
    llmrun, llmrun_env = llmrun_argv()
    cache = tempfile.mkdtemp(prefix="llmrun-bench-cache-")
    quiet = {
        **llmrun_env,
        "LLMRUN_CONFIG": os.path.join(tempfile.gettempdir(), "llmrun-bench-no-config.toml"),
        "XDG_CACHE_HOME": cache,  # the checks the bench's commands remember, apart from the user's
        "XDG_STATE_HOME": cache,  # `chat` remembers its session there
        "XDG_DATA_HOME": cache,  # and logs the conversation
    }
    no_tools = {**quiet, **{f"LLMRUN_{n.upper()}_BIN": f"/nonexistent/{n}" for n in names}}
    fakes = {**quiet, **fake_tools(names)}
    pass_ = Command("python -c pass", [sys.executable, "-c", "pass"])
    help_piped = Command("llmrun --help (piped)", [*llmrun, "--help"], quiet)
    help_tty = Command("llmrun --help (terminal)", [*llmrun, "--help"], quiet, terminal=True)
    # Any subcommand costs more than --help: typer then imports pydantic to convert options.
    config_path = Command("llmrun config path", [*llmrun, "config", "path"], quiet)
    runners_json = Command("llmrun runners --json (no tool found)", [*llmrun, "runners", "--json"], no_tools)
    runners_cached = Command("llmrun runners --json (fakes, second run)", [*llmrun, "runners", "--json"], fakes)
    chat_detect = Command("llmrun chat hi (no -r, fakes)", [*llmrun, "chat", "hi"], fakes)
    chat_named = Command("llmrun chat -r claude hi (fake claude)", [*llmrun, "chat", "-r", "claude", "hi"], fakes)
    chat_empty = Command('llmrun chat "" (no -r, refused)', [*llmrun, "chat", ""], fakes, expect=2)
    fast = [pass_, help_piped, help_tty, config_path, runners_json, runners_cached, chat_detect, chat_named, chat_empty]
    llm_argv, llm_python, llm_note = find_llm(install=not args.no_install)
    llm_help = llm_pass = None
    if llm_argv is not None:
        llm_help = Command("llm --help", [*llm_argv, "--help"])
        fast.append(llm_help)
        if llm_python:
            llm_pass = Command("python -c pass (llm's venv)", [llm_python, "-c", "pass"])
            fast.append(llm_pass)
    slow_runs = min(runs, 5)
    refresh = [*llmrun, "runners", "--json", "--refresh"]
    slow = [Command("llmrun runners --json --refresh (fakes)", refresh, fakes)]
    if args.real:
        from llmrun.registry import get_runner_class

        installed = [n for n in names if shutil.which(get_runner_class(n).binary)]
        # The tools keep their own state under XDG_DATA_HOME and XDG_STATE_HOME: leave those alone.
        real = {key: quiet[key] for key in ("PYTHONPATH", "LLMRUN_CONFIG")}
        real["XDG_CACHE_HOME"] = os.path.join(cache, "real")  # apart from the fakes' checks of the same runners
        slow += [
            Command(f"llmrun runners --json --refresh (real, {len(installed)})", refresh, real),
            Command(f"llmrun runners --json (real, {len(installed)}, second run)", refresh[:-1], real),
        ]

    def progress(done: int) -> None:
        print(f"\r  round {done}", end="", file=sys.stderr, flush=True)

    cpus = os.cpu_count()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = ", ".join(f"{n:.2f}" for n in os.getloadavg())
    python = platform.python_version()
    print(f"llmrun start-up bench: Python {python}, {cpus} CPUs, load {load}, {runs} runs each, {stamp}")
    print(f"  llmrun: {' '.join(llmrun)} ({version_of(llmrun, llmrun_env)});  {llm_note}", end="")
    print(f" ({version_of(llm_argv)})" if llm_argv else "")
    try:
        interleave(fast, runs, progress)
        interleave(slow, slow_runs, progress)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(file=sys.stderr)

    base = pass_.median
    llm_median = llm_help.median if llm_help else None
    print()
    header = f"  {'command':<46} {'median ms':>9} {'min':>7} {'max':>7} {'- pass':>8} {'x pass':>7} {'x help':>7}"
    print(header + (f" {'x llm --help':>12}" if llm_median else ""))
    for command in [*fast, *slow]:
        reference = llm_pass.median if command in (llm_help, llm_pass) and llm_pass else base
        row = (
            f"  {command.label:<46} {command.median:>9.1f} {min(command.times):>7.1f} {max(command.times):>7.1f}"
            f" {command.median - reference:>+8.1f} {command.median / reference:>6.2f}x"
            f" {command.median / help_piped.median:>6.2f}x"
        )
        if llm_median:
            row += f" {command.median / llm_median:>11.2f}x"
        print(row)
    print("  ('- pass' and 'x pass' compare with `python -c pass` of the same interpreter, 'x help' with")
    print(f"   `llmrun --help` piped; {slow_runs} runs for the last rows, which run every tool's checks)")
    print()
    print(f"  target: at most {TARGET}x `llmrun --help` (piped)")
    for command in (runners_cached, chat_detect, chat_empty):
        ratio = command.median / help_piped.median
        verdict = "met" if ratio <= TARGET else "not met"
        print(f"    {command.label:<44} {ratio:>5.2f}x  {verdict}")
    saved = slow[0].median / runners_cached.median
    print(f"  what the cache saves: {slow[0].label} / {runners_cached.label}: {saved:.1f}x")
    choosing = chat_detect.median - chat_named.median
    print(f"  choosing a runner costs: {chat_detect.label} - {chat_named.label}: {choosing:+.1f} ms")
    beyond = runners_cached.median - runners_json.median
    print(f"  beyond finding no tool: {runners_cached.label} - {runners_json.label}: {beyond:+.1f} ms")
    print()
    print("  imports (by statement) of pydantic, rich and openai:")
    heavy = ("pydantic", "rich", "openai")
    script = llmrun if llmrun[0] == sys.executable else [sys.executable, *llmrun]
    for command in (help_piped, runners_json):
        found = loads(script[0], [*script[1:], *command.argv[len(llmrun) :]], command.env, heavy)
        print(f"    {command.label:<42} {found}")
    if llm_help is not None and llm_python:
        print(f"    {'llm --help':<42} {loads(llm_python, llm_help.argv, {}, heavy)}")


if __name__ == "__main__":
    main()
