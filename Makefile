PYTHON ?= python3

.PHONY: install install-clis test lint bench

# llmrun itself with its test tools, plus the Claude Code CLI when npm is there and claude is not.
install:
	$(PYTHON) -m pip install -e '.[dev,server,continue,langchain,litellm,anyllm]'
	@command -v claude >/dev/null || { command -v npm >/dev/null && npm install -g --no-audit --no-fund @anthropic-ai/claude-code; } || true

# The real CLIs the real-binary tests drive (each against a mock API on 127.0.0.1).
install-clis:
	npm install -g --no-audit --no-fund @anthropic-ai/claude-code @openai/codex @google/gemini-cli @qwen-code/qwen-code @github/copilot opencode-ai
	npm install -g --no-audit --no-fund cline @kilocode/cli@7.7.7 @continuedev/cli droid
	$(PYTHON) -m pip install llm llm-echo llm-markov
	bash scripts/install-python-tools

test:
	$(PYTHON) -m pytest -q -rs

lint:
	$(PYTHON) -m ruff check llmrun tests fixtures bench
	$(PYTHON) -m mypy

bench:
	$(PYTHON) bench/stream_latency.py
