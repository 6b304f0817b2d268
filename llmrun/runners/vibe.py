"""Mistral Vibe (`vibe`), in headless mode with streaming JSON-lines output.

`vibe` (PyPI `mistral-vibe`, Python >= 3.12) is a Python entry point that execs its Rust
CLI, which runs the agent in a Python app server of its own; all three are in the run's
process group and go with it.

The prompt goes over stdin (`vibe -p` with no text reads stdin as the prompt). With
`--output=streaming` vibe prints its session entries as JSON lines, each once it is
complete: `message` (the user's turn, then each assistant message whole; no token deltas),
`reasoning` (the model's thinking, whole), `effect` (a tool that ran or was refused) and
`callback` (an approval asked and answered). Every entry carries the `sessionId`. Usage and
cost are not in that stream: `--output-dir` makes vibe write `export.json` (outcome, token
usage, cost, error) into a private directory of the run, which llmrun reads once vibe has
exited; a run whose export is missing or not `finished` did not complete. The directory
also gets a copy of the session journal and is removed after the run.

Model: vibe has no model flag; the model is its `active_model` setting, an alias of a
`[[models]]` entry of the user's config. llmrun names the request's model per run with
VIBE_ACTIVE_MODEL (vibe reads any setting from a `VIBE_`-prefixed variable, over its
config file), never editing the config. An alias that is not configured is not an error:
vibe falls back to its default model. There is no system prompt option that takes text,
so the system prompt goes in front of the prompt.

Agent tools: without `allow_tools` llmrun runs the `ask` agent with only `read_file`
enabled (`--enabled-tools`: in headless mode every other tool, the shell, writes and MCP
tools included, is refused by policy, and a refusal comes back as a `permission_denied`
agent event), and forces VIBE_BYPASS_TOOL_PERMISSIONS and VIBE_ENABLE_AUTO_APPROVE off, so
neither the user's config nor their environment can approve tools. The working directory
stays untrusted (headless vibe never trusts it by itself), so a project's `.vibe/` config
is not loaded. With `allow_tools`: `--auto-approve`. Telemetry, update checks and
notifications are off unless the user's environment says otherwise.

Failures: vibe exits 1 on a usage or config error (a bad or missing API key, a session it
cannot find), 2 when the model API still fails after its retries, 3 when a limit or SIGTERM
stopped the run; the reason is the `Error: ...` (or `Stopped: ...`) line on stderr, typed by
the HTTP status it quotes. Vibe retries 429, 5xx and unreachable servers for up to
`api_retry_max_elapsed_time` (300 s by default); llmrun bounds that to `retry_seconds`
(30 s) per run through VIBE_API_RETRY_MAX_ELAPSED_TIME, unless that variable is set.

Sessions: `request.session_id` is passed as `--resume=<id>` and only the new turns are
sent; otherwise history is flattened into the prompt. Warm sessions run `vibe-acp`, the
Agent Client Protocol server installed beside `vibe` (looked up next to `vibe`, then where
its link points, then on PATH): text streams token by token there, the model and the
lockdown come through the same variables (`VIBE_ENABLED_TOOLS` in place of the flag, as
vibe-acp takes none), the session runs in the `ask` mode and llmrun refuses every
permission request unless tools are allowed; a resumed session is loaded over the protocol.

Health: `vibe --version`. Vibe has no command that tells whether it has a working key
(keys live in the environment, `$VIBE_HOME/.env` or the system keyring), so `check_auth`
only reports MISTRAL_API_KEY; `health(probe=True)` proves it.

Options (`ChatRequest.options`): `agent` (a vibe agent; without `allow_tools` it still gets
only `read_file`), `trust` (trust the working directory for the run: the project's
`.vibe/` config loads), `max_turns`, `max_price` (dollars), `retry_seconds` (None leaves
vibe's own retry budget), and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from .. import private, process
from ..errors import (
    AuthenticationError,
    BinaryNotFound,
    ContextLengthExceeded,
    ModelNotFound,
    OutputParseError,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
)
from ..prompting import prompt_for, with_system_prompt
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, WholeMessageParser, as_count, as_dict, as_list, as_number, as_text, json_object

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = (
    "set MISTRAL_API_KEY (or run `vibe --setup`), or configure a provider of your own in ~/.vibe/config.toml "
    "([[providers]] and [[models]]) and name its model alias"
)
EXPORT_FILE = "export.json"
ACP_BINARY = "vibe-acp"
DEFAULT_RETRY_SECONDS = 30
# The one tool a locked-down run keeps: headless vibe refuses every tool not enabled.
READ_ONLY_TOOLS = ("read_file",)
# Settings that would approve tools on their own, forced off in a locked-down run.
LOCKED_ENV = {"VIBE_BYPASS_TOOL_PERMISSIONS": "false", "VIBE_ENABLE_AUTO_APPROVE": "false"}
QUIET_ENV = {
    "VIBE_ENABLE_TELEMETRY": "false",
    "VIBE_ENABLE_UPDATE_CHECKS": "false",
    "VIBE_ENABLE_NOTIFICATIONS": "false",
}

_HTTP_STATUS = re.compile(r"(?:Client|Server) error '(\d{3})")
_AUTH = re.compile(r"invalid api key|missing \w+ environment variable|api key|unauthori[sz]ed|forbidden", re.I)
_RATE = re.compile(r"rate.?limit|too many requests", re.I)
_CONTEXT = re.compile(r"context (length|window)|too many tokens|prompt is too long|maximum context", re.I)
_MODEL = re.compile(r"model\b.{0,80}\b(not found|does not exist|unknown|not available)|unknown model", re.I)
_UNAVAILABLE = re.compile(
    r"connection attempts failed|connect(ion)? (error|refused)|timed out|unreachable|overloaded|unavailable", re.I
)


def classify(message: str) -> RunnerError | None:
    """The typed error for vibe's `Error: ...` message; None when it says nothing known."""
    if message.startswith("Session not found"):
        return SessionNotFound(message)
    found = _HTTP_STATUS.search(message)
    status = int(found.group(1)) if found else None
    if status in (401, 403) or (status is None and _AUTH.search(message)):
        return AuthenticationError(message, hint=LOGIN_HINT)
    if status == 429 or (status is None and _RATE.search(message)):
        return RateLimitError(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if status == 404 or _MODEL.search(message):
        return ModelNotFound(message, hint="name a model alias of the [[models]] in vibe's config.toml")
    if (status is not None and status >= 500) or _UNAVAILABLE.search(message):
        return ServiceUnavailable(message)
    return None


def said(stderr: str, prefix: str) -> str | None:
    """What vibe's last `<prefix>...` line on stderr says, the lines that continue it included."""
    lines = stderr.strip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(prefix):
            return "\n".join([lines[index][len(prefix) :], *lines[index + 1 :]]).strip()
    return None


def _joined_text(content: Any) -> str:
    """The text blocks of a message's content, as one string."""
    return "".join(
        block["text"]
        for block in as_list(content)
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )


class VibeParser(WholeMessageParser):
    """Parses `vibe -p --output=streaming`: whole session entries, one per line."""

    def __init__(self) -> None:
        super().__init__()
        self.session_id: str | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        entry = json_object(line)
        if entry is None:
            return []  # noise on stdout, skipped
        self.session_id = self.session_id or as_text(entry.get("sessionId"))
        kind = entry.get("type")
        if kind == "message" and entry.get("role") == "assistant":
            return self._text(_joined_text(entry.get("content")))
        if kind == "reasoning":
            return self._thinking(entry.get("text"))
        if kind == "effect":
            return self._effect(entry)
        return []  # the user's own message, approval callbacks, entry types of later versions

    def close(self) -> list[ChatChunk]:
        # Usage, cost and whether the run finished come from vibe's export (see the runner).
        return [ChatChunk(finish_reason="stop", session_id=self.session_id)]

    def _effect(self, entry: dict[str, Any]) -> list[ChatChunk]:
        detail = as_dict(entry.get("detail"))
        state = as_dict(entry.get("state"))
        call_id = as_text(entry.get("id"))
        name = as_text(detail.get("toolName")) or as_text(entry.get("title"))
        tool_input = detail.get("input")
        use = AgentEvent(kind="tool_use", id=call_id, name=name, input=tool_input)
        error = as_dict(state.get("error"))
        if error.get("code") == "tool_denied":
            message = as_text(error.get("message")) or "denied"
            done = AgentEvent(kind="permission_denied", id=call_id, name=name, message=message, is_error=True)
        else:
            failed = state.get("status") != "completed"
            output = state.get("outputText") if "outputText" in state else state.get("output")
            done = AgentEvent(
                kind="tool_result",
                id=call_id,
                name=name,
                input=tool_input,
                output=as_text(error.get("message")) if failed and error else output,
                is_error=failed,
            )
        return [ChatChunk(agent_event=use), ChatChunk(agent_event=done)]


def usage_from(usage: dict[str, Any]) -> Usage:
    """Vibe counts cached input tokens inside input_tokens; llmrun keeps them apart."""

    def count(key: str) -> int:
        return as_count(usage.get(key)) or 0

    cached = count("cached_input_tokens")
    return Usage(
        input_tokens=max(0, count("input_tokens") - cached),
        output_tokens=count("output_tokens"),
        cache_read_tokens=cached,
        total_tokens=count("total_tokens"),
    )


class VibeRunner(CliRunner):
    name = "vibe"
    option_names = frozenset({"agent", "trust", "max_turns", "max_price", "retry_seconds", "extra_args"})
    display_name = "Mistral Vibe"
    binary = "vibe"
    aliases = ("mistral-vibe", "mistral_vibe")
    install_hint = "pipx install mistral-vibe"  # needs Python >= 3.12
    min_version = "3.0.2"
    needs_finished_output = False  # vibe's export says whether the run finished, not its stdout
    cannot_lock_down = "the user's Vibe hooks (hooks.toml) still run"
    builtin_models = (("mistral-medium-3.5", ()),)
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,
        thinking=True,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        usage=True,
        cost=True,
        prompt_via_stdin=True,
    )
    # No default model: vibe's `active_model` setting applies.

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        session = self.session_to_resume(request)
        output_dir = self._output_dir(request)
        os.makedirs(output_dir, mode=0o700, exist_ok=True)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "-p", "--output=streaming", f"--output-dir={output_dir}"]
        agent = options.get("agent")
        if request.allow_tools:
            argv.append("--auto-approve")
        else:
            agent = agent or "ask"
            argv += [f"--enabled-tools={tool}" for tool in READ_ONLY_TOOLS]
        if agent:
            argv.append(f"--agent={agent}")
        if options.get("trust"):
            argv.append("--trust")
        if (turns := options.get("max_turns")) is not None:
            argv.append(f"--max-turns={int(turns)}")
        if (price := options.get("max_price")) is not None:
            argv.append(f"--max-price={float(price)}")
        if session:
            argv.append(f"--resume={session}")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        prompt = with_system_prompt(prompt_for(request), request.system_prompt())
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env=self._run_env(request),
            env_defaults=self._env_defaults(request),
            env_remove=self.env_remove,
            cwd=request.cwd,
        )

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection

        request = settings.request([])
        env = self._run_env(request)
        if not request.allow_tools:
            # vibe-acp takes no flags: the tools it may use are named through its settings.
            env["VIBE_ENABLED_TOOLS"] = json.dumps(READ_ONLY_TOOLS)
        invocation = process.Invocation(
            argv=[self._acp_binary(self.resolve_binary())],
            env={**self.env, **env},
            env_defaults=self._env_defaults(request),
            env_remove=self.env_remove,
            cwd=request.cwd,
        )
        # The prompt result's usage counts the whole session; `ask` refuses what is not allowed.
        profile = AcpProfile(read_only_modes=("ask",), cumulative_usage=True)
        return acp_connection(self, invocation, settings, resume, profile)

    def _run_env(self, request: ChatRequest) -> dict[str, str]:
        """The settings a run must have whatever the user's config and environment say."""
        env: dict[str, str] = {}
        if model := self.model_for(request):
            env["VIBE_ACTIVE_MODEL"] = model
        if not request.allow_tools:
            env.update(LOCKED_ENV)
        return env

    @staticmethod
    def _env_defaults(request: ChatRequest) -> dict[str, str]:
        """Quiet and bounded, unless the user's environment says otherwise."""
        defaults = dict(QUIET_ENV)
        retry_seconds = request.options.get("retry_seconds", DEFAULT_RETRY_SECONDS)
        if retry_seconds is not None:
            defaults["VIBE_API_RETRY_MAX_ELAPSED_TIME"] = str(float(retry_seconds))
        return defaults

    def _acp_binary(self, binary: str) -> str:
        """`vibe-acp`, the ACP server installed with vibe: beside `vibe` (or where its link points), else on PATH."""
        for folder in (os.path.dirname(binary), os.path.dirname(os.path.realpath(binary))):
            candidate = os.path.join(folder, ACP_BINARY)
            if os.access(candidate, os.X_OK):
                return candidate
        if found := shutil.which(ACP_BINARY):
            return found
        raise BinaryNotFound(
            f"{ACP_BINARY}, the ACP server of mistral-vibe, is neither beside {binary} nor on PATH",
            runner=self.name,
            hint=f"reinstall with `{self.install_hint}`",
        )

    def new_parser(self, request: ChatRequest) -> Parser:
        return VibeParser()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        # A copy of its own, whose identity names the run's export directory while it lives.
        run = request.model_copy()
        output_dir = self._output_dir(run)
        try:
            async with aclosing(super().stream(run)) as chunks:
                async for chunk in chunks:
                    yield self._completed(chunk, output_dir) if chunk.is_final else chunk
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)

    def _completed(self, final: ChatChunk, output_dir: str) -> ChatChunk:
        """The final chunk with usage and cost from vibe's export; an error if the run did not finish."""
        try:
            with open(os.path.join(output_dir, EXPORT_FILE), encoding="utf-8") as fh:
                export = as_dict(json.load(fh))
        except (OSError, ValueError, RecursionError):
            export = {}
        outcome = export.get("outcome")
        if outcome != "finished":
            what = f"its outcome was {outcome!r}" if outcome else f"it wrote no {EXPORT_FILE}"
            raise OutputParseError(
                f"{self.display_name} ended without completing its answer ({what})", runner=self.name, exit_code=0
            )
        return final.model_copy(
            update={
                "usage": usage_from(as_dict(export.get("usage"))),
                "cost_usd": as_number(export.get("cost_usd")),
                "session_id": final.session_id or as_text(export.get("session_id")),
            }
        )

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        if (message := said(stderr, "Error: ")) is not None:
            if re.search(r"unexpected argument|invalid value .* for '--", message):
                return ProcessFailed(
                    f"this vibe does not accept llmrun's flags: {message}", hint=f"upgrade with `{self.install_hint}`"
                )
            if typed := classify(message):
                return typed
            return ProcessFailed(f"{self.display_name} failed: {message}")
        if returncode == 3 and (outcome := said(stderr, "Stopped: ")) is not None:
            # A limit of the run (turns, price, tokens, time) or a SIGTERM ("terminated").
            hint = None if outcome == "terminated" else "raise the run's max_turns or max_price"
            return ProcessFailed(f"{self.display_name} stopped before finishing ({outcome})", hint=hint)
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        if self.env.get("MISTRAL_API_KEY") or os.environ.get("MISTRAL_API_KEY"):
            return True, "MISTRAL_API_KEY is set (not verified: `llmrun health --probe` tries it)"
        return None, "vibe may have a key in $VIBE_HOME/.env, the system keyring or a provider's own variable"

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    def _output_dir(self, request: ChatRequest) -> str:
        return os.path.join(private.directory(), f"vibe-run-{id(request):x}")
