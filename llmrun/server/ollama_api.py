"""The Ollama API: `/api/chat`, `/api/generate` and the model listings, over the same turn engine.

Answers stream as NDJSON (one JSON object a line) unless the request says `"stream": false`;
the last line has `done: true`, `done_reason` and the counts and durations (nanoseconds).
While a tool is silent before its first chunk, the stream sends chunks with empty content
and `done: false`: every Ollama client decodes every line as JSON, so an empty line or a
comment would break them. An error before the stream opens is `{"error": "..."}` with its
HTTP status (404 for an unknown model, as Ollama answers); after, it is one such line.

Models are named as in `/v1/models` (`runner/model` or an alias); Ollama's `:latest` tag is
dropped. `format` ("json" or a JSON schema) asks for structured output, `tools` go through
llmrun's tool emulation and come back as `message.tool_calls` with arguments as an object,
images are base64 strings, `think: false` leaves the tool's thinking out. Of `options`,
`temperature`, `top_p`, `top_k`, `seed`, `stop`, the penalties and `num_predict` (as
max_tokens) are the request's sampling parameters (llmrun/parameters.py: honoured, or named
in the x-llmrun-ignored-params header); the others (context size, GPU) and `keep_alive` are
accepted and left to the tool, which decides them. A generate request with
an empty prompt answers at once with `done_reason: "load"`, as Ollama does to preload a model.

What cannot work is refused clearly: a generate `template` (the tools format their own
prompts), a `context` of token ids (llmrun has none to give; conversations continue through
/api/chat), and the endpoints that manage model files or embeddings (501).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__, openai_format
from ..errors import InvalidRequest, LlmrunError, UnsupportedFeature
from ..images import is_data_url
from ..runners.base import Runner
from ..types import ChatChunk, ChatRequest, ChatResponse, ImagePart, Message, ToolCall, Usage
from . import attachments, conversations
from .common import check_fields, error_headers, expect, expect_list, model_name, public_message, tool_schema
from .openai_api import function_tools

if TYPE_CHECKING:
    from .app import ServerState

NDJSON = "application/x-ndjson"

OLLAMA_VERSION = "0.12.0"
"""The Ollama release whose API llmrun follows: clients decide by /api/version whether a
server has tools, structured output or thinking, all of which llmrun serves."""

EPOCH = "1970-01-01T00:00:00Z"


def is_ollama_path(path: str) -> bool:
    return path.startswith("/api/")


class NotServed(LlmrunError):
    """An Ollama endpoint that llmrun does not provide: it manages no model files and has no embeddings."""

    http_status = 501


def error_response_parts(exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
    return exc.http_status, {"error": public_message(exc)}, error_headers(exc)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def _now() -> str:
    """RFC 3339 in UTC, as Ollama's `created_at`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- requests -----------------------------------------------------------------------------


@dataclass
class Parsed:
    request: ChatRequest
    model: str
    """The model as the client named it, echoed back."""
    stream: bool
    thinking: bool
    """Whether the tool's thinking is passed on (all but `think: false`)."""
    load_only: bool
    """Nothing to answer (no messages, or an empty prompt): Ollama then just loads the model."""
    unload: bool


# The JSON type of each field read here (besides model, messages and prompt).
COMMON_FIELDS = {
    "stream": "boolean",
    "format": "string|object",
    "options": "object",
    "think": "boolean|string",
    "keep_alive": "string|number",
}
CHAT_FIELDS = {**COMMON_FIELDS, "tools": "array"}
GENERATE_FIELDS = {
    **COMMON_FIELDS,
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "array",
    "raw": "boolean",
    "images": "array",
}
OPTION_FIELDS = {**openai_format.SAMPLING_FIELDS, "stop": "array", "num_predict": "integer"}


def resolvable_name(model: str) -> str:
    """The name to resolve: Ollama clients may add the default tag `:latest` to any name."""
    return model.removesuffix(":latest") or model


def parse_chat(body: dict[str, Any]) -> Parsed:
    check_fields(body, CHAT_FIELDS)
    raw_messages = body.get("messages") or []
    messages = _messages(expect_list(raw_messages, "messages"))
    request = ChatRequest(messages=messages, tools=function_tools(body.get("tools")), **_settings(body))
    return _parsed(body, request, load_only=not messages)


