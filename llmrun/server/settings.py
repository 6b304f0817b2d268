"""Settings of `llmrun serve`: flags over `LLMRUN_API_KEY` over the `[server]` table of the config file.

[server]
host = "127.0.0.1"
port = 8080
tools = "emulate"                 # or "reject": requests with tools get a 400
allow_tools = false               # let the tools use their own agent tools (shell, edits)
strict_params = false             # refuse sampling parameters a runner cannot honour (default: run, say so)
max_concurrency = 8               # tool processes at once, all runners together
max_per_runner = 4                # tool processes at once, per runner
max_queue = 64                    # requests waiting for a slot; more get a 429
queue_timeout = 60                # seconds a request may wait for a slot; then a 429
sessions = "/path/sessions.sqlite3"
allowed_hosts = ["llm.internal"]  # Host names accepted besides the bound address and localhost
cors_origins = []                 # no CORS unless listed
max_body_bytes = 10485760
shutdown_timeout = 30             # on SIGTERM, in-flight runs get this long, then are cancelled
max_warm = 8                      # live tool processes kept between turns (conversations + spares); 0: none
warm_idle_timeout = 600           # seconds a conversation's process may sit idle before it is closed
header_timeout = 10               # seconds for a request's head, from the connection's start or its first byte
body_timeout = 30                 # seconds a request body may pause between two reads
body_total_timeout = 120          # seconds for a whole request body, from its head
max_connections = 512             # open client connections; more are refused at once
fetch_image_urls = false          # let llmrun fetch clients' http(s) image URLs (public addresses only)
first_chunk_grace = 10            # seconds a stream waits silently for its first chunk; then headers and keep-alives
keepalive_interval = 15           # seconds between keep-alives while a stream has nothing to send yet
ollama_port = 11434               # also listen here (same address), for apps that insist on Ollama's port; unset: no

[server.aliases]
fast = "claude_code/haiku"

[server.prewarm]                  # spare started processes for new conversations; they count in max_warm
"claude_code/sonnet" = 1          # key: RUNNER/MODEL or a runner name

max_warm defaults to min(8, MemAvailable / 300 MB / 4), rounded, at least 1: a node-based
tool takes 150-300 MB, and warm processes should not claim more than a quarter of the
memory free when the daemon starts. max_connections defaults to half the process's limit of
open files (RLIMIT_NOFILE), between 16 and 4096: the rest is for the tools' pipes.
"""

from __future__ import annotations

import ipaddress
import os
import resource
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..config import config_path, load_file
from ..errors import ConfigError
from ..process import available_memory

ToolsMode = Literal["emulate", "reject"]

DEFAULT_PORT = 8080
API_KEY_ENV = "LLMRUN_API_KEY"


def default_sessions_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "llmrun" / "sessions.sqlite3"


# What one warm node-based tool process may take, and the cap on the default pool size.
WARM_PROCESS_BYTES = 300 * 1024 * 1024
MAX_WARM_DEFAULT_CAP = 8


def max_warm_for(available: int | None) -> int:
    """The default max_warm for this much available memory: min(8, available / 300 MB / 4),
    rounded, at least 1 (2 when the memory cannot be read)."""
    if available is None:
        return 2
    return max(1, min(MAX_WARM_DEFAULT_CAP, round(available / WARM_PROCESS_BYTES / 4)))


def default_max_warm() -> int:
    return max_warm_for(available_memory())


