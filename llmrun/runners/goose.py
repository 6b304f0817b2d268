"""Goose (`goose`, Block's open-source agent), in `goose run --output-format stream-json` mode.

Goose is not in any package registry llmrun can install from, so this runner and the
transcripts in fixtures/goose/ follow its source (crates/goose-cli: `cli.rs` for the run
flags, `session/mod.rs` for the stream-json events, `conversation/message.rs` for the
message shape, `providers/errors.rs` for the error texts); the transcripts are hand-made
in that format.

The prompt goes over stdin: `goose run -i -` reads all of stdin as the instructions.
Each stdout line is one JSON object tagged by `type`: `message` (a goose message: `role`,
`content` items `text`, `thinking`, `toolRequest`, `toolResponse`, ...), `notification`
(extension logs and progress), `model_change` (older builds), `error` and `complete`.
With a streaming provider each assistant `message` carries the next piece of text, so the
pieces are passed on as deltas. `complete` ends a good run; builds from 2026 put the
session's `input_tokens`, `output_tokens`, cache tokens and `cost_usd` in it, older ones
only `total_tokens`.

Failures: a provider error arrives as an `error` event ("Authentication error: …", "Rate
limit exceeded: …", "Server error: …", "Network error: …", "Context length exceeded: …",
"Request failed: …"), typed from its words. Older builds then print `complete` and exit 0,
newer ones exit 1; the `error` event decides either way. After an error goose also prints
its interrupt prompt ("Yes — what would you like me to do?") as plain text, which is not
JSON and is skipped. Goose's providers retry 429 and 5xx answers a bounded number of
times; llmrun's stall timeout covers the rest.

Sessions: stream-json names no session, so llmrun names each new one (`--name=llmrun-…`,
or `options={"session_name": …}`) and reports that name as the session id;
`request.session_id` resumes it with `--resume --name=<id>` (goose matches a session's name
or its id) and only the new turns are sent. Model and provider are passed per run
(`--model=`, and `--provider=` from `options={"provider": …}`); without them goose's
configured GOOSE_PROVIDER / GOOSE_MODEL apply. The system prompt goes in `--system=`
(added to goose's own), visible in `ps`; one over the 128 KiB an argument can hold leads
the prompt on stdin instead.

Lockdown: unless the request allows tools, the run has GOOSE_MODE=chat (goose offers the
model no tools at all) and `--no-profile` (none of the user's extensions start). With
`allow_tools`, GOOSE_MODE=auto (headless runs refuse the approve modes) and the user's
extensions load. Telemetry is off (GOOSE_TELEMETRY_OFF, GOOSE_TELEMETRY_ENABLED=false).
~/.config/goose/config.yaml is never written.

Warm sessions: `runner.session()` keeps one `goose acp` process (the Agent Client
Protocol) for the whole conversation, over the shared ACP transport. `goose acp` takes
no run flags, so GOOSE_MODE, the telemetry switches, GOOSE_MODEL and GOOSE_PROVIDER go in
its environment; the session is also set to goose's `chat` mode unless tools are
allowed, and llmrun refuses every permission request goose makes unless they are. What
cannot be locked down there: `goose acp` has no `--no-profile`, so the user's enabled
extensions start (chat mode offers their tools to no model). The system prompt leads
the first turn, and a session resumes with `session/load`.

Health: `goose --version`; logged in means a provider is configured (GOOSE_PROVIDER in
the environment or in goose's config.yaml), as goose keeps keys in the system keyring
where llmrun cannot cheaply look.

Options (`ChatRequest.options`): `provider`, `session_name`, `max_turns` (agent turns
without user input, with `allow_tools`), and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
)
from ..process import strip_ansi
from ..prompting import prompt_for, with_system_prompt
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, _last_line, as_count, as_dict, as_list, as_number, as_text, json_object

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = "configure a provider with `goose configure`, or set GOOSE_PROVIDER and its API key"
ARGV_LIMIT = 128 * 1024
# Settings of the run, over the user's own: telemetry off; GOOSE_MODE is set per request.
RUN_ENV = {"GOOSE_TELEMETRY_OFF": "1", "GOOSE_TELEMETRY_ENABLED": "false", "NO_COLOR": "1"}

_AUTH = re.compile(
    r"authentication error|unauthori[sz]ed|invalid api key|incorrect api key|\b401\b|\b403\b|"
    r"no provider configured|goose configure|configuration value not found: \w*(api_key|token)",
    re.I,
)
_RATE = re.compile(r"rate limit|too many requests|\b429\b|credits exhausted|insufficient balance", re.I)
_CONTEXT = re.compile(r"context length exceeded|context_length_exceeded|maximum context length", re.I)
_MODEL = re.compile(r"model .{0,120}(does not exist|not found|not available)|unknown model|model_not_found", re.I)
_SESSION = re.compile(r"no session found|session .{0,80}not found", re.I)
_UNAVAILABLE = re.compile(r"server error|network error|could not connect|timed out|\b5\d\d\b|overloaded", re.I)


def classify(message: str) -> RunnerError | None:
    """The typed error for what goose said, or None when the words say nothing known."""
    if _SESSION.search(message):
        return SessionNotFound(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if _AUTH.search(message):
        return AuthenticationError(message, hint=LOGIN_HINT)
    if _RATE.search(message):
        return RateLimitError(message)
    if _MODEL.search(message):
        return ModelNotFound(message)
    if _UNAVAILABLE.search(message):
        return ServiceUnavailable(message)
    return None


class GooseParser(Parser):
    """Goose's stream-json events (see the module docstring)."""

    def __init__(self, session_id: str | None = None) -> None:
        super().__init__()
        self.session_id = session_id
        self.model: str | None = None
        self._sent_text = False
        self._after_tool = False  # the next text starts a new paragraph

    def feed(self, line: str) -> list[ChatChunk]:
        event = json_object(line)
        if event is None:
            return []  # the interrupt prompt after an error, or other noise
        kind = event.get("type")
        if kind == "message":
            return self._message(as_dict(event.get("message")))
        if kind == "error":
            message = as_text(event.get("error")) or "goose reported an error"
            if self.error is None:
                self.error = classify(message) or RunnerError(message)
            return []
        if kind == "complete":
            self.finished = True
            if self.error is not None:
                return []  # older builds complete after an error too
            return [self._final(event)]
        if kind == "model_change":
            self.model = as_text(event.get("model")) or self.model
            return []
        if kind == "notification":
            # An extension's log or progress, as {"log": {"message": …}} or {"progress": {…}}.
            note = as_text(as_dict(event.get("log")).get("message")) or as_text(
                as_dict(event.get("progress")).get("message")
            )
            return [ChatChunk(agent_event=AgentEvent(kind="notice", message=note))] if note else []
        return []

    def _message(self, message: dict[str, Any]) -> list[ChatChunk]:
        chunks = []
        assistant = message.get("role") == "assistant"
        for item in as_list(message.get("content")):
            item = as_dict(item)
            kind = item.get("type")
            if kind == "text" and assistant and (text := as_text(item.get("text"))):
                if self._after_tool and self._sent_text:
                    text = "\n\n" + text
                self._sent_text, self._after_tool = True, False
                chunks.append(ChatChunk(delta=text))
            elif kind == "thinking" and (thought := as_text(item.get("thinking"))):
                chunks.append(ChatChunk(thinking=thought))
            elif kind in ("toolRequest", "toolResponse"):
                self._after_tool = True
                chunks.append(_tool_request(item) if kind == "toolRequest" else _tool_response(item))
        return chunks

    def _final(self, event: dict[str, Any]) -> ChatChunk:
        def count(key: str) -> int:
            return as_count(event.get(key)) or 0

        usage = Usage(
            input_tokens=count("input_tokens"),
            output_tokens=count("output_tokens"),
            cache_read_tokens=count("cache_read_input_tokens"),
            cache_write_tokens=count("cache_write_input_tokens"),
            total_tokens=count("total_tokens"),
        )
        return ChatChunk(
            finish_reason="stop",
            usage=usage,
            session_id=self.session_id,
            model=self.model,
            cost_usd=as_number(event.get("cost_usd")),
        )


