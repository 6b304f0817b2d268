"""What a web page, a hostile client or a slow one can do to the daemon: cross-site requests,
malformed bodies, connections held open, forged log lines.

The servers run a scripted in-process runner, so that what reaches a runner is counted
without tool processes; connections are spoken by hand where what happens to the
connection itself matters (is it still usable after an error, is it closed in time).
"""

from __future__ import annotations

import copy
import json
import logging
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from llmrun.errors import ConfigError, InvalidRequest
from llmrun.server import load_settings
from llmrun.server.common import MAX_JSON_DEPTH, parse_json_body, printable

from .server_support import LiveServer, ScriptedRunner, settings

pytestmark = pytest.mark.timeout(120)

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "max_tokens": 5}
PATHS = {"/v1/chat/completions": CHAT, "/v1/messages": MESSAGES}
JSON = {"content-type": "application/json"}


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
def live(runner: ScriptedRunner, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as server:
        yield server


def is_api_error(path: str, body: Any) -> bool:
    """The body is an error in the shape of the API of `path`."""
    if path.startswith("/v1/messages"):
        return body.get("type") == "error" and isinstance(body["error"]["message"], str)
    return isinstance(body.get("error"), dict) and isinstance(body["error"]["message"], str)


class Wire:
    """One HTTP/1.1 connection spoken by hand, to see what becomes of it between requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h11.Connection(h11.CLIENT)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        fields = {"host": f"127.0.0.1:{self.port}", "content-length": str(len(body)), **(headers or {})}
        head = h11.Request(method=method, target=path, headers=list(fields.items()))
        self.sock.sendall(b"".join(self.conn.send(e) or b"" for e in (head, h11.Data(data=body), h11.EndOfMessage())))
        status, data = 0, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the server closed the connection")
        assert self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE, "the connection cannot go on"
        self.conn.start_next_cycle()
        return status, data

    def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        status, data = self.request("POST", path, json.dumps(body).encode(), JSON)
        return status, json.loads(data)

    def close(self) -> None:
        self.sock.close()


# --- cross-site requests ------------------------------------------------------------------

# What a web page can send with fetch() or a form without a CORS preflight (None: a Blob body).
SIMPLE_TYPES = [
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=----x",
    None,
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
@pytest.mark.parametrize("valid_json", [True, False])
def test_bodies_a_page_can_send_without_preflight_are_415(
    live: LiveServer, runner: ScriptedRunner, path: str, content_type: str | None, valid_json: bool
) -> None:
    body = json.dumps(PATHS[path]).encode() if valid_json else b"model=scripted&messages=hi"
    headers = {"content-type": content_type} if content_type else {}
    refused = httpx.post(live.url + path, content=body, headers=headers, timeout=10)
    assert refused.status_code == 415
    assert is_api_error(path, refused.json())
    # With the Origin a browser adds, it is a cross-site request as well.
    page = httpx.post(live.url + path, content=body, headers={**headers, "origin": "https://evil.example"}, timeout=10)
    assert page.status_code == 403 and is_api_error(path, page.json())
    assert runner.requests == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_bodies_pass(live: LiveServer, content_type: str) -> None:
    for path, body in PATHS.items():
        response = httpx.post(live.url + path, content=json.dumps(body), headers={"content-type": content_type})
        assert response.status_code == 200, response.text


def test_pages_of_other_origins_are_refused(live: LiveServer, runner: ScriptedRunner) -> None:
    port = live.port

    def status(path: str, headers: dict[str, str], method: str = "POST") -> int:
        body = json.dumps(PATHS.get(path, {})) if method == "POST" else None
        response = httpx.request(method, live.url + path, content=body, headers={**JSON, **headers}, timeout=10)
        if response.status_code == 403:
            assert is_api_error(path, response.json())
        return response.status_code

    for path in PATHS:
        assert status(path, {"origin": "https://evil.example"}) == 403
        assert status(path, {"origin": "null"}) == 403  # sandboxed frames, file: pages
        assert status(path, {"origin": f"http://localhost:{port + 1}"}) == 403  # another local app
        assert status(path, {"origin": f"https://127.0.0.1:{port}"}) == 403
        assert status(path, {"sec-fetch-site": "cross-site"}) == 403
        assert status(path, {"sec-fetch-site": "same-site"}) == 403
        assert status(path, {"origin": f"http://localhost:{port + 1}", "sec-fetch-site": "same-site"}) == 403
        assert status(path, {"origin": f"http://localhost:{port}", "sec-fetch-site": "cross-site"}) == 403
    # Reads too: a page must not list models or runners.
    assert status("/v1/models", {"origin": "https://evil.example"}, "GET") == 403
    assert status("/v1/runners", {"sec-fetch-site": "cross-site"}, "GET") == 403
    assert runner.requests == []

    # The server's own origin, and requests that are not from a page of another site.
    own = {"origin": f"http://127.0.0.1:{port}", "sec-fetch-site": "same-origin"}
    assert status("/v1/chat/completions", own) == 200
    assert status("/v1/messages", {"origin": f"http://localhost:{port}"}) == 200
    assert status("/v1/messages", {"sec-fetch-site": "none"}) == 200  # typed by the user
    assert status("/health", {"sec-fetch-site": "same-origin"}, "GET") == 200


def test_configured_origins_pass_and_their_preflight_works(runner: ScriptedRunner, tmp_path: Path) -> None:
    app = "https://app.example"
    with LiveServer(settings(tmp_path, cors_origins=[app]), runners={"scripted": runner}) as live:
        preflight = httpx.options(
            live.url + "/v1/chat/completions",
            headers={
                "origin": app,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
            timeout=10,
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == app
        for path, body in PATHS.items():
            allowed = httpx.post(
                live.url + path, json=body, headers={"origin": app, "sec-fetch-site": "cross-site"}, timeout=10
            )
            assert allowed.status_code == 200, allowed.text
            assert allowed.headers["access-control-allow-origin"] == app
            other = httpx.post(live.url + path, json=body, headers={"origin": "https://evil.example"}, timeout=10)
            assert other.status_code == 403
        # A configured origin still needs a JSON body.
        plain = httpx.post(live.url + "/v1/messages", content=json.dumps(MESSAGES), headers={"origin": app})
        assert plain.status_code == 415
    assert len(runner.requests) == 2


# --- bad input ----------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_field(body: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({**body, **fields}).encode()


def with_raw(body: dict[str, Any], name: str, raw: str) -> bytes:
    """`body` with a field written as raw JSON text."""
    return (json.dumps(body)[:-1] + f', "{name}": {raw}}}').encode("utf-8", "surrogatepass")


def tool(path: str, schema: Any) -> list[dict[str, Any]]:
    if path == "/v1/messages":
        return [{"name": "f", "description": "d", "input_schema": schema}]
    return [{"type": "function", "function": {"name": "f", "description": "d", "parameters": schema}}]


def bad_bodies(path: str) -> dict[str, bytes]:
    """Raw bodies that must each be a 400; what is wrong in each is its key."""
    good = PATHS[path]
    text = json.dumps(good)
    cases = {
        "NaN": with_field(good, temperature=float("nan")),
        "Infinity": with_field(good, temperature=float("inf")),
        "-Infinity": with_raw(good, "temperature", "-Infinity"),
        "NaN in a tool schema": json.dumps({**good, "tools": tool(path, {"minimum": float("nan")})}).encode(),
        "NUL in a message": text.replace('"hi"', '"h\\u0000i"').encode(),
        "NUL in a key": with_raw(good, "extra", '{"k\\u0000": 1}'),
        "NUL in the model": text.replace('"scripted"', '"scripted\\u0000"').encode(),
        "lone surrogate in a message": text.replace('"hi"', '"\\ud800"').encode(),
        "lone low surrogate in a key": with_raw(good, "extra", '{"\\udfffk": 1}'),
        "surrogate as UTF-8 bytes": text.replace('"hi"', '"\xed\xa0\x80"').encode("latin-1"),
        "not UTF-8": text.replace('"hi"', '"\xff\xfe"').encode("latin-1"),
        "nested 1000 deep": with_raw(good, "extra", nested(1000)),
        "nested 100000 deep": with_raw(good, "extra", nested(100000)),
        f"nested {MAX_JSON_DEPTH + 1} deep": with_raw(good, "extra", nested(MAX_JSON_DEPTH)),
        "a 200 KiB model name": with_field(good, model="scripted/" + "m" * 200 * 1024),
        "a newline in the model": with_field(good, model="scripted/x\nINFO: forged"),
        "parameters: 5": with_field(good, tools=tool(path, 5)),
        "parameters: a string": with_field(good, tools=tool(path, "object")),
        "properties: []": with_field(good, tools=tool(path, {"type": "object", "properties": []})),
        "properties of numbers": with_field(good, tools=tool(path, {"type": "object", "properties": {"a": 5}})),
        "required: 'x'": with_field(good, tools=tool(path, {"type": "object", "required": "x"})),
        "type: 5": with_field(good, tools=tool(path, {"type": 5})),
        "messages: {}": with_field(good, messages={}),
        "messages: 'hi'": with_field(good, messages="hi"),
        "stream: 'yes'": with_field(good, stream="yes"),
        "stream: 1": with_field(good, stream=1),
        "max_tokens: '10'": with_field(good, max_tokens="10"),
        "max_tokens: true": with_field(good, max_tokens=True),
        "max_tokens: 1.5": with_field(good, max_tokens=1.5),
        "temperature: 'hot'": with_field(good, temperature="hot"),
        "tools: {}": with_field(good, tools={}),
        "tools: 'f'": with_field(good, tools="f"),
        "model: 5": with_field(good, model=5),
        "a list": b"[1, 2]",
        "a string": b'"hi"',
        "empty": b"",
        "truncated": text[:-3].encode(),
    }
    if path == "/v1/messages":
        cases |= {
            "system: 5": with_field(good, system=5),
            "tool_choice: 'auto'": with_field(good, tool_choice="auto"),
            "metadata: 'x'": with_field(good, metadata="x"),
        }
    else:
        cases |= {
            "n: '1'": with_field(good, n="1"),
            "stream_options: []": with_field(good, stream_options=[]),
            "tool_choice: 5": with_field(good, tool_choice=5),
            "response_format: 'json'": with_field(good, response_format="json"),
            "user: 5": with_field(good, user=5),
            "max_completion_tokens: '5'": with_field(good, max_completion_tokens="5"),
        }
    return cases


@pytest.mark.parametrize("path", PATHS)
def test_bad_input_is_400_and_the_connection_stays_usable(live: LiveServer, runner: ScriptedRunner, path: str) -> None:
    wire = Wire(live.port)
    try:
        for problem, body in bad_bodies(path).items():
            status, data = wire.request("POST", path, body, JSON)
            assert status == 400, f"{problem}: {status} {data[:300]!r}"
            assert is_api_error(path, json.loads(data)), problem
            status, answer = wire.post_json(path, PATHS[path])  # the same connection goes on
            assert status == 200, f"after {problem}: {answer}"
    finally:
        wire.close()
    assert all(r.messages[-1].content == "hi" for r in runner.requests)


def test_json_checks() -> None:
    assert parse_json_body(b'\xef\xbb\xbf{"a": [1.5, "\\u00e9\\ud83d\\ude00"]}') == {"a": [1.5, "é😀"]}
    deepest = '{"a": ' + nested(MAX_JSON_DEPTH - 1) + "}"
    assert parse_json_body(deepest.encode())
    with pytest.raises(InvalidRequest, match="nested deeper"):
        parse_json_body(('{"a": ' + nested(MAX_JSON_DEPTH) + "}").encode())
    with pytest.raises(InvalidRequest, match="nested deeper"):
        parse_json_body(('{"b": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)).encode())


# Mutations: every field of a full request set to values of the wrong kind, or removed.
FULL_CHAT = {
    "model": "scripted",
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
        {"role": "user", "content": "go"},
    ],
    "max_tokens": 5,
    "temperature": 0.5,
    "stream_options": {"include_usage": True},
    "tools": tool("/v1/chat/completions", {"type": "object", "properties": {"a": {"type": "integer"}}}),
    "tool_choice": "auto",
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
}
FULL_MESSAGES = {
    "model": "scripted",
    "max_tokens": 5,
    "system": [{"type": "text", "text": "s"}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text"}]}]},
    ],
    "temperature": 0.5,
    "tools": tool("/v1/messages", {"type": "object", "properties": {"a": {"type": "integer"}}}),
    "tool_choice": {"type": "auto"},
    "metadata": {"user_id": "u"},
}
ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 10**30, "", "x", "-", [], {}, [1], {"a": 1}, [[[]]], [None]]
ODD_VALUES += ["\x00", "\ud800", float("nan"), float("inf"), {"type": 5}, [{"type": "text"}], "a" * 5000]


def places(body: Any) -> list[tuple[Any, ...]]:
    """The path (keys and indexes) of every value in `body`."""
    found: list[tuple[Any, ...]] = []
    pending: list[tuple[Any, tuple[Any, ...]]] = [(body, ())]
    while pending:
        node, path = pending.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            found.append((*path, key))
            pending.append((node[key], (*path, key)))
    return found


def replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """`body` with the value at `path` replaced (or removed, for `REMOVED`)."""
    out = copy.deepcopy(body)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is REMOVED:
        del node[path[-1]]
    else:
        node[path[-1]] = copy.deepcopy(value)
    return out


REMOVED = object()


def test_every_field_of_the_wrong_kind_is_refused_not_fatal(tmp_path: Path) -> None:
    pytest.importorskip("llmrun.tool_emulation")
    runner = ScriptedRunner(lambda request: '{"a": 1}')
    answered: dict[int, int] = {}
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        wire = Wire(live.port)
        for path, full in (("/v1/chat/completions", FULL_CHAT), ("/v1/messages", FULL_MESSAGES)):
            for number, (where, value) in enumerate(
                (where, value) for where in places(full) for value in [REMOVED, *ODD_VALUES]
            ):
                if value is REMOVED and isinstance(where[-1], int):
                    continue
                body = replaced({**full, "stream": number % 2 == 0}, where, value)
                data = json.dumps(body)  # NaN and Infinity written as the bare words JSON does not have
                status, answer = wire.request("POST", path, data.encode(), JSON)
                answered[status] = answered.get(status, 0) + 1
                assert status < 500, f"{where} = {value!r}: {answer[:500]!r}"
                assert b"internal error" not in answer, f"{where} = {value!r}: {answer[:500]!r}"
        wire.close()
    assert answered.get(200) and answered.get(400)  # both kinds were reached


def test_an_unexpected_error_is_a_500_in_the_api_shape(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    wire = Wire(live.port)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(live.state.engine, "prepare", broken)
            for path, body in PATHS.items():
                status, answer = wire.post_json(path, body)
                assert status == 500 and is_api_error(path, answer), answer
                assert "a bug" not in json.dumps(answer)
        for path, body in PATHS.items():
            assert wire.post_json(path, body)[0] == 200
    finally:
        wire.close()


# --- slow clients -------------------------------------------------------------------------

# Deadlines short enough for a test, long enough for a loaded machine to read a request
# that is sent at once.
SLOW = {"header_timeout": 1.0, "body_timeout": 1.0, "body_total_timeout": 2.0}
BOUND = 60.0  # seconds a test waits for the server to close a connection: far above the deadlines


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (EOF or reset), without waiting."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionError:
        return True


def trickle(socks: list[socket.socket], data: bytes, pause: float = 0.1) -> None:
    """Send `data` a byte at a time to every socket, round after round, until the server has
    closed each one; fails if one is still open after BOUND seconds."""
    open_socks = list(socks)
    deadline = time.monotonic() + BOUND
    position = 0
    while open_socks:
        assert time.monotonic() < deadline, f"{len(open_socks)} slow connection(s) still open after {BOUND} s"
        byte = data[position % len(data) : position % len(data) + 1]
        position += 1
        for sock in list(open_socks):
            try:
                sock.sendall(byte)
            except ConnectionError:
                open_socks.remove(sock)
                continue
            if closed_by_server(sock):
                open_socks.remove(sock)
        time.sleep(pause)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND)


def test_slow_headers_are_cut_off(runner: ScriptedRunner, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, **SLOW), runners={"scripted": runner}) as live:
        idle = connect(live.port)
        socks = [connect(live.port) for _ in range(4)]
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle(socks, b"X-Slow: " + b"a" * 50 + b"\r\n")
        idle.settimeout(BOUND)
        assert idle.recv(100) == b""  # a connection that never sends is closed as well
        for sock in [idle, *socks]:
            sock.close()
        assert httpx.post(live.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
    assert len(runner.requests) == 1


def test_slow_bodies_are_cut_off(runner: ScriptedRunner, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, **SLOW), runners={"scripted": runner}) as live:
        head = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        stalled = connect(live.port)
        stalled.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"model": ')
        # Each byte comes within body_timeout, but the whole body takes longer than body_total_timeout.
        trickled = [connect(live.port) for _ in range(3)]
        for sock in trickled:
            sock.sendall(head + b"Content-Length: 100000\r\n\r\n")
        trickle(trickled, b"[" * 100)
        assert closed_after(stalled)
        for sock in [stalled, *trickled]:
            sock.close()
    assert runner.requests == []


def closed_after(sock: socket.socket) -> bool:
    """Reads whatever the server still sends until it closes; False if it stays open for BOUND s."""
    sock.settimeout(BOUND)
    try:
        while sock.recv(65536):
            pass
    except ConnectionError:
        pass
    except TimeoutError:
        return False
    return True


def test_long_streams_and_idle_keep_alive_outlive_the_read_deadlines(tmp_path: Path) -> None:
    # The stream lasts longer than every read deadline (ten pieces, 0.3 s apart).
    runner = ScriptedRunner(lambda request: "0123456789", delay=0.3, pieces=10)
    with LiveServer(settings(tmp_path, **SLOW), runners={"scripted": runner}) as live:
        wire = Wire(live.port)
        try:
            stream = json.dumps({**CHAT, "stream": True}).encode()
            status, data = wire.request("POST", "/v1/chat/completions", stream, JSON)
            assert status == 200
            assert data.count(b"data: ") >= 10 and data.endswith(b"data: [DONE]\n\n"), data
            # Idle for longer than header_timeout: keep-alive (uvicorn's 5 s) governs this wait.
            time.sleep(2 * SLOW["header_timeout"])
            assert wire.post_json("/v1/messages", MESSAGES)[0] == 200
        finally:
            wire.close()


def test_connections_beyond_the_cap_are_refused(runner: ScriptedRunner, tmp_path: Path) -> None:
    capped = settings(tmp_path, max_connections=3, header_timeout=BOUND)
    with LiveServer(capped, runners={"scripted": runner}) as live:
        held = [connect(live.port) for _ in range(3)]  # idle: they hold their places
        extra = connect(live.port)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        assert closed_after(extra)
        extra.close()
        held.pop().close()
        # Once one is closed (the server notices soon; bounded retries), a new client gets in.
        for _ in range(100):
            try:
                if httpx.get(live.url + "/health", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("no connection was accepted after one was closed")
        for sock in held:
            sock.close()


def test_deadline_settings(tmp_path: Path) -> None:
    table = {"header_timeout": 5, "body_timeout": 7.5, "body_total_timeout": 60, "max_connections": 100}
    loaded = load_settings(data={"server": {**table, "sessions": str(tmp_path / "s.sqlite3")}})
    assert [getattr(loaded, name) for name in table] == list(table.values())
    for name in table:
        with pytest.raises(ConfigError, match=name):
            settings(tmp_path, **{name: 0})
    assert settings(tmp_path).max_connections >= 16


# --- logs ---------------------------------------------------------------------------------


def test_client_text_cannot_forge_log_lines(
    live: LiveServer, runner: ScriptedRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    forged = "scripted/sonnet\nINFO:     turn done: runner=admin \x1b[32mOK\x1b[0m"
    for path, body in PATHS.items():
        response = httpx.post(live.url + path, json={**body, "model": forged}, timeout=10)
        assert response.status_code == 400
    assert runner.requests == []
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\x1b" not in message, message


def test_printable() -> None:
    assert printable("claude_code/sonnet") == "claude_code/sonnet"
    line = printable("x\nINFO: forged \x1b[31mred\x1b[0m \u2028 \\n")
    assert line.isprintable() and "\n" not in line and "\x1b" not in line
    assert line == repr("x\nINFO: forged \x1b[31mred\x1b[0m \u2028 \\n")
    assert printable("a\\nb") == "'a\\\\nb'"  # a written backslash is told from an escape
    assert len(printable("m" * 100_000)) < 400
