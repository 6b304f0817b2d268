"""End to end: an image in a request reaches the model API through each real tool that takes images.

Each test runs the installed tool (claude, gemini, qwen, opencode, kilo, copilot) in a
throwaway HOME against its mock API on 127.0.0.1, sends one request with a small PNG, and
checks that the mock received that PNG's bytes as image data: an Anthropic image block,
a Gemini inlineData part, or an OpenAI image_url data: URL. The private files llmrun wrote
the image to are gone once the run ends. Run inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_images.py'

A test is skipped when its tool is not installed.

opencode (and kilo) send an image only to a model whose `modalities` (in its config or
catalogue) include images; for other models they tell the model that it cannot read the
file. qwen decides by its settings, in which llmrun says that the model of a run with
images takes them (unless the user's settings say otherwise).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message, private
from llmrun.types import ImagePart

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_gemini import MockGemini
from mock_openai_chat import MockOpenAIChat
from mockapi import MockAnthropic
from realcli import (
    become,
    claude_env,
    copilot_env,
    gemini_env,
    kilo_env,
    opencode_env,
    opencode_provider,
    qwen_env,
    require_binary,
)

from .conftest import tiny_png

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(180)]

RUN_LIMIT = 90.0  # opencode and copilot take seconds to start; a broken run still fails


PNG_BASE64 = base64.b64encode(tiny_png()).decode()
DATA_URL = f"data:image/png;base64,{PNG_BASE64}"


def image_request(workdir: Path, **fields: Any) -> ChatRequest:
    image = ImagePart(data=PNG_BASE64, media_type="image/png")
    message = Message.user("What is in the picture?", images=[image])
    return ChatRequest(messages=[message], cwd=str(workdir), timeout=RUN_LIMIT, **fields)


def image_files_left() -> list[str]:
    """The image files and directories of runs in llmrun's private directory."""
    return [name for name in os.listdir(private.directory()) if name.startswith(("image-", "images-"))]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def no_image_files_left() -> Iterator[None]:
    assert image_files_left() == []
    yield
    assert image_files_left() == [], "an image file outlived its run"


def openai_image_urls(api: MockOpenAIChat) -> list[str]:
    """The image_url URLs of every user message the mock received."""
    urls = []
    for request in api.chat_requests:
        for message in request["json"].get("messages") or []:
            content = message.get("content")
            if message.get("role") == "user" and isinstance(content, list):
                urls += [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
    return urls


# --- claude: image blocks of stream-json input ---------------------------------------------


async def test_claude_sends_the_image_as_an_image_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("claude")
    with MockAnthropic() as api:
        become(monkeypatch, tmp_path, claude_env(tmp_path, api.url))
        response = await llmrun.get_runner("claude_code").complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert response.session_id
        body = api.message_requests[-1]["json"]
    (user,) = [m for m in body["messages"] if m["role"] == "user"]
    images = [block for block in user["content"] if block.get("type") == "image"]
    assert images == [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}}]
    texts = [block["text"] for block in user["content"] if block.get("type") == "text"]
    assert any("What is in the picture?" in text for text in texts)


async def test_claude_sends_an_image_in_a_resumed_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("claude")
    with MockAnthropic() as api:
        become(monkeypatch, tmp_path, claude_env(tmp_path, api.url))
        runner = llmrun.get_runner("claude_code")
        first = await runner.complete(ChatRequest.of("Hello", cwd=str(workdir), timeout=RUN_LIMIT))
        assert first.session_id
        history = [Message.user("Hello"), Message.assistant(first.content)]
        request = image_request(workdir, session_id=first.session_id)
        request = request.model_copy(update={"messages": [*history, *request.messages]})
        await runner.complete(request)
        body = api.message_requests[-1]["json"]
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert len(users) == 2  # the resumed conversation, then the new turn with its image
    assert [b["source"]["data"] for b in users[-1]["content"] if b.get("type") == "image"] == [PNG_BASE64]


async def test_a_warm_claude_session_sends_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("claude")
    with MockAnthropic() as api:
        become(monkeypatch, tmp_path, claude_env(tmp_path, api.url))
        runner = llmrun.get_runner("claude_code")
        async with runner.session(cwd=str(workdir), timeout=RUN_LIMIT) as session:
            response = await session.complete(image_request(workdir))
        assert response.content == "Hello from mock"
        body = api.message_requests[-1]["json"]
    user = [m for m in body["messages"] if m["role"] == "user"][-1]
    assert [b["source"]["data"] for b in user["content"] if b.get("type") == "image"] == [PNG_BASE64]


# --- gemini and qwen: `@path` references to a private directory -----------------------------


async def test_gemini_sends_the_image_as_inline_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("gemini")
    with MockGemini() as api:
        become(monkeypatch, tmp_path, gemini_env(tmp_path, api.url, max_attempts=1))
        response = await llmrun.get_runner("gemini").complete(image_request(workdir))
        assert response.content == "Hello from mock"
        requests = api.generate_requests
    parts = [part for r in requests for content in r["json"].get("contents", []) for part in content.get("parts", [])]
    assert {"inlineData": {"data": PNG_BASE64, "mimeType": "image/png"}} in parts
    assert any("What is in the picture?" in part.get("text", "") for part in parts)


