"""Gemini CLI (`gemini`), headless with stream-json output.

The prompt goes over stdin behind an empty `-p ""` (gemini puts piped stdin in front of the
`-p` text, so the prompt arrives exactly as given, and never lands in argv); gemini reads at
most 8 MiB there, so longer prompts are refused instead of being cut. A model is named
(`--model`) only when the request or llmrun's settings name one; otherwise gemini's own
choice applies (GEMINI_MODEL, `model.name` in its settings, else its "auto" routing, which
first asks a router model which model to use), and the response names the model that
answered, from the run's stats. Text
streams from `message` events with `delta: true`; `tool_use` / `tool_result` become agent
events; the closing `result` event carries usage and the status. Exit 0 alone is never taken
as success (gemini also exits 0 on SIGTERM): only a `result` with status "success" is.

Agent tools: without `allow_tools`, `--approval-mode=default`, in which headless gemini
registers only its read-only tools (read_file, list_directory, glob, grep_search,
google_web_search, ...; a call of any other tool comes back as a "not found" tool error).
With `allow_tools`, `--approval-mode=yolo` (shell and edits run unasked);
`options={"approval_mode": "auto_edit"}` picks gemini's middle ground (edits, no shell).
`--skip-trust` trusts the working directory for the run, as gemini refuses to run headless
in an untrusted one (exit 55); that also loads the directory's `.gemini/settings.json` and
`.env`. `options={"skip_trust": False}` leaves trust to gemini's own trustedFolders.json.

Sessions: `request.session_id` is passed as `--resume=<id>` (a session uuid, "latest" or
an index, as gemini takes them) and only the new turns are sent; gemini stores sessions per
project directory, so resume from the same `cwd`. The system prompt, when there is one,
replaces gemini's own through `GEMINI_SYSTEM_MD` (a private temporary file).

Retries: gemini retries 429 and 5xx up to 10 times with 5–30 s back-off. The only knob is
the setting `general.maxAttempts`, read from settings files only. llmrun never edits the
user's settings: when it runs as root it points `GEMINI_CLI_SYSTEM_DEFAULTS_PATH` at a copy
of the system defaults (if any) plus `general.maxAttempts = 1`, in a private directory;
system defaults have the lowest precedence, so a `maxAttempts` in the user's own settings
still wins. Gemini reads a system file only if it and every directory above it belong to
root and are not group/world-writable, so for other users no per-run bound is possible;
set `general.maxAttempts` in ~/.gemini/settings.json, and rely on llmrun's timeouts.

Sampling parameters: `temperature`, `top_p`, `max_tokens`, `seed` and the penalties reach
gemini's requests only through settings (`modelConfigs.customOverrides`, an override of the
`generateContentConfig` of every chat-model request). A run carries them in a system settings
file of its own (`GEMINI_CLI_SYSTEM_SETTINGS_PATH`, the highest layer: a copy of the machine's
own, whose override list is the one that would otherwise hold plus the request's; a request is
refused when the machine's cannot be read); as with the retry bound, gemini reads it only when
llmrun runs as root. Otherwise the parameters are
named as ignored (and llmrun holds `max_tokens`). gemini does not say why the model stopped: in
a run without tools, an answer whose tokens (thoughts included) reach `max_tokens` ends with
finish_reason "length".

Side effects: every API error makes gemini write `gemini-client-error-*.json` (the whole
request context, world-readable) into `os.tmpdir()`. llmrun points `TMPDIR` at a private
directory of the runner (so the agent's shell commands see that TMPDIR too) and deletes
those reports after each run; the stderr tail still names the file. `gemini --version`
(so every `health()`) leaves two `projects.json.<uuid>.tmp` files in ~/.gemini: it exits
before its own write of that file finishes. A prompt naming a workspace file as `@path` gets
that file's text put into it by gemini (its own prompt syntax, read-only).

Health: gemini has no auth-status command. `check_auth` only reports whether credentials
are configured (GEMINI_API_KEY, GOOGLE_API_KEY, GOOGLE_GENAI_USE_VERTEXAI/_GCA, an auth type
in the settings, or a .env file); only `health(probe=True)` proves they work.

Options (`ChatRequest.options`): `approval_mode` (with `allow_tools`), `skip_trust`, and
`extra_args` (a list appended to the command).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import stat
import tempfile
import weakref
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar

from .. import private, process
from ..errors import (
    AuthenticationError,
    Cancelled,
    ContextLengthExceeded,
    ModelNotFound,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..images import at_references, private_image_directory
from ..prompting import flatten_conversation, new_turns
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, as_count, as_dict, as_text, delta_chunk, json_object, json_text, line_shape

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = (
    "set GEMINI_API_KEY (or GOOGLE_GENAI_USE_VERTEXAI=true / GOOGLE_GENAI_USE_GCA=true), "
    "or run `gemini` once interactively to sign in"
)
TRUST_HINT = (
    "llmrun passes --skip-trust unless options={'skip_trust': False}; otherwise trust the directory "
    "in gemini or set GEMINI_CLI_TRUST_WORKSPACE=true"
)
# gemini reads at most this much from stdin and silently drops the rest.
STDIN_LIMIT = 8 * 1024 * 1024
MAX_ATTEMPTS = 1
APPROVAL_MODES = ("default", "auto_edit", "yolo", "plan")
# The request's sampling parameters, by their names in gemini's generateContentConfig.
GENERATE_CONTENT_CONFIG = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_tokens": "maxOutputTokens",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
HONOURED_AS_ROOT = {
    name: f"settings modelConfigs generateContentConfig.{key}" for name, key in GENERATE_CONTENT_CONFIG.items()
}
AUTH_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
AUTH_SWITCHES = ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA", "CLOUD_SHELL", "GEMINI_CLI_USE_COMPUTE_ADC")
REPORT_GLOB = "gemini-client-error-*.json"

# gemini's own exit codes (FatalError subclasses); API errors exit with the HTTP status mod 256.
EXIT_AUTH, EXIT_INPUT, EXIT_UNTRUSTED, EXIT_CANCELLED = 41, 42, 55, 130

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_STACK_LINE = re.compile(r"^\s+at \S")
_REPORT = re.compile(r"Full report available at: \S+\s+(?:[A-Za-z_]+: )?(?P<message>.*)$")
_NOISE = (
    "Warning: 256-color",
    "Ripgrep is not available",
    "[STARTUP]",
    "YOLO mode is enabled",
    "Loaded cached credentials",
    "Attempt ",
    "Error executing tool ",
    "Data collection is disabled",
)
_CONTEXT = re.compile(r"input token count|exceeds the maximum number of tokens|context (length|window)", re.I)
_MODEL = re.compile(r"model.*(is not found|not found for API|does not exist|not supported)", re.I)
_RATE = re.compile(r"RESOURCE_EXHAUSTED|quota|rate.?limit|Please wait and try again later|too many requests", re.I)
_AUTH = re.compile(r"UNAUTHENTICATED|PERMISSION_DENIED|API key not valid|API_KEY_INVALID|invalid.+api.?key", re.I)
_UNAVAILABLE = re.compile(
    r"\b(INTERNAL|UNAVAILABLE|overloaded|unavailable|ECONNREFUSED|ECONNRESET|ENOTFOUND|fetch failed)\b", re.I
)


# --- reading gemini's words --------------------------------------------------------------


def api_error_text(message: str) -> tuple[str, int | None]:
    """The plain message and HTTP status inside gemini's "[API Error: …]" wrapping."""
    text = message.strip()
    if text.startswith("[API Error: "):
        # gemini appends advice on a new line after the closing bracket (the 429 "Please wait …").
        wrapped = text[len("[API Error: ") :]
        inner, newline, _ = wrapped.partition("]\n")
        text = inner if newline else (wrapped.rpartition("]")[0] or wrapped)
    status: int | None = None
    start = text.find("{")
    if start >= 0:
        with contextlib.suppress(ValueError, RecursionError):
            body, _ = json.JSONDecoder().raw_decode(text, start)  # text may follow the object
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                detail = str(error.get("message") or "").strip()
                with contextlib.suppress(ValueError, RecursionError):  # gemini sometimes nests the body once more
                    nested = json.loads(detail)
                    if isinstance(nested, dict) and isinstance(nested.get("error"), dict):
                        detail = str(nested["error"].get("message") or detail)
                code = error.get("code")
                status = code if isinstance(code, int) else None
                word = error.get("status")
                suffix = " ".join(str(part) for part in (status, word) if part)
                prefix = text[:start].strip()
                text = " ".join(part for part in (prefix, detail) if part)
                if suffix:
                    text += f" ({suffix})"
    if status is None and (match := re.search(r"\(Status: (\w+)\)", text)):
        status = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429}.get(match.group(1))
    return text, status


