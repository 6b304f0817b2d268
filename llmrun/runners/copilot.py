"""GitHub Copilot CLI (`copilot`), headless with JSON-lines output.

The prompt goes over stdin: without `-p`, copilot takes piped stdin as a one-shot prompt,
whole, whatever it starts with. Text streams token by token (`assistant.message_delta`),
reasoning too (`assistant.reasoning_delta`); the tool calls the model asks for
(`toolRequests`) and what became of them (`tool.execution_complete`) are agent events. The
model is named per request (`--model`); without one, copilot's own choice (or
COPILOT_MODEL) applies. Usage is not in copilot's JSON output: copilot writes it into the
file named by `--usage-output-file`, a private file of the run that llmrun reads once
copilot has exited. A resumed session's report counts the whole session, so llmrun
subtracts the totals copilot recorded when the session last ended (its `session.shutdown`
event in `$COPILOT_HOME/session-state/<id>/events.jsonl`).

Agent tools: copilot runs read-only shell commands (`echo`, `ls`, ...) and reads files
without asking, even headless. Unless the request allows tools, the shell, every write and
every URL are denied (`--deny-tool=shell`, `write`, `url`); copilot's deny rules win over
any allow rule in its settings, and a denied call comes back as a `permission_denied`
agent event. Reading files in the working directory stays possible. `allow_tools` gives
`--allow-all-tools`.

The system prompt cannot replace copilot's own: it is added to it as custom instructions,
from a private directory of the run named in COPILOT_CUSTOM_INSTRUCTIONS_DIRS (after the
user's own directories). Sessions: `request.session_id` is passed as `--resume=<id>` and
only the new turns are sent; otherwise history is flattened into the prompt.

Retries: copilot retries a 429 or 5xx answer five times (about 15 s for a 5xx, minutes
for a 429), with no setting to change that. llmrun stops the run after `max_retries`
retries (default 2) with the typed error of the last failure; each retry is reported as
an agent event.

Process: the `copilot` on PATH is a node launcher that starts the real (native) copilot
and does not forward signals; the process layer signals the whole process group, so a
timeout or cancellation stops both.

Health: `copilot --version` (two lines). Copilot has no command that tells whether it is
logged in without spending a model request, so `check_auth` only reports what is
configured (a token in COPILOT_GITHUB_TOKEN / GH_TOKEN / GITHUB_TOKEN, or a model provider
of your own through COPILOT_PROVIDER_BASE_URL); `health(probe=True)` proves it.

Options (`ChatRequest.options`): `max_retries` (default 2; None leaves copilot's own
retries), `reasoning_effort`, `agent` (a custom agent of copilot's), and `extra_args` (a
list appended to the command).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import weakref
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar

from .. import private, process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
)
from ..images import private_image_file
from ..prompting import new_turns, prompt_for
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, Usage
from .base import (
    CliRunner,
    Parser,
    _last_line,
    as_count,
    as_dict,
    as_list,
    as_text,
    delta_chunk,
    json_object,
    json_text,
    line_shape,
)

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = (
    "run `copilot` and then `/login`, set COPILOT_GITHUB_TOKEN to a fine-grained token, or run `gh auth login`; "
    "for a model provider of your own set COPILOT_PROVIDER_BASE_URL (see `copilot help providers`)"
)
DEFAULT_MAX_RETRIES = 2
# Permission kinds denied without allow_tools: every shell command, every file write, every URL.
DENIED_TOOLS = ("shell", "write", "url")
TOKEN_VARS = ("COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN")
USAGE_FILE = "usage.json"

_CONTEXT = re.compile(r"context (length|window)|too many tokens|prompt is too long|maximum context", re.I)
_MODEL = re.compile(r"model\b.*\b(not found|does not exist|not supported|not available|unknown)", re.I)
_NO_AUTH = re.compile(
    r"No authentication information found|Classic Personal Access Tokens|token found but could not be validated"
    r"|Offline mode requires a local model provider|Authentication failed",
    re.I,
)


# --- reading copilot's words --------------------------------------------------------------


def error_for(message: str, status: int | None = None, *, error_type: str | None = None) -> RunnerError:
    """The typed error for a failure copilot reports (`session.error`, `model.call_failure`).

    Copilot's message says what to do on the lines after the first; that becomes the hint.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = lines[0] if lines else "copilot reported an error"
    advice = " ".join(lines[1:]) or None
    if error_type == "authentication" or status in (401, 403):
        return AuthenticationError(text, hint=advice or LOGIN_HINT)
    if status == 429:
        return RateLimitError(text, hint=advice)
    if status is not None and status >= 500:
        return ServiceUnavailable(text, hint=advice)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(text, hint=advice)
    if status == 404 or _MODEL.search(message):
        return ModelNotFound(text, hint=advice)
    return RunnerError(text, hint=advice)


