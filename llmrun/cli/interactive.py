"""The interactive conversation of `llmrun chat` on a terminal.

Context is kept by the tool's own session where the runner has sessions (each turn resumes
the session the previous answer reported), otherwise by sending the history with every turn.
Ctrl-C cancels the answer in flight (its process group is killed); a second Ctrl-C in a row,
Ctrl-D or /exit leaves.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..errors import LlmrunError
from ..runners.base import Runner
from ..types import Message
from . import render, state
from .chat import ChatOptions, Interrupted, answer, run_interruptible

HELP = """\
/model NAME  use another model from the next answer on (/model alone shows the current one)
/clear       start a new conversation
/session     show the tool's session id of this conversation
/exit        leave (also Ctrl-D, or Ctrl-C twice)
\"\"\"          on a line of its own starts and ends a message of several lines"""


class Conversation:
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
        self.session_id = session_id
        self.history: list[Message] = []
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def loop(self) -> int:
        """Read and answer until the user leaves; returns the exit code."""
        try:
            import readline  # noqa: F401 - gives input() line editing and history
        except ImportError:  # pragma: no cover - platforms without readline
            pass
        self.note(self.banner())
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
                for line in render.error_lines(exc, debug=render.flags.debug):
                    self.err.write(line + "\n")
                self.err.flush()

    def banner(self) -> str:
        model = self.opts.model or self.runner.default_model or "its default model"
        text = f"Chatting with {self.runner.display_name} ({self.runner.name}), model {model}."
        if self.session_id:
            text += f" Continuing session {self.session_id}."
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
            self.session_id = None
            self.history = []
            self.note("(new conversation)")
        elif name == "/model":
            if arg:
                self.opts.model = arg
                self.note(f"(model: {arg})")
            else:
                current = self.opts.model or f"{self.runner.default_model or 'the tool default'} (default)"
                models = self.runner.known_models()
                known = ", ".join(m.id + (f" ({', '.join(m.aliases)})" if m.aliases else "") for m in models)
                self.note(f"(model: {current}" + (f"; known: {known})" if known else ")"))
        elif name == "/session":
            self.note(f"(session: {self.session_id or 'none yet'})")
        elif name in ("/help", "/?"):
            self.note(HELP)
        else:
            self.note(f"(unknown command {name}; /help lists them. Start the line with a space to send it as text)")
        return None

    def turn(self, text: str) -> None:
        sessions = self.runner.capabilities.sessions
        if sessions and self.session_id:
            request = self.opts.request(text, session_id=self.session_id)
        else:
            request = self.opts.request(text, session_id=None, history=self.history)
        response = run_interruptible(answer(self.runner, request, self.opts, self.out, self.err))
        self.history += [Message.user(text), Message.assistant(response.content)]
        if sessions and response.session_id:
            self.session_id = response.session_id
            state.remember(self.runner.name, response.session_id, self.opts.model)

    def note(self, text: str) -> None:
        self.err.write((f"{render.DIM}{text}{render.RESET}" if render.color_enabled(self.err) else text) + "\n")
        self.err.flush()
