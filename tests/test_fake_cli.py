"""The fake CLI in fixtures/ must replay transcripts faithfully and inject its faults.

llmrun's own tests lean on it, so a silently broken fault would make them pass for
the wrong reason.  Only subprocess and the standard library are used here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "fixtures" / "bin" / "claude"
TRANSCRIPTS = ROOT / "fixtures" / "claude"
TIMEOUT = 10  # generous ceiling; each run normally takes well under a second


def fake_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRUN_FAKE_")}
    env["LLMRUN_FAKE_DELAY"] = "0"
    env.update(extra)
    return env


def run_fake(*args: str, stdin: bytes = b"", **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(FAKE), *args],
        input=stdin,
        capture_output=True,
        env=fake_env(**extra),
        timeout=TIMEOUT,
    )


def transcript(name: str, suffix: str = ".stdout") -> bytes:
    return (TRANSCRIPTS / (name + suffix)).read_bytes()


def readline_with_timeout(stream, timeout: float) -> bytes:
    # A plain readline would hang the test run if the fake misbehaves.
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert result, f"no line within {timeout} s"
    return result[0]


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reparented zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_launcher_is_executable() -> None:
    assert os.access(FAKE, os.X_OK)
    assert FAKE.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_default_replay_is_byte_identical() -> None:
    proc = run_fake("-p", "hello", "--output-format", "stream-json", "--verbose")
    assert proc.returncode == 0
    assert proc.stdout == transcript("mock-stream-json-partial")
    assert proc.stderr == b""


def test_scenario_env_picks_transcript_and_exit_code() -> None:
    proc = run_fake("-p", "q", LLMRUN_FAKE_SCENARIO="mock-resume-missing")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr == transcript("mock-resume-missing", ".stderr")
    assert b"No conversation found" in proc.stderr


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version_command_wins_over_scenario(flag: str) -> None:
    proc = run_fake(flag, LLMRUN_FAKE_SCENARIO="mock-401-stream")
    assert proc.returncode == 0
    assert proc.stdout == transcript("version") == b"2.1.197 (Claude Code)\n"


def test_auth_status_prefix() -> None:
    proc = run_fake("auth", "status", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["loggedIn"] is True


def test_exit_and_stderr_faults() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="exit=3,stderr=boom")
    assert proc.returncode == 3
    assert b"boom" in proc.stderr
    assert proc.stdout == transcript("mock-stream-json-partial")


def test_stop_after_emits_exactly_k_lines() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="stop_after=2")
    lines = proc.stdout.splitlines(keepends=True)
    assert len(lines) == 2
    assert lines == transcript("mock-stream-json-partial").splitlines(keepends=True)[:2]
    assert proc.returncode == 1


def test_hang_after_keeps_running() -> None:
    proc = subprocess.Popen(
        [str(FAKE), "-p", "x"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=fake_env(LLMRUN_FAKE_FAULT="hang_after=1"),
    )
    try:
        line = readline_with_timeout(proc.stdout, 5)
        assert json.loads(line)["subtype"] == "init"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        proc.stdout.close()


def test_open_stdin_blocks_until_eof() -> None:
    # Like the real tools: nothing is written while the stdin pipe stays open.
    proc = subprocess.Popen(
        [str(FAKE), "-p", "x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=fake_env(),
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
        out, _ = proc.communicate(b"late input", timeout=TIMEOUT)
        assert out == transcript("mock-stream-json-partial")
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_stderr_flood() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="stderr_flood=3000000")
    assert proc.returncode == 0
    assert len(proc.stderr) >= 3_000_000
    assert proc.stderr.endswith(b"FLOOD-END\n")
    assert proc.stdout == transcript("mock-stream-json-partial")


def test_huge_line() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="huge_line=5000000")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines(keepends=True)
    expected = transcript("mock-stream-json-partial").splitlines(keepends=True)
    assert len(lines) == len(expected) + 1
    assert len(lines[1]) >= 5_000_000
    assert json.loads(lines[1])["type"] == "huge"
    assert [lines[0], *lines[2:]] == expected


def test_garbage_lines_are_injected() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="garbage")
    lines = proc.stdout.split(b"\n")
    assert lines[1:6] == [
        b"[SandboxDebug] noise",
        b"\xff\xfe\x80abc",
        b"",
        b"[1,2]",
        b'{"type":"brand_new_event","x":1}',
    ]
    assert proc.stdout.replace(b"".join(line + b"\n" for line in lines[1:6]), b"", 1) == transcript(
        "mock-stream-json-partial"
    )


def test_split_writes_equals_plain_replay() -> None:
    plain = run_fake("-p", "x", LLMRUN_FAKE_SCENARIO="multibyte-partial")
    proc = subprocess.Popen(
        [str(FAKE), "-p", "x"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=fake_env(LLMRUN_FAKE_SCENARIO="multibyte-partial", LLMRUN_FAKE_FAULT="split_writes"),
    )
    chunks = []
    try:
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        proc.stdout.close()
    assert b"".join(chunks) == plain.stdout == transcript("multibyte-partial")
    assert len(chunks) > 10  # the reader really saw the output in small pieces
    deltas = [
        json.loads(line)["event"]["delta"]["text"] for line in plain.stdout.splitlines() if b'"text_delta"' in line
    ]
    assert "".join(deltas) == "Héllo wörld 日本語 🙂"


def test_bad_utf8() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="bad_utf8")
    with pytest.raises(UnicodeDecodeError):
        proc.stdout.decode("utf-8")
    got = proc.stdout.splitlines()
    want = transcript("mock-stream-json-partial").splitlines()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if b'"text_delta"' in w:
            assert g != w and b"\xff" in g
        else:
            assert g == w


def test_unknown_fault_fails_loudly() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_FAULT="stop_afterr=1")
    assert proc.returncode == 2
    assert b"stop_afterr" in proc.stderr
    assert proc.stdout == b""


def test_missing_scenario_fails_loudly() -> None:
    proc = run_fake("-p", "x", LLMRUN_FAKE_SCENARIO="no-such-transcript")
    assert proc.returncode == 2
    assert b"no-such-transcript" in proc.stderr


def test_record_invocation(tmp_path: Path) -> None:
    proc = run_fake(
        "-p",
        "hello",
        stdin="extra context ü\n".encode(),
        LLMRUN_FAKE_RECORD=str(tmp_path),
        ANTHROPIC_API_KEY="sk-test",
        UNRELATED_VAR="x",
    )
    assert proc.returncode == 0
    (path,) = tmp_path.glob("invocation-*.json")
    data = json.loads(path.read_text("utf-8"))
    assert data["argv"] == ["-p", "hello"]
    assert data["stdin"] == "extra context ü\n"
    assert data["cwd"] == os.getcwd()
    assert data["env"]["ANTHROPIC_API_KEY"] == "sk-test"
    assert data["env"]["LLMRUN_FAKE_RECORD"] == str(tmp_path)
    assert "UNRELATED_VAR" not in data["env"]
    assert (tmp_path / f"exited-{data['pid']}").exists()


def test_no_exited_marker_when_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(FAKE)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=fake_env(LLMRUN_FAKE_FAULT="hang_after=0", LLMRUN_FAKE_RECORD=str(tmp_path)),
    )
    try:
        wait_for(lambda: any(tmp_path.glob("invocation-*.json")))
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not any(tmp_path.glob("exited-*"))


def test_sigterm_exit_code() -> None:
    proc = subprocess.Popen(
        [str(FAKE)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=fake_env(LLMRUN_FAKE_FAULT="hang_after=1,sigterm_exit=143"),
    )
    try:
        readline_with_timeout(proc.stdout, 5)
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT) == 143
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        proc.stdout.close()


def start_with_grandchild(record: Path, faults: str) -> tuple[subprocess.Popen[bytes], int, int]:
    proc = subprocess.Popen(
        [str(FAKE)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=fake_env(LLMRUN_FAKE_FAULT=faults, LLMRUN_FAKE_RECORD=str(record)),
        start_new_session=True,  # its own group, so killpg below cannot hit pytest
    )
    readline_with_timeout(proc.stdout, 5)
    (pidfile,) = record.glob("grandchild-*.pid")
    grandchild = int(pidfile.read_text())
    assert pidfile.name == f"grandchild-{grandchild}.pid"
    return proc, grandchild, os.getpgid(proc.pid)


def kill_all(proc: subprocess.Popen[bytes], grandchild: int, pgid: int) -> None:
    for kill in (lambda: os.killpg(pgid, signal.SIGKILL), lambda: os.kill(grandchild, signal.SIGKILL)):
        try:
            kill()
        except ProcessLookupError:
            pass
    proc.wait(timeout=TIMEOUT)
    proc.stdout.close()


def test_grandchild_lives_in_same_group(tmp_path: Path) -> None:
    proc, grandchild, pgid = start_with_grandchild(tmp_path, "grandchild,hang_after=1")
    try:
        assert grandchild != proc.pid
        assert alive(grandchild)
        assert os.getpgid(grandchild) == pgid
        (inv,) = tmp_path.glob("invocation-*.json")
        assert json.loads(inv.read_text())["pgid"] == pgid
    finally:
        kill_all(proc, grandchild, pgid)
    wait_for(lambda: not alive(grandchild))


def test_grandchild_ignores_sigterm(tmp_path: Path) -> None:
    proc, grandchild, pgid = start_with_grandchild(tmp_path, "grandchild,ignore_sigterm,hang_after=1")
    try:
        os.killpg(pgid, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
        assert alive(grandchild)
    finally:
        kill_all(proc, grandchild, pgid)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: not alive(grandchild))


def test_inherited_grandchild_holds_stdout_open(tmp_path: Path) -> None:
    proc, grandchild, pgid = start_with_grandchild(tmp_path, "grandchild=inherit")
    try:
        assert proc.wait(timeout=TIMEOUT) == 0
        rest: list[bytes] = []
        reader = threading.Thread(target=lambda: rest.append(proc.stdout.read()), daemon=True)
        reader.start()
        reader.join(0.3)
        assert not rest, "EOF arrived although the grandchild still holds stdout"
        os.kill(grandchild, signal.SIGKILL)
        reader.join(5)
        assert rest and rest[0].endswith(b'"}\n')
    finally:
        kill_all(proc, grandchild, pgid)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
