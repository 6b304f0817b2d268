"""Images from clients of the daemon are data only: no path, file: URL or other URL reaches a tool.

The runner is llm's, with a stand-in tool (a small Python script) that records, from
inside its own process, every `--attachment` it was given: the path, the file's bytes,
its mode and its directory's mode. A refused request must start no tool at all. The
opt-in fetching of http(s) URLs is tried against a loopback HTTP server of the test.
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrun.runners.llm import LlmRunner
from llmrun.server import attachments
from llmrun.server.limits import Limiter

from .server_support import LiveServer, settings

pytestmark = pytest.mark.timeout(60)

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # bytes that are no text
DATA_URL = "data:image/png;base64," + base64.b64encode(IMAGE).decode()

TOOL = """\
import json, os, sys
sys.stdin.read()
seen = []
for arg in sys.argv[1:]:
    if arg.startswith("--attachment="):
        path = arg.partition("=")[2]
        info = {"given": path}
        try:
            info["mode"] = os.stat(path).st_mode & 0o777
            info["dir_mode"] = os.stat(os.path.dirname(os.path.abspath(path))).st_mode & 0o777
            with open(path, "rb") as fh:
                info["data"] = fh.read().hex()
        except OSError as exc:
            info["error"] = str(exc)
        seen.append(info)
with open(os.path.join(os.environ["IMAGE_TOOL_RECORD"], "run-%d.json" % os.getpid()), "w") as fh:
    json.dump(seen, fh)
print("saw %d images" % len(seen))
"""


@dataclass
class ImageTool:
    binary: Path
    record: Path

    def runs(self) -> list[list[dict[str, Any]]]:
        return [json.loads(p.read_text()) for p in sorted(self.record.glob("run-*.json"))]

    def runner(self) -> LlmRunner:
        return LlmRunner(binary=str(self.binary), env={"IMAGE_TOOL_RECORD": str(self.record)})


@pytest.fixture
def tool(tmp_path: Path) -> ImageTool:
    binary = tmp_path / "image-tool"
    binary.write_text(f"#!{sys.executable}\n{TOOL}")
    binary.chmod(0o755)
    record = tmp_path / "record"
    record.mkdir()
    return ImageTool(binary, record)


@pytest.fixture
def slots_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runners the daemon took a slot for, in order."""
    taken: list[str] = []
    acquire = Limiter.acquire

    async def counted(self: Limiter, runner: str) -> None:
        taken.append(runner)
        await acquire(self, runner)

    monkeypatch.setattr(Limiter, "acquire", counted)
    return taken


def serve(tmp_path: Path, tool: ImageTool, **fields: Any) -> LiveServer:
    return LiveServer(settings(tmp_path, **fields), runners={"llm": tool.runner()})


class ImageSite:
    """An HTTP server on 127.0.0.1 with an image, a text page, a redirect and a large image."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits.append(self.path)
                if self.path == "/cat.png":
                    self._send(200, "image/png", IMAGE)
                elif self.path == "/large.png":
                    self._send(200, "image/png", b"\0" * 8192)
                elif self.path == "/page.html":
                    self._send(200, "text/html", b"<p>no image</p>")
                elif self.path == "/moved.png":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{site.port}/cat.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status: int, media_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[ImageSite]:
    images = ImageSite()
    yield images
    images.close()


# --- the two APIs -------------------------------------------------------------------------


def openai_body(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "llm", "messages": [{"role": "user", "content": content}]}


def anthropic_body(source: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image", "source": source}]
    return {"model": "llm", "max_tokens": 100, "messages": [{"role": "user", "content": content}]}


def anthropic_url_body(url: str) -> dict[str, Any]:
    return anthropic_body({"type": "url", "url": url})


def post_openai(live: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)


def post_anthropic(live: LiveServer, body: dict[str, Any]) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01"}
    return httpx.post(f"{live.url}/v1/messages", json=body, headers=headers, timeout=30)


def refusal_message(api: str, response: httpx.Response) -> str:
    """The message of a 400 in the API's own error shape."""
    assert response.status_code == 400, response.text
    body = response.json()
    if api == "openai":
        assert body["error"]["type"] == "invalid_request_error"
        return str(body["error"]["message"])
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


