"""MCP: the runners as tools of an MCP client such as Claude Code, Gemini CLI or Codex.

Three tools: `prompt` asks a runner and answers with its text, plus (as structured
content) the runner, the model, the usage, the finish reason and a `session` that
continues the conversation; `list_runners` lists the runners and their models; `health`
checks them. Errors are tool errors (`isError`) that carry llmrun's message and hint.

`llmrun mcp` serves them over stdio and runs the tools itself, as `llmrun chat` does: a
`session` there is the tool's own session id, resumed as `llmrun chat --session` resumes
it. The daemon serves them over streamable HTTP at /mcp (server/mcp_api.py), where runs
go through its engine.

Locked down like everything else: the asked tool's own agent tools (shell, file edits)
stay off unless the server was started allowing them. While a tool streams, the call
reports progress. A call the client cancels, or whose client goes away (stdio) or ends its
session (HTTP), closes the run, which kills the tool's process group.

Built on the SDK's `MCPServer` (mcp 2.x; FastMCP of 1.x): tools are typed functions, and
their argument and output schemas come from the annotations.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__, registry
from .cli import selection
from .errors import InvalidRequest, LlmrunError, UnsupportedFeature
from .runners.base import CliRunner, Runner
from .types import ChatChunk, ChatRequest, ChatResponse, HealthReport, Message, Usage, check_session_id

PROGRESS_INTERVAL = 1.0
"""Seconds between progress notifications while a tool streams: enough for a client to
show that the run lives, few enough not to flood it with one per token."""

INSTRUCTIONS = (
    "Ask the AI command-line tools installed on this machine (Claude Code, Codex, Gemini CLI, "
    "Qwen Code, ...) through llmrun: `prompt` asks one, for a second opinion or a task of its own; "
    "`list_runners` says which are installed and which models they know; `health` checks them."
)


# --- what the tools answer ----------------------------------------------------------------


class PromptResult(BaseModel):
    """`prompt`'s structured content. It carries the answer too: some clients (Claude Code
    2.1) give the model a result's structured content instead of its text."""

    answer: str
    runner: str
    model: str | None = Field(description="the model that answered, as the tool reports it")
    session: str | None = Field(
        description="pass as `session` (with the same runner) to continue this conversation; "
        "null when the runner keeps no sessions"
    )
    finish_reason: str
    usage: Usage
    cost_usd: float | None = None


class RunnerInfo(BaseModel):
    name: str
    display_name: str
    installed: bool
    default_model: str | None
    models: list[str]
    sessions: bool = Field(description="whether `session` continues its conversations")


class RunnerList(BaseModel):
    default_runner: str | None = Field(description="the runner `prompt` asks when none is named")
    runners: list[RunnerInfo]


class HealthResult(BaseModel):
    ok: bool = Field(description="every checked runner is installed, current and logged in")
    reports: list[HealthReport]


# --- where the runs come from -------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    prompt: str
    runner: str | None = None
    model: str | None = None
    session: str | None = None
    cwd: str | None = None
    system: str | None = None

    def request(self) -> ChatRequest:
        cwd = None
        if self.cwd:
            cwd = os.path.abspath(os.path.expanduser(self.cwd))
            if not os.path.isdir(cwd):
                raise InvalidRequest(f"cwd {self.cwd!r} is not a directory")
        return ChatRequest(messages=[Message.user(self.prompt)], model=self.model, system=self.system, cwd=cwd)


@dataclass
class Run:
    """A started run: its runner, its chunks, and how its answer names the session to continue."""

    runner: Runner
    chunks: AsyncGenerator[ChatChunk, None]
    session_after: Callable[[ChatResponse], str | None]


class Backend(Protocol):
    """Where the runs come from, and what the tools know about the runners."""

    allow_tools: bool

    def names(self) -> list[str]: ...

    def runner(self, name: str) -> Runner: ...

    def installed(self, runner: Runner) -> bool: ...

    async def default_runner(self) -> str: ...

    async def health(self, names: list[str]) -> list[HealthReport]: ...

    async def start(self, question: Question) -> Run: ...


class LocalBackend:
    """Runs the tools directly, as `llmrun chat` does (`llmrun mcp`); the daemon's backend
    (server/mcp_api.py) runs them through its engine instead."""

    def __init__(self, *, runner: str | None = None, allow_tools: bool = False, timeout: float | None = None) -> None:
        self.allow_tools = allow_tools
        self.timeout = timeout
        self._default = runner
        self._made: dict[str, Runner] = {}

    def names(self) -> list[str]:
        return registry.runner_names()

    def runner(self, name: str) -> Runner:
        key = registry.canonical_name(name)
        if key not in self._made:
            self._made[key] = registry.get_runner(key)
        return self._made[key]

    def installed(self, runner: Runner) -> bool:
        if not isinstance(runner, CliRunner):
            return True  # nothing to find on PATH
        try:
            runner.resolve_binary()
        except LlmrunError:
            return False
        return True

    async def default_runner(self) -> str:
        """`--runner`, else $LLMRUN_RUNNER or the config file's, else the first ready one."""
        if self._default is None:
            self._default = selection.configured_runner() or await selection.detect_runner()
        return self._default

    async def health(self, names: list[str]) -> list[HealthReport]:
        return await selection.check_all(names)

    async def start(self, question: Question) -> Run:
        runner = self.runner(question.runner or await self.default_runner())
        request = question.request().model_copy(update={"allow_tools": self.allow_tools, "timeout": self.timeout})
        if question.session:
            check_session_id(question.session, runner=runner.name)
            if not runner.capabilities.sessions:
                raise UnsupportedFeature(
                    f"{runner.display_name} keeps no sessions that llmrun can resume", runner=runner.name
                )
            request = request.model_copy(update={"session_id": question.session})
        sessions = runner.capabilities.sessions
        return Run(runner, runner.stream(request), lambda response: response.session_id if sessions else None)