def parse_generate(body: dict[str, Any]) -> Parsed:
    check_fields(body, GENERATE_FIELDS)
    if body.get("template"):
        raise UnsupportedFeature(
            "`template` is not supported: the tools format their own prompts",
            hint="send the prompt as it is, or use /api/chat with messages",
        )
    if body.get("context"):
        raise UnsupportedFeature(
            "`context` is not supported: llmrun has no token ids to continue from",
            hint="continue a conversation through /api/chat with its messages",
        )
    prompt = str(body.get("prompt") or "")
    images = _images(body.get("images"), "images")
    suffix = body.get("suffix")
    system = None if body.get("raw") else body.get("system") or None  # raw: the prompt alone, as Ollama does
    if suffix:
        system = "\n\n".join(s for s in (system, FILL_IN_THE_MIDDLE) if s)
        prompt = f"<prefix>{prompt}</prefix><suffix>{suffix}</suffix>"
    request = ChatRequest(messages=[Message.user(prompt, images=images)], system=system, **_settings(body))
    return _parsed(body, request, load_only=not prompt and not images)


FILL_IN_THE_MIDDLE = (
    "Fill in the middle: reply with exactly the text that belongs between the <prefix> and the "
    "<suffix> given, and nothing else (no repetition of either, no explanation, no code fences)."
)


