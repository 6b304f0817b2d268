"""Errors that only the server raises, and small helpers both API dialects share."""

from __future__ import annotations

from typing import Any, TypeVar

from ..errors import InvalidRequest, LlmrunError, ServiceUnavailable

T = TypeVar("T")


class Unauthorized(LlmrunError):
    """No API key, or the wrong one."""

    http_status = 401


class HostNotAllowed(LlmrunError):
    """The Host header names neither this server nor a configured name (DNS rebinding)."""

    http_status = 403


class PathNotFound(LlmrunError):
    http_status = 404


class MethodNotAllowed(LlmrunError):
    http_status = 405


class PayloadTooLarge(LlmrunError):
    http_status = 413


class ShuttingDown(ServiceUnavailable):
    """The server is stopping and cancelled the run."""


def public_message(exc: LlmrunError) -> str:
    """What a client is told: the message and the hint, never the tool's stderr."""
    text = str(exc) or type(exc).__name__
    return f"{text} (hint: {exc.hint})" if exc.hint else text


def error_headers(exc: LlmrunError) -> dict[str, str]:
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int):
        headers["retry-after"] = str(retry_after)
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = "Bearer"
    return headers


def expect(value: Any, kind: type[T], where: str) -> T:
    if not isinstance(value, kind):
        raise InvalidRequest(f"`{where}` must be {_kind_name(kind)}")
    return value


def expect_list(value: Any, where: str) -> list[Any]:
    return expect(value, list, where)


_KIND_NAMES: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}


def _kind_name(kind: type) -> str:
    return _KIND_NAMES.get(kind, kind.__name__)
