"""OpenAI Chat Completions requests as llmrun's types: messages, tools, tool_choice, response_format.

Pure conversion with the checks it needs, importable without the daemon's dependencies: the
daemon (server/openai_api.py) and the library (`llmrun.openai_compat.from_openai_messages`)
read OpenAI-shaped requests through this one module. A malformed part is an InvalidRequest
naming where it is; a part llmrun cannot use is an UnsupportedFeature, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import InvalidRequest, UnsupportedFeature
from .types import ContentPart, ImagePart, Message, TextPart, ToolCall, ToolSpec

T = TypeVar("T")

ImageReader = Callable[[Any, str], ImagePart]
"""Turns an `image_url.url` (and where it is in the request) into an ImagePart."""


def expect(value: Any, kind: type[T], where: str) -> T:
    if not isinstance(value, kind):
        raise InvalidRequest(f"`{where}` must be {_kind_name(kind)}")
    return value


def expect_list(value: Any, where: str) -> list[Any]:
    return expect(value, list, where)


_KIND_NAMES: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}


def _kind_name(kind: type) -> str:
    return _KIND_NAMES.get(kind, kind.__name__)


def tool_schema(value: Any, where: str) -> dict[str, Any] | None:
    """A tool's parameter schema, checked for the shape of its top level (null: none given).

    The schema is an object; its `type` a string or a list of strings, its `properties` an
    object of schemas and its `required` a list of strings. Deeper checks are the validator's.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"`{where}` must be a JSON schema object")
    kind = value.get("type")
    if kind is not None and not (
        isinstance(kind, str) or (isinstance(kind, list) and all(isinstance(k, str) for k in kind))
    ):
        raise InvalidRequest(f"`{where}.type` must be a string or an array of strings")
    properties = value.get("properties")
    if properties is not None and not (
        isinstance(properties, dict) and all(isinstance(p, (dict, bool)) for p in properties.values())
    ):
        raise InvalidRequest(f"`{where}.properties` must be an object of schemas")
    required = value.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise InvalidRequest(f"`{where}.required` must be an array of property names")
    return value


def image_as_given(url: Any, where: str) -> ImagePart:
    """An image URL taken as it is (a data: URL, or a path or URL a local runner may read)."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: image_url needs a url")
    return ImagePart(url=url)


def messages(raw: list[Any], read_image: ImageReader = image_as_given) -> list[Message]:
    """OpenAI `messages` as llmrun Messages; `developer` counts as `system`, `function` as `tool`."""
    out: list[Message] = []
    names: dict[str, str] = {}  # tool call id → function name, for tool results
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        item = expect(item, dict, where)
        role = item.get("role")
        name = item.get("name") if isinstance(item.get("name"), str) else None
        if role in ("system", "developer"):
            out.append(Message(role="system", content=_text_only(item.get("content"), where)))
        elif role == "user":
            content = _user_content(item.get("content"), where, read_image)
            out.append(Message(role="user", content=content, name=name))
        elif role == "assistant":
            calls = _tool_calls(item.get("tool_calls"), where)
            for call in calls:
                names[call.id] = call.name
            text = _text_only(item.get("content"), where) if item.get("content") is not None else ""
            out.append(Message(role="assistant", content=text, tool_calls=calls or None, name=name))
        elif role in ("tool", "function"):
            call_id = item.get("tool_call_id") or (name if role == "function" else None)
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}: a tool message needs `tool_call_id`")
            content = _text_only(item.get("content"), where)
            out.append(Message(role="tool", content=content, tool_call_id=call_id, name=name or names.get(call_id)))
        else:
            raise InvalidRequest(f"{where}: unknown role {role!r}")
    return out


def _text_only(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = expect_list(content, f"{where}.content")
    texts = []
    for part in parts:
        part = expect(part, dict, f"{where}.content[]")
        if part.get("type") in ("text", "refusal"):
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        else:
            raise UnsupportedFeature(f"{where}: content of type {part.get('type')!r} is not supported here")
    return "".join(texts)


def _user_content(content: Any, where: str, read_image: ImageReader) -> str | list[ContentPart]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[ContentPart] = []
    for part in expect_list(content, f"{where}.content"):
        part = expect(part, dict, f"{where}.content[]")
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(text=str(part.get("text") or "")))
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(read_image(image.get("url") if isinstance(image, dict) else image, where))
        else:
            raise UnsupportedFeature(f"{where}: content of type {kind!r} is not supported")
    return parts


def _tool_calls(raw: Any, where: str) -> list[ToolCall]:
    if raw is None:
        return []
    calls = []
    for call in expect_list(raw, f"{where}.tool_calls"):
        call = expect(call, dict, f"{where}.tool_calls[]")
        function = expect(call.get("function"), dict, f"{where}.tool_calls[].function")
        parsed = tool_arguments(function.get("arguments"), where)
        fields: dict[str, Any] = {"name": str(function.get("name") or ""), "arguments": parsed}
        if isinstance(call.get("id"), str):
            fields["id"] = call["id"]
        calls.append(ToolCall(**fields))
    return calls


def tool_arguments(raw: Any, where: str) -> dict[str, Any]:
    """A tool call's arguments, sent as a JSON string (or already an object), as an object."""
    try:
        arguments = json.loads(raw or "{}") if isinstance(raw, str) or raw is None else raw
    except ValueError:
        raise InvalidRequest(f"{where}: tool call arguments are not JSON") from None
    return arguments if isinstance(arguments, dict) else {"value": arguments}


