"""The process layer on its own: framing, decoding, stdin, environment, limits, pty, reaping,
the run's files, and tools that die with llmrun."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmrun import BinaryNotFound, ConfigError, OutputTooLarge, RunnerTimeout
from llmrun.process import Invocation, Limits, owner_tag, run_command, spawn, start_time, strip_ansi

from .conftest import ROOT, is_alive, still_alive

PY = sys.executable


def script(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


async def read_lines(invocation: Invocation, limits: Limits | None = None) -> list[str]:
    async with spawn(invocation, limits) as child:
        return [line async for line in child.lines()]


async def test_lines_are_framed_across_arbitrary_write_boundaries() -> None:
    writer = script(
        """
        import os, time
        for piece in [b'{"a":', b'1}\\n{"b"', b':2}\\n\\n', b'  \\n', b'last-without-newline']:
            os.write(1, piece); time.sleep(0.01)
        """
    )
    assert await read_lines(Invocation(writer)) == ['{"a":1}', '{"b":2}', "last-without-newline"]


async def test_multibyte_split_across_writes_and_invalid_bytes() -> None:
    writer = script(
        """
        import os, time
        data = "é日🙂\\n".encode() + b"bad \\xff byte\\n"
        for i in range(len(data)):
            os.write(1, data[i:i+1]); time.sleep(0.001)
        """
    )
    assert await read_lines(Invocation(writer)) == ["é日🙂", "bad \ufffd byte"]


async def test_text_mode_decodes_incrementally() -> None:
    writer = script(
        """
        import os, time
        data = "ö🙂 token".encode()
        for i in range(len(data)):
            os.write(1, data[i:i+1]); time.sleep(0.001)
        """
    )
    async with spawn(Invocation(writer)) as child:
        pieces = [piece async for piece in child.text()]
    assert "".join(pieces) == "ö🙂 token"
    assert len(pieces) > 1  # passed on as it came, not at the end
    assert "\ufffd" not in "".join(pieces)


async def test_line_cap_raises_output_too_large() -> None:
    writer = script("import sys; sys.stdout.write('x' * 5000 + '\\n')")
    with pytest.raises(OutputTooLarge):
        await read_lines(Invocation(writer), Limits(max_line_bytes=1000))
    assert await read_lines(Invocation(writer), Limits(max_line_bytes=10_000)) == ["x" * 5000]


async def test_stdin_is_written_and_closed() -> None:
    reader = script("import sys; data = sys.stdin.read(); print(len(data), data[:5])")
    payload = "hello" + "z" * 1_000_000  # larger than a pipe buffer
    assert await read_lines(Invocation(reader, stdin=payload.encode())) == [f"{len(payload)} hello"]


async def test_no_stdin_means_dev_null_not_inherited() -> None:
    reader = script("import sys, os; print(repr(sys.stdin.read()), os.path.realpath('/proc/self/fd/0'))")
    assert await read_lines(Invocation(reader)) == ["'' /dev/null"]


async def test_environment_strip_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("USER_CHOICE", "mine")
    printer = script("import os; print(os.environ.get('CLAUDECODE'), os.environ['USER_CHOICE'], os.environ['ADDED'])")
    invocation = Invocation(
        printer,
        env_remove=("CLAUDECODE",),
        env_defaults={"USER_CHOICE": "default", "ADDED": "x"},
        env={"ADDED": "forced"},
    )
    assert await read_lines(invocation) == ["None mine forced"]


async def test_stderr_is_drained_concurrently_and_bounded() -> None:
    flooder = script(
        """
        import sys
        sys.stderr.write('e' * 10_000_000 + '\\nTAIL\\n'); sys.stderr.flush()
        print('done')
        """
    )
    async with spawn(Invocation(flooder), Limits(stderr_tail_bytes=4096)) as child:
        lines = [line async for line in child.lines()]
        assert await child.wait() == 0
        tail = child.stderr_tail()
    assert lines == ["done"]
    assert tail.endswith("TAIL\n") and len(tail) <= 4096


async def test_stall_timeout() -> None:
    sleeper = script("import time; print('first', flush=True); time.sleep(60)")
    with pytest.raises(RunnerTimeout, match="stall"):
        await read_lines(Invocation(sleeper), Limits(stall_timeout=0.5))


async def test_hard_timeout_even_with_steady_output() -> None:
    chatty = script("import time\nwhile True: print('tick', flush=True); time.sleep(0.05)")
    with pytest.raises(RunnerTimeout, match="time limit"):
        await read_lines(Invocation(chatty), Limits(stall_timeout=10, timeout=0.5))


async def test_close_kills_group_including_sigterm_ignoring_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    parent = script(
        f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", code])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    async with spawn(Invocation(parent), Limits(kill_grace=0.3)) as child:
        async for _ in child.lines():
            break
        pids = [child.pid, int(pidfile.read_text())]
        assert all(is_alive(pid) for pid in pids)
    assert still_alive(pids, within=1) == []


async def test_missing_binary_and_missing_cwd(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound):
        await read_lines(Invocation(["/nonexistent/binary"]))
    with pytest.raises(ConfigError, match="working directory"):
        await read_lines(Invocation([PY, "-c", "pass"], cwd=str(tmp_path / "missing")))


async def test_temp_files_are_removed_after_the_run(tmp_path: Path) -> None:
    temp = tmp_path / "system.txt"
    temp.write_text("x")
    reader = script(f"print(open({str(temp)!r}).read())")
    assert await read_lines(Invocation(reader, temp_files=[str(temp)])) == ["x"]
    assert not temp.exists()


async def test_run_command_collects_output_and_exit_code() -> None:
    result = await run_command(script("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"))
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


async def test_pty_mode_gives_a_terminal_and_strips_ansi() -> None:
    colourful = script("import sys; print(sys.stdin.isatty(), sys.stdout.isatty()); print('\\x1b[31mred\\x1b[0m!')")
    async with spawn(Invocation(colourful, pty=True)) as child:
        text = "".join([piece async for piece in child.text()])
        assert await child.wait() == 0
    assert text == "True True\nred!\n"


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[?25l\x1b]0;title\x07\x1b[1;32mok\x1b[0m\r\n") == "ok\n"


def test_survivors_are_killed_at_interpreter_exit() -> None:
    # A program that starts a tool and exits without closing it must not leave it running.
    program = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from llmrun.process import Child, Invocation, Limits

        async def main():
            child = Child(Invocation(["sleep", "600"]), Limits())
            await child.start()
            print(child.pid, flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run([PY, "-c", program], capture_output=True, text=True, timeout=30)
    pid = int(done.stdout.strip())
    assert still_alive([pid], within=2) == []


async def test_exit_is_seen_while_a_grandchild_holds_stdout() -> None:
    # No end marker to parse in plain text: only the tool's own exit can end the reading.
    parent = script(
        """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits stdout
        print("answer", flush=True)
        """
    )

    async def run() -> tuple[str, int]:
        async with spawn(Invocation(parent), Limits(stall_timeout=60)) as child:
            text = "".join([piece async for piece in child.text()])
            return text, await child.wait()

    assert await asyncio.wait_for(run(), timeout=15) == ("answer\n", 0)


async def test_temp_files_and_directories_are_removed_when_the_tool_cannot_start(tmp_path: Path) -> None:
    temp, folder = tmp_path / "system.txt", tmp_path / "run"
    temp.write_text("x")
    folder.mkdir()
    (folder / "instructions.md").write_text("x")
    with pytest.raises(BinaryNotFound):
        await read_lines(Invocation(["/nonexistent/binary"], temp_files=[str(temp), str(folder)]))
    assert not temp.exists() and not folder.exists()


async def test_temp_files_are_removed_when_a_run_is_cancelled_again_while_it_closes(tmp_path: Path) -> None:
    # The tool takes its time to exit on SIGTERM; a second cancel arrives meanwhile.
    temp, terminated = tmp_path / "system.txt", tmp_path / "terminated"
    temp.write_text("x")
    slow_to_stop = script(
        f"""
        import signal, time
        def stop(*_):
            open({str(terminated)!r}, "w").close()
            time.sleep(2)
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    ready = asyncio.Event()

    async def run() -> None:
        async with spawn(Invocation(slow_to_stop, temp_files=[str(temp)]), Limits(kill_grace=60)) as child:
            async for _ in child.lines():
                ready.set()
                await asyncio.sleep(600)

    task = asyncio.ensure_future(run())
    await asyncio.wait_for(ready.wait(), 30)
    task.cancel()
    for _ in range(3000):  # until the tool has its SIGTERM, bounded
        if terminated.exists():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not temp.exists()


def test_every_child_names_the_llmrun_that_started_it() -> None:
    result = asyncio.run(run_command(script("import os; print(os.environ['LLMRUN_OWNER'])")))
    assert result.stdout.strip() == owner_tag()
    pid, _, started = owner_tag().partition("-")
    assert int(pid) == os.getpid() and int(started) == start_time(os.getpid())


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
def test_a_one_shot_tool_dies_with_a_killed_llmrun(pty: bool) -> None:
    # Not a warm session: a plain run, in flight when its program is killed with SIGKILL.
    program = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from llmrun.process import Invocation, Limits, spawn

        async def main():
            async with spawn(Invocation(["sleep", "600"], pty={pty}), Limits(stall_timeout=None)) as child:
                print(child.pid, flush=True)
                async for _ in child.chunks():
                    pass

        asyncio.run(main())
        """
    )
    llmrun = subprocess.Popen([PY, "-c", program], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert llmrun.stdout is not None
        tool = int(llmrun.stdout.readline())
        assert is_alive(tool)
        llmrun.kill()
        llmrun.wait(timeout=30)
        assert still_alive([tool], within=30) == []
    finally:
        llmrun.kill()
        llmrun.wait(timeout=30)
