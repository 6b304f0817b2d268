"""OpenAI Codex CLI (`codex`), in `codex exec --json` mode.

The prompt goes over stdin (`-` as the prompt argument; codex blocks until stdin ends, so
it always gets the prompt and then EOF). Codex prints whole items, not token deltas: each
answer message and reasoning summary arrives complete. A model is named (`-m`) only when
the request or llmrun's settings name one; otherwise codex's own choice applies (the
`model` of its config.toml, else its default). Codex's output does not say which model
answered, so the response takes it from the session file codex wrote (`turn_context`). The
working directory comes from `-C` (and the process's own cwd). A session named in the
request is resumed with `codex exec resume -- <id> -` (after `--`, so no id is read as a
flag such as `--last`);
otherwise history is flattened into the prompt. The system prompt replaces codex's base
instructions (`model_instructions_file`, a temporary file, so it is neither visible in
`ps` nor bounded by argv limits). Images given as data are attached from private files
(`-i`, see llmrun/images.py); codex takes no image URLs.

Agent tools are off unless the request allows them: the run is in the `read-only`
sandbox with no approval bypass, and codex is not offered its shell, image viewer, web
search, sub-agents, plugins or apps (`-c features.<name>=false`; a codex that does not
know a name ignores it with a notice). Some models still carry a tool of their own (the
gpt-5.x `apply_patch`, the code-mode `exec` of the gpt-6 family): what they try runs in
the read-only sandbox, so reading commands may still run and any write is refused. With
`allow_tools` the sandbox is `workspace-write` (edits inside the working directory, no
network) and codex keeps all its tools.

Failures surface in seconds. Codex retries a failing request itself (five times, 401s
included, with back-off) and, by default, retries an unreachable server for ever.
llmrun turns off the endless retries (`features.unbounded_connection_retries=false`),
ends a run at the first 401, and stops it after `max_retries` retries of an error
answer from the service (429, 5xx); each retry is reported as an agent event. Codex's
own retry counts can only be set per provider (`model_providers.<name>.request_max_retries`
and `stream_max_retries`); codex refuses that for its built-in providers such as
`openai`, and for a provider it does not know yet, so llmrun leaves them alone. For a
provider of your own, put them in `extra_args`.

Sampling parameters: codex has no setting for any of them (its Responses requests carry no
temperature, top_p, max_output_tokens or seed), so llmrun cuts `max_tokens` itself and names
the others as ignored.

Usage is per turn. Codex reports the running total of the thread, so for a resumed
session llmrun subtracts the total codex recorded for the thread before the run (read
from its session file under `$CODEX_HOME/sessions`); when that file cannot be read the
total is reported as it is, with a notice.

Runs never touch codex's config file: settings go on the command line (`-c key=value`,
before `exec`, where every codex version honours them), and a key the runner's
`extra_args` (or the `extra_args` option) already sets is left to them. The defaults
also turn off codex's analytics, feedback and update check.

Health: `codex login status` (exit 0 when logged in). Not logged in but CODEX_API_KEY
set counts as logged in: `codex exec` uses it. OPENAI_API_KEY alone is reported as
unknown (`authenticated=None`, status ok): providers configured with `env_key =
"OPENAI_API_KEY"` read it, codex's built-in `openai` provider does not.

Options (`ChatRequest.options`): `sandbox` (`read-only`, `workspace-write` or
`danger-full-access`; other than read-only needs `allow_tools`), `max_retries` (default
2; None leaves codex's own retries), `effort` (`model_reasoning_effort`), `profile`,
`config` (a dict of extra `-c` settings, values in Python form), and `extra_args` (a list
added to the `codex exec` options).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar

from .. import images, private, process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..prompting import new_turns, prompt_for
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, ImagePart, Usage
from .base import CliRunner, Parser, as_count, as_text, delta_chunk, json_object, json_text, line_shape

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = (
    "run `codex login`, or set CODEX_API_KEY (`printenv OPENAI_API_KEY | codex login --with-api-key` "
    "stores an OpenAI API key)"
)
DEFAULT_MAX_RETRIES = 2
SANDBOX_MODES = ("read-only", "workspace-write", "danger-full-access")

# Always: no telemetry or update check, and no endless retrying of an unreachable server.
DEFAULT_CONFIG: tuple[tuple[str, str], ...] = (
    ("analytics.enabled", "false"),
    ("feedback.enabled", "false"),
    ("check_for_update_on_startup", "false"),
    ("features.unbounded_connection_retries", "false"),
)
# Without allow_tools: tools codex would otherwise offer the model. Plugins and apps also
# make codex contact GitHub and ChatGPT at start-up, which a plain chat does not need.
TOOLS_OFF_CONFIG: tuple[tuple[str, str], ...] = (
    ("features.shell_tool", "false"),
    ("features.view_image", "false"),
    ("features.multi_agent", "false"),
    ("features.goals", "false"),
    ("features.image_generation", "false"),
    ("features.plugins", "false"),
    ("features.remote_plugin", "false"),
    ("features.apps", "false"),
    ("web_search", '"disabled"'),
)

_THREAD_ID = re.compile(r"^[0-9A-Za-z-]{8,64}$")


# --- reading codex's output ---------------------------------------------------------------

_STATUS = re.compile(r"\b(?:unexpected status|last status:?)\s*(\d{3})\b", re.I)
_AUTH = re.compile(
    r"missing environment variable|unauthorized|forbidden|not logged in|incorrect api key|invalid api key", re.I
)
_RATE = re.compile(r"too many requests|rate limit|exceeded retry limit|quota exceeded|usage limit", re.I)
_UNAVAILABLE = re.compile(
    r"high demand|overloaded|service unavailable|connection failed|error sending request|stream disconnected"
    r"|failed to lookup address|connection (refused|reset)|timed out|idle timeout|internal server error",
    re.I,
)
_CONTEXT = re.compile(r"context window|context length|context_length|ran out of room", re.I)
_MODEL = re.compile(r"model\b.*\b(does not exist|not found|not supported|unsupported|not available)", re.I)
_RETRY = re.compile(r"^Reconnecting\.\.\.\s*(?:(\d+)/(\d+))?", re.I)


def error_from_message(message: str) -> RunnerError:
    """The typed error for a failure codex describes in words (`error` / `turn.failed`)."""
    text = message.strip() or "codex reported an error"
    match = _STATUS.search(text)
    status = int(match.group(1)) if match else None
    if status in (401, 403) or _AUTH.search(text):
        return AuthenticationError(text, hint=LOGIN_HINT)
    if status == 429:
        return RateLimitError(text)
    if status is not None and status >= 500:
        return ServiceUnavailable(text)
    if _CONTEXT.search(text):
        return ContextLengthExceeded(text)
    if _MODEL.search(text) or status == 404:
        return ModelNotFound(text)
    if _RATE.search(text):
        return RateLimitError(text)
    if _UNAVAILABLE.search(text):
        return ServiceUnavailable(text)
    return RunnerError(text)


def usage_counts(usage: Any) -> dict[str, int]:
    """The integer fields of a codex usage object (`turn.completed`, session files)."""
    if not isinstance(usage, dict):
        return {}
    return {key: count for key, value in usage.items() if (count := as_count(value)) is not None}


def usage_from(counts: dict[str, int]) -> Usage:
    """llmrun's Usage from codex's counts, which follow OpenAI: input includes cached tokens."""
    cached = counts.get("cached_input_tokens", 0)
    written = counts.get("cache_write_input_tokens", 0)
    return Usage(
        input_tokens=max(0, counts.get("input_tokens", 0) - cached - written),
        output_tokens=counts.get("output_tokens", 0),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=counts.get("reasoning_output_tokens", 0),
    )


CODEX_MESSAGE = line_shape('{"type":"item.completed","item":{"id":"<id>","type":"agent_message","text":"<text>"}}')


class CodexParser(Parser):
    """Parses one run of `codex exec --json`.

    `baseline` is the thread's usage before this run when it resumes a session (codex
    reports running totals); `max_retries` bounds the retries llmrun waits through.
    """

    fast_line: ClassVar[re.Pattern[str] | None] = CODEX_MESSAGE
    """A line that is certainly a whole message of the answer, its text in group 1."""

    def __init__(
        self,
        *,
        model: str | None = None,
        max_retries: int | None = DEFAULT_MAX_RETRIES,
        resumed: bool = False,
        baseline: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.max_retries = max_retries
        self.resumed = resumed
        self.baseline = baseline
        self.session_id: str | None = None
        self.retries = 0
        self._sent_text = False
        self._sent_thinking = False
        self._started_tools: set[str] = set()
        self._last_error: str | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        if self.fast_line is not None and (match := self.fast_line.fullmatch(line)) and (text := json_text(match[1])):
            return [self._text(text)]
        event = json_object(line)
        if event is None:
            return []  # noise on stdout, skipped
        kind = event.get("type")
        if kind == "thread.started":
            if isinstance(event.get("thread_id"), str):
                self.session_id = event["thread_id"]
            return []
        item = event.get("item")
        if kind in ("item.started", "item.completed") and isinstance(item, dict):
            return self._item(item, completed=kind == "item.completed")
        if kind == "error":
            return self._error(str(event.get("message") or ""))
        if kind == "turn.completed":
            return self._turn_completed(event)
        if kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.error = error_from_message(str(message or self._last_error or "the turn failed"))
            self.finished = True
        return []  # turn.started, item.updated and event types of later codex versions

    def close(self) -> list[ChatChunk]:
        if not self.finished and self.error is None and self._last_error:
            self.error = error_from_message(self._last_error)  # codex died after saying why
        return []

    # --- events --------------------------------------------------------------------------

    def _item(self, item: dict[str, Any], *, completed: bool) -> list[ChatChunk]:
        kind = item.get("type")
        if kind == "agent_message":
            return [self._text(text)] if completed and (text := as_text(item.get("text"))) else []
        if kind == "reasoning":
            return [self._thinking(text)] if completed and (text := as_text(item.get("text"))) else []
        if kind == "error":
            # Non-fatal: unknown model metadata, ignored settings, a transport fallback.
            if completed and item.get("message"):
                return [ChatChunk(agent_event=AgentEvent(kind="notice", message=str(item["message"])))]
            return []
        if kind in ("command_execution", "file_change", "mcp_tool_call", "web_search", "collab_tool_call"):
            return self._tool(item, completed=completed)
        return []  # todo_list, plan and item types of later codex versions

    def _tool(self, item: dict[str, Any], *, completed: bool) -> list[ChatChunk]:
        item_id = str(item.get("id") or "")
        name, tool_input = _tool_call(item)
        chunks: list[ChatChunk] = []
        if item_id not in self._started_tools:
            self._started_tools.add(item_id)
            use = AgentEvent(kind="tool_use", id=item_id or None, name=name, input=tool_input)
            chunks.append(ChatChunk(agent_event=use))
        if not completed:
            return chunks
        status = item.get("status")
        if status == "declined":
            denied = AgentEvent(
                kind="permission_denied", id=item_id or None, name=name, input=tool_input, is_error=True
            )
            chunks.append(ChatChunk(agent_event=denied))
            return chunks
        output, failed = _tool_outcome(item)
        result = AgentEvent(kind="tool_result", id=item_id or None, name=name, output=output, is_error=failed)
        chunks.append(ChatChunk(agent_event=result))
        return chunks

    def _error(self, message: str) -> list[ChatChunk]:
        match = _RETRY.match(message)
        if match is None:
            self._last_error = message  # the reason; `turn.failed` follows
            return []
        chunks = [ChatChunk(agent_event=AgentEvent(kind="retry", message=message))]
        reason = message[message.find("(") + 1 : message.rfind(")")] if "(" in message else message
        error = error_from_message(reason)
        if isinstance(error, AuthenticationError):
            # Codex retries a rejected key like any failure; it never heals.
            self._stop(error)
        elif _service_refused(reason):
            self.retries += 1
            if self.max_retries is not None and self.retries > self.max_retries:
                error.message += f" (stopped after {self.max_retries} retries)"
                self._stop(error)
        return chunks

    def _stop(self, error: RunnerError) -> None:
        self.error = error
        self.finished = True

    def _turn_completed(self, event: dict[str, Any]) -> list[ChatChunk]:
        self.finished = True
        chunks: list[ChatChunk] = []
        counts = usage_counts(event.get("usage"))
        if self.baseline is not None:
            counts = {k: max(0, v - self.baseline.get(k, 0)) for k, v in counts.items()}
        elif self.resumed:
            notice = "usage is the running total of the resumed session (its earlier total could not be read)"
            chunks.append(ChatChunk(agent_event=AgentEvent(kind="notice", message=notice)))
        chunks.append(
            ChatChunk(finish_reason="stop", usage=usage_from(counts), session_id=self.session_id, model=self.model)
        )
        return chunks

    def _text(self, text: str) -> ChatChunk:
        # A later message (the answer after a tool ran) starts a new paragraph.
        prefix = "\n\n" if self._sent_text else ""
        self._sent_text = True
        return delta_chunk(prefix + text)

    def _thinking(self, text: str) -> ChatChunk:
        prefix = "\n\n" if self._sent_thinking else ""
        self._sent_thinking = True
        return ChatChunk(thinking=prefix + text)


def _service_refused(reason: str) -> bool:
    """True when a retry follows an answer of the service (429, 5xx), which llmrun bounds.

    Lost connections are not counted: codex retries them a few times per transport and
    then gives up by itself, and failures of its WebSocket transport (`ws://` URLs, no
    status) are followed by a fallback to HTTPS that may well work.
    """
    if re.search(r"\bwss?://", reason):
        return False
    return bool(_STATUS.search(reason)) or "high demand" in reason.lower()


def _tool_call(item: dict[str, Any]) -> tuple[str, Any]:
    """(name, input) of a tool item, named as codex's own vocabulary has it."""
    kind = str(item.get("type"))
    if kind == "command_execution":
        return kind, {"command": item.get("command")}
    if kind == "file_change":
        return kind, {"changes": item.get("changes")}
    if kind == "mcp_tool_call":
        return f"{item.get('server')}.{item.get('tool')}", item.get("arguments")
    if kind == "web_search":
        return kind, {"query": item.get("query")}
    return str(item.get("tool") or kind), {"prompt": item.get("prompt")}


