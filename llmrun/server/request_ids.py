"""Request ids: `x-request-id` taken from the client when it is sane, else made here, sent back
on every answer (errors and streams included) and put on every log record of the request.

The id lives in a context variable set for the request's whole handling; the tasks that run
a request's turn copy the context when they start, so their log lines carry it too. A
logging.Filter on llmrun's loggers copies it onto each record as `request_id` ("-" outside
a request), which the daemon's log format shows.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
MAX_LENGTH = 128

LOGGERS = ("llmrun", "llmrun.server", "llmrun.acp")
"""The loggers a request's work logs to (a logger's filters see only its own records)."""


@dataclass(frozen=True)
class RequestInfo:
    id: str
    path: str


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("llmrun_request", default=None)


def current() -> RequestInfo | None:
    """The request being handled, if any."""
    return _current.get()


def current_id() -> str | None:
    info = _current.get()
    return info.id if info is not None else None


def new_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def sane(value: str | None) -> bool:
    """A client's id is kept when it is printable ASCII (nothing to break a log line) and short."""
    return value is not None and 0 < len(value) <= MAX_LENGTH and value.isascii() and value.isprintable()


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_id() or "-"
        return True


LOG_FILTER = RequestIdFilter()


class RequestIds:
    """Pure ASGI middleware: the outermost one, so that every answer carries the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = next((v.decode("latin-1").strip() for k, v in scope["headers"] if k.lower() == b"x-request-id"), None)
        request_id = offered if offered is not None and sane(offered) else new_id()
        raw_id = request_id.encode()

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", raw_id)]}
            await send(message)

        token = _current.set(RequestInfo(request_id, scope.get("path", "")))
        try:
            await self.app(scope, receive, with_id)
        finally:
            _current.reset(token)


def install(app: Starlette) -> None:
    """Add the middleware to `app` (after every other, so that it is the outermost) and the
    log filter to llmrun's loggers."""
    app.add_middleware(RequestIds)
    for name in LOGGERS:
        logging.getLogger(name).addFilter(LOG_FILTER)
