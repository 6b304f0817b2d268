"""Aider (`aider`, PyPI `aider-chat`), one `aider --message-file` run per request.

Aider is a pair-programming chat that edits files from the model's replies. It has no
machine-readable output: everything goes to stdout as plain text, its own notices first
(a failed fetch of litellm's price list when offline, the banner `Aider v…` / `Model: …` /
`Git repo: …` / `Repo-map: …`, a blank line), then the answer as the model streams it,
then `Tokens: 593 sent, 3 received.` (with ` Cost: $… message, $… session.` when aider
knows the model's prices; counts of 1000 and more are rounded, `2.1k`). Reasoning comes
first, between `► **THINKING**` and `► **ANSWER**` rules, and becomes thinking chunks.

The prompt goes over stdin: `--message-file=/dev/stdin` makes aider read the whole of it
as one message (without the option aider would take each stdin line as a turn of its own).
A message starting with `/` or `!` would run one of aider's commands (`/run`, `!cmd` run
shell commands), so such a prompt gets a leading space. There is no system prompt option:
the system prompt goes in front of the prompt. Aider keeps no sessions a later run can
resume, so this runner keeps them, as ollama's does: the conversation is replayed with
each turn, under ids made by llmrun that live as long as the runner instance.

Errors: aider reports them on stdout and often exits 0 (a 401 does). A `litellm.<Error>: …`
line where the answer should start is typed from the exception's name; 429s and 5xx make
aider retry for about a minute, so the run is stopped at the first report instead. With no
model and no API key aider offers an OpenRouter browser login and waits five minutes for
it: the offer is recognised in the output and the run ends with AuthenticationError. When
the model's context is exhausted aider prints `Model … has hit a token limit!` and token
counts instead of an answer (ContextLengthExceeded); after part of an answer, the answer
ends there with finish_reason "length".

Locked down by default: `--chat-mode=ask` (aider answers, proposes no edits) and
`--dry-run`, `--no-git` (no commits, no repository scan), `--no-suggest-shell-commands`,
`--no-detect-urls` (no web pages fetched for URLs in the prompt), no lint or test runs,
chat and input history to /dev/null instead of files in the working directory,
`--no-analytics` for this run (unlike `--analytics-disable`, it writes nothing to the
user's settings), no update check or release notes, and `BROWSER=true` so that the URLs
`--yes-always` accepts to open (aider offers the links in error messages) open nothing.
`--yes-always` answers aider's other questions, and declines those that need an explicit
yes, such as running a shell command. With `allow_tools` aider works in its default code
mode and edits or creates files in the working directory (still without git or shell
commands). What cannot be locked down: aider reads `.aider.conf.yml` and `.env` from the
home and working directories, and a `load:`, `lint-cmd:` or `test-cmd:` entry there is
obeyed (the `AIDER_*` variables of those modes are removed from its environment);
`~/.aider/` gets a caches directory and an analytics id file; aider fetches litellm's
model price list from GitHub (cached for a day).

Health: `aider --version`; aider cannot tell whether it has a working key without a request.

Options (`ChatRequest.options`): `edit_format` (with `allow_tools`: `diff`, `whole`,
`architect`, …), `read` (a list of files added as read-only context, `--read`), and
`extra_args` (a list appended to the command; the settings' `extra_args` go right after
`aider`).

Sampling: aider has no option for it, but its model settings take `extra_params` that go to
litellm with every call, over aider's own temperature. The request's `temperature`,
`max_tokens`, `top_p`, `seed`, `frequency_penalty` and `presence_penalty` go there, in a
private settings file (`--model-settings-file`) whose `aider/extra_params` entry applies
to every model. That file takes the place of a settings file the user's aider config names,
and of an `aider/extra_params` entry of their own, for that run. litellm drops a parameter
the model's provider does not take (aider sets `drop_params`).
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from .. import private, process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
)
from ..prompting import flatten_conversation, with_system_prompt
from ..types import Capabilities, ChatChunk, ChatRequest, FinishReason, Usage
from .base import HistoryKeepingRunner, Parser, partial_marker_at_end

BANNER = "Aider v"
THINKING_OPEN = "\n--------------\n► **THINKING**\n\n"
THINKING_CLOSE = "\n\n------------\n► **ANSWER**\n\n"
USAGE_START = "Tokens: "
LIMIT_START = "Model "
ERROR_START = "litellm."
# Printed before the banner when aider is about to wait for an OpenRouter login in a browser.
LOGIN_OFFERS = (
    "No LLM model was specified and no API keys were provided.",
    "requires an OpenRouter API key, which was not found.",
)
LOGIN_HINT = (
    "give aider a model and its key: `--model` (or AIDER_MODEL, or llmrun's model setting) and "
    "the provider's key variable (e.g. OPENAI_API_KEY, ANTHROPIC_API_KEY), or `aider --api-key provider=KEY`"
)
# Variables that would make aider do something else than answer: run /commands from a file,
# commit, lint, test, upgrade itself, print debug output into the answer.
ENV_REMOVE = (
    "AIDER_MESSAGE",
    "AIDER_LOAD",
    "AIDER_APPLY",
    "AIDER_APPLY_CLIPBOARD_EDITS",
    "AIDER_COMMIT",
    "AIDER_LINT",
    "AIDER_TEST",
    "AIDER_UPGRADE",
    "AIDER_INSTALL_MAIN_BRANCH",
    "AIDER_JUST_CHECK_UPDATE",
    "AIDER_LIST_MODELS",
    "AIDER_SHOW_PROMPTS",
    "AIDER_SHOW_REPO_MAP",
    "AIDER_EXIT",
    "AIDER_VERBOSE",
)

# The banner's line naming the model aider runs (`Model: X with ask edit format`, or
# `Main model: X with ...` when a weak model is set too): the tool's own choice when llmrun names none.
_BANNER_MODEL = re.compile(r"^(?:Main model|Model): (\S+) with ")
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\^_])")
_COUNT = r"[\d.]+k?"
_USAGE = re.compile(
    rf"^Tokens: (?P<sent>{_COUNT}) sent(?:, (?P<write>{_COUNT}) cache write)?(?:, (?P<hit>{_COUNT}) cache hit)?"
    rf", (?P<received>{_COUNT}) received\.(?P<rest>.*)$",
    re.M,
)
# Printed instead of (or after part of) an answer when the model's context or output limit is hit.
_TOKEN_LIMIT = re.compile(r"^Model \S+ has hit a token limit!\n", re.M)
_COST = re.compile(r"Cost: \$(?P<message>[\d.]+) message")
_ERROR = re.compile(r"^litellm\.(?P<name>\w+): (?P<message>.*)$")
_CONTEXT = re.compile(r"context.length|context window|maximum context|too many tokens", re.I)


def parse_tokens(text: str) -> int:
    """A count as aider prints it: `593`, `2.1k`, `12k`."""
    try:
        return round(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))
    except (ValueError, OverflowError):  # not a number, or one beyond a float
        return 0


def usage_from(match: re.Match[str]) -> tuple[Usage, float | None]:
    """Usage and cost of aider's `Tokens: …` report (the cost may follow on the next line)."""
    write = parse_tokens(match.group("write") or "0")
    hit = parse_tokens(match.group("hit") or "0")
    usage = Usage(
        # aider counts written cache tokens into "sent"
        input_tokens=max(0, parse_tokens(match.group("sent")) - write),
        output_tokens=parse_tokens(match.group("received")),
        cache_read_tokens=hit,
        cache_write_tokens=write,
    )
    cost = _COST.search(match.string, match.start("rest"))
    return usage, float(cost.group("message")) if cost else None


