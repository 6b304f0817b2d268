"""Runners defined in the config file: any command-line tool, without writing Python.

A `[runners.NAME]` table with a `command` defines one (the README's "Runners defined in
configuration" has the whole schema and a worked example):

    [runners.mytool]
    command = ["mytool", "--model", "{model}", "--system", "{system}", "--json"]
    output = "jsonl"
    models = ["small", "large"]
    default_model = "small"
    version_command = ["mytool", "--version"]

    [runners.mytool.jsonl]
    delta = { path = "delta.text", type = "delta" }
    session_id = "session"
    done = { type = "end" }

    [runners.mytool.jsonl.usage]
    input_tokens = "usage.input"

`command` is an argv template. `{model}`, `{system}` and `{prompt}` are replaced, and `{{x}}`
stands for a literal `{x}`. An argument that is only a placeholder whose value is empty is
dropped, and with it the option right before it, so `"--system", "{system}"` disappears when
there is no system prompt (`--system={system}` likewise). The prompt goes on stdin unless
`{prompt}` appears; as an argument it is refused above 128 KiB (what Linux allows one
argument), and one starting with "-" gets a leading space so the tool cannot read it as an
option. Without `{system}` the system prompt is put in front of the prompt.

`output = "text"` passes stdout on as it arrives. `output = "jsonl"` reads one JSON value per
line and picks fields by dotted path (`choices.0.delta.content`), each optionally only from
events whose `type` (or the field `type_key` names) is one of the given values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from .. import process
from ..config import DEFINITION_KEYS, RunnerSettings, defined_runner_tables, runner_settings
from ..errors import (
    AuthenticationError,
    BinaryNotFound,
    ConfigError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    UnsupportedFeature,
)
from ..prompting import flatten_conversation, with_system_prompt
from ..types import Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, Runner, as_number

PLACEHOLDERS = ("model", "system", "prompt")
# Linux refuses a single argument of 32 pages (MAX_ARG_STRLEN), its terminating NUL included.
ARG_LIMIT = 128 * 1024
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
JSONL_FIELDS = ("delta", "text", "thinking", "session_id", "model", "cost_usd", "error", "done")
JSONL_KEYS = ("type_key", *JSONL_FIELDS, "usage")

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}|\{(\w+)\}")
_ALONE = re.compile(r"\{(\w+)\}")
_OPTION_EQUALS = re.compile(r"(-[^={}]+)=\{(\w+)\}")
_INDEX = re.compile(r"-?\d+")

_AUTH = re.compile(
    r"\b40[13]\b|unauthori[sz]ed|unauthenticated|not (logged|signed) in|authentication|forbidden|"
    r"invalid.{0,20}(api.?key|token|credentials)",
    re.I,
)
_RATE = re.compile(r"\b429\b|rate.?limit|too many requests|quota", re.I)
_CONTEXT = re.compile(r"context.(length|window)|too many tokens|prompt is too long|maximum context", re.I)
_MODEL = re.compile(r"unknown model|invalid model|model\b.{0,80}(not found|does not exist|not available)", re.I)
_UNAVAILABLE = re.compile(
    r"\b5\d\d\b|overloaded|unavailable|connection (refused|error|reset)|timed out|ECONNREFUSED", re.I
)


# --- the definition ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """Where one value is in an event: a dotted path, only in events of the given types."""

    path: tuple[str, ...] | None
    types: tuple[str, ...] = ()

    def find(self, event: Any, kind: Any) -> Any:
        """The value, or None when the event is of another type or lacks the path."""
        if self.types and kind not in self.types:
            return None
        return True if self.path is None else lookup(event, self.path)


@dataclass(frozen=True)
class JsonlSpec:
    type_key: tuple[str, ...] = ("type",)
    picks: Mapping[str, Pick] = field(default_factory=dict)
    """JSONL_FIELDS → where each is found (only those configured)."""
    usage: Mapping[str, Pick] = field(default_factory=dict)


@dataclass(frozen=True)
class Definition:
    name: str
    where: str
    """`file: [runners.NAME]`, for messages."""
    command: tuple[str, ...]
    output: Literal["text", "jsonl"]
    jsonl: JsonlSpec | None
    models: tuple[str, ...]
    default_model: str | None
    version_command: tuple[str, ...] | None
    display_name: str
    install_hint: str

    def takes(self, placeholder: str) -> bool:
        return any(m.group(2) == placeholder for arg in self.command for m in _PLACEHOLDER.finditer(arg))


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path; a segment that is a number indexes a list."""
    for segment in path:
        if isinstance(value, dict):
            value = value.get(segment)
        elif isinstance(value, list) and _INDEX.fullmatch(segment):
            index = int(segment)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            return None
    return value


