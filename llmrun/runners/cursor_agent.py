"""Cursor Agent (`cursor-agent`), in print mode with stream-json output.

Cursor's CLI is not in any package registry llmrun can install from, so this runner and the
transcripts in fixtures/cursor-agent/ follow its documentation (cursor.com/docs/cli:
reference/output-format, headless, authentication) and event lines that users of the real
CLI (2026.04–2026.08 builds) have published; the transcripts are hand-made in that format.

The events are Claude Code's stream-json in outline, so the parser is the shared one with
Cursor's differences on top: `system`/init carries the session id, `user` echoes the
prompt, `result` ends the run (usage in camelCase: `inputTokens`, `outputTokens`,
`cacheReadTokens`, `cacheWriteTokens`). There are no `stream_event` lines; instead, with
`--stream-partial-output`, each `assistant` line with a `timestamp_ms` is a text delta, and
every run of text (before a tool call, and at the end of the turn) is closed by an
`assistant` line repeating it whole (no `timestamp_ms`, or a `model_call_id`), which is
dropped. Thinking comes as `thinking` lines (`delta`, `completed`), tools as `tool_call`
lines (`started`, `completed` with a `result` of one outcome: `success`, `rejected`,
`permissionDenied`, `error`, …), and `retry` / `connection` lines report reconnects. A
failure before the model answers exits non-zero with the message on stderr.

The prompt goes over stdin: in print mode without a positional prompt cursor-agent reads a
piped stdin (documented: print mode is inferred from piped stdin). `options={
"prompt_in_argv": True}` passes it as the last argument instead, for builds that ignore
stdin; it is then limited to 128 KiB and visible in `ps`. There is no system prompt flag:
the system prompt goes in front of the prompt.

Agent tools: `--mode=ask` (questions and answers, read-only) unless the request allows
tools; with `allow_tools`, agent mode and `--force` (commands run unasked).
`options={"mode": "plan"}` picks the read-only planning mode. `--trust` trusts the
working directory, as headless runs refuse an untrusted one; `options={"trust": False}`
leaves that to cursor-agent. Sessions: `request.session_id` is passed as `--resume` and
only the new turns are sent.

Health: `cursor-agent --version`, and `cursor-agent status` ("✓ Logged in as …" or "Not
logged in"); CURSOR_API_KEY also counts as logged in.

Options (`ChatRequest.options`): `mode`, `trust`, `prompt_in_argv`, and `extra_args` (a
list appended to the command).
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from .. import process
from ..errors import (
    AuthenticationError,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..prompting import flatten_conversation, new_turns, with_system_prompt
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, _last_line, as_count, json_object
from .stream_json import StreamJsonParser

LOGIN_HINT = "run `cursor-agent login`, or set CURSOR_API_KEY"
ARGV_PROMPT_LIMIT = 128 * 1024
READ_ONLY_MODES = ("ask", "plan")
# Tool outcomes that mean the tool was not allowed to run.
DENIED = ("rejected", "permissionDenied", "readPermissionDenied", "writePermissionDenied")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_AUTH = re.compile(
    r"authentication required|not authenticated|not logged in|unauthenticated|unauthori[sz]ed|"
    r"invalid api key|agent login|CURSOR_API_KEY",
    re.I,
)
_RATE = re.compile(r"rate.?limit|usage limit|too many requests|resource.exhausted|\b429\b", re.I)
_UNAVAILABLE = re.compile(
    r"\b5\d\d\b|overloaded|unavailable|ECONNREFUSED|ECONNRESET|ENOTFOUND|ETIMEDOUT|network error|fetch failed", re.I
)
_MODEL = re.compile(r"cannot use this model|invalid model|unknown model|model .{0,80}not (found|available)", re.I)
_SESSION = re.compile(r"(session|chat|conversation) .{0,80}not found|no (session|chat|conversation) found", re.I)


def classify(message: str) -> RunnerError | None:
    """The typed error for what cursor-agent said, or None when the words say nothing known."""
    if _AUTH.search(message):
        return AuthenticationError(message, hint=LOGIN_HINT)
    if _RATE.search(message):
        return RateLimitError(message)
    if _SESSION.search(message):
        return SessionNotFound(message)
    if _MODEL.search(message):
        return ModelNotFound(message, hint="`cursor-agent models` lists the models of your account")
    if _UNAVAILABLE.search(message):
        return ServiceUnavailable(message)
    return None


class CursorAgentParser(StreamJsonParser):
    """Claude's stream-json as cursor-agent prints it (see the module docstring)."""

    login_hint = LOGIN_HINT

    def __init__(self) -> None:
        super().__init__()
        self._segment = 0  # runs of text between tool calls; each later one is a new paragraph
        self._deltas: dict[int, str] = {}  # text streamed per segment
        self._thought_streamed = False

    def feed(self, line: str) -> list[ChatChunk]:
        event = json_object(line)
        if event is None:
            return []  # noise on stdout, skipped
        kind = event.get("type")
        if kind == "thinking":
            return self._thinking(event)
        if kind == "tool_call":
            return self._tool_call(event)
        if kind in ("retry", "connection"):
            return self._reconnect(event)
        return super().feed(line)

    # --- Cursor's own events -------------------------------------------------------------

    def _assistant(self, event: dict[str, Any]) -> list[ChatChunk]:
        message = event.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        text = "".join(
            block["text"]
            for block in (content if isinstance(content, list) else [])
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
        if not text:
            return []
        if _is_partial(event):
            self._deltas[self._segment] = self._deltas.get(self._segment, "") + text
        elif self._segment in self._deltas or text == self._deltas.get(self._segment - 1):
            return []  # the whole run of text again, after its deltas
        return [self._text(f"segment-{self._segment}", text)]

    def _thinking(self, event: dict[str, Any]) -> list[ChatChunk]:
        text = event.get("text")
        if event.get("subtype") != "delta" or not isinstance(text, str) or not text:
            return []
        if _is_partial(event):
            self._thought_streamed = True
        elif self._thought_streamed:
            return []
        return [ChatChunk(thinking=text)]

    def _tool_call(self, event: dict[str, Any]) -> list[ChatChunk]:
        call = event.get("tool_call")
        if not isinstance(call, dict) or not call:
            return []
        key, body = next(iter(call.items()))
        body = body if isinstance(body, dict) else {}
        name = key[: -len("ToolCall")] if key.endswith("ToolCall") else key
        call_id = event.get("call_id") if isinstance(event.get("call_id"), str) else None
        if event.get("subtype") == "started":
            self._segment += 1
            self._thought_streamed = False
            return [ChatChunk(agent_event=AgentEvent(kind="tool_use", id=call_id, name=name, input=body.get("args")))]
        if event.get("subtype") != "completed":
            return []
        result = body.get("result")
        outcome, output = next(iter(result.items())) if isinstance(result, dict) and result else ("", None)
        kind: Literal["permission_denied", "tool_result"] = "permission_denied" if outcome in DENIED else "tool_result"
        failed = outcome != "success"
        return [
            ChatChunk(
                agent_event=AgentEvent(
                    kind=kind, id=call_id, name=name, input=body.get("args"), output=output, is_error=failed
                )
            )
        ]

    def _reconnect(self, event: dict[str, Any]) -> list[ChatChunk]:
        attempt = event.get("attempt")
        what = f"{event.get('type')} {event.get('subtype') or ''}".strip()
        message = f"{what} (attempt {attempt})" if attempt is not None else what
        kind: Literal["retry", "notice"] = "retry" if event.get("type") == "retry" else "notice"
        return [ChatChunk(agent_event=AgentEvent(kind=kind, message=message))]

    # --- refinements of the shared parser --------------------------------------------------

    @staticmethod
    def usage_from(usage: dict[str, Any]) -> Usage:
        def count(*keys: str) -> int:
            for key in keys:
                if (value := as_count(usage.get(key))) is not None:
                    return value
            return 0

        return Usage(
            input_tokens=count("inputTokens", "input_tokens"),
            output_tokens=count("outputTokens", "output_tokens"),
            cache_read_tokens=count("cacheReadTokens", "cache_read_input_tokens"),
            cache_write_tokens=count("cacheWriteTokens", "cache_creation_input_tokens"),
        )

    def error_from_result(self, event: dict[str, Any]) -> RunnerError:
        text = str(event.get("result") or event.get("error") or event.get("subtype") or "cursor-agent failed")
        return classify(text) or super().error_from_result(event)


def _is_partial(event: dict[str, Any]) -> bool:
    return isinstance(event.get("timestamp_ms"), (int, float)) and not event.get("model_call_id")


class CursorAgentRunner(CliRunner):
    name = "cursor_agent"
    option_names = frozenset({"mode", "trust", "prompt_in_argv", "extra_args"})
    display_name = "Cursor Agent"
    binary = "cursor-agent"
    aliases = ("cursor-agent", "cursor")
    install_hint = "curl https://cursor.com/install -fsS | bash"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=True,
        sessions=True,
        system_prompt=True,
        usage=True,
        model_discovery=True,
    )
    # No default model: cursor-agent's own choice ("auto" unless configured) applies.

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        turns = new_turns(request.messages) if request.session_id else request.conversation()
        prompt = with_system_prompt(flatten_conversation(turns), request.system_prompt())
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "--print", "--output-format=stream-json", "--stream-partial-output"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        mode = self._mode(request)
        if mode != "agent":
            argv.append(f"--mode={mode}")
        if request.allow_tools:
            argv.append("--force")
        if options.get("trust", True):
            argv.append("--trust")
        if session := self.session_to_resume(request):
            argv.append(f"--resume={session}")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        stdin: bytes | None = prompt.encode()
        if options.get("prompt_in_argv"):
            if len(prompt.encode()) > ARGV_PROMPT_LIMIT:
                raise UnsupportedFeature(
                    "the prompt is over the 128 KiB an argument may hold; pass it over stdin", runner=self.name
                )
            argv += ["--", prompt]  # a prompt starting with "-" stays the prompt
            stdin = None
        return process.Invocation(argv=argv, stdin=stdin, env_remove=self.env_remove, cwd=request.cwd)

    def _mode(self, request: ChatRequest) -> str:
        mode = request.options.get("mode")
        if mode is None:
            return "agent" if request.allow_tools else "ask"
        if mode not in (*READ_ONLY_MODES, "agent"):
            raise UnsupportedFeature(f"unknown mode {mode!r}; cursor-agent knows agent, ask and plan", runner=self.name)
        if mode == "agent" and not request.allow_tools:
            raise UnsupportedFeature("agent mode runs agent tools: set allow_tools to use it", runner=self.name)
        return str(mode)

    def new_parser(self, request: ChatRequest) -> Parser:
        return CursorAgentParser()

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        message = _last_line(_ANSI.sub("", stderr))
        if message.lower().startswith("error: "):
            message = message[len("error: ") :]
        if "unknown option" in stderr or "unknown argument" in stderr:
            return RunnerError(
                f"this cursor-agent does not accept llmrun's flags: {message}",
                hint="update it with `cursor-agent update`",
            )
        return classify(message) or super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        result = await process.run_command([binary, "status"], env=self.env, env_remove=self.env_remove)
        text = _ANSI.sub("", result.stdout + "\n" + result.stderr)
        said = next((line.strip() for line in text.splitlines() if "logged in" in line.lower()), "")
        if said and "not logged in" not in said.lower():
            return True, said.lstrip("✓ ").strip()
        if self.env.get("CURSOR_API_KEY") or os.environ.get("CURSOR_API_KEY"):
            return True, "CURSOR_API_KEY is set"
        if said:
            return False, said
        return None, _last_line(text) or f"`cursor-agent status` exited with {result.returncode}"

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    async def discover_models(self, binary: str) -> list[str]:
        for args in (["models"], ["--list-models"]):
            result = await process.run_command([binary, *args], env=self.env, env_remove=self.env_remove)
            if result.returncode == 0 and (models := parse_models(result.stdout)):
                return models
        return []


def parse_models(text: str) -> list[str]:
    """Model ids from `cursor-agent models`: `id - Label (default)` lines between a header and a tip."""
    models = []
    for line in _ANSI.sub("", text).splitlines():
        model, dash, _label = line.strip().partition(" - ")
        if dash and model and " " not in model:
            models.append(model)
    return models
