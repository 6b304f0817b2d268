"""Helpers for tests that run a real AI CLI (e.g. Claude Code) against tests/mockapi.py.

The rules these helpers enforce:

- the CLI never sees the developer's real config or credentials (throwaway HOME/XDG dirs,
  a whitelisted environment, a fake API key);
- the CLI talks only to the loopback mock (base URL override, telemetry, update checks
  and other non-essential traffic switched off);
- failures are fast (no retry storms), and a missing binary skips instead of failing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["CLAUDE_ENV", "CLI_INSTALL", "become", "claude_env", "loopback_only", "require_binary"]

# Binary name -> the command that installs it (as .ci/run does); used in skip messages.
CLI_INSTALL: dict[str, str] = {
    "claude": "npm install -g @anthropic-ai/claude-code",
    "codex": "npm install -g @openai/codex",
    "gemini": "npm install -g @google/gemini-cli",
    "qwen": "npm install -g @qwen-code/qwen-code",
    "copilot": "npm install -g @github/copilot",
    "opencode": "npm install -g opencode-ai",
    "cline": "npm install -g cline",
    "kilo": "npm install -g @kilocode/cli@7.7.7",
    "cn": "npm install -g @continuedev/cli",
    "droid": "npm install -g droid",
    "aider": "scripts/install-python-tools",
    "gptme": "scripts/install-python-tools",
    "vibe": "scripts/install-python-tools",
    "kimi": "scripts/install-python-tools",
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


def codex_env(tmp_path: str | os.PathLike[str]) -> dict[str, str]:
    """Child environment for running the real `codex` in a throwaway HOME and CODEX_HOME.

    Codex has no base-URL variable: the mock is named by `-c` options instead (see
    `codex_provider_args` in tests/mock_responses.py), and its provider reads the fake key
    from OPENAI_API_KEY. Nothing is logged in, so codex's own `openai` provider has no key.
    """
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    codex_home = Path(env["HOME"]) / ".codex"
    codex_home.mkdir(exist_ok=True)
    env["CODEX_HOME"] = str(codex_home)
    env["OPENAI_API_KEY"] = "sk-test"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def gemini_env(tmp_path: str | os.PathLike[str], base_url: str, *, max_attempts: int | None = None) -> dict[str, str]:
    """Child environment for running the real `gemini` against the mock Gemini API at `base_url`.

    Setting GOOGLE_GEMINI_BASE_URL turns gemini's auth type into "gateway", which it then
    rejects (exit 41), so the throwaway HOME's settings pin `gemini-api-key`; telemetry,
    usage statistics and update checks are off there too. `max_attempts` caps gemini's own
    retries through those user settings (None leaves them to the runner).
    """
    import json

    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    general: dict[str, object] = {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}
    if max_attempts is not None:
        general["maxAttempts"] = max_attempts
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "telemetry": {"enabled": False},
        "privacy": {"usageStatisticsEnabled": False},
        "general": general,
    }
    gemini_dir = Path(env["HOME"]) / ".gemini"
    gemini_dir.mkdir(exist_ok=True)
    (gemini_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    env["GEMINI_API_KEY"] = "fake"
    env["GOOGLE_GEMINI_BASE_URL"] = base_url
    env["GEMINI_TELEMETRY_ENABLED"] = "false"
    env["GEMINI_CLI_NO_RELAUNCH"] = "true"  # one node process instead of two; faster start
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def qwen_env(tmp_path: str | os.PathLike[str], base_url: str, *, model: str = "mock-model") -> dict[str, str]:
    """Child environment for running the real `qwen` against the mock OpenAI API at `base_url`.

    `base_url` ends in `/v1` (tests/mock_openai_chat.py: `api.base_url`). The throwaway
    HOME's settings turn telemetry, usage statistics and update checks off, in qwen's
    current format (`$version` 4) so that qwen does not rewrite them; no auth type is
    configured there, so the runner needs `--auth-type openai` in its extra_args or all
    three OPENAI_* variables, which are set here.
    """
    import json

    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    settings = {
        "$version": 4,
        "telemetry": {"enabled": False},
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False},
    }
    qwen_dir = Path(env["HOME"]) / ".qwen"
    qwen_dir.mkdir(exist_ok=True)
    (qwen_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    env["OPENAI_API_KEY"] = "sk-test"
    env["OPENAI_BASE_URL"] = base_url
    env["OPENAI_MODEL"] = model
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def llm_env(tmp_path: str | os.PathLike[str], base_url: str, *, model: str = "mock-model") -> dict[str, str]:
    """Child environment for running the real `llm` in a throwaway user dir (LLM_USER_PATH).

    The user dir's `extra-openai-models.yaml` names the mock OpenAI API at `base_url` (ending
    in `/v1`, tests/mock_openai_chat.py: `api.base_url`) as the llm model `mock-chat`; llm
    sends no key to a model with its own api_base. The plugins llm-echo and llm-markov need
    nothing. No key is stored and no OPENAI_API_KEY is set, so llm's default model has none.
    """
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    user_dir = Path(tmp_path) / "llm-user"
    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / "extra-openai-models.yaml").write_text(
        f'- model_id: mock-chat\n  model_name: {model}\n  api_base: "{base_url}"\n'
    )
    env["LLM_USER_PATH"] = str(user_dir)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def copilot_env(
    tmp_path: str | os.PathLike[str],
    base_url: str,
    *,
    model: str = "mock-model",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Child environment for running the real `copilot` against the mock OpenAI API at `base_url`.

    Copilot's offline BYOK mode: no GitHub login, no telemetry or update check, every model
    call to COPILOT_PROVIDER_BASE_URL (`api.base_url`, ending in `/v1`) with a fake key.
    `cache_dir` (XDG_CACHE_HOME) may be shared between tests: copilot unpacks 235 MB of its
    own package there on first use, which takes seconds.
    """
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    if cache_dir is not None:
        env["XDG_CACHE_HOME"] = str(cache_dir)
    env["COPILOT_OFFLINE"] = "true"
    env["COPILOT_PROVIDER_BASE_URL"] = base_url
    env["COPILOT_PROVIDER_API_KEY"] = "sk-test"
    env["COPILOT_MODEL"] = model
    env["COPILOT_AUTO_UPDATE"] = "false"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


