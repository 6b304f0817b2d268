"""Helpers for tests that run a real AI CLI (e.g. Claude Code) against tests/mockapi.py.

The rules these helpers enforce:

- the CLI never sees the developer's real config or credentials (throwaway HOME/XDG dirs,
  a whitelisted environment, a fake API key);
- the CLI talks only to the loopback mock (base URL override, telemetry, update checks
  and other non-essential traffic switched off);
- failures are fast (no retry storms), and a missing binary skips instead of failing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest

__all__ = ["CLAUDE_ENV", "CLI_PACKAGES", "claude_env", "loopback_only", "require_binary"]

# Binary name -> npm package that provides it; used in skip messages.
CLI_PACKAGES: dict[str, str] = {
    "claude": "@anthropic-ai/claude-code",
    "codex": "@openai/codex",
    "gemini": "@google/gemini-cli",
    "qwen": "@qwen-code/qwen-code",
    "copilot": "@github/copilot",
    "opencode": "opencode-ai",
}

# Switches that keep claude off the network apart from the model API, and make errors fast.
CLAUDE_ENV: dict[str, str] = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_UPDATES": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_GROWTHBOOK": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "DISABLE_INSTALLATION_CHECKS": "1",
    # Default retries turn a 5xx/429 into a minute of silent back-off.
    "CLAUDE_CODE_MAX_RETRIES": "0",
}

# Only these are inherited: anything else (ANTHROPIC_*, CLAUDE*, proxies, CLAUDECODE set
# when tests run inside Claude Code) could redirect or alter the CLI under test.
_INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def _isolated_home(tmp_path: str | os.PathLike[str]) -> dict[str, str]:
    home = Path(tmp_path) / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_STATE_HOME": home / ".local" / "state",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return {k: str(v) for k, v in dirs.items()}


def claude_env(tmp_path: str | os.PathLike[str], base_url: str) -> dict[str, str]:
    """Child environment for running the real `claude` against the mock at `base_url`."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    env.update(CLAUDE_ENV)
    env["ANTHROPIC_BASE_URL"] = base_url
    env["ANTHROPIC_API_KEY"] = "sk-test"
    # Loopback must never go through a proxy, even if one sneaks in later.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.pop("CLAUDECODE", None)  # set when running inside Claude Code; changes its behaviour
    return env


def require_binary(name: str) -> str:
    """Path of the installed CLI `name`, or skip the test with the install hint."""
    path = shutil.which(name)
    if path is None:
        pkg = CLI_PACKAGES.get(name, name)
        pytest.skip(f"{name} is not installed (CI installs it with: npm install -g {pkg})")
    return path


_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def _iface_flags(sock: socket.socket, name: str) -> int:
    req = struct.pack("16sH14x", name.encode()[:15], 0)
    return struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, req))[1]


def loopback_only() -> bool:
    """Best effort: True when no non-loopback network interface is up.

    Informational only (e.g. to note that a run happened under `unshare -n`). It asks the
    kernel about the *current* network namespace; /sys/class/net is only a fallback,
    because sysfs keeps showing the host's interfaces inside `unshare -n`.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _, name in socket.if_nameindex():
                flags = _iface_flags(sock, name)
                if flags & _IFF_UP and not flags & _IFF_LOOPBACK:
                    return False
        return True
    except OSError:
        pass
    try:
        for iface in Path("/sys/class/net").iterdir():
            if (iface / "type").read_text().strip() == "772":  # ARPHRD_LOOPBACK
                continue
            if int((iface / "flags").read_text().strip(), 16) & _IFF_UP:
                return False
        return True
    except (OSError, ValueError):
        return False