def stderr_error(stderr: str) -> tuple[str, str | None]:
    """(what went wrong, what to do) from copilot's plain-text error on stderr.

    Copilot prints `Error: <what>`, an explanation, then the ways out as `•` bullets.
    """
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    what = next((line.removeprefix("Error:").strip() for line in lines if line.startswith("Error:")), "")
    what = what or next((line for line in lines if _NO_AUTH.search(line)), "") or (lines[0] if lines else "")
    bullets = [line.lstrip("•").strip() for line in lines if line.startswith("•")]
    return what, "; ".join(bullets) or None


def usage_totals(report: Any) -> dict[str, int]:
    """Token counts of a copilot usage report (or accounting snapshot), summed over its models."""
    totals: dict[str, int] = {}
    metrics = report.get("modelMetrics") if isinstance(report, dict) else None
    for model in metrics.values() if isinstance(metrics, dict) else []:
        usage = model.get("usage") if isinstance(model, dict) else None
        for key, value in usage.items() if isinstance(usage, dict) else []:
            if (count := as_count(value)) is not None:
                totals[key] = totals.get(key, 0) + count
    return totals


def usage_from(totals: dict[str, int]) -> Usage:
    """llmrun's Usage from copilot's counts, whose input tokens include the cached ones."""
    cached, written = totals.get("cacheReadTokens", 0), totals.get("cacheWriteTokens", 0)
    return Usage(
        input_tokens=max(0, totals.get("inputTokens", 0) - cached - written),
        output_tokens=totals.get("outputTokens", 0),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=totals.get("reasoningTokens", 0),
    )


def session_totals(copilot_home: str, session_id: str) -> dict[str, int] | None:
    """The session's token totals when it last ended, from copilot's event log; None if unreadable."""
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,128}", session_id):
        return None
    path = os.path.join(copilot_home, "session-state", session_id, "events.jsonl")
    snapshot: Any = None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"session.shutdown"' not in line:
                    continue
                with contextlib.suppress(ValueError, AttributeError, RecursionError):
                    snapshot = (json.loads(line).get("data") or {}).get("accountingSnapshot")
    except OSError:
        return None
    return usage_totals(snapshot) if snapshot is not None else {}


# --- the event stream --------------------------------------------------------------------


# A text delta of the answer exactly as copilot prints it: the message id, then the text.
COPILOT_TEXT_DELTA = line_shape(
    '{"type":"assistant.message_delta","data":{"messageId":"<key>","deltaContent":"<text>"},'
    '"ephemeral":true,"id":"<id>","timestamp":"<id>","parentId":"<id>"}'
)


