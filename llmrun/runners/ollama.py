"""Ollama (`ollama`), one `ollama run MODEL` per request, the prompt over stdin.

The output format was taken from ollama's source at v0.33.0-rc2 (commit fb30760, cmd/cmd.go
and api/types.go); ollama was not installed here, so the transcripts in fixtures/ollama/
are built from that source, not captured. What a one-shot run prints:

- stdout: the answer as the model streams it, then two newlines. A thinking model first
  prints `Thinking...`, its thinking, and `...done thinking.` and a blank line (without
  colours when stdout is not a terminal). ollama word-wraps at 80 columns even into a pipe,
  with cursor escapes, so the runner passes `--nowordwrap`; escapes are stripped anyway.
  An answer without its closing newlines was cut short (ollama also exits 0 on SIGINT).
- stderr: a spinner (escapes and braille frames) until the first token, then with
  `--verbose` the statistics: `prompt eval count:    N token(s)` and `eval count: …`,
  which give the usage. A failure is `Error: …` with exit code 1.

The server must be running (`ollama serve` or the app): without it every run fails with
"could not connect to ollama server". A model that is not pulled yet is pulled by `ollama
run` itself; the download shows only on stderr, so a big one meets the stall timeout: pull
models first (`ollama pull MODEL`). `health()` tells the two apart: `ollama --version` and
`ollama list` say whether the server answers and whether the default model is there.

The CLI has no system prompt flag and no session in a one-shot run: the system prompt goes
in front of the prompt, and sessions are kept by this runner the way ollama's own
interactive mode keeps them, as the list of messages replayed with each turn. Their ids are
made by llmrun and live as long as the runner instance. A vision model makes ollama read
image files whose paths appear in the prompt. Sampling parameters (temperature, max tokens)
have no flag in `ollama run` and are left to the model's Modelfile.

Options (`ChatRequest.options`): `think` (true/false, or "low"/"medium"/"high"/"max"),
`hide_thinking`, `keepalive` (e.g. "10m"), and `extra_args` (a list appended to the
command; the settings' `extra_args` go right after `run`). `json_schema` becomes
`--format`.
"""

from __future__ import annotations

import json
import re

from .. import process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    UnsupportedFeature,
)
from ..prompting import flatten_conversation, with_system_prompt
from ..types import Capabilities, ChatChunk, ChatRequest, HealthReport, Usage
from .base import HistoryKeepingRunner, Parser, _last_line, parse_count, partial_marker_at_end

THINKING_OPEN = "Thinking...\n"
# ollama adds the leading newline itself when the thinking does not end with one.
THINKING_CLOSE = "\n...done thinking.\n\n"
ANSWER_END = "\n\n"
# Printed on stdout, with exit code 0, when a cloud model needs `ollama signin`.
CLOUD_SIGNIN = "You need to be signed in to Ollama to run Cloud models."
SERVER_HINT = "start the Ollama server with `ollama serve` (or open the Ollama app)"
PULL_HINT = "pull the model with `ollama pull NAME`; `ollama list` shows the pulled ones"
SIGNIN_HINT = "run `ollama signin` to use Ollama's cloud models"
THINK_VALUES = ("true", "false", "low", "medium", "high", "max")

# CSI, OSC (a title) and two-character escapes; "[" and "]" only ever start the longer two.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\^_])")
_UNFINISHED_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*(?:\x1b)?)?\Z")
_SPINNER = re.compile(r"[\u2800-\u28ff]")
_PROMPT_COUNT = re.compile(r"prompt eval count:\s+(\d+)")
_EVAL_COUNT = re.compile(r"(?<!prompt )eval count:\s+(\d+)")
_ERROR = re.compile(r"^[ \t]*Error: ", re.M)
_STATUS = re.compile(r"^(\d{3}) [A-Za-z]")
_UNREACHABLE = re.compile(
    r"could not connect|connection refused|could not locate ollama app|unable to start ollama app|"
    r"connection reset|: EOF\b|no route to host",
    re.I,
)
_NOT_PULLED = re.compile(
    r"not found, try pulling|pull model manifest|model .{0,80} not found|file does not exist", re.I
)
_CONTEXT = re.compile(r"context length|context window|exceeds maximum context", re.I)


def clean(text: str) -> str:
    """ollama's output without terminal escapes and spinner frames."""
    return _SPINNER.sub("", _ESCAPE.sub("", text)).replace("\r\n", "\n")


