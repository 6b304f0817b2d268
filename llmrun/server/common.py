"""Errors that only the server raises, and small helpers both API dialects share:
type checks of request fields, and the escaping of client text before it is logged."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest, LlmrunError, ServiceUnavailable
from ..openai_format import expect as expect  # request checks every dialect shares
from ..openai_format import expect_list as expect_list
from ..openai_format import tool_schema as tool_schema


class Unauthorized(LlmrunError):
    """No API key, or the wrong one."""

    http_status = 401


class HostNotAllowed(LlmrunError):
    """The Host header names neither this server nor a configured name (DNS rebinding)."""

    http_status = 403


class CrossSiteRequest(LlmrunError):
    """A browser sent the request from a web page of another origin that is not in cors_origins."""

    http_status = 403


class PathNotFound(LlmrunError):
    http_status = 404


class MethodNotAllowed(LlmrunError):
    http_status = 405


class PayloadTooLarge(LlmrunError):
    http_status = 413


class UnsupportedMediaType(LlmrunError):
    """A body that is not declared `application/json` (what a web page can send without a preflight)."""

    http_status = 415


class ShuttingDown(ServiceUnavailable):
    """The server is stopping and cancelled the run."""


def public_message(exc: LlmrunError) -> str:
    """What a client is told: the message and the hint, never the tool's stderr."""
    text = str(exc) or type(exc).__name__
    return f"{text} (hint: {exc.hint})" if exc.hint else text


SSE = "text/event-stream; charset=utf-8"
SSE_PING = b": ping\n\n"
"""An SSE comment: every SSE client skips it, and it keeps a silent connection alive."""

# Seconds a client is asked to wait before retrying when the error names no time of its own.
DEFAULT_RETRY_AFTER = {429: 5, 503: 5}


def error_headers(exc: LlmrunError) -> dict[str, str]:
    """Headers of an error response. `x-should-retry` tells the SDKs of OpenAI and Anthropic
    (and the clients built on them) whether a retry can help: without it they retry 4xx and
    5xx answers such as a logged-out tool's 401 many times before giving up."""
    retry = exc.retryable
    headers = {"x-should-retry": "true" if retry else "false"}
    retry_after = getattr(exc, "retry_after", None)
    if not isinstance(retry_after, int) and retry:
        retry_after = DEFAULT_RETRY_AFTER.get(exc.http_status)
    if isinstance(retry_after, int):
        headers["retry-after"] = str(retry_after)
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = "Bearer"
    return headers


MAX_JSON_DEPTH = 64
"""Arrays and objects in arrays and objects; real requests (tool schemas included) stay far below."""

# NUL cannot reach a tool's argv or a C string; a lone surrogate cannot be encoded at all.
_UNUSABLE_CHARACTERS = re.compile(r"[\x00\ud800-\udfff]")


def _not_a_number(name: str) -> Any:
    raise InvalidRequest(f"the request body holds {name}, which JSON does not allow")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or InvalidRequest: strict UTF-8, no NaN or Infinity,
    nested at most MAX_JSON_DEPTH deep, and no NUL or lone surrogate in any string."""
    try:
        text = raw.decode("utf-8-sig")
        body = json.loads(text, parse_constant=_not_a_number)
    except RecursionError:
        # The parser recurses: nesting near the interpreter's limit ends here, not in a crash.
        raise InvalidRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # undecodable bytes, or not JSON
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    # Only a \u escape can put a NUL or a surrogate into a string (strict UTF-8 and JSON's
    # ban on raw control characters keep them out otherwise).
    _check_json(body, check_strings="\\u" in text)
    return body


def _check_json(value: Any, *, check_strings: bool) -> None:
    """Depth and string checks of a parsed body, with a stack of its own (no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if check_strings and _UNUSABLE_CHARACTERS.search(item):
                raise InvalidRequest("the request body holds a NUL character or a lone surrogate (\\ud800-\\udfff)")
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise InvalidRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict) and check_strings:
                pending.extend((key, depth) for key in item)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


# JSON types, as the fields of a request body may name them.
JSON_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "object": (dict,),
    "array": (list,),
}


def is_json_kind(value: Any, kind: str) -> bool:
    # bool is an int in Python, but `true` is no number in JSON.
    return isinstance(value, JSON_KINDS[kind]) and (kind == "boolean" or not isinstance(value, bool))


def check_fields(body: Mapping[str, Any], kinds: Mapping[str, str]) -> None:
    """Refuse a known field of the wrong JSON type, e.g. `"stream": "yes"`; null counts as absent.

    `kinds` maps a field to a JSON type, or to several separated by "|" ("string|array")."""
    for name, kind in kinds.items():
        value = body.get(name)
        if value is not None and not any(is_json_kind(value, k) for k in kind.split("|")):
            raise InvalidRequest(f"`{name}` must be {' or '.join(_json_kind_name(k) for k in kind.split('|'))}")


def _json_kind_name(kind: str) -> str:
    return {"object": "an object", "array": "an array", "integer": "an integer"}.get(kind, f"a {kind}")


MAX_MODEL_NAME = 256
"""Far above any RUNNER/MODEL name or alias; a longer `model` is not a model name."""


def model_name(value: Any) -> str:
    """The request's `model`, stripped: a non-empty string of printable characters, not too long."""
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        raise InvalidRequest("`model` is required (e.g. claude_code/sonnet)")
    if len(name) > MAX_MODEL_NAME:
        raise InvalidRequest(f"`model` is longer than {MAX_MODEL_NAME} characters")
    if not name.isprintable():
        raise InvalidRequest("`model` holds control characters")
    return name


LOGGED_TEXT_LIMIT = 300


def printable(text: object) -> str:
    """Client text made safe for a log line: control characters (newlines, ANSI escapes) and
    backslashes escaped as in a Python literal, so that no client can forge or recolour a
    line; plain text is left as it is. Long text is cut."""
    value = str(text)
    if len(value) > LOGGED_TEXT_LIMIT:
        value = value[:LOGGED_TEXT_LIMIT] + "..."
    if value.isprintable() and "\\" not in value:
        return value
    return repr(value)