def classify(name: str, message: str) -> RunnerError:
    """The typed error for a litellm exception aider reported."""
    text = f"{name}: {message}"
    if name in ("AuthenticationError", "PermissionDeniedError"):
        return AuthenticationError(text, hint=LOGIN_HINT)
    if name in ("RateLimitError", "RouterRateLimitError"):
        return RateLimitError(text)
    if name == "ContextWindowExceededError" or _CONTEXT.search(message):
        return ContextLengthExceeded(text)
    if name == "NotFoundError" or "LLM Provider NOT provided" in message:
        return ModelNotFound(text, hint="`aider --list-models NAME` lists the models aider knows")
    if name in ("InternalServerError", "ServiceUnavailableError", "BadGatewayError", "APIConnectionError", "Timeout"):
        return ServiceUnavailable(text)
    return RunnerError(text)


# --- the parser ------------------------------------------------------------------------------


class AiderParser(Parser):
    """Aider's stdout: notices and banner (skipped), the answer, the usage report."""

    def __init__(self, *, model: str | None = None) -> None:
        super().__init__()
        self.model = model
        self._state = "notices"  # notices → banner → start → (thinking →) answer
        self._line = ""  # notices and banner are read a whole line at a time
        self._pending = ""  # text that may still turn out to be aider's, not the model's
        self._answered = False

    def feed(self, line: str) -> list[ChatChunk]:
        if self.error is not None:
            return []
        if self._state in ("notices", "banner"):
            self._line += line
            while self._state in ("notices", "banner") and "\n" in self._line:
                first, self._line = self._line.split("\n", 1)
                self._notice(_ESCAPE.sub("", first).strip())
            if self._state in ("notices", "banner"):
                return []
            line, self._line = self._line, ""
        self._pending += line
        return self._drain()

    def _notice(self, line: str) -> None:
        if self._state == "notices":
            if any(offer in line for offer in LOGIN_OFFERS):
                self._fail(AuthenticationError(f"aider has no model or API key: {line}", hint=LOGIN_HINT))
            elif line.startswith(BANNER):
                self._state = "banner"
        elif not line:  # the banner ends with a blank line
            self._state = "start"
        elif model := _BANNER_MODEL.match(line):
            self.model = model.group(1)

    def _fail(self, error: RunnerError) -> None:
        self.error = error
        self.finished = True  # aider may retry or wait for minutes: stop it now

    def _drain(self) -> list[ChatChunk]:
        chunks: list[ChatChunk] = []
        if self._state == "start":
            text = self._pending
            if "\n" not in text and (ERROR_START.startswith(text) or text.startswith(ERROR_START)):
                return chunks  # an error report or an answer: not known yet
            if text.startswith(THINKING_OPEN):
                self._pending = text[len(THINKING_OPEN) :]
                self._state = "thinking"
            elif THINKING_OPEN.startswith(text):
                return chunks
            elif error := _ERROR.match(text.split("\n", 1)[0]):
                self._fail(classify(error.group("name"), error.group("message").strip()))
                return chunks
            else:
                self._state = "answer"
        if self._state == "thinking":
            end = self._pending.find(THINKING_CLOSE)
            if end >= 0:
                thought, self._pending = self._pending[:end], self._pending[end + len(THINKING_CLOSE) :]
                self._state = "answer"
            else:
                keep = partial_marker_at_end(self._pending, THINKING_CLOSE)
                thought = self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(thought) :]
            if thought:
                chunks.append(ChatChunk(thinking=thought))
        if self._state == "answer":
            cut = self._held_from(self._pending)
            text = self._pending[:cut].rstrip("\n")  # newlines at the end may be aider's
            self._pending = self._pending[len(text) :]
            if text:
                self._answered = True
                chunks.append(ChatChunk(delta=text))
        return chunks

    @staticmethod
    def _held_from(text: str) -> int:
        """Where the text that may be aider's own begins: its report of a token limit (all
        that follows is aider's), its last complete `Tokens:` line, else a last line that
        may still become one of the two."""
        if limit := _TOKEN_LIMIT.search(text):
            return limit.start()
        reports = [m for m in _USAGE.finditer(text) if "\n" in text[m.end() :]]
        if reports:
            return reports[-1].start()
        start = text.rfind("\n") + 1
        last = text[start:]
        if any(marker.startswith(last) or last.startswith(marker) for marker in (USAGE_START, LIMIT_START)):
            return start
        return len(text)

    def close(self) -> list[ChatChunk]:
        if self.error is not None or self._state in ("notices", "banner", "start"):
            return []  # cut short (or failed): the runner reports it
        chunks: list[ChatChunk] = []
        text, usage, cost = self._pending, Usage(), None
        finish_reason: FinishReason = "stop"
        reports = list(_USAGE.finditer(text))
        if reports:
            usage, cost = usage_from(reports[-1])
            text = text[: reports[-1].start()]
        if limit := _TOKEN_LIMIT.search(text):
            report, text = text[limit.start() :].strip(), text[: limit.start()]
            if not (self._answered or text.strip()):
                self.error = ContextLengthExceeded(report.replace("\n", " "))
                return []
            finish_reason = "length"  # the answer was cut at the model's output limit
        if self._state == "thinking":
            if thought := text.rstrip("\n"):
                chunks.append(ChatChunk(thinking=thought))
        elif text := text.rstrip("\n"):
            chunks.append(ChatChunk(delta=text))
        # A clean exit after the answer began is a complete answer, with or without a report.
        self.finished = True
        chunks.append(ChatChunk(finish_reason=finish_reason, usage=usage, model=self.model, cost_usd=cost))
        return chunks