class CopilotParser(Parser):
    """Parses one run of `copilot --output-format json`.

    `max_retries` bounds the retries of a 429 or 5xx answer that llmrun waits through.
    The final chunk carries no usage: copilot reports it in a file (see the runner).
    """

    fast_line: ClassVar[re.Pattern[str] | None] = COPILOT_TEXT_DELTA
    """A line that is certainly a text delta, its message id and text in groups 1 and 2."""

    def __init__(self, *, max_retries: int | None = DEFAULT_MAX_RETRIES) -> None:
        super().__init__()
        self.max_retries = max_retries
        self.session_id: str | None = None
        self.model: str | None = None
        self.sent_text = False
        self._last_message: str | None = None
        self._streamed: set[str] = set()  # message and reasoning ids whose text came as deltas
        self._sent_thinking = False
        self._tools: dict[str | None, str | None] = {}  # tool call id -> tool name
        self._failure: tuple[int | None, str] | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        if self.fast_line is not None and (match := self.fast_line.fullmatch(line)) and (text := json_text(match[2])):
            return self._text(match[1], text, streamed=True)
        event = json_object(line)
        if event is None:
            return []  # noise on stdout, skipped
        kind = event.get("type")
        data = as_dict(event.get("data"))
        if kind == "assistant.message_delta":
            return self._text(data.get("messageId"), data.get("deltaContent"), streamed=True)
        if kind == "assistant.message":
            return self._message(data)
        if kind == "assistant.reasoning_delta":
            return self._thinking(data.get("reasoningId"), data.get("deltaContent"), streamed=True)
        if kind == "assistant.reasoning":
            return self._thinking(data.get("reasoningId"), data.get("content"), streamed=False)
        if kind == "tool.execution_start":
            return self._tool_use(data.get("toolCallId"), data.get("toolName"), data.get("arguments"))
        if kind == "tool.execution_complete":
            return self._tool_done(data)
        if kind in ("session.tools_updated", "model.call_start"):
            self._note_model(data.get("model"))
        elif kind == "model.call_failure":
            self._call_failed(data)
        elif kind == "assistant.turn_retry":
            return [ChatChunk(agent_event=AgentEvent(kind="retry", message=self._retry_message(data)))]
        elif kind == "session.error":
            self._session_error(data)
        elif kind == "result":
            return self._result(event)
        return []  # session.*, hook, usage and event types of later copilot versions

    # --- events --------------------------------------------------------------------------

    def _text(self, message_id: Any, text: Any, *, streamed: bool) -> list[ChatChunk]:
        if not isinstance(text, str) or not text:
            return []
        key = str(message_id)
        if streamed:
            self._streamed.add(key)
        # Text of a later message (the answer after a tool ran) starts a new paragraph.
        if self.sent_text and key != self._last_message:
            text = "\n\n" + text
        self.sent_text = True
        self._last_message = key
        return [delta_chunk(text)]

    def _message(self, data: dict[str, Any]) -> list[ChatChunk]:
        self._note_model(data.get("model"))
        chunks: list[ChatChunk] = []
        message_id = data.get("messageId")
        if str(message_id) not in self._streamed:
            chunks += self._text(message_id, data.get("content"), streamed=False)
        for request in as_list(data.get("toolRequests")):
            if isinstance(request, dict):
                chunks += self._tool_use(request.get("toolCallId"), request.get("name"), request.get("arguments"))
        return chunks

    def _thinking(self, reasoning_id: Any, text: Any, *, streamed: bool) -> list[ChatChunk]:
        if not isinstance(text, str) or not text:
            return []
        key = f"reasoning:{reasoning_id}"
        if not streamed and key in self._streamed:
            return []  # the whole reasoning, after its deltas
        if streamed:
            if key not in self._streamed and self._sent_thinking:
                text = "\n\n" + text
            self._streamed.add(key)
        elif self._sent_thinking:
            text = "\n\n" + text
        self._sent_thinking = True
        return [ChatChunk(thinking=text)]

    def _tool_use(self, call_id: Any, name: Any, arguments: Any) -> list[ChatChunk]:
        call_id = as_text(call_id)
        if call_id in self._tools:
            return []
        self._tools[call_id] = as_text(name)
        use = AgentEvent(kind="tool_use", id=call_id, name=as_text(name), input=arguments)
        return [ChatChunk(agent_event=use)]

    def _tool_done(self, data: dict[str, Any]) -> list[ChatChunk]:
        call_id = as_text(data.get("toolCallId"))
        name = self._tools.get(call_id)
        error = as_dict(data.get("error"))
        failed = data.get("success") is False
        if failed and error.get("code") == "denied":
            message = as_text(error.get("message"))
            denied = AgentEvent(kind="permission_denied", id=call_id, name=name, message=message, is_error=True)
            return [ChatChunk(agent_event=denied)]
        output = error.get("message") if failed else as_dict(data.get("result")).get("content")
        done = AgentEvent(kind="tool_result", id=call_id, name=name, output=output, is_error=failed)
        return [ChatChunk(agent_event=done)]

    def _call_failed(self, data: dict[str, Any]) -> None:
        status = data.get("statusCode") if isinstance(data.get("statusCode"), int) else None
        message = _error_text(data.get("errorMessage")) or f"the model call failed (HTTP {status})"
        self._failure = (status, message)
        attempt = data.get("retryAttempt")
        refused = status is not None and (status == 429 or status >= 500)
        if refused and self.max_retries is not None and isinstance(attempt, int) and attempt >= self.max_retries:
            error = error_for(f"HTTP {status}: {message}", status)
            error.message += f" (stopped after {self.max_retries} retries)"
            self.error = error
            self.finished = True

    def _retry_message(self, data: dict[str, Any]) -> str:
        reason = f" ({data['reason']})" if data.get("reason") else ""
        if self._failure is None:
            return f"retrying the model call{reason}"
        status, message = self._failure
        return f"retrying after HTTP {status}{reason}: {message}"

    def _session_error(self, data: dict[str, Any]) -> None:
        if self.error is not None:
            return
        status = data.get("statusCode") if isinstance(data.get("statusCode"), int) else None
        error_type = data.get("errorType") if isinstance(data.get("errorType"), str) else None
        self.error = error_for(str(data.get("message") or "copilot reported an error"), status, error_type=error_type)

    def _result(self, event: dict[str, Any]) -> list[ChatChunk]:
        self.session_id = as_text(event.get("sessionId")) or self.session_id
        if self.error is None and event.get("exitCode") not in (0, None):
            return []  # a failure said only on stderr: not an answer, the exit tells the rest
        self.finished = True
        if self.error is not None:
            return []
        return [ChatChunk(finish_reason="stop", session_id=self.session_id, model=self.model)]

    def _note_model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model


