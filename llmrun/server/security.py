"""Checks every request passes before it reaches a route: Host header, API key, body size.

The Host check defeats DNS rebinding: a web page on another site can make a browser send
requests to 127.0.0.1, but with that site's name in Host. The key is compared in constant
time, from `Authorization: Bearer KEY` or `x-api-key: KEY` (what the OpenAI and
Anthropic SDKs send). Bodies larger than the limit are refused with 413, whether they
announce their length or not.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import LlmrunError
from . import anthropic_api, openai_api
from .common import HostNotAllowed, PayloadTooLarge, Unauthorized

WILDCARDS = {"0.0.0.0", "::", ""}
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_anthropic_path(path: str) -> bool:
    return path.startswith("/v1/messages")


def error_parts(path: str, exc: LlmrunError) -> tuple[int, dict[str, object], dict[str, str]]:
    if is_anthropic_path(path):
        return anthropic_api.Output("").error(exc)
    return openai_api.error_response_parts(exc)


async def send_error(scope: Scope, send: Send, exc: LlmrunError) -> None:
    status, body, headers = error_parts(scope.get("path", ""), exc)
    raw = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": json.dumps(body).encode(), "more_body": False})


def host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or a trailing dot, lower-cased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def normalise(host: str) -> str:
    host = host.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class Guard:
    """Pure ASGI middleware, so that nothing of the app runs for a refused request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        bound_host: str,
        api_key: str | None,
        allowed_hosts: list[str],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes
        bound = normalise(bound_host)
        # A wildcard bind answers on every address; only configured names narrow it then.
        self.any_host = bound in WILDCARDS and not allowed_hosts
        self.hosts = {bound, *LOCAL_NAMES, *(normalise(h) for h in allowed_hosts)} - WILDCARDS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.any_host:
            host = normalise(host_name(headers.get("host", "")))
            if host not in self.hosts:
                await send_error(scope, send, HostNotAllowed("the Host header names a host this server does not serve"))
                return
        if self.key is not None and not self._authorized(headers):
            await send_error(
                scope, send, Unauthorized("a valid API key is required (Authorization: Bearer or x-api-key)")
            )
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await send_error(scope, send, self._too_large())
            return
        await self.app(scope, self._counting(receive), send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = self.key
        assert key is not None
        offered = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        if "x-api-key" in headers:
            offered.append(headers["x-api-key"].strip())
        ok = False
        for candidate in offered:
            # Every candidate is compared, each in constant time.
            ok |= hmac.compare_digest(candidate.encode("latin-1"), key)
        return ok

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body exceeds {self.max_body} bytes")

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large()  # the route's error handler answers 413
            return message

        return counted
