"""The parsers' fast paths give exactly the chunks of the full path.

A parser with a `fast_line` pattern reads a line of that exact shape (a text delta, the bulk
of a streamed answer) without decoding all of its JSON, and every parser builds its text
chunks with `delta_chunk` instead of pydantic's validating constructor. Every capture of
every runner, and text deltas rewritten with odd texts, are read both ways here; the chunks,
and what the run then makes of them, must be the same.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmrun.errors import LlmrunError
from llmrun.runners import base
from llmrun.runners.base import CliRunner, Parser, delta_chunk
from llmrun.types import ChatChunk, ChatRequest

from .test_parser_fuzz import FUZZ, ONE_SHOT, run_once, transcripts

LINE_TOOLS = [tool for tool, make in ONE_SHOT.items() if make().framing == "lines"]


def parser_classes() -> Iterator[type[Parser]]:
    todo: list[type[Parser]] = [Parser]
    while todo:
        cls = todo.pop()
        yield cls
        todo += cls.__subclasses__()


FAST = {cls: vars(cls)["fast_line"] for cls in parser_classes() if vars(cls).get("fast_line") is not None}


@pytest.fixture
def full_path() -> Any:
    """A switch: within `with full_path():` parsers read every line the full way and build
    their chunks with pydantic's own constructor."""

    @contextlib.contextmanager
    def switch() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            for cls in FAST:
                patch.setattr(cls, "fast_line", None)
            for module in list(sys.modules.values()):
                if getattr(module, "delta_chunk", None) is delta_chunk:
                    patch.setattr(module, "delta_chunk", lambda text: ChatChunk(delta=text))
            yield

    return switch


def outcome(runner: CliRunner, lines: list[str], stderr: str, returncode: int) -> list[Any]:
    """The chunks of one run, each as type, fields set and dump, or the error it ends in."""
    try:
        chunks = run_once(runner, lines, stderr, returncode)
    except LlmrunError as exc:
        return [type(exc).__name__, str(exc)]
    return [(type(c), c.model_fields_set, c.model_dump()) for c in chunks]


def both_ways(tool: str, lines: list[str], full_path: Any, stderr: str = "", returncode: int = 0) -> list[Any]:
    fast = outcome(ONE_SHOT[tool](), lines, stderr, returncode)
    with full_path():
        full = outcome(ONE_SHOT[tool](), lines, stderr, returncode)
    assert fast == full
    return fast


def test_the_runners_that_print_answer_text_have_a_fast_path() -> None:
    expected = {"StreamJsonParser", "QwenParser", "GeminiParser", "CopilotParser", "CodexParser", "OpencodeParser"}
    assert {cls.__name__ for cls in FAST} == expected


@pytest.mark.parametrize("tool", LINE_TOOLS)
def test_every_capture_reads_the_same_both_ways(tool: str, full_path: Any) -> None:
    for transcript in transcripts(tool):
        lines = [line for line in transcript.stdout.splitlines() if line.strip()]
        both_ways(tool, lines, full_path, transcript.stderr, transcript.returncode)


def delta_lines() -> list[tuple[str, str]]:
    """(tool, line) for every captured line a fast path takes."""
    found = []
    for tool in LINE_TOOLS:
        fast = [p for cls, p in FAST.items() if isinstance(ONE_SHOT[tool]().new_parser(ChatRequest.of("hi")), cls)]
        for transcript in transcripts(tool):
            found += [(tool, line) for line in transcript.stdout.splitlines() if any(p.fullmatch(line) for p in fast)]
    return found


def test_the_captured_text_deltas_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    found = delta_lines()
    assert {tool for tool, _ in found} >= {"claude", "qwen", "gemini", "copilot", "codex", "opencode"}
    decoded: list[str] = []
    for module in list(sys.modules.values()):
        if getattr(module, "json_object", None) is base.json_object:
            monkeypatch.setattr(module, "json_object", lambda line: decoded.append(line) or base.json_object(line))
    for tool, line in found:
        ONE_SHOT[tool]().new_parser(ChatRequest.of("hi")).feed(line)
    assert decoded == []


