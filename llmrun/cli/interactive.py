"""The interactive conversation of `llmrun chat` on a terminal.

One session of the runner (`runner.session()`) holds the whole conversation. With a warm
runner one tool process answers every turn; otherwise each turn starts the tool, which
resumes its session (or is sent the history). The session, its process and its reader tasks
live on one event loop, run by a thread of its own so that the tool starts while the user
types the first message; the main thread reads the input and takes Ctrl-C.

Ctrl-C interrupts the answer in flight (the conversation, and a warm tool process, stay); a
second Ctrl-C in a row, Ctrl-D or /exit leaves, and leaving closes the session so that no
tool process is left.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TextIO, TypeVar

from ..errors import AuthenticationError, BinaryNotFound, LlmrunError, ModelNotFound
from ..registry import with_model_suggestion
from ..runners.base import Runner
from ..sessions import ResumingSession, Session
from ..totals import usage_totals
from ..types import ChatResponse
from . import render, state
from .chat import ChatOptions, Interrupted, answer

T = TypeVar("T")

HELP = """\
/model NAME  use another model from the next answer on (/model alone shows the current one)
/clear       start a new conversation
/session     show the tool's session id of this conversation
/exit        leave (also Ctrl-D, or Ctrl-C twice)
\"\"\"          on a line of its own starts and ends a message of several lines"""