def classify(message: str, status: int | None = None, *, rate_limit_advice: bool = False) -> RunnerError:
    """The typed error for what gemini said, the HTTP status (when known) deciding first."""
    if status in (401, 403) or (status is None and _AUTH.search(message)):
        return AuthenticationError(message, hint=LOGIN_HINT)
    if status == 429 or (status is None and (rate_limit_advice or _RATE.search(message))):
        return RateLimitError(message)
    if (status is not None and status >= 500) or (status is None and _UNAVAILABLE.search(message)):
        return ServiceUnavailable(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if status == 404 or _MODEL.search(message):
        return ModelNotFound(message)
    return RunnerError(message)


def http_status_of_exit(returncode: int) -> int | None:
    """In its JSON output modes gemini exits with the HTTP status of an API error, mod 256."""
    return returncode + 256 if 144 <= returncode <= 255 else None


def tool_message(stderr: str) -> str:
    """What gemini said on stderr, without colours, start-up noise and JS stack traces."""
    text = _ANSI.sub("", stderr)
    lines = text.splitlines()
    # JSON output mode: an object {"session_id", "error": {"message"}} says it best.
    for start, line in enumerate(lines):
        if line.strip() != "{":
            continue
        for end in range(start + 1, len(lines)):
            if lines[end].rstrip() == "}":
                with contextlib.suppress(ValueError, RecursionError):
                    body = json.loads("\n".join(lines[start : end + 1]))
                    error = body.get("error") if isinstance(body, dict) else None
                    if isinstance(error, dict) and error.get("message"):
                        return api_error_text(str(error["message"]))[0]
                break
    kept: list[str] = []
    in_trace = False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if _STACK_LINE.match(line):
            in_trace = True
            continue
        if in_trace:
            # Node prints the error's own fields ("  status: 500", "}") after the trace.
            if line[:1].isspace() or stripped in ("}", "{"):
                continue
            in_trace = False
        if stripped.startswith(_NOISE):
            continue
        if match := _REPORT.search(stripped):
            stripped = api_error_text(match.group("message"))[0]
        kept.append(stripped)
    return " ".join(kept)[:600]


# --- the event stream --------------------------------------------------------------------


# A text delta of the answer exactly as gemini prints it.
GEMINI_TEXT_DELTA = line_shape(
    '{"type":"message","timestamp":"<id>","role":"assistant","content":"<text>","delta":true}'
)


class GeminiParser(Parser):
    """Parses one run's stream-json output (init, message, tool_use, tool_result, error, result)."""

    fast_line: ClassVar[re.Pattern[str] | None] = GEMINI_TEXT_DELTA
    """A line that is certainly a text delta of the answer, its text in group 1."""

    def __init__(self, *, max_tokens: int | None = None) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self._tools_ran = False
        self.session_id: str | None = None
        self.requested_model: str | None = None
        self.sent_text = False
        self._tool_since_text = False
        self._last_error: str | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        if self.fast_line is not None and (match := self.fast_line.fullmatch(line)) and (text := json_text(match[1])):
            return self._answer_text(text)
        event = json_object(line)
        if event is None:
            return []  # noise on stdout, skipped
        kind = event.get("type")
        if kind == "init":
            self.session_id = as_text(event.get("session_id")) or self.session_id
            self.requested_model = as_text(event.get("model"))
        elif kind == "message":
            return self._message(event)
        elif kind == "tool_use":
            self._tool_since_text = self._tools_ran = True
            use = AgentEvent(
                kind="tool_use",
                id=as_text(event.get("tool_id")),
                name=as_text(event.get("tool_name")),
                input=event.get("parameters"),
            )
            return [ChatChunk(agent_event=use)]
        elif kind == "tool_result":
            return [self._tool_result(event)]
        elif kind == "error":
            message = as_text(event.get("message")) or "gemini reported an error"
            is_error = event.get("severity") == "error"
            if is_error:
                self._last_error = message
            return [ChatChunk(agent_event=AgentEvent(kind="notice", message=message, is_error=is_error))]
        elif kind == "result":
            return self._result(event)
        return []  # unknown event types are expected as gemini evolves

    def _message(self, event: dict[str, Any]) -> list[ChatChunk]:
        content = event.get("content")
        if event.get("role") != "assistant" or not isinstance(content, str) or not content:
            return []
        return self._answer_text(content)

    def _answer_text(self, text: str) -> list[ChatChunk]:
        # The answer after a tool ran starts a new paragraph.
        if self.sent_text and self._tool_since_text:
            text = "\n\n" + text
        self.sent_text = True
        self._tool_since_text = False
        return [delta_chunk(text)]

    def _tool_result(self, event: dict[str, Any]) -> ChatChunk:
        self._tool_since_text = True
        error = as_dict(event.get("error"))
        output = event.get("output")
        return ChatChunk(
            agent_event=AgentEvent(
                kind="tool_result",
                id=as_text(event.get("tool_id")),
                output=output if output is not None else error.get("message"),
                is_error=event.get("status") != "success",
                message=as_text(error.get("message")),
            )
        )

    def _result(self, event: dict[str, Any]) -> list[ChatChunk]:
        self.finished = True
        stats = as_dict(event.get("stats"))
        if event.get("status") != "success":
            error = as_dict(event.get("error"))
            raw = as_text(error.get("message")) or self._last_error or "gemini reported an error"
            message, status = api_error_text(raw)
            advice = "Please wait and try again later" in raw
            self.error = classify(message, status, rate_limit_advice=advice)
            return []
        usage = usage_from(stats)
        # gemini says nothing of why the model stopped: an answer (thoughts count) that used the
        # whole limit was cut. The stats add up every request, so only a run without tools tells.
        spent = usage.output_tokens + usage.reasoning_tokens
        cut = self.max_tokens is not None and not self._tools_ran and spent >= self.max_tokens
        return [
            ChatChunk(
                finish_reason="length" if cut else "stop",
                usage=usage,
                session_id=self.session_id,
                model=self._model(stats),
            )
        ]

    def _model(self, stats: dict[str, Any]) -> str | None:
        """The model that answered: the one in the stats, or the one asked for unless an alias."""
        models = [name for name in as_dict(stats.get("models")) if isinstance(name, str)]
        if self.requested_model in models or not models:
            requested = self.requested_model
            return None if requested in (None, "auto") else requested
        return models[-1]  # a router model, when there is one, comes first


def usage_from(stats: dict[str, Any]) -> Usage:
    def count(key: str) -> int:
        return as_count(stats.get(key)) or 0

    prompt, cached = count("input_tokens"), count("cached")
    output, total = count("output_tokens"), count("total_tokens")
    # `input` is the prompt without the cached part (older builds lack it).
    fresh = count("input") if "input" in stats else max(0, prompt - cached)
    return Usage(
        input_tokens=fresh,
        output_tokens=output,
        cache_read_tokens=cached,
        reasoning_tokens=max(0, total - prompt - output),  # thoughts count in the total only
        total_tokens=total,
    )


def _root_only(path: str) -> bool:
    """True when gemini would trust a file here: the path and every parent owned by root, not
    writable by group or others (gemini skips system settings files that fail this)."""
    current = os.path.realpath(path)
    while True:
        try:
            info = os.stat(current)
        except OSError:
            return False
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def _root_only_base() -> str | None:
    """Where a private directory can hold system settings files that gemini will read."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/run"):
        if candidate and os.path.isdir(candidate) and _root_only(candidate):
            return candidate
    return None


# --- the runner --------------------------------------------------------------------------


class GeminiRunner(CliRunner):
    name = "gemini"
    option_names = frozenset({"approval_mode", "skip_trust", "extra_args"})
    display_name = "Gemini CLI"
    binary = "gemini"
    aliases = ("gemini-cli",)
    # No default model: gemini's own choice applies (see tool_default_model).
    install_hint = "npm install -g @google/gemini-cli"
    min_version = "0.61.0"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=False,  # gemini keeps the model's thoughts out of stream-json
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        images=True,
        usage=True,
        prompt_via_stdin=True,
    )
    # "flash", "pro" and "flash-lite" are gemini's own aliases; it resolves them per account.
    builtin_models = (
        ("gemini-3.8-flash", ("flash",)),
        ("gemini-3.1-pro-preview", ("pro",)),
        ("gemini-3.5-flash-lite", ("flash-lite",)),
        ("gemini-3-pro-preview", ()),
        ("gemini-3-flash-preview", ()),
        ("gemini-2.5-pro", ()),
        ("gemini-2.5-flash", ()),
        ("gemini-2.5-flash-lite", ()),
    )

    # A run's settings reach gemini only from a root-only directory (see the module's notes).
    honoured_parameters = HONOURED_AS_ROOT if os.geteuid() == 0 and _root_only_base() is not None else {}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._private: str | None = None
        self._in_root_only_dir = False
        self._defaults_file: str | None = None
        self._cleanup: weakref.finalize[Any, Any] | None = None

    # --- the command line ----------------------------------------------------------------

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        messages = new_turns(request.messages) if request.session_id else request.messages
        text = flatten_conversation(messages)
        image_dir: list[str] = []
        if images := [image for message in messages for image in message.images]:
            # gemini sends a file named by `@path` as inline data, from a directory it was given.
            folder, paths = private_image_directory(images, self.name)
            image_dir = [folder]
            text = f"{text}\n\n{at_references(paths)}"
        prompt = text.encode()
        if len(prompt) > STDIN_LIMIT:
            raise UnsupportedFeature(
                f"the prompt is {len(prompt)} bytes; gemini reads at most {STDIN_LIMIT} bytes of input",
                runner=self.name,
            )
        argv = [binary, "-p", "", "--output-format", "stream-json"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if request.options.get("skip_trust", True):
            argv.append("--skip-trust")
        argv.append(f"--approval-mode={self._approval_mode(request)}")
        if session := self.session_to_resume(request):
            argv.append(f"--resume={session}")
        argv += [f"--include-directories={folder}" for folder in image_dir]
        argv += [str(arg) for arg in request.options.get("extra_args", [])]

        own_dir = self._private_dir()
        env = {"TMPDIR": os.path.join(own_dir, "tmp")}
        if self._defaults_file:
            env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"] = self._defaults_file
        temp_files: list[str] = list(image_dir)
        if system := request.system_prompt():
            fd, path = tempfile.mkstemp(prefix="system-prompt-", suffix=".md", dir=own_dir)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(system)
            env["GEMINI_SYSTEM_MD"] = path
            temp_files.append(path)
        if (settings := self._sampling_settings(request)) is not None:
            fd, path = tempfile.mkstemp(prefix="system-settings-", suffix=".json", dir=own_dir)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(settings, fh)
            env["GEMINI_CLI_SYSTEM_SETTINGS_PATH"] = path
            # gemini looks for the system defaults beside the system settings unless told.
            env.setdefault("GEMINI_CLI_SYSTEM_DEFAULTS_PATH", _system_defaults_path())
            temp_files.append(path)
        return process.Invocation(
            argv=argv, stdin=prompt, env=env, env_remove=self.env_remove, cwd=request.cwd, temp_files=temp_files
        )

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection
        from ..transports.base import warm_argv

        invocation = self.prepared_invocation(settings.request([]))
        # The one-shot flags hold in ACP mode too (model, approval mode, trust); the prompt
        # flags give way to --acp, and a resumed session is loaded over the protocol.
        invocation.argv = warm_argv(
            invocation.argv, ["--acp"], drop=("--resume",), drop_with_value=("-p", "--output-format")
        )
        # The system prompt is in GEMINI_SYSTEM_MD; the model and approval mode are in argv.
        profile = AcpProfile(system_prompt_at_start=True, usage_from_result=_acp_usage)
        return acp_connection(self, invocation, settings, resume, profile)

    def _sampling_settings(self, request: ChatRequest) -> dict[str, Any] | None:
        """The run's system settings when the request has sampling parameters gemini can take."""
        asked = {GENERATE_CONTENT_CONFIG[name]: getattr(request, name) for name in self.honoured_parameters}
        config = {key: value for key, value in asked.items() if value is not None}
        if not config:
            return None
        self._private_dir()
        machine = _machine_system_settings()
        if not self._in_root_only_dir:
            raise UnsupportedFeature(
                "cannot pass sampling parameters to gemini: no directory only root can write", runner=self.name
            )
        if machine is None:
            raise UnsupportedFeature(
                f"cannot pass sampling parameters to gemini: its system settings {_system_settings_path()} "
                "cannot be read",
                runner=self.name,
            )
        # Lists replace one another from layer to layer: keep the one that would hold.
        layers = [machine]
        if request.options.get("skip_trust", True):  # an untrusted workspace's settings stay out
            layers.append(_read_jsonc(os.path.join(request.cwd or os.getcwd(), ".gemini", "settings.json")) or {})
        layers.append(_read_jsonc(os.path.join(_gemini_home(), ".gemini", "settings.json")) or {})
        defaults = self._defaults_file or _system_defaults_path()
        if self._defaults_file or _root_only(defaults):
            layers.append(_read_jsonc(defaults) or {})
        overrides = next((found for layer in layers if isinstance(found := _custom_overrides(layer), list)), [])
        # isChatModel: the main conversation's requests, whichever model answers them.
        ours = {"match": {"isChatModel": True}, "modelConfig": {"generateContentConfig": config}}
        model_configs = machine.get("modelConfigs")
        own = model_configs if isinstance(model_configs, dict) else {}
        return {**machine, "modelConfigs": {**own, "customOverrides": [*overrides, ours]}}

    def _approval_mode(self, request: ChatRequest) -> str:
        mode = str(request.options.get("approval_mode") or ("yolo" if request.allow_tools else "default"))
        if mode not in APPROVAL_MODES:
            raise UnsupportedFeature(f"approval_mode must be one of {', '.join(APPROVAL_MODES)}", runner=self.name)
        if mode != "default" and not request.allow_tools:
            raise UnsupportedFeature(f"approval_mode={mode!r} needs allow_tools=True", runner=self.name)
        return mode

    def new_parser(self, request: ChatRequest) -> Parser:
        return GeminiParser(max_tokens=request.max_tokens if "max_tokens" in self.honoured_parameters else None)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        try:
            async with aclosing(super().stream(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except RunnerError as exc:
            better = self._retyped(exc)
            if better is exc:
                raise
            raise better from None
        finally:
            self._sweep_reports()

    def _retyped(self, error: RunnerError) -> RunnerError:
        """The HTTP status in the exit code, named in the message and typing an untyped error."""
        status = http_status_of_exit(error.process_exit_code) if error.process_exit_code is not None else None
        if status is None:
            return error
        if str(status) not in error.message:
            error.message += f" (HTTP {status})"
        if type(error) is not RunnerError:
            return error
        typed = classify(error.message, status)
        if type(typed) is RunnerError:
            return error
        return typed.with_process(runner=self.name, exit_code=error.process_exit_code, stderr=error.stderr)

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        message = tool_message(stderr)
        if returncode == EXIT_AUTH:
            return AuthenticationError(message or "Gemini CLI is not authenticated", hint=LOGIN_HINT)
        if returncode == EXIT_UNTRUSTED:
            return RunnerError(message or "Gemini CLI does not trust the working directory", hint=TRUST_HINT)
        if returncode == EXIT_INPUT:
            if "Error resuming session" in message:
                return SessionNotFound(message)
            return RunnerError(message or "Gemini CLI refused its input")
        if returncode == EXIT_CANCELLED:
            return Cancelled(message or "Gemini CLI cancelled the run")
        if "Unknown argument" in message or "Unknown arguments" in message:
            return ProcessFailed(
                f"this gemini does not accept llmrun's flags: {message}", hint=f"upgrade with `{self.install_hint}`"
            )
        if (status := http_status_of_exit(returncode)) is not None:
            typed = classify(message or f"HTTP {status}", status)
            if type(typed) is not RunnerError:
                return typed
        detail = f": {message}" if message else ""
        return ProcessFailed(f"{self.display_name} exited with code {returncode}{detail}")

    # --- private files: per-run settings and gemini's error reports ----------------------

    def _private_dir(self) -> str:
        """A directory of this runner only (mode 0700) in llmrun's private directory, removed
        when the runner goes (or llmrun exits)."""
        if self._private is not None and os.path.isdir(self._private):
            return self._private
        base = _root_only_base() if os.geteuid() == 0 else None
        self._private = private.mkdtemp(prefix="gemini-", parent=base)
        self._in_root_only_dir = base is not None
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._private, True)
        os.mkdir(os.path.join(self._private, "tmp"), 0o700)
        self._defaults_file = None
        if base is not None and (defaults := _bounded_system_defaults()) is not None:
            path = os.path.join(self._private, "system-defaults.json")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(defaults, fh)
            self._defaults_file = path
        return self._private

    def _sweep_reports(self) -> None:
        if self._private is None:
            return
        for path in glob.glob(os.path.join(self._private, "tmp", REPORT_GLOB)):
            with contextlib.suppress(OSError):
                os.remove(path)

    async def aclose(self) -> None:
        if self._cleanup is not None:
            self._cleanup()
        self._private = self._defaults_file = None

    # --- health --------------------------------------------------------------------------

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        """Whether credentials are configured; only a probe shows that they work."""
        unverified = "(configured, not verified: `llmrun health --probe` tries it)"
        for name in AUTH_ENV:
            if os.environ.get(name):
                return True, f"{name} is set {unverified}"
        for name in AUTH_SWITCHES:
            if os.environ.get(name) == "true":
                return True, f"{name}=true {unverified}"
        for path in _settings_paths():
            selected = _selected_auth_type(_read_jsonc(path))
            if selected:
                return True, f"auth type {selected!r} in {path} {unverified}"
        env_file = _find_env_file(os.getcwd())
        if env_file is not None and (variable := _auth_in_env_file(env_file)):
            return True, f"{variable} in {env_file} {unverified}"
        return None, (
            "no Gemini credentials found in the environment, the settings or a .env file; "
            "only `llmrun health --probe` can tell for sure"
        )

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    def tool_default_model(self) -> str | None:
        """What gemini runs without --model: GEMINI_MODEL, else `model.name` of the settings
        file that wins; None for its "auto" routing."""
        model = self.env.get("GEMINI_MODEL") or os.environ.get("GEMINI_MODEL")
        for path in _settings_paths():
            if model:
                break
            model = as_text(as_dict(as_dict(_read_jsonc(path)).get("model")).get("name"))
        return None if model in (None, "auto") else model


# --- files gemini reads ------------------------------------------------------------------


def _gemini_home() -> str:
    return os.environ.get("GEMINI_CLI_HOME") or os.path.expanduser("~")


def _system_settings_path() -> str:
    return os.environ.get("GEMINI_CLI_SYSTEM_SETTINGS_PATH") or "/etc/gemini-cli/settings.json"


def _system_defaults_path() -> str:
    explicit = os.environ.get("GEMINI_CLI_SYSTEM_DEFAULTS_PATH")
    return explicit or os.path.join(os.path.dirname(_system_settings_path()), "system-defaults.json")


def _settings_paths() -> list[str]:
    """The settings files gemini merges, the one that wins first."""
    return [
        _system_settings_path(),
        os.path.join(os.getcwd(), ".gemini", "settings.json"),
        os.path.join(_gemini_home(), ".gemini", "settings.json"),
        _system_defaults_path(),
    ]


def _machine_system_settings() -> dict[str, Any] | None:
    """The system settings gemini reads ({} for none, or one it would skip as insecure); None
    when they cannot be read, so cannot be copied."""
    path = _system_settings_path()
    if not os.path.exists(path) or not _root_only(path):
        return {}
    return _read_jsonc(path)


def _custom_overrides(settings: dict[str, Any]) -> Any:
    model_configs = settings.get("modelConfigs")
    return model_configs.get("customOverrides") if isinstance(model_configs, dict) else None


def _strip_json_comments(text: str) -> str:
    """JSON with // and /* */ comments (as gemini's settings allow) to plain JSON."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i : end + 1])
            i = end + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _read_jsonc(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.loads(_strip_json_comments(fh.read()))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _selected_auth_type(settings: dict[str, Any] | None) -> str | None:
    if not settings:
        return None
    security = settings.get("security")
    auth = security.get("auth") if isinstance(security, dict) else None
    selected = auth.get("selectedType") if isinstance(auth, dict) else None
    return as_text(selected) or as_text(settings.get("selectedAuthType"))  # the latter: settings of older builds


def _find_env_file(start: str) -> str | None:
    """The .env file gemini would load: the nearest upwards, else the home's (as gemini looks)."""
    current = os.path.abspath(start)
    while True:
        for candidate in (os.path.join(current, ".gemini", ".env"), os.path.join(current, ".env")):
            if os.path.isfile(candidate):
                return candidate
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    home = _gemini_home()
    for candidate in (os.path.join(home, ".gemini", ".env"), os.path.join(home, ".env")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _auth_in_env_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip().strip("'\"")
        if (key in AUTH_ENV and value) or (key in AUTH_SWITCHES and value == "true"):
            return key
    return None


def _bounded_system_defaults() -> dict[str, Any] | None:
    """The system defaults gemini would read, plus llmrun's retry bound; None to leave them be.

    An administrator's defaults are kept (and left alone when they already bound the retries,
    or when they cannot be read); a file gemini itself would skip as insecure is not copied.
    """
    path = _system_defaults_path()
    defaults: dict[str, Any] = {}
    if os.path.exists(path) and _root_only(path):
        loaded = _read_jsonc(path)
        if loaded is None:
            return None
        defaults = loaded
    general = defaults.get("general")
    if general is not None and not isinstance(general, dict):
        return None
    if isinstance(general, dict) and "maxAttempts" in general:
        return None
    defaults["general"] = {**(general or {}), "maxAttempts": MAX_ATTEMPTS}
    return defaults


def _acp_usage(result: dict[str, Any]) -> Usage | None:
    """Gemini reports a turn's tokens in the prompt result's `_meta.quota.token_count`."""
    counts = as_dict(as_dict(result.get("_meta")).get("quota")).get("token_count")
    if not isinstance(counts, dict):
        return None
    return Usage(
        input_tokens=as_count(counts.get("input_tokens")) or 0,
        output_tokens=as_count(counts.get("output_tokens")) or 0,
    )
