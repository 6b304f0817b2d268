"""Simon Willison's `llm`, one `llm prompt` per request.

The prompt goes over stdin (llm reads a piped stdin as the whole prompt when no positional
one is given), the model with `--model`, the system prompt with `--system` (through a
fragment file, `--sf`, when it is long). llm streams the answer to stdout as the model
produces it, even through a pipe, and ends it with one newline of its own, which is not
part of the answer. Everything else goes to stderr: the reasoning of models that show it,
the token counts (`--usage`, always asked for) and errors (`Error: …`, exit code 1).
stderr is read once llm has exited, so reasoning arrives as one thinking chunk just before
the final chunk, not as a stream.

Logging and conversations: llm stores prompts in its own log database, and conversations
live only there. By default llmrun passes `--no-log`, so requests leave no trace and carry
no session id. A request that names a session continues that llm conversation (`--cid`)
and is logged, so the conversation keeps growing; `options={"log": True}` logs a new
request into llm's database as well, and its final chunk then carries the id of the
conversation it started (looked up afterwards with `llm logs list --json`, one more short
llm run). `options={"database": PATH}` uses another log database, for logging and
conversations alike.

Health: `llm --version`; whether the default model can run is told without a prompt: the
model's key name and variable come from `llm models list --options`, and the key counts as
present when that variable is set or `llm keys list` names it.

Options (`ChatRequest.options`): `log`, `database`, `model_options` (a dict passed as
`-o key value`, e.g. `{"delay": 0.1}` for llm-markov), `hide_reasoning`, and `extra_args`
(a list appended to the command; the settings' `extra_args` go right after `prompt` too).
The request's `temperature`, `max_tokens`, `top_p`, `seed`, `frequency_penalty` and
`presence_penalty` become the model options of those names (`-o`), which llm's OpenAI
models take; a model without one refuses the request (UnsupportedFeature).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, ClassVar

from .. import images, private, process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..prompting import flatten_conversation, new_turns
from ..types import Capabilities, ChatChunk, ChatRequest, ImagePart, Usage
from .base import CliRunner, Parser, _last_line, parse_count

# Longer system prompts go through a file: argv is visible to every user and bounded.
SYSTEM_PROMPT_ARGV_LIMIT = 16 * 1024
LOGIN_HINT = "run `llm keys set <key name>`, or set the model's key variable (e.g. OPENAI_API_KEY)"
ULID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_USAGE = re.compile(r"^Token usage:\s*(?P<rest>.*)$")
_COUNT = re.compile(r"(?P<number>[\d,]+) (?P<kind>input|output)\b")
_STATUS = re.compile(r"Error code: (\d{3})\b")
_KEY_NAME = re.compile(r"llm keys set (\S+?)'")
_KEY_VAR = re.compile(r"set the (\w+) environment variable")
_CONTEXT = re.compile(r"context.length|maximum context|too many tokens|prompt is too long", re.I)
_UNREACHABLE = re.compile(r"Connection error|connection refused|timed out|Temporary failure", re.I)
_UNSUPPORTED = re.compile(
    r"Extra inputs are not permitted|does not support|not supported|Input should be|is not a valid", re.I
)


# --- reading llm's stderr --------------------------------------------------------------------


def stderr_lines(stderr: str) -> list[str]:
    """stderr without colours (click adds them on a terminal) and without blank lines."""
    return [line.rstrip() for line in _ANSI.sub("", stderr).splitlines() if line.strip()]


def usage_from(line: str) -> Usage:
    """The counts in llm's `Token usage: 1,234 input, 56 output, {details}` line."""
    rest = line.partition(":")[2]
    counts = {m.group("kind"): parse_count(m.group("number")) or 0 for m in _COUNT.finditer(rest)}
    details: dict[str, Any] = {}
    if (start := rest.find("{")) >= 0:
        try:
            parsed = json.loads(rest[start:])
        except (ValueError, RecursionError):
            parsed = None
        details = parsed if isinstance(parsed, dict) else {}
    input_tokens = counts.get("input", 0)
    cache_read = cache_write = 0
    # OpenAI's plugin counts cached tokens inside the input; Anthropic's next to it.
    prompt_details = details.get("prompt_tokens_details")
    if isinstance(prompt_details, dict) and isinstance(prompt_details.get("cached_tokens"), int):
        cache_read = prompt_details["cached_tokens"]
        input_tokens = max(0, input_tokens - cache_read)
    if isinstance(details.get("cache_read_input_tokens"), int):
        cache_read = details["cache_read_input_tokens"]
    if isinstance(details.get("cache_creation_input_tokens"), int):
        cache_write = details["cache_creation_input_tokens"]
    completion_details = details.get("completion_tokens_details")
    reasoning = 0
    if isinstance(completion_details, dict) and isinstance(completion_details.get("reasoning_tokens"), int):
        reasoning = completion_details["reasoning_tokens"]
    return Usage(
        input_tokens=input_tokens,
        output_tokens=counts.get("output", 0),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def error_text(stderr: str) -> str:
    """llm's `Error: …` message (it may run over several lines), without the prefix."""
    lines = stderr_lines(stderr)
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Error: "):
            text = "\n".join([lines[index][len("Error: ") :], *lines[index + 1 :]])
            # click prints a ClickException's message; a repr'd one keeps its quotes.
            return text.strip().strip("'\"").strip()
    return ""


def classify(message: str) -> RunnerError:
    """The typed error for llm's message, the HTTP status of the model's API deciding first."""
    match = _STATUS.search(message)
    status = int(match.group(1)) if match else None
    if "No key found" in message or status in (401, 403):
        return AuthenticationError(message, hint=key_hint(message))
    if status == 429:
        return RateLimitError(message)
    if status is not None and status >= 500:
        return ServiceUnavailable(message)
    if message.startswith("No conversation found"):
        return SessionNotFound(message)
    if "Unknown model" in message or (status == 404 and "model" in message.lower()):
        return ModelNotFound(message, hint="`llm models list` shows the models llm knows")
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if _UNREACHABLE.search(message):
        return ServiceUnavailable(message)
    if _UNSUPPORTED.search(message):
        return UnsupportedFeature(message)
    return RunnerError(message)


def key_hint(message: str) -> str:
    name = _KEY_NAME.search(message)
    variable = _KEY_VAR.search(message)
    if name and variable:
        return f"run `llm keys set {name.group(1)}`, or set {variable.group(1)}"
    if name:
        return f"run `llm keys set {name.group(1)}`"
    return LOGIN_HINT


def ulid_floor(seconds: float) -> str:
    """The smallest ULID of that moment, in llm's lower case: log ids from then on sort after it."""
    millis = max(0, int(seconds * 1000))
    chars = []
    for _ in range(10):
        chars.append(ULID_ALPHABET[millis & 31])
        millis >>= 5
    return "".join(reversed(chars)) + "0" * 16


# --- the parser ------------------------------------------------------------------------------


class LlmParser(Parser):
    """llm's answer as text pieces; usage and reasoning from stderr once llm has exited."""

    def __init__(self, *, model: str | None = None, session_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.session_id = session_id
        self._held = ""  # a trailing newline: llm's own, unless more text follows

    def feed(self, line: str) -> list[ChatChunk]:
        text = self._held + line
        self._held = "\n" if text.endswith("\n") else ""
        text = text[:-1] if self._held else text
        return [ChatChunk(delta=text)] if text else []

    def close(self) -> list[ChatChunk]:
        lines = _ANSI.sub("", self.stderr).splitlines()
        usage_at = next((i for i in range(len(lines) - 1, -1, -1) if _USAGE.match(lines[i])), None)
        chunks: list[ChatChunk] = []
        usage = Usage()
        if usage_at is not None:
            usage = usage_from(lines[usage_at])
            # Before the usage line llm prints the model's reasoning, when it shows any.
            if reasoning := "\n".join(lines[:usage_at]).strip():
                chunks.append(ChatChunk(thinking=reasoning))
        chunks.append(ChatChunk(finish_reason="stop", usage=usage, session_id=self.session_id, model=self.model))
        return chunks


# --- the runner ------------------------------------------------------------------------------


class LlmRunner(CliRunner):
    name = "llm"
    option_names = frozenset({"log", "database", "model_options", "hide_reasoning", "extra_args"})
    display_name = "llm"
    binary = "llm"
    aliases = ("llm-cli", "llm_cli")
    framing = "text"
    extra_args_at = 2  # after `prompt`
    install_hint = "pip install llm"
    # Reasoning on stderr and the logging this runner reads both arrived in 0.32.
    min_version = "0.32"
    # With it set llm prints Python tracebacks instead of its `Error: …` line.
    env_remove = ("LLM_RAISE_ERRORS",)
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=False,
        sessions=True,
        system_prompt=True,
        images=True,
        json_schema=True,
        usage=True,
        model_discovery=True,
    )
    # No default model: llm's own default (`llm models default`) chooses.
    # Model options of llm's OpenAI models; a model without one refuses it, so none is lost.
    honoured_parameters: ClassVar[dict[str, str]] = {
        name: f"-o {name} (for models that take it)"
        for name in ("temperature", "max_tokens", "top_p", "seed", "frequency_penalty", "presence_penalty")
    }

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        turns = new_turns(request.messages) if request.session_id else request.conversation()
        prompt = flatten_conversation(turns)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "prompt", "--usage"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if self._logs(request):
            argv.append("--log")
            if options.get("database"):
                argv.append(f"--database={options['database']}")
        else:
            argv.append("--no-log")
        if session := self.session_to_resume(request):
            argv.append(f"--cid={session}")
        temp_files: list[str] = []
        try:
            if system := request.system_prompt():
                if len(system.encode()) <= SYSTEM_PROMPT_ARGV_LIMIT:
                    argv.append(f"--system={system}")
                else:
                    temp_files.append(_write_temp(system.encode(), ".txt"))
                    argv.append(f"--sf={temp_files[-1]}")
            for image in (image for message in turns for image in message.images):
                argv.append(f"--attachment={self._attachment(image, temp_files)}")
        except BaseException:
            for path in temp_files:
                os.remove(path)
            raise
        model_options = dict(options.get("model_options") or {})
        for name in self.honoured_parameters:
            if (value := getattr(request, name)) is not None:
                model_options.setdefault(name, value)
        for key, value in model_options.items():
            argv += ["--option", str(key), _option_value(value)]
        if request.json_schema is not None:
            argv.append("--schema=" + json.dumps(request.json_schema))
        if options.get("hide_reasoning"):
            argv.append("--hide-reasoning")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def _attachment(self, image: ImagePart, temp_files: list[str]) -> str:
        """A private file of the image's bytes; a URL or path of a library caller goes as it is
        (the daemon lets no client send one)."""
        if image.url is not None and not images.is_data_url(image.url):
            return image.url
        try:
            raw, media_type = images.image_bytes(image)
        except ValueError as exc:
            raise UnsupportedFeature(str(exc), runner=self.name) from None
        temp_files.append(images.write_image_file(raw, mimetypes.guess_extension(media_type or "") or ".bin"))
        return temp_files[-1]

    @staticmethod
    def _logs(request: ChatRequest) -> bool:
        return bool(request.session_id or request.options.get("log") or request.options.get("database"))

    def new_parser(self, request: ChatRequest) -> Parser:
        return LlmParser(model=self.model_for(request), session_id=request.session_id)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        started = time.time()
        async with aclosing(super().stream(request)) as chunks:
            async for chunk in chunks:
                if chunk.is_final and chunk.session_id is None and self._logs(request):
                    conversation = await self._conversation_of_run(request, started)
                    chunk = chunk.model_copy(update={"session_id": conversation})
                yield chunk

    async def _conversation_of_run(self, request: ChatRequest, started: float) -> str | None:
        """The conversation the run just logged: its prompt, logged since it started."""
        argv = [self.resolve_binary(), "logs", "list", "--json", "--count=0", f"--id-gte={ulid_floor(started - 1)}"]
        if request.options.get("database"):
            argv.append(f"--database={request.options['database']}")
        try:
            result = await process.run_command(argv, env=self.env, env_remove=self.env_remove, cwd=request.cwd)
            rows = json.loads(result.stdout)
        except (RunnerError, ValueError, RecursionError):
            return None
        prompt = flatten_conversation(request.conversation())
        matches = [
            row
            for row in (rows if isinstance(rows, list) else [])
            if isinstance(row, dict) and row.get("prompt") == prompt and isinstance(row.get("conversation_id"), str)
        ]
        return str(max(matches, key=lambda row: str(row.get("id")))["conversation_id"]) if matches else None

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        if message := error_text(stderr):
            return classify(message)
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        def llm(*args: str) -> Any:
            return process.run_command([binary, *args], env=self.env, env_remove=self.env_remove)

        model = self.default_model
        if model is None:
            default, stored = await asyncio.gather(llm("models", "default"), llm("keys", "list"))
            model = default.stdout.strip()
            if default.returncode != 0 or not model:
                return None, f"`llm models default` failed: {_last_line(default.stderr)}"
            described = await llm("models", "list", "--options", f"--model={model}")
        else:
            described, stored = await asyncio.gather(
                llm("models", "list", "--options", f"--model={model}"), llm("keys", "list")
            )
        if not described.stdout.strip():
            return None, f"llm does not know the model {model!r}"
        key_name = re.search(r"^\s+key: (\S+)", described.stdout, re.M)
        if key_name is None:
            return True, f"{model} needs no key"
        variable = re.search(r"^\s+env_var: (\S+)", described.stdout, re.M)
        if variable and (self.env.get(variable.group(1)) or os.environ.get(variable.group(1))):
            return True, f"{model}: key from {variable.group(1)}"
        if stored.returncode == 0 and key_name.group(1) in stored.stdout.split():
            return True, f"{model}: key {key_name.group(1)!r} stored in llm"
        where = f" or set {variable.group(1)}" if variable else ""
        return False, f"no key for {model}: run `llm keys set {key_name.group(1)}`{where}"

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    async def discover_models(self, binary: str) -> list[str]:
        result = await process.run_command([binary, "models", "list"], env=self.env, env_remove=self.env_remove)
        return parse_models(result.stdout) if result.returncode == 0 else []


def parse_models(text: str) -> list[str]:
    """Model ids from `llm models list`: `Plugin name: model-id (aliases: a, b)` lines."""
    models = []
    for line in text.splitlines():
        if line.startswith((" ", "\t", "Default:")) or ": " not in line:
            continue
        model = line.partition(": ")[2].split(" (aliases:")[0].strip()
        if model and " " not in model:
            models.append(model)
    return models


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _write_temp(data: bytes, suffix: str) -> str:
    return private.write_file(data, prefix="llm-", suffix=suffix)
