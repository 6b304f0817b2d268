"""Qwen Code (`qwen`), headless with stream-json output.

The prompt goes over stdin (qwen reads a whole prompt from a pipe when no positional one is
given), text streams token by token (`--include-partial-messages`, Claude's event dialect),
and the run stays read-only unless the request allows tools: `--approval-mode default`,
which in a headless run lets read-only tools run and declines everything that needs
approval, plus the shell and edit tools excluded outright so that a user's own allow rules
cannot bring them back. `allow_tools` gives `--approval-mode yolo`.

Each run also gets a settings file of its own, as qwen's lowest settings layer (the
"system defaults", through `QWEN_CODE_SYSTEM_DEFAULTS_PATH`), so the user's files are
neither read differently nor rewritten, and their own choices still win: no second model
call after each answer for "managed memory", and no retries inside the OpenAI client.
qwen itself still makes 7 attempts at a 429 or 5xx, 70-90 s of back-off that no setting
shortens, before it reports the error; that error then comes back as answer text
(`[API Error: 429 ...]`) with exit code 0, which this runner turns into the typed error.

Sampling parameters: `temperature`, `top_p` and `max_tokens` go in the setting
`model.generationConfig.samplingParams`, which qwen puts in every request to the model (for
each of its providers). They go in a settings file of the run's own at qwen's highest layer
(the "system settings", through `QWEN_CODE_SYSTEM_SETTINGS_PATH`, a copy of the machine's own
plus the request's values), so they win over the user's settings (a model of the user's
`modelProviders` with sampling parameters of its own keeps those). Once set, they replace
qwen's own request defaults, its cap of 8000 output tokens among them. qwen does not say why
the model stopped: an answer whose tokens reach `max_tokens` ends with finish_reason "length".
qwen sends a seed and penalties to OpenAI-compatible providers only, so llmrun names those as
ignored.

Sessions: a request naming a session resumes it with `--resume` (qwen keeps sessions per
working directory, so use the same `cwd`); otherwise history is flattened into the prompt.

Options (`ChatRequest.options`): `approval_mode` (`plan` or `default`; `auto-edit` and
`yolo` only with `allow_tools`), `max_session_turns`, and `extra_args` (a list appended to
the command).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .. import private, process
from ..errors import (
    AuthenticationError,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    SessionNotFound,
    UnsupportedFeature,
)
from ..images import at_references, private_image_directory
from ..prompting import new_turns, prompt_for
from ..types import Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, _last_line, as_count, as_dict, as_text, line_shape

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection
from .stream_json import StreamJsonParser

# Longer system prompts go through a file: argv is visible to every user and bounded.
SYSTEM_PROMPT_ARGV_LIMIT = 16 * 1024
# qwen cuts stdin at 8 Mi UTF-16 code units, with only a warning on stderr.
STDIN_LIMIT_UNITS = 8 * 1024 * 1024

API_ERROR_PREFIX = "[API Error: "
# What qwen itself declines in a headless run without approval; excluded so that no
# allow rule in the user's settings can enable them for an llmrun request.
WRITE_TOOLS = ("run_shell_command", "edit", "write_file", "monitor")
READ_ONLY_MODES = ("default", "plan")
APPROVAL_MODES = (*READ_ONLY_MODES, "auto-edit", "yolo")

RUN_SETTINGS: dict[str, Any] = {
    # qwen's current settings format, so it reads the file as it is instead of rewriting it
    "$version": 4,
    # After every answer qwen otherwise asks the model again to extract "memories" (1-6 s).
    "memory": {"enableManagedAutoMemory": False},
    # The OpenAI client's own retries, and the minute-long rate-limit waits on top of them.
    "model": {"generationConfig": {"maxRetries": 0}},
}

# For a run with images: the model takes image input (the lowest settings: the user's win).
IMAGE_INPUT: dict[str, Any] = {"model": {"generationConfig": {"modalities": {"image": True}}}}

# The request's parameters that qwen sends to every provider, by their samplingParams names.
SAMPLING_PARAMS = ("temperature", "top_p", "max_tokens")

# Which key each auth type needs, for telling whether qwen can run without its own settings.
AUTH_KEY_VARS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "vertex-ai": "GOOGLE_API_KEY",
}
# The variable sets from which qwen infers an auth type when none is configured.
ENV_AUTH = (
    ("openai", ("OPENAI_API_KEY", "OPENAI_MODEL", "OPENAI_BASE_URL")),
    ("gemini", ("GEMINI_API_KEY", "GEMINI_MODEL")),
    ("vertex-ai", ("GOOGLE_API_KEY", "GOOGLE_MODEL")),
    ("anthropic", ("ANTHROPIC_API_KEY", "ANTHROPIC_MODEL", "ANTHROPIC_BASE_URL")),
)

_STATUS = re.compile(r"^\[API Error: (\d{3})\b")
_NO_AUTH = re.compile(
    r"no auth type is selected|error authenticating|missing api key|api key not found|free tier .{0,20}discontinued",
    re.I,
)
_RATE = re.compile(r"rate limit|RESOURCE_EXHAUSTED|quota", re.I)
_AUTH_STATUS = re.compile(r"UNAUTHENTICATED|PERMISSION_DENIED")


# A text delta of the answer exactly as qwen prints it.
QWEN_TEXT_DELTA = line_shape(
    '{"type":"stream_event","uuid":"<id>","session_id":"<id>","parent_tool_use_id":null,'
    '"event":{"type":"content_block_delta","index":<int>,"delta":{"type":"text_delta","text":"<text>"}}}'
)


class QwenParser(StreamJsonParser):
    """Claude's stream-json as qwen prints it.

    The differences: a failed API call arrives as ordinary answer text beginning with
    `[API Error: ` (a text delta, the whole assistant block and the `result`) with
    `is_error: false`; a message that follows another within one model response
    (thinking, then text, then a tool call) gets no message_start of its own; usage counts
    cached tokens inside `input_tokens`; the `result` usage covers the whole session, so a
    run's own usage is summed from its assistant messages; `-o json` prints every event in
    one JSON array; a failure before the model is asked says why in `error.message`.
    """

    login_hint = "run `qwen auth`, or set OPENAI_API_KEY, OPENAI_BASE_URL and OPENAI_MODEL"
    fast_line = QWEN_TEXT_DELTA

    def __init__(self, *, max_tokens: int | None = None) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self._run_usage: dict[str, int] = {}
        self._unnamed = 0
        self._last_output: int | None = None

    def _not_an_object(self, line: str) -> list[ChatChunk]:
        # `-o json`: every event of the run in one array.
        if not line.startswith("["):
            return []
        try:
            events = json.loads(line)
        except (ValueError, RecursionError):
            return []
        if not isinstance(events, list):
            return []
        chunks: list[ChatChunk] = []
        for event in events:
            if isinstance(event, dict):
                chunks += self.feed(json.dumps(event))
        return chunks

    def _stream_text(self, text: str) -> list[ChatChunk]:
        if text.startswith(API_ERROR_PREFIX):  # a sub-agent's failure never comes here: not the answer's
            self._api_error(text)
            return []
        return super()._stream_text(text)

    def _assistant(self, event: dict[str, Any]) -> list[ChatChunk]:
        message = event.get("message")
        if not isinstance(message, dict):
            return super()._assistant(event)
        self._add_usage(message.get("usage"))
        if event.get("parent_tool_use_id"):
            return []  # a sub-agent's message; only its usage counts
        self._last_output = as_count(as_dict(message.get("usage")).get("output_tokens"))
        content = message.get("content")
        kept = []
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "text" and _is_api_error(block.get("text")):
                self._api_error(block["text"])
            else:
                kept.append(block)
        message_id = as_text(message.get("id"))
        if message_id != self._message_id:
            # What streamed since the last message_start or assistant line was this message.
            for kind in ("text", "thinking"):
                if (self._message_id, kind) in self._streamed:
                    self._streamed.add((message_id, kind))
        chunks = super()._assistant({**event, "message": {**message, "content": kept}})
        # When the block type changes qwen closes the message and opens the next one without
        # a message_start: deltas from here on belong to a message not named yet.
        self._unnamed += 1
        self._message_id = f"unnamed-{self._unnamed}"
        return chunks

    def _result(self, event: dict[str, Any]) -> list[ChatChunk]:
        result = event.get("result")
        if _is_api_error(result):
            self._api_error(result)
        if self.error is not None:
            self.finished = True
            self.session_id = as_text(event.get("session_id")) or self.session_id
            return []
        if self._run_usage:
            event = {**event, "usage": self._run_usage}
        chunks = super()._result(event)
        # qwen says nothing of why the model stopped: an answer that used the whole limit was cut.
        cut = self.max_tokens is not None and (self._last_output or 0) >= self.max_tokens
        if cut and chunks and chunks[-1].finish_reason == "stop":
            chunks[-1] = chunks[-1].model_copy(update={"finish_reason": "length"})
        return chunks

    # --- qwen's variant -------------------------------------------------------------------

    def _api_error(self, text: str) -> None:
        if self.error is None:
            self.error = self.error_from_result({"result": text.strip()})

    def _add_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "total_tokens"):
            if (value := as_count(usage.get(key))) is not None:
                self._run_usage[key] = self._run_usage.get(key, 0) + value

    @staticmethod
    def usage_from(usage: dict[str, Any]) -> Usage:
        def count(key: str) -> int:
            return as_count(usage.get(key)) or 0

        # qwen reports OpenAI's prompt_tokens as input_tokens: cached tokens are part of it.
        cached = count("cache_read_input_tokens")
        return Usage(
            input_tokens=max(0, count("input_tokens") - cached),
            output_tokens=count("output_tokens"),
            cache_read_tokens=cached,
            total_tokens=count("total_tokens"),
        )

    def error_from_result(self, event: dict[str, Any]) -> RunnerError:
        error = event.get("error")
        text = str(
            event.get("result")
            or (error.get("message") if isinstance(error, dict) else None)
            or event.get("subtype")
            or "qwen reported an error"
        )
        status = event.get("api_error_status")
        if not isinstance(status, int) and (match := _STATUS.match(text)):
            status = int(match.group(1))
        if _NO_AUTH.search(text) or (status is None and _AUTH_STATUS.search(text)):
            return AuthenticationError(text, hint=self.login_hint)
        if status is None and _RATE.search(text):
            return RateLimitError(text)
        return super().error_from_result({**event, "result": text, "api_error_status": status})


def _is_api_error(text: Any) -> TypeGuard[str]:
    return isinstance(text, str) and text.startswith(API_ERROR_PREFIX)


class QwenRunner(CliRunner):
    name = "qwen"
    option_names = frozenset({"approval_mode", "max_session_turns", "extra_args"})
    display_name = "Qwen Code"
    binary = "qwen"
    aliases = ("qwen_code", "qwen-code")
    install_hint = "npm install -g @qwen-code/qwen-code"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        images=True,
        usage=True,
    )
    # No default model: qwen's own configuration (settings or OPENAI_MODEL) chooses one.
    honoured_parameters = {name: f"settings model.generationConfig.samplingParams.{name}" for name in SAMPLING_PARAMS}

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        prompt = prompt_for(request)
        turns = new_turns(request.messages) if request.session_id else request.conversation()
        image_dir: list[str] = []
        if images := [image for message in turns for image in message.images]:
            # qwen reads a file named by `@path` from a directory it was given, and sends an
            # image as image data when its settings say the model takes images (IMAGE_INPUT).
            folder, paths = private_image_directory(images, self.name)
            image_dir = [folder]
            prompt = f"{prompt}\n\n{at_references(paths)}"
        if len(prompt.encode("utf-16-le")) // 2 > STDIN_LIMIT_UNITS:
            raise UnsupportedFeature(
                "the prompt is longer than the 8 Mi characters qwen reads from stdin", runner=self.name
            )
        mode = self._approval_mode(request)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "--output-format=stream-json", "--include-partial-messages", f"--approval-mode={mode}"]
        if not request.allow_tools:
            argv.append("--exclude-tools=" + ",".join(WRITE_TOOLS))
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if session := self.session_to_resume(request):
            argv.append(f"--resume={session}")
        argv += [f"--include-directories={folder}" for folder in image_dir]
        if "max_session_turns" in request.options:
            argv.append(f"--max-session-turns={int(request.options['max_session_turns'])}")
        env: dict[str, str] = {}
        temp_files: list[str] = list(image_dir)
        try:
            if system := request.system_prompt():
                if len(system.encode()) <= SYSTEM_PROMPT_ARGV_LIMIT:
                    argv.append(f"--system-prompt={system}")
                else:
                    # Replaces qwen's base prompt just as --system-prompt does.
                    env["QWEN_SYSTEM_MD"] = private.write_file(system, prefix="llmrun-system-", suffix=".md")
                    temp_files.append(env["QWEN_SYSTEM_MD"])
            settings = run_settings({**os.environ, **self.env})
            if settings is not None and (image_dir or not request.messages):
                # qwen takes a model named by OPENAI_MODEL (not in its modelProviders) as text
                # only and would not send the image; settings of the user's own still win. A
                # warm session starts with no message, and any of its turns may bring images.
                settings = _merge(IMAGE_INPUT, settings)
            if settings is not None:
                defaults = private.write_file(json.dumps(settings), prefix="llmrun-qwen-", suffix=".json")
                env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"] = defaults
                temp_files.append(env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"])
            sampling = sampling_settings(request, {**os.environ, **self.env})
            if sampling is not None:
                path = private.write_file(json.dumps(sampling), prefix="llmrun-qwen-system-", suffix=".json")
                temp_files.append(path)
                # qwen looks for the system defaults beside the system settings unless told.
                env.setdefault("QWEN_CODE_SYSTEM_DEFAULTS_PATH", _defaults_path({**os.environ, **self.env}))
                env["QWEN_CODE_SYSTEM_SETTINGS_PATH"] = path
        except BaseException:
            for path in temp_files:
                process.remove_path(path)
            raise
        argv += [str(arg) for arg in request.options.get("extra_args", [])]
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env=env,
            # Otherwise qwen starts itself a second time as a child node process (+1 s).
            env_defaults={"QWEN_CODE_NO_RELAUNCH": "true"},
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def _approval_mode(self, request: ChatRequest) -> str:
        mode = request.options.get("approval_mode")
        if mode is None:
            return "yolo" if request.allow_tools else "default"
        if mode not in APPROVAL_MODES:
            raise UnsupportedFeature(
                f"unknown approval mode {mode!r}; qwen knows {', '.join(APPROVAL_MODES)}", runner=self.name
            )
        if mode not in READ_ONLY_MODES and not request.allow_tools:
            raise UnsupportedFeature(
                f"approval mode {mode!r} runs agent tools: set allow_tools to use it", runner=self.name
            )
        return str(mode)

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection
        from ..transports.base import warm_argv

        invocation = self.prepared_invocation(settings.request([]))
        # The one-shot flags hold in ACP mode too (model, approval mode, excluded tools, system
        # prompt, settings file); the output flags give way to --acp, and a resumed session is
        # loaded over the protocol.
        one_shot = ("--output-format", "--include-partial-messages", "--resume")
        invocation.argv = warm_argv(invocation.argv, ["--acp"], drop=one_shot)
        return acp_connection(self, invocation, settings, resume, AcpProfile(system_prompt_at_start=True))

    def new_parser(self, request: ChatRequest) -> Parser:
        return QwenParser(max_tokens=request.max_tokens)

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        last = _last_line(stderr)
        if "No saved session found" in stderr:
            return SessionNotFound(last)
        if _NO_AUTH.search(stderr):
            return AuthenticationError(last, hint=QwenParser.login_hint)
        if "Unknown argument" in stderr or "Invalid values" in stderr:
            return ProcessFailed(
                f"this qwen does not accept llmrun's flags: {last}", hint=f"upgrade with `{self.install_hint}`"
            )
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        env = {**self.env, "QWEN_CODE_LANG": "en"}  # the status text is translated otherwise
        env.setdefault("QWEN_CODE_NO_RELAUNCH", "true")
        result = await process.run_command([binary, "auth", "status"], env=env, env_remove=self.env_remove)
        text = result.stdout + result.stderr
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        method = next((line.lstrip("✓ ").strip() for line in lines if line.startswith("✓")), None)
        if method is not None:
            return True, method
        if "(Incomplete)" in text:
            issue = next((line for line in lines if line.startswith("Issue:")), "incomplete")
            return False, issue
        if "No authentication method configured" in text:
            # `auth status` reads only the settings; a run also takes the auth from flags or the environment.
            return self._auth_outside_settings({**os.environ, **self.env})
        return None, lines[-1] if lines else f"`qwen auth status` exited with {result.returncode}"

    def _auth_outside_settings(self, env: Mapping[str, str]) -> tuple[bool, str]:
        auth_type = _flag_value(self.extra_args, "--auth-type")
        if auth_type is not None:
            key = AUTH_KEY_VARS.get(auth_type)
            if key and (env.get(key) or (auth_type == "openai" and _flag_value(self.extra_args, "--openai-api-key"))):
                return True, f"auth type {auth_type} (from llmrun's extra_args)"
            return False, f"auth type {auth_type} is given, but {key or 'its credentials'} is not set"
        for auth_type, names in ENV_AUTH:
            if all(env.get(name) for name in names):
                return True, f"auth type {auth_type} (from {', '.join(names)})"
        return False, "no authentication method configured"

    def login_hint(self) -> str | None:
        return QwenParser.login_hint


def run_settings(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The system-defaults settings for one run: llmrun's, under any the machine already has.

    None when the machine's own defaults file exists but cannot be read as plain JSON; qwen
    then keeps reading that file and llmrun leaves it alone.
    """
    existing = _machine_defaults(env)
    if existing is None:
        return None
    return _merge(RUN_SETTINGS, existing)