# Bodies of the text's JSON string, as written between its quotes: escapes of every kind,
# valid or not, raw control characters, quotes, nothing.
ODD_BODIES = [
    "",
    " ",
    "plain",
    "line\\nbreak",
    'say \\"hi\\"',
    "back\\\\slash",
    "\\u00e9t\\u00e9 \\ud83d\\ude00",
    "\\ud800 lone",
    "\\/\\b\\f\\r\\t",
    "bad \\x escape",
    "cut \\u12",
    "trailing \\",
    "raw\ttab",
    "raw\x00nul",
    "raw\x1fus",
    "del\x7f",
    "é中😀",
    "\u2028\u00a0",
    '"',
    "[API Error: 500 oops]",
    "\\u005bAPI Error: 401]",
]


def rewritten(line: str, body: str) -> str:
    """The delta line with its text's body replaced (the text is its only string that
    begins with H, f or m in the captures: "Hello ", "from ", "mock")."""
    for word in ("Hello ", "from ", "mock"):
        if f'"{word}"' in line:
            return line.replace(f'"{word}"', f'"{body}"', 1)
    return line.replace('"text":"', f'"text":"{body}', 1)


def test_odd_texts_read_the_same_both_ways(full_path: Any) -> None:
    for tool, line in delta_lines():
        for body in ODD_BODIES:
            both_ways(tool, [line, rewritten(line, body), line], full_path)


SHAPE_CHANGES = [
    ('"index":0', '"index":01'),
    ('"index":0', '"index":-1'),
    ('"index":0', '"index":1.0'),
    ('"parent_tool_use_id":null', '"parent_tool_use_id":"toolu_1"'),
    ('"role":"assistant"', '"role":"user"'),
    ('"delta":true', '"delta":true,"delta":false'),
    ('"type":"text_delta"', '"type":"thinking_delta"'),
    ('","', '", "'),
    ("}", "} "),
    ('"messageId":"', '"messageId":"a\\u0041'),
    ('"session_id":"', '"session_id":"\\"'),
    ('"uuid":"', '"uuid":"\x01'),
]


def test_lines_of_another_shape_read_the_same_both_ways(full_path: Any) -> None:
    for tool, line in delta_lines():
        for old, new in SHAPE_CHANGES:
            if old in line:
                both_ways(tool, [line, line.replace(old, new, 1), line], full_path)
                both_ways(tool, [line, line.replace(old, new), line], full_path)


@FUZZ
@given(data=st.data())
def test_any_text_reads_the_same_both_ways(data: st.DataObject, full_path: Any) -> None:
    tool, line = data.draw(st.sampled_from(delta_lines()), label="line")
    text = data.draw(st.text(), label="text")
    ensure_ascii = data.draw(st.booleans(), label="ascii")
    body = json.dumps(text, ensure_ascii=ensure_ascii)[1:-1]
    raw = data.draw(st.text(alphabet=st.sampled_from('ab\\"u0d8\x01\n é'), max_size=12), label="raw body")
    both_ways(tool, [line, rewritten(line, body), rewritten(line, raw), line], full_path)


@pytest.mark.parametrize("text", ["", "x", "\n\nnext", "é中😀", "\ud800"])
def test_delta_chunk_is_the_validated_chunk(text: str) -> None:
    fast, validated = delta_chunk(text), ChatChunk(delta=text)
    assert fast == validated
    assert fast.model_fields_set == validated.model_fields_set == {"delta"}
    assert fast.model_dump() == validated.model_dump()
    assert fast.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True) == {"delta": text}
    assert fast.model_copy(update={"delta": "y"}) == validated.model_copy(update={"delta": "y"})
    other = delta_chunk(text)
    fast.warnings.append("w")
    assert other.warnings == [] and delta_chunk(text).warnings == []