def send(api: str, live: LiveServer, url: str) -> httpx.Response:
    if api == "openai":
        return post_openai(live, openai_body(url))
    return post_anthropic(live, anthropic_url_body(url))


APIS = ["openai", "anthropic"]

# Everything but data: every one names something the server would open or fetch.
NOT_DATA = [
    "/etc/passwd",
    "etc/passwd",
    "../../../../etc/passwd",
    "~/.ssh/id_rsa",
    "file:///etc/passwd",
    "FILE:/etc/passwd",
    "ftp://127.0.0.1/cat.png",
    "gopher://127.0.0.1:70/",
    "unknown-scheme:cat.png",
    "\\\\server\\share\\cat.png",
]


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_paths_and_urls_are_refused_before_any_tool_runs(
    api: str, tool: ImageTool, site: ImageSite, slots_taken: list[str], tmp_path: Path
) -> None:
    local = [site.url("/cat.png"), site.url("/cat.png", host="localhost"), "https://example.com/cat.png"]
    with serve(tmp_path, tool) as live:
        for url in NOT_DATA + local:
            message = refusal_message(api, send(api, live, url))
            assert "base64" in message, (url, message)
            assert url not in message  # the client's string is not echoed back
    assert slots_taken == [] and tool.runs() == []  # refused while parsing: no slot, no tool
    assert site.hits == []  # and nothing was fetched


@pytest.mark.parametrize("api", APIS)
def test_a_refused_path_tells_nothing_of_the_servers_files(api: str, tool: ImageTool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(IMAGE)
    with serve(tmp_path, tool) as live:
        there = send(api, live, str(secret))
        missing = send(api, live, str(tmp_path / "missing.png"))
        there_url = send(api, live, secret.as_uri())
        missing_url = send(api, live, (tmp_path / "missing.png").as_uri())
    assert there.status_code == missing.status_code == there_url.status_code == missing_url.status_code == 400

    # Only the Anthropic body's request_id, new for every error, may differ.
    def error(response: httpx.Response) -> object:
        return {k: v for k, v in response.json().items() if k != "request_id"}

    assert error(there) == error(missing) and error(there_url) == error(missing_url)
    assert tool.runs() == []


@pytest.mark.parametrize(
    "url",
    [
        "data:text/plain;base64," + base64.b64encode(b"hello").decode(),  # not an image
        "data:image/png;base64,%%%%",  # not base64
        "data:image/png;base64,iVBO Rw0K",  # whitespace
        "data:image/png;base64,iVBORw0",  # bad padding
        "data:image/png;base64,",  # no data
        "data:image/png,rawbytes",  # not base64 at all
        "data:;base64," + base64.b64encode(IMAGE).decode(),  # no media type
    ],
)
def test_bad_data_urls_are_refused(url: str, tool: ImageTool, tmp_path: Path) -> None:
    with serve(tmp_path, tool) as live:
        refusal_message("openai", post_openai(live, openai_body(url)))
    assert tool.runs() == []


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "text/plain", "data": base64.b64encode(b"hello").decode()},
        {"type": "base64", "media_type": "image/png", "data": "/etc/passwd"},
        {"type": "base64", "media_type": "image/png", "data": ""},
        {"type": "base64", "data": base64.b64encode(IMAGE).decode()},
        {"type": "file", "file_id": "file_011"},
        {"type": "url"},
    ],
)
def test_bad_anthropic_sources_are_refused(source: dict[str, Any], tool: ImageTool, tmp_path: Path) -> None:
    with serve(tmp_path, tool) as live:
        refusal_message("anthropic", post_anthropic(live, anthropic_body(source)))
    assert tool.runs() == []


def test_an_image_in_a_tool_result_is_data_only_too(tool: ImageTool, tmp_path: Path) -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}],
    }
    body = {
        "model": "llm",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "see", "input": {}}]},
            {"role": "user", "content": [result]},
        ],
    }
    with serve(tmp_path, tool) as live:
        refusal_message("anthropic", post_anthropic(live, body))
    assert tool.runs() == []


# --- data reaches the tool as a private file ----------------------------------------------