def parse_definition(name: str, table: Mapping[str, Any], path: Path) -> Definition:
    """A [runners.NAME] table with a `command`, checked; ConfigError names file, table and key."""
    where = f"{path}: [runners.{name}]"
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: a runner's name is lower-case letters, digits and underscores, starting with a letter",
            hint=f"name the table e.g. [runners.{re.sub(r'[^a-z0-9_]', '_', name.lower()).strip('_') or 'my_tool'}]",
        )
    allowed = {*RunnerSettings.__dataclass_fields__, *DEFINITION_KEYS}
    if unknown := sorted(set(table) - allowed):
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")

    command = _strings(table.get("command"), f"{where} command", "a list of strings, the program first")
    if not command or not command[0]:
        raise ConfigError(f"{where} command: expected a list of strings, the program first, got {command!r}")
    if _PLACEHOLDER.search(command[0]):
        raise ConfigError(f"{where} command: the program itself cannot be a placeholder, got {command[0]!r}")
    for arg in command:
        for match in _PLACEHOLDER.finditer(arg):
            if match.group(2) is not None and match.group(2) not in PLACEHOLDERS:
                raise ConfigError(
                    f"{where} command: unknown placeholder {{{match.group(2)}}} in {arg!r}; "
                    f"expected {', '.join('{' + p + '}' for p in PLACEHOLDERS)} (write {{{{x}}}} for a literal {{x}})"
                )

    output = table.get("output", "text")
    if output not in ("text", "jsonl"):
        raise ConfigError(f'{where} output: expected "text" or "jsonl", got {output!r}')
    jsonl: JsonlSpec | None = None
    if output == "jsonl":
        if "jsonl" not in table:
            raise ConfigError(
                f'{where}: output = "jsonl" needs a [runners.{name}.jsonl] table with the paths to read',
                hint='e.g. delta = "delta.text", the path of each piece of the answer',
            )
        jsonl = _jsonl_spec(table["jsonl"], f"{path}: [runners.{name}.jsonl]")
    elif "jsonl" in table:
        raise ConfigError(f'{where} jsonl: only read with output = "jsonl" (output is {output!r})')

    models = _strings(table.get("models", []), f"{where} models", "a list of model names")
    version = table.get("version_command")
    version_command = _strings(version, f"{where} version_command", "a list of strings, the program first")
    if version is not None and (not version_command or not version_command[0]):
        raise ConfigError(f"{where} version_command: expected a list of strings, the program first, got {version!r}")
    texts = {key: table.get(key) for key in ("default_model", "display_name", "install_hint")}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where} {key}: expected a string, got {value!r}")
    return Definition(
        name=name,
        where=where,
        command=tuple(command),
        output=output,
        jsonl=jsonl,
        models=tuple(models),
        default_model=texts["default_model"] or None,
        version_command=tuple(version_command) if version is not None else None,
        display_name=texts["display_name"] or name,
        install_hint=texts["install_hint"] or "",
    )


def _strings(value: Any, where: str, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return list(value)


def _jsonl_spec(table: Any, where: str) -> JsonlSpec:
    if not isinstance(table, dict):
        raise ConfigError(f'{where}: expected a table of JSON paths, e.g. delta = "delta.text"')
    if unknown := sorted(set(table) - set(JSONL_KEYS)):
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(JSONL_KEYS)}")
    if "delta" not in table and "text" not in table:
        raise ConfigError(
            f"{where}: no `delta` and no `text`: give the path of the answer's pieces (delta) or of the whole answer"
        )
    type_key = _path(table.get("type_key", "type"), f"{where} type_key")
    picks = {key: _pick(table[key], f"{where} {key}", key == "done") for key in JSONL_FIELDS if key in table}
    usage: dict[str, Pick] = {}
    if "usage" in table:
        counts = table["usage"]
        if not isinstance(counts, dict):
            raise ConfigError(f'{where} usage: expected a table, e.g. usage = {{ input_tokens = "usage.input" }}')
        if unknown := sorted(set(counts) - set(USAGE_FIELDS)):
            raise ConfigError(f"{where} usage: unknown key {unknown[0]!r}; expected one of {', '.join(USAGE_FIELDS)}")
        usage = {key: _pick(value, f"{where} usage.{key}", False) for key, value in counts.items()}
    return JsonlSpec(type_key=type_key, picks=picks, usage=usage)


def _pick(value: Any, where: str, condition_only: bool) -> Pick:
    """A path string, or a table {path = "...", type = "..." or [...]}."""
    if isinstance(value, str):
        return Pick(_path(value, where))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a dotted path or a table {{ path = ..., type = ... }}, got {value!r}")
    if unknown := sorted(set(value) - {"path", "type"}):
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected path, type")
    types = value.get("type", [])
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ConfigError(f"{where} type: expected a string or a list of strings, got {value.get('type')!r}")
    if "path" not in value and not (condition_only and types):
        need = "a `path` or a `type`" if condition_only else "a `path`"
        raise ConfigError(f"{where}: expected {need}")
    path = _path(value["path"], f"{where} path") if "path" in value else None
    return Pick(path, tuple(types))


