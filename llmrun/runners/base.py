"""The runner contract, and the machinery shared by every runner that drives a CLI.

`Runner` is the interface (after embacle's LlmProvider): name, display name, capabilities,
default and available models, `complete`, `stream`, `health`. `CliRunner` implements it
once for all command-line tools: resolve the binary, build an `Invocation`, run it through
`process.spawn`, feed stdout to a `Parser`, and turn the exit into a result or a typed
error. A runner file then holds only its tool's specifics: the command line, the parser,
and how the tool says it is logged in.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .. import check_cache, private, process
from ..config import RunnerSettings, runner_settings
from ..errors import (
    AuthenticationError,
    BinaryNotFound,
    InvalidRequest,
    OutputParseError,
    ProcessFailed,
    RunnerError,
    SessionNotFound,
    UnsupportedFeature,
)
from ..prompting import new_turns

if TYPE_CHECKING:
    from ..sessions import Session, SessionSettings
    from ..transports.base import WarmConnection
from ..types import (
    Capabilities,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    HealthReport,
    Message,
    ModelInfo,
    RunnerMetadata,
    check_session_id,
)


class Parser:
    """Turns a tool's output into chunks. One per run; pure, no I/O.

    `feed` gets each stdout line (or text piece, for plain-text tools) and returns the
    chunks it completes; it must skip what it does not understand rather than raise. A
    failure the tool reports in its output is kept in `error` (raised once the process has
    ended, so it carries the exit code and stderr). `finished` is set when the tool's
    output is complete, so a process that lingers afterwards can be stopped. `stderr`
    holds the tail of the tool's stderr once the process has ended, before `close()`,
    for tools that print usage or statistics there.
    """

    def __init__(self) -> None:
        self.error: RunnerError | None = None
        self.finished = False
        self.stderr = ""

    def feed(self, line: str) -> list[ChatChunk]:
        raise NotImplementedError

    def close(self) -> list[ChatChunk]:
        """Called after the process ended; returns any last chunks."""
        return []


class WholeMessageParser(Parser):
    """A parser for a tool that prints each message whole, not in deltas: a later message
    (after a tool ran, say) is a new paragraph of the answer, or of the thinking."""

    def __init__(self) -> None:
        super().__init__()
        self._sent_text = False
        self._sent_thinking = False

    def _text(self, text: Any) -> list[ChatChunk]:
        if not isinstance(text, str) or not text:
            return []
        prefix = "\n\n" if self._sent_text else ""
        self._sent_text = True
        return [delta_chunk(prefix + text)]

    def _thinking(self, text: Any) -> list[ChatChunk]:
        if not isinstance(text, str) or not text:
            return []
        prefix = "\n\n" if self._sent_thinking else ""
        self._sent_thinking = True
        return [ChatChunk(thinking=prefix + text)]


def json_object(line: str) -> dict[str, Any] | None:
    """The JSON object on one line of a tool's output; None for anything else (debug noise,
    truncated lines, arrays), which parsers skip."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to read
        return None
    return event if isinstance(event, dict) else None


_SHAPE_PLACES = {
    "<text>": r'([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)',  # captured; json_text reads it
    "<key>": r"([-.:+0-9A-Za-z_]*)",  # captured
    "<id>": r"[-.:+0-9A-Za-z_]*",
    "<int>": r"(?:0|[1-9][0-9]*)",
}


def line_shape(shape: str) -> re.Pattern[str]:
    """The pattern of one exact line of JSON: `shape` is the line with placeholders for the
    bodies of strings (<text>: any text; <key>, <id>: ids, timestamps, letters, digits and
    -.:+_ only, the fastest to match) and for integers (<int>); <text> and <key> are captured,
    in order. A line it matches reads as JSON into this very object, so a parser's fast path
    need not decode the rest of it."""
    parts = re.split("(<text>|<key>|<id>|<int>)", shape)
    return re.compile("".join(_SHAPE_PLACES.get(part) or re.escape(part) for part in parts))


