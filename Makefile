# Everything runs with the Python of the checkout's own virtualenv, .venv, made from python3 when
# it is missing: a system Python (Debian, Ubuntu: PEP 668) refuses `pip install`, and a python3 of
# another virtualenv earlier on PATH may not have llmrun. PYTHON=... uses another interpreter
# instead, on the command line (an active virtualenv: make test PYTHON=python; a PYTHON in the
# environment does not count); BASE_PYTHON=... is the Python that makes .venv.
VENV := .venv
BASE_PYTHON := python3
PYTHON := $(VENV)/bin/python
ifeq ($(PYTHON),$(VENV)/bin/python)
MAKE_VENV := $(PYTHON)
endif
# All of tests/; make test TESTS=tests/test_cli.py runs some.
TESTS :=
# Where PYTHON's scripts (llmrun, llm) are installed: first on PATH while the tests run.
SCRIPTS = $$($(PYTHON) -c 'import os, sys; print(os.path.dirname(sys.executable))')

.PHONY: install install-clis test lint bench

$(VENV)/bin/python:
	$(BASE_PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "could not make $(VENV) with $(BASE_PYTHON) -m venv (Debian, Ubuntu: apt install python3-venv)" >&2; exit 1; }
	$(VENV)/bin/python -m pip install --quiet --upgrade pip

# llmrun itself with its test tools, plus the Claude Code CLI when npm is there and claude is not.
install: $(MAKE_VENV)
	$(PYTHON) -m pip install -e '.[dev,server,continue,langchain,litellm,anyllm]'
	@command -v claude >/dev/null || { command -v npm >/dev/null && npm install -g --no-audit --no-fund @anthropic-ai/claude-code; } || true

# The real CLIs the real-binary tests drive (each against a mock API on 127.0.0.1); llm goes into
# PYTHON's environment, next to llmrun.
install-clis: $(MAKE_VENV)
	npm install -g --no-audit --no-fund @anthropic-ai/claude-code @openai/codex @google/gemini-cli @qwen-code/qwen-code @github/copilot opencode-ai
	npm install -g --no-audit --no-fund cline @kilocode/cli@7.7.7 @continuedev/cli droid
	$(PYTHON) -m pip install llm llm-echo llm-markov
	bash scripts/install-python-tools

test:
	@$(PYTHON) -c 'import pytest' 2>/dev/null || { echo "$(PYTHON) has no pytest: run make install first" >&2; exit 1; }
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) -m pytest -q -rs $(TESTS)

lint:
	$(PYTHON) -m ruff check llmrun tests fixtures bench
	$(PYTHON) -m mypy

# The hot paths, each side by side with its baseline (bench/README.md); make bench BENCH=--quick
# for a smoke run. What llmrun is compared with goes into venvs of the bench's own, made on first
# use: claude-agent-sdk (bench/requirements.txt), LiteLLM's proxy (bench/requirements-litellm.txt).
BENCH :=
bench:
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) bench/command_overhead.py $(BENCH)
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) bench/startup.py $(BENCH)
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) bench/parsers.py $(BENCH)
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) bench/stream_latency.py $(BENCH)
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) bench/daemon_overhead.py $(BENCH)