def _error_text(raw: Any) -> str:
    """The message inside a provider's error body, which copilot passes on as JSON text."""
    if not isinstance(raw, str):
        return ""
    with contextlib.suppress(ValueError, AttributeError, RecursionError):
        body = json.loads(raw)
        inner = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return raw.strip()


# --- the runner ---------------------------------------------------------------------------


class CopilotRunner(CliRunner):
    name = "copilot"
    option_names = frozenset({"max_retries", "reasoning_effort", "agent", "extra_args"})
    display_name = "GitHub Copilot CLI"
    binary = "copilot"
    aliases = ("github-copilot", "copilot-cli", "github_copilot")
    install_hint = "npm install -g @github/copilot"
    min_version = "1.0.0"
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
        prompt_via_stdin=True,
    )
    # No default model: copilot's own choice (its settings, COPILOT_MODEL or its router) applies.

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._private: str | None = None
        self._cleanup: weakref.finalize[Any, Any] | None = None

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        session = self.session_to_resume(request)  # checked before any file is written
        run_dir = self._run_dir(request)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [
            binary,
            "--output-format=json",
            "--no-auto-update",
            "--no-color",
            "--disable-client-telemetry",
            f"--usage-output-file={os.path.join(run_dir, USAGE_FILE)}",
        ]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if request.allow_tools:
            argv.append("--allow-all-tools")
        else:
            argv += [f"--deny-tool={kind}" for kind in DENIED_TOOLS]
        if effort := request.options.get("reasoning_effort"):
            argv.append(f"--reasoning-effort={effort}")
        if agent := request.options.get("agent"):
            argv.append(f"--agent={agent}")
        if session:
            argv.append(f"--resume={session}")
        prompt = prompt_for(request)
        temp_files: list[str] = []
        # Copilot attaches each image file to the prompt and sends it as image data.
        turns = new_turns(request.messages) if session else request.conversation()
        for image in (image for message in turns for image in message.images):
            path = private_image_file(image, self.name)
            temp_files.append(path)
            argv.append(f"--attachment={path}")
        argv += [str(arg) for arg in request.options.get("extra_args", [])]
        env: dict[str, str] = {}
        if system := request.system_prompt():
            # Copilot loads `instructions/*.instructions.md` from each directory named here.
            os.makedirs(os.path.join(run_dir, "instructions"), mode=0o700, exist_ok=True)
            path = os.path.join(run_dir, "instructions", "llmrun-system.instructions.md")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(system)
            temp_files.append(path)
            own = self._env_value("COPILOT_CUSTOM_INSTRUCTIONS_DIRS")
            env["COPILOT_CUSTOM_INSTRUCTIONS_DIRS"] = f"{own},{run_dir}" if own else run_dir
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env=env,
            env_defaults={"COPILOT_AUTO_UPDATE": "false"},
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection
        from ..transports.base import warm_argv

        request = settings.request([])
        invocation = self.prepared_invocation(request)
        invocation.temp_files.append(self._run_dir(request))  # the session's instructions go with its process
        # The one-shot flags hold in ACP mode too (model, denied tools, custom instructions);
        # the output and usage-file flags give way to --acp, and a resumed session is loaded
        # over the protocol.
        one_shot = ("--output-format", "--usage-output-file", "--resume")
        invocation.argv = warm_argv(invocation.argv, ["--acp"], drop=one_shot)
        profile = AcpProfile(
            system_prompt_at_start=True,
            cumulative_usage=True,
            error_in_answer=_error_in_answer,
            notice=_retry_notice,
        )
        return acp_connection(self, invocation, settings, resume, profile)

    def new_parser(self, request: ChatRequest) -> Parser:
        max_retries = request.options.get("max_retries", DEFAULT_MAX_RETRIES)
        return CopilotParser(max_retries=None if max_retries is None else int(max_retries))

    def limits_for(self, request: ChatRequest) -> process.Limits:
        limits = super().limits_for(request)
        # Copilot exits within ~50 ms of its `result`; a run llmrun stops early (too many
        # retries) would otherwise wait out the default grace, and retry meanwhile.
        limits.exit_grace = 1.0
        return limits

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        # A copy of its own, whose identity names the run's private directory while it lives.
        run = request.model_copy()
        run_dir = self._run_dir(run)
        baseline = session_totals(self._copilot_home(), run.session_id) if run.session_id else None
        try:
            async with aclosing(super().stream(run)) as chunks:
                async for chunk in chunks:
                    if chunk.is_final:
                        resumed = run.session_id is not None
                        for last in self._with_usage(chunk, run_dir, resumed=resumed, baseline=baseline):
                            yield last
                    else:
                        yield chunk
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _with_usage(
        self, final: ChatChunk, run_dir: str, *, resumed: bool, baseline: dict[str, int] | None
    ) -> list[ChatChunk]:
        """The final chunk with the usage from copilot's report, and a notice if that was not possible."""
        try:
            with open(os.path.join(run_dir, USAGE_FILE), encoding="utf-8") as fh:
                totals = usage_totals(json.load(fh))
        except (OSError, ValueError, RecursionError):
            missing = AgentEvent(kind="notice", message="copilot wrote no usage report; usage is unknown")
            return [ChatChunk(agent_event=missing), final]
        chunks: list[ChatChunk] = []
        if baseline is not None:
            totals = {key: max(0, value - baseline.get(key, 0)) for key, value in totals.items()}
        elif resumed:
            notice = "usage is the total of the resumed session (its earlier total could not be read)"
            chunks.append(ChatChunk(agent_event=AgentEvent(kind="notice", message=notice)))
        chunks.append(final.model_copy(update={"usage": usage_from(totals)}))
        return chunks

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        what, advice = stderr_error(stderr)
        if "No session, task, or name matched" in stderr:
            return SessionNotFound(what)
        if _NO_AUTH.search(stderr):
            return AuthenticationError(what, hint=advice or LOGIN_HINT)
        if re.search(r"unknown option|unexpected argument|Invalid value for", stderr, re.I):
            return ProcessFailed(
                f"this copilot does not accept llmrun's flags: {_last_line(stderr)}",
                hint=f"upgrade with `{self.install_hint}`",
            )
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        """What is configured; only a probe (`health(probe=True)`) shows that it works."""
        unverified = "(configured, not verified: `llmrun health --probe` tries it)"
        if url := self._env_value("COPILOT_PROVIDER_BASE_URL"):
            return True, f"model provider of your own at {url} {unverified}"
        if self._env_value("COPILOT_OFFLINE").lower() == "true":
            return False, "COPILOT_OFFLINE=true needs a model provider: set COPILOT_PROVIDER_BASE_URL"
        for name in TOKEN_VARS:
            if token := self._env_value(name):
                if token.startswith("ghp_"):
                    return False, f"{name} holds a classic personal access token, which copilot does not accept"
                return True, f"{name} is set {unverified}"
        return None, "no token in the environment; copilot may still be logged in (`/login` or `gh auth login`)"

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    # --- private files of the runs ---------------------------------------------------------

    def _run_dir(self, request: ChatRequest) -> str:
        return os.path.join(self._private_dir(), f"run-{id(request):x}")

    def _private_dir(self) -> str:
        """A directory of this runner only (mode 0700) in llmrun's private directory, removed
        when the runner goes (or llmrun exits)."""
        if self._private is None or not os.path.isdir(self._private):
            self._private = private.mkdtemp(prefix="copilot-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._private, True)
        return self._private

    async def aclose(self) -> None:
        if self._cleanup is not None:
            self._cleanup()
        self._private = None

    def _env_value(self, name: str) -> str:
        return self.env.get(name) or os.environ.get(name) or ""

    def _copilot_home(self) -> str:
        return self._env_value("COPILOT_HOME") or os.path.join(os.path.expanduser("~"), ".copilot")


_HTTP_STATUS = re.compile(r"\(HTTP (\d{3})\)|\b([45]\d\d)\b")


def _error_in_answer(answer: str) -> RunnerError | None:
    """Over ACP copilot ends a failed turn normally, its answer an `Error: ...` message."""
    start = answer.find("Error: ")
    if start < 0 or answer[:start].strip():
        return None
    message = answer[start + len("Error: ") :]
    found = _HTTP_STATUS.search(message)
    status = int(found.group(1) or found.group(2)) if found else None
    return error_for(message, status, error_type="authentication" if _NO_AUTH.search(message) else None)


def _retry_notice(text: str) -> AgentEvent | None:
    """Copilot's "Info: ... Retrying..." lines are news about the run, not answer text."""
    if text.startswith("Info: ") and "Retrying" in text:
        return AgentEvent(kind="retry", message=text.removeprefix("Info: ").strip())
    return None
