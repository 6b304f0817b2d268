"""SimpleLLMFunc's `@llm_function` and `@llm_chat` answered by llmrun runners (LlmrunInterface).

SimpleLLMFunc's releases for Python 3.11 (0.4) need openai<2 and httpx<0.29, older than llmrun's
own environment has; its later ones need Python >= 3.12. Either way it lives in a virtualenv of
its own, with this checkout of llmrun installed there too: `scripts/install-python-tools` makes
`simplellmfunc` (Python 3.11, SimpleLLMFunc 0.4) and `simplellmfunc-latest` (the newest Python
and SimpleLLMFunc) under $LLMRUN_TOOLS_HOME (~/.local/share/llmrun-tools). Each test runs one
case of tests/integration_scripts/simplellmfunc_cases.py with the python of every such
virtualenv there is (or only $LLMRUN_SIMPLELLMFUNC_PYTHON, when set) and asserts on the JSON the
case writes; it skips when there is none.

Plain and streaming calls go through the claude_code runner and the fake claude (fixtures/bin)
replaying captures; the tool loop and the parameters use a scripted runner inside the case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import FAKE_TOOLS, ROOT, FakeRun

TOOLS_HOME = Path(os.environ.get("LLMRUN_TOOLS_HOME") or Path.home() / ".local/share/llmrun-tools")
VIRTUALENVS = ("simplellmfunc", "simplellmfunc-latest")
# Read at import: the tests' fixtures clear LLMRUN_* variables.
PYTHONS = (
    {"given": os.environ["LLMRUN_SIMPLELLMFUNC_PYTHON"]}
    if os.environ.get("LLMRUN_SIMPLELLMFUNC_PYTHON")
    else {name: str(TOOLS_HOME / name / "bin/python") for name in VIRTUALENVS if (TOOLS_HOME / name).is_dir()}
)
CASES = ROOT / "tests" / "integration_scripts" / "simplellmfunc_cases.py"
MISSING = (
    "SimpleLLMFunc needs openai<2: install it with scripts/install-python-tools "
    "(or name a python that has it in LLMRUN_SIMPLELLMFUNC_PYTHON)"
)

Json = dict[str, Any]


EACH_PYTHON: list[Any] = sorted(PYTHONS) or [pytest.param(None, marks=pytest.mark.skip(reason=MISSING))]


@pytest.fixture(params=EACH_PYTHON)
def python(request: pytest.FixtureRequest) -> str:
    """The python of one virtualenv that has SimpleLLMFunc and llmrun."""
    return PYTHONS[request.param]


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(next(t for t in FAKE_TOOLS if t.runner == "claude_code"), monkeypatch, record)


def run_case(python: str, case: str, tmp_path: Path) -> Json:
    """Run one case with SimpleLLMFunc's python and return what it wrote."""
    out = tmp_path / f"{case}.json"
    env = {
        **os.environ,  # the fake CLI's settings, from the `claude` fixture
        "PYTHONPATH": str(ROOT),  # this checkout's llmrun, whatever the virtualenv holds
        "LOG_LEVEL": "WARNING",  # SimpleLLMFunc's logging: quiet, and into the test's directory
        "LOG_DIR": str(tmp_path / "logs"),
    }
    # In the test's directory: SimpleLLMFunc reads a .env file from where it runs.
    done = subprocess.run(
        [python, str(CASES), case, str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110
    )
    if done.returncode != 0 or not out.is_file():
        sys.stderr.write(done.stdout + done.stderr)
        pytest.fail(f"case {case} failed (exit {done.returncode}); its output is above")
    result: Json = json.loads(out.read_text())
    return result


# --- plain and streaming, through the claude_code runner and its fake CLI ----------------------


def test_llm_function_answers_through_the_runner(python: str, claude: FakeRun, tmp_path: Path) -> None:
    result = run_case(python, "function_plain", tmp_path)
    assert result["is_llm_interface"] is True
    assert result["answer"] == "Hello from mock"
    assert result["model_name"] == "claude_code/sonnet"
    assert result["tokens"] == [24, 14]  # two calls of 12 in, 7 out each
    # The interface's own chat(): the openai package's ChatCompletion.
    assert result["completion_type"] == "ChatCompletion" and result["is_openai_completion"] is True
    assert (result["completion_content"], result["completion_model"]) == ("Hello from mock", "claude-opus-4-8")
    first = claude.invocations()[0]
    assert "sonnet" in first["argv"]
    prompt = json.dumps(first)  # the system prompt in argv, the parameters on stdin
    assert "Greet the person by name." in prompt and "Ada" in first["stdin"]


def test_llm_chat_streams_the_runners_chunks(python: str, claude: FakeRun, tmp_path: Path) -> None:
    result = run_case(python, "chat_stream", tmp_path)
    assert result["pieces"] == ["Hello ", "from ", "mock"]
    assert result["history_roles"] == ["system", "user"]
    # The interface's own chat_stream(): one stream of openai chunks, finish and usage at the end.
    assert result["direct_all_openai_chunks"] is True and result["direct_text"] == "Hello from mock"
    assert result["direct_last"] == ["stop", 7]
    assert result["stream_ids"] == 1


def test_a_runners_error_reaches_the_caller_as_llmruns(python: str, claude: FakeRun, tmp_path: Path) -> None:
    claude.scenario("mock-401-stream")
    result = run_case(python, "error", tmp_path)
    assert (result["module"], result["error"]) == ("llmrun.errors", "AuthenticationError")
    assert "Invalid API key" in result["message"]


# --- one tool call, in SimpleLLMFunc's own loop --------------------------------------------------


def test_llm_function_runs_the_models_tool_call_and_answers_with_its_result(python: str, tmp_path: Path) -> None:
    result = run_case(python, "function_tool", tmp_path)
    assert result["tool_ran_with"] == ["Paris"]
    assert result["answer"] == "It is sunny in Paris, 21 C."
    first, second = result["requests"]
    assert '"name": "get_weather"' in first["system"] and "The city's name" in first["system"]
    assert "Report the weather in the city" in first["system"]
    *_, call, tool_result = second["messages"]
    assert (call["role"], call["tool_calls"]) == ("assistant", [["get_weather", {"city": "Paris"}]])
    assert tool_result["role"] == "tool" and "sunny, 21 C in Paris" in tool_result["text"]


def test_llm_chat_streams_around_the_tool_call(python: str, tmp_path: Path) -> None:
    result = run_case(python, "chat_tool_stream", tmp_path)
    assert result["tool_ran_with"] == ["Paris"]
    assert result["text"] == "Let me look.It is sunny in Paris, 21 C."
    # SimpleLLMFunc 0.4 keeps "Let me look." in a message of its own before the one with the
    # call, later versions in the same one; the call and its result end the history either way.
    *_, (call_role, _, has_calls), (result_role, tool_result, _) = result["history"]
    assert (call_role, has_calls, result_role) == ("assistant", True, "tool")
    assert "sunny, 21 C in Paris" in tool_result
    first, second = result["requests"]
    assert '"name": "get_weather"' in first["system"]
    *_, call, sent_result = second["messages"]
    assert call["tool_calls"] == [["get_weather", {"city": "Paris"}]]
    assert sent_result["role"] == "tool" and "sunny, 21 C in Paris" in sent_result["text"]


# --- what the decorators' keyword arguments become -----------------------------------------------


def test_sampling_parameters_and_settings_become_request_fields(python: str, tmp_path: Path) -> None:
    result = run_case(python, "parameters", tmp_path)
    assert result["value"] == 42
    assert result["request"] == {
        "model": "m-large",
        "temperature": 0.2,
        "max_tokens": 64,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "json_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "timeout": 30.0,
        "cwd": "/tmp",
    }


def test_a_parameter_llmrun_cannot_honour_is_refused_before_any_run(python: str, tmp_path: Path) -> None:
    result = run_case(python, "unsupported", tmp_path)
    assert (result["module"], result["error"]) == ("llmrun.errors", "UnsupportedFeature")
    assert "logprobs" in result["message"]
    assert result["requests"] == 0
