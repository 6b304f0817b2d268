"""gptme (`gptme`, PyPI `gptme`), one `gptme-util llm generate` per request.

gptme is an agent: its chat command (`gptme -n PROMPT`) gives the model a shell, Python,
file edits and more, and in non-interactive mode always adds a `complete` tool whose hook
answers every reply without a tool call with "No tool call detected … use the `complete`
tool" and asks again: a plain question costs three requests and prints the answer three
times, and a model that keeps calling tools never stops. `--tools none` does not remove
that loop, and a piped prompt reaches the model wrapped in a ```stdin code block (read in
4 KiB pieces within one second, which can cut a large prompt or split a character). So
llmrun uses gptme's own direct generation instead: `gptme-util llm generate
--output-format=json`, which sends one request through gptme's providers and
configuration (keys, default model, base URLs) with no tools and no agent loop at all.
That is also the lock-down: the model gets no tools, and there is nothing to approve.
gptme's start-up still runs as configured: it reads a `.env` in the working directory,
loads its plugins and may start the MCP servers of its configuration (their tools are not
offered either); llmrun stops the whole process group when the run ends.

gptme-util ships with gptme (`gptme llm …` only forwards to it); llmrun runs the one next
to the resolved `gptme`, or `gptme llm generate` when there is none beside it.

The prompt goes over stdin (read whole when no prompt argument is given; its surrounding
whitespace is stripped), the system prompt with `--system` (gptme's default is "You are a
helpful assistant."; a system prompt over 16 KiB goes in front of the prompt instead, as
argv is bounded and visible in `ps`), the model with `--model` (gptme's `provider/model`
form, e.g. `openai/gpt-5`; without one gptme's configured default), `temperature` and
`max_tokens` with their flags (`--temperature`, `--max-tokens`; gptme leaves temperature out
for reasoning models and fixes it at 1 for GPT-5 and Moonshot's; `top_p` and the rest have
no flag). gptme prints one JSON object when the answer is complete:
`{"content", "model", "usage": {"input_tokens", "output_tokens", "cache_read_tokens",
"reasoning_tokens"}}`; reasoning, when the provider returns it, leads `content` as
`<think>…</think>`. So the answer arrives whole, not token by token (hence a stall
timeout of 15 minutes by default), and a clean exit without that object means the output
was cut short. (`--stream` would print tokens, but as bare text with no usage and no end
to tell a cut-short answer by.)

Errors: exit 1 with `Error generating response: <the provider's error>` on stderr
(`Error code: 401 - {…}`, 429, 5xx, `model_not_found`, `context_length_exceeded`,
`Connection error.`); without a key a `KeyError` traceback ("Environment variable
OPENAI_API_KEY not set…"), exit 1; with no provider at all `No provider configured`,
exit 2. gptme retries failed requests itself with back-off (11 attempts, about five
minutes, by default): llmrun sets `GPTME_LLM_MAX_RETRIES=3` unless the environment sets
it (`options={"max_retries": N}` per request). Telemetry stays off
(`GPTME_TELEMETRY_ENABLED=false`), and the update check too.

Sessions: gptme keeps conversations only in its agent mode, so this runner keeps them
the way the ollama runner does: the messages of each conversation, replayed as a
transcript with the next turn, under ids made by llmrun that live as long as the runner.

`allow_tools` changes nothing: llmrun does not drive gptme's agent. No warm mode either:
gptme's Agent Client Protocol server (`gptme-acp`) needs the `acp` extra (`pip install
'gptme[acp]'`) and runs that agent, tools and all.

Health: `gptme --version`; `gptme --version-json` lists the providers gptme found keys
for (none: not logged in).

Options (`ChatRequest.options`): `max_retries`, and `extra_args` (a list appended to the
command; the settings' `extra_args` go right after `generate`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import ClassVar

from .. import process
from ..errors import (
    AuthenticationError,
    BinaryNotFound,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
)
from ..prompting import flatten_conversation, with_system_prompt
from ..types import Capabilities, ChatChunk, ChatRequest, Usage
from .base import HistoryKeepingRunner, Parser, _last_line, as_count, as_dict, as_text, json_object

SYSTEM_PROMPT_ARGV_LIMIT = 16 * 1024
DEFAULT_MAX_RETRIES = 3
LOGIN_HINT = (
    "set a provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENROUTER_API_KEY, …), "
    "or run `gptme-auth` or `gptme-onboard`"
)

_THINK = re.compile(r"\A<think>\n?(?P<thinking>.*?)\n?</think>\n?", re.S)
# Where gptme says what failed: its own line for a failed request, click's usage error
# (no provider configured), or the last line of a traceback (no key for the provider).
_FAILURE = re.compile(r"^(?:Error generating response|Error|KeyError): (?P<message>.+)$", re.M)
_STATUS = re.compile(r"Error code: (\d{3})\b")
_NO_KEY = re.compile(r"No provider configured|Environment variable \w+ not set|API key", re.I)
_MODEL = re.compile(r"model_not_found|does not exist|Unknown model|not a valid model", re.I)
_CONTEXT = re.compile(r"context_length_exceeded|context window|maximum context|prompt is too long", re.I)
_UNREACHABLE = re.compile(r"Connection error|connection refused|timed out|Temporary failure", re.I)


class GptmeParser(Parser):
    """The one JSON object `gptme-util llm generate --output-format=json` prints."""

    def __init__(self, *, model: str | None = None) -> None:
        super().__init__()
        self.model = model
        self._final: ChatChunk | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        event = json_object(line)
        if event is None or self._final is not None or not isinstance(event.get("content"), str):
            return []
        content: str = event["content"]
        chunks = []
        if match := _THINK.match(content):
            content = content[match.end() :]
            if thinking := match.group("thinking"):
                chunks.append(ChatChunk(thinking=thinking))
        if content:
            chunks.append(ChatChunk(delta=content))
        usage = as_dict(event.get("usage"))
        self._final = ChatChunk(
            finish_reason="stop",
            usage=Usage(
                input_tokens=as_count(usage.get("input_tokens")) or 0,
                output_tokens=as_count(usage.get("output_tokens")) or 0,
                cache_read_tokens=as_count(usage.get("cache_read_tokens")) or 0,
                reasoning_tokens=as_count(usage.get("reasoning_tokens")) or 0,
            ),
            model=as_text(event.get("model")) or self.model,
        )
        return chunks

    def close(self) -> list[ChatChunk]:
        # gptme exits as soon as it has printed the answer: the run is complete only then
        # (a tool that printed and hung is stopped by the stall timeout, not taken as done).
        self.finished = self._final is not None
        return [self._final] if self._final is not None else []


def classify(message: str) -> RunnerError:
    """The typed error for what gptme said went wrong."""
    status = int(match.group(1)) if (match := _STATUS.search(message)) else None
    if status in (401, 403) or (status is None and _NO_KEY.search(message)):
        return AuthenticationError(message, hint=LOGIN_HINT)
    if status == 429:
        return RateLimitError(message)
    if _CONTEXT.search(message):
        return ContextLengthExceeded(message)
    if status == 404 or _MODEL.search(message):
        return ModelNotFound(message)
    if (status is not None and status >= 500) or _UNREACHABLE.search(message):
        return ServiceUnavailable(message)
    return RunnerError(message)


def error_text(stderr: str) -> str | None:
    """gptme's own account of a failure on stderr, if it gave one."""
    found = _FAILURE.findall(stderr)
    return found[-1].strip().strip("'") if found else None


