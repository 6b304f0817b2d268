"""OpenCode (`opencode`), in `opencode run --format json` mode.

The prompt goes over stdin (with no message argument, `opencode run` takes piped stdin as
the whole message; the pipe is closed after it, as opencode waits for its end). OpenCode
prints whole parts, not token deltas: each text, reasoning (`--thinking`) and tool part
arrives complete. There is no final result event: a run ends after the `step_finish`
whose reason is not `tool-calls`; usage (cache and reasoning tokens included) and cost are
summed over the run's steps. The model is named per request as `provider/model`
(`--model`); without one, opencode's configured model applies. `--title=` spares the
extra model call opencode otherwise makes to title a new session.

Agent tools: opencode's permissions are set for the run through OPENCODE_CONFIG_CONTENT,
the highest layer of opencode's configuration, merged over the user's files and over any
OPENCODE_CONFIG_CONTENT of their own; no file is written. Unless the request allows
tools, the run uses an agent of llmrun's own (`llmrun`, opencode's default prompt) whose
rules deny everything but reading in the working directory (read, glob, grep, list,
skill, todo). An agent of its own is needed because an agent's rules come after the
global ones: a user's `agent.build.permission.bash = "allow"` would win over a global
deny. With `allow_tools`, opencode's configured agent and permissions apply unchanged.

The system prompt replaces opencode's own (the agent's `prompt`, read from a private
temporary file).

Sampling: `temperature` and `top_p` go on the run's agent in the same inline config
(opencode sends temperature only to a model whose entry allows it: `temperature: true` for
a model of one's own provider; models.dev tells it for the others), and `max_tokens` caps
every model call through OPENCODE_EXPERIMENTAL_OUTPUT_TOKEN_MAX. `seed` and the penalties
have no setting that every provider sends (an agent's `options` reach OpenAI-compatible
ones only), so they are reported as ignored.

Sessions: `request.session_id` is passed as `--session=<id>` and only the new turns are
sent; otherwise history is flattened into the prompt.

Failures: an API error that opencode gives up on arrives as an `error` event, typed by
its HTTP status. OpenCode retries 429 and 5xx answers, and an unreachable server, with
growing back-off and no end; it says nothing on stdout meanwhile. With no provider
configured it uses its free hosted model, which offline it retries for ever. llmrun's
stall and hard timeouts end such a run; the RunnerTimeout then quotes the last error
opencode logged (`--print-logs --log-level=WARN` puts its errors on stderr) and says what
to configure. An `UnknownError` is typed from the log line of its reference (a model
that does not exist, say).

Health: `opencode --version`, and `opencode auth list` for stored credentials and the
provider keys it sees in the environment; `available_models()` asks `opencode models`.

Options (`ChatRequest.options`): `agent` (an opencode agent to run; without
`allow_tools` llmrun's read-only rules are merged into it), `variant` (provider-specific
reasoning effort), and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncGenerator, Mapping
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
    RunnerTimeout,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..images import private_image_directory
from ..process import strip_ansi
from ..prompting import new_turns, prompt_for
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, FinishReason, Usage
from .base import (
    CliRunner,
    Parser,
    WholeMessageParser,
    _last_line,
    as_count,
    as_dict,
    as_number,
    json_object,
    json_text,
    line_shape,
)

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = (
    "configure a provider: `opencode auth login`, a provider in opencode.json, or one in OPENCODE_CONFIG_CONTENT; "
    "then name its model as provider/model"
)
MODELS_HINT = "`opencode models` lists the models opencode knows, as provider/model"
AGENT = "llmrun"
# The rules of llmrun's agent without allow_tools: the last matching rule wins, so the
# catch-all deny comes first and the read-only tools are allowed after it.
READ_ONLY_PERMISSION: dict[str, str] = {
    "*": "deny",
    "read": "allow",
    "glob": "allow",
    "grep": "allow",
    "list": "allow",
    "skill": "allow",
    "todowrite": "allow",
    "todoread": "allow",
    # Named as well, so that a rule of the user's for the same key cannot come after the deny.
    "bash": "deny",
    "edit": "deny",
    "task": "deny",
    "webfetch": "deny",
    "websearch": "deny",
    "codesearch": "deny",
    "external_directory": "deny",
}
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content-filter": "content_filter",
    "error": "error",
}

_CONTEXT = re.compile(r"context (length|window)|too many tokens|prompt is too long|ContextOverflow", re.I)
_MODEL = re.compile(r"ModelNotFound|model\b.*\b(not found|does not exist|not supported)", re.I)
_AUTH = re.compile(r"ProviderAuthError|api key|unauthori[sz]ed|authentication", re.I)
_RATE = re.compile(r"rate limit|too many requests|quota", re.I)
_UNAVAILABLE = re.compile(r"cannot connect|unable to connect|ECONNREFUSED|server had an error|overloaded", re.I)
_STREAM_ERROR = re.compile(r'message="stream error".*?providerID=(\S+) modelID=(\S+).*?error\.error="(.*)"\s*$')


def classify(message: str, status: int | None = None, name: str = "") -> RunnerError:
    """The typed error for what opencode reported, the HTTP status (when known) deciding first."""
    text = message.strip() or name or "opencode reported an error"
    if status in (401, 403) or name == "ProviderAuthError":
        return AuthenticationError(text, hint=LOGIN_HINT)
    if status == 429:
        return RateLimitError(text)
    if status is not None and status >= 500:
        return ServiceUnavailable(text)
    if name == "ContextOverflowError" or _CONTEXT.search(text):
        return ContextLengthExceeded(text)
    if status == 404 or _MODEL.search(f"{name} {text}"):
        return ModelNotFound(text, hint=MODELS_HINT)
    if status is None and _RATE.search(text):
        return RateLimitError(text)
    if status is None and _AUTH.search(f"{name} {text}"):
        return AuthenticationError(text, hint=LOGIN_HINT)
    if status is None and _UNAVAILABLE.search(text):
        return ServiceUnavailable(text)
    return RunnerError(text)


def logged_failure(stderr: str, ref: str) -> str | None:
    """The error opencode logged under the reference that an `UnknownError` event gives."""
    for line in reversed(strip_ansi(stderr).splitlines()):
        if f"ref={ref}" in line and (match := re.search(r'\berror="([^"]*)"', line)):
            return match.group(1)
    return None


def last_stream_error(stderr: str) -> tuple[str, str, str] | None:
    """(provider, model, error) of the last model call opencode logged as failed."""
    for line in reversed(strip_ansi(stderr).splitlines()):
        if match := _STREAM_ERROR.search(line):
            return match.group(1), match.group(2), match.group(3)
    return None


# --- the event stream --------------------------------------------------------------------


OPENCODE_TEXT = line_shape(
    '{"type":"text","timestamp":<int>,"sessionID":"<key>","part":{"id":"<id>","messageID":"<id>",'
    '"sessionID":"<id>","type":"text","text":"<text>","time":{"start":<int>,"end":<int>}}}'
)


class OpencodeParser(WholeMessageParser):
    """Parses one run of `opencode run --format json` (step_start, text, reasoning, tool_use, step_finish, error)."""

    fast_line: ClassVar[re.Pattern[str] | None] = OPENCODE_TEXT
    """A line that is certainly a whole text part of the answer: the session id in group 1, the
    text in group 2."""

    def __init__(self, *, model: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.session_id: str | None = None
        self._tokens: dict[str, int] = {}
        self._cost: float | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        if self.fast_line is not None and (match := self.fast_line.fullmatch(line)) and (text := json_text(match[2])):
            self.session_id = match[1]
            return self._text(text)
        event = json_object(line)
        if event is None:
            return []  # noise on stdout, skipped
        if isinstance(event.get("sessionID"), str):
            self.session_id = event["sessionID"]
        part = as_dict(event.get("part"))
        kind = event.get("type")
        if kind == "text":
            return self._text(part.get("text"))
        if kind == "reasoning":
            return self._thinking(part.get("text"))
        if kind == "tool_use":
            return self._tool(part)
        if kind == "step_finish":
            return self._step_finish(part)
        if kind == "error":
            self._error(event.get("error"))
        return []  # step_start and event types of later opencode versions

    # --- events --------------------------------------------------------------------------

    def _tool(self, part: dict[str, Any]) -> list[ChatChunk]:
        state = as_dict(part.get("state"))
        call_id = part.get("callID") if isinstance(part.get("callID"), str) else None
        name, tool_input = part.get("tool"), state.get("input")
        if name == "invalid" and isinstance(tool_input, dict):
            # A tool the run does not offer (denied, or made up by the model).
            name, tool_input = tool_input.get("tool"), None
        failed = state.get("status") == "error" or part.get("tool") == "invalid"
        output = state.get("error") if state.get("status") == "error" else state.get("output")
        use = AgentEvent(kind="tool_use", id=call_id, name=name if isinstance(name, str) else None, input=tool_input)
        if failed and isinstance(output, str) and re.search(r"permission|denied|rejected", output, re.I):
            done = AgentEvent(kind="permission_denied", id=call_id, name=use.name, message=output, is_error=True)
        else:
            done = AgentEvent(kind="tool_result", id=call_id, name=use.name, output=output, is_error=failed)
        return [ChatChunk(agent_event=use), ChatChunk(agent_event=done)]

    def _step_finish(self, part: dict[str, Any]) -> list[ChatChunk]:
        self._add_tokens(part.get("tokens"))
        if (cost := as_number(part.get("cost"))) is not None:
            self._cost = (self._cost or 0.0) + cost
        reason = str(part.get("reason") or "")
        if reason == "tool-calls":
            return []  # the next step answers with the tools' results
        self.finished = True
        if self.error is not None:
            return []
        return [
            ChatChunk(
                finish_reason=FINISH_REASONS.get(reason, "stop"),
                usage=self.usage(),
                session_id=self.session_id,
                model=self.model,
                cost_usd=self._cost,
            )
        ]

    def _error(self, error: Any) -> None:
        error = as_dict(error)
        data = as_dict(error.get("data"))
        status = data.get("statusCode") if isinstance(data.get("statusCode"), int) else None
        name = str(error.get("name") or "")
        message = str(data.get("message") or "")
        if isinstance(data.get("ref"), str):
            message += f" (ref {data['ref']})"  # the log line with this reference says more
        if self.error is None:
            self.error = classify(message, status, name)
        self.finished = True

    def _add_tokens(self, tokens: Any) -> None:
        if not isinstance(tokens, dict):
            return
        cache = as_dict(tokens.get("cache"))
        for key, value in (*tokens.items(), *(("cache_" + k, v) for k, v in cache.items())):
            if (count := as_count(value)) is not None:
                self._tokens[key] = self._tokens.get(key, 0) + count

    def usage(self) -> Usage:
        # OpenCode counts input without the cached tokens, and reports those apart.
        tokens = self._tokens
        return Usage(
            input_tokens=tokens.get("input", 0),
            output_tokens=tokens.get("output", 0),
            cache_read_tokens=tokens.get("cache_read", 0),
            cache_write_tokens=tokens.get("cache_write", 0),
            reasoning_tokens=tokens.get("reasoning", 0),
            total_tokens=tokens.get("total", 0),
        )


# --- the runner ---------------------------------------------------------------------------


class OpencodeRunner(CliRunner):
    name = "opencode"
    option_names = frozenset({"agent", "variant", "extra_args"})
    display_name = "OpenCode"
    binary = "opencode"
    aliases = ("opencode-ai", "open-code", "open_code")
    install_hint = "npm install -g opencode-ai"
    extra_args_at = 2  # after `run`
    min_version = "1.0.0"
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,
        thinking=True,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        images=True,
        usage=True,
        cost=True,
        model_discovery=True,
        prompt_via_stdin=True,
    )
    # No default model: opencode's configured one (`model` in its config) applies.
    # What a fork of opencode (kilo) names differently: the variable of the inline config,
    # its config file, the agent a system prompt goes to when none is named, the read-only
    # rules, and the ACP modes that are read-only.
    config_variable: ClassVar[str] = "OPENCODE_CONFIG_CONTENT"
    config_file: ClassVar[str] = "opencode.json"
    default_agent: ClassVar[str] = "build"
    read_only_permission: ClassVar[Mapping[str, str]] = READ_ONLY_PERMISSION
    read_only_modes: ClassVar[tuple[str, ...]] = (AGENT, "plan")
    # Caps the output tokens of every model call of the run (the model's own limit, if lower, wins).
    output_limit_variable: ClassVar[str] = "OPENCODE_EXPERIMENTAL_OUTPUT_TOKEN_MAX"
    honoured_parameters: ClassVar[dict[str, str]] = {
        "temperature": "config agent.<agent>.temperature (for models whose entry allows temperature)",
        "top_p": "config agent.<agent>.top_p",
        "max_tokens": "env OPENCODE_EXPERIMENTAL_OUTPUT_TOKEN_MAX",
    }

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        prompt = prompt_for(request)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "run", "--format=json", "--thinking", "--title=", "--print-logs", "--log-level=WARN"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if session := self.session_to_resume(request):
            argv.append(f"--session={session}")
        if variant := request.options.get("variant"):
            argv.append(f"--variant={variant}")
        agent = request.options.get("agent") or (None if request.allow_tools else AGENT)
        env: dict[str, str] = {}
        temp_files: list[str] = []
        overrides: dict[str, Any] = {}
        if system := request.system_prompt():
            agent = agent or self.default_agent  # the prompt belongs to an agent: opencode's default one
            path = _write_temp(system)
            temp_files.append(path)
            overrides.setdefault("agent", {}).setdefault(agent, {})["prompt"] = "{file:" + path + "}"
        sampling = {name: value for name in ("temperature", "top_p") if (value := getattr(request, name)) is not None}
        if sampling:
            agent = agent or self.default_agent  # sampling is an agent's setting: opencode's default one
            overrides.setdefault("agent", {}).setdefault(agent, {}).update(sampling)
        if request.max_tokens is not None:
            env[self.output_limit_variable] = str(request.max_tokens)
        # Each image is a file attached to the message, from a directory of the run's own;
        # the tool sends it as image data when its model takes images (the model's
        # `modalities` in its config or catalogue).
        turns = new_turns(request.messages) if request.session_id else request.conversation()
        image_folder = None
        if images := [image for message in turns for image in message.images]:
            image_folder, paths = private_image_directory(images, self.name)
            temp_files.append(image_folder)
            argv += [f"--file={path}" for path in paths]
        if not request.allow_tools:
            entry = overrides.setdefault("agent", {}).setdefault(str(agent), {})
            entry["permission"] = dict(self.read_only_permission)
            if image_folder is not None:  # kilo asks for this before it reads an attached file
                entry["permission"]["external_directory"] = {"*": "deny", os.path.join(image_folder, "*"): "allow"}
            if agent == AGENT:
                entry["mode"] = "primary"
        if agent:
            argv.append(f"--agent={agent}")
        if overrides:
            try:
                env[self.config_variable] = run_config(
                    {**os.environ, **self.env}, overrides, self.config_variable, self.config_file
                )
            except UnsupportedFeature as exc:
                for path in temp_files:
                    process.remove_path(path)
                exc.runner = self.name
                raise
        argv += [str(arg) for arg in request.options.get("extra_args", [])]
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env=env,
            # A one-shot run should not update the binary under the user.
            env_defaults={"OPENCODE_DISABLE_AUTOUPDATE": "1"},
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection

        invocation = self.prepared_invocation(settings.request([]))
        # `opencode acp` takes no model or agent flag: the run's config (permissions, system
        # prompt, llmrun's read-only agent) comes through the environment as for a one-shot
        # run, the agent is chosen as the session's mode and the model as its model option.
        invocation.argv = [invocation.argv[0], "acp"]
        profile = AcpProfile(read_only_modes=self.read_only_modes, system_prompt_at_start=True)
        return acp_connection(self, invocation, settings, resume, profile, set_model=True)

    def new_parser(self, request: ChatRequest) -> Parser:
        return OpencodeParser(model=self.model_for(request))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        try:
            async with aclosing(super().stream(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except RunnerTimeout as exc:
            raise self._explained_timeout(exc) from None
        except RunnerError as exc:
            better = self._retyped(exc)
            if better is exc:
                raise
            raise better from None

    def _explained_timeout(self, error: RunnerTimeout) -> RunnerTimeout:
        """The timeout, with what opencode kept retrying and what to configure."""
        failed = last_stream_error(error.stderr)
        if failed is not None:
            provider, model, reason = failed
            error.message += f"; opencode was still retrying {provider}/{model} after: {reason}"
            if provider == "opencode":
                error.message += " (a hosted model of opencode's own, its fallback when no provider is configured)"
        else:
            error.message += (
                "; opencode said nothing meanwhile (it prints a part only once it is complete, "
                "and retries a model it cannot reach without a word)"
            )
        error.hint = error.hint or LOGIN_HINT
        return error

    def _retyped(self, error: RunnerError) -> RunnerError:
        """An untyped `UnknownError`, typed from the log line of its reference."""
        if type(error) is not RunnerError:
            return error
        match = re.search(r"\(ref (\S+)\)", error.message)
        logged = logged_failure(error.stderr, match.group(1)) if match else None
        if logged is None:
            return error
        typed = classify(logged)
        if type(typed) is RunnerError:
            typed = RunnerError(f"{error.message}: {logged}")
        return typed.with_process(runner=self.name, exit_code=error.process_exit_code, stderr=error.stderr)

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        text = strip_ansi(stderr)
        last = _last_line(text)
        if re.search(r"Error: Session not found", text):
            return SessionNotFound(last)
        if re.search(r"Unknown argument|Invalid values|Not enough arguments", text):
            return ProcessFailed(
                f"this opencode does not accept llmrun's flags: {last}", hint=f"upgrade with `{self.install_hint}`"
            )
        return super().error_for_exit(returncode, text)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        """Stored credentials and provider keys opencode sees; only a probe shows that they work."""
        result = await process.run_command([binary, "auth", "list"], env=self.env, env_remove=self.env_remove)
        text = strip_ansi(result.stdout + result.stderr)
        stored = _count(r"(\d+)\s+credentials?", text)
        from_env = _count(r"(\d+)\s+environment variables?", text)
        unverified = "(configured, not verified: `llmrun health --probe` tries it)"
        counts = ((stored, "stored credential(s)"), (from_env, "provider key(s) in the environment"))
        found = [f"{n} {what}" for n, what in counts if n]
        if found:
            return True, f"{', '.join(found)} {unverified}"
        inline = _inline_config({**os.environ, **self.env}, self.config_variable)
        if isinstance(inline, dict) and inline.get("provider"):
            return True, f"a provider in {self.config_variable} {unverified}"
        return None, "no stored credentials or provider keys; opencode falls back to its hosted models"

    def login_hint(self) -> str | None:
        return LOGIN_HINT

    async def discover_models(self, binary: str) -> list[str]:
        result = await process.run_command([binary, "models"], env=self.env, env_remove=self.env_remove)
        if result.returncode != 0:
            return []
        lines = (line.strip() for line in strip_ansi(result.stdout).splitlines())
        return [line for line in lines if re.fullmatch(r"[\w.@-]+/\S+", line)]


# --- configuration of a run ---------------------------------------------------------------


def run_config(
    env: Mapping[str, str],
    overrides: dict[str, Any],
    variable: str = "OPENCODE_CONFIG_CONTENT",
    config_file: str = "opencode.json",
) -> str:
    """The inline config (`variable`) for a run: the user's own with llmrun's settings over it."""
    inline = _inline_config(env, variable)
    if inline is None:
        raise UnsupportedFeature(
            f"{variable} is not a plain JSON object, so llmrun cannot add the run's settings to it",
            hint=f"write it as plain JSON, or move it into {config_file}",
        )
    merged = _merge(inline, overrides)
    for name, entry in overrides.get("agent", {}).items():
        if "permission" in entry:
            # Replaced, not merged: the order of the rules decides, and llmrun's come as given.
            merged["agent"][name]["permission"] = entry["permission"]
    return json.dumps(merged)


def _inline_config(env: Mapping[str, str], variable: str = "OPENCODE_CONFIG_CONTENT") -> dict[str, Any] | None:
    """The user's inline config ({} when unset); None when it is not a JSON object."""
    text = env.get(variable, "")
    if not text.strip():
        return {}
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


def _count(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def _write_temp(text: str) -> str:
    return private.write_file(text, prefix="system-", suffix=".md")