def _path(value: Any, where: str) -> tuple[str, ...]:
    segments = value.split(".") if isinstance(value, str) else []
    if not segments or not all(segments):
        raise ConfigError(f'{where}: expected a dotted path like "delta.text" or "choices.0.text", got {value!r}')
    return tuple(segments)


def runner_classes(data: dict[str, Any], path: Path, taken: Mapping[str, str]) -> dict[str, type[Runner]]:
    """A runner class per table of the file that defines one; `taken` maps names in use to their runner."""
    classes: dict[str, type[Runner]] = {}
    for name, table in defined_runner_tables(data).items():
        if name in taken:
            owner = "" if taken[name] == name else f" (it names {taken[name]})"
            raise ConfigError(
                f"{path}: [runners.{name}] command: {name!r} is already a runner's name{owner}; "
                "a runner of your own needs another name",
                hint=f"rename the table, e.g. [runners.my_{name.replace('-', '_')}]",
            )
        definition = parse_definition(name, table, path)
        runner_settings(name, data)  # timeout, env, ... are checked now, not at first use
        classes[name] = runner_class(definition)
    return classes


def runner_class(definition: Definition) -> type[CliRunner]:
    d = definition
    jsonl = d.jsonl
    picks = jsonl.picks if jsonl else {}
    attributes: dict[str, Any] = {
        "__doc__": f"{d.display_name}: the runner defined in {d.where}.",
        "definition": d,
        "name": d.name,
        "display_name": d.display_name,
        "binary": os.path.expanduser(d.command[0]),
        "default_model": d.default_model,
        "install_hint": d.install_hint,
        "framing": "text" if jsonl is None else "lines",
        # A JSON-lines tool whose end is known must reach it; otherwise a clean exit is the end.
        "needs_finished_output": "done" in picks,
        "builtin_models": tuple((model, ()) for model in d.models),
        "capabilities": Capabilities(
            streaming=True,
            token_streaming=jsonl is None or "delta" in picks,
            thinking="thinking" in picks,
            system_prompt=True,
            usage=bool(jsonl and jsonl.usage),
            cost="cost_usd" in picks,
            prompt_via_stdin=not d.takes("prompt"),
        ),
    }
    return cast("type[CliRunner]", type(f"Configured_{d.name}", (ConfiguredRunner,), attributes))


# --- the command line ----------------------------------------------------------------------