def assert_private_image_given_and_gone(tool: ImageTool, expected: bytes = IMAGE) -> None:
    (run,) = tool.runs()
    (seen,) = run
    assert "error" not in seen, seen
    assert bytes.fromhex(seen["data"]) == expected
    assert (seen["mode"], seen["dir_mode"]) == (0o600, 0o700)
    assert not os.path.exists(seen["given"])  # removed when the run ended


def test_an_openai_data_url_reaches_the_tool_as_a_private_file(
    tool: ImageTool, slots_taken: list[str], tmp_path: Path
) -> None:
    with serve(tmp_path, tool) as live:
        response = post_openai(live, openai_body(DATA_URL))
    assert response.status_code == 200, response.text
    assert slots_taken == ["llm"]
    assert response.json()["choices"][0]["message"]["content"] == "saw 1 images"
    assert_private_image_given_and_gone(tool)


def test_an_anthropic_base64_image_reaches_the_tool_as_a_private_file(tool: ImageTool, tmp_path: Path) -> None:
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(IMAGE).decode()}
    with serve(tmp_path, tool) as live:
        response = post_anthropic(live, anthropic_body(source))
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "saw 1 images"
    assert_private_image_given_and_gone(tool)


# --- fetching http(s) URLs, when the server allows it -------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_fetching_refuses_loopback_and_other_schemes(
    api: str, tool: ImageTool, site: ImageSite, tmp_path: Path
) -> None:
    """Allowed fetching still goes to public addresses only: the host is checked after the
    name is resolved, so `localhost` is refused like 127.0.0.1."""
    with serve(tmp_path, tool, fetch_image_urls=True) as live:
        for url in [site.url("/cat.png"), site.url("/cat.png", host="localhost"), f"http://[::1]:{site.port}/"]:
            assert "public addresses" in refusal_message(api, send(api, live, url)), url
        for url in NOT_DATA:
            assert "base64" in refusal_message(api, send(api, live, url)), url
    assert tool.runs() == [] and site.hits == []


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets the test's loopback server stand for a public host: the one check replaced is
    which addresses count as public; resolving, pinning and every other check stay."""
    original = attachments.public_address
    loopback = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(attachments, "public_address", lambda address: address == loopback or original(address))


@pytest.mark.usefixtures("loopback_is_public")
@pytest.mark.parametrize("api", APIS)
def test_an_allowed_url_is_fetched_by_llmrun_and_given_as_a_private_file(
    api: str, tool: ImageTool, site: ImageSite, tmp_path: Path
) -> None:
    with serve(tmp_path, tool, fetch_image_urls=True) as live:
        response = send(api, live, site.url("/cat.png"))
    assert response.status_code == 200, response.text
    assert site.hits == ["/cat.png"]
    assert_private_image_given_and_gone(tool)  # the tool got a file, not the URL


@pytest.mark.usefixtures("loopback_is_public")
def test_fetching_follows_no_redirect_and_takes_images_only(tool: ImageTool, site: ImageSite, tmp_path: Path) -> None:
    with serve(tmp_path, tool, fetch_image_urls=True, max_body_bytes=4096) as live:
        assert "redirect" in refusal_message("openai", send("openai", live, site.url("/moved.png")))
        assert "did not give an image" in refusal_message("openai", send("openai", live, site.url("/page.html")))
        assert "HTTP 404" in refusal_message("openai", send("openai", live, site.url("/none.png")))
        # More than the request could have sent as its body.
        assert "larger" in refusal_message("openai", send("openai", live, site.url("/large.png")))
    assert site.hits == ["/moved.png", "/page.html", "/none.png", "/large.png"]  # the redirect was not followed
    assert tool.runs() == []


def test_fetching_is_off_unless_configured(tmp_path: Path) -> None:
    from llmrun.server.settings import load_settings

    assert load_settings(data={}).fetch_image_urls is False
    assert load_settings(data={"server": {"fetch_image_urls": True}}).fetch_image_urls is True


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # loopback in IPv6 clothing
        ("10.1.2.3", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("100.64.0.1", False),  # carrier-grade NAT
    ],
)
def test_only_public_addresses_are_fetched_from(address: str, public: bool) -> None:
    assert attachments.public_address(ipaddress.ip_address(address)) is public