def json_text(body: str) -> str | None:
    """The text of a JSON string whose body <text> captured; None if an escape is invalid."""
    if "\\" not in body:
        return body
    try:
        text = json.loads(f'"{body}"')
    except ValueError:
        return None
    return text if isinstance(text, str) else None


_BLANK_CHUNK = ChatChunk().__dict__
_new, _set = object.__new__, object.__setattr__


def _unvalidated_delta(text: str) -> ChatChunk:
    # What pydantic's model_construct builds, without its slow per-field default lookups.
    chunk = _new(ChatChunk)
    fields = _BLANK_CHUNK.copy()
    fields["delta"], fields["warnings"] = text, []
    _set(chunk, "__dict__", fields)
    _set(chunk, "__pydantic_fields_set__", {"delta"})
    _set(chunk, "__pydantic_extra__", None)
    _set(chunk, "__pydantic_private__", None)
    return chunk


def _validated_delta(text: str) -> ChatChunk:
    return ChatChunk(delta=text)


def _same_chunk(a: ChatChunk, b: ChatChunk) -> bool:
    return a == b and a.model_fields_set == b.model_fields_set and a.model_dump() == b.model_dump()


# `ChatChunk(delta=text)` for a str at a third of the cost: parsers make one per text delta,
# hundreds of thousands a second. Checked once against pydantic's own, which it stays where
# pydantic builds models differently.
delta_chunk: Callable[[str], ChatChunk] = (
    _unvalidated_delta if _same_chunk(_unvalidated_delta("x"), _validated_delta("x")) else _validated_delta
)


# A tool's JSON may hold any type where another was expected (a newer or broken version):
# parsers read fields through these, so a value of the wrong type counts as absent.