def _parsed(body: dict[str, Any], request: ChatRequest, *, load_only: bool) -> Parsed:
    keep_alive = body.get("keep_alive")
    return Parsed(
        request=request,
        model=model_name(body.get("model")),
        stream=body.get("stream") is not False,
        thinking=body.get("think") is not False,
        load_only=load_only,
        unload=keep_alive in (0, "0", "0s", "0m"),
    )


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The ChatRequest fields of `options` and `format`."""
    options = body.get("options") or {}
    check_fields(options, OPTION_FIELDS)
    num_predict = options.get("num_predict")
    return {
        **openai_format.sampling(options),
        # A negative num_predict means no limit.
        "max_tokens": num_predict if isinstance(num_predict, int) and num_predict > 0 else None,
        "json_schema": _format(body.get("format")),
    }


def _format(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if raw == "json":
        return {"type": "object"}
    if isinstance(raw, str):
        raise InvalidRequest(f'`format` must be "json" or a JSON schema, got {raw!r}')
    return tool_schema(raw, "format")


def _messages(raw: list[Any]) -> list[Message]:
    out: list[Message] = []
    unanswered: list[ToolCall] = []  # the last assistant message's calls no result has answered yet
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        item = expect(item, dict, where)
        role = item.get("role")
        text = item.get("content") or ""
        if not isinstance(text, str):
            raise InvalidRequest(f"`{where}.content` must be a string")
        if role == "system":
            out.append(Message.system(text))
        elif role == "user":
            out.append(Message.user(text, images=_images(item.get("images"), f"{where}.images")))
        elif role == "assistant":
            calls = _tool_calls(item.get("tool_calls"), where, index)
            out.append(Message.assistant(text, tool_calls=calls or None))
            unanswered = list(calls)
        elif role == "tool":
            name = item.get("tool_name") or item.get("name")
            call = _answered(unanswered, item.get("tool_call_id"), name)
            name = name if isinstance(name, str) and name else (call.name if call else None)
            out.append(Message(role="tool", content=text, tool_call_id=call.id if call else None, name=name))
        else:
            raise InvalidRequest(f"{where}: unknown role {role!r}")
    return out


def _tool_calls(raw: Any, where: str, index: int) -> list[ToolCall]:
    if raw is None:
        return []
    calls = []
    for number, call in enumerate(expect_list(raw, f"{where}.tool_calls")):
        call = expect(call, dict, f"{where}.tool_calls[]")
        function = expect(call.get("function"), dict, f"{where}.tool_calls[].function")
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):  # some clients send OpenAI's JSON text
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise InvalidRequest(f"{where}: tool call arguments are not JSON") from None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"`{where}.tool_calls[].function.arguments` must be an object")
        # Ids by position when the client sends none, so that the same history gives the same ids.
        given = call.get("id")
        call_id = given if isinstance(given, str) and given else f"call_{index}_{number}"
        calls.append(ToolCall(id=call_id, name=str(function.get("name") or ""), arguments=arguments))
    return calls


def _answered(unanswered: list[ToolCall], call_id: Any, name: Any) -> ToolCall | None:
    """The call a tool result answers: by id, else the first unanswered one of its name, else the first."""
    found = next((c for c in unanswered if c.id == call_id), None)
    found = found or next((c for c in unanswered if c.name == name), None)
    found = found or (unanswered[0] if unanswered else None)
    if found is not None:
        unanswered.remove(found)
    return found


# Leading bytes of the image formats llmrun passes on (Ollama's images carry no media type).
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def _media_type(data: str) -> str | None:
    try:
        head = base64.b64decode(data[:16], validate=True)
    except (binascii.Error, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _images(raw: Any, where: str) -> list[ImagePart]:
    images: list[ImagePart] = []
    for item in expect_list(raw, where) if raw is not None else []:
        if not isinstance(item, str) or not item:
            raise InvalidRequest(f"`{where}` must be base64 strings")
        if is_data_url(item):
            images.append(attachments.image_from_url(item, where, fetch_image_urls=False))
            continue
        media_type = _media_type(item)
        if media_type is None:
            raise InvalidRequest(f"{where}: an image is not base64 PNG, JPEG, GIF or WebP data")
        images.append(attachments.image_from_base64(item, media_type, where))
    return images


# --- responses ----------------------------------------------------------------------------


def _done_reason(finish: str | None) -> str:
    return "length" if finish == "length" else "stop"


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {"function": {"name": call.name, "arguments": call.arguments}}


class _Output:
    """What chat and generate answers share: timing, counts, the final line, errors."""

    media_type = NDJSON

    def __init__(self, model: str, *, thinking: bool = True) -> None:
        self.model = model
        self.thinking = thinking
        self._started = time.monotonic_ns()
        self._first: int | None = None  # when the first chunk came
        self._finish: str | None = None
        self._usage = Usage()

    def _piece(self, text: str, thinking: str, calls: list[ToolCall], *, done: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _head(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": _now()}

    def _stats(self, finish: str | None, usage: Usage) -> dict[str, Any]:
        end = time.monotonic_ns()
        first = self._first or self._started  # unknown without a stream: all of it counts as generation
        # Clients divide counts by durations: none may be 0.
        return {
            "done_reason": _done_reason(finish),
            "total_duration": max(1, end - self._started),
            "load_duration": 0,
            "prompt_eval_count": usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
            "prompt_eval_duration": max(1, first - self._started),
            "eval_count": usage.output_tokens,
            "eval_duration": max(1, end - first),
        }

    def error(self, exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
        return error_response_parts(exc)

    def body(self, response: ChatResponse) -> dict[str, Any]:
        thinking = response.thinking if self.thinking else ""
        out = self._piece(response.content, thinking, response.tool_calls, done=True)
        return {**out, **self._stats(response.finish_reason, response.usage)}

    def loaded(self, *, unload: bool) -> dict[str, Any]:
        """The answer to a request with nothing to answer."""
        return {**self._piece("", "", [], done=True), "done_reason": "unload" if unload else "load"}

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: ChatChunk) -> bytes:
        self._first = self._first or time.monotonic_ns()
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        thinking = chunk.thinking if self.thinking else ""
        calls = [chunk.tool_call] if chunk.tool_call is not None else []
        if not (chunk.delta or thinking or calls):
            return b""
        return _line(self._piece(chunk.delta, thinking, calls, done=False))

    def finish(self) -> bytes:
        return _line({**self._piece("", "", [], done=True), **self._stats(self._finish, self._usage)})

    def error_event(self, exc: LlmrunError) -> bytes:
        return _line({"error": public_message(exc)})

    def keepalive(self) -> bytes:
        return _line(self._piece("", "", [], done=False))


class ChatOutput(_Output):
    """An /api/chat answer: the text, thinking and tool calls in `message`."""

    def _piece(self, text: str, thinking: str, calls: list[ToolCall], *, done: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [_tool_call_json(call) for call in calls]
        return {**self._head(), "message": message, "done": done}


class GenerateOutput(_Output):
    """An /api/generate answer: the text in `response`, thinking in `thinking`."""

    def _piece(self, text: str, thinking: str, calls: list[ToolCall], *, done: bool) -> dict[str, Any]:
        out = {**self._head(), "response": text}
        if thinking:
            out["thinking"] = thinking
        return {**out, "done": done}


# --- models -------------------------------------------------------------------------------


def _details(family: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "llmrun",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    }


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def capabilities(runner: Runner, tools: bool) -> list[str]:
    """Ollama's capability names for what a runner can do through llmrun."""
    found = ["completion"]
    if tools:  # emulated for every runner
        found.append("tools")
    if runner.capabilities.images:
        found.append("vision")
    if runner.capabilities.thinking:
        found.append("thinking")
    return found


def _wall(monotonic: float) -> str:
    """A time on the monotonic clock as RFC 3339 in UTC."""
    moment = datetime.now(timezone.utc) + timedelta(seconds=monotonic - time.monotonic())
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def running(state: ServerState) -> list[dict[str, Any]]:
    """/api/ps: the warm tool processes (by runner/model), then runners with one-shot runs going."""
    found: dict[str, dict[str, Any]] = {}
    timeout = state.settings.warm_idle_timeout
    for entry in state.warm.entries:
        shape = entry.shape
        name = f"{shape.runner}/{shape.model}" if shape.model else shape.runner
        size = entry.describe(time.monotonic())["rss_bytes"] or 0
        expires = _wall(time.monotonic() + timeout if entry.busy else entry.used + timeout)
        model = found.setdefault(name, _process(name, shape.runner, expires))
        model["size"] += size
        model["expires_at"] = max(model["expires_at"], expires)
    running_runners = {name.partition("/")[0] for name in found}
    for runner, count in state.limiter.stats()["per_runner"].items():
        if count and runner not in running_runners:
            found[runner] = _process(runner, runner, _now())  # a one-shot run ends with its answer
    return list(found.values())


