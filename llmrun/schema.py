"""Clients' JSON schemas for tool arguments: checked when they arrive, values validated against them.

A tool schema comes from a client of the daemon, so both steps do bounded work whatever it holds:

- `check_schemas` refuses with `InvalidRequest` a schema nested deeper than MAX_SCHEMA_DEPTH
  or larger than MAX_SCHEMA_SIZE, a keyword of the wrong type (`"required": "x"`), a `$ref`
  that points nowhere, a loop of `$ref`s (with allOf/anyOf/oneOf/not) that never reaches a
  part of the value, a `pattern` RE2 cannot compile, and patterns whose RE2 programs hold
  more than MAX_PATTERN_PROGRAMS instructions together (compiling costs time per instruction).
- `validate_json` matches patterns with RE2, whose time is linear in the text (Python's
  backtracking `re` can take years on `^(a+)+$`), and gives up with a problem after
  MAX_VALIDATION_DEPTH nested schemas or MAX_VALIDATION_WORK steps, a match counting as
  many steps as the size of the pattern's program times the length of the text.

Patterns are ECMA-262 regular expressions, read by RE2 after `\\uXXXX` escapes are rewritten in
its syntax. What RE2 lacks (lookaround, backreferences) is refused when the schema arrives, never
matched by another engine and never skipped: a dropped constraint would let through arguments
the caller's code does not expect.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote

import re2  # type: ignore[import-untyped, import-not-found]

from .errors import InvalidRequest

__all__ = [
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_PROGRAMS",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_SIZE",
    "MAX_VALIDATION_DEPTH",
    "MAX_VALIDATION_WORK",
    "check_schema",
    "check_schemas",
    "compile_pattern",
    "validate_json",
]

MAX_SCHEMA_DEPTH = 64
"""Objects and arrays nested in one schema; real tool schemas use a handful."""
MAX_SCHEMA_SIZE = 100_000
"""One schema's size, in values plus the characters of its strings and keys."""
MAX_PATTERN_LENGTH = 2_000
MAX_PATTERN_PROGRAMS = 100_000
"""Instructions of the RE2 programs of all the distinct patterns of one request's schemas."""
MAX_VALIDATION_DEPTH = 100
"""Schemas applied inside one another while validating (a recursive schema on a deep value)."""
MAX_VALIDATION_WORK = 25_000
"""Steps of one validation: a schema applied, an enum or required entry compared, a pattern matched."""

_MAX_INTEGER_BITS = 1024
"""Larger integers are beyond a double's range, and some cannot even be written as text."""

JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")