# --- the runner ------------------------------------------------------------------------------


class AiderRunner(HistoryKeepingRunner):
    name = "aider"
    option_names = frozenset({"edit_format", "read", "extra_args"})
    display_name = "Aider"
    binary = "aider"
    aliases = ("aider-chat",)
    framing = "text"
    needs_finished_output = True
    install_hint = "pipx install aider-chat"  # needs Python < 3.13
    min_version = "0.86"
    env_remove = ENV_REMOVE
    cannot_lock_down = (
        ".aider.conf.yml and .env in the home or working directory are still read, "
        "with their load:, lint-cmd: and test-cmd: entries"
    )
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=True,
        sessions=True,
        system_prompt=True,
        usage=True,
        cost=True,
    )
    # No default model: aider picks one from the API keys it finds.
    honoured_parameters: ClassVar[dict[str, str]] = {
        name: f"model settings extra_params.{name} (litellm; for models that take it)"
        for name in ("temperature", "max_tokens", "top_p", "seed", "frequency_penalty", "presence_penalty")
    }

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        argv = [
            binary,
            "--no-git",
            "--yes-always",
            "--no-pretty",
            "--stream",
            "--no-fancy-input",
            "--no-check-update",
            "--no-analytics",
            "--no-show-release-notes",
            "--no-show-model-warnings",
            "--no-detect-urls",
            "--no-suggest-shell-commands",
            "--no-auto-lint",
            "--no-auto-test",
            "--no-gui",
            "--no-copy-paste",
            "--no-notifications",
            "--no-watch-files",
            "--no-restore-chat-history",
            "--chat-history-file=/dev/null",
            "--input-history-file=/dev/null",
        ]
        if request.allow_tools:
            if options.get("edit_format"):
                argv.append(f"--edit-format={options['edit_format']}")
        else:
            argv += ["--chat-mode=ask", "--dry-run"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        temp_files: list[str] = []
        if sampling := {
            name: value for name in self.honoured_parameters if (value := getattr(request, name)) is not None
        }:
            # JSON is YAML: aider reads it as its own .aider.model.settings.yml.
            settings = json.dumps([{"name": "aider/extra_params", "extra_params": sampling}])
            temp_files.append(private.write_file(settings, prefix="aider-settings-", suffix=".yml"))
            argv.append(f"--model-settings-file={temp_files[-1]}")
        read = options.get("read") or []
        argv += [f"--read={path}" for path in ([read] if isinstance(read, str) else read)]
        argv += [str(arg) for arg in options.get("extra_args", [])]
        argv.append("--message-file=/dev/stdin")
        prompt = with_system_prompt(flatten_conversation(self.conversation_of(request)), request.system_prompt())
        if prompt[:1] in ("/", "!"):
            prompt = " " + prompt  # else aider runs it as one of its commands
        return process.Invocation(
            argv=argv,
            stdin=prompt.encode(),
            env={
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm's own price-list fetch
                "BROWSER": "true",  # the URLs aider opens under --yes-always open nothing
                "COLUMNS": "100000",  # rich would wrap aider's messages at 80 columns
            },
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def new_parser(self, request: ChatRequest) -> Parser:
        return AiderParser(model=self.model_for(request))

    def login_hint(self) -> str | None:
        return LOGIN_HINT
