"""Mutated transcripts: whatever a tool prints, a run ends in chunks or in a typed error.

Every runner's captured transcripts (fixtures/<tool>/) are mutated (a field's value swapped
for another JSON type, a field deleted, a line cut short, dropped or repeated, a number made
huge or nested too deep to read) and fed to what reads them: the parser of a one-shot run,
with the exit code and stderr the runner then judges, and the protocol readers of the warm
sessions (stream-json input, codex's app server, ACP), which meet an in-process fake tool
replaying the agent's side of a captured session. Any exception that is not an LlmrunError
fails the test; so does one that llmrun lets through to be logged.

Hypothesis runs derandomized, so every CI run tries the same examples; set
LLMRUN_FUZZ_EXAMPLES to explore more of them (e.g. 5000) locally. Besides, every member of
every kind of line is swapped for each odd value in turn, and the lines that once failed
are kept as plain tests at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrun.errors import LlmrunError, ProcessFailed, RunnerError
from llmrun.registry import BUILTIN, get_runner_class
from llmrun.runners.base import CliRunner
from llmrun.runners.claude_code import ClaudeCodeRunner
from llmrun.runners.codex import CodexRunner
from llmrun.runners.configured import runner_classes
from llmrun.runners.copilot import USAGE_FILE, CopilotRunner
from llmrun.runners.gemini import GeminiRunner
from llmrun.runners.opencode import OpencodeRunner
from llmrun.runners.qwen import QwenRunner
from llmrun.sessions import SessionSettings
from llmrun.types import ChatChunk, ChatRequest, ChatResponse, Message

from .conftest import FAKE_BIN, FIXTURES, JSONL_CLI_CONFIG

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

FUZZ = settings(
    max_examples=int(os.environ.get("LLMRUN_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

# Written as these strings, replaced in the line: JSON has no infinity, but a number too
# large for a float reads as one; and arrays nested deeper than Python's JSON reader goes.
HUGE_FLOAT = "<huge float>"
DEEP = "<deep>"
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**400,
    HUGE_FLOAT,
    DEEP,
    '{"error": {"message": ' + "[" * 3000,
    "",
    "x",
    "-1",
    "1e400",
    "[API Error: 500 oops]",
    [],
    [None, 1],
    [{}],
    {},
    {"message": 5},
    {"a": {"b": [1]}},
]
# Members that name the kind of an event or message.
EVENT_KINDS = frozenset({"type", "subtype", "method", "sessionUpdate", "jsonrpc"})
LINE_MUTATIONS = ("value", "value", "value", "delete", "truncate", "drop", "repeat", "digits")


# --- mutations -----------------------------------------------------------------------------


def _places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every member and item inside a JSON value."""
    members = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, member in members:
        yield (*path, key)
        yield from _places(member, (*path, key))


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text.replace(json.dumps(HUGE_FLOAT), "1e400").replace(json.dumps(DEEP), "[" * 3000 + "]" * 3000)