# Keywords by what their value must be. Those the validator does not use are checked too,
# so that a schema is either well formed or refused, not half read.
_SUBSCHEMA = (
    "additionalProperties",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_NUMBERS = ("minimum", "maximum", "multipleOf")
_BOUNDS = ("exclusiveMinimum", "exclusiveMaximum")  # a number, or a boolean in draft 4
_STRINGS = ("$ref", "title", "description")
# Subschemas applied to the same value as their parent: a cycle of these never ends.
_SAME_VALUE = ("allOf", "anyOf", "oneOf", "not")


# --- checking a schema when it arrives ----------------------------------------------------


def check_schemas(schemas: Mapping[str, Any]) -> None:
    """Raise InvalidRequest, naming the tool, unless every schema (by tool name) is well formed and in the limits."""
    programs: dict[str, int] = {}
    for tool, schema in schemas.items():
        check = _SchemaCheck(schema, tool, programs)
        check.json_limits()
        check.keywords()
        check.loops()


def check_schema(schema: Any, tool: str) -> None:
    """`check_schemas` for one tool's schema."""
    check_schemas({tool: schema})


class _SchemaCheck:
    def __init__(self, root: Any, tool: str, programs: dict[str, int]) -> None:
        self.root = root
        self.tool = tool
        self.programs = programs
        """The size of each pattern's RE2 program, over all the schemas of a request."""
        self.schemas: dict[int, tuple[dict[str, Any], str]] = {}
        """The schema objects met, by id: the object and where it is."""
        self.same_value: dict[int, list[dict[str, Any]]] = {}

    def fail(self, problem: str, where: str | None = None) -> NoReturn:
        at = f" at {where}" if where else ""
        raise InvalidRequest(f"the schema of tool {self.tool!r}{at}: {problem}")

    def json_limits(self) -> None:
        """Plain JSON, not too deep, not too large: checked without recursion, before anything else."""
        size = 0
        pending: list[tuple[Any, int]] = [(self.root, 1)]

        def too_large() -> NoReturn:
            self.fail(f"larger than the limit of {MAX_SCHEMA_SIZE:,} (values plus characters)")

        while pending:
            node, depth = pending.pop()
            size += 1
            if isinstance(node, (dict, list)):
                if depth > MAX_SCHEMA_DEPTH:
                    self.fail(f"nested more than {MAX_SCHEMA_DEPTH} levels deep")
                for key, item in node.items() if isinstance(node, dict) else enumerate(node):
                    if isinstance(node, dict):
                        if not isinstance(key, str):
                            self.fail(f"an object key is {type(key).__name__}, not a string")
                        size += len(key)
                    pending.append((item, depth + 1))
                    if size + len(pending) > MAX_SCHEMA_SIZE:
                        too_large()
            elif isinstance(node, str):
                size += len(node)
            elif isinstance(node, float) and not math.isfinite(node):
                self.fail(f"{node} is not a JSON number")
            elif isinstance(node, int) and node.bit_length() > _MAX_INTEGER_BITS:
                self.fail("a number is too large")
            elif node is not None and not isinstance(node, (bool, int, float)):
                self.fail(f"a {type(node).__name__} is not a JSON value")
            if size > MAX_SCHEMA_SIZE:
                too_large()

    def keywords(self) -> None:
        """Every schema reachable from the root, through keywords and $refs, has keywords of the right types."""
        pending: list[tuple[Any, str]] = [(self.root, "#")]
        while pending:
            schema, where = pending.pop()
            if isinstance(schema, bool):
                continue
            if not isinstance(schema, dict):
                self.fail(f"expected a schema (an object or a boolean), got {json_type(schema)}", where)
            if id(schema) in self.schemas:
                continue
            self.schemas[id(schema)] = (schema, where)
            same_value: list[dict[str, Any]] = []
            for key, sub, at in self._subschemas(schema, where):
                pending.append((sub, at))
                if key in _SAME_VALUE and isinstance(sub, dict):
                    same_value.append(sub)
            ref = schema.get("$ref")
            if ref is not None:
                target = resolve_ref(self.root, ref)
                if target is None:
                    self.fail(f"$ref {ref!r} does not point to a part of this schema", where)
                pending.append((target, ref))
                if isinstance(target, dict):
                    same_value.append(target)
            self.same_value[id(schema)] = same_value

    def _subschemas(self, schema: dict[str, Any], where: str) -> Iterator[tuple[str, Any, str]]:
        """(keyword, subschema, where) of one schema, whose other keywords are checked on the way."""

        def wrong(key: str, expected: str) -> NoReturn:
            self.fail(f'"{key}" must be {expected}, got {json_type(schema[key])}', where)

        kinds = schema.get("type")
        if kinds is not None:
            names = kinds if isinstance(kinds, list) else [kinds]
            if not names or not all(isinstance(k, str) and k in JSON_TYPES for k in names):
                allowed = f"one of {', '.join(JSON_TYPES)}, or a non-empty array of them"
                self.fail(f'"type" must be {allowed}, got {_shorten(json.dumps(kinds))}', where)
        if "required" in schema:
            required = schema["required"]
            if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
                wrong("required", "an array of property names")
        if "enum" in schema and not isinstance(schema["enum"], list):
            wrong("enum", "an array")
        for key in _COUNTS:
            if key in schema and not (_TYPES["integer"](schema[key]) and schema[key] >= 0):
                wrong(key, "a non-negative integer")
        for key in _NUMBERS:
            if key in schema and not _is_number(schema[key]):
                wrong(key, "a number")
        for key in _BOUNDS:
            if key in schema and not (_is_number(schema[key]) or isinstance(schema[key], bool)):
                wrong(key, "a number")
        for key in _STRINGS:
            if key in schema and not isinstance(schema[key], str):
                wrong(key, "a string")
        if "pattern" in schema:
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                wrong("pattern", "a string")
            self._add_pattern(pattern, where)
        for key in _SUBSCHEMA:
            if key in schema:
                yield key, schema[key], f"{where}/{_escape(key)}"
        if "items" in schema:  # a schema, or in drafts before 2020-12 an array of them
            items = schema["items"]
            for index, item in enumerate(items) if isinstance(items, list) else [(None, items)]:
                yield "items", item, f"{where}/items" + (f"/{index}" if index is not None else "")
        for key in _SUBSCHEMA_MAPS:
            if key in schema:
                if not isinstance(schema[key], dict):
                    wrong(key, "an object whose values are schemas")
                for name, sub in schema[key].items():
                    yield key, sub, f"{where}/{_escape(key)}/{_escape(name)}"
        for key in _SUBSCHEMA_LISTS:
            if key in schema:
                if not isinstance(schema[key], list) or not schema[key]:
                    wrong(key, "a non-empty array of schemas")
                for index, sub in enumerate(schema[key]):
                    yield key, sub, f"{where}/{key}/{index}"

    def _add_pattern(self, pattern: str, where: str) -> None:
        if pattern in self.programs:
            return
        try:
            self.programs[pattern] = compile_pattern(pattern).programsize
        except ValueError as exc:
            self.fail(f'"pattern" {_shorten(pattern)!r} cannot be used: {exc}', where)
        if sum(self.programs.values()) > MAX_PATTERN_PROGRAMS:
            self.fail(
                f"the patterns of the tools' schemas are too complex together (RE2 programs of more than"
                f" {MAX_PATTERN_PROGRAMS:,} instructions)",
                where,
            )

    def loops(self) -> None:
        """No chain of $refs and allOf/anyOf/oneOf/not leads from a schema back to itself."""
        done: set[int] = set()
        for start in self.schemas:
            if start in done:
                continue
            # Depth-first without recursion: the path is a stack of (schema id, its next children).
            path: list[tuple[int, Iterator[dict[str, Any]]]] = [(start, iter(self.same_value.get(start, [])))]
            on_path = {start}
            while path:
                node, children = path[-1]
                child = next(children, None)
                if child is None:
                    path.pop()
                    on_path.discard(node)
                    done.add(node)
                    continue
                key = id(child)
                if key in on_path:
                    ids = [n for n, _ in path]
                    cycle = [*ids[ids.index(key) :], key]
                    self.fail(
                        "a loop of $refs that never reaches a value: " + " -> ".join(self._where(n) for n in cycle)
                    )
                if key not in done:
                    path.append((key, iter(self.same_value.get(key, []))))
                    on_path.add(key)

    def _where(self, key: int) -> str:
        return self.schemas[key][1] if key in self.schemas else "?"


def resolve_ref(root: Any, ref: str) -> Any:
    """The part of `root` a local `$ref` ("#", "#/$defs/name") points to; None when there is none."""
    if not ref.startswith("#"):
        return None
    pointer = unquote(ref[1:])
    if pointer and not pointer.startswith("/"):
        return None  # a named anchor ("#name"), which tool schemas do not use
    node = root
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


# --- patterns -----------------------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors come back as exceptions, not lines on stderr
_RE2_OPTIONS.never_capture = True  # only "does it match": RE2 can use its fastest engine
# Compiling takes time per instruction, and RE2 gives up past this memory: a 20-character
# pattern like \p{L}{100} would otherwise take 100 ms. The re2 module keeps 128 compiled.
_RE2_OPTIONS.max_mem = 1 << 20

# One escape at a time, so that "\\u0041" (an escaped backslash, then "u0041") stays as it is.
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)", re.DOTALL)