def function_tools(raw: Any) -> list[ToolSpec] | None:
    if not raw:
        return None
    tools = []
    for tool in expect_list(raw, "tools"):
        tool = expect(tool, dict, "tools[]")
        if tool.get("type", "function") != "function":
            raise UnsupportedFeature(f"tools of type {tool.get('type')!r} are not supported; only functions")
        function = expect(tool.get("function"), dict, "tools[].function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("every tool needs a function name")
        spec: dict[str, Any] = {"name": name, "description": str(function.get("description") or "")}
        parameters = tool_schema(function.get("parameters"), "tools[].function.parameters")
        if parameters is not None:
            spec["parameters"] = parameters
        tools.append(ToolSpec(**spec))
    return tools


def tool_choice(raw: Any) -> str | dict[str, Any] | None:
    if raw is None or isinstance(raw, str):
        return raw
    return expect(raw, dict, "tool_choice")


def response_format(raw: Any) -> dict[str, Any] | None:
    """The JSON schema a `response_format` asks for; None for plain text."""
    if not raw:
        return None
    raw = expect(raw, dict, "response_format")
    kind = raw.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = expect(raw.get("json_schema"), dict, "response_format.json_schema")
        schema = spec.get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    raise UnsupportedFeature(f"response_format of type {kind!r} is not supported")


SAMPLING_FIELDS = {
    "temperature": "number",
    "top_p": "number",
    "top_k": "integer",
    "seed": "integer",
    "frequency_penalty": "number",
    "presence_penalty": "number",
}
"""The sampling fields of OpenAI, Anthropic and Ollama (`top_k` is not OpenAI's, `seed` and the penalties
not Anthropic's; `stop` has a name of each API's own)."""


def sampling(raw: Mapping[str, Any], *, stop: str = "stop") -> dict[str, Any]:
    """The ChatRequest sampling fields of a request body (its types checked with SAMPLING_FIELDS);
    `stop` names the field of the stop sequences, a string or a list of strings."""
    fields: dict[str, Any] = {name: raw[name] for name in SAMPLING_FIELDS if raw.get(name) is not None}
    stops = raw.get(stop)
    if isinstance(stops, str):
        stops = [stops]
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest(f"`{stop}` must be a string or an array of strings")
        fields["stop"] = stops or None
    return fields
