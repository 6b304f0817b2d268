"""Kiro CLI (`kiro-cli`, AWS; formerly Amazon Q Developer CLI), in `kiro-cli chat --no-interactive` mode.

Kiro's CLI is not in any package registry llmrun can install from, so this runner and the
transcripts in fixtures/kiro-cli/ follow its documentation (kiro.dev/docs/cli: headless,
cli-commands, exit-codes) and what users of the real CLI (2.x) have published about its
headless output; the transcripts are hand-made in that shape.

Output is plain text, not JSON: stdout carries the answer as a terminal transcript (colour
escapes, which llmrun strips, and a `> ` marker in front of the answer, which is dropped),
passed on as it arrives. The run's trailer (`▸ Credits: 0.02 • Time: 1s`) goes to stderr
and is the only sign that the turn ran: a clean exit without it, or without answer text,
is not a success. Kiro reports credits, not tokens, so llmrun reports no usage.

The prompt goes over stdin: with no prompt argument, `kiro-cli chat --no-interactive`
reads a piped stdin to its end as the instruction. There is no system prompt flag (a
custom agent's prompt is the only place for one), so the system prompt goes in front of
the prompt. `--wrap=never` keeps kiro from wrapping lines at a terminal width.

Lockdown: `--trust-tools=` trusts no tool, so when the model asks for one kiro stops with
"Tool approval required but --no-interactive was specified" (exit 1), typed as a
RunnerError that says so. With `allow_tools`, `--trust-all-tools`. What cannot be locked
down per run: kiro's telemetry and self-update are switched off only in its settings
(`kiro-cli settings`), which llmrun never edits; the user's MCP servers, steering and
hooks load as configured.

Failures are read from stderr, the real cause first: kiro signs off most failures with
the tool-approval line above even when the cause was another ("Kiro rate limit reached",
"The model you've selected is temporarily unavailable", "Kiro is having trouble
responding right now", "dispatch failure"). An invalid credential exits 0 with
"Authentication failed." on stderr and nothing on stdout. With no credential at all kiro
starts a device login and waits for it without a word on stdout: llmrun's stall timeout
ends it, and the timeout is reported as an AuthenticationError when kiro's stderr shows
the login prompt.

Sessions: kiro prints no session id, so after a good run llmrun looks for the session
the run saved (read-only): kiro's default engine keeps each one as
~/.kiro/sessions/cli/<id>.json (with its `cwd`), the V3 engine as
~/.kiro/sessions/<workspace>/sess_<id>/session.json (with `workspacePaths`). The session
written since the run started is taken; of several (runs in parallel), the one of the
run's working directory. `request.session_id` resumes it with `--resume-id` (kiro 2.2 and
later) and only the new turns are sent.

Warm sessions: `runner.session()` keeps one `kiro-cli acp` process (the Agent Client
Protocol) for the conversation, over the shared ACP transport, with `--model` and
`--agent` on its command line. Kiro asks before each tool it does not trust, and llmrun
refuses unless the session allows tools; what cannot be locked down there is the set of
tools kiro's agent trusts on its own (reading files in the working directory, as
configured), which run without asking. Kiro reports credits (`_kiro.dev/metadata`), not
tokens, so warm turns carry no usage either. A session resumes with `session/load`; kiro
answers an unknown id by exiting, which the transport reports as SessionNotFound.

Health: `kiro-cli --version`; logged in when KIRO_API_KEY is set or `kiro-cli whoami`
succeeds.

Options (`ChatRequest.options`): `agent` (a custom agent), `harness` (`v2` or `v3`, kiro
3's agent harness), and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from .. import process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    RunnerTimeout,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..process import strip_ansi
from ..prompting import prompt_for, with_system_prompt
from ..types import Capabilities, ChatChunk, ChatRequest
from .base import CliRunner, Parser, _last_line, as_dict, as_list

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

LOGIN_HINT = "run `kiro-cli login`, or set KIRO_API_KEY (headless runs need an API key)"
TRAILER = "▸ Credits:"
ANSWER_MARK = "> "
TOOL_APPROVAL = "Tool approval required"
HARNESSES = ("v2", "v3")

_UNFINISHED_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?\Z")
_AUTH = re.compile(
    r"authentication failed|not logged in|not authenticated|unauthori[sz]ed|invalid api key|"
    r"kiro-cli login|token (has )?expired|status:? 40[13]",
    re.I,
)
_DEVICE_LOGIN = re.compile(r"device|verification (code|url)|open this url|confirm the following code", re.I)
_RATE = re.compile(
    r"rate limit|quota exceeded|throttl|too many requests|status:? 429|monthly limit|out of credits", re.I
)
_CONTEXT = re.compile(r"context window|too long|context length|conversation is too large", re.I)
_UNAVAILABLE = re.compile(
    r"temporarily unavailable|trouble responding|dispatch failure|error sending request|failed to send the request|"
    r"failed to receive the next message|service unavailable|status:? 5\d\d|connection (refused|reset)",
    re.I,
)
_MODEL = re.compile(r"model .{0,80}(does not exist|not found|not available|not supported|invalid)|invalid model", re.I)
_SESSION = re.compile(r"session .{0,80}(not found|does not exist)|no session found", re.I)


def classify(stderr: str) -> RunnerError | None:
    """The typed error for what kiro said on stderr, or None when it says nothing known.

    The real cause comes before the tool-approval line kiro ends most failures with."""
    text = strip_ansi(stderr)
    if _AUTH.search(text):
        return AuthenticationError(_line_of(_AUTH, text), hint=LOGIN_HINT)
    for pattern, error in (
        (_RATE, RateLimitError),
        (_CONTEXT, ContextLengthExceeded),
        (_UNAVAILABLE, ServiceUnavailable),
        (_MODEL, ModelNotFound),
        (_SESSION, SessionNotFound),
    ):
        if pattern.search(text):
            return error(_line_of(pattern, text))
    if TOOL_APPROVAL in text:
        return RunnerError(
            "the model asked to use one of kiro's tools, which llmrun does not trust unless the request allows tools",
            hint="set allow_tools to let kiro run its tools",
        )
    return None


def _line_of(pattern: re.Pattern[str], text: str) -> str:
    """The stderr line that matched, without kiro's `error: ` prefix."""
    line = next((line.strip() for line in text.splitlines() if pattern.search(line)), "")
    return line.removeprefix("error: ").strip() or _last_line(text)