class Conversation:
    """Use as `with Conversation(...) as c:`, or call `close()`: it owns a thread and a session."""

    def __init__(
        self,
        runner: Runner,
        opts: ChatOptions,
        session_id: str | None = None,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.runner = runner
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._events = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._events.run_forever, name="llmrun-chat", daemon=True)
        self._thread.start()
        self.session = self._open(session_id)
        self._starting: asyncio.Task[None] | None = None
        self._answering = False  # the turn is past the session's start, so Ctrl-C interrupts the answer

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def loop(self) -> int:
        """Read and answer until the user leaves; returns the exit code."""
        try:
            import readline  # noqa: F401 - gives input() line editing and history
        except ImportError:  # pragma: no cover - platforms without readline
            pass
        begun = usage_totals()
        try:
            self.check_ready()
            self.note(self.banner())
            self.start()
            return self._converse()
        finally:
            self.close()
            spent = usage_totals() - begun
            if self.opts.usage and spent.requests > 1:  # one answer's line already says it all
                sep = " · " if render.unicode_ok(self.err) else " | "
                render.print_usage(self.err, render.totals_line(spent, sep))

    def _converse(self) -> int:
        armed = False  # the last key was Ctrl-C: one more leaves
        while True:
            try:
                text = self.read()
            except EOFError:
                self.err.write("\n")
                return 0
            except KeyboardInterrupt:
                if armed:
                    self.err.write("\n")
                    return 130
                armed = True
                self.note("\n(Ctrl-C again to leave, or /exit)")
                continue
            armed = False
            if text is None:
                continue
            if text.startswith("/"):
                code = self.command(text)
                if code is not None:
                    return code
                continue
            try:
                self.turn(text)
            except Interrupted as exc:
                if exc.presses > 1:
                    self.note("(answer cancelled)")
                    return 130
                self.note("(answer cancelled; Ctrl-C again to leave)")
                armed = True
            except LlmrunError as exc:
                if isinstance(exc, ModelNotFound):
                    exc = self._call(with_model_suggestion(exc, self.runner, self.opts.model))
                for line in render.error_lines(exc, debug=render.flags.debug):
                    self.err.write(line + "\n")
                self.err.flush()

    def check_ready(self) -> None:
        """Refuse a tool that is not installed or not logged in before the user types a word
        (the login check is remembered for a while, so this is quick the next time)."""
        report = self._call(self.runner.health())
        name = self.runner.name
        if report.status == "not_installed":
            raise BinaryNotFound(
                report.message or f"{self.runner.display_name} is not installed", runner=name, hint=report.hint
            )
        if report.status == "unauthenticated":
            said = f": {report.message}" if report.message else ""
            raise AuthenticationError(
                f"{self.runner.display_name} is not logged in{said}", runner=name, hint=report.hint
            )

    def banner(self) -> str:
        model = self.opts.model or self.runner.default_model or "its default model"
        name = self.runner.display_name
        text = f"Chatting with {name} ({self.runner.name}), model {model}: "
        if self.session.warm:
            text += f"one {name} process for the whole conversation."
        elif self.runner.capabilities.sessions:
            text += f"{name} starts for each turn and resumes its session."
        else:
            text += f"{name} starts for each turn and is sent the history."
        if self.session.id:
            text += f" Continuing session {self.session.id}."
        return text + " /help lists commands; /exit or Ctrl-D leaves."

    def read(self) -> str | None:
        """One message; None for an empty line."""
        line = self._input("> ")
        if line.strip() == '"""':
            lines = []
            while (more := self._input("... ")).strip() != '"""':
                lines.append(more)
            line = "\n".join(lines)
        return line if line.strip() else None

    def _input(self, prompt: str) -> str:
        if render.isatty(self.out):
            return input(prompt)
        # stdout is redirected: keep it for answers only.
        self.err.write(prompt)
        self.err.flush()
        return input()

    def command(self, text: str) -> int | None:
        """Run a /command; an exit code means leave."""
        name, _, arg = text.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit", "/q"):
            return 0
        if name == "/clear":
            self.reopen(keep=False)
            if self.opts.log:
                self.opts.log.new_conversation()
            self.note("(new conversation)")
        elif name == "/model":
            if arg:
                self.opts.model = arg
                # The model is fixed when the tool starts: a new session continues this one.
                self.reopen(keep=True)
                self.note(f"(model: {arg})")
            else:
                current = self.opts.model or f"{self.runner.default_model or 'the tool default'} (default)"
                models = self.runner.known_models()
                known = ", ".join(m.id + (f" ({', '.join(m.aliases)})" if m.aliases else "") for m in models)
                self.note(f"(model: {current}" + (f"; known: {known})" if known else ")"))
        elif name == "/session":
            self.note(f"(session: {self.session.id or 'none yet'})")
        elif name in ("/help", "/?"):
            self.note(HELP)
        else:
            self.note(f"(unknown command {name}; /help lists them. Start the line with a space to send it as text)")
        return None

    def note(self, text: str) -> None:
        self.err.write((f"{render.DIM}{text}{render.RESET}" if render.color_enabled(self.err) else text) + "\n")
        self.err.flush()

    # --- the session ---------------------------------------------------------------------

    def _open(self, resume: str | None) -> Session:
        opts = self.opts
        return self.runner.session(
            model=opts.model,
            system=opts.system,
            cwd=opts.cwd,
            resume=resume,
            allow_tools=opts.allow_tools,
            options=opts.options,
            timeout=opts.timeout,
        )

    def start(self) -> None:
        """Start the tool in the background (pre-warming); a failure shows at the first turn."""
        self._starting = self._call(self._in_background(self.session.start()))

    def reopen(self, *, keep: bool) -> None:
        """Close the session and open another: on the same conversation (keep) or a new one."""
        old = self.session
        self.session = self._open(old.id if keep else None)
        if keep and old.id is None and isinstance(old, ResumingSession) and isinstance(self.session, ResumingSession):
            # A tool without sessions knows the conversation only from the history sent again.
            self.session.history = list(old.history)
        starting, self._starting = self._starting, None
        self._call(self._close_session(old, starting))
        self.start()

    def turn(self, text: str) -> None:
        """Ask and show the answer; Interrupted when Ctrl-C cut it short."""
        response, presses = self._interruptible(self._ask(text))
        if self.runner.capabilities.sessions and self.session.id:
            state.remember(self.runner.name, self.session.id, self.opts.model)
        if response.finish_reason == "cancelled":
            raise Interrupted(max(presses, 1))

    async def _ask(self, text: str) -> ChatResponse:
        starting, self._starting = self._starting, None
        if starting is not None:
            await starting  # a tool that failed to start fails this turn, with the usual error lines
        self._answering = True
        try:
            return await answer(
                self.runner,
                self.session.stream(text),
                self.opts,
                self.out,
                self.err,
                model=self.opts.model,
                prompt=text,
            )
        finally:
            self._answering = False

    def close(self) -> None:
        """Close the session (no tool process is left) and stop the loop; safe to call twice."""
        if self._events.is_closed():
            return
        try:
            self._call(self._finish())
        finally:
            self._events.call_soon_threadsafe(self._events.stop)
            self._thread.join()
            self._events.close()

    async def _finish(self) -> None:
        await self._close_session(self.session, self._starting)
        self._starting = None
        # Whatever else is left on the loop (a spinner, say) ends with it.
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    async def _close_session(self, session: Session, starting: asyncio.Task[None] | None) -> None:
        if starting is not None:
            # aclose() would miss a process that is still starting: stop the start first.
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        await session.aclose()

    # --- the loop thread -----------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the conversation's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._events).result()

    @staticmethod
    async def _in_background(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return asyncio.ensure_future(coro)

    def _interruptible(self, coro: Coroutine[Any, Any, T]) -> tuple[T, int]:
        """Run a turn on the loop and wait for it, with the number of Ctrl-C presses. The first
        press interrupts the answer (or, before it has begun, cancels the turn); the second
        cancels the turn, which then raises Interrupted."""
        presses = 0
        cancelling = False
        task: asyncio.Task[T] | None = None

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            nonlocal presses, cancelling
            presses += 1
            if presses == 1 and self._answering:
                asyncio.run_coroutine_threadsafe(self.session.interrupt(), self._events)
                return
            cancelling = True
            if task is not None:
                self._events.call_soon_threadsafe(task.cancel)

        # Taken before the turn starts, so that no press can fall between the two.
        try:
            previous = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: Ctrl-C is not ours to take
            previous = None
        try:
            task = self._call(self._in_background(coro))
            if cancelling:
                self._events.call_soon_threadsafe(task.cancel)  # pressed before the turn was in hand
            self._call(asyncio.wait({task}))
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if task.cancelled():
            raise Interrupted(max(presses, 1))
        return task.result(), presses
