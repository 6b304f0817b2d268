"""Continue's CLI (`cn`, npm `@continuedev/cli`), one `cn -p` per request.

How it is driven: `cn -p` prints the final answer as plain text once the whole turn
(tool calls included) is done, so the answer arrives in one piece, not token by token
(`--format json` only wraps that same answer). A failure prints
`{"status":"error","message":"401 …"}` on stderr and exits 1; the message starts with the
HTTP status of the model's API.

The prompt goes over stdin (with no prompt argument cn reads stdin as the prompt). cn reads
a piped stdin without waiting for more (a non-blocking read), so it gets only what the pipe
already holds: a prompt over 60 KiB goes in a private file named by `--prompt` instead,
which cn also adds to its system prompt as a rule (such a prompt is sent twice). An agent
file (`--agent`) would carry it once, but cn then allows every tool whatever the flags say.
The system prompt goes in a private file named by `--rule` (cn puts a rule from the command
line twice in its system prompt).

Model and config: cn takes its models from a config file: `options={"config": PATH}` (or a
hub slug) is passed as `--config`; otherwise cn uses `~/.continue/config.yaml`
(`$CONTINUE_GLOBAL_DIR/config.yaml`). A model named by the request (`model=` or the runner's
default model) is picked by its `name` (or `model`) among that config's chat models: llmrun
writes a private copy of the config holding that chat model only and passes it as
`--config`, so cn's own remembered model choice is neither used nor changed. Relative paths
inside the config resolve against the private copy's directory then, so use absolute ones.
Reading the config needs PyYAML (`pip install 'llmrun-cli[continue]'`).

Sampling: the request's `temperature`, `max_tokens`, `top_p`, `frequency_penalty` and
`presence_penalty` go into that private copy as the chat models' `defaultCompletionOptions`
(cn sends those five), and `seed` as `requestOptions.extraBodyProperties` (added to the
body as it is, for APIs that take it); a `uses:` block of Continue's hub gets them as its
`override`. The copy is written whenever a request sets one, with or without a model.

Locked down by default: `--exclude=*` takes every tool away from the model (built-in and
MCP alike), since cn runs its tools without asking in `-p` mode, even with `--readonly`
(that plan mode still allows its Bash tool). With `request.allow_tools`, `--auto` (all
tools, unasked). Telemetry off (CONTINUE_CLI_ENABLE_TELEMETRY=0,
CONTINUE_METRICS_ENABLED=0); cn checks for updates only in its interactive mode. What
cannot be locked down: cn loads a `.env` file and `.continue/rules/` from the working
directory, and saves every run as a session in `~/.continue/sessions/`.

Hazards: cn retries a 429 for ever and silently (its code treats 502-504 and network errors
alike), printing nothing meanwhile: llmrun's stall timeout (240 s by default; cn prints its
answer only at the end, so it bounds the whole turn) ends such a run as a RunnerTimeout.
cn exits 0 on SIGTERM.

Sessions: each run's session id is chosen by llmrun (cn's CONTINUE_CLI_TEST_SESSION_ID, the
variable its own `cn ls` uses to pick a session), and the final chunk carries it, with the
token counts and cost cn saved in that session's file; that file, written once the answer
is printed, also tells a complete answer from a cut one. cn cannot continue a session
under the same id, so `runner.session()` sends the history again with each turn; a request
that names a session id forks it (`--fork=ID`: that session's history and only the new
turns, saved as a new session whose id, usage and cost llmrun does not learn).

Health: `cn --version`; no login to check (cn 1.5 has no hub login; the config holds the keys).

Options (`ChatRequest.options`): `config`, and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, ClassVar

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
from ..types import Capabilities, ChatChunk, ChatRequest, Usage
from .base import CliRunner, Parser, as_count, as_dict, as_number, as_text, json_object

SESSION_VARIABLE = "CONTINUE_CLI_TEST_SESSION_ID"
CONFIG_HINT = "write ~/.continue/config.yaml naming a model and its key, or pass options={'config': PATH}"
STDIN_LIMIT = 60 * 1024
"""Prompts up to this size go over stdin: they fit in a pipe's buffer (64 KiB) at once."""
_UNFINISHED_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?)?\Z")
_STATUS = re.compile(r"^(\d{3})\b")
_CONTEXT = re.compile(r"context length|maximum context|context_length_exceeded|too many tokens", re.I)
# The request's sampling parameters that cn sends from a model's defaultCompletionOptions.
COMPLETION_OPTIONS = {
    "temperature": "temperature",
    "max_tokens": "maxTokens",
    "top_p": "topP",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
}
_UNREACHABLE = re.compile(r"ECONNREFUSED|ENOTFOUND|ETIMEDOUT|ECONNRESET|fetch failed|Connection error", re.I)