def _re2_escape(match: re.Match[str]) -> str:
    escape = match.group(1)
    return f"\\x{{{escape[1:]}}}" if len(escape) == 5 else match.group(0)


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: str) -> Any:
    """A JSON schema `pattern` (ECMA-262) compiled by RE2; ValueError says why it cannot be."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"it is longer than {MAX_PATTERN_LENGTH:,} characters")
    try:
        return re2.compile(_ESCAPE.sub(_re2_escape, pattern), _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "unknown error"
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise ValueError(
            f"{reason} (patterns are matched with RE2, which has no lookaround or backreferences)"
        ) from None
    except UnicodeError:
        raise ValueError("it is not valid Unicode text") from None


# --- validating a value -------------------------------------------------------------------


def validate_json(value: Any, schema: Any, path: str = "arguments") -> list[str]:
    """What is wrong with `value` under `schema`, one message per problem; [] when it fits.

    Covers type (unions included), enum, const, required, properties, additionalProperties,
    items, minItems/maxItems, minimum/maximum (exclusive too), minLength/maxLength, pattern,
    anyOf/oneOf/allOf and local $refs. Other keywords are not checked. The work is bounded
    on any schema, even one `check_schemas` would refuse; a pattern RE2 cannot read in such a
    schema raises InvalidRequest.
    """
    validation = _Validation(schema)
    try:
        problems = validation.validate(value, schema, path, 0)
    except _GaveUp as exc:
        return [str(exc)]
    if len(problems) > _MAX_PROBLEMS:
        problems = [*problems[:_MAX_PROBLEMS], f"... and {len(problems) - _MAX_PROBLEMS} more problems"]
    return problems


_MAX_PROBLEMS = 20
_MAX_LISTED = 10
"""Allowed values or names listed in one message."""
_MATCH_COST_PER_STEP = 1_024
"""Program instructions times characters of text that count as one step of validation."""


class _GaveUp(Exception):
    pass


_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v)),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


class _Validation:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.work = 0
        self._shown: dict[int, str] = {}
        self._targets: dict[str, Any] = {}

    def shown(self, value: Any) -> str:
        """A schema's value in a message, shortened, written once however often it is shown."""
        if id(value) not in self._shown:
            self._shown[id(value)] = _shorten(json.dumps(value, ensure_ascii=False))
        return self._shown[id(value)]

    def spend(self, steps: int, path: str) -> None:
        self.work += steps
        if self.work > MAX_VALIDATION_WORK:
            raise _GaveUp(f"{path}: the value is too large or the schema too complex to check")

    def validate(self, value: Any, schema: Any, path: str, depth: int) -> list[str]:
        self.spend(1, path)
        if depth > MAX_VALIDATION_DEPTH:
            raise _GaveUp(f"{path}: nested more than {MAX_VALIDATION_DEPTH} schemas deep")
        if schema is False:
            return [f"{path}: no value is allowed here"]
        if not isinstance(schema, dict):
            return []
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref not in self._targets:
                self._targets[ref] = resolve_ref(self.root, ref)
            target = self._targets[ref]
            if target is not None:
                return self.validate(value, target, path, depth + 1)
        errors: list[str] = []
        kinds = schema.get("type")
        names = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
        if names and not any(_TYPES[k](value) if k in _TYPES else True for k in names if isinstance(k, str)):
            return [f"{path}: expected {' or '.join(map(str, names))}, got {json_type(value)}"]
        enum = schema.get("enum")
        if isinstance(enum, list):
            self.spend(len(enum), path)
            if not any(_same(value, e) for e in enum):
                errors.append(f"{path}: must be one of {_listed(map(self.shown, enum), len(enum))}")
        if "const" in schema and not _same(value, schema["const"]):
            errors.append(f"{path}: must be {self.shown(schema['const'])}")
        all_of = schema.get("allOf")
        for sub in all_of if isinstance(all_of, list) else []:
            errors += self.validate(value, sub, path, depth + 1)
        for keyword in ("anyOf", "oneOf"):  # oneOf is checked as anyOf: exclusivity rarely matters here
            branches = schema.get(keyword)
            if isinstance(branches, list) and branches:
                found = []
                for branch in branches:
                    problems = self.validate(value, branch, path, depth + 1)
                    if not problems:
                        break
                    found.append(_shorten(problems[0]))
                else:
                    errors.append(f"{path}: matches none of the allowed forms ({'; '.join(found)})")
        if _TYPES["number"](value):
            errors += _check_number(value, schema, path)
        elif isinstance(value, str):
            errors += self._check_string(value, schema, path)
        elif isinstance(value, list):
            errors += self._check_array(value, schema, path, depth)
        elif isinstance(value, dict):
            errors += self._check_object(value, schema, path, depth)
        return errors

    def _check_string(self, value: str, schema: dict[str, Any], path: str) -> list[str]:
        errors = []
        if _is_count(schema.get("minLength")) and len(value) < schema["minLength"]:
            errors.append(f"{path}: must be at least {schema['minLength']} characters long")
        if _is_count(schema.get("maxLength")) and len(value) > schema["maxLength"]:
            errors.append(f"{path}: must be at most {schema['maxLength']} characters long")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                compiled = compile_pattern(pattern)
            except ValueError as exc:
                raise InvalidRequest(f"the schema's pattern {_shorten(pattern)!r} cannot be used: {exc}") from None
            # RE2's cost is linear in the text, but times the program's size when its DFA gives up.
            self.spend(1 + compiled.programsize * len(value) // _MATCH_COST_PER_STEP, path)
            try:
                matched = compiled.search(value) is not None
            except UnicodeError:
                return [*errors, f"{path}: is not valid Unicode text"]
            if not matched:
                errors.append(f"{path}: must match the pattern {_shorten(pattern)!r}")
        return errors

    def _check_array(self, value: list[Any], schema: dict[str, Any], path: str, depth: int) -> list[str]:
        errors = []
        if _is_count(schema.get("minItems")) and len(value) < schema["minItems"]:
            errors.append(f"{path}: must have at least {schema['minItems']} items")
        if _is_count(schema.get("maxItems")) and len(value) > schema["maxItems"]:
            errors.append(f"{path}: must have at most {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, (dict, bool)):
            for index, item in enumerate(value):
                errors += self.validate(item, items, f"{path}[{index}]", depth + 1)
        return errors

    def _check_object(self, value: dict[str, Any], schema: dict[str, Any], path: str, depth: int) -> list[str]:
        errors = []
        required = schema.get("required")
        if isinstance(required, list):
            self.spend(len(required), path)
            for name in required:
                if isinstance(name, str) and name not in value:
                    errors.append(f"{path}: the required property {name!r} is missing")
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += self.validate(item, properties[name], f"{path}.{_shorten(name, 64)}", depth + 1)
            elif extra is False:
                allowed = _listed(iter(properties), len(properties)) or "none"
                errors.append(f"{path}: unexpected property {_shorten(name)!r} (allowed: {allowed})")
            elif isinstance(extra, dict):
                errors += self.validate(item, extra, f"{path}.{_shorten(name, 64)}", depth + 1)
        return errors


def _check_number(value: float, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    low, high = _number(schema, "minimum"), _number(schema, "maximum")
    if low is not None and value < low:
        errors.append(f"{path}: must be at least {low}")
    if high is not None and value > high:
        errors.append(f"{path}: must be at most {high}")
    low, high = _number(schema, "exclusiveMinimum"), _number(schema, "exclusiveMaximum")
    if low is not None and value <= low:
        errors.append(f"{path}: must be greater than {low}")
    if high is not None and value >= high:
        errors.append(f"{path}: must be less than {high}")
    return errors


def _number(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    return value if _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _same(a: Any, b: Any) -> bool:
    # In Python True == 1; in JSON a boolean is never a number.
    return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)


def _listed(items: Iterator[str], count: int) -> str:
    shown = ", ".join(_shorten(item) for item in itertools.islice(items, _MAX_LISTED))
    return shown + (f" (and {count - _MAX_LISTED} more)" if count > _MAX_LISTED else "")


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _escape(key: str) -> str:
    """`key` as one step of a JSON pointer."""
    return key.replace("~", "~0").replace("/", "~1")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__
