"""Kimi CLI (`kimi`, PyPI `kimi-cli`), in print mode with stream-json input and output.

kimi-cli 1.51.0 is the last working release. 1.52.0 is a tombstone: every call, `--version`
included, prints "kimi-cli is no longer maintained…" and exits 0, and a bare `kimi` (no
arguments) downloads and runs an install script. llmrun never runs `kimi` bare; health
reports 1.52 as `outdated` with the fix (`pip install kimi-cli==1.51.0`), and a chat with it
raises an error instead of reading as an empty answer.

Driven as `kimi --print --input-format=stream-json --output-format=stream-json`, the prompt
on stdin as one `{"role":"user","content":…}` line. Output is one OpenAI-style message per
line, printed when each step of the agent ends (no token streaming): `role=assistant` with
`content` (a string, or a list of `text` / `think` parts) and `tool_calls`, and `role=tool`
with the result. There is no usage and no end-of-turn line there: the answer is complete
when an assistant message without tool calls has come (output that ends after a tool call
or its result was cut short). The session id is on stderr (`To resume this session: kimi
-r ID`), and the token counts of the turn are read, once kimi has exited, from the
`StatusUpdate` events kimi saved in that session's `wire.jsonl` (under `KIMI_SHARE_DIR`,
default `~/.kimi`, in `sessions/<hash of the work dir>/<id>/`).

Errors are plain text on stdout (`Error code: 401 - {…}`, `LLM not set`, `Connection
error.`), exit 1, or 75 for a retryable failure (429, 5xx, unreachable) after kimi's own
retries (`--max-retries-per-step`, a few seconds against a local server).

Locked down: print mode approves every tool call, so unless `request.allow_tools` the run
gets a private agent file (`--agent-file`, removed after the run) that extends kimi's
default agent with no tools and no subagents, and a private MCP config with no servers
(`--mcp-config-file`, in place of `~/.kimi/mcp.json`); with `allow_tools` the default
agent's tools and the user's MCP servers run unasked. The system prompt goes in that agent
file too (`ROLE_ADDITIONAL`, the slot kimi's own subagents use). The model is
`--model=NAME` (a model of `~/.kimi/config.toml`), per run. Telemetry and the self-update
are off (KIMI_DISABLE_TELEMETRY, KIMI_CLI_NO_AUTO_UPDATE). What cannot be locked down: the
rest of kimi's settings (hooks among them) come only from the user's config file
(`--config` would replace it whole), and every run is saved as a kimi session under
`~/.kimi/sessions` (or `KIMI_SHARE_DIR`).

Processes: with `allow_tools`, kimi's background tasks (a `Shell` call run in the
background, sub-agents) are workers in sessions of their own (setsid), outside kimi's process
group. kimi stops them when it exits, but not when it is killed: those carry llmrun's owner
tag (LLMRUN_OWNER), which `kill_orphaned_tools` finds. Locked down there are no such tools.

Sessions: `request.session_id` is passed as `--session=ID` and only the new turns are
sent. Beware: kimi keeps sessions per working directory, and starts a new, empty session
under an id it does not find there instead of failing, so a mistyped id (or another `cwd`)
silently loses the conversation.

No warm mode: `kimi acp` (1.51) answers `session/new` with "Authentication required"
unless a Kimi account is logged in (`kimi login`), whatever provider the config names, and
`kimi --wire` (its own JSON-RPC protocol) ends its turn when stdin closes.

Health: `kimi --version`; kimi has no login status command (its providers and keys live in
the config file), so only a probe can tell whether it is set up.

Options (`ChatRequest.options`): `max_steps` (`--max-steps-per-turn`), `max_retries`
(`--max-retries-per-step`), `thinking` (True/False: `--thinking` / `--no-thinking`), and
`extra_args` (a list appended to the command).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from .. import private, process
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
)
from ..prompting import flatten_conversation, new_turns
from ..types import AgentEvent, Capabilities, ChatChunk, ChatRequest, HealthReport, Usage
from .base import (
    CliRunner,
    Parser,
    _last_line,
    as_count,
    as_dict,
    as_list,
    as_text,
    json_object,
    parse_version,
    version_tuple,
)

INSTALL = "pip install kimi-cli==1.51.0"
SETUP_HINT = "configure a provider and a default model in ~/.kimi/config.toml, or run `kimi` and `/login`"
KEY_HINT = "check the api_key of the provider in ~/.kimi/config.toml, or run `kimi` and `/login`"
TOMBSTONE_HINT = f"kimi-cli 1.52 is an empty release; install the last working one: `{INSTALL}` (Python >= 3.12)"
NO_MCP_SERVERS = '{"mcpServers": {}}'
EXIT_RETRYABLE = 75  # kimi's EX_TEMPFAIL: 429, 5xx, connection errors, after its retries

WIRE_TAIL = 8 << 20  # the last turn of a session's wire file is found within its last 8 MiB

_SESSION = re.compile(r"To resume this session: kimi -r ([0-9A-Za-z-]+)")
_STATUS = re.compile(r"Error code: (\d{3})\b")
_TOMBSTONE = re.compile(r"kimi-cli is no longer maintained", re.I)
_CONTEXT = re.compile(r"context.{0,20}(length|window)|too many tokens|maximum context|prompt is too long", re.I)
_MODEL = re.compile(r"model.{0,80}(not found|does not exist|not exist|not available|not supported)", re.I)
_UNREACHABLE = re.compile(r"Connection error|Request timed out|empty response", re.I)


def classify(text: str) -> RunnerError | None:
    """The typed error for what kimi printed on stdout, or None when it says nothing known."""
    if _TOMBSTONE.search(text):
        return RunnerError("this kimi-cli is a tombstone release that does nothing", hint=TOMBSTONE_HINT)
    if "LLM not set" in text:
        return AuthenticationError("kimi has no model set up (LLM not set)", hint=SETUP_HINT)
    message = " ".join(line.strip() for line in text.splitlines() if line.strip())[:2000]
    if match := _STATUS.search(message):
        status = int(match.group(1))
        if status in (401, 403):
            return AuthenticationError(message, hint=KEY_HINT)
        if status == 429:
            return RateLimitError(message)
        if status >= 500:
            return ServiceUnavailable(message)
        if _CONTEXT.search(message):
            return ContextLengthExceeded(message)
        if status == 404 or _MODEL.search(message):
            return ModelNotFound(message, hint="the models kimi knows are the [models] of ~/.kimi/config.toml")
        return RunnerError(message)
    if _UNREACHABLE.search(message):
        return ServiceUnavailable(message)
    if "Max steps reached" in message or message.startswith(("Unknown error", "LLM not supported")):
        return RunnerError(message)
    return None


class KimiParser(Parser):
    """kimi's stream-json output (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.session_id: str | None = None
        self._said: list[str] = []  # the plain-text lines: kimi's errors
        self._steps = 0  # assistant messages with text so far; later ones start a new paragraph

    def feed(self, line: str) -> list[ChatChunk]:
        event = json_object(line)
        if event is None:
            if line.strip() and len(self._said) < 50:
                self._said.append(line.rstrip("\n"))
            return []
        role = event.get("role")
        if role == "assistant":
            return self._assistant(event)
        if role == "tool":
            result = AgentEvent(kind="tool_result", id=as_text(event.get("tool_call_id")), output=event.get("content"))
            return [ChatChunk(agent_event=result)]
        return []  # notifications, plans, and whatever a newer kimi adds

    def _assistant(self, event: dict[str, Any]) -> list[ChatChunk]:
        chunks: list[ChatChunk] = []
        text = ""
        content = event.get("content")
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else as_list(content):
            part = as_dict(part)
            if part.get("type") == "text" and (piece := as_text(part.get("text"))):
                text += piece
            elif part.get("type") == "think" and (thought := as_text(part.get("think"))):
                chunks.append(ChatChunk(thinking=thought))
        if text:
            chunks.append(ChatChunk(delta=("\n\n" if self._steps else "") + text))
            self._steps += 1
        calls = [as_dict(call) for call in as_list(event.get("tool_calls"))]
        for call in calls:
            function = as_dict(call.get("function"))
            arguments = function.get("arguments")
            try:
                tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
            except (ValueError, RecursionError):  # not JSON, or nested too deep to read
                tool_input = arguments
            use = AgentEvent(
                kind="tool_use", id=as_text(call.get("id")), name=as_text(function.get("name")), input=tool_input
            )
            chunks.append(ChatChunk(agent_event=use))
        # A step without tool calls ends kimi's turn: this is the answer.
        self.finished = not calls
        return chunks

    def close(self) -> list[ChatChunk]:
        if match := _SESSION.search(self.stderr):
            self.session_id = match.group(1)
        said = "\n".join(self._said)
        if not self.finished:
            self.error = classify(said)  # else the exit code, or the output cut short, tells
            return []
        return [ChatChunk(finish_reason="stop", session_id=self.session_id)]