def continue_home(env: dict[str, str] | None = None) -> Path:
    """cn's own directory: CONTINUE_GLOBAL_DIR, else ~/.continue."""
    configured = (env or {}).get("CONTINUE_GLOBAL_DIR") or os.environ.get("CONTINUE_GLOBAL_DIR")
    return Path(configured) if configured else Path.home() / ".continue"


def error_message(stderr: str) -> str:
    """The message of cn's last `{"status":"error","message":…}` line on stderr."""
    for line in reversed(stderr.strip().splitlines()):
        event = json_object(line.strip())
        if event is not None and event.get("status") == "error":
            return as_text(event.get("message")) or ""
    return ""


def classify(message: str) -> RunnerError:
    """The typed error for cn's message, the HTTP status it starts with deciding first."""
    match = _STATUS.match(message)
    status = int(match.group(1)) if match else None
    if status in (401, 403):
        return AuthenticationError(message, hint="check the apiKey of the model in cn's config")
    if "interceptors did not return" in message:  # no config: cn asked Continue's hub for one, in vain
        return AuthenticationError(message, hint=CONFIG_HINT)
    if status == 429:
        return RateLimitError(message)
    if status == 404 and "model" in message.lower():
        return ModelNotFound(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if (status is not None and status >= 500) or _UNREACHABLE.search(message):
        return ServiceUnavailable(message)
    return RunnerError(message)


def read_session(path: Path) -> dict[str, Any]:
    """A session file cn saved; empty when there is none (yet)."""
    try:
        saved = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return as_dict(saved)


def session_usage(saved: dict[str, Any]) -> Usage:
    """The token counts and cost cn saved in a session."""
    usage = as_dict(saved.get("usage"))
    details = as_dict(usage.get("promptTokensDetails"))
    cached = as_count(details.get("cachedTokens")) or 0
    return Usage(
        input_tokens=max(0, (as_count(usage.get("promptTokens")) or 0) - cached),
        output_tokens=as_count(usage.get("completionTokens")) or 0,
        cache_read_tokens=cached,
        cache_write_tokens=as_count(details.get("cacheWriteTokens")) or 0,
    )


def session_cost(saved: dict[str, Any]) -> float | None:
    """The cost cn saved in a session; None when it priced nothing (a model it has no prices for)."""
    return as_number(as_dict(saved.get("usage")).get("totalCost")) or None


def chat_model_config(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The config with `model` as its only chat model (other roles' models stay)."""
    models = [m for m in config.get("models") or [] if isinstance(m, dict)]
    chosen = [m for m in models if is_chat_model(m) and model in (m.get("name"), m.get("model"))]
    if not chosen:
        names = ", ".join(str(m.get("name") or m.get("model")) for m in models if is_chat_model(m)) or "none"
        raise ModelNotFound(f"cn's config has no chat model named {model!r} (chat models: {names})")
    return {**config, "models": [chosen[0], *(m for m in models if not is_chat_model(m))]}


def with_sampling(config: dict[str, Any], completion: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The config with the request's sampling on every chat model: `completion` merged into
    its defaultCompletionOptions, `body` into the fields its requests carry besides."""

    def tuned(model: dict[str, Any]) -> dict[str, Any]:
        options = {**as_dict(model.get("defaultCompletionOptions")), **completion}
        changed = {**model, "defaultCompletionOptions": options}
        if body:
            request_options = as_dict(model.get("requestOptions"))
            extra = {**as_dict(request_options.get("extraBodyProperties")), **body}
            changed["requestOptions"] = {**request_options, "extraBodyProperties": extra}
        return changed

    def tuned_entry(model: Any) -> Any:
        if not isinstance(model, dict) or not is_chat_model(model):
            return model
        if "uses" in model:  # a block from Continue's hub: changed through its `override`
            return {**model, "override": tuned(as_dict(model.get("override")))}
        return tuned(model)

    return {**config, "models": [tuned_entry(m) for m in config.get("models") or []]}


def is_chat_model(model: dict[str, Any]) -> bool:
    """A model cn may chat with: one with the chat role, or with no roles given."""
    roles = model.get("roles")
    return roles is None or (isinstance(roles, list) and "chat" in roles)


class ContinueParser(Parser):
    """cn's answer, passed on as it comes; the final chunk once cn has exited."""

    def __init__(self, *, model: str | None, session_file: Path | None, session_id: str | None) -> None:
        super().__init__()
        self.model = model
        self.session_file = session_file
        self.session_id = session_id
        self._held = ""  # a trailing newline: cn's own, unless more text follows
        self._escape = ""  # a terminal escape cut off at the end of a piece
        self._answered = False

    def feed(self, line: str) -> list[ChatChunk]:
        text = self._escape + line
        self._escape = ""
        last = text.rfind("\x1b")
        if last >= 0 and _UNFINISHED_ESCAPE.match(text, last) and len(text) - last < 256:
            text, self._escape = text[:last], text[last:]  # the rest of it comes with the next piece
        text = self._held + process.strip_ansi(text)
        self._held = "\n" if text.endswith("\n") else ""
        text = text[:-1] if self._held else text
        self._answered = self._answered or bool(text.strip())
        return [ChatChunk(delta=text)] if text else []

    def close(self) -> list[ChatChunk]:
        if message := error_message(self.stderr):
            self.error = classify(message)
        saved = read_session(self.session_file) if self.session_file else {}
        # cn saves the session once the answer is printed: without it the answer may be cut
        # (a fork is saved under an id of cn's choosing, so that check is left out for one).
        # cn prints nothing when a turn ends on a call of a tool it does not have.
        self.finished = self._answered and (bool(saved) or self.session_file is None)
        return [
            ChatChunk(
                finish_reason="stop",
                usage=session_usage(saved),
                cost_usd=session_cost(saved),
                session_id=self.session_id,
                model=self.model,
            )
        ]


class ContinueRunner(CliRunner):
    name = "continue"
    option_names = frozenset({"config", "extra_args"})
    display_name = "Continue CLI"
    binary = "cn"
    aliases = ("cn", "continue-cli", "continue_cli")
    framing = "text"
    install_hint = "npm install -g @continuedev/cli"
    min_version = "1.5"
    default_stall_timeout = 240.0  # cn retries a 429 for ever, silently
    needs_finished_output = True
    cannot_lock_down = "loads .env and .continue/rules/ from the working directory; saves each run as a cn session"
    # Test switches of cn that would make it ignore its prompt or session.
    env_remove = ("CONTINUE_CLI_TEST", "NODE_ENV", "VITEST", "JEST_WORKER_ID", "FORCE_NO_TTY", SESSION_VARIABLE)
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,
        thinking=False,
        agent_tools=True,
        sessions=False,
        system_prompt=True,
        images=False,
        json_schema=False,
        usage=True,
        model_discovery=True,
    )
    # No default model: the config's first chat model (or cn's remembered choice) answers.
    honoured_parameters: ClassVar[dict[str, str]] = {
        **{name: f"config.yaml defaultCompletionOptions.{key}" for name, key in COMPLETION_OPTIONS.items()},
        "seed": "config.yaml requestOptions.extraBodyProperties.seed (for APIs that take it)",
    }
    _next_session: str | None = None

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        forked = self.session_to_resume(request)
        turns = new_turns(request.messages) if forked else request.conversation()
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "-p", "--auto" if request.allow_tools else "--exclude=*"]
        temp_files: list[str] = []
        if config := self._config_for(request, temp_files):
            argv.append(f"--config={config}")
        if forked:
            argv.append(f"--fork={forked}")
        if system := request.system_prompt():
            temp_files.append(private.write_file(system, prefix="cn-rule-", suffix=".md"))
            argv.append(f"--rule={temp_files[-1]}")
        prompt = flatten_conversation(turns).encode()
        stdin: bytes | None = prompt
        if len(prompt) > STDIN_LIMIT:
            # More than a pipe holds: cn would read only part of it (see above).
            temp_files.append(private.write_file(prompt, prefix="cn-prompt-", suffix=".md"))
            argv += [f"--prompt={temp_files[-1]}", " "]  # cn wants a prompt argument besides
            stdin = None
        argv += [str(arg) for arg in options.get("extra_args", [])]
        session = self._next_session or str(uuid.uuid4())
        self._next_session = None
        return process.Invocation(
            argv=argv,
            stdin=stdin,
            env={"CONTINUE_CLI_ENABLE_TELEMETRY": "0", "CONTINUE_METRICS_ENABLED": "0", SESSION_VARIABLE: session},
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def check_request(self, request: ChatRequest) -> None:
        super().check_request(request)
        # cn itself would start afresh without a word.
        if (forked := self.session_to_resume(request)) and not (self._home() / "sessions" / f"{forked}.json").is_file():
            raise SessionNotFound(f"cn has no session {forked!r}", runner=self.name)

    def _home(self) -> Path:
        return continue_home(self.env)

    def _config_for(self, request: ChatRequest, temp_files: list[str]) -> str | None:
        """What `--config` names: the request's config, or a private copy holding its model
        and sampling parameters."""
        config = request.options.get("config")
        model = self.model_for(request)
        completion = {
            key: value for name, key in COMPLETION_OPTIONS.items() if (value := getattr(request, name)) is not None
        }
        body = {"seed": request.seed} if request.seed is not None else {}
        if not (model or completion or body):
            return str(config) if config else None
        path = Path(str(config)).expanduser() if config else self._home() / "config.yaml"
        purpose = "pick a model" if model else "set the sampling parameters"
        chosen = self._read_config(path, purpose)
        if model:
            chosen = chat_model_config(chosen, model)
        if completion or body:
            chosen = with_sampling(chosen, completion, body)
        # JSON is YAML: cn reads it as it reads its own config.yaml.
        temp_files.append(private.write_file(json.dumps(chosen), prefix="cn-config-", suffix=".yaml"))
        return temp_files[-1]

    def _read_config(self, path: Path, purpose: str = "pick a model") -> dict[str, Any]:
        try:
            import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML: only to rewrite the config
        except ImportError:
            raise UnsupportedFeature(
                f"llmrun needs PyYAML to read cn's config to {purpose}",
                runner=self.name,
                hint="pip install 'llmrun-cli[continue]', or set it in the config you pass as options['config']",
            ) from None
        try:
            loaded = yaml.safe_load(path.read_text("utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise UnsupportedFeature(
                f"cannot read cn's config {str(path)!r} to {purpose}: {exc}", runner=self.name
            ) from None
        return loaded if isinstance(loaded, dict) else {}

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        if message := error_message(stderr):
            return classify(message)
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        # cn has no login of its own (1.5): the keys are in its config, unread until a run.
        path = self._home() / "config.yaml"
        if path.is_file():
            return None, f"models from {path}"
        return None, f"no {path}: cn asks Continue's hub for a config unless given one; {CONFIG_HINT}"

    async def discover_models(self, binary: str) -> list[str]:
        """The names of the chat models in cn's config.yaml."""
        try:
            config = self._read_config(self._home() / "config.yaml")
        except UnsupportedFeature:
            return []
        models = [m for m in config.get("models") or [] if isinstance(m, dict) and is_chat_model(m)]
        return [str(m.get("name") or m.get("model")) for m in models if m.get("name") or m.get("model")]

    def new_parser(self, request: ChatRequest) -> Parser:
        if request.session_id:  # a fork: cn picks the new session's id itself
            return ContinueParser(model=self.model_for(request), session_file=None, session_id=None)
        # The run's session id, for the command line built right after this (no await between).
        self._next_session = str(uuid.uuid4())
        return ContinueParser(
            model=self.model_for(request),
            session_file=self._home() / "sessions" / f"{self._next_session}.json",
            session_id=self._next_session,
        )