def _tool_outcome(item: dict[str, Any]) -> tuple[Any, bool]:
    """(output, failed?) of a completed tool item."""
    kind = item.get("type")
    failed = item.get("status") == "failed"
    if kind == "command_execution":
        exit_code = item.get("exit_code")
        return item.get("aggregated_output"), failed or (isinstance(exit_code, int) and exit_code != 0)
    if kind == "file_change":
        return {"changes": item.get("changes"), "status": item.get("status")}, failed
    if kind == "mcp_tool_call":
        error = item.get("error")
        if isinstance(error, dict) and error.get("message"):
            return error["message"], True
        return item.get("result"), failed
    if kind == "collab_tool_call":
        return item.get("agents_states"), failed
    return None, failed


# --- the runner ---------------------------------------------------------------------------


class CodexRunner(CliRunner):
    name = "codex"
    option_names = frozenset({"sandbox", "max_retries", "effort", "profile", "config", "extra_args"})
    display_name = "OpenAI Codex"
    binary = "codex"
    aliases = ("openai-codex", "codex-cli")
    # No default model: codex's own choice applies (see tool_default_model).
    install_hint = "npm install -g @openai/codex"
    min_version = "0.100.0"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,
        thinking=True,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        images=True,
        json_schema=True,
        usage=True,
        cost=False,
        model_discovery=True,
        prompt_via_stdin=True,
    )
    # The models codex 0.169's catalog lists (`codex debug models`), in its priority order.
    builtin_models = (
        ("gpt-6.1-sol", ()),
        ("gpt-6-astra", ()),
        ("gpt-6-sol", ()),
        ("gpt-6-luna", ()),
        ("gpt-5.6-sol", ()),
        ("gpt-6.1-terra", ()),
        ("gpt-5.6-terra", ()),
        ("gpt-5.6-luna", ()),
        ("gpt-5.5", ()),
    )

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        session = self.session_to_resume(request)  # checked before any file is written
        options = request.options
        user_args = [*self.extra_args, *(str(a) for a in options.get("extra_args", []))]
        sandbox = self._sandbox(request, user_args)
        exec_args: list[str] = []
        temp_files: list[str] = []
        try:
            # Images first: `-i` takes every value up to the next option (`-` included).
            for image in (part for m in _turns_sent(request) for part in m.images):
                path = _write_image(image, self.name)
                temp_files.append(path)
                exec_args += ["-i", path]
            exec_args += ["--json", "--skip-git-repo-check"]
            if sandbox is not None:
                exec_args += ["--sandbox", sandbox]
            if request.cwd:
                exec_args += ["-C", request.cwd]
            if model := self.model_for(request):
                exec_args += ["-m", model]
            if profile := options.get("profile"):
                exec_args += ["--profile", str(profile)]
            defaults = list(DEFAULT_CONFIG)
            if not request.allow_tools:
                defaults += TOOLS_OFF_CONFIG
            settings: list[tuple[str, str]] = []
            if effort := options.get("effort"):
                settings.append(("model_reasoning_effort", toml_value(str(effort))))
            for key, value in (options.get("config") or {}).items():
                settings.append((str(key), toml_value(value)))
            if system := request.system_prompt():
                path = private.write_file(system, prefix="llmrun-system-", suffix=".md")
                temp_files.append(path)
                settings.append(("model_instructions_file", toml_value(path)))
            if request.json_schema is not None:
                path = private.write_file(json.dumps(request.json_schema), prefix="llmrun-schema-", suffix=".json")
                temp_files.append(path)
                exec_args += ["--output-schema", path]
        except BaseException:
            for path in temp_files:
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        # Settings go before `exec`, next to the runner's own extra_args: older codex
        # versions drop the top-level `-c` settings when `exec` has some of its own.
        argv = [binary]
        for key, value in defaults:
            if not _sets_config(user_args, key):
                argv += ["-c", f"{key}={value}"]
        for key, value in settings:
            argv += ["-c", f"{key}={value}"]
        argv += ["exec", *exec_args, *(str(a) for a in options.get("extra_args", []))]
        if session:
            argv += ["resume", "--", session, "-"]  # after `--` the id can never be read as a flag
        else:
            argv.append("-")
        prompt = prompt_for(request)
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.codex_app_server import CodexAppServer

        request = settings.request([])
        invocation = self.prepared_invocation(request)
        # The `-c` settings before `exec` (tools off, system prompt, retries) hold for the app
        # server too; what `exec` took as flags goes into the thread's parameters.
        invocation.argv = [*invocation.argv[: invocation.argv.index("exec")], "app-server"]
        thread: dict[str, Any] = {"cwd": os.path.abspath(settings.cwd or os.getcwd()), "approvalPolicy": "never"}
        user_args = [*self.extra_args, *(str(a) for a in request.options.get("extra_args", []))]
        if sandbox := self._sandbox(request, user_args):
            thread["sandbox"] = sandbox
        if model := self.model_for(request):
            thread["model"] = model
        return CodexAppServer(self, invocation, settings, resume, thread=thread, error_from_message=error_from_message)

    def _sandbox(self, request: ChatRequest, user_args: list[str]) -> str | None:
        """The sandbox mode to ask for, or None when the user's own arguments choose it."""
        wanted = request.options.get("sandbox")
        if wanted is not None and wanted not in SANDBOX_MODES:
            raise UnsupportedFeature(
                f"unknown codex sandbox {wanted!r}; expected one of {', '.join(SANDBOX_MODES)}", runner=self.name
            )
        if not request.allow_tools and wanted not in (None, "read-only"):
            raise UnsupportedFeature(
                f"the codex sandbox {wanted!r} lets agent tools write; it needs allow_tools", runner=self.name
            )
        if wanted is None and any(_is_sandbox_flag(arg) for arg in user_args):
            return None
        return str(wanted or ("workspace-write" if request.allow_tools else "read-only"))

    def new_parser(self, request: ChatRequest) -> Parser:
        max_retries = request.options.get("max_retries", DEFAULT_MAX_RETRIES)
        baseline = None
        if request.session_id:
            baseline = thread_usage(self._codex_home(), request.session_id)
        return CodexParser(
            model=self.model_for(request),
            max_retries=None if max_retries is None else int(max_retries),
            resumed=request.session_id is not None,
            baseline=baseline,
        )

    def limits_for(self, request: ChatRequest) -> process.Limits:
        limits = super().limits_for(request)
        # Codex exits within ~50 ms of its last event; a run llmrun ends early (too many
        # retries) would otherwise wait out the default grace before it is stopped.
        limits.exit_grace = 1.0
        return limits

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        if match := re.search(r"no rollout found for thread id (\S+)", stderr):
            return SessionNotFound(f"no codex session {match.group(1)}")
        if "Unknown feature flag" in stderr or "unexpected argument" in stderr:
            return ProcessFailed(
                f"this codex does not accept llmrun's arguments: {_last_line(stderr)}",
                hint=f"upgrade with `{self.install_hint}`",
            )
        if "Error loading config" in stderr:
            return ProcessFailed(f"codex cannot load its configuration: {_last_line(stderr)}")
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        result = await process.run_command([binary, "login", "status"], env=self.env, env_remove=self.env_remove)
        # Codex says it on stderr, after any warnings of its own (e.g. about CODEX_HOME).
        said = next(
            (
                line.strip()
                for line in (result.stderr + "\n" + result.stdout).splitlines()
                if line.strip() and not line.startswith("WARNING")
            ),
            "",
        )
        if result.returncode == 0:
            return True, said or "logged in"
        if self._env_value("CODEX_API_KEY"):
            return True, "CODEX_API_KEY is set"
        # A provider of the user's config (of its selected profile first) takes its key from
        # the variable its env_key names: with that set, codex needs no login.
        config = read_toml(os.path.join(self._codex_home(), "config.toml"))
        profiles, profile = config.get("profiles"), config.get("profile")
        chosen = profiles.get(profile) if isinstance(profiles, dict) and isinstance(profile, str) else None
        tables = [table for table in (chosen, config) if isinstance(table, dict)]
        provider = next((t["model_provider"] for t in tables if isinstance(t.get("model_provider"), str)), None)
        providers = config.get("model_providers")
        settings = providers.get(provider) if provider and isinstance(providers, dict) else None
        env_key = settings.get("env_key") if isinstance(settings, dict) else None
        if isinstance(env_key, str) and env_key and self._env_value(env_key):
            return True, f"{env_key} is set, the key of codex's model provider {provider!r}"
        if self._env_value("OPENAI_API_KEY"):
            # Used by providers whose env_key names it, but not by codex's built-in openai provider.
            return None, "not logged in; OPENAI_API_KEY is set, which only providers configured with it use"
        return False, said or "not logged in"

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    async def discover_models(self, binary: str) -> list[str]:
        result = await process.run_command([binary, "debug", "models"], env=self.env, env_remove=self.env_remove)
        try:
            catalog = json.loads(result.stdout)
        except ValueError:
            return []
        models = catalog.get("models") if isinstance(catalog, dict) else None
        return [
            m["slug"]
            for m in models or []
            if isinstance(m, dict) and isinstance(m.get("slug"), str) and m.get("visibility") != "hide"
        ]

    async def _run(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        # Only codex's session file, complete once the run is over, names the model it used.
        async with aclosing(super()._run(request)) as chunks:
            async for chunk in chunks:
                thread = chunk.session_id if chunk.is_final else None
                if thread and (model := thread_model(self._codex_home(), thread)):
                    chunk = chunk.model_copy(update={"model": model})
                yield chunk

    def tool_default_model(self) -> str | None:
        """The `model` of codex's config.toml (of its selected profile first), which codex
        runs when no -m is given; None when it sets none (codex's built-in default)."""
        config = read_toml(os.path.join(self._codex_home(), "config.toml"))
        profile = config.get("profile")
        profiles = config.get("profiles")
        chosen = profiles.get(profile) if isinstance(profile, str) and isinstance(profiles, dict) else None
        for table in (chosen, config):
            if isinstance(table, dict) and isinstance(table.get("model"), str) and table["model"]:
                return str(table["model"])
        return None

    def _env_value(self, name: str) -> str:
        return self.env.get(name) or os.environ.get(name) or ""

    def _codex_home(self) -> str:
        return self._env_value("CODEX_HOME") or os.path.join(os.path.expanduser("~"), ".codex")


# --- helpers ------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A value for `-c key=value`, which codex parses as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _sets_config(args: list[str], key: str) -> bool:
    """True when `args` already set config `key` (`-c key=…`, `--config key=…`, `--disable`)."""
    feature = key.removeprefix("features.") if key.startswith("features.") else None
    for index, arg in enumerate(args):
        following = args[index + 1] if index + 1 < len(args) else ""
        if arg in ("-c", "--config"):
            setting = following
        elif arg.startswith("--config="):
            setting = arg.removeprefix("--config=")
        elif arg.startswith("-c") and len(arg) > 2:
            setting = arg[2:]
        elif feature is not None and arg in ("--enable", "--disable"):
            setting = f"features.{following}="
        else:
            continue
        if setting.split("=", 1)[0].strip() == key:
            return True
    return False


def _is_sandbox_flag(arg: str) -> bool:
    return arg in ("-s", "--sandbox", "--full-auto", "--dangerously-bypass-approvals-and-sandbox") or arg.startswith(
        "--sandbox="
    )


def _turns_sent(request: ChatRequest) -> list[Any]:
    return new_turns(request.messages) if request.session_id else request.conversation()


def _write_image(image: ImagePart, runner: str) -> str:
    """A private file for an image given as data; codex attaches only local files."""
    if image.url is not None and not images.is_data_url(image.url):
        raise UnsupportedFeature("codex attaches images from data only, not from URLs", runner=runner)
    try:
        raw, media_type = images.image_bytes(image)
    except ValueError as exc:
        raise UnsupportedFeature(str(exc), runner=runner) from None
    return images.write_image_file(raw, images.IMAGE_SUFFIXES.get(media_type or "", ".png"))


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file's tables; empty when it is missing or unreadable."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except (OSError, ValueError):  # TOMLDecodeError is a ValueError
        return {}
    return data


def _session_file(codex_home: str, thread_id: str) -> str | None:
    """The session file (rollout) codex keeps for a thread, the newest if several."""
    if not _THREAD_ID.match(thread_id):
        return None
    pattern = os.path.join(glob.escape(codex_home), "sessions", "*", "*", "*", f"rollout-*-{thread_id}.jsonl")
    paths = sorted(glob.glob(pattern))
    return paths[-1] if paths else None


def thread_model(codex_home: str, thread_id: str) -> str | None:
    """The model of the thread's last turn, from its session file (`turn_context`)."""
    path = _session_file(codex_home, thread_id)
    if path is None:
        return None
    model = None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"turn_context"' not in line:
                    continue
                event = json_object(line.strip())
                payload = event.get("payload") if event is not None and event.get("type") == "turn_context" else None
                if isinstance(payload, dict) and (found := as_text(payload.get("model"))):
                    model = found
    except OSError:
        return None
    return model


def thread_usage(codex_home: str, thread_id: str) -> dict[str, int] | None:
    """The running token total codex recorded for a thread, from its session file."""
    path = _session_file(codex_home, thread_id)
    if path is None:
        return None
    total: dict[str, int] | None = None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"token_count"' not in line:
                    continue
                try:
                    payload = json.loads(line).get("payload") or {}
                except (ValueError, AttributeError, RecursionError):
                    continue
                info = payload.get("info") if isinstance(payload, dict) else None
                if isinstance(info, dict) and isinstance(info.get("total_token_usage"), dict):
                    total = usage_counts(info["total_token_usage"])
    except OSError:
        return None
    return total if total is not None else {}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