def render_command(template: tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    """argv from the template: placeholders filled, empty ones dropped with their option."""
    argv: list[str] = []
    option_at: int | None = None  # where in argv the literal option just before this argument is
    options_ended = False  # after a literal "--" nothing reads as an option
    for arg in template:
        alone = _ALONE.fullmatch(arg)
        joined = _OPTION_EQUALS.fullmatch(arg)
        name = alone.group(1) if alone else joined.group(2) if joined else None
        if name is not None and not values[name]:
            if alone and option_at is not None:
                del argv[option_at]
            option_at = None
            continue
        value = _PLACEHOLDER.sub(lambda m: "{" + m.group(1) + "}" if m.group(1) else values[m.group(2)], arg)
        if alone and name != "model" and value.startswith("-") and not options_ended:
            value = " " + value
        if len(value.encode()) >= ARG_LIMIT:
            filled = {m.group(2) for m in _PLACEHOLDER.finditer(arg)}
            what = "the prompt" if "prompt" in filled else "the system prompt" if "system" in filled else "an argument"
            raise UnsupportedFeature(
                f"{what} is over the 128 KiB one command-line argument may hold",
                hint="remove {prompt} from `command` so that the prompt goes on stdin" if "prompt" in filled else None,
            )
        is_option = not _PLACEHOLDER.search(arg) and arg.startswith("-") and arg not in ("-", "--")
        option_at = len(argv) if is_option else None
        options_ended = options_ended or arg == "--"
        argv.append(value)
    return argv


# --- reading the output --------------------------------------------------------------------


def classify(message: str) -> RunnerError:
    """The typed error for what the tool said in its output, by the words it used."""
    if _AUTH.search(message):
        return AuthenticationError(message)
    if _RATE.search(message):
        return RateLimitError(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if _MODEL.search(message):
        return ModelNotFound(message)
    if _UNAVAILABLE.search(message):
        return ServiceUnavailable(message)
    return RunnerError(message)


class TextParser(Parser):
    """Plain text as it arrives; the newline(s) that end the output are not part of the answer."""

    def __init__(self, model: str | None) -> None:
        super().__init__()
        self.model = model
        self._held = ""

    def feed(self, line: str) -> list[ChatChunk]:
        text = self._held + process.strip_ansi(line)
        body = text.rstrip("\r\n")
        self._held = text[len(body) :]
        return [ChatChunk(delta=body)] if body else []

    def close(self) -> list[ChatChunk]:
        return [ChatChunk(finish_reason="stop", model=self.model)]


class JsonlParser(Parser):
    """One JSON value per line; fields picked by the definition's paths, the rest skipped."""

    def __init__(self, spec: JsonlSpec, model: str | None) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.session_id: str | None = None
        self.cost_usd: float | None = None
        self.usage: dict[str, int] = {}
        self._sent_text = False

    def feed(self, line: str) -> list[ChatChunk]:
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            return []  # log lines and other noise on stdout (RecursionError: nested too deep to read)
        kind = lookup(event, self.spec.type_key)

        def find(key: str) -> Any:
            pick = self.spec.picks.get(key)
            return pick.find(event, kind) if pick else None

        chunks: list[ChatChunk] = []
        if isinstance(thinking := find("thinking"), str) and thinking:
            chunks.append(ChatChunk(thinking=thinking))
        if isinstance(delta := find("delta"), str) and delta:
            chunks.append(ChatChunk(delta=delta))
            self._sent_text = True
        if isinstance(text := find("text"), str) and text and not self._sent_text:
            chunks.append(ChatChunk(delta=text))  # the whole answer, when it came in no pieces
            self._sent_text = True
        if isinstance(session := find("session_id"), (str, int)) and not isinstance(session, bool) and session != "":
            self.session_id = str(session)
        if isinstance(model := find("model"), str) and model:
            self.model = model
        if (cost := _number(find("cost_usd"))) is not None:
            self.cost_usd = float(cost)
        for key, pick in self.spec.usage.items():
            if (count := _number(pick.find(event, kind))) is not None:
                self.usage[key] = int(count)
        if self.error is None and (message := _message(find("error"))):
            self.error = classify(message)
        if find("done"):
            self.finished = True
        return chunks

    def close(self) -> list[ChatChunk]:
        usage = Usage(**self.usage) if self.usage else None
        final = ChatChunk(
            finish_reason="stop", usage=usage, session_id=self.session_id, model=self.model, cost_usd=self.cost_usd
        )
        return [final]


def _number(value: Any) -> float | None:
    """A finite number, or a string that holds one; None for anything else."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    return value if as_number(value) is not None else None


def _message(value: Any) -> str:
    if value is None or value is False or value == "":
        return ""
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return str(value["message"])
    return value if isinstance(value, str) else json.dumps(value)


# --- the runner ----------------------------------------------------------------------------


class ConfiguredRunner(CliRunner):
    """The runner of a [runners.NAME] table; `runner_class` makes one subclass per table."""

    definition: Definition

    def check_request(self, request: ChatRequest) -> None:
        d = self.definition
        if request.session_id:
            raise UnsupportedFeature(f"{d.display_name} keeps no sessions that llmrun can resume", runner=self.name)
        if request.model and request.model != self.default_model and not d.takes("model"):
            raise UnsupportedFeature(
                f"{d.display_name} cannot be asked for a model: its command has no {{model}}",
                runner=self.name,
                hint=f'add e.g. "--model", "{{model}}" to `command` in {d.where}',
            )
        super().check_request(request)

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        d = self.definition
        prompt = flatten_conversation(request.conversation())
        system = request.system_prompt() or ""
        if system and not d.takes("system"):
            prompt, system = with_system_prompt(prompt, system), ""
        values = {"model": self.model_for(request) or "", "system": system, "prompt": prompt}
        try:
            argv = render_command(d.command, values)
        except RunnerError as exc:
            raise exc.with_process(runner=self.name, exit_code=None, stderr="") from None
        argv[0] = binary
        stdin = None if d.takes("prompt") else prompt.encode()
        return process.Invocation(argv=argv, stdin=stdin, cwd=request.cwd)

    def new_parser(self, request: ChatRequest) -> Parser:
        spec = self.definition.jsonl
        model = self.model_for(request)
        return TextParser(model) if spec is None else JsonlParser(spec, model)

    def resolve_binary(self) -> str:
        try:
            return super().resolve_binary()
        except BinaryNotFound as exc:
            if not self.install_hint:
                variable = f"LLMRUN_{self.name.upper()}_BIN"
                exc.hint = (
                    f"install {self.binary!r}, correct `command` in {self.definition.where}, or point {variable} at it"
                )
            raise

    def version_argv(self, binary: str) -> list[str] | None:
        """`version_command`, run with the resolved program when it names the same one."""
        version = self.definition.version_command
        if version is None:
            return None
        first = os.path.expanduser(version[0])
        return [binary if first == self.binary else first, *version[1:]]