def _tool_request(item: dict[str, Any]) -> ChatChunk:
    call = as_dict(item.get("toolCall"))
    value = as_dict(call.get("value"))
    failed = call.get("status") == "error"
    return ChatChunk(
        agent_event=AgentEvent(
            kind="tool_use",
            id=as_text(item.get("id")),
            name=as_text(value.get("name")),
            input=value.get("arguments"),
            is_error=failed,
            message=as_text(call.get("error")) if failed else None,
        )
    )


def _tool_response(item: dict[str, Any]) -> ChatChunk:
    result = as_dict(item.get("toolResult"))
    value = as_dict(result.get("value"))
    texts = [as_text(as_dict(part).get("text")) for part in as_list(value.get("content"))]
    output = "\n".join(text for text in texts if text) or None
    error = as_text(result.get("error"))
    denied = error is not None and re.search(r"denied|declined|cancelled|not allowed", error, re.I) is not None
    kind: Literal["permission_denied", "tool_result"] = "permission_denied" if denied else "tool_result"
    return ChatChunk(
        agent_event=AgentEvent(
            kind=kind,
            id=as_text(item.get("id")),
            output=output if error is None else error,
            is_error=error is not None or value.get("isError") is True,
        )
    )


class GooseRunner(CliRunner):
    name = "goose"
    option_names = frozenset({"provider", "session_name", "max_turns", "extra_args"})
    display_name = "Goose"
    binary = "goose"
    aliases = ("goose-cli",)
    install_hint = "curl -fsSL https://github.com/block/goose/releases/download/stable/download_cli.sh | bash"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=True,
        sessions=True,
        system_prompt=True,
        usage=True,
        cost=True,
        warm=True,
    )
    extra_args_at = 2  # after `run`
    cannot_lock_down = (
        "warm sessions (`goose acp`) start the user's enabled extensions; chat mode offers their tools to no model"
    )
    # No default model: goose's configured GOOSE_PROVIDER / GOOSE_MODEL apply.

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        if not request.session_id and not request.options.get("session_name"):
            # A name of llmrun's own for the new session: it is the id a later turn resumes.
            options = {**request.options, "session_name": f"llmrun-{uuid.uuid4().hex}"}
            request = request.model_copy(update={"options": options})
        async with aclosing(super().stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "run", "--output-format=stream-json", "-i", "-"]
        if session := self.session_to_resume(request):
            argv += ["--resume", f"--name={session}"]
        elif name := options.get("session_name"):
            argv.append(f"--name={name}")
        if provider := options.get("provider"):
            argv.append(f"--provider={provider}")
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        prompt = prompt_for(request)
        if system := request.system_prompt():
            if len(system.encode()) <= ARGV_LIMIT:
                argv.append(f"--system={system}")
            else:  # over what one argument can hold: it leads the prompt instead
                prompt = with_system_prompt(prompt, system)
        if request.allow_tools:
            if (max_turns := options.get("max_turns")) is not None:
                argv.append(f"--max-turns={int(max_turns)}")
        else:
            argv.append("--no-profile")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        env = {**RUN_ENV, "GOOSE_MODE": "auto" if request.allow_tools else "chat"}
        return process.Invocation(
            argv=argv, stdin=prompt.encode(), env=env, env_remove=self.env_remove, cwd=request.cwd
        )

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection

        request = settings.request([])
        invocation = self.prepared_invocation(request)
        # `goose acp` takes none of the run flags: the lockdown (GOOSE_MODE, telemetry) stays
        # in the environment, the model and provider go there too, and the session's mode is
        # set to chat as well; the system prompt leads the first turn.
        invocation.argv = [invocation.argv[0], "acp"]
        model_env = {"GOOSE_MODEL": self.model_for(request), "GOOSE_PROVIDER": settings.options.get("provider")}
        invocation.env = {**invocation.env, **{k: str(v) for k, v in model_env.items() if v}}
        return acp_connection(self, invocation, settings, resume, AcpProfile(read_only_modes=("chat",)))

    def new_parser(self, request: ChatRequest) -> Parser:
        return GooseParser(request.session_id or request.options.get("session_name"))

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        message = _last_line(strip_ansi(stderr))
        if message.lower().startswith("error: "):
            message = message[len("error: ") :]
        if "unexpected argument" in stderr or "invalid value" in stderr:
            return RunnerError(
                f"this goose does not accept llmrun's flags: {message}", hint="update it with `goose update`"
            )
        return classify(message) or super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        provider = self.env.get("GOOSE_PROVIDER") or os.environ.get("GOOSE_PROVIDER")
        if provider:
            return True, f"provider {provider} (GOOSE_PROVIDER)"
        config = config_file(self.env)
        try:
            text = config.read_text("utf-8", errors="replace")
        except OSError:
            return False, f"no provider configured ({config} not found)"
        for line in text.splitlines():
            key, colon, value = line.partition(":")
            if colon and key.strip() in ("GOOSE_PROVIDER", "active_provider") and value.strip():
                return True, f"provider {value.strip().strip(chr(34) + chr(39))} ({config})"
        return False, f"no provider configured in {config}"

    def login_hint(self) -> str | None:
        return LOGIN_HINT


def config_file(env: dict[str, str]) -> Path:
    """Goose's config.yaml: under GOOSE_PATH_ROOT if set, else the XDG config directory."""

    def get(name: str) -> str:
        return env.get(name) or os.environ.get(name, "")

    if root := get("GOOSE_PATH_ROOT"):
        return Path(root) / "config" / "config.yaml"
    base = get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "goose" / "config.yaml"
