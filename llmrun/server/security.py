"""Checks every request passes before it reaches a route: Host header, origin, API key,
content type, body size; and the last answer when a route fails unexpectedly.

The Host check defeats DNS rebinding: a web page on another site can make a browser send
requests to 127.0.0.1, but with that site's name in Host. The origin checks stop web pages
from using the server through the browser of the user who runs it: a request whose
`Origin` is not this server's own, or whose `Sec-Fetch-Site` says it comes from another
site, is refused (403) unless its origin is in `cors_origins`; and a body must be declared
`application/json` (415), which no page can send without a CORS preflight (Ollama's
/api/ paths take any type, as Ollama does, and rely on the origin checks). The key is
compared in constant time, from `Authorization: Bearer KEY` or `x-api-key: KEY` (what the
OpenAI and Anthropic SDKs send). Bodies larger than the limit are refused with 413, whether
they announce their length or not.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import LlmrunError
from . import anthropic_api, ollama_api, openai_api
from .common import CrossSiteRequest, HostNotAllowed, PayloadTooLarge, Unauthorized, UnsupportedMediaType, printable

log = logging.getLogger("llmrun.server")

WILDCARDS = {"0.0.0.0", "::", ""}
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_anthropic_path(path: str) -> bool:
    return path.startswith("/v1/messages")


def error_parts(path: str, exc: LlmrunError) -> tuple[int, dict[str, object], dict[str, str]]:
    if is_anthropic_path(path):
        return anthropic_api.error_response_parts(exc)
    if ollama_api.is_ollama_path(path):
        return ollama_api.error_response_parts(exc)
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


def host_port(authority: str) -> tuple[str, int | None]:
    """The normalised host and the port (None when absent or unreadable) of `host[:port]`."""
    value = authority.strip().lower()
    port = ""
    if value.startswith("["):
        port = value.partition("]")[2].removeprefix(":")
    elif value.count(":") == 1:
        port = value.partition(":")[2]
    return normalise(host_name(value)), int(port) if port.isdigit() else None


def is_json_type(content_type: str | None) -> bool:
    """`application/json`, parameters such as charset allowed."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


# Methods whose requests carry a body even when they announce none.
BODY_METHODS = {"POST", "PUT", "PATCH"}


class Guard:
    """Pure ASGI middleware, so that nothing of the app runs for a refused request.

    It is also the app's last word on failure: an exception no route handled becomes a 500
    in the API's error shape, and the connection stays usable.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        bound_host: str,
        api_key: str | None,
        allowed_hosts: list[str],
        max_body_bytes: int,
        cors_origins: list[str] | None = None,
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes
        bound = normalise(bound_host)
        # A wildcard bind answers on every address; only configured names narrow it then.
        self.any_host = bound in WILDCARDS and not allowed_hosts
        self.hosts = {bound, *LOCAL_NAMES, *(normalise(h) for h in allowed_hosts)} - WILDCARDS
        self.cors_origins = {o.strip().rstrip("/").lower() for o in cors_origins or []}

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
        if self._cross_site(scope, headers):
            await send_error(
                scope,
                send,
                CrossSiteRequest(
                    "requests from web pages of other origins are refused",
                    hint="list the page's origin in the server's cors_origins to allow it",
                ),
            )
            return
        if self.key is not None and not self._authorized(headers):
            await send_error(
                scope, send, Unauthorized("a valid API key is required (Authorization: Bearer or x-api-key)")
            )
            return
        # Ollama takes bodies of any declared type, and the `curl -d` of its docs and of many
        # apps sends form encoding: its /api/ paths here do too. What the JSON type stops, a web
        # page's request without preflight, carries an Origin or Sec-Fetch-Site: refused above.
        ollama = ollama_api.is_ollama_path(scope["path"])
        if self._has_body(scope, headers) and not is_json_type(headers.get("content-type")) and not ollama:
            refused = UnsupportedMediaType("the request body must be JSON, sent as Content-Type: application/json")
            await send_error(scope, send, refused)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await send_error(scope, send, self._too_large())
            return
        await self._answer(scope, self._counting(receive), send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            log.error(
                "unexpected error answering %s %s", scope.get("method"), printable(scope.get("path")), exc_info=exc
            )
            if not started:
                await send_error(scope, send, LlmrunError("internal error in llmrun's server"))
            # Otherwise the response is cut short, and uvicorn closes the connection.

    # --- browsers --------------------------------------------------------------------------

    def _cross_site(self, scope: Scope, headers: dict[str, str]) -> bool:
        """Whether a browser sent the request for a page of an origin that may not use the server.

        Browsers send `Origin` with every POST and every cross-origin request, and (recent
        ones) `Sec-Fetch-Site`; API clients send neither, so they are never refused here.
        """
        origin = headers.get("origin")
        if origin is not None and ("*" in self.cors_origins or origin.strip().lower() in self.cors_origins):
            return False
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site == "cross-site":
            return True
        if origin is None:
            return site == "same-site"  # another port or subdomain of this host, origin unknown
        return not self._own_origin(scope, headers, origin)

    def _own_origin(self, scope: Scope, headers: dict[str, str], origin: str) -> bool:
        """Whether `origin` is this server: its scheme, a host it serves, and its port."""
        scheme, sep, authority = origin.strip().lower().partition("://")
        if not sep or scheme != scope.get("scheme", "http") or "/" in authority:
            return False
        host, port = host_port(authority)
        server = scope.get("server")
        if port is None:
            port = 443 if scheme == "https" else 80
        if server is None or port != server[1]:
            return False
        if self.any_host:
            return host == host_port(headers.get("host", ""))[0]
        return host in self.hosts

    @staticmethod
    def _has_body(scope: Scope, headers: dict[str, str]) -> bool:
        length = headers.get("content-length", "0").strip()
        return scope["method"] in BODY_METHODS or length != "0" or "transfer-encoding" in headers

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