def mutate_json(data: st.DataObject, value: Any, *, delete: bool) -> Any:
    """The value with members replaced by values of other types, or deleted: one member, or
    a share of them all. The members that say what kind of event it is stay as they are
    more often than not, so that mutations reach the code reading that kind."""
    keep_kinds = data.draw(st.integers(0, 3), label="keep kinds") > 0
    places = [p for p in _places(value) if not (keep_kinds and p[-1] in EVENT_KINDS)]
    if delete:
        places = [p for p in places if isinstance(_at(value, p[:-1]), dict)]
    if not places:
        return data.draw(st.sampled_from(ODD_VALUES), label="whole value") if not delete else value
    share = data.draw(st.sampled_from([0, 10, 30, 60]), label="share of members, %")
    if share:
        chosen = [p for p in places if data.draw(st.integers(0, 99), label="roll") < share]
    else:
        chosen = [data.draw(st.sampled_from(places), label="path")]
    changed: list[tuple[Any, ...]] = []
    for path in chosen:
        if any(path[: len(done)] == done for done in changed):
            continue  # inside a member already replaced or deleted
        parent = _at(value, path[:-1])
        if delete:
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(st.sampled_from(ODD_VALUES), label="new value")
        changed.append(path)
    return value


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _json_in(line: str) -> tuple[int, int, Any] | None:
    """(start, end, value) of the JSON object or array a line holds (llm's usage line has one
    after its words), or None."""
    starts = [i for i in (line.find("{"), line.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    try:
        value, end = json.JSONDecoder().raw_decode(line, start)
    except (ValueError, RecursionError):  # not JSON, or mutated into too deep a nesting already
        return None
    return start, end, value


def mutate_line(data: st.DataObject, line: str, mutation: str) -> list[str]:
    """The line after one mutation (none, one or two lines)."""
    if mutation == "drop":
        return []
    if mutation == "repeat":
        return [line, line]
    if mutation == "truncate":
        return [line[: data.draw(st.integers(0, max(0, len(line) - 1)), label="cut at")]]
    if mutation == "digits":
        numbers = list(re.finditer(r"\d+", line))
        if not numbers:
            return [line]
        number = data.draw(st.sampled_from(numbers), label="number")
        digits = data.draw(st.sampled_from(["", ",", "0", "9" * 5000, "1" + "0" * 30]), label="digits")
        return [line[: number.start()] + digits + line[number.end() :]]
    found = _json_in(line)
    if found is None:
        return [line]
    start, end, value = found
    value = mutate_json(data, value, delete=mutation == "delete")
    return [line[:start] + _dumps(value) + line[end:]]


def mutate_lines(data: st.DataObject, lines: list[str], *, most: int = 6) -> list[str]:
    """The lines after one to `most` mutations, each of a line drawn among them."""
    lines = list(lines)
    for _ in range(data.draw(st.integers(1, most), label="mutations")):
        if not lines:
            break
        index = data.draw(st.integers(0, len(lines) - 1), label="line")
        mutation = data.draw(st.sampled_from(LINE_MUTATIONS), label="mutation")
        lines[index : index + 1] = mutate_line(data, lines[index], mutation)
    return lines


def mutate_text(data: st.DataObject, text: str, *, most: int = 3) -> str:
    """Text (stderr, a plain-text answer) with some of its lines mutated."""
    if not text:
        return text
    ends_with_newline = text.endswith("\n")
    mutated = "\n".join(mutate_lines(data, text.split("\n"), most=most))
    return mutated + "\n" if ends_with_newline and not mutated.endswith("\n") else mutated


# --- transcripts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcript:
    name: str
    stdout: str
    stderr: str
    returncode: int
    usage_file: str | None


@cache
def transcripts(tool: str) -> list[Transcript]:
    """The captured runs of a tool's prompt command (not of `--version` and the like)."""
    folder = FIXTURES / tool
    commands = json.loads((folder / "commands.json").read_text())
    other_commands = {name for _, name in commands.get("commands", [])}
    found = []
    for stdout in sorted(folder.glob("*.stdout")):
        name = stdout.name.removesuffix(".stdout")
        if name in other_commands:
            continue
        rc_file = folder / f"{name}.rc"
        rc = re.match(r"rc=(-?\d+)", rc_file.read_text()) if rc_file.exists() else None
        stderr = folder / f"{name}.stderr"
        usage = folder / f"{name}.usage.json"
        found.append(
            Transcript(
                name=name,
                stdout=stdout.read_text(encoding="utf-8", errors="replace"),
                stderr=stderr.read_text(encoding="utf-8", errors="replace") if stderr.exists() else "",
                returncode=int(rc.group(1)) if rc else 0,
                usage_file=usage.read_text() if usage.exists() else None,
            )
        )
    assert found, f"no transcripts in {folder}"
    return found


def jsonl_cli_runner() -> CliRunner:
    classes = runner_classes(tomllib.loads(JSONL_CLI_CONFIG), Path("fuzz.toml"), {})
    runner = classes["jsonl_cli"](binary=str(FAKE_BIN / "jsonl-cli"))
    assert isinstance(runner, CliRunner)
    return runner


def text_cli_runner() -> CliRunner:
    config = 'command = ["text-cli", "{prompt}"]'
    classes = runner_classes(tomllib.loads(f"[runners.text_cli]\n{config}\n"), Path("fuzz.toml"), {})
    runner = classes["text_cli"](binary=str(FAKE_BIN / "text-cli"))
    assert isinstance(runner, CliRunner)
    return runner


# Each built-in runner by the name of its tool's fixtures, and the runners defined in config.
ONE_SHOT: dict[str, Callable[[], CliRunner]] = {
    **{runner.binary: runner for runner in map(get_runner_class, BUILTIN) if issubclass(runner, CliRunner)},
    "jsonl-cli": jsonl_cli_runner,
    "text-cli": text_cli_runner,
}


# --- one-shot runs -------------------------------------------------------------------------


def run_once(runner: CliRunner, pieces: list[str], stderr: str, returncode: int) -> list[ChatChunk]:
    """What CliRunner.stream does with a tool's output, without the process."""
    request = ChatRequest.of("hi")
    parser = runner.new_parser(request)
    chunks: list[ChatChunk] = []
    for piece in pieces:
        chunks += parser.feed(piece)
        if parser.finished:
            break
    finished_before_exit = parser.finished
    parser.stderr = stderr
    chunks += parser.close()
    error = runner._outcome(parser, returncode, stderr, finished_before_exit)
    if error is not None:
        error = error.with_process(runner=runner.name, exit_code=returncode, stderr=stderr)
        retyped = getattr(runner, "_retyped", None)
        raise retyped(error) if retyped is not None else error
    ChatResponse.from_chunks(chunks, runner=runner.name).model_dump_json()
    return chunks


def exercise_one_shot(tool: str, data: st.DataObject) -> None:
    runner = ONE_SHOT[tool]()
    transcript = data.draw(st.sampled_from(transcripts(tool)), label="transcript")
    stderr = (
        mutate_text(data, transcript.stderr) if data.draw(st.booleans(), label="mutate stderr") else transcript.stderr
    )
    returncode = data.draw(st.sampled_from([transcript.returncode, 0, 1]), label="exit code")
    if runner.framing == "lines":
        pieces = [line for line in mutate_lines(data, transcript.stdout.splitlines()) if line.strip()]
    else:
        text = mutate_text(data, transcript.stdout)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4), label="cuts"))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if text[a:b]]
    with contextlib.suppress(LlmrunError):
        run_once(runner, pieces, stderr, returncode)
    if transcript.usage_file is not None:  # copilot's usage report, read after the run
        assert isinstance(runner, CopilotRunner)
        report = mutate_text(data, _dumps(json.loads(transcript.usage_file)), most=4)
        with tempfile.TemporaryDirectory() as run_dir:
            Path(run_dir, USAGE_FILE).write_text(report)
            final = ChatChunk(finish_reason="stop")
            runner._with_usage(final, run_dir, resumed=False, baseline=None)