async def test_qwen_sends_the_image_as_an_image_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("qwen")
    with MockOpenAIChat() as api:
        become(monkeypatch, tmp_path, qwen_env(tmp_path, api.base_url))
        runner = llmrun.get_runner("qwen", extra_args=["--auth-type", "openai"])
        response = await runner.complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


# --- opencode, kilo and copilot: file attachments --------------------------------------------


def with_image_input(config: dict[str, Any], model: str = "mock-model") -> str:
    """The mock provider's model declared as taking images, as a vision model's entry is."""
    config["provider"]["mock"]["models"][model]["modalities"] = {"input": ["text", "image"], "output": ["text"]}
    return json.dumps(config)


async def test_opencode_attaches_the_image_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path) -> None:
    require_binary("opencode")
    with MockOpenAIChat() as api:
        env = opencode_env(tmp_path, api.base_url)
        env["OPENCODE_CONFIG_CONTENT"] = with_image_input(opencode_provider(api.base_url))
        become(monkeypatch, tmp_path, env)
        response = await llmrun.get_runner("opencode").complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


async def test_kilo_attaches_the_image_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path) -> None:
    require_binary("kilo")
    with MockOpenAIChat() as api:
        env = kilo_env(tmp_path, api.base_url)
        env["KILO_CONFIG_CONTENT"] = with_image_input(json.loads(env["KILO_CONFIG_CONTENT"]))
        become(monkeypatch, tmp_path, env)
        response = await llmrun.get_runner("kilo").complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


async def test_copilot_attaches_the_image_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_binary("copilot")
    with MockOpenAIChat() as api:
        cache = tmp_path_factory.mktemp("copilot-cache")
        become(monkeypatch, tmp_path, copilot_env(tmp_path, api.base_url, cache_dir=cache))
        response = await llmrun.get_runner("copilot").complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


# --- warm sessions over ACP: image content blocks --------------------------------------------


async def test_a_warm_gemini_session_sends_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("gemini")
    with MockGemini() as api:
        become(monkeypatch, tmp_path, gemini_env(tmp_path, api.url, max_attempts=1))
        async with llmrun.get_runner("gemini").session(cwd=str(workdir), timeout=RUN_LIMIT) as session:
            response = await session.complete(image_request(workdir))
        assert response.content == "Hello from mock"
        requests = api.generate_requests
    parts = [part for r in requests for content in r["json"].get("contents", []) for part in content.get("parts", [])]
    assert {"inlineData": {"data": PNG_BASE64, "mimeType": "image/png"}} in parts


async def test_a_warm_qwen_session_sends_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("qwen")
    with MockOpenAIChat() as api:
        become(monkeypatch, tmp_path, qwen_env(tmp_path, api.base_url))
        runner = llmrun.get_runner("qwen", extra_args=["--auth-type", "openai"])
        async with runner.session(cwd=str(workdir), timeout=RUN_LIMIT) as session:
            response = await session.complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


async def test_a_warm_opencode_session_sends_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    require_binary("opencode")
    with MockOpenAIChat() as api:
        env = opencode_env(tmp_path, api.base_url)
        env["OPENCODE_CONFIG_CONTENT"] = with_image_input(opencode_provider(api.base_url))
        become(monkeypatch, tmp_path, env)
        async with llmrun.get_runner("opencode").session(cwd=str(workdir), timeout=RUN_LIMIT) as session:
            response = await session.complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


async def test_a_warm_copilot_session_sends_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_binary("copilot")
    with MockOpenAIChat() as api:
        cache = tmp_path_factory.mktemp("copilot-cache")
        become(monkeypatch, tmp_path, copilot_env(tmp_path, api.base_url, cache_dir=cache))
        async with llmrun.get_runner("copilot").session(cwd=str(workdir), timeout=RUN_LIMIT) as session:
            response = await session.complete(image_request(workdir))
        assert response.content == "Hello from mock"
        assert DATA_URL in openai_image_urls(api)


# --- the command: `llmrun chat -a` ------------------------------------------------------------


def test_chat_attachment_reaches_the_api_through_claude(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: Path
) -> None:
    from typer.testing import CliRunner

    from llmrun.cli.app import app

    require_binary("claude")
    image = tmp_path / "picture.png"
    image.write_bytes(tiny_png())
    with MockAnthropic() as api:
        become(monkeypatch, tmp_path, claude_env(tmp_path, api.url))
        monkeypatch.setenv("LLMRUN_LOGS_PATH", str(tmp_path / "logs.db"))
        args = ["chat", "-r", "claude", "--cwd", str(workdir), "--timeout", str(RUN_LIMIT), "-a", str(image), "What?"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert result.stdout == "Hello from mock\n"
        body = api.message_requests[-1]["json"]
    user = [m for m in body["messages"] if m["role"] == "user"][-1]
    assert [b["source"]["data"] for b in user["content"] if b.get("type") == "image"] == [PNG_BASE64]