def as_text(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """A JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def as_count(value: Any) -> int | None:
    """A count: an integer (a float is truncated); None for anything else, booleans and
    numbers too large for a float (which JSON gives as infinity) included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def as_number(value: Any) -> float | None:
    """A finite number as a float (a cost, say); None for anything else, booleans included."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def partial_marker_at_end(text: str, marker: str) -> int:
    """How many characters at the end of `text` may begin `marker` (hold them back until the
    next piece of output tells)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def parse_count(digits: str) -> int | None:
    """A count a tool printed as text (thousands separated by commas or not); None when the
    text holds no digits, or more than Python converts to a number."""
    try:
        return int(digits.replace(",", ""))
    except ValueError:
        return None


class Runner(ABC):
    """What every runner offers, whatever drives it."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    binary: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    default_model: str | None = None
    """The model llmrun names when a request names none: the user's (`default_model` in the
    config, `LLMRUN_<NAME>_MODEL`). None leaves the choice to the tool's own settings; a
    runner sets one of its own only when its tool cannot run without a model."""
    capabilities: ClassVar[Capabilities] = Capabilities()
    builtin_models: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()
    """(model id, aliases) pairs known without asking the tool."""
    cannot_lock_down: ClassVar[str] = ""
    """What of the tool's own agent llmrun cannot switch off (shown by `llmrun runners`)."""
    honoured_parameters: ClassVar[dict[str, str]] = {}
    """The sampling parameters the tool itself honours, and how (a flag, a setting): see
    llmrun/parameters.py. llmrun enforces `stop`, and `max_tokens` where the tool cannot."""
    option_names: ClassVar[frozenset[str]] = frozenset()
    """The `ChatRequest.options` the runner reads; a request with another is refused. Empty:
    not declared, so nothing is refused (runners from elsewhere)."""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The whole answer; by construction the same as concatenating `stream()`."""
        started = time.monotonic()
        chunks: list[ChatChunk] = []
        async with aclosing(self.stream(request)) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        duration = int((time.monotonic() - started) * 1000)
        return ChatResponse.from_chunks(chunks, runner=self.name, duration_ms=duration)

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        """Chunks as the tool produces them; the last one has finish_reason and usage."""

    @abstractmethod
    async def health(self, probe: bool = False) -> HealthReport: ...

    async def available_models(self, refresh: bool = False) -> list[ModelInfo]:
        return self.known_models()

    def known_models(self) -> list[ModelInfo]:
        default = self.model_when_none_asked()
        return [
            ModelInfo(id=model, runner=self.name, aliases=list(aliases), is_default=default in (model, *aliases))
            for model, aliases in self.builtin_models
        ]

    def tool_default_model(self) -> str | None:
        """The model the tool chooses by itself, where its own settings say so cheaply (a
        config file, a variable); None when it does not tell without a run."""
        return None

    def model_when_none_asked(self) -> str | None:
        """The model a request without one gets: llmrun's configured one, else the tool's own
        where known."""
        return self.default_model or self.tool_default_model()

    def metadata(self) -> RunnerMetadata:
        return RunnerMetadata(
            name=self.name,
            display_name=self.display_name,
            binary=self.binary,
            aliases=list(self.aliases),
            default_model=self.default_model,
            capabilities=self.capabilities,
            models=self.known_models(),
            cannot_lock_down=self.cannot_lock_down,
        )

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the runner holds (nothing for one-shot CLI runs)."""

    def session(
        self,
        *,
        model: str | None = None,
        system: str | None = None,
        cwd: str | None = None,
        resume: str | None = None,
        allow_tools: bool = False,
        options: dict[str, Any] | None = None,
        timeout: float | None = None,
        stall_timeout: float | None = None,
    ) -> Session:
        """A conversation with this tool: `async with runner.session() as s: await s.complete("hi")`.

        With `capabilities.warm` one tool process answers every turn; otherwise each turn
        starts the tool and resumes its session (or replays the history). `resume` continues
        a session of the tool by id; `timeout` and `stall_timeout` apply to each turn.
        """
        from ..sessions import ResumingSession, SessionSettings, WarmSession

        if resume is not None:
            check_session_id(resume, runner=self.name)
        if self.option_names and (unknown := sorted(set(options or {}) - self.option_names)):
            raise unknown_options(self, unknown)  # a warm tool would never see them
        settings = SessionSettings(
            model=model,
            system=system,
            cwd=cwd,
            resume=resume,
            allow_tools=allow_tools,
            options=dict(options or {}),
            timeout=timeout,
            stall_timeout=stall_timeout,
        )
        return WarmSession(self, settings) if self.capabilities.warm else ResumingSession(self, settings)

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        """The live process of a warm session; only runners with `capabilities.warm` have one."""
        raise UnsupportedFeature(f"{self.display_name} has no warm mode", runner=self.name)


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> str | None:
    match = _VERSION.search(text)
    return match.group(0) if match else None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def unknown_options(runner: Runner, unknown: list[str]) -> UnsupportedFeature:
    """The refusal of options the runner does not read, naming those it does."""
    from ..registry import close_matches

    names = ", ".join(repr(name) for name in unknown)
    known = ", ".join(sorted(runner.option_names))
    close = [match for name in unknown for match in close_matches(name, runner.option_names)[:1]]
    return UnsupportedFeature(
        f"{runner.display_name} has no option {names}; its options: {known}",
        runner=runner.name,
        hint=f"did you mean {', '.join(repr(match) for match in close)}?" if close else None,
    )