class GptmeRunner(HistoryKeepingRunner):
    max_conversations = 256
    name = "gptme"
    option_names = frozenset({"max_retries", "extra_args"})
    display_name = "gptme"
    binary = "gptme"
    aliases = ()
    extra_args_at = 3  # after `llm generate`
    install_hint = "pip install gptme"
    # The answer is printed whole when it is done: silence until then is normal.
    default_stall_timeout = 900.0
    cannot_lock_down = (
        "gptme still reads .env in the working directory, loads its plugins and may start the MCP servers of its config"
    )
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,
        thinking=True,
        agent_tools=False,
        sessions=True,
        system_prompt=True,
        usage=True,
    )
    honoured_parameters: ClassVar[dict[str, str]] = {"temperature": "--temperature", "max_tokens": "--max-tokens"}

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        argv = [*_generate_command(binary), "--output-format=json"]
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        prompt = flatten_conversation(self.conversation_of(request))
        if system := request.system_prompt():
            if len(system.encode()) <= SYSTEM_PROMPT_ARGV_LIMIT:
                argv.append(f"--system={system}")
            else:
                prompt = with_system_prompt(prompt, system)
        if request.temperature is not None:
            argv.append(f"--temperature={request.temperature}")
        if request.max_tokens is not None:
            argv.append(f"--max-tokens={request.max_tokens}")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env={
                "PYTHONIOENCODING": "utf-8",
                "GPTME_TELEMETRY_ENABLED": "false",
                "GPTME_CHECK_UPDATE": "false",
                **({"GPTME_LLM_MAX_RETRIES": str(options["max_retries"])} if "max_retries" in options else {}),
            },
            env_defaults={"GPTME_LLM_MAX_RETRIES": str(DEFAULT_MAX_RETRIES)},
            env_remove=self.env_remove,
            cwd=request.cwd,
        )

    def new_parser(self, request: ChatRequest) -> Parser:
        return GptmeParser(model=self.model_for(request))

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        message = error_text(stderr)
        if message is None:
            return super().error_for_exit(returncode, stderr)
        if "gptme-util is not installed" in message:
            return BinaryNotFound(message, hint=f"reinstall gptme with `{self.install_hint}`")
        return classify(message)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        result = await process.run_command([binary, "--version-json"], env=self.env, env_remove=self.env_remove)
        try:
            info = json.loads(result.stdout)
        except (ValueError, RecursionError):
            return None, f"`gptme --version-json` printed no JSON: {_last_line(result.stderr)}"
        providers = info.get("providers") if isinstance(info, dict) else None
        if not isinstance(providers, list):
            return None, "`gptme --version-json` lists no providers"
        if not providers:
            return False, "gptme has no provider configured"
        return True, "providers: " + ", ".join(str(p) for p in providers)

    def login_hint(self) -> str | None:
        return LOGIN_HINT


def _generate_command(binary: str) -> list[str]:
    """`gptme-util llm generate`, from the gptme-util installed beside `gptme`; else gptme,
    which hands `llm …` to a gptme-util on PATH."""
    util = Path(os.path.realpath(binary)).with_name("gptme-util")
    if os.access(util, os.X_OK):
        return [str(util), "llm", "generate"]
    return [binary, "llm", "generate"]
