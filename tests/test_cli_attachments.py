"""`llmrun chat -a/--attachment`, `-t/--template` with `llmrun templates`, and `llmrun aliases`,
driven through the claude fake (which records its argv and stdin)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmrun.cli.app import app
from llmrun.runners.claude_code import ClaudeCodeRunner

from .cli_support import claude_fake, private_state
from .conftest import FakeRun, tiny_png

cli = CliRunner()


PNG = tiny_png()
GIF = bytes.fromhex(  # a valid 1x1 GIF
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    private_state(monkeypatch, tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("LLMRUN_CONFIG", str(tmp_path / "llmrun.toml"))
    monkeypatch.setenv("LLMRUN_LOGS_PATH", str(tmp_path / "logs.db"))  # never the developer's log


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def sent_message(claude: FakeRun) -> dict[str, Any]:
    """The one stream-json user message a one-shot run wrote on the fake's stdin."""
    (invocation,) = claude.invocations()
    argv = invocation["argv"]
    assert argv[argv.index("--input-format") + 1] == "stream-json"
    (line,) = invocation["stdin"].splitlines()
    message = json.loads(line)
    assert message["type"] == "user"
    return message["message"]


def image_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [block for block in message["content"] if block["type"] == "image"]


# --- attachments --------------------------------------------------------------------------


def test_an_attached_file_reaches_claude_as_an_image_block(claude: FakeRun, tmp_path: Path) -> None:
    image = tmp_path / "shot.png"
    image.write_bytes(PNG)
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", str(image), "What is in the picture?"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()  # the fake's answer to a stream-json message
    message = sent_message(claude)
    (block,) = image_blocks(message)
    assert block["source"] == {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}
    assert message["content"][-1] == {"type": "text", "text": "What is in the picture?"}