def _process(name: str, family: str, expires: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "size": 0,
        "digest": _digest(name),
        "details": _details(family),
        "expires_at": expires,
        "size_vram": 0,
    }


# --- routes -------------------------------------------------------------------------------


class OllamaRoot:
    """`/` on the Ollama port answers as Ollama does; clients probe it to find a server."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (
            scope["type"] == "http"
            and scope["path"] == "/"
            and scope["method"] in ("GET", "HEAD")
            and server is not None
            and server[1] == self.port
        ):
            await PlainTextResponse("Ollama is running")(scope, receive, send)
            return
        await self.app(scope, receive, send)


NOT_SERVED = {
    "/api/pull": "llmrun does not download models: the tools bring their own; see GET /api/tags",
    "/api/push": "llmrun does not upload models",
    "/api/create": "llmrun does not create models",
    "/api/delete": "llmrun does not delete models",
    "/api/copy": "llmrun does not copy models",
    "/api/embed": "llmrun has no embeddings",
    "/api/embeddings": "llmrun has no embeddings",
}


def add_routes(
    app: FastAPI,
    state: ServerState,
    *,
    read_body: Callable[[Request], Awaitable[dict[str, Any]]],
    conversation_of: Callable[[Request], conversations.Conversation],
) -> None:
    """The Ollama API on `app`, and Ollama's `/` on the Ollama port when one is set."""
    settings = state.settings

    def answer(request: Request, parsed: Parsed, output: _Output) -> Response:
        name = resolvable_name(parsed.model)
        if parsed.load_only:
            state.pool.resolve(name)  # an unknown model is still a 404
            return JSONResponse(output.loaded(unload=parsed.unload))
        turn = state.engine.prepare(parsed.request, name, conversation=conversation_of(request), stream=parsed.stream)
        return state.answer(output, turn)

    @app.post("/api/chat", tags=["Ollama"])
    async def chat(request: Request) -> Response:
        """Ollama's chat: NDJSON stream by default, one body with `"stream": false`."""
        parsed = parse_chat(await read_body(request))
        return answer(request, parsed, ChatOutput(parsed.model, thinking=parsed.thinking))

    @app.post("/api/generate", tags=["Ollama"])
    async def generate(request: Request) -> Response:
        """Ollama's completion of one prompt (with `system`, `images`, `suffix`, `raw`)."""
        parsed = parse_generate(await read_body(request))
        return answer(request, parsed, GenerateOutput(parsed.model, thinking=parsed.thinking))

    @app.get("/api/tags", tags=["Ollama"])
    async def tags() -> dict[str, Any]:
        """Every model of every installed runner as `runner/model`, and the aliases (as /v1/models)."""
        models = [
            {
                "name": mid,
                "model": mid,
                "modified_at": EPOCH,
                "size": 0,
                "digest": _digest(mid),
                "details": _details(owner),
            }
            for mid, owner, _ in await state.models()
        ]
        return {"models": models}

    @app.post("/api/show", tags=["Ollama"])
    async def show(request: Request) -> dict[str, Any]:
        """A model's details and capabilities."""
        body = await read_body(request)
        name = model_name(body.get("model") or body.get("name"))
        target = state.pool.resolve(resolvable_name(name))
        runner = target.runner
        model = target.model or runner.default_model or ""
        return {
            "modelfile": f"# {runner.display_name}, run by llmrun\nFROM {name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": _details(runner.name),
            "model_info": {"general.architecture": runner.name, "general.basename": model},
            "capabilities": capabilities(runner, settings.tools == "emulate"),
            "modified_at": EPOCH,
        }

    @app.get("/api/ps", tags=["Ollama"])
    async def ps() -> dict[str, Any]:
        """Warm tool processes and runners with runs going."""
        return {"models": running(state)}

    @app.get("/api/version", tags=["Ollama"])
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_VERSION, "llmrun": __version__}

    async def not_served(request: Request) -> Response:
        raise NotServed(NOT_SERVED[request.url.path])

    for path in NOT_SERVED:
        app.add_api_route(path, not_served, methods=["POST", "DELETE"], include_in_schema=False)

    if settings.ollama_port is not None:
        app.add_middleware(OllamaRoot, port=settings.ollama_port)