class KiroParser(Parser):
    """Kiro's headless stdout: the answer as text (see the module docstring)."""

    def __init__(self, *, model: str | None = None, session_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.session_id = session_id
        self._escape = ""  # an escape sequence cut off at the end of a piece
        self._start = ""  # the answer's first characters, until the `> ` mark is known
        self._started = False
        self._newlines = ""  # trailing newlines, held until more text follows
        self._sent_text = False

    def feed(self, line: str) -> list[ChatChunk]:
        text = self._escape + line
        self._escape = ""
        last = text.rfind("\x1b")
        if last >= 0 and _UNFINISHED_ESCAPE.match(text, last) and len(text) - last < 256:
            text, self._escape = text[:last], text[last:]
        text = strip_ansi(text)
        if not self._started:
            self._start += text
            if ANSWER_MARK.startswith(self._start.lstrip("\n")):
                return []  # not known yet
            self._started = True
            text = self._start.lstrip("\n").removeprefix(ANSWER_MARK)
        return self._emit(text)

    def _emit(self, text: str) -> list[ChatChunk]:
        body = text.rstrip("\n")
        if not body:
            self._newlines += text
            return []
        delta, self._newlines = self._newlines + body, text[len(body) :]
        self._sent_text = True
        return [ChatChunk(delta=delta)]

    def close(self) -> list[ChatChunk]:
        ran = TRAILER in strip_ansi(self.stderr)
        if not (ran and self._sent_text):
            self.error = self.error or classify(self.stderr)
            return []  # cut short, or failed: the runner reports it
        self.finished = True
        return [ChatChunk(finish_reason="stop", session_id=self.session_id, model=self.model)]


class KiroRunner(CliRunner):
    name = "kiro"
    option_names = frozenset({"agent", "harness", "extra_args"})
    display_name = "Kiro CLI"
    binary = "kiro-cli"
    aliases = ("kiro-cli", "kiro_cli")
    install_hint = "curl -fsSL https://cli.kiro.dev/install | bash"
    framing = "text"
    needs_finished_output = True  # a clean exit without the trailer did not run the turn
    extra_args_at = 2  # after `chat`
    cannot_lock_down = (
        "telemetry and self-update (only kiro's own settings switch them off); the user's MCP servers, steering and "
        "hooks load; in warm sessions the tools kiro's agent trusts on its own run unasked"
    )
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        usage=False,
    )
    # No default model: kiro's own choice (chat.defaultModel) applies.

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "chat", "--no-interactive", "--wrap=never"]
        argv.append("--trust-all-tools" if request.allow_tools else "--trust-tools=")
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if agent := options.get("agent"):
            argv.append(f"--agent={agent}")
        if harness := options.get("harness"):
            if harness not in HARNESSES:
                raise UnsupportedFeature(f"unknown harness {harness!r}; kiro knows v2 and v3", runner=self.name)
            argv.append(f"--{harness}")
        if session := self.session_to_resume(request):
            argv.append(f"--resume-id={session}")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        prompt = with_system_prompt(prompt_for(request), request.system_prompt())
        return process.Invocation(argv=argv, stdin=prompt.encode(), env_remove=self.env_remove, cwd=request.cwd)

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.acp import AcpProfile, acp_connection

        request = settings.request([])
        invocation = self.prepared_invocation(request)
        # `kiro-cli acp` takes the model and the agent, not the trust flags: tools are
        # refused or granted as kiro asks for them (the transport's permission answers).
        argv = [invocation.argv[0], "acp"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if agent := settings.options.get("agent"):
            argv.append(f"--agent={agent}")
        invocation.argv = argv
        return acp_connection(self, invocation, settings, resume, AcpProfile())

    def new_parser(self, request: ChatRequest) -> Parser:
        return KiroParser(model=self.model_for(request), session_id=request.session_id)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        started = time.time()
        try:
            async with aclosing(super().stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.is_final and chunk.session_id is None:
                        cwd = os.path.realpath(request.cwd or os.getcwd())
                        chunk = chunk.model_copy(update={"session_id": saved_session(self._kiro_home(), started, cwd)})
                    yield chunk
        except RunnerTimeout as exc:
            # With no credential kiro waits for a device login that no one will complete.
            if _DEVICE_LOGIN.search(exc.stderr or ""):
                raise AuthenticationError(
                    "kiro-cli is waiting for a device login: it has no credential",
                    runner=self.name,
                    exit_code=exc.process_exit_code,
                    stderr=exc.stderr,
                    hint=LOGIN_HINT,
                ) from None
            raise

    def _kiro_home(self) -> Path:
        return Path(self.env.get("HOME") or os.path.expanduser("~")) / ".kiro"

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        if "unexpected argument" in stderr:
            message = _last_line(strip_ansi(stderr)).removeprefix("error: ")
            return RunnerError(
                f"this kiro-cli does not accept llmrun's flags: {message}", hint="update it with `kiro-cli update`"
            )
        return classify(stderr) or super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        if self.env.get("KIRO_API_KEY") or os.environ.get("KIRO_API_KEY"):
            return True, "KIRO_API_KEY is set"
        result = await process.run_command([binary, "whoami"], env=self.env, env_remove=self.env_remove)
        said = _last_line(strip_ansi(result.stdout + "\n" + result.stderr))
        if result.returncode == 0:
            return True, said
        return False, said or f"`kiro-cli whoami` exited with {result.returncode}"

    def login_hint(self) -> str | None:
        return LOGIN_HINT


def saved_session(kiro_home: Path, since: float, cwd: str) -> str | None:
    """The id of the session a run saved since `since`: the only one, or the newest of the
    working directory when runs elsewhere saved theirs too; None when none is found."""
    sessions = kiro_home / "sessions"
    found: list[tuple[float, str, list[str]]] = []  # (modified, id, directories)
    for path in [*sessions.glob("cli/*.json"), *sessions.glob("*/sess_*/session.json")]:
        try:
            modified = path.stat().st_mtime
            if modified < since - 1:
                continue
            meta = json.loads(path.read_text("utf-8", errors="replace"))
        except (OSError, ValueError, RecursionError):
            continue
        meta = as_dict(meta)
        if meta.get("parent_session_id"):
            continue  # a subagent's
        v2 = path.parent.name == "cli"
        places = [meta.get("cwd")] if v2 else as_list(meta.get("workspacePaths"))
        found.append((modified, path.stem if v2 else path.parent.name, [p for p in places if isinstance(p, str)]))
    if len(found) > 1:
        found = [entry for entry in found if any(os.path.realpath(p) == cwd for p in entry[2])]
    return max(found)[1] if found else None