class KimiRunner(CliRunner):
    name = "kimi"
    option_names = frozenset({"max_steps", "max_retries", "thinking", "extra_args"})
    display_name = "Kimi CLI"
    binary = "kimi"
    aliases = ("kimi-cli", "kimi_cli")
    install_hint = INSTALL
    min_version = "1.51.0"  # the first with stream-json input and the exit code 75
    capabilities = Capabilities(
        streaming=True,
        token_streaming=False,  # one message per agent step
        thinking=True,
        agent_tools=True,
        sessions=True,
        system_prompt=True,
        usage=True,
    )
    cannot_lock_down = "the user's ~/.kimi/config.toml still applies (hooks included); each run is saved as a session"
    # No default model: the default_model of ~/.kimi/config.toml applies.

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        options = request.options
        session = self.session_to_resume(request)
        turns = new_turns(request.messages) if session else request.conversation()
        prompt = json.dumps({"role": "user", "content": flatten_conversation(turns)}, ensure_ascii=False)
        # `--flag=value` throughout: a value starting with "-" must not read as a flag.
        argv = [binary, "--print", "--input-format=stream-json", "--output-format=stream-json"]
        if model := self.model_for(request):
            argv.append(f"--model={model}")
        if session:
            argv.append(f"--session={session}")
        if request.cwd:
            argv.append(f"--work-dir={request.cwd}")
        if (steps := options.get("max_steps")) is not None:
            argv.append(f"--max-steps-per-turn={int(steps)}")
        if (retries := options.get("max_retries")) is not None:
            argv.append(f"--max-retries-per-step={int(retries)}")
        if (thinking := options.get("thinking")) is not None:
            argv.append("--thinking" if thinking else "--no-thinking")
        temp_files: list[str] = []
        if agent := agent_spec(request.system_prompt(), tools=request.allow_tools):
            path = private.write_file(agent, prefix="kimi-agent-", suffix=".yaml")
            temp_files.append(path)
            argv.append(f"--agent-file={path}")
        if not request.allow_tools:
            path = private.write_file(NO_MCP_SERVERS, prefix="kimi-mcp-", suffix=".json")
            temp_files.append(path)
            argv.append(f"--mcp-config-file={path}")
        argv += [str(arg) for arg in options.get("extra_args", [])]
        return process.Invocation(
            argv=argv,
            stdin=(prompt + "\n").encode(),
            # rich folds kimi's error lines at the terminal width (80 on a pipe).
            env={"KIMI_DISABLE_TELEMETRY": "1", "KIMI_CLI_NO_AUTO_UPDATE": "1"},
            env_defaults={"COLUMNS": "10000"},
            env_remove=self.env_remove,
            cwd=request.cwd,
            temp_files=temp_files,
        )

    def new_parser(self, request: ChatRequest) -> Parser:
        return KimiParser()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        async with aclosing(super().stream(request)) as chunks:  # closing this closes the run
            async for chunk in chunks:
                if chunk.is_final and chunk.session_id:
                    usage = await asyncio.to_thread(turn_usage, self.share_dir(), chunk.session_id)
                    chunk = chunk.model_copy(update={"usage": usage})
                yield chunk

    def share_dir(self) -> Path:
        """Where kimi keeps its sessions: KIMI_SHARE_DIR, else ~/.kimi."""
        configured = self.env.get("KIMI_SHARE_DIR") or os.environ.get("KIMI_SHARE_DIR")
        return Path(configured) if configured else Path.home() / ".kimi"

    def error_for_exit(self, returncode: int, stderr: str) -> RunnerError:
        lines = [line for line in stderr.splitlines() if line.strip() and not _SESSION.search(line)]
        said = "\n".join(lines)
        if error := classify(said):
            return error
        if returncode == EXIT_RETRYABLE:
            return ServiceUnavailable(f"kimi gave up after retrying (exit 75){': ' + _last_line(said) if said else ''}")
        return super().error_for_exit(returncode, said)

    async def health(self, probe: bool = False) -> HealthReport:
        report = await super().health(probe=False)
        if report.status == "ok" and report.binary and await self._is_tombstone(report.binary, report.version):
            return report.model_copy(
                update={
                    "status": "outdated",
                    "message": f"kimi-cli {report.version} is a tombstone release: every call does nothing and exits 0",
                    "hint": TOMBSTONE_HINT,
                }
            )
        return await super().health(probe=True) if probe and report.status == "ok" else report

    async def _is_tombstone(self, binary: str, version: str | None) -> bool:
        if version is None or version != parse_version(version) or version_tuple(version) < (1, 52):
            return False
        result = await process.run_command([binary, "--version"], env=self.env, env_remove=self.env_remove)
        return bool(_TOMBSTONE.search(result.stdout + result.stderr)) or version_tuple(version)[:2] == (1, 52)

    def login_hint(self) -> str | None:
        return SETUP_HINT