def default_max_connections() -> int:
    """Half the soft limit of open files, between 16 and 4096."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft // 2))


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    tools: ToolsMode = "emulate"
    allow_tools: bool = False
    strict_params: bool = False
    max_concurrency: int = 8
    max_per_runner: int = 4
    max_queue: int = 64
    queue_timeout: float = 60.0
    sessions: Path = field(default_factory=default_sessions_path)
    aliases: dict[str, str] = field(default_factory=dict)
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_timeout: float = 30.0
    ready_cache_seconds: float = 10.0
    """How long /health/ready answers from its last checks."""
    max_warm: int = field(default_factory=default_max_warm)
    """Live tool processes kept between turns, conversations and spares together; 0 turns warm sessions off."""
    warm_idle_timeout: float = 600.0
    """Seconds a conversation's warm process may sit idle before it is closed."""
    prewarm: dict[str, int] = field(default_factory=dict)
    """RUNNER/MODEL (or a runner) → spare started sessions kept for new conversations."""
    header_timeout: float = 10.0
    """Seconds a request's line and headers may take, from the connection's start or the request's first byte."""
    body_timeout: float = 30.0
    """Seconds a request body may pause between two reads."""
    body_total_timeout: float = 120.0
    """Seconds a whole request body may take, from the end of its head."""
    max_connections: int = field(default_factory=default_max_connections)
    """Client connections open at once; more are answered 503 and closed."""
    fetch_image_urls: bool = False
    """Take http(s) image URLs from clients; llmrun fetches them (see server/attachments.py)."""
    first_chunk_grace: float = 10.0
    """Seconds a streaming response waits for its first chunk before it sends its status and
    headers anyway. An error within the grace (a tool that is not installed, not logged in or
    rate-limited fails while it starts, in 0.1-10 s) still gets its own HTTP status; every
    client seen waits far longer for headers (120 s at the least)."""
    keepalive_interval: float = 15.0
    """Seconds between keep-alives (an SSE comment, Anthropic's ping, ...) until the first chunk."""
    ollama_port: int | None = None
    """A second port to listen on (same address and checks), where `/` answers as Ollama does."""

    def validate(self) -> ServerSettings:
        if self.tools not in ("emulate", "reject"):
            raise ConfigError(f"tools: expected 'emulate' or 'reject', got {self.tools!r}")
        for name in ("max_concurrency", "max_per_runner"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue: expected 0 or more, got {self.max_queue!r}")
        if self.queue_timeout < 0 or self.shutdown_timeout < 0:
            raise ConfigError("queue_timeout and shutdown_timeout must not be negative")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes: expected at least 1024, got {self.max_body_bytes!r}")
        if self.max_warm < 0:
            raise ConfigError(f"max_warm: expected 0 or more, got {self.max_warm!r}")
        positive = ("warm_idle_timeout", "header_timeout", "body_timeout", "body_total_timeout", "max_connections")
        for name in (*positive, "keepalive_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.first_chunk_grace < 0:
            raise ConfigError(f"first_chunk_grace: expected 0 or more, got {self.first_chunk_grace!r}")
        self._validate_prewarm()
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0-65535, got {self.port!r}")
        if self.ollama_port is not None and not (1 <= self.ollama_port <= 65535 and self.ollama_port != self.port):
            raise ConfigError(f"ollama_port: expected 1-65535 other than port {self.port}, got {self.ollama_port!r}")
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        if not is_loopback(self.host) and self.api_key is None:
            raise ConfigError(
                f"refusing to listen on {self.host} without an API key",
                hint=f"pass --api-key KEY or set {API_KEY_ENV}; without a key, bind 127.0.0.1 only",
            )
        return self

    def _validate_prewarm(self) -> None:
        for key, count in self.prewarm.items():
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"prewarm: expected RUNNER/MODEL or a runner name as key, got {key!r}")
            if not _is_kind(count, (int,)) or count < 0:
                raise ConfigError(f"prewarm: {key!r}: expected a count of 0 or more, got {count!r}")
        total = sum(self.prewarm.values())
        # Spares are warm processes too; conversations need at least one place besides them.
        if total and total >= self.max_warm:
            raise ConfigError(
                f"prewarm: {total} spare session(s) leave no room for conversations within max_warm = {self.max_warm}",
                hint="raise max_warm above the prewarm total, or prewarm fewer",
            )


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Keys of [server] and the type each must have.
_KINDS: dict[str, tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "tools": (str,),
    "allow_tools": (bool,),
    "strict_params": (bool,),
    "max_concurrency": (int,),
    "max_per_runner": (int,),
    "max_queue": (int,),
    "queue_timeout": (int, float),
    "sessions": (str,),
    "aliases": (dict,),
    "allowed_hosts": (list,),
    "cors_origins": (list,),
    "max_body_bytes": (int,),
    "shutdown_timeout": (int, float),
    "ready_cache_seconds": (int, float),
    "max_warm": (int,),
    "warm_idle_timeout": (int, float),
    "prewarm": (dict,),
    "header_timeout": (int, float),
    "body_timeout": (int, float),
    "body_total_timeout": (int, float),
    "max_connections": (int,),
    "fetch_image_urls": (bool,),
    "first_chunk_grace": (int, float),
    "keepalive_interval": (int, float),
    "ollama_port": (int,),
}


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    # bool is an int in Python; a `port = true` must still be refused.
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def load_settings(overrides: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> ServerSettings:
    """File, then environment, then the given overrides (flags; None values are skipped)."""
    path = config_path()
    table = (load_file(path) if data is None else data).get("server", {})
    settings = ServerSettings()
    for key, value in table.items():
        where = f"{path}: [server] {key}"
        if key == "api_key":
            raise ConfigError(f"{where}: keep the key out of the config file; use --api-key or {API_KEY_ENV}")
        if key not in _KINDS:
            raise ConfigError(f"{where}: unknown key; expected one of {', '.join(sorted(_KINDS))}")
        if not _is_kind(value, _KINDS[key]):
            raise ConfigError(f"{where}: expected {' or '.join(k.__name__ for k in _KINDS[key])}, got {value!r}")
        if key == "aliases" and not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f'{where}: expected a table of strings, e.g. fast = "claude_code/haiku"')
        if key == "prewarm" and not all(_is_kind(v, (int,)) for v in value.values()):
            raise ConfigError(f'{where}: expected a table of counts, e.g. "claude_code/sonnet" = 1')
        if key in ("allowed_hosts", "cors_origins") and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        setattr(settings, key, Path(value).expanduser() if key == "sessions" else value)
    if key_from_env := os.environ.get(API_KEY_ENV):
        settings.api_key = key_from_env
    names = {f.name for f in fields(ServerSettings)}
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown server setting {key!r}")
        if value is not None:
            setattr(settings, key, Path(value) if key == "sessions" else value)
    return settings.validate()
