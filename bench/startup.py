"""Start-up time of the `llmrun` command, against `python -c pass` and Simon Willison's `llm`.

    python3 bench/startup.py              # 15 interleaved runs of each command, about a minute
    python3 bench/startup.py --quick      # 3 runs, a smoke test only
    python3 bench/startup.py --no-install # do not install llm when it is missing

Every command runs as a fresh process, the way a shell starts it; the commands take turns
(round-robin), so drift on the machine affects all alike, and the median of each is
reported. `llm` is taken from PATH, else installed from PyPI into a private venv under
/tmp (skipped with a note when that fails). Standard library and llmrun only; nothing asserts
on times.
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


@dataclass
class Command:
    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    terminal: bool = False
    times: list[float] = field(default_factory=list)

    def run(self) -> float:
        env = {**os.environ, **self.env}
        started = time.perf_counter()
        if self.terminal:
            code = _run_in_pty(self.argv, env)
        else:
            code = subprocess.run(self.argv, env=env, stdin=subprocess.DEVNULL, capture_output=True).returncode
        elapsed = (time.perf_counter() - started) * 1000
        if code != 0:
            raise SystemExit(f"{self.label}: exited with {code}")
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


def llmrun_argv() -> list[str]:
    """The installed console script next to this interpreter (no shell shim in between)."""
    script = Path(sys.executable).parent / "llmrun"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "llmrun"]


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


def version_of(argv: list[str]) -> str:
    done = subprocess.run([*argv, "--version"], capture_output=True, text=True)
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
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from llmrun.registry import runner_names

    llmrun = llmrun_argv()
    quiet = {"LLMRUN_CONFIG": os.path.join(tempfile.gettempdir(), "llmrun-bench-no-config.toml")}
    no_tools = {**quiet, **{f"LLMRUN_{n.upper()}_BIN": f"/nonexistent/{n}" for n in runner_names()}}
    pass_ = Command("python -c pass", [sys.executable, "-c", "pass"])
    help_piped = Command("llmrun --help (piped)", [*llmrun, "--help"], quiet)
    help_tty = Command("llmrun --help (terminal)", [*llmrun, "--help"], quiet, terminal=True)
    runners_json = Command("llmrun runners --json (no tool found)", [*llmrun, "runners", "--json"], no_tools)
    fast = [pass_, help_piped, help_tty, runners_json]
    llm_argv, llm_python, llm_note = find_llm(install=not args.no_install)
    llm_help = llm_pass = None
    if llm_argv is not None:
        llm_help = Command("llm --help", [*llm_argv, "--help"])
        fast.append(llm_help)
        if llm_python:
            llm_pass = Command("python -c pass (llm's venv)", [llm_python, "-c", "pass"])
            fast.append(llm_pass)
    installed = [n for n in runner_names() if shutil.which(n.split("_")[0])]
    real_runs = min(runs, 5)
    label = f"llmrun runners --json (tools here: {len(installed)})"
    runners_real = Command(label, [*llmrun, "runners", "--json"], quiet)

    def progress(done: int) -> None:
        print(f"\r  round {done}", end="", file=sys.stderr, flush=True)

    cpus = os.cpu_count()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"llmrun start-up bench: Python {platform.python_version()}, {cpus} CPUs, {runs} runs each, {stamp}")
    print(f"  llmrun: {' '.join(llmrun)} ({version_of(llmrun)});  {llm_note}", end="")
    print(f" ({version_of(llm_argv)})" if llm_argv else "")
    interleave(fast, runs, progress)
    interleave([runners_real], real_runs, progress)
    print(file=sys.stderr)

    base = pass_.median
    llm_median = llm_help.median if llm_help else None
    print()
    header = f"  {'command':<44} {'median ms':>9} {'min':>7} {'max':>7} {'- pass':>8} {'x pass':>7}"
    print(header + (f" {'x llm --help':>12}" if llm_median else ""))
    for command in [*fast, runners_real]:
        reference = llm_pass.median if command in (llm_help, llm_pass) and llm_pass else base
        row = (
            f"  {command.label:<44} {command.median:>9.1f} {min(command.times):>7.1f} {max(command.times):>7.1f}"
            f" {command.median - reference:>+8.1f} {command.median / reference:>6.2f}x"
        )
        if llm_median:
            row += f" {command.median / llm_median:>11.2f}x"
        print(row)
    print(f"  ('- pass' and 'x pass' compare with `python -c pass` of the same interpreter; {real_runs} runs for")
    print("   the last row, whose time is mostly the installed tools' own `--version` and login checks)")
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