@pytest.mark.parametrize("tool", list(ONE_SHOT))
@FUZZ
@given(data=st.data())
def test_one_shot_parsers_fail_only_with_typed_errors(tool: str, data: st.DataObject) -> None:
    exercise_one_shot(tool, data)


def test_every_runner_with_transcripts_is_fuzzed() -> None:
    tools = {path.parent.name for path in FIXTURES.glob("*/*.stdout")}
    assert tools == set(ONE_SHOT)


DELETE = object()  # in place of an odd value: the member is deleted


def _general(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """The path with the positions in arrays left out: members of the same place."""
    return tuple("[]" if isinstance(key, int) else key for key in path)


def single_mutations(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(line index, mutated line) for each member of each kind of JSON line, in turn swapped
    for each odd value and deleted. Lines of the same shape and kind are tried once."""
    seen: set[Any] = set()
    for index, line in enumerate(lines):
        found = _json_in(line)
        if found is None:
            continue
        start, end, value = found
        places = list(_places(value))
        shape = (
            frozenset(_general(p) for p in places),
            frozenset(
                (_general(p), _at(value, p)) for p in places if p[-1] in EVENT_KINDS and isinstance(_at(value, p), str)
            ),
        )
        for path in places:
            if (shape, _general(path)) in seen:
                continue
            seen.add((shape, _general(path)))
            for odd in (*ODD_VALUES, DELETE):
                mutated = json.loads(line[start:end])
                parent = _at(mutated, path[:-1])
                if odd is not DELETE:
                    parent[path[-1]] = odd
                elif isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    continue  # an item of an array is not deleted: the others would move
                yield index, line[:start] + _dumps(mutated) + line[end:]


def _untyped_failure(runner: CliRunner, pieces: list[str], stderr: str, returncode: int) -> str | None:
    """What went wrong, when a run raised anything but a typed error."""
    try:
        run_once(runner, pieces, stderr, returncode)
    except LlmrunError:
        pass
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


@pytest.mark.parametrize("tool", list(ONE_SHOT))
def test_every_member_of_every_kind_of_line_in_turn(tool: str) -> None:
    """Each member of each kind of line in the transcripts (stdout, and the JSON in stderr:
    llm's usage line), swapped for each odd value or deleted, one at a time."""
    runner = ONE_SHOT[tool]()
    failures: dict[str, str] = {}
    for transcript in transcripts(tool):
        stdout = transcript.stdout.splitlines() if runner.framing == "lines" else [transcript.stdout]
        for _, line in single_mutations(stdout if runner.framing == "lines" else []):
            # The line alone: the code that reads its kind of event is what it meets.
            failure = _untyped_failure(runner, [line], transcript.stderr, transcript.returncode)
            if failure:
                failures.setdefault(failure, line[:300])
        stderr = transcript.stderr.split("\n")
        for index, line in single_mutations(stderr):
            mutated = "\n".join([*stderr[:index], line, *stderr[index + 1 :]])
            failure = _untyped_failure(runner, [p for p in stdout if p.strip()], mutated, transcript.returncode)
            if failure:
                failures.setdefault(failure, line[:300])
    assert not failures, "\n".join(f"{error}\n    on: {line}" for error, line in failures.items())


# --- warm sessions -------------------------------------------------------------------------

_T = TypeVar("_T")


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(who, message) of each line of a captured session (fixtures/<tool>/acp-*.jsonl)."""
    rows = []
    for line in path.read_text("utf-8").splitlines():
        row = json.loads(line) if line.strip() else None
        if isinstance(row, dict) and isinstance(row.get("msg"), dict):
            rows.append((str(row.get("from")), row["msg"]))
    return rows


# Where the id of the request being answered goes in a prepared answer.
REQUEST_ID = "<request id>"


def _prepared(data: st.DataObject, messages: list[dict[str, Any]], lines: list[str] | None = None) -> list[str]:
    """The lines of one answer of the fake tool (the messages, or lines as they are), mutated
    or not. All mutations are drawn before the session runs: a draw inside it could be
    swallowed by the code under test."""
    lines = lines if lines is not None else [_dumps(message) for message in messages]
    return mutate_lines(data, lines, most=4) if data.draw(st.booleans(), label="mutate this answer") else lines


class RpcAgent:
    """The tool's side of a JSON-RPC session (ACP, codex's app server): each request is
    answered with the lines prepared for its method (the id put in), the prompts with the
    prepared turns in order; other requests get "method not found"."""

    def __init__(self, replies: dict[str, list[str]], turns: list[list[str]], prompt_method: str) -> None:
        missing = {"jsonrpc": "2.0", "id": REQUEST_ID, "error": {"code": -32601, "message": "Method not found"}}
        self.replies = replies
        self.missing = [_dumps(missing)]
        self.turns = turns
        self.prompt_method = prompt_method
        self.prompts = 0

    @classmethod
    def replaying(cls, data: st.DataObject, captures: list[Path], prompt_method: str) -> RpcAgent:
        """What the tool sent after the same request of a captured session, mutated or not;
        the captures after the first fill in requests the first has not."""
        replies: dict[str, list[dict[str, Any]]] = {}
        turns: list[list[dict[str, Any]]] = []
        for index, capture in enumerate(captures):
            current: list[dict[str, Any]] | None = None
            for who, message in _rows(capture):
                if who == "client":
                    method = message.get("method")
                    if method == prompt_method and index == 0:
                        current = []
                        turns.append(current)
                    elif method and "id" in message and method not in replies:
                        current = replies[method] = []
                    else:
                        current = None if "id" in message else current
                elif current is not None:
                    current.append({**message, "id": REQUEST_ID} if "method" not in message else message)
        return cls(
            {method: _prepared(data, messages) for method, messages in replies.items()},
            [_prepared(data, messages) for messages in turns],
            prompt_method,
        )

    def answer(self, message: dict[str, Any]) -> list[str]:
        method, request_id = message.get("method"), message.get("id")
        if method is None or request_id is None:
            return []  # a notification, or the client's answer to a request of the tool
        if method == self.prompt_method and self.turns:
            lines = self.turns[min(self.prompts, len(self.turns) - 1)]
            self.prompts += 1
        else:
            lines = self.replies.get(method, self.missing)
        return [line.replace(json.dumps(REQUEST_ID), json.dumps(request_id)) for line in lines]


class StreamJsonAgent:
    """Claude Code's side of a streaming-input session: each user message is answered with
    the lines of the next prepared turn, a control request with the prepared control
    response (the request's id put in)."""

    def __init__(self, turns: list[list[str]], control: list[str]) -> None:
        self.turns = turns
        self.control = control
        self.prompts = 0

    @classmethod
    def replaying(cls, data: st.DataObject, capture: Path) -> StreamJsonAgent:
        """The turns of a captured session (`<capture>.turns.json` says which stdout lines
        answered which message), mutated or not."""
        turns = json.loads(capture.with_suffix(".turns.json").read_text("utf-8"))
        lines = capture.with_suffix(".stdout").read_text("utf-8").split("\n")
        answers = [
            [line for line in lines[a:b] if line.strip()]
            for turn in turns["turns"]
            if turn["kind"] == "user"
            for a, b in [turn["stdout"]]
        ]
        response = {"type": "control_response", "response": {"subtype": "success", "request_id": REQUEST_ID}}
        return cls([_prepared(data, [], lines=answer) for answer in answers], _prepared(data, [response]))

    def answer(self, message: dict[str, Any]) -> list[str]:
        if message.get("type") == "control_request":
            request_id = json.dumps(message.get("request_id"))
            return [line.replace(json.dumps(REQUEST_ID), request_id) for line in self.control]
        if message.get("type") != "user" or not self.turns:
            return []
        turn = self.turns[min(self.prompts, len(self.turns) - 1)]
        self.prompts += 1
        return turn


# How many times the fake tool lets the event loop run before it takes llmrun for idle,
# waiting for an answer that will not come (then its output ends, as when a tool exits).
# Everything runs in-process, so this counts steps, not time.
IDLE_STEPS = 200


class FakeChild:
    """In place of process.Child: a fake tool that answers what llmrun sends."""

    pid = 0

    def __init__(self, agent: RpcAgent | StreamJsonAgent) -> None:
        self.agent = agent
        self.pending: list[str] = []
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def send(self, raw: bytes) -> None:
        if self.returncode is not None:
            raise ProcessFailed("the fake tool has exited")
        self.pending += self.agent.answer(json.loads(raw))

    async def lines(self) -> AsyncGenerator[str, None]:
        try:
            while True:
                for _ in range(IDLE_STEPS):
                    if self.pending:
                        break
                    await asyncio.sleep(0)
                else:
                    return
                line = self.pending.pop(0)
                if line.strip():
                    yield line
        finally:
            if self.returncode is None:
                self.returncode = 0
                self.exited.set_result(0)

    def stderr_tail(self) -> str:
        return ""


@dataclass(frozen=True)
class WarmTool:
    tool: str
    runner: Callable[..., CliRunner]
    protocol: str
    captures: tuple[str, ...]
    model: str | None = None


WARM = [
    WarmTool("claude", ClaudeCodeRunner, "stream-json", ("stream-input-two-turns", "stream-input-error-401")),
    WarmTool("codex", CodexRunner, "app-server", ("app-server-two-turns", "app-server-error-401")),
    *(
        WarmTool(tool, runner, "acp", ("acp-two-turns", "acp-tool-denied", "acp-error-401", "acp-error-429"))
        for tool, runner in (("gemini", GeminiRunner), ("qwen", QwenRunner), ("copilot", CopilotRunner))
    ),
    WarmTool("opencode", OpencodeRunner, "acp", ("acp-two-turns", "acp-tool-denied", "acp-error-500"), model="m/x"),
]


def _agent(warm: WarmTool, capture: str, data: st.DataObject) -> RpcAgent | StreamJsonAgent:
    folder = FIXTURES / warm.tool
    if warm.protocol == "stream-json":
        return StreamJsonAgent.replaying(data, folder / f"{capture}.stdout")
    if warm.protocol == "app-server":
        return RpcAgent.replaying(
            data, [folder / f"{capture}.jsonl", folder / "app-server-two-turns.jsonl"], "turn/start"
        )
    return RpcAgent.replaying(data, [folder / f"{capture}.jsonl", folder / "acp-modes.jsonl"], "session/prompt")


class _Logged(logging.Handler):
    """Keeps what llmrun and the protocol package log as errors: an exception there is one
    that llmrun's code let through (the package logs what a handler of llmrun raised)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def exercise_warm(warm: WarmTool, agent: RpcAgent | StreamJsonAgent, turns: int = 2) -> list[Any]:
    """Start a warm session against the fake tool and run turns: what each turn gave (chunks,
    and the error that ended it), up to the first typed error."""
    runner = warm.runner(binary=str(FAKE_BIN / warm.tool))
    connection = runner.warm_connection(SessionSettings(model=warm.model), None)
    connection.child = FakeChild(agent)  # type: ignore[assignment]
    items: list[Any] = []
    try:
        await _unless_a_reader_dies(connection, connection.within_open_timeout(connection.handshake()))
        for _ in range(turns):
            request = ChatRequest(messages=[Message.user("hi")])
            queue = await _unless_a_reader_dies(connection, connection.begin_turn(request))
            while True:
                items.append(await _unless_a_reader_dies(connection, queue.get()))
                if isinstance(items[-1], RunnerError) or items[-1].is_final:
                    break
    except LlmrunError as exc:
        items.append(exc)
    finally:
        _check_readers(connection)
        await connection.close()
    return items


def run_warm(warm: WarmTool, agent: RpcAgent | StreamJsonAgent, turns: int = 2) -> list[Any]:
    """exercise_warm; an exception that llmrun let through to be logged fails it too."""
    logged = _Logged()
    root = logging.getLogger()
    root.addHandler(logged)
    try:
        items = asyncio.run(exercise_warm(warm, agent, turns))
    finally:
        root.removeHandler(logged)
    errors = [r for r in logged.records if r.exc_info and not isinstance(r.exc_info[1], LlmrunError)]
    if errors:
        raise AssertionError(f"logged: {errors[0].getMessage()}") from errors[0].exc_info[1]  # type: ignore[index]
    return items


def _readers(connection: Any) -> list[asyncio.Future[Any]]:
    """The tasks that read the tool's messages (the reader, and ACP's prompt in flight)."""
    return [task for task in (connection._reader, getattr(connection, "_prompt", None)) if task is not None]


def _check_readers(connection: Any) -> None:
    for task in _readers(connection):
        exc = task.exception() if task.done() and not task.cancelled() else None
        if exc is not None and not isinstance(exc, LlmrunError):
            raise AssertionError(f"a reader of the tool's messages failed: {exc!r}") from exc


async def _unless_a_reader_dies(connection: Any, step: Awaitable[_T]) -> _T:
    """The step's result. The fake's output ends once llmrun waits on it, and that ends any
    start and any turn; only a reader that died could leave them waiting."""
    work = asyncio.ensure_future(step)
    try:
        for _ in range(60):  # the step may start a reader: look again each second
            watched = {work, *(task for task in _readers(connection) if not task.done())}
            await asyncio.wait(watched, timeout=1, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            _check_readers(connection)
        raise AssertionError("llmrun neither went on nor failed within a minute")
    finally:
        work.cancel()


@pytest.mark.parametrize("warm", WARM, ids=[w.tool for w in WARM])
@FUZZ
@given(data=st.data())
def test_warm_readers_fail_only_with_typed_errors(warm: WarmTool, data: st.DataObject) -> None:
    capture = data.draw(st.sampled_from(warm.captures), label="capture")
    run_warm(warm, _agent(warm, capture, data))


# --- lines that failed with untyped errors before ------------------------------------------


def outcome(tool: str, *lines: str, stderr: str = "") -> ChatResponse | LlmrunError:
    """The response to a one-shot run that printed these lines, or the typed error it ended in."""
    runner = ONE_SHOT[tool]()
    try:
        return ChatResponse.from_chunks(run_once(runner, list(lines), stderr, 0))
    except LlmrunError as exc:
        return exc


def _line(event: dict[str, Any]) -> str:
    return _dumps(event)


def _delta(text: Any) -> str:
    return _line({"type": "stream_event", "event": {"type": "content_block_delta", "delta": text}})


CLAUDE_RESULT = _line({"type": "result", "subtype": "success", "result": "ok", "usage": {"output_tokens": 2}})


@pytest.mark.parametrize(
    ("lines", "content"),
    [
        ([_delta(["x"]), CLAUDE_RESULT], "ok"),
        ([_delta({"type": "text_delta", "text": 5}), CLAUDE_RESULT], "ok"),
        ([_delta({"type": "thinking_delta", "thinking": [1]}), CLAUDE_RESULT], "ok"),
        ([_line({"type": "stream_event", "event": {"type": "message_start", "message": True}}), CLAUDE_RESULT], "ok"),
        (
            [
                _line({"type": "stream_event", "event": {"type": "message_start", "message": {"id": ["m"]}}}),
                _delta({"type": "text_delta", "text": "Hi"}),
                CLAUDE_RESULT,
            ],
            "Hi",
        ),
        ([_line({"type": "assistant", "message": 5}), CLAUDE_RESULT], "ok"),
        ([_line({"type": "assistant", "message": {"content": 7}}), CLAUDE_RESULT], "ok"),
        ([_line({"type": "assistant", "message": {"content": [{"type": "text", "text": 5}]}}), CLAUDE_RESULT], "ok"),
        (
            [
                _line({"type": "assistant", "message": {"content": [{"type": "thinking", "thinking": [1]}]}}),
                CLAUDE_RESULT,
            ],
            "ok",
        ),
        (
            [
                _line({"type": "assistant", "message": {"content": [{"type": "tool_use", "id": 5, "name": []}]}}),
                CLAUDE_RESULT,
            ],
            "ok",
        ),
        ([_line({"type": "user", "message": "x"}), CLAUDE_RESULT], "ok"),
        (
            [
                _line({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": 5}]}}),
                CLAUDE_RESULT,
            ],
            "ok",
        ),
        ([_line({"type": "system", "subtype": "init", "session_id": 5}), CLAUDE_RESULT], "ok"),
        ([_line({"type": "result", "result": "ok", "session_id": 5, "usage": 5, "permission_denials": 5})], "ok"),
        (
            [
                _line(
                    {"type": "result", "result": "ok", "total_cost_usd": 10**400, "usage": {"input_tokens": HUGE_FLOAT}}
                )
            ],
            "ok",
        ),
        ([_line({"type": "result", "result": "ok", "permission_denials": [{"tool_use_id": 5, "tool_name": 6}]})], "ok"),
        (["{" + '"a": ' + "[" * 3000 + "]" * 3000 + "}", CLAUDE_RESULT], "ok"),
    ],
)
def test_stream_json_fields_of_the_wrong_type_count_as_absent(lines: list[str], content: str) -> None:
    response = outcome("claude", *lines)
    assert isinstance(response, ChatResponse) and response.content == content
    assert response.session_id is None and response.cost_usd is None


@pytest.mark.parametrize("tool", ["claude", "cursor-agent"])
def test_a_failed_result_whose_text_is_no_string_is_a_typed_error(tool: str) -> None:
    assert type(outcome(tool, _line({"type": "result", "is_error": True, "result": [1]}))) is RunnerError


HUGE = {"input_tokens": HUGE_FLOAT, "output_tokens": 3}


@pytest.mark.parametrize(
    ("tool", "lines"),
    [
        ("codex", [_line({"type": "turn.completed", "usage": HUGE})]),
        ("gemini", [_line({"type": "result", "status": "success", "stats": {**HUGE, "models": 5}})]),
        ("qwen", [_line({"type": "assistant", "message": {"usage": HUGE}}), _line({"type": "result", "usage": HUGE})]),
        ("qwen", [_line({"type": "result", "result": "", "usage": HUGE})]),
        ("opencode", [_line({"type": "step_finish", "part": {"tokens": {"input": HUGE_FLOAT, "output": 3}}})]),
        ("opencode", [_line({"type": "step_finish", "part": {"cost": 10**400, "tokens": {"output": 3}}})]),
        ("cursor-agent", [_line({"type": "result", "usage": {"inputTokens": HUGE_FLOAT, "outputTokens": 3}})]),
        ("jsonl-cli", [_line({"type": "end", "usage": {"input": "1e400", "output": 3}, "cost": 10**400})]),
    ],
)
def test_usage_and_cost_beyond_a_float_count_as_absent(tool: str, lines: list[str]) -> None:
    response = outcome(tool, *lines)
    assert isinstance(response, ChatResponse)
    assert (response.usage.input_tokens, response.usage.output_tokens, response.cost_usd) == (0, 3, None)


def test_cursor_agent_usage_of_the_wrong_type_counts_as_absent() -> None:
    response = outcome("cursor-agent", _line({"type": "result", "usage": 5}))
    assert isinstance(response, ChatResponse) and response.usage.total_tokens == 0


def test_codex_texts_of_the_wrong_type_are_skipped() -> None:
    item = {"type": "item.completed", "item": {"type": "agent_message", "text": ["a"]}}
    response = outcome("codex", _line(item), _line({"type": "turn.completed"}))
    assert isinstance(response, ChatResponse) and response.content == ""


def test_copilot_tool_calls_of_the_wrong_type() -> None:
    lines = [
        _line({"type": "assistant.message", "data": {"content": "Hi", "toolRequests": 5}}),
        _line({"type": "tool.execution_start", "data": {"toolCallId": ["c"], "toolName": "x"}}),
        _line({"type": "result", "exitCode": 0}),
    ]
    response = outcome("copilot", *lines)
    assert isinstance(response, ChatResponse) and response.content == "Hi"
    assert [(e.kind, e.id, e.name) for e in response.agent_events] == [("tool_use", None, "x")]


def test_copilot_usage_report_beyond_reading() -> None:
    runner = CopilotRunner()
    reports = [
        json.dumps({"modelMetrics": {"m": {"usage": {"inputTokens": 5}}}}).replace("5", "1e400"),
        '{"modelMetrics": ' + "[" * 3000 + "]" * 3000 + "}",
    ]
    for report in reports:
        with tempfile.TemporaryDirectory() as run_dir:
            Path(run_dir, USAGE_FILE).write_text(report)
            *_, final = runner._with_usage(ChatChunk(finish_reason="stop"), run_dir, resumed=False, baseline=None)
        assert final.usage is None or final.usage.input_tokens == 0


DEEP_TEXT = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    ("tool", "lines", "stderr"),
    [
        ("qwen", [DEEP_TEXT, _line({"type": "result", "result": "ok"})], ""),
        ("jsonl-cli", [DEEP_TEXT, _line({"type": "end", "text": "ok"})], ""),
        (
            "copilot",
            [_line({"type": "model.call_failure", "data": {"errorMessage": DEEP_TEXT, "statusCode": 500}})],
            "",
        ),
        (
            "gemini",
            [_line({"type": "result", "status": "error", "error": {"message": f'[API Error: {{"e": {DEEP_TEXT}}}]'}})],
            "",
        ),
        ("llm", ["Hi\n"], 'Token usage: 3 input, 2 output, {"a": ' + DEEP_TEXT + "}\n"),
    ],
)
def test_text_nested_too_deep_to_read_is_no_json(tool: str, lines: list[str], stderr: str) -> None:
    outcome(tool, *lines, stderr=stderr)  # ends in chunks or a typed error


def test_counts_printed_as_text_that_are_no_numbers() -> None:
    llm = outcome("llm", "Hi\n", stderr="Token usage: , input, 2 output\n")
    assert isinstance(llm, ChatResponse) and (llm.usage.input_tokens, llm.usage.output_tokens) == (0, 2)
    ollama = outcome(
        "ollama", "Hi\n\n", stderr=f"prompt eval count:    {'9' * 5000} token(s)\neval count: 2 token(s)\n"
    )
    assert isinstance(ollama, ChatResponse) and (ollama.usage.input_tokens, ollama.usage.output_tokens) == (0, 2)


def test_gemini_acp_usage_of_the_wrong_type() -> None:
    from llmrun.runners.gemini import _acp_usage

    assert _acp_usage({"_meta": 5}) is None
    usage = _acp_usage({"_meta": {"quota": {"token_count": {"input_tokens": "x", "output_tokens": 1e400}}}})
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (0, 0)


# --- warm sessions: messages that failed with untyped errors before ------------------------


def _rpc(result: Any) -> str:
    return _dumps({"jsonrpc": "2.0", "id": REQUEST_ID, "result": result})


def test_stream_json_input_skips_a_control_response_of_the_wrong_type() -> None:
    good = _dumps({"type": "control_response", "response": {"subtype": "success", "request_id": REQUEST_ID}})
    turn = [_delta({"type": "text_delta", "text": "Hi"}), CLAUDE_RESULT]
    agent = StreamJsonAgent([turn], [_dumps({"type": "control_response", "response": 5}), good])
    items = run_warm(WARM[0], agent, turns=1)
    assert [c.delta for c in items if isinstance(c, ChatChunk) and c.delta] == ["Hi"] and items[-1].is_final


def test_codex_app_server_reads_messages_of_the_wrong_type() -> None:
    turn = [
        _rpc({"turn": 5}),
        _dumps({"id": [3], "result": {}}),  # no request of llmrun's has such an id
        _dumps({"method": "item/agentMessage/delta", "params": ["x"]}),
        _dumps({"method": "item/agentMessage/delta", "params": {"itemId": "i", "delta": "Hi"}}),
        _dumps({"method": "item/completed", "params": {"item": {"type": "reasoning", "summary": 5}}}),
        _dumps({"method": "thread/tokenUsage/updated", "params": {"tokenUsage": {"last": {"inputTokens": 1e400}}}}),
        _dumps({"method": "thread/tokenUsage/updated", "params": {"tokenUsage": 5}}),
        _dumps({"method": ["x"], "id": 9}),
        _dumps({"method": "error", "params": {"error": 5, "willRetry": True}}),
        _dumps({"method": "turn/completed", "params": {"turn": "done"}}),
    ]
    agent = RpcAgent(
        {"initialize": [_rpc({})], "thread/start": [_rpc({"thread": "t", "model": 5})]}, [turn], "turn/start"
    )
    items = run_warm(WARM[1], agent, turns=1)
    assert [c.delta for c in items if c.delta] == ["Hi"]
    # No model was asked for, and the one thread/start reported is not a name: none is claimed.
    assert items[-1].is_final and items[-1].model is None and items[-1].session_id is None


ACP_START = {
    "initialize": [_rpc({"protocolVersion": 1, "agentCapabilities": {}})],
    "session/new": [_rpc({"sessionId": "s1"})],
}


def _update(update: dict[str, Any]) -> str:
    return _dumps({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "s1", "update": update}})


def _chunk(text: str, **fields: Any) -> str:
    return _update({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}, **fields})


def test_acp_skips_what_the_protocol_package_cannot_route() -> None:
    turn = [
        _dumps({"jsonrpc": "2.0", "id": [1], "result": {}}),
        _dumps({"jsonrpc": "2.0", "method": "brand/new", "params": {}}),
        _dumps({"jsonrpc": "2.0", "method": 5, "params": {}}),
        _chunk("Hi", _meta={"usage": {"inputTokens": 1e400, "outputTokens": 2}}),
        _rpc({"stopReason": "end_turn"}),
    ]
    items = run_warm(WARM[3], RpcAgent(ACP_START, [turn], "session/prompt"), turns=1)  # qwen
    assert [c.delta for c in items if c.delta] == ["Hi"]
    assert items[-1].is_final and items[-1].usage.output_tokens == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [({"code": "x", "message": "upstream answered 503"}, "ServiceUnavailable"), ("no such thing", "RunnerError")],
)
def test_acp_error_answers_of_the_wrong_type_are_typed_errors(error: Any, expected: str) -> None:
    turn = [_dumps({"jsonrpc": "2.0", "id": REQUEST_ID, "error": error})]
    items = run_warm(WARM[3], RpcAgent(ACP_START, [turn], "session/prompt"), turns=1)
    assert type(items[-1]).__name__ == expected


def test_gemini_acp_prompt_result_meta_of_the_wrong_type() -> None:
    turn = [_chunk("Hi"), _rpc({"stopReason": "end_turn", "_meta": {"quota": 5}})]
    items = run_warm(WARM[2], RpcAgent(ACP_START, [turn], "session/prompt"), turns=1)
    assert [c.delta for c in items if c.delta] == ["Hi"] and items[-1].is_final


async def test_claude_auth_status_that_is_no_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun import process

    async def auth_status(*args: Any, **kwargs: Any) -> process.CommandResult:
        return process.CommandResult(returncode=0, stdout="[1]\n", stderr="")

    monkeypatch.setattr(process, "run_command", auth_status)
    assert await ClaudeCodeRunner().check_auth("claude") == (True, "[1]")