def test_several_attachments_keep_their_order_and_kinds(claude: FakeRun, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.gif").write_bytes(GIF)
    result = cli.invoke(
        app, ["chat", "-r", "claude", "-a", str(tmp_path / "a.png"), "-a", str(tmp_path / "b.gif"), "hi"]
    )
    assert result.exit_code == 0, result.output
    kinds = [block["source"]["media_type"] for block in image_blocks(sent_message(claude))]
    assert kinds == ["image/png", "image/gif"]


def test_stdin_is_attached_as_bytes(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", "-", "Describe it"], input=PNG)
    assert result.exit_code == 0, result.output
    (block,) = image_blocks(sent_message(claude))
    assert base64.b64decode(block["source"]["data"]) == PNG


def test_stdin_attachment_needs_the_prompt_as_an_argument(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", "-"], input=PNG)
    assert result.exit_code == 2
    assert "prompt must be given as an argument" in result.output + result.stderr
    assert claude.invocations() == []


def test_a_text_without_images_is_one_text_block(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "hi"])
    assert result.exit_code == 0, result.output
    assert sent_message(claude)["content"] == [{"type": "text", "text": "hi"}]


class _ImageServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_url_is_fetched_by_the_command(claude: FakeRun, image_server: str) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", f"{image_server}/cat.png", "hi"])
    assert result.exit_code == 0, result.output
    (block,) = image_blocks(sent_message(claude))
    assert base64.b64decode(block["source"]["data"]) == PNG


def test_a_url_that_fails_is_a_usage_error(claude: FakeRun, image_server: str) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", f"{image_server}/missing.png", "hi"])
    assert result.exit_code == 2
    assert "HTTP 404" in result.output + result.stderr
    assert claude.invocations() == []


def test_a_file_that_is_not_an_image_is_refused_naming_the_kinds_taken(claude: FakeRun, tmp_path: Path) -> None:
    notes = tmp_path / "notes.pdf"
    notes.write_bytes(b"%PDF-1.7 not an image")
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", str(notes), "summarise"])
    assert result.exit_code == 14  # unsupported
    assert "PNG, JPEG, GIF and WebP" in result.stderr
    assert "application/pdf" in result.stderr
    assert claude.invocations() == []


def test_a_missing_file_is_a_usage_error(claude: FakeRun, tmp_path: Path) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", str(tmp_path / "nope.png"), "hi"])
    assert result.exit_code == 2
    assert "cannot read" in result.output + result.stderr
    assert claude.invocations() == []


def test_a_runner_without_images_refuses_them_clearly(
    claude: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text_only = ClaudeCodeRunner.capabilities.model_copy(update={"images": False})
    monkeypatch.setattr(ClaudeCodeRunner, "capabilities", text_only)
    (tmp_path / "a.png").write_bytes(PNG)
    result = cli.invoke(app, ["chat", "-r", "claude", "-a", str(tmp_path / "a.png"), "hi"])
    assert result.exit_code == 14
    assert "does not take images" in result.stderr
    assert claude.invocations() == []


def test_image_kinds_are_told_from_their_bytes() -> None:
    from llmrun.cli.attachments import image_type

    assert image_type(PNG) == "image/png"
    assert image_type(GIF) == "image/gif"
    assert image_type(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "image/jpeg"
    assert image_type(b"RIFF\x24\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_type(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert image_type(b"hello") is None


# --- templates ----------------------------------------------------------------------------


def save(*args: str) -> Any:
    return cli.invoke(app, ["templates", "save", *args])


def test_a_saved_template_is_listed_shown_and_used(claude: FakeRun, tmp_path: Path) -> None:
    result = save("terse", "-s", "Answer in five words.", "-r", "claude", "-m", "haiku", "-o", "effort", "low")
    assert result.exit_code == 0, result.output
    path = tmp_path / "config" / "llmrun" / "templates" / "terse.toml"
    assert path.is_file() and path.stat().st_mode & 0o077 == 0

    listed = cli.invoke(app, ["templates", "list", "--json"])
    assert json.loads(listed.stdout) == {
        "terse": {"system": "Answer in five words.", "runner": "claude", "model": "haiku", "options": {"effort": "low"}}
    }
    assert "terse" in cli.invoke(app, ["templates"]).stdout
    assert 'system = "Answer in five words."' in cli.invoke(app, ["templates", "show", "terse"]).stdout

    result = cli.invoke(app, ["chat", "-t", "terse", "hi"])
    assert result.exit_code == 0, result.output
    argv = claude.invocations()[0]["argv"]
    assert argv[argv.index("--system-prompt") + 1] == "Answer in five words."
    assert argv[argv.index("--model") + 1] == "haiku"
    assert argv[argv.index("--effort") + 1] == "low"


def test_flags_win_over_the_template(claude: FakeRun) -> None:
    assert save("terse", "-s", "Five words.", "-r", "claude", "-m", "haiku", "-o", "effort", "low").exit_code == 0
    result = cli.invoke(app, ["chat", "-t", "terse", "-m", "opus", "-s", "Ten words.", "-o", "effort", "high", "hi"])
    assert result.exit_code == 0, result.output
    argv = claude.invocations()[0]["argv"]
    assert argv[argv.index("--model") + 1] == "opus"
    assert argv[argv.index("--system-prompt") + 1] == "Ten words."
    assert argv[argv.index("--effort") + 1] == "high"


def test_the_template_model_goes_with_its_own_runner_only() -> None:
    from llmrun.cli.chat import ChatOptions
    from llmrun.cli.templates import Template, apply_template

    template = Template(name="t", system="S", runner="gemini", model="pro", sampling={"temperature": 0.2})
    opts = ChatOptions(sampling={"temperature": None})
    assert apply_template(template, opts, "claude_code") == "claude_code"
    assert (opts.model, opts.system, opts.sampling["temperature"]) == (None, "S", 0.2)
    opts = ChatOptions()
    assert apply_template(template, opts, None) == "gemini"
    assert opts.model == "pro"
    opts = ChatOptions()
    assert apply_template(template, opts, "gemini-cli") == "gemini-cli"  # the same runner, by an alias
    assert opts.model == "pro"


def test_a_template_file_is_checked_and_named_in_errors(claude: FakeRun, tmp_path: Path) -> None:
    folder = tmp_path / "config" / "llmrun" / "templates"
    folder.mkdir(parents=True)
    (folder / "bad.toml").write_text('system = "x"\nsytem_prompt = "typo"\n')
    result = cli.invoke(app, ["chat", "-r", "claude", "-t", "bad", "hi"])
    assert result.exit_code == 2
    assert "bad.toml" in result.stderr and "sytem_prompt" in result.stderr
    assert claude.invocations() == []


def test_an_unknown_template_names_those_saved(claude: FakeRun) -> None:
    assert save("one", "-s", "x").exit_code == 0
    result = cli.invoke(app, ["chat", "-r", "claude", "-t", "two", "hi"])
    assert result.exit_code == 2
    assert "no template named 'two'" in result.stderr and "one" in result.stderr
    assert claude.invocations() == []


def test_save_refuses_to_replace_without_force_and_delete_removes(tmp_path: Path) -> None:
    assert save("one", "-s", "first").exit_code == 0
    assert save("one", "-s", "second").exit_code == 2
    assert save("one", "-s", "second", "--force").exit_code == 0
    assert 'system = "second"' in cli.invoke(app, ["templates", "show", "one"]).stdout
    assert cli.invoke(app, ["templates", "delete", "one"]).exit_code == 0
    assert cli.invoke(app, ["templates", "show", "one"]).exit_code == 2


def test_template_names_cannot_leave_the_directory() -> None:
    result = save("../escape", "-s", "x")
    assert result.exit_code == 2
    assert "template name" in result.output + result.stderr


def test_texts_with_quotes_and_newlines_round_trip() -> None:
    system = 'Say "hi"\nthen \\stop\t.'
    args = ["-s", system, "--temperature", "0.5", "--schema", '{"type": "object"}']
    args += ["-o", "odd key", '{"a": [1, "x"], "b c": true}', "-o", "effort", "high"]
    assert save("q", *args).exit_code == 0
    listed = json.loads(cli.invoke(app, ["templates", "list", "--json"]).stdout)
    assert listed["q"] == {
        "system": system,
        "temperature": 0.5,
        "schema": {"type": "object"},
        "options": {"odd key": {"a": [1, "x"], "b c": True}, "effort": "high"},
    }


# --- aliases ------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "llmrun.toml").write_text(text)


def test_aliases_are_listed(tmp_path: Path) -> None:
    write_config(tmp_path, '[server.aliases]\nfast = "claude_code/haiku"\nboth = "claude_code,gemini/flash"\n')
    result = cli.invoke(app, ["aliases"])
    assert result.exit_code == 0, result.output
    assert "fast" in result.stdout and "claude_code  (model haiku)" in result.stdout
    assert "claude_code,gemini/flash" in result.stdout
    listed = cli.invoke(app, ["aliases", "--json"])
    assert json.loads(listed.stdout) == {"fast": "claude_code/haiku", "both": "claude_code,gemini/flash"}


def test_no_aliases_says_where_to_add_them() -> None:
    result = cli.invoke(app, ["aliases"])
    assert result.exit_code == 0
    assert "[server.aliases]" in result.stderr and result.stdout == ""


def test_an_alias_is_a_runner_and_model_for_chat(claude: FakeRun, tmp_path: Path) -> None:
    write_config(tmp_path, '[server.aliases]\nfast = "claude_code/haiku"\n')
    result = cli.invoke(app, ["chat", "-r", "fast", "hi"])
    assert result.exit_code == 0, result.output
    argv = claude.invocations()[0]["argv"]
    assert argv[argv.index("--model") + 1] == "haiku"


def test_a_model_flag_wins_over_the_alias_model(claude: FakeRun, tmp_path: Path) -> None:
    write_config(tmp_path, '[server.aliases]\nfast = "claude_code:haiku"\n')
    result = cli.invoke(app, ["chat", "-r", "fast", "-m", "opus", "hi"])
    assert result.exit_code == 0, result.output
    argv = claude.invocations()[0]["argv"]
    assert argv[argv.index("--model") + 1] == "opus"


def test_a_template_may_name_an_alias(claude: FakeRun, tmp_path: Path) -> None:
    write_config(tmp_path, '[server.aliases]\nfast = "claude_code/haiku"\n')
    assert save("quick", "-r", "fast", "-s", "Be quick.").exit_code == 0
    result = cli.invoke(app, ["chat", "-t", "quick", "hi"])
    assert result.exit_code == 0, result.output
    argv = claude.invocations()[0]["argv"]
    assert argv[argv.index("--model") + 1] == "haiku"
    assert argv[argv.index("--system-prompt") + 1] == "Be quick."


def test_a_malformed_alias_table_is_a_config_error(tmp_path: Path) -> None:
    write_config(tmp_path, "[server.aliases]\nfast = 3\n")
    result = cli.invoke(app, ["aliases"])
    assert result.exit_code == 2
    assert "llmrun.toml" in result.stderr
