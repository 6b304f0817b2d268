"""`llmrun serve`: the daemon speaking the OpenAI, Anthropic and Ollama APIs and MCP over llmrun's runners.

Needs the `server` extra (`pip install 'llmrun-cli[server]'`: FastAPI and uvicorn); nothing
else in llmrun imports this package.

    from llmrun.server import create_app, load_settings
    app = create_app(load_settings({"port": 8080}))
"""

from __future__ import annotations

from .app import create_app
from .settings import ServerSettings, load_settings

__all__ = ["ServerSettings", "create_app", "load_settings"]
