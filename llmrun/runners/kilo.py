"""Kilo Code CLI (`kilo`, npm `@kilocode/cli`), in `kilo run --format json` mode.

Kilo is a fork of OpenCode: `kilo run --format json` prints opencode's JSON lines (whole
text, reasoning and tool parts, `step_finish` with usage and cost, `error` events) and
`kilo acp` is its Agent Client Protocol server, so this runner is OpencodeRunner with
Kilo's names: the inline config goes in KILO_CONFIG_CONTENT (Kilo does not read
OPENCODE_CONFIG_CONTENT), the default agent is `code`, and the environment switches are
KILO_*. Tested with kilo 7.7.7 (7.8.1 has no Linux package on npm).

The prompt goes over stdin with no message argument: `kilo run` then reads stdin to its
end and sends it as the whole message. (A message argument would reach the model wrapped
in double quotes, and a piped stdin would be appended to it.) Kilo adds an
`<environment_details>` part (time, working directory) to every user message.

Locked down as opencode is: unless the request allows tools, the run uses llmrun's own
agent (`llmrun`) whose rules, in KILO_CONFIG_CONTENT, deny everything but reading in the
working directory; Kilo's own `plan` agent is not read-only (it keeps bash, edit and
write), so a warm session chooses the `llmrun` mode alone. No file of the user's is
written. KILO_NO_DAEMON=1 is always set: without it a run goes through a running `kilo
daemon` of the user's, which has its own configuration, not this run's. Telemetry, update
checks, sharing and session upload are off unless the user's environment says otherwise
(KILO_TELEMETRY_LEVEL=off, KILO_DISABLE_AUTOUPDATE, KILO_DISABLE_SHARE,
KILO_DISABLE_SESSION_INGEST). What cannot be locked down: the user's and the project's
Kilo config still load (MCP servers, plugins, instructions).

Failures: Kilo retries 429, 5xx and an unreachable server with growing back-off and, left
alone, no end; llmrun sets KILO_SESSION_RETRY_LIMIT=2 (unless the environment sets it),
after which Kilo gives up with an `error` event typed by its HTTP status. With no
provider configured Kilo uses its own gateway (`kilo/...` models), which offline it
retries without a word; llmrun's stall and hard timeouts end such a run and say what to
configure. Start-up is slow (10-45 s on a busy machine), far below the stall timeout.

Health: `kilo --version`, and `kilo auth list` for stored credentials;
`available_models()` asks `kilo models`.

Sampling as for opencode: `temperature` and `top_p` on the run's agent in
KILO_CONFIG_CONTENT, `max_tokens` through KILO_EXPERIMENTAL_OUTPUT_TOKEN_MAX (Kilo sends no
limit to a gpt-5 model of an OpenAI-compatible provider); `seed` and the penalties are
reported as ignored.

Options (`ChatRequest.options`): `agent`, `variant` and `extra_args`, as for opencode.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import ClassVar

from .. import process
from ..errors import ProcessFailed, RunnerError, RunnerTimeout, ServiceUnavailable
from ..process import strip_ansi
from ..types import ChatChunk, ChatRequest
from . import opencode
from .base import _last_line
from .opencode import AGENT, READ_ONLY_PERMISSION, OpencodeRunner, last_stream_error

LOGIN_HINT = (
    "configure a provider: `kilo auth login`, a provider in kilo.json, or one in KILO_CONFIG_CONTENT; "
    "then name its model as provider/model"
)
GATEWAY = "Kilo's own gateway, its fallback when no provider is configured"
MODELS_HINT = "`kilo models` lists the models kilo knows, as provider/model"
# The opencode wording of the hints that the shared parser gives, in Kilo's words.
KILO_HINTS = {opencode.LOGIN_HINT: LOGIN_HINT, opencode.MODELS_HINT: MODELS_HINT}

# Kilo's tools beyond opencode's, named so that a user's rule for one cannot come after the
# catch-all deny (the read-only tools stay allowed).
KILO_TOOLS = ("write", "background_process", "schedule_wakeup", "cancel_wakeup", "board_post", "board_read")
READ_ONLY = {**READ_ONLY_PERMISSION, **dict.fromkeys(KILO_TOOLS, "deny"), "kilo_local_recall": "deny"}

RUN_ENV = {
    # A running `kilo daemon` would otherwise answer, with its configuration instead of the run's.
    "KILO_NO_DAEMON": "1",
}
RUN_ENV_DEFAULTS = {
    "KILO_DISABLE_AUTOUPDATE": "1",
    "KILO_TELEMETRY_LEVEL": "off",
    "KILO_DISABLE_SHARE": "1",
    "KILO_DISABLE_SESSION_INGEST": "1",
    # Kilo retries 429/5xx without end otherwise; two retries, then an `error` event.
    "KILO_SESSION_RETRY_LIMIT": "2",
}


class KiloRunner(OpencodeRunner):
    name = "kilo"
    display_name = "Kilo Code"
    binary = "kilo"
    aliases = ("kilocode", "kilo-code", "kilo_code")
    install_hint = "npm install -g @kilocode/cli"
    min_version = "7.7.7"
    cannot_lock_down = "the user's and the project's Kilo config still load (MCP servers, plugins, instructions)"
    config_variable: ClassVar[str] = "KILO_CONFIG_CONTENT"
    config_file: ClassVar[str] = "kilo.json"
    default_agent: ClassVar[str] = "code"
    read_only_permission = READ_ONLY
    read_only_modes: ClassVar[tuple[str, ...]] = (AGENT,)
    output_limit_variable: ClassVar[str] = "KILO_EXPERIMENTAL_OUTPUT_TOKEN_MAX"
    honoured_parameters: ClassVar[dict[str, str]] = {
        **OpencodeRunner.honoured_parameters,
        "max_tokens": "env KILO_EXPERIMENTAL_OUTPUT_TOKEN_MAX (none for OpenAI-compatible gpt-5)",
    }

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        invocation = super().build_invocation(request, binary)
        invocation.env = {**invocation.env, **RUN_ENV}
        invocation.env_defaults = dict(RUN_ENV_DEFAULTS)
        return invocation

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        try:
            async with aclosing(super().stream(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except RunnerError as exc:
            exc.hint = KILO_HINTS.get(exc.hint or "", exc.hint)
            failed = last_stream_error(exc.stderr)
            if isinstance(exc, ServiceUnavailable) and failed is not None and failed[0] == "kilo":
                exc.message += f" ({GATEWAY})"
                exc.hint = exc.hint or LOGIN_HINT
            raise

    def _explained_timeout(self, error: RunnerTimeout) -> RunnerTimeout:
        """The timeout, with what kilo kept retrying and what to configure."""
        failed = last_stream_error(error.stderr)
        if failed is not None:
            provider, model, reason = failed
            error.message += f"; kilo was still retrying {provider}/{model} after: {reason}"
            if provider == "kilo":
                error.message += f" ({GATEWAY})"
        else:
            error.message += (
                "; kilo said nothing meanwhile (it prints a part only once it is complete, "
                "and retries a model it cannot reach without a word)"
            )
        error.hint = error.hint or LOGIN_HINT
        return error

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        text = strip_ansi(stderr)
        last = _last_line(text)
        if "Unknown argument" in text or "Invalid values" in text:
            return ProcessFailed(
                f"this kilo does not accept llmrun's flags: {last}", hint=f"upgrade with `{self.install_hint}`"
            )
        return super().error_for_exit(returncode, stderr)  # "Session not found" is opencode's text too

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        authenticated, message = await super().check_auth(binary)
        if authenticated is None:
            message = "no stored credentials or provider keys; kilo falls back to its own gateway, which needs a login"
        return authenticated, message

    def login_hint(self) -> str | None:
        return LOGIN_HINT