OPENCODE_ENV: dict[str, str] = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "true",
}


def opencode_provider(base_url: str, models: tuple[str, ...] = ("mock-model", "mock-model-large")) -> dict[str, object]:
    """OpenCode configuration naming the mock OpenAI API at `base_url` as provider `mock`."""
    return {
        "provider": {
            "mock": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Mock",
                "options": {"baseURL": base_url, "apiKey": "sk-test"},
                "models": {model: {"name": model} for model in models},
            }
        },
        "model": f"mock/{models[0]}",
        "small_model": f"mock/{models[0]}",
        "autoupdate": False,
        "share": "disabled",
    }


def opencode_env(tmp_path: str | os.PathLike[str], base_url: str | None) -> dict[str, str]:
    """Child environment for running the real `opencode` against the mock OpenAI API at `base_url`.

    The mock is a provider in OPENCODE_CONFIG_CONTENT (no file is written; the runner merges
    its own settings over it). `base_url=None` configures no provider at all, so opencode
    falls back to its hosted default model, which it cannot reach from the namespace.
    Plugins, model list downloads, sharing, updates and the Claude Code compatibility
    layer are off.
    """
    import json

    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    env.update(OPENCODE_ENV)
    if base_url is not None:
        env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_provider(base_url))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def litellm_env(home: Path, path: str) -> dict[str, str]:
    """The environment for LiteLLM's proxy: `path` as PATH, a home of its own, and its own
    copies of the price lists and other data it would otherwise fetch from the network."""
    offline = (
        "LITELLM_LOCAL_MODEL_COST_MAP",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS",
        "LITELLM_LOCAL_BLOG_POSTS",
        "LITELLM_LOCAL_POLICY_TEMPLATES",
    )
    return {
        "PATH": path,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **dict.fromkeys(offline, "True"),
    }


def become(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: dict[str, str]) -> dict[str, str]:
    """Make this process's environment exactly `isolated` (pytest's own variables aside), so
    that nothing of the developer's shell (keys, proxies, LLMRUN_*) reaches the tool that a
    runner starts with it; llmrun's config file is pointed at a path that does not exist."""
    for name in list(os.environ):
        if not name.startswith("PYTEST_") and name not in isolated:
            monkeypatch.delenv(name)
    for name, value in isolated.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LLMRUN_CONFIG", str(tmp_path / "no-such-llmrun-config.toml"))
    return dict(os.environ)