def sampling_settings(request: ChatRequest, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The system settings for a run with sampling parameters: the machine's, with the
    request's values on top; None when the request sets none."""
    params = {name: value for name in SAMPLING_PARAMS if (value := getattr(request, name)) is not None}
    if not params:
        return None
    path = _system_settings_path(env)
    existing = _read_settings(path)
    if existing is None:
        raise UnsupportedFeature(
            f"cannot pass {', '.join(params)} to qwen: its system settings {path} cannot be read as plain JSON",
            runner="qwen",
        )
    run = {"model": {"generationConfig": {"samplingParams": params}}}
    return _merge({"$version": RUN_SETTINGS["$version"]}, _merge(existing, run))


def _system_settings_path(env: Mapping[str, str]) -> str:
    if explicit := env.get("QWEN_CODE_SYSTEM_SETTINGS_PATH"):
        return explicit
    if sys.platform == "darwin":
        return "/Library/Application Support/QwenCode/settings.json"
    return "/etc/qwen-code/settings.json"


def _defaults_path(env: Mapping[str, str]) -> str:
    explicit = env.get("QWEN_CODE_SYSTEM_DEFAULTS_PATH")
    return explicit or os.path.join(os.path.dirname(_system_settings_path(env)), "system-defaults.json")


def _machine_defaults(env: Mapping[str, str]) -> dict[str, Any] | None:
    return _read_settings(_defaults_path(env))


def _read_settings(path: str) -> dict[str, Any] | None:
    """A settings file as plain JSON: {} when there is none, None when it cannot be read."""
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None
