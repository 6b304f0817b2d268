"""What the daemon refuses: missing or wrong keys, foreign Host headers, big bodies, open binds."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from llmrun.errors import ConfigError
from llmrun.server import load_settings

from .conftest import ROOT, FakeRun
from .server_support import LiveServer, claude_fake, settings

pytestmark = pytest.mark.timeout(30)

KEY = "sk-llmrun-test-key"
CHAT = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def keyed(claude: FakeRun, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(settings(tmp_path, api_key=KEY)) as live:
        yield live


# --- API key ------------------------------------------------------------------------------


def test_key_is_required_on_loopback_too_once_set(keyed: LiveServer, claude: FakeRun) -> None:
    wrong = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="sk-wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(**CHAT)
    assert caught.value.body["code"] == "invalid_api_key"
    assert caught.value.response.headers["www-authenticate"] == "Bearer"

    right = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0, timeout=10)
    assert right.chat.completions.create(**CHAT).choices[0].message.content == "Hello from mock"

    # The Anthropic SDK sends x-api-key.
    bad = anthropic.Anthropic(base_url=keyed.url, api_key="nope", max_retries=0, timeout=10)
    with pytest.raises(anthropic.AuthenticationError) as caught_a:
        bad.messages.create(max_tokens=5, **CHAT)
    assert caught_a.value.body["error"]["type"] == "authentication_error"
    good = anthropic.Anthropic(base_url=keyed.url, api_key=KEY, max_retries=0, timeout=10)
    assert good.messages.create(max_tokens=5, **CHAT).stop_reason == "end_turn"

    assert len([i for i in claude.invocations() if "--output-format" in i["argv"]]) == 2  # refused requests ran nothing


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/v1/models", "/v1/runners", "/openapi.json"])
def test_every_endpoint_needs_the_key(keyed: LiveServer, path: str) -> None:
    assert httpx.get(keyed.url + path, timeout=10).status_code == 401
    assert httpx.get(keyed.url + path, headers={"x-api-key": KEY + "x"}, timeout=10).status_code == 401
    assert httpx.get(keyed.url + "/health", headers={"authorization": f"Bearer {KEY}"}, timeout=10).status_code == 200


def test_keys_are_compared_in_constant_time(keyed: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from llmrun.server import security

    calls = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    httpx.get(keyed.url + "/health", headers={"authorization": f"Bearer {KEY}", "x-api-key": "other"}, timeout=10)
    assert sorted(calls) == sorted([(KEY.encode(), KEY.encode()), (b"other", KEY.encode())])


# --- Host header --------------------------------------------------------------------------


def test_foreign_host_headers_are_refused(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, allowed_hosts=["llm.internal"])) as live:
        port = live.port

        def status(host: str, path: str = "/health") -> int:
            return httpx.get(live.url + path, headers={"host": host}, timeout=10).status_code

        assert status("evil.example") == 403
        assert status(f"evil.example:{port}") == 403
        assert status("127.0.0.1.evil.example") == 403
        assert status(f"localhost:{port}") == 200
        assert status(f"127.0.0.1:{port}") == 200
        assert status(f"[::1]:{port}") == 200
        assert status("llm.internal") == 200
        refused = httpx.post(
            live.url + "/v1/messages", json={**CHAT, "max_tokens": 5}, headers={"host": "evil.example"}, timeout=10
        )
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert claude.invocations() == []


def test_a_wildcard_bind_takes_any_host_but_needs_the_key(claude: FakeRun, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without an API key"):
        settings(tmp_path, host="0.0.0.0")
    with LiveServer(settings(tmp_path, host="0.0.0.0", api_key=KEY)) as live:
        headers = {"host": "my-box.lan", "authorization": f"Bearer {KEY}"}
        assert httpx.get(live.url + "/health", headers=headers, timeout=10).status_code == 200
        assert httpx.get(live.url + "/health", headers={"host": "my-box.lan"}, timeout=10).status_code == 401


def test_command_refuses_an_open_bind_without_a_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "serve", "--host", "0.0.0.0", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LLMRUN_CONFIG": str(tmp_path / "none.toml")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == ConfigError.exit_code, done.stderr
    assert "refusing to listen on 0.0.0.0 without an API key" in done.stderr
    assert "LLMRUN_API_KEY" in done.stderr


# --- body size ----------------------------------------------------------------------------


def test_big_bodies_are_413(claude: FakeRun, tmp_path: Path) -> None:
    big = {"model": "claude", "messages": [{"role": "user", "content": "x" * 5000}]}
    with LiveServer(settings(tmp_path, max_body_bytes=4096)) as live:
        announced = httpx.post(live.url + "/v1/chat/completions", json=big, timeout=10)
        assert announced.status_code == 413
        assert announced.json()["error"]["type"] == "invalid_request_error"

        def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
            data = httpx.Request("POST", "http://x", json={**big, "max_tokens": 5}).content
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

        json_type = {"content-type": "application/json"}
        chunked = httpx.post(live.url + "/v1/messages", content=chunks(), headers=json_type, timeout=10)
        assert chunked.status_code == 413
        assert chunked.json()["error"]["type"] == "request_too_large"
        small = httpx.post(live.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert small.status_code == 200
    assert len(claude.invocations()) == 1


# --- CORS ---------------------------------------------------------------------------------


def test_no_cors_unless_configured(claude: FakeRun, tmp_path: Path) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    with LiveServer(settings(tmp_path)) as live:
        response = httpx.options(live.url + "/v1/chat/completions", headers=preflight, timeout=10)
        assert "access-control-allow-origin" not in response.headers
        plain = httpx.get(live.url + "/health", headers={"origin": "https://app.example"}, timeout=10)
        assert "access-control-allow-origin" not in plain.headers
    with LiveServer(settings(tmp_path, cors_origins=["https://app.example"], api_key=KEY)) as live:
        response = httpx.options(live.url + "/v1/chat/completions", headers=preflight, timeout=10)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(
            live.url + "/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"}, timeout=10
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


# --- logs ---------------------------------------------------------------------------------


def test_prompts_are_not_logged_above_debug(claude: FakeRun, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "SECRET-PROMPT-7f3a"
    body = {"model": "claude", "messages": [{"role": "system", "content": secret}, {"role": "user", "content": secret}]}
    caplog.set_level(logging.INFO)
    with LiveServer(settings(tmp_path)) as live:
        assert httpx.post(live.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
        assert any("turn" in r.getMessage() for r in caplog.records)
        assert not [r for r in caplog.records if secret in r.getMessage()]
        caplog.set_level(logging.DEBUG, logger="llmrun")
        assert httpx.post(live.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
    assert [r.levelno for r in caplog.records if secret in r.getMessage()] == [logging.DEBUG]


def test_tools_never_see_the_servers_api_key(claude: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tool allowed to run commands could print its environment to any client.
    monkeypatch.setenv("LLMRUN_API_KEY", KEY)
    with LiveServer(load_settings({"sessions": tmp_path / "s.sqlite3", "max_warm": 0})) as live:
        assert live.settings.api_key == KEY
        body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(live.url + "/v1/chat/completions", json=body, headers=headers, timeout=10).status_code == 200
    (run,) = claude.invocations()
    assert "LLMRUN_API_KEY" not in run["env"] and KEY not in str(run["env"])


# --- settings -----------------------------------------------------------------------------


def test_settings_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[server]\nport = 9999\nmax_per_runner = 2\ntools = "reject"\nsessions = "/tmp/x.sqlite3"\n'
        '[server.aliases]\nfast = "claude_code/haiku"\n'
    )
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    loaded = load_settings({"max_per_runner": 5, "port": None})
    assert (loaded.port, loaded.max_per_runner, loaded.tools) == (9999, 5, "reject")
    assert loaded.aliases == {"fast": "claude_code/haiku"} and str(loaded.sessions) == "/tmp/x.sqlite3"

    monkeypatch.setenv("LLMRUN_API_KEY", "from-env")
    assert load_settings({"host": "0.0.0.0"}).api_key == "from-env"

    for text, words in [
        ("[server]\nprot = 1\n", "unknown key"),
        ('[server]\napi_key = "k"\n', "keep the key out of the config file"),
        ("[server]\nport = true\n", "expected int"),
        ('[server]\ntools = "maybe"\n', "emulate"),
        ("[server.aliases]\nfast = 3\n", "table of strings"),
        ("server = 3\n", "server"),
    ]:
        config.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_settings()
