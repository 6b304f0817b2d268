"""`llmrun chat`: one answer, or an interactive conversation on a terminal."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncGenerator, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import typer

from ..errors import InvalidRequest, ModelNotFound, SessionNotFound, UnsupportedFeature
from ..registry import get_runner, with_model_suggestion
from ..types import ChatChunk, ChatRequest, ChatResponse, ImagePart, Message, check_session_id
from . import render, selection, state

if TYPE_CHECKING:
    from ..logs import Recorder  # sqlite3 and the log load only when a turn is logged
    from ..runners.base import Runner

T = TypeVar("T")


@dataclass
class ChatOptions:
    """How answers are requested and shown."""

    model: str | None = None
    system: str | None = None
    timeout: float | None = None
    allow_tools: bool = False
    cwd: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    as_json: bool = False
    as_jsonl: bool = False
    no_stream: bool = False
    show_thinking: bool = True
    markdown: bool = False
    usage: bool = False
    json_schema: dict[str, Any] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    """ChatRequest's sampling fields (temperature, stop, ...) and strict_params, None where not given."""
    log: Recorder | None = None
    """Where each turn is logged, with the conversation it belongs to; None: not logged."""
    history: list[Message] = field(default_factory=list)
    """Earlier turns sent before the prompt: a logged conversation continued with a tool that cannot resume it."""
    images: list[ImagePart] = field(default_factory=list)
    """Images attached to the prompt (`-a`)."""

    def request(self, text: str, *, session_id: str | None) -> ChatRequest:
        from ..types import Message

        return ChatRequest(
            messages=[*self.history, Message.user(text, images=self.images)],
            model=self.model,
            system=self.system,
            timeout=self.timeout,
            session_id=session_id,
            allow_tools=self.allow_tools,
            cwd=self.cwd,
            options=dict(self.options),
            json_schema=self.json_schema,
            **{name: value for name, value in self.sampling.items() if value is not None},
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an answer; `presses` counts how often it was pressed before the run ended."""

    def __init__(self, presses: int) -> None:
        super().__init__()
        self.presses = presses


def run_interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; Ctrl-C cancels it (so its tool's process group is killed) and raises
    Interrupted once the clean-up is done. Further presses during the clean-up are counted,
    not acted on, so they cannot cut the kill short."""
    presses = 0

    async def main() -> T:
        nonlocal presses
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigint() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                task.cancel()

        previous = signal.getsignal(signal.SIGINT)
        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            installed = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals
            installed = False
        try:
            return await coro
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if presses:
            raise Interrupted(presses) from None
        raise


def parse_options(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`--option KEY VALUE` pairs; a VALUE that parses as JSON is taken as JSON (3, true, [..])."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def read_schema(given: str) -> dict[str, Any]:
    """A JSON schema given on the command line: the JSON itself, or the path of a file holding it."""
    text = given
    if not given.lstrip().startswith("{"):
        try:
            with open(given, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            problem = f"not JSON, and not a readable file: {exc.strerror}"
            raise typer.BadParameter(problem, param_hint="'--schema'") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="'--schema'") from None
    if not isinstance(schema, dict):
        raise typer.BadParameter("a JSON schema is an object", param_hint="'--schema'")
    return schema


def read_prompt(prompt: str | None) -> str:
    piped = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin
    if prompt == "-":
        if piped is None:
            raise typer.BadParameter("`-` reads the prompt from stdin, but stdin is a terminal")
        return piped.read()
    if prompt is None:
        if piped is None:
            raise typer.BadParameter("give a prompt, or pipe one on stdin")
        return piped.read()
    if piped is not None:
        context = piped.read()
        if context.strip():
            return f"{prompt}\n\n{context}"  # stdin as context after the prompt, as llm does
    return prompt


def wants_interactive(prompt: str | None, opts: ChatOptions) -> bool:
    return prompt is None and sys.stdin is not None and sys.stdin.isatty() and not (opts.as_json or opts.as_jsonl)


def choose_runner(explicit: str | None, *, continuing: bool) -> str:
    """--runner, else (with --continue) the runner of the last conversation, else the default."""
    if explicit:
        return explicit
    if continuing and (last := state.last_runner()):
        return last
    if configured := selection.configured_runner():
        return configured
    err = sys.stderr
    spinner = render.Spinner(err, "looking for a ready runner") if render.isatty(err) else None

    def progress(waiting: list[str]) -> None:
        if spinner is not None:
            spinner.label = f"looking for a ready runner: checking {', '.join(waiting)}"

    async def detect() -> str:
        if spinner is not None:
            spinner.start()
        try:
            return await selection.detect_runner(progress)
        finally:
            if spinner is not None:
                spinner.stop()

    return run_interruptible(detect())


def resolve_session(runner: Runner, session: str | None, continuing: bool, opts: ChatOptions) -> str | None:
    if continuing:
        last = state.last_conversation(runner)
        if last is None:
            raise SessionNotFound(
                f"there is no earlier conversation with {runner.name} to continue",
                runner=runner.name,
                hint=f'start one with `llmrun chat -r {runner.name} "..."`',
            )
        session = last.session_id
        opts.model = opts.model or last.model
        opts.system = opts.system or last.system
        opts.history = last.history
        if opts.log and last.conversation_id:
            opts.log.continue_conversation(last.conversation_id)
    elif session and opts.log:
        opts.log.continue_session(runner.name, session)
    if session and not runner.capabilities.sessions:
        raise UnsupportedFeature(f"{runner.display_name} keeps no sessions that llmrun can resume", runner=runner.name)
    return session


def run(
    *,
    prompt: str | None,
    runner_name: str | None,
    session: str | None,
    continuing: bool,
    opts: ChatOptions,
) -> int:
    """The whole `chat` command; returns the exit code."""
    if session and continuing:
        raise typer.BadParameter("give either --session or --continue, not both")
    if session is not None:
        try:
            check_session_id(session)  # before a runner is chosen or anything runs
        except InvalidRequest as exc:  # no tool has a session of that id
            hint = "the session_id of an answer (`--json` shows it), or -c for the last conversation"
            raise SessionNotFound(exc.message, hint=hint) from None
    interactive = wants_interactive(prompt, opts)
    text = None if interactive else read_prompt(prompt)
    if text is not None:
        selection.check_request(opts.request(text, session_id=None))  # before any tool is checked
    runner = runner_for(choose_runner(runner_name, continuing=continuing), opts)
    session_id = resolve_session(runner, session, continuing, opts)
    if interactive:
        from ..sessions import ResumingSession
        from .interactive import Conversation

        conversation = Conversation(runner, opts, session_id)
        if opts.history and isinstance(conversation.session, ResumingSession):
            conversation.session.history = list(opts.history)
        return conversation.loop()
    assert text is not None
    request = opts.request(text, session_id=session_id)
    try:
        response = run_interruptible(answer(runner, runner.stream(request), opts, model=request.model, prompt=text))
    except ModelNotFound as exc:
        raise asyncio.run(with_model_suggestion(exc, runner, request.model)) from None
    if response.session_id:  # a route's answer is continued with the runner that gave it
        state.remember(response.runner or runner.name, response.session_id, opts.model)
    return 0


def runner_for(spec: str, opts: ChatOptions) -> Runner:
    """The runner `-r` names, or a route: several runners (`claude_code,gemini/flash`) or the
    name of a `[routes.NAME]` of the config file, asked in order until one answers."""
    from ..config import load_file
    from ..routing import is_route, route_of, route_tables

    config = load_file()
    if not is_route(spec, route_tables(config)):
        return get_runner(spec)
    if opts.model:
        raise typer.BadParameter(
            "a route names each target's model itself, e.g. -r claude_code/sonnet,gemini/flash", param_hint="'--model'"
        )
    return route_of(spec, config=config)


def label_for(runner: Runner, model: str | None) -> str:
    shown = model or runner.model_when_none_asked() or "its default model"
    return f"{runner.display_name} ({shown}) is thinking"


async def answer(
    runner: Runner,
    chunks: AsyncGenerator[ChatChunk, None],
    opts: ChatOptions,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    model: str | None = None,
    prompt: str | None = None,
) -> ChatResponse:
    """Show one answer, from its chunks (a runner's or a session's stream), the way `opts`
    says; the response is returned. The stream is closed however the answer ends. With
    `opts.log`, the turn (`prompt` and its answer, or the error that ended it) is logged."""
    out = out or sys.stdout
    err = err or sys.stderr
    machine = opts.as_json or opts.as_jsonl
    whole = opts.as_json or opts.no_stream  # shown once complete, like runner.complete()
    printer = render.ChatPrinter(
        out,
        err,
        label=label_for(runner, model),
        show_text=not machine,
        show_thinking=opts.show_thinking,
        markdown=opts.markdown,
    )
    started = time.monotonic()
    collected: list[ChatChunk] = []
    log = opts.log if prompt is not None else None
    turn = log.begin(runner=runner.name, prompt=prompt or "", model=model, system=opts.system) if log else None
    printer.start()
    try:
        async with aclosing(chunks) as stream:
            async for chunk in stream:
                collected.append(chunk)
                if whole:
                    continue
                printer.chunk(chunk)
                if opts.as_jsonl:
                    out.write(chunk.model_dump_json(exclude_defaults=True) + "\n")
                    out.flush()
        response = ChatResponse.from_chunks(
            collected, runner=runner.name, duration_ms=int((time.monotonic() - started) * 1000)
        )
        if log and turn:
            log.write(turn.with_response(response))
            turn = None
        if opts.as_json:
            printer.finish()
            out.write(response.model_dump_json() + "\n")
            out.flush()
        elif opts.no_stream:
            printer.whole(response)
    except BaseException as exc:
        if log and turn:
            log.write(turn.with_error(exc, collected, int((time.monotonic() - started) * 1000)))
        raise
    finally:
        printer.finish()
    if opts.usage:
        first = printer.first_output - started if printer.first_output is not None else None
        sep = " · " if render.unicode_ok(err) else " | "
        line = render.usage_line(
            response, elapsed=time.monotonic() - started, first_output=first, runner=runner.name, sep=sep
        )
        render.print_usage(err, line)
    return response
