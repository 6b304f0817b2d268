"""Clients' tool schemas cannot make llmrun do unbounded work: checked on arrival, validated with RE2.

A malformed schema, a `$ref` loop or one that points nowhere, a schema nested too deep or too
large, and a pattern RE2 cannot read are an InvalidRequest from the library and a 400 from the
daemon, before any runner is asked. Validation of the model's arguments is bounded whatever the
schema: a catastrophic pattern such as ^(a+)+$ is matched in linear time, and `$ref` cycles,
exponential anyOf trees and deep values make it give up with a problem instead of running on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrun import ChatRequest, InvalidRequest, ToolSpec, chat_with_tools
from llmrun.schema import (
    MAX_PATTERN_PROGRAMS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_SIZE,
    MAX_VALIDATION_DEPTH,
    check_schema,
    check_schemas,
    compile_pattern,
    validate_json,
)
from llmrun.tool_emulation import parse_answer, plan_tools

from .server_support import LiveServer, ScriptedRunner, settings

pytestmark = pytest.mark.timeout(60)

CATASTROPHIC = "^(a+)+$"  # Python's re takes 2^n steps on "a" * n + "b"


def string_with(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}, "required": ["code"]}


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


def refused(schema: Any, tool: str = "lookup") -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, tool)
    message = str(caught.value)
    assert f"tool {tool!r}" in message
    return message


# --- patterns -----------------------------------------------------------------------------


def test_a_catastrophic_pattern_on_a_long_argument_is_matched_at_once() -> None:
    schema = string_with(CATASTROPHIC)
    check_schema(schema, "lookup")
    # With backtracking, 10,000 characters would take longer than the universe has existed.
    problems = validate_json({"code": "a" * 10_000 + "b"}, schema)
    assert problems == ["arguments.code: must match the pattern '^(a+)+$'"]
    assert validate_json({"code": "a" * 10_000}, schema) == []


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("^(?=a)a$", "invalid perl operator"),  # lookahead
        ("^(?!a)$", "invalid perl operator"),  # negative lookahead
        ("^(?<=a)b$", "invalid perl operator"),  # lookbehind
        (r"^(a)\1$", "invalid escape sequence"),  # backreference
        ("^(a$", "missing )"),
        ("x" * 2_001, "longer than 2,000 characters"),
        (r"\p{L}{1000}", "pattern too large"),  # a short pattern with a huge program
    ],
)
def test_a_pattern_re2_cannot_use_is_refused_on_arrival(pattern: str, reason: str) -> None:
    message = refused(string_with(pattern))
    assert "#/properties/code" in message and reason in message


def test_ecma_unicode_escapes_are_read_as_re2_escapes() -> None:
    schema = string_with(r"^[\u0041-\u005A]+\.\\u$")
    check_schema(schema, "lookup")
    assert validate_json({"code": "ABC.\\u"}, schema) == []
    assert validate_json({"code": "abc.\\u"}, schema) != []


def test_the_patterns_of_all_tools_share_one_budget() -> None:
    big = r"^.{1,1000}$"  # about 9,000 instructions
    size = compile_pattern(big).programsize
    count = MAX_PATTERN_PROGRAMS // size + 1
    schemas = {f"tool{i}": string_with(big.replace("1000", str(1000 - i))) for i in range(count)}
    with pytest.raises(InvalidRequest, match="too complex together"):
        check_schemas(schemas)
    check_schemas(dict(list(schemas.items())[: count // 2]))
    check_schemas({f"tool{i}": string_with(big) for i in range(count)})  # one pattern, compiled once


def test_a_long_text_against_a_large_program_gives_up_instead_of_running_on() -> None:
    schema = string_with("a.{1,1000}c")  # RE2 falls back from its DFA to time * program size
    problems = validate_json({"code": "ab" * 500_000}, schema)
    assert problems == ["arguments.code: the value is too large or the schema too complex to check"]


# --- malformed schemas --------------------------------------------------------------------

MALFORMED = [
    ({"type": "object", "properties": []}, '"properties" must be an object', "#"),
    ({"type": "object", "required": "x"}, '"required" must be an array of property names', "#"),
    ({"type": 5}, '"type" must be one of', "#"),
    ({"type": "int"}, '"type" must be one of', "#"),
    ({"type": ["string", 3]}, '"type" must be one of', "#"),
    ({"type": "array", "items": "x"}, "expected a schema (an object or a boolean), got string", "#/items"),
    ({"properties": {"a": {"type": "string", "pattern": 5}}}, '"pattern" must be a string', "#/properties/a"),
    ({"properties": {"a": {"enum": "x"}}}, '"enum" must be an array', "#/properties/a"),
    ({"properties": {"a": {"maxLength": -1}}}, '"maxLength" must be a non-negative integer', "#/properties/a"),
    ({"properties": {"a": {"minimum": "0"}}}, '"minimum" must be a number', "#/properties/a"),
    ({"properties": {"a": {"anyOf": []}}}, '"anyOf" must be a non-empty array of schemas', "#/properties/a"),
    ({"properties": {"a": {"allOf": [1]}}}, "expected a schema", "#/properties/a/allOf/0"),
    (
        {"properties": {"a/b": {"additionalProperties": []}}},
        "expected a schema",
        "#/properties/a~1b/additionalProperties",
    ),
    ({"properties": {"a": {"$ref": 7}}}, '"$ref" must be a string', "#/properties/a"),
    ({"enum": [{1, 2}]}, "a set is not a JSON value", None),
    ({"minimum": float("nan")}, "nan is not a JSON number", None),
]


@pytest.mark.parametrize(("schema", "problem", "where"), MALFORMED)
def test_a_malformed_schema_is_refused_naming_the_tool_and_the_place(
    schema: dict[str, Any], problem: str, where: str | None
) -> None:
    message = refused(schema)
    assert problem in message
    if where is not None:
        assert f" at {where}:" in message


@pytest.mark.parametrize(
    "defs",
    [
        {"a": {"$ref": "#/$defs/a"}},
        {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
        {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/b"}]}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
        {"a": {"not": {"$ref": "#/$defs/a"}}},
    ],
)
def test_a_ref_loop_is_refused(defs: dict[str, Any]) -> None:
    schema = {"$defs": defs, "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}
    assert "a loop of $refs that never reaches a value: #/$defs/" in refused(schema)
    assert "a loop of $refs" in refused({"type": "object", "$ref": "#"})  # the root refers to itself


@pytest.mark.parametrize("ref", ["#/$defs/missing", "#/properties/x/items", "#anchor", "https://example.com/s.json"])
def test_a_ref_that_points_nowhere_is_refused(ref: str) -> None:
    schema = {"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": ref}}}
    assert f"$ref {ref!r} does not point to a part of this schema" in refused(schema)


def test_a_ref_to_something_that_is_not_a_schema_is_checked_as_one() -> None:
    schema = {"required": ["a"], "properties": {"x": {"$ref": "#/required"}}}
    assert "expected a schema (an object or a boolean), got array" in refused(schema)
    hidden = {"enum": [{"pattern": "(?=a)"}], "properties": {"x": {"$ref": "#/enum/0"}}}
    assert "invalid perl operator" in refused(hidden)


def test_recursive_schemas_and_refs_into_arrays_are_accepted() -> None:
    tree = {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}
    check_schema(tree, "tree")
    check_schema({"anyOf": [{"$ref": "#/anyOf/1"}, {"type": "string"}]}, "alias")
    check_schema({"$defs": {"a b": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a%20b"}}}, "escaped")
    assert validate_json({"children": [{"children": []}]}, tree) == []
    assert validate_json({"children": [{"children": 1}]}, tree) == [
        "arguments.children[0].children: expected array, got integer"
    ]


def test_a_schema_nested_too_deep_is_refused() -> None:
    check_schema(nested(MAX_SCHEMA_DEPTH // 2 - 1), "fine")  # two levels per schema: it and its properties
    assert f"nested more than {MAX_SCHEMA_DEPTH} levels deep" in refused(nested(10_000))
    loop: dict[str, Any] = {"type": "object", "properties": {}}
    loop["properties"]["self"] = loop  # a Python object that contains itself, from a library user
    assert "nested more than" in refused(loop)


def test_a_schema_too_large_is_refused() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(MAX_SCHEMA_SIZE // 10)}}
    assert "larger than the limit" in refused(wide)
    assert "larger than the limit" in refused({"description": "x" * MAX_SCHEMA_SIZE})


# --- validation is bounded on any schema --------------------------------------------------


def test_validation_of_a_ref_loop_gives_up_without_recursion_error() -> None:
    # check_schemas refuses this schema; validate_json alone must still end.
    schema = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    (problem,) = validate_json({"x": 1}, schema)
    assert f"nested more than {MAX_VALIDATION_DEPTH} schemas deep" in problem


def test_validation_of_an_exponential_anyof_tree_gives_up() -> None:
    defs: dict[str, Any] = {"n40": {"type": "string"}}
    for level in range(40):  # each level tries both branches: 2^40 paths
        defs[f"n{level}"] = {"anyOf": [{"$ref": f"#/$defs/n{level + 1}"}, {"$ref": f"#/$defs/n{level + 1}"}]}
    schema = {"$defs": defs, "type": "object", "properties": {"x": {"$ref": "#/$defs/n0"}}}
    check_schema(schema, "branches")  # no loop, small: accepted
    assert validate_json({"x": 1}, schema) == ["arguments.x: the value is too large or the schema too complex to check"]


def test_validation_of_a_deep_value_on_a_recursive_schema_gives_up() -> None:
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    value: dict[str, Any] = {}
    for _ in range(500):
        value = {"child": value}
    (problem,) = validate_json(value, tree)
    assert "schemas deep" in problem


def test_problems_and_messages_are_capped() -> None:
    schema = {"type": "array", "items": {"enum": list(range(30))}}
    problems = validate_json(list(range(-100, 0)), schema)
    assert len(problems) == 21 and problems[-1] == "... and 80 more problems"
    assert problems[0] == "arguments[0]: must be one of 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (and 20 more)"


def test_deeply_nested_json_from_the_model_is_a_problem_not_a_crash() -> None:
    plan = plan_tools(ChatRequest.of("hi", tools=[ToolSpec(name="f")]))
    assert plan is not None
    deep = "[" * 100_000 + "]" * 100_000
    text = f'<tool_call>{{"name": "f", "arguments": {deep}}}</tool_call>'
    _, calls, problems = parse_answer(text, plan)
    assert calls == [] and "nested too deeply" in problems[0]
    as_string = json.dumps({"name": "f", "arguments": deep})
    _, calls, problems = parse_answer(f"<tool_call>{as_string}</tool_call>", plan)
    assert calls == [] and "does not hold JSON" in problems[0]


def test_huge_numbers_from_the_model_are_problems_not_crashes() -> None:
    spec = ToolSpec(name="f", parameters={"type": "object", "properties": {"n": {"type": "number", "maximum": 5}}})
    plan = plan_tools(ChatRequest.of("hi", tools=[spec]))
    assert plan is not None
    _, calls, problems = parse_answer(
        '<tool_call>{"name": "f", "arguments": {"n": 1' + "0" * 400 + "}}</tool_call>", plan
    )
    assert calls == [] and problems == ['tool call 1 ("f"): arguments.n: must be at most 5']
    _, calls, problems = parse_answer(
        '<tool_call>{"name": "f", "arguments": {"n": 1' + "0" * 5000 + "}}</tool_call>", plan
    )
    assert calls == [] and "a number with too many digits" in problems[0]
    assert "a number is too large" in refused({"maximum": 10**400})


# --- through the library and the daemon ---------------------------------------------------


async def test_the_library_refuses_a_bad_schema_before_running_anything() -> None:
    runner = ScriptedRunner()
    request = ChatRequest.of("hi", tools=[ToolSpec(name="lookup", parameters={"type": "object", "required": "x"})])
    with pytest.raises(InvalidRequest, match="the schema of tool 'lookup'"):
        await chat_with_tools(runner, request)
    assert runner.requests == []


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[LiveServer, ScriptedRunner]]:
    def answer(request: ChatRequest) -> str:  # a call whose argument is the catastrophic case
        return '<tool_call>{"name": "lookup", "arguments": {"code": "' + "a" * 40 + 'b"}}</tool_call>'

    runner = ScriptedRunner(answer)
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        yield live, runner


def openai_body(parameters: Any) -> dict[str, Any]:
    tool = {"type": "function", "function": {"name": "lookup", "description": "Look up", "parameters": parameters}}
    return {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}


def anthropic_body(parameters: Any) -> dict[str, Any]:
    tool = {"name": "lookup", "description": "Look up", "input_schema": parameters}
    return {"model": "scripted", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}


DAEMON_REFUSED = [
    {"type": "object", "properties": {"a": {"type": "array", "items": "x"}}},
    {"type": "object", "properties": {"a": {"type": "string", "pattern": 5}}},
    {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=a)"}}},
    {"type": "object", "properties": {"a": {"type": 5}}},
    {"type": "object", "properties": {"a": {"required": "x"}}},
    {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}},
]


@pytest.mark.parametrize("parameters", DAEMON_REFUSED)
def test_the_daemon_answers_400_before_running_anything(
    daemon: tuple[LiveServer, ScriptedRunner], parameters: dict[str, Any]
) -> None:
    live, runner = daemon
    for path, body in [
        ("/v1/chat/completions", openai_body(parameters)),
        ("/v1/chat/completions", openai_body(parameters) | {"stream": True}),
        ("/v1/messages", anthropic_body(parameters)),
    ]:
        reply = httpx.post(f"{live.url}{path}", json=body, timeout=30)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "the schema of tool 'lookup'" in error["message"]
    assert runner.requests == []
    assert httpx.get(f"{live.url}/health", timeout=30).status_code == 200


def test_top_level_wrong_types_and_deep_nesting_are_400_too(daemon: tuple[LiveServer, ScriptedRunner]) -> None:
    live, runner = daemon
    # Here the daemon's own checks of the body may answer first; either way it is a 400.
    for parameters in [{"properties": []}, {"required": "x"}, {"type": 5}, "x", nested(200)]:
        reply = httpx.post(f"{live.url}/v1/chat/completions", json=openai_body(parameters), timeout=30)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert runner.requests == []


def test_a_catastrophic_pattern_does_not_freeze_the_daemon(daemon: tuple[LiveServer, ScriptedRunner]) -> None:
    live, runner = daemon
    replies: list[httpx.Response] = []
    # The model's argument, 40 a's then b, would take Python's re about 2^40 steps; /health
    # is asked while the request runs, and both answer well inside their generous timeouts.
    request = threading.Thread(
        target=lambda: replies.append(
            httpx.post(f"{live.url}/v1/chat/completions", json=openai_body(string_with(CATASTROPHIC)), timeout=50)
        )
    )
    request.start()
    health = httpx.get(f"{live.url}/health", timeout=50)
    request.join(timeout=55)
    assert health.status_code == 200
    (reply,) = replies
    assert reply.status_code == 200
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "stop"  # the call broke the pattern twice: returned as text
    assert "aaaab" in choice["message"]["content"]
    assert len(runner.requests) == 2
    assert "must match the pattern" in runner.requests[1].messages[-1].text