def require_binary(name: str) -> str:
    """Path of the installed CLI `name`, or skip the test with the install hint."""
    path = shutil.which(name)
    if path is None:
        install = CLI_INSTALL.get(name, f"npm install -g {name}")
        pytest.skip(f"{name} is not installed (CI installs it with: {install})")
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


def processes_in(directory: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose working directory is in `directory`.

    Each real-binary test gives its run a directory of its own, so this finds whatever the
    run left behind, whatever the tool named its processes. Zombies are dead and not counted.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone meanwhile, or not readable
            continue
        if (cwd == directory or cwd.startswith(directory + "/")) and state not in ("Z", "X"):
            found.append((int(entry), cmdline))
    return found


async def assert_no_processes_in(directory: str, within: float = 5.0) -> None:
    """Wait up to `within` seconds for every process of the run to be gone."""
    deadline = time.monotonic() + within
    while (left := processes_in(directory)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, f"processes of the run survived: {left}"


def cline_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """A throwaway HOME whose saved cline provider is the mock OpenAI API at `base_url`."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    env["CLINE_NO_AUTO_UPDATE"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    auth = ["cline", "auth", "-p", "openai-compatible", "-k", "sk-test", "-b", base_url, "-m", "mock-model"]
    done = subprocess.run(auth, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return env


def kilo_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """Child environment for the real `kilo`: a throwaway HOME, the mock as the only provider
    (in KILO_CONFIG_CONTENT, no file written), telemetry, updates, sharing, session upload,
    the models.dev download and the Claude Code compatibility layer off."""
    home = tmp_path / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_STATE_HOME": home / ".local" / "state",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update({k: str(v) for k, v in dirs.items()})
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "Mock",
        "options": {"baseURL": base_url, "apiKey": "sk-test"},
        "models": {"mock-model": {"name": "Mock Model"}, "mock-model-large": {"name": "Mock Model Large"}},
    }
    config = {"provider": {"mock": provider}, "model": "mock/mock-model", "small_model": "mock/mock-model"}
    env["KILO_CONFIG_CONTENT"] = json.dumps(config)
    env.update(
        KILO_TELEMETRY_LEVEL="off",
        KILO_DISABLE_AUTOUPDATE="1",
        KILO_DISABLE_SHARE="1",
        KILO_DISABLE_SESSION_INGEST="1",
        KILO_DISABLE_MODELS_FETCH="1",
        KILO_DISABLE_CLAUDE_CODE="1",
    )
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def droid_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """A throwaway HOME with the mock as droid's one custom model, and nothing else inherited."""
    home = tmp_path / "home"
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    settings = {
        "customModels": [
            {
                "model": "mock-model",
                "displayName": "Mock",
                "baseUrl": base_url,
                "apiKey": "sk-test",
                "provider": "generic-chat-completion-api",
                "maxOutputTokens": 4096,
            }
        ]
    }
    (home / ".factory").mkdir(parents=True)
    (home / ".factory" / "settings.json").write_text(json.dumps(settings))
    return env


def vibe_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """Child environment for the real `vibe`: a throwaway HOME whose config names the mock."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    vibe_dir = Path(env["HOME"]) / ".vibe"
    vibe_dir.mkdir()
    (vibe_dir / "config.toml").write_text(
        'active_model = "mock"\n'
        "enable_telemetry = false\n"
        "enable_update_checks = false\n"
        "enable_notifications = false\n\n"
        "[[providers]]\n"
        'name = "mock"\n'
        f'api_base = "{base_url}"\n'
        'api_key_env_var = "MOCK_API_KEY"\n'
        'backend = "generic"\n\n'
        "[[models]]\n"
        'name = "mock-model"\n'
        'provider = "mock"\n'
        'alias = "mock"\n\n'
        "[[models]]\n"
        'name = "mock-model-large"\n'
        'provider = "mock"\n'
        'alias = "large"\n'
    )
    env["MOCK_API_KEY"] = "sk-test"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env