class CliRunner(Runner):
    """A runner that runs a command-line tool once per request."""

    framing: ClassVar[Literal["lines", "text"]] = "lines"
    """How stdout is read: JSON lines, or plain text passed on as it arrives."""
    install_hint: ClassVar[str] = ""
    min_version: ClassVar[str | None] = None
    env_remove: ClassVar[tuple[str, ...]] = ()
    default_stall_timeout: ClassVar[float] = 300.0
    extra_args_at: ClassVar[int] = 1
    """Where the settings' extra_args go in argv: after the subcommand, for tools run with one."""
    needs_finished_output: ClassVar[bool | None] = None
    """Whether a clean exit without output the parser marked finished is a failure; None means
    only for JSON lines (a plain-text tool may print no end marker to check)."""

    def __init__(
        self,
        *,
        binary: str | None = None,
        default_model: str | None = None,
        timeout: float | None = None,
        stall_timeout: float | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        settings: RunnerSettings | None = None,
    ) -> None:
        settings = settings or runner_settings(self.name)
        self.binary_override = binary or settings.binary
        self.default_model = default_model or settings.default_model or type(self).default_model
        self.timeout = timeout or settings.timeout
        self.stall_timeout = stall_timeout or settings.stall_timeout or self.default_stall_timeout
        self.extra_args = list(extra_args if extra_args is not None else settings.extra_args)
        self.env = {**settings.env, **(env or {})}
        self._discovered: list[str] | None = None

    # --- what a runner file provides -----------------------------------------------------

    @abstractmethod
    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        """The command line, stdin and environment for one request."""

    @abstractmethod
    def new_parser(self, request: ChatRequest) -> Parser: ...

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        """The error for a non-zero exit that the tool's output did not explain."""
        last = _last_line(stderr)
        detail = f": {last}" if last else ""
        return ProcessFailed(f"{self.display_name} exited with code {returncode}{detail}")

    async def discover_models(self, binary: str) -> list[str]:
        """Model ids the tool itself lists (e.g. `llm models list`); none by default."""
        return []

    async def available_models(self, refresh: bool = False) -> list[ModelInfo]:
        """Built-in models, plus those the tool lists; the tool is asked once per runner."""
        if self._discovered is None or refresh:
            try:
                self._discovered = await check_cache.models(self, refresh=refresh)
            except RunnerError:
                self._discovered = []
        models = self.known_models()
        known = {name for m in models for name in (m.id, *m.aliases)}
        default = self.model_when_none_asked()
        models += [
            ModelInfo(id=model, runner=self.name, source="discovered", is_default=model == default)
            for model in self._discovered
            if model not in known
        ]
        return models

    def version_argv(self, binary: str) -> list[str] | None:
        """The command that prints the tool's version (health runs it); None when there is none."""
        return [binary, "--version"]

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        """(logged in?, message). None when the tool has no cheap way to tell."""
        return None, ""

    # --- the shared pipeline -------------------------------------------------------------

    def resolve_binary(self) -> str:
        """The executable to run: the override if set, else `binary` on PATH."""
        candidate = self.binary_override or self.binary
        found = shutil.which(candidate)
        if found is None:
            env_var = f"LLMRUN_{self.name.upper()}_BIN"
            where = f"{candidate!r} is not on PATH" if not self.binary_override else f"{candidate!r} does not exist"
            raise BinaryNotFound(
                f"{self.display_name} is not installed: {where}",
                runner=self.name,
                hint=f"install it with `{self.install_hint}`, or point {env_var} at it"
                if self.install_hint
                else f"point {env_var} at it",
            )
        return found

    def model_for(self, request: ChatRequest) -> str | None:
        """The model to name to the tool: the request's, else the configured one. None means
        no model flag at all, so the tool's own setting (its config, its variables) applies."""
        return request.model or self.default_model

    def session_to_resume(self, request: ChatRequest) -> str | None:
        """The session id for the command line, if the request names one. It is checked
        again here, for a request changed after it was validated (`model_copy`): the tool
        must never get an id it could read as an option."""
        if not request.session_id:
            return None
        return check_session_id(request.session_id, runner=self.name)

    def limits_for(self, request: ChatRequest) -> process.Limits:
        return process.Limits(
            stall_timeout=request.stall_timeout or self.stall_timeout,
            timeout=request.timeout or self.timeout,
        )

    def check_request(self, request: ChatRequest) -> None:
        """Refuse what the tool cannot do, rather than silently dropping it."""
        turns = new_turns(request.messages) if request.session_id else request.conversation()
        if not any(m.text.strip() or m.images for m in turns):
            what = "no new message after the last assistant turn" if request.session_id else "no message to send"
            raise InvalidRequest(f"the request has {what}", runner=self.name)
        if request.tools:
            raise UnsupportedFeature(
                "client-defined tools are not passed to CLI tools by a plain run; use llmrun's tool emulation instead",
                runner=self.name,
            )
        if not self.capabilities.images and any(m.images for m in request.messages):
            raise UnsupportedFeature(f"{self.display_name} does not take images through llmrun", runner=self.name)
        if self.option_names and (unknown := sorted(set(request.options) - self.option_names)):
            raise unknown_options(self, unknown)

    def prepared_invocation(self, request: ChatRequest) -> process.Invocation:
        """The tool's invocation for a request, with the settings' extra arguments and env.

        Its files go with the run (`process.spawn` removes them); a command line that fails
        after its first file was written takes its files with it."""
        with private.removed_on_failure():
            invocation = self.build_invocation(request, self.resolve_binary())
        if self.extra_args:
            invocation.argv[self.extra_args_at : self.extra_args_at] = self.extra_args
        invocation.env = {**self.env, **invocation.env}
        return invocation

    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        from .. import parameters

        def run(request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
            return parameters.enforced(self, request, self._run(request))

        if request.json_schema is None:
            return run(request)
        from .. import structured  # with its JSON-schema validator, only for a schema

        native = self.capabilities.json_schema
        return structured.validated(request, run, native=native, resumable=self.capabilities.sessions, runner=self.name)

    async def _run(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        """One run of the tool, its output as chunks."""
        self.check_request(request)
        parser = self.new_parser(request)
        limits = self.limits_for(request)
        # Nothing may fail between this and spawn, which removes the invocation's files.
        invocation = self.prepared_invocation(request)
        held: list[ChatChunk] = []  # final chunks wait until the exit status is known
        async with process.spawn(invocation, limits) as child:
            try:
                # A read's lines at once: one step of the event loop per read, not per line.
                source = child.line_batches() if self.framing == "lines" else child.text_batches()
                async with aclosing(source) as batches:
                    async for batch in batches:
                        for piece in batch:
                            for chunk in parser.feed(piece):
                                if chunk.is_final:
                                    held.append(chunk)
                                else:
                                    yield chunk
                            if parser.finished:
                                break
                        if parser.finished:
                            break
                finished_before_exit = parser.finished
                returncode = await child.wait()
                parser.stderr = child.stderr_tail()
                for chunk in parser.close():
                    if chunk.is_final:
                        held.append(chunk)
                    else:
                        yield chunk
                error = self._outcome(parser, returncode, child.stderr_tail(), finished_before_exit)
            except RunnerError as exc:
                raise exc.with_process(
                    runner=self.name, exit_code=child.returncode, stderr=child.stderr_tail(), stopped=child.stopped
                ) from None
            if error is not None:
                if isinstance(error, AuthenticationError):
                    check_cache.forget_login(self.name)  # logged out since it was last checked
                stderr = child.stderr_tail()
                raise error.with_process(runner=self.name, exit_code=returncode, stderr=stderr, stopped=child.stopped)
        if not held:
            held.append(ChatChunk(finish_reason="stop"))
        for chunk in held:
            yield chunk

    def _outcome(self, parser: Parser, returncode: int, stderr: str, finished_before_exit: bool) -> RunnerError | None:
        if parser.error is not None:
            return parser.error
        if returncode != 0 and not (finished_before_exit and returncode < 0):
            # A negative code after complete output means llmrun stopped a lingering tool.
            return self.error_for_exit(returncode, stderr)
        must_finish = self.needs_finished_output if self.needs_finished_output is not None else self.framing == "lines"
        if not parser.finished and must_finish:
            return OutputParseError(f"{self.display_name} ended without completing its answer")
        return None

    # --- health --------------------------------------------------------------------------

    async def health(self, probe: bool = False) -> HealthReport:
        started = time.monotonic()

        def report(status: Any, **fields: Any) -> HealthReport:
            fields.setdefault("latency_ms", int((time.monotonic() - started) * 1000))
            return HealthReport(runner=self.name, status=status, **fields)

        try:
            binary = self.resolve_binary()
        except BinaryNotFound as exc:
            return report("not_installed", message=str(exc), hint=exc.hint)
        version: str | None = None
        argv = self.version_argv(binary)
        if argv is not None and (version := check_cache.version(self.name, binary, argv)) is None:
            shown = shlex.join(argv)
            try:
                result = await process.run_command(argv, env=self.env, env_remove=self.env_remove)
            except RunnerError as exc:
                return report("error", binary=binary, message=f"`{shown}` failed: {exc}")
            said = result.stdout.strip() or result.stderr.strip()
            if result.returncode != 0 or not said:
                detail = _last_line(result.stderr) or _last_line(result.stdout)
                return report("error", binary=binary, message=f"`{shown}` exited with {result.returncode}: {detail}")
            # A tool of the user's own may print its version in any form; keep what it said.
            version = parse_version(said) or said.splitlines()[0][:80]
            check_cache.remember_version(self.name, binary, argv, version)
        comparable = version is not None and version == parse_version(version)
        if self.min_version and comparable and version_tuple(version or "") < version_tuple(self.min_version):
            return report(
                "outdated",
                binary=binary,
                version=version,
                message=f"version {version} is older than {self.min_version}, the oldest llmrun supports",
                hint=f"upgrade with `{self.install_hint}`" if self.install_hint else None,
            )
        try:
            authenticated, message = await check_cache.login(self, binary)
        except RunnerError as exc:
            return report("error", binary=binary, version=version, message=f"auth check failed: {exc}")
        if authenticated is False:
            return report(
                "unauthenticated",
                binary=binary,
                version=version,
                authenticated=False,
                message=message,
                hint=self.login_hint(),
            )
        if not probe:
            return report("ok", binary=binary, version=version, authenticated=authenticated, message=message)
        probe_started = time.monotonic()
        try:
            await self.complete(ChatRequest.of("Reply with the single word: ok", timeout=120))
        except AuthenticationError as exc:
            return report(
                "unauthenticated",
                binary=binary,
                version=version,
                authenticated=False,
                message=str(exc),
                hint=self.login_hint(),
            )
        except RunnerError as exc:
            return report(
                "error",
                binary=binary,
                version=version,
                authenticated=authenticated,
                message=f"probe failed: {type(exc).__name__}: {exc}",
            )
        latency = int((time.monotonic() - probe_started) * 1000)
        return report(
            "ok", binary=binary, version=version, authenticated=True, latency_ms=latency, message="probe answered"
        )

    def login_hint(self) -> str | None:
        return None


class HistoryKeepingRunner(CliRunner):
    """A runner for a tool that keeps no sessions: llmrun keeps each conversation, for as long
    as the runner lives, and gives the tool the whole of it with each new turn."""

    max_conversations: ClassVar[int] = 64

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._conversations: OrderedDict[str, list[Message]] = OrderedDict()

    def conversation_of(self, request: ChatRequest) -> list[Message]:
        """The conversation so far with the request's new turns: what the tool is given."""
        if request.session_id is None:
            return request.conversation()
        earlier = self._conversations.get(request.session_id)
        if earlier is None:
            raise SessionNotFound(
                f"no {self.display_name} session {request.session_id!r}: the tool keeps none, and "
                "llmrun keeps its own only while the runner lives",
                runner=self.name,
            )
        return [*earlier, *new_turns(request.messages)]

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        conversation = self.conversation_of(request)
        answer: list[str] = []
        async with aclosing(super().stream(request)) as chunks:
            async for chunk in chunks:
                answer.append(chunk.delta)
                if chunk.is_final:
                    session_id = request.session_id or uuid.uuid4().hex
                    self._remember(session_id, [*conversation, Message.assistant("".join(answer))])
                    chunk = chunk.model_copy(update={"session_id": session_id})
                yield chunk

    def _remember(self, session_id: str, messages: list[Message]) -> None:
        self._conversations[session_id] = messages
        self._conversations.move_to_end(session_id)
        while len(self._conversations) > self.max_conversations:
            self._conversations.popitem(last=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
