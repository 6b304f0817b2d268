"""Cline CLI (`cline`), headless with `--json` output, and warm over the Agent Client Protocol.

One-shot runs: `cline --json " "` with the prompt on stdin. cline appends a piped stdin to
its prompt argument, and in `--json` mode it insists on a prompt argument containing a
space (a bare word is read as a sub-command, as `cline hello` is), so the argument is a
single space, which cline trims away: the model sees exactly the piped prompt, and no
prompt ever reaches argv. The events are JSON lines: `hook_event` (`agent_start` carries
the run's `taskId`), `agent_event` (`content_start` per token delta of `text` or
`reasoning`, `content_start`/`content_end` of a `tool`, `usage`, `error`, `done`) and a
final `run_result` (finish reason, usage with cache tokens and cost, model). A failure ends
with `agent_event` `error` (`recoverable: false`, `errorClass` `auth` for a 401) and a
`run_result` with `finishReason: "error"`, exit code 1. cline retries a 429 or 5xx about
six times (a minute or more) before it reports it.

Lockdown, per run and without touching the user's files:

- cline's global settings come from a private copy (CLINE_GLOBAL_SETTINGS_PATH): the
  user's own settings with telemetry opted out, auto-update off, and the tools that act
  (`run_commands`, `editor`, `fetch_web_content`, `spawn_agent`, `skills`, the agent-team
  tools) added to `disabledTools`, so the model is not even offered them;
- `--auto-approve=false`, so that what is left (`read_files`, `search_codebase`) is
  refused too: headless cline answers a tool call needing approval with "requires
  approval in a TTY session" and carries on;
- CLINE_SESSION_BACKEND_MODE=local: otherwise every run starts a `--cline-hub-daemon`
  (on 127.0.0.1:25463) in a session of its own, so it outlives the run and escapes the
  kill of its process group, or hands the run to a hub daemon already running, outside
  llmrun's control;
- a requested model goes as `--model=`, which cline also saves as the provider's model:
  such a run gets a private copy of the provider settings (CLINE_PROVIDER_SETTINGS_PATH),
  so the user's saved model stays as it was. Without a model, cline rewrites the user's
  provider settings with the same provider and model (its own bookkeeping; a private copy
  there would lose OAuth tokens cline refreshes during the run).

`allow_tools` gives `--auto-approve=true` and keeps the user's tool settings. A system
prompt replaces cline's own (`--system=`, in argv, so up to 16 KiB; a longer one leads the
prompt instead). cline ignores SIGTERM: a timeout or cancellation ends it with SIGKILL
after the process layer's grace.

Not switchable: cline 3.0.65 asks PostHog for feature flags at start-up (only its test
switches turn that off), runs the user's hooks (~/.cline/hooks), and saves each run as a
session in its data directory.

Sessions: cline 3.0.65 cannot resume a session headless (`--id` ignores the prompt), so a
one-shot request naming a session sends its whole conversation again (the id is checked,
never passed); `runner.session()` is warm instead, over ACP
(`cline --acp`): the agent asks llmrun before every tool call, which llmrun refuses unless
the session allows tools, and the session is put in `plan` mode. ACP cline signs in only
to Cline's own accounts unless CLINE_PROVIDER and CLINE_API_KEY name the provider, so the
runner sets them from the user's saved provider (the last used one) when they are not
set; it takes the model from the session, else the saved one, and chooses it over the
protocol (nothing is saved). ACP reports no usage.

Health: `cline --version`, and whether `cline auth` saved a provider (or CLINE_API_KEY is
set); only a probe shows that the provider answers.

Options (`ChatRequest.options`): `mode` (`act`, the default, or `plan`), `extra_args` (a
list appended to the command).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import private, process
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
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, FinishReason, Usage
from .base import CliRunner, Parser, as_count, as_dict, as_number, as_text, json_object

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

# What cline's argument parser takes as a prompt that is one quoted argument, and then trims.
PROMPT_PLACEHOLDER = " "
SYSTEM_PROMPT_ARGV_LIMIT = 16 * 1024

# cline 3.0.65's tools that act on the machine or the network, or start other agents.
ACTING_TOOLS = (
    "run_commands",
    "editor",
    "fetch_web_content",
    "spawn_agent",
    "skills",
    "team_spawn_teammate",
    "team_shutdown_teammate",
    "team_status",
    "team_task",
    "team_run_task",
    "team_cancel_run",
    "team_list_runs",
    "team_await_runs",
    "team_send_message",
    "team_broadcast",
    "team_read_mailbox",
    "team_mission_log",
    "team_cleanup",
    "team_create_outcome",
    "team_attach_outcome_fragment",
    "team_review_outcome_fragment",
    "team_finalize_outcome",
    "team_list_outcomes",
)

RUN_ENV = {
    # No hub daemon: it would outlive the run, outside its process group.
    "CLINE_SESSION_BACKEND_MODE": "local",
}
RUN_ENV_DEFAULTS = {"CLINE_NO_AUTO_UPDATE": "1"}

# The providers ACP cline signs in to by itself, from what `cline auth` saved.
ACP_SIGN_IN_PROVIDERS = ("cline", "cline-pass", "openai-codex")

FINISH_REASONS: dict[str, FinishReason] = {
    "completed": "stop",
    "max_iterations": "length",
    "aborted": "cancelled",
}

LOGIN_HINT = "run `cline auth` (`cline auth -p PROVIDER -k KEY`, `-p openai-compatible -b URL -k KEY -m MODEL`)"

_AUTH = re.compile(r"api[ -]?key|unauthori[sz]ed|authenticat|forbidden|not logged in|sign in|\b40[13]\b", re.I)
_RATE = re.compile(r"rate limit|too many requests|quota|\b429\b", re.I)
_CONTEXT = re.compile(r"context (length|window)|too many tokens|prompt is too long|maximum context", re.I)
_MODEL = re.compile(r"model.{0,40}(not found|does not exist|not supported|unknown|invalid)|unknown model", re.I)
_UNAVAILABLE = re.compile(
    r"server (had an )?error|internal server|service unavailable|overloaded|bad gateway|gateway timeout"
    r"|\b5\d\d\b|ECONNREFUSED|ECONNRESET|ENOTFOUND|unable to connect|fetch failed|connection (refused|error)",
    re.I,
)


def classify(message: str, error_class: str | None = None) -> RunnerError:
    """The typed error for a failure cline reported (it gives the API's message, no status)."""
    text = message.strip() or "cline reported an error"
    if error_class == "auth" or _AUTH.search(text):
        return AuthenticationError(text, hint=LOGIN_HINT)
    if _RATE.search(text):
        return RateLimitError(text)
    if _CONTEXT.search(text):
        return ContextLengthExceeded(text)
    if _MODEL.search(text):
        return ModelNotFound(text)
    if _UNAVAILABLE.search(text):
        return ServiceUnavailable(text)
    return RunnerError(text)


class ClineParser(Parser):
    """cline's `--json` event lines."""

    def __init__(self, *, model: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.session_id: str | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        event = json_object(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind == "hook_event":
            if event.get("hookEventName") == "agent_start" and event.get("parentAgentId") is None:
                self.session_id = self.session_id or as_text(event.get("taskId"))
            return []
        if kind == "agent_event":
            return self._agent_event(as_dict(event.get("event")))
        if kind == "run_result":
            return self._result(event)
        if kind == "error":  # printed on stderr by this version; read here should it move
            self._fail(classify(str(event.get("message") or "")))
        return []

    def _agent_event(self, event: dict[str, Any]) -> list[ChatChunk]:
        kind, content = event.get("type"), event.get("contentType")
        if kind == "content_start" and content == "text":
            text = as_text(event.get("text"))
            return [ChatChunk(delta=text)] if text else []
        if kind == "content_start" and content == "reasoning":
            thinking = as_text(event.get("reasoning"))
            return [ChatChunk(thinking=thinking)] if thinking else []
        if kind == "content_start" and content == "tool":
            use = AgentEvent(
                kind="tool_use",
                id=as_text(event.get("toolCallId")),
                name=as_text(event.get("toolName")),
                input=event.get("input"),
            )
            return [ChatChunk(agent_event=use)]
        if kind == "content_end" and content == "tool":
            return [ChatChunk(agent_event=_tool_result(event))]
        if kind == "error" and event.get("recoverable") is False:
            error = as_dict(event.get("error"))
            self._fail(classify(str(error.get("message") or ""), as_text(event.get("errorClass"))))
        return []  # iteration marks, usage so far, `done` (run_result follows), later kinds

    def _result(self, event: dict[str, Any]) -> list[ChatChunk]:
        self.finished = True
        reason = str(event.get("finishReason") or "")
        if reason == "error":
            self._fail(classify(str(event.get("text") or "")))
        if self.error is not None:
            return []
        usage = as_dict(event.get("usage"))
        model = as_dict(event.get("model"))
        return [
            ChatChunk(
                finish_reason=FINISH_REASONS.get(reason, "stop"),
                usage=Usage(
                    input_tokens=as_count(usage.get("inputTokens")) or 0,
                    output_tokens=as_count(usage.get("outputTokens")) or 0,
                    cache_read_tokens=as_count(usage.get("cacheReadTokens")) or 0,
                    cache_write_tokens=as_count(usage.get("cacheWriteTokens")) or 0,
                ),
                session_id=self.session_id,
                model=as_text(model.get("id")) or self.model,
                cost_usd=as_number(usage.get("totalCost")),
            )
        ]

    def _fail(self, error: RunnerError) -> None:
        if self.error is None:
            self.error = error


def _tool_result(event: dict[str, Any]) -> AgentEvent:
    call_id, name = as_text(event.get("toolCallId")), as_text(event.get("toolName"))
    output = event.get("output")
    failure = as_text(as_dict(output).get("error")) or as_text(event.get("error"))
    if failure is not None and re.search(r"requires approval|rejected before execution|unavailable tool", failure):
        return AgentEvent(kind="permission_denied", id=call_id, name=name, message=failure, is_error=True)
    return AgentEvent(kind="tool_result", id=call_id, name=name, output=output, is_error=failure is not None)


# --- cline's settings files ---------------------------------------------------------------


def settings_path(env: Mapping[str, str], name: str) -> Path:
    """Where cline reads `settings/<name>` from, as cline resolves it."""
    override = {"global-settings.json": "CLINE_GLOBAL_SETTINGS_PATH", "providers.json": "CLINE_PROVIDER_SETTINGS_PATH"}
    if explicit := env.get(override[name], "").strip():
        return Path(explicit)
    data_dir = env.get("CLINE_DATA_DIR", "").strip()
    if not data_dir:
        cline_dir = env.get("CLINE_DIR", "").strip() or os.path.join(os.path.expanduser("~"), ".cline")
        data_dir = os.path.join(cline_dir, "data")
    return Path(data_dir) / "settings" / name


def read_settings(path: Path) -> dict[str, Any]:
    """A settings file as a JSON object; {} when it is missing or not one."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def run_global_settings(user: dict[str, Any], allow_tools: bool) -> dict[str, Any]:
    """The user's global settings with a run's own on top."""
    settings = {**user, "telemetryOptOut": True, "autoUpdateEnabled": False}
    if not allow_tools:
        disabled = [name for name in user.get("disabledTools") or [] if isinstance(name, str)]
        settings["disabledTools"] = [*disabled, *(name for name in ACTING_TOOLS if name not in disabled)]
        settings["toolAutoApprove"] = False
    return settings


def saved_provider(env: Mapping[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(id, saved settings) of the provider cline uses: CLINE_PROVIDER's, else the one
    `cline auth` saved last; (None, {}) when there is none."""
    saved = read_settings(settings_path(env, "providers.json"))
    provider = env.get("CLINE_PROVIDER", "").strip() or as_text(saved.get("lastUsedProvider"))
    entry = as_dict(as_dict(saved.get("providers")).get(provider or ""))
    return provider, as_dict(entry.get("settings"))


# --- the runner ---------------------------------------------------------------------------


class ClineRunner(CliRunner):
    name = "cline"
    option_names = frozenset({"mode", "extra_args"})
    display_name = "Cline"
    binary = "cline"
    aliases = ("cline-cli",)
    install_hint = "npm install -g cline"
    # The oldest release whose source has everything used here (the backend mode, the settings
    # paths, disabledTools, ACP model options); 3.0.65 is the one tested.
    min_version = "3.0.56"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=True,
        sessions=False,
        warm=True,
        system_prompt=True,
        usage=True,
        cost=True,
        prompt_via_stdin=True,
    )
    cannot_lock_down = "feature flags fetched from PostHog at start-up; the user's hooks run; each run is saved"
    # No default model: the one saved by `cline auth` applies.

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        # cline cannot resume headless: a session id is checked, never passed, and the
        # request's whole conversation goes instead.
        self.session_to_resume(request)
        prompt = flatten_conversation(request.messages)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "--json", f"--auto-approve={'true' if request.allow_tools else 'false'}"]
        mode = request.options.get("mode")
        if mode not in (None, "act", "plan"):
            raise UnsupportedFeature(f"unknown mode {mode!r}; cline knows act and plan", runner=self.name)
        if mode == "plan":
            argv.append("--plan")
        model = self.model_for(request)
        if model:
            argv.append(f"--model={model}")
        if system := request.system_prompt():
            if len(system.encode()) <= SYSTEM_PROMPT_ARGV_LIMIT:
                argv.append(f"--system={system}")
            else:
                prompt = with_system_prompt(prompt, system)
        argv += [str(arg) for arg in request.options.get("extra_args", [])]
        argv.append(PROMPT_PLACEHOLDER)
        env = dict(RUN_ENV)
        temp_files = self._private_settings(env, request.allow_tools, copy_providers=bool(model))
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env=env,
            env_defaults=RUN_ENV_DEFAULTS,
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def _private_settings(self, env: dict[str, str], allow_tools: bool, *, copy_providers: bool) -> list[str]:
        """Write the run's settings files into a private directory named in `env`."""
        user_env = {**os.environ, **self.env}
        directory = private.mkdtemp(prefix="cline-")
        user_settings = read_settings(settings_path(user_env, "global-settings.json"))
        global_settings = run_global_settings(user_settings, allow_tools)
        env["CLINE_GLOBAL_SETTINGS_PATH"] = os.path.join(directory, "global-settings.json")
        Path(env["CLINE_GLOBAL_SETTINGS_PATH"]).write_text(json.dumps(global_settings))
        os.chmod(env["CLINE_GLOBAL_SETTINGS_PATH"], 0o600)
        if copy_providers:
            env["CLINE_PROVIDER_SETTINGS_PATH"] = os.path.join(directory, "providers.json")
            source = settings_path(user_env, "providers.json")
            if source.is_file():
                Path(env["CLINE_PROVIDER_SETTINGS_PATH"]).write_bytes(source.read_bytes())
                os.chmod(env["CLINE_PROVIDER_SETTINGS_PATH"], 0o600)
        return [directory]

    def new_parser(self, request: ChatRequest) -> Parser:
        return ClineParser(model=self.model_for(request))

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        # cline prints `{"type":"error","message":...}` on stderr in --json mode.
        for line in reversed(process.strip_ansi(stderr).splitlines()):
            event = json_object(line.strip())
            if event is not None and event.get("type") == "error" and isinstance(event.get("message"), str):
                error = classify(event["message"])
                if type(error) is RunnerError:
                    return super().error_for_exit(returncode, f"{stderr}\n{event['message']}")
                return error
        return super().error_for_exit(returncode, process.strip_ansi(stderr))

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpConnection, AcpProfile
        from ..transports.base import warm_argv

        request = settings.request([])
        invocation = self.prepared_invocation(request)
        # ACP mode takes no prompt, output or model flag; tools are asked about over the protocol.
        invocation.argv = warm_argv(
            [arg for arg in invocation.argv if arg != PROMPT_PLACEHOLDER],
            ["--acp"],
            drop=("--json", "--auto-approve", "--system", "--plan", "--model"),
        )
        if request.allow_tools:
            invocation.argv.append("--auto-approve=true")
        user_env = {**os.environ, **self.env}
        provider, saved = saved_provider(user_env)
        env = dict(invocation.env)
        if provider and provider not in ACP_SIGN_IN_PROVIDERS and not user_env.get("CLINE_API_KEY"):
            env["CLINE_PROVIDER"] = provider
            if key := as_text(saved.get("apiKey")):
                env["CLINE_API_KEY"] = key
        invocation.env = env
        model = settings.model or self.default_model or as_text(saved.get("model"))
        return AcpConnection(
            self,
            invocation,
            settings,
            resume,
            profile=AcpProfile(read_only_modes=("plan",)),
            cwd=os.path.abspath(settings.cwd or os.getcwd()),
            allow_tools=settings.allow_tools,
            system=request.system_prompt(),
            model=model,
            set_model=bool(model),
        )

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        """Whether `cline auth` saved a provider; only a probe shows that it works."""
        user_env = {**os.environ, **self.env}
        provider, saved = saved_provider(user_env)
        if user_env.get("CLINE_API_KEY"):
            return True, "CLINE_API_KEY is set (not verified: `llmrun health --probe` tries it)"
        if provider is None:
            # cline may still run on an account it signs in to itself; a probe tells.
            return None, f"no provider saved in {settings_path(user_env, 'providers.json')}: {LOGIN_HINT}"
        model = as_text(saved.get("model"))
        return True, f"provider {provider}" + (f" ({model})" if model else "") + " (not verified)"