def error_text(stderr: str) -> str:
    """The message of ollama's last `Error: …` (it may run over several lines), without the prefix."""
    text = clean(stderr)
    starts = [match.end() for match in _ERROR.finditer(text)]
    return text[starts[-1] :].strip() if starts else ""


def classify(message: str) -> RunnerError:
    """The typed error for what ollama said, the HTTP status (when it names one) first."""
    match = _STATUS.match(message)
    status = int(match.group(1)) if match else None
    if _UNREACHABLE.search(message):
        return ServiceUnavailable(message, hint=SERVER_HINT)
    if status in (401, 403) or "signin" in message.lower() or "signed in" in message.lower():
        return AuthenticationError(message, hint=SIGNIN_HINT)
    if status == 429:
        return RateLimitError(message)
    if _NOT_PULLED.search(message) or status == 404:
        return ModelNotFound(message, hint=PULL_HINT)
    if "does not support" in message:
        return UnsupportedFeature(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if status is not None and status >= 500:
        return ServiceUnavailable(message)
    return RunnerError(message)


def usage_from(stderr: str) -> Usage:
    """Token counts from `--verbose` statistics (a count of 0 is not printed)."""
    text = clean(stderr)
    prompt, answer = _PROMPT_COUNT.findall(text), _EVAL_COUNT.findall(text)
    return Usage(
        input_tokens=(parse_count(prompt[-1]) if prompt else None) or 0,
        output_tokens=(parse_count(answer[-1]) if answer else None) or 0,
    )


def parse_models(text: str) -> list[str]:
    """Model names from `ollama list`: a NAME/ID/SIZE/MODIFIED table without borders."""
    lines = [line for line in clean(text).splitlines() if line.strip()]
    if not lines or lines[0].split()[:1] != ["NAME"]:
        return []
    return [line.split()[0] for line in lines[1:]]


def same_model(name: str, listed: str) -> bool:
    """`gemma4` is `gemma4:latest`."""
    return listed in (name, f"{name}:latest") or name == f"{listed}:latest"


# --- the parser ------------------------------------------------------------------------------


class OllamaParser(Parser):
    """`ollama run` output: optional thinking between markers, the answer, two newlines."""

    def __init__(self, *, model: str | None = None, thinking_shown: bool = True) -> None:
        super().__init__()
        self.model = model
        self._state = "start" if thinking_shown else "answer"
        self._pending = ""  # text that may still turn out to be part of a marker
        self._escape = ""  # an escape sequence cut off at the end of a piece
        self._answer: str | None = ""  # the answer's start, while it could be CLOUD_SIGNIN

    def feed(self, line: str) -> list[ChatChunk]:
        self._pending += self._without_escapes(line)
        return self._drain()

    def _without_escapes(self, piece: str) -> str:
        text = self._escape + piece
        self._escape = ""
        last = text.rfind("\x1b")
        if last >= 0 and _UNFINISHED_ESCAPE.match(text, last) and len(text) - last < 256:
            text, self._escape = text[:last], text[last:]
        return clean(text)

    def _drain(self) -> list[ChatChunk]:
        chunks: list[ChatChunk] = []
        if self._state == "start":
            if self._pending.startswith(THINKING_OPEN):
                self._pending = self._pending[len(THINKING_OPEN) :]
                self._state = "thinking"
            elif THINKING_OPEN.startswith(self._pending):
                return chunks  # not known yet
            else:
                self._state = "answer"
        if self._state == "thinking":
            end = self._pending.find(THINKING_CLOSE)
            if end >= 0:
                thought, self._pending = self._pending[:end], self._pending[end + len(THINKING_CLOSE) :]
                self._state = "answer"
            else:
                keep = partial_marker_at_end(self._pending, THINKING_CLOSE)
                thought, self._pending = (
                    self._pending[: len(self._pending) - keep],
                    self._pending[-keep:] if keep else "",
                )
            if thought:
                chunks.append(ChatChunk(thinking=thought))
        if self._state == "answer" and self.error is None:
            # Trailing newlines wait: the last two are ollama's end of output.
            text = self._pending.rstrip("\n")
            self._pending = self._pending[len(text) :]
            if self._answer is not None:
                self._answer += text
                if CLOUD_SIGNIN.startswith(self._answer):
                    return chunks
                if self._answer.startswith(CLOUD_SIGNIN):
                    self.error = AuthenticationError(CLOUD_SIGNIN, hint=SIGNIN_HINT)
                    return chunks
                text, self._answer = self._answer, None
            if text:
                chunks.append(ChatChunk(delta=text))
        return chunks

    def close(self) -> list[ChatChunk]:
        if self.error is not None or self._state != "answer" or not self._pending.endswith(ANSWER_END):
            return []  # cut short: the runner reports it
        self.finished = True
        chunks = []
        if text := (self._answer or "") + self._pending[: -len(ANSWER_END)]:
            chunks.append(ChatChunk(delta=text))
        chunks.append(ChatChunk(finish_reason="stop", usage=usage_from(self.stderr), model=self.model))
        return chunks


# --- the runner ------------------------------------------------------------------------------


class OllamaRunner(HistoryKeepingRunner):
    name = "ollama"
    option_names = frozenset({"think", "hide_thinking", "keepalive", "extra_args"})
    display_name = "Ollama"
    binary = "ollama"
    aliases = ()
    framing = "text"
    needs_finished_output = True
    extra_args_at = 2  # after `run`
    # `ollama run` cannot run without a model (it has no default of its own), so llmrun names
    # one: the configured model, else this, what ollama's own README runs first.
    default_model = "gemma4"
    install_hint = "curl -fsSL https://ollama.com/install.sh | sh"  # Linux; the app on macOS and Windows
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=False,
        sessions=True,
        system_prompt=True,
        json_schema=True,
        usage=True,
        model_discovery=True,
    )

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        argv = [binary, "run", "--nowordwrap", "--verbose"]
        if "think" in options:
            think = str(options["think"]).lower()
            if think not in THINK_VALUES:
                raise UnsupportedFeature(
                    f"think must be one of {', '.join(THINK_VALUES)}, not {options['think']!r}", runner=self.name
                )
            argv.append(f"--think={think}")
        if options.get("hide_thinking"):
            argv.append("--hidethinking")
        if options.get("keepalive"):
            argv.append(f"--keepalive={options['keepalive']}")
        if request.json_schema is not None:
            argv.append("--format=" + json.dumps(request.json_schema))
        argv += [str(arg) for arg in options.get("extra_args", [])]
        argv += ["--", str(self.model_for(request))]  # a model name never reads as a flag
        prompt = with_system_prompt(flatten_conversation(self.conversation_of(request)), request.system_prompt())
        return process.Invocation(argv=argv, stdin=prompt.encode(), env_remove=self.env_remove, cwd=request.cwd)

    def new_parser(self, request: ChatRequest) -> Parser:
        hidden = bool(request.options.get("hide_thinking")) or str(request.options.get("think")).lower() == "false"
        return OllamaParser(model=self.model_for(request), thinking_shown=not hidden)

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        if message := error_text(stderr):
            return classify(message)
        return super().error_for_exit(returncode, clean(stderr))

    async def health(self, probe: bool = False) -> HealthReport:
        report = await super().health(probe=False)
        if report.status != "ok" or report.binary is None:
            return report
        result = await process.run_command([report.binary, "list"], env=self.env, env_remove=self.env_remove)
        if result.returncode != 0:
            message = error_text(result.stderr) or _last_line(clean(result.stderr)) or "`ollama list` failed"
            unreachable = bool(_UNREACHABLE.search(message))
            return report.model_copy(
                update={
                    "status": "error",
                    "message": f"the Ollama server is not running: {message}" if unreachable else message,
                    "hint": SERVER_HINT if unreachable else None,
                }
            )
        self._discovered = models = parse_models(result.stdout)
        model = self.default_model
        if model and not any(same_model(model, listed) for listed in models):
            pulled = ", ".join(models) if models else "none"
            return report.model_copy(
                update={
                    "status": "error",
                    "message": f"the server is running, but the model {model} is not pulled (pulled: {pulled})",
                    "hint": f"pull it with `ollama pull {model}`, or choose another with LLMRUN_OLLAMA_MODEL",
                }
            )
        if probe:
            return await super().health(probe=True)
        return report.model_copy(update={"message": f"server running; {len(models)} model(s) pulled"})

    async def discover_models(self, binary: str) -> list[str]:
        result = await process.run_command([binary, "list"], env=self.env, env_remove=self.env_remove)
        return parse_models(result.stdout) if result.returncode == 0 else []