# --- the tools ----------------------------------------------------------------------------


def build_server(backend: Backend) -> MCPServer:
    """The MCP server with llmrun's tools over `backend`."""
    # The SDK configures the root logger (if nothing did) at this level: warnings only.
    server: MCPServer = MCPServer("llmrun", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    lockdown = (
        "The tool may use its own agent tools (shell, file edits)."
        if backend.allow_tools
        else "The tool answers as a plain chat model: its own agent tools (shell, file edits) are off."
    )

    def loadable() -> list[Runner]:
        """Every runner that loads; one that cannot (a broken plugin) is left out, and `health` of it says why."""
        found = []
        for name in backend.names():
            try:
                found.append(backend.runner(name))
            except LlmrunError:
                continue
        return found

    @server.tool(
        description="Ask another AI tool on this machine (a runner: claude_code, codex, gemini, ...; see "
        "list_runners) and return its answer. Without `runner`, the default runner answers. To continue a "
        f"conversation, pass the `session` of an earlier answer, with the same runner. {lockdown}",
        annotations=ToolAnnotations(read_only_hint=not backend.allow_tools, open_world_hint=True),
    )
    async def prompt(
        prompt: Annotated[str, Field(description="what to ask")],
        ctx: Context,
        runner: Annotated[str | None, Field(description="runner name or alias; default: the default runner")] = None,
        model: Annotated[str | None, Field(description="model or alias, as the tool knows it")] = None,
        session: Annotated[str | None, Field(description="`session` of an earlier answer, to continue it")] = None,
        cwd: Annotated[str | None, Field(description="working directory for the tool")] = None,
        system: Annotated[str | None, Field(description="system prompt")] = None,
    ) -> Annotated[CallToolResult, PromptResult]:
        question = Question(prompt, runner or None, model or None, session or None, cwd or None, system or None)
        try:
            run = await backend.start(question)
            started = time.monotonic()
            chunks = await collect(run, ctx)
            response = ChatResponse.from_chunks(
                chunks, runner=run.runner.name, duration_ms=int((time.monotonic() - started) * 1000)
            )
        except LlmrunError as exc:
            return failed(exc)
        result = PromptResult(
            answer=response.content,
            runner=run.runner.name,
            model=response.model or question.model or run.runner.default_model,
            session=run.session_after(response),
            finish_reason=response.finish_reason,
            usage=response.usage,
            cost_usd=response.cost_usd,
        )
        return CallToolResult(content=[text(response.content)], structured_content=result.model_dump(mode="json"))

    @server.tool(
        description="The runners llmrun knows: installed or not, their default and known models, whether "
        "they keep sessions, and which one `prompt` asks by default.",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def list_runners() -> Annotated[CallToolResult, RunnerList]:
        found = [
            RunnerInfo(
                name=runner.name,
                display_name=runner.display_name,
                installed=backend.installed(runner),
                default_model=runner.default_model,
                models=[m.id for m in runner.known_models()],
                sessions=runner.capabilities.sessions,
            )
            for runner in loadable()
        ]
        try:
            default: str | None = await backend.default_runner()
        except LlmrunError:
            default = None  # no runner is ready; `health` says why
        return structured(RunnerList(default_runner=default, runners=found))

    @server.tool(
        description="Check that runners are installed, current and logged in: one runner, or every installed one.",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def health(
        runner: Annotated[str | None, Field(description="runner name or alias; default: every installed one")] = None,
    ) -> Annotated[CallToolResult, HealthResult]:
        try:
            if runner:
                names = [backend.runner(runner).name]
            else:
                names = [found.name for found in loadable() if backend.installed(found)]
            reports = await backend.health(names)
        except LlmrunError as exc:
            return failed(exc)
        return structured(HealthResult(ok=bool(reports) and all(r.ok for r in reports), reports=reports))

    return server


async def collect(run: Run, ctx: Context) -> list[ChatChunk]:
    """The run's chunks; progress goes to the client at most every PROGRESS_INTERVAL seconds.
    However the call ends (a cancellation included), the run is closed and its tool killed."""
    chunks: list[ChatChunk] = []
    characters = 0
    reported = float("-inf")
    async with aclosing(run.chunks) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            characters += len(chunk.delta)
            now = time.monotonic()
            if now - reported >= PROGRESS_INTERVAL:
                reported = now
                await ctx.report_progress(len(chunks), None, f"{run.runner.display_name}: {characters} characters")
    return chunks


def text(value: str) -> TextContent:
    return TextContent(type="text", text=value)


def structured(result: BaseModel) -> CallToolResult:
    """A result whose text is its JSON, for clients that read only the text."""
    return CallToolResult(content=[text(result.model_dump_json())], structured_content=result.model_dump(mode="json"))


def failed(exc: LlmrunError) -> CallToolResult:
    """A tool error the calling model can act on: what failed, and how to fix it."""
    lines = [f"{type(exc).__name__}: {exc}"]
    lines += [f"hint: {line}" for line in (exc.hint or "").splitlines() if line.strip()]
    return CallToolResult(content=[text("\n".join(lines))], is_error=True)


def serve_stdio(backend: Backend) -> None:
    """Serve MCP on stdin/stdout until the client closes them (`llmrun mcp`)."""
    import anyio

    from . import private

    server = build_server(backend)
    with private.cleanup_on_signals():
        anyio.run(server.run_stdio_async)
