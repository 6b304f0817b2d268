"""Claude Code (`claude`), non-interactive, with stream-json input and output.

The prompt goes over stdin as one stream-json user message (never argv: visible in `ps`,
limited to 128 KiB), with any images as base64 image blocks; stdin then closes and claude
exits after its answer. This is how claude-agent-sdk runs it: without `-p` it reaches the
model about 50 ms sooner than `-p` with the prompt as text, and answers the same
(bench/command_overhead.py --real). Text streams token by token
(`--include-partial-messages`), and the built-in agent tools are off (`--tools ""`) unless
the request allows them. A session named in the request is resumed with `--resume=<id>`
(one argument, so no id is read as a flag); otherwise history is flattened into the prompt.

A model is named (`--model`) only when the request or llmrun's settings name one; otherwise
claude's own choice applies (ANTHROPIC_MODEL, the `model` of its settings, else its
default), and the response names the model that answered.

Sampling parameters: Claude Code takes none of them, so llmrun holds `max_tokens` and names
the others as ignored. CLAUDE_CODE_MAX_OUTPUT_TOKENS caps each API request, not the answer:
at the cap claude asks the model to go on, three times, and then fails the run. Temperature
and top_p could only be forced into the request's body (CLAUDE_CODE_EXTRA_BODY), which the
API refuses while thinking is on (claude always turns it on) and, for its newer models, at all.

Options (`ChatRequest.options`): `permission_mode`, `max_turns`, `effort`,
`max_budget_usd`, `fallback_model`, and `extra_args` (a list appended to the command).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .. import private, process
from ..errors import ProcessFailed, RunnerError, SessionNotFound
from ..prompting import new_turns, prompt_for
from ..types import Capabilities, ChatChunk, ChatRequest
from .base import CliRunner, Parser
from .stream_json import StreamJsonParser, user_line

if TYPE_CHECKING:
    from ..sessions import SessionSettings
    from ..transports.base import WarmConnection

# Longer system prompts go through a file: argv is visible to every user and bounded.
SYSTEM_PROMPT_ARGV_LIMIT = 16 * 1024

OPTION_FLAGS = {
    "permission_mode": "--permission-mode",
    "max_turns": "--max-turns",
    "effort": "--effort",
    "max_budget_usd": "--max-budget-usd",
    "fallback_model": "--fallback-model",
}


# With --json-schema, claude answers through this tool of its own; its input is the answer.
STRUCTURED_OUTPUT_TOOL = "StructuredOutput"


class ClaudeParser(StreamJsonParser):
    """stream-json, plus claude's structured output when the request has a JSON schema.

    Claude then writes a preamble ("I will return ...") and calls its StructuredOutput
    tool; the `result` line holds the validated object. The answer is that object as JSON
    text with finish_reason "stop": the preamble is held back (it cannot be taken back once
    streamed), and the tool's call and result are no agent events. Without a structured
    output (claude gave up), the held text is the answer.
    """

    login_hint = "run `claude auth login`, or set ANTHROPIC_API_KEY"

    def __init__(self, *, structured: bool = False) -> None:
        super().__init__()
        self.structured = structured
        self._held_text: list[str] = []
        self._structured_call_ids: set[str | None] = set()
        self._structured_output: str | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        chunks = super().feed(line)
        return self._structured_answer(chunks) if self.structured else chunks

    def _result(self, event: dict[str, Any]) -> list[ChatChunk]:
        if self.structured and "structured_output" in event:
            self._structured_output = json.dumps(event["structured_output"], ensure_ascii=False)
        return super()._result(event)

    def _structured_answer(self, chunks: list[ChatChunk]) -> list[ChatChunk]:
        out: list[ChatChunk] = []
        for chunk in chunks:
            event = chunk.agent_event
            if event is not None and event.kind == "tool_use" and event.name == STRUCTURED_OUTPUT_TOOL:
                self._structured_call_ids.add(event.id)
            elif event is not None and event.kind == "tool_result" and event.id in self._structured_call_ids:
                pass
            elif chunk.delta:
                self._held_text.append(chunk.delta)
                rest = chunk.model_copy(update={"delta": ""})
                if rest != ChatChunk():
                    out.append(rest)
            elif chunk.is_final:
                answer = self._structured_output
                if text := answer if answer is not None else "".join(self._held_text):
                    out.append(ChatChunk(delta=text))
                out.append(chunk if answer is None else chunk.model_copy(update={"finish_reason": "stop"}))
            else:
                out.append(chunk)
        return out


class ClaudeCodeRunner(CliRunner):
    name = "claude_code"
    option_names = frozenset({*OPTION_FLAGS, "extra_args"})
    display_name = "Claude Code"
    binary = "claude"
    aliases = ("claude",)
    # No default model: claude's own choice applies (see tool_default_model).
    install_hint = "npm install -g @anthropic-ai/claude-code"
    min_version = "2.0.0"
    # Set when llmrun itself runs inside Claude Code; the child would refuse to start.
    env_remove = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT", "CLAUDE_AGENT_SDK_VERSION")
    capabilities = Capabilities(
        streaming=True,
        token_streaming=True,
        thinking=True,
        agent_tools=True,
        sessions=True,
        warm=True,
        system_prompt=True,
        images=True,
        json_schema=True,
        usage=True,
        cost=True,
    )
    builtin_models = (
        ("claude-sonnet-5", ("sonnet",)),
        ("claude-opus-4-8", ("opus",)),
        ("claude-haiku-4-5-20251001", ("haiku",)),
        ("claude-fable-5", ("fable",)),
    )

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        session = self.session_to_resume(request)  # checked before any file is written
        argv = [binary, "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
        argv += ["--input-format", "stream-json"]
        if model := self.model_for(request):
            argv += ["--model", model]
        if not request.allow_tools:
            argv += ["--tools", ""]
        temp_files: list[str] = []
        if system := request.system_prompt():
            if len(system.encode()) <= SYSTEM_PROMPT_ARGV_LIMIT:
                argv += ["--system-prompt", system]
            else:
                path = private.write_file(system, prefix="system-", suffix=".txt")
                temp_files.append(path)
                argv += ["--system-prompt-file", path]
        if session:
            argv.append(f"--resume={session}")  # one argument: the id can never be read as a flag
        prompt = prompt_for(request)
        if request.json_schema is not None:
            argv += ["--json-schema", json.dumps(request.json_schema)]
        for key, flag in OPTION_FLAGS.items():
            if key in request.options:
                argv += [flag, str(request.options[key])]
        turns = new_turns(request.messages) if session else request.conversation()
        images = [image for message in turns for image in message.images]
        stdin = user_line(prompt, images, None, runner=self.name)
        argv += [str(arg) for arg in request.options.get("extra_args", [])]
        return process.Invocation(
            argv=argv,
            stdin=stdin,
            env_remove=self.env_remove,
            # Claude retries 5xx/429 for minutes by default; a bounded count fails in seconds.
            env_defaults={"CLAUDE_CODE_MAX_RETRIES": "2"},
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def tool_default_model(self) -> str | None:
        """ANTHROPIC_MODEL, else the `model` of claude's user settings: what claude runs
        when no --model is given (None: its built-in default)."""
        if model := self.env.get("ANTHROPIC_MODEL") or os.environ.get("ANTHROPIC_MODEL"):
            return model
        config_dir = self.env.get("CLAUDE_CONFIG_DIR") or os.environ.get("CLAUDE_CONFIG_DIR")
        path = os.path.join(config_dir or os.path.join(os.path.expanduser("~"), ".claude"), "settings.json")
        try:
            with open(path, encoding="utf-8") as fh:
                settings = json.load(fh)
        except (OSError, ValueError, RecursionError):
            return None
        model = settings.get("model") if isinstance(settings, dict) else None
        return model if isinstance(model, str) and model else None

    def new_parser(self, request: ChatRequest) -> Parser:
        return ClaudeParser(structured=request.json_schema is not None)

    def warm_connection(self, settings: SessionSettings, resume: str | None) -> WarmConnection:
        from ..transports.stream_json_input import StreamJsonInput

        # The one-shot command line is already the streaming one; the session keeps stdin open.
        invocation = self.prepared_invocation(settings.request([], session_id=resume))
        return StreamJsonInput(self, invocation, settings, resume, new_parser=ClaudeParser)

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        # stream-json reports a bad --resume id as a failed result; this covers older builds
        # that print it on stderr only.
        if "No conversation found" in stderr:
            return SessionNotFound(stderr.strip().splitlines()[-1])
        if "requires --verbose" in stderr or "unknown option" in stderr:
            return ProcessFailed(
                f"this claude does not accept llmrun's flags: {stderr.strip()[:300]}",
                hint=f"upgrade with `{self.install_hint}`",
            )
        return super().error_for_exit(returncode, stderr)

    async def check_auth(self, binary: str) -> tuple[bool | None, str]:
        result = await process.run_command([binary, "auth", "status"], env_remove=self.env_remove)
        try:
            status = json.loads(result.stdout)
        except (ValueError, RecursionError):
            status = None
        if not isinstance(status, dict):
            return (result.returncode == 0), result.stdout.strip() or result.stderr.strip()
        logged_in = bool(status.get("loggedIn"))
        method = status.get("authMethod") or "none"
        return logged_in, f"auth method: {method}" if logged_in else "not logged in"

    def login_hint(self) -> str | None:
        return ClaudeParser.login_hint
