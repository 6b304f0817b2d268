"""Factory Droid (`droid`, npm `droid`), one `droid exec -o stream-json` per request, or a
warm session over droid's ACP mode.

droid exec prints one JSON object per line: `system`/init (session id, model), a
`message` per user and assistant message (whole: droid streams no token deltas, so an
answer arrives message by message), `tool_call` and `tool_result` for its own tools, a
final `completion` (`finalText`, usage in Anthropic's field names) and `error` events
(`source: "agent_loop"` with the API's message, e.g. "401 Incorrect API key …", then
`source: "cli"`, "Exec failed"), after which it exits 1. The prompt goes over stdin (with
no prompt argument droid exec reads stdin as the prompt); the model is `--model=ID`,
`custom:<model>` for the "custom models" of droid's own settings (BYOK, which need no
Factory account). The system prompt is appended to droid's own from a private file
(`--append-system-prompt-file`). An unknown model is only named on stderr ("Invalid
model: …", exit 1).

Locked down: unless the request allows tools, `--only-tools=TodoWrite`, which leaves the
model no tool at all (droid exec offers it none; a call of any tool comes back "not
permitted in this exec session"). This matters: droid's own gate follows the risk level
the model declares for a command, so in droid's default ("read-only") mode a command the
model calls low risk runs, `touch` included. `options={"tools": "read-only"}` gives the
model droid's reading tools (Read, LS, Grep, Glob). With `allow_tools`, all of droid's
tools and `--auto=medium` (`options={"autonomy": "low"|"medium"|"high"}`, or "unsafe" for
`--skip-permissions-unsafe`); what runs is then decided by the model's own risk label,
which llmrun cannot check. Update checks and droid's OTEL traces are off
(FACTORY_DROID_AUTO_UPDATE_ENABLED=false, OTEL_SDK_DISABLED=true). For a `custom:` model
the run is in droid's Airgap Mode (FACTORY_AIRGAP_ENABLED=1: no telemetry, feature flags,
cloud sync of the session or other calls to Factory); a Factory-hosted model needs
Factory's servers, so there telemetry and the cloud sync of sessions cannot be turned off
(`options={"airgap": True}` forces Airgap Mode, which droid then refuses for such a
model). The user's hooks (SessionStart, Stop, …, which run commands) are off unless the
request allows tools or `options={"hooks": True}`: a private runtime settings file
(`--settings`, merged over the user's for this process only) sets `hooks.hooksDisabled`.
The user's settings are never written; droid keeps its session files and logs under
~/.factory as usual.

Hazards: droid exits 0 when it gets SIGTERM, having printed no `completion`: such a run
is an error here, never an answer. droid retries a failed request silently, then reports
it as an `error` event: a 429 five times over about 85 s, a 5xx ten times over about
250 s; llmrun's stall timeout (300 s by default) stays above both, so droid's own typed
error arrives (a shorter `stall_timeout` ends such a run sooner, as a RunnerTimeout).

Sessions: `-s ID` loads the session from Factory's servers (it fails offline and in
Airgap Mode), so a request that names a session continues it with `--fork=ID`, which
copies the local history into a new session; the final chunk carries the new id, and
only the new turns are sent.

Warm sessions: `droid exec --output-format=acp` speaks the Agent Client Protocol. There
droid ignores --model and --only-tools: the model is set as the session's `model`
option (`custom:<model>` is accepted), and the lockdown is droid's "normal" mode, chosen
explicitly, which asks the client before anything but reading; llmrun rejects each ask
unless the session allows tools. Reading (Read, LS, Grep, Glob) needs no ask, so it stays
possible in a warm session. The runtime settings file that turns hooks off, the
environment and the extra arguments apply there as in a one-shot run. A resumed session
is loaded over the protocol (`session/load`, which works offline). droid reports no
token usage over ACP, asks the model once more for a session title when a session
starts, and sends whole messages, not deltas.

Health: `droid --version`; logged in when FACTORY_API_KEY is set or droid's settings
define custom models (which need no Factory login); otherwise unknown.
`available_models()` lists the custom models of droid's settings.

Options (`ChatRequest.options`): `tools`, `autonomy`, `airgap`, `hooks`, `reasoning_effort`
(`--reasoning-effort`), and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import private, process
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
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest
from .base import CliRunner, Parser, _last_line, as_dict, as_text, json_object
from .stream_json import StreamJsonParser

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = "set FACTORY_API_KEY, run `droid` and /login, or define a custom model in ~/.factory/settings.json"
MODEL_HINT = "`droid exec --help` lists droid's models; those of ~/.factory/settings.json are `custom:<model>`"
# droid exec never offers this tool to a model, so allowing only it leaves the model none.
NO_TOOLS = "TodoWrite"
READ_ONLY_TOOLS = "Read,LS,Grep,Glob"
AUTONOMY = {
    "low": "--auto=low",
    "medium": "--auto=medium",
    "high": "--auto=high",
    "unsafe": "--skip-permissions-unsafe",
}
# Runtime settings for one run (`--settings`, merged over the user's for this process only).
NO_HOOKS = {"hooks": {"hooksDisabled": True}}
# Environment defaults: a user's own setting wins.
QUIET_ENV = {"FACTORY_DROID_AUTO_UPDATE_ENABLED": "false", "OTEL_SDK_DISABLED": "true"}

_STATUS = re.compile(r"^\s*(\d{3})\b")
_AUTH = re.compile(r"authentication failed|invalid (x-)?api.?key|unauthori[sz]ed|FACTORY_API_KEY|log in", re.I)
_RATE = re.compile(r"rate.?limit|too many requests|quota", re.I)
_UNAVAILABLE = re.compile(
    r"overloaded|unavailable|unable to connect|ECONNREFUSED|ECONNRESET|ENOTFOUND|fetch failed|timed? ?out", re.I
)
_MODEL = re.compile(r"(unknown|invalid|unsupported) model|model .{0,80}(not found|not exist|not available)", re.I)
_CONTEXT = re.compile(r"context (length|window)|prompt is too long|too many tokens|maximum context", re.I)
_SESSION = re.compile(r"session .{0,80}not found|failed to fetch session|no such session", re.I)
_DENIED = re.compile(r"insufficient permission|not permitted in this exec session|permission denied", re.I)


def classify(message: str) -> RunnerError | None:
    """The typed error for droid's words (an API error starts with its HTTP status)."""
    match = _STATUS.match(message)
    status = int(match.group(1)) if match else None
    if status in (401, 403) or _AUTH.search(message):
        return AuthenticationError(message, hint=LOGIN_HINT)
    if status == 429 or _RATE.search(message):
        return RateLimitError(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if _SESSION.search(message):
        return SessionNotFound(message)
    if status == 404 or _MODEL.search(message):
        return ModelNotFound(message, hint=MODEL_HINT)
    if (status is not None and status >= 500) or _UNAVAILABLE.search(message):
        return ServiceUnavailable(message)
    if _DENIED.search(message):
        return RunnerError(message, hint="droid stopped at a tool it may not run; set allow_tools to let it")
    return None


class DroidParser(StreamJsonParser):
    """droid exec's stream-json (see the module docstring)."""

    login_hint = LOGIN_HINT

    def __init__(self) -> None:
        super().__init__()
        self._errors: list[str] = []

    def feed(self, line: str) -> list[ChatChunk]:
        event = json_object(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind == "system":
            if event.get("subtype") == "init":
                self.session_id = as_text(event.get("session_id")) or self.session_id
                self._note_model(event.get("model"))
            return []
        if kind == "message":
            text = as_text(event.get("text"))
            if event.get("role") != "assistant" or text is None:
                return []
            return [self._text(as_text(event.get("id")), text)]
        if kind == "tool_call":
            use = AgentEvent(
                kind="tool_use",
                id=as_text(event.get("id")),
                name=as_text(event.get("toolName")) or as_text(event.get("toolId")),
                input=event.get("parameters"),
            )
            return [ChatChunk(agent_event=use)]
        if kind == "tool_result":
            return [ChatChunk(agent_event=self._tool_result(event))]
        if kind == "completion":
            return self._completion(event)
        if kind == "error":
            message = as_text(event.get("message")) or "droid reported an error"
            self._errors.append(message.removeprefix("Error: "))
            return []
        return []

    def _tool_result(self, event: dict[str, Any]) -> AgentEvent:
        failed = bool(event.get("isError"))
        output = as_text(as_dict(event.get("error")).get("message")) if failed else None
        output = output or event.get("value")
        denied = failed and isinstance(output, str) and _DENIED.search(output) is not None
        kind: Literal["permission_denied", "tool_result"] = "permission_denied" if denied else "tool_result"
        return AgentEvent(
            kind=kind,
            id=as_text(event.get("id")),
            name=as_text(event.get("toolId")),
            output=output,
            is_error=failed,
        )

    def _completion(self, event: dict[str, Any]) -> list[ChatChunk]:
        self.finished = True
        self.session_id = as_text(event.get("session_id")) or self.session_id
        chunks: list[ChatChunk] = []
        final = as_text(event.get("finalText"))
        if not self.sent_text and final:
            chunks.append(ChatChunk(delta=final))  # no assistant message came
        chunks.append(
            ChatChunk(
                finish_reason="stop",
                usage=self.usage_from(as_dict(event.get("usage"))),
                session_id=self.session_id,
                model=self.model,
            )
        )
        return chunks

    def close(self) -> list[ChatChunk]:
        if self._errors and self.error is None:
            # The first error is the cause ("401 …"); droid's own "Exec failed" follows it.
            message = self._errors[0]
            self.error = classify(message) or RunnerError(message)
        return []


class DroidRunner(CliRunner):
    name = "droid"
    option_names = frozenset({"tools", "autonomy", "airgap", "hooks", "reasoning_effort", "extra_args"})
    display_name = "Factory Droid"
    binary = "droid"
    aliases = ("factory", "factory-droid")
    install_hint = "npm install -g droid"
    min_version = "0.215.0"
    extra_args_at = 2  # after `exec`
    cannot_lock_down = (
        "with allow_tools droid's gate trusts the model's own risk label; a Factory-hosted model sends "
        "telemetry and syncs sessions to Factory; a warm session can still read files; each run is saved "
        "under ~/.factory"
    )
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        usage=True,
        model_discovery=True,
    )
    # No default model: droid's configured one applies.

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        turns = new_turns(request.messages) if request.session_id else request.conversation()
        prompt = flatten_conversation(turns)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "exec", "--output-format=stream-json"]
        model = self.model_for(request)
        if model:
            argv.append(f"--model={model}")
        argv += self._tool_args(request)
        if effort := options.get("reasoning_effort"):
            argv.append(f"--reasoning-effort={effort}")
        if session := self.session_to_resume(request):
            argv.append(f"--fork={session}")
        temp_files: list[str] = []
        if not request.allow_tools and not options.get("hooks"):
            path = private.write_file(json.dumps(NO_HOOKS), prefix="droid-settings-", suffix=".json")
            temp_files.append(path)
            argv.append(f"--settings={path}")
        if system := request.system_prompt():
            path = private.write_file(system, prefix="droid-system-", suffix=".md")
            temp_files.append(path)
            argv.append(f"--append-system-prompt-file={path}")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        env_defaults = dict(QUIET_ENV)
        if options.get("airgap", bool(model and model.startswith("custom:"))):
            env_defaults["FACTORY_AIRGAP_ENABLED"] = "1"
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env_defaults=env_defaults,
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def _tool_args(self, request: ChatRequest) -> list[str]:
        tools = request.options.get("tools")
        autonomy = request.options.get("autonomy")
        if tools not in (None, "none", "read-only"):
            raise UnsupportedFeature(f"unknown tools {tools!r}; llmrun knows none and read-only", runner=self.name)
        if autonomy is not None and autonomy not in AUTONOMY:
            known = ", ".join(AUTONOMY)
            raise UnsupportedFeature(f"unknown autonomy {autonomy!r}; droid knows {known}", runner=self.name)
        if not request.allow_tools:
            if autonomy is not None:
                raise UnsupportedFeature("an autonomy level lets droid's tools act: set allow_tools", runner=self.name)
            return [f"--only-tools={READ_ONLY_TOOLS if tools == 'read-only' else NO_TOOLS}"]
        args = [AUTONOMY[str(autonomy or "medium")]]
        if tools is not None:
            args.insert(0, f"--only-tools={READ_ONLY_TOOLS if tools == 'read-only' else NO_TOOLS}")
        return args

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection
        from ..transports.base import warm_argv

        invocation = self.prepared_invocation(settings.request([]))
        # In its ACP mode droid ignores --model and --only-tools: the model is set as the
        # session's model option, and the lockdown is droid's "normal" mode, which asks before
        # anything but reading (llmrun rejects each ask unless tools are allowed).
        one_shot = ("exec", "--output-format", "--model", "--only-tools", "--fork", "--append-system-prompt-file")
        invocation.argv = warm_argv(invocation.argv, ["exec", "--output-format=acp"], drop=one_shot)
        profile = AcpProfile(read_only_modes=("normal",))
        return acp_connection(self, invocation, settings, resume, profile, set_model=True)

    def new_parser(self, request: ChatRequest) -> Parser:
        return DroidParser()

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        lines = [line.strip() for line in stderr.splitlines()]
        if invalid := next((line for line in lines if line.startswith("Invalid model:")), None):
            # droid lists the models it knows after it; the custom ones are `custom:…`.
            return ModelNotFound(invalid, hint=MODEL_HINT)
        message = _last_line(stderr).removeprefix("Error during droid execution: ")
        if "unknown option" in stderr or "Unknown tool identifier" in stderr:
            return RunnerError(
                f"this droid does not accept llmrun's flags: {message}", hint=f"update it with `{self.install_hint}`"
            )
        return classify(message) or super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        if self.env.get("FACTORY_API_KEY") or os.environ.get("FACTORY_API_KEY"):
            return True, "FACTORY_API_KEY is set"
        if models := custom_models():
            return True, f"custom models: {', '.join(models)}"
        return None, ""

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    async def discover_models(self, binary: str) -> list[str]:
        return custom_models()


def custom_models() -> list[str]:
    """The `custom:` model ids droid's user settings define (BYOK, no Factory login needed)."""
    try:
        settings = json.loads((Path.home() / ".factory" / "settings.json").read_text())
    except (OSError, ValueError, RecursionError):
        return []
    models = settings.get("customModels") if isinstance(settings, dict) else None
    return [
        f"custom:{entry['model']}"
        for entry in (models if isinstance(models, list) else [])
        if isinstance(entry, dict) and isinstance(entry.get("model"), str)
    ]