def agent_spec(system: str | None, *, tools: bool) -> str | None:
    """A kimi agent file (JSON is YAML) extending the default agent: no tools unless allowed,
    the system prompt as its role; None when the default agent itself will do."""
    agent: dict[str, Any] = {"extend": "default"}
    if not tools:
        agent.update(tools=[], subagents={})
    if system:
        agent["system_prompt_args"] = {"ROLE_ADDITIONAL": system}
    if len(agent) == 1:
        return None
    return json.dumps({"version": 1, "agent": agent}, ensure_ascii=False)


def turn_usage(share_dir: Path, session_id: str) -> Usage | None:
    """The token counts of a session's last turn: the sum of the `StatusUpdate` events (one per
    step) after its `TurnBegin` in the session's wire file; None when there is no such file."""
    if not re.fullmatch(r"[0-9A-Za-z-]+", session_id):
        return None
    found = sorted(share_dir.glob(f"sessions/*/{session_id}/wire.jsonl"))
    if not found:
        return None
    try:
        with open(found[0], "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - WIRE_TAIL))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    counts = {"input_other": 0, "output": 0, "input_cache_read": 0, "input_cache_creation": 0}
    seen = False
    for line in reversed(tail.splitlines()):
        message = as_dict((json_object(line) or {}).get("message"))
        if message.get("type") == "TurnBegin":
            break
        if message.get("type") == "StatusUpdate":
            token_usage = as_dict(as_dict(message.get("payload")).get("token_usage"))
            for key in counts:
                counts[key] += as_count(token_usage.get(key)) or 0
            seen = seen or bool(token_usage)
    if not seen:
        return None
    return Usage(
        input_tokens=counts["input_other"],  # without the cached tokens, as llmrun counts them
        output_tokens=counts["output"],
        cache_read_tokens=counts["input_cache_read"],
        cache_write_tokens=counts["input_cache_creation"],
    )
