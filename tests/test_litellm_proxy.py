"""Several `llmrun serve` behind LiteLLM's proxy: load spread, fail-over, conversations.

The daemons run in this process (tests/server_support.py LiveServer), each with scripted
runners of its own, so a test counts which daemon answered. LiteLLM's proxy runs as a
subprocess on 127.0.0.1 with a config written here, and the openai SDK talks to it. One
proxy and its daemons serve the whole module (the proxy takes seconds to start); each test
uses model groups of its own and counts what its requests added.

LiteLLM pins its dependencies tightly, so it lives in a virtualenv of its own:
`scripts/install-python-tools` installs it and links `litellm` into a directory on PATH.
The tests run the `litellm` named by $LLMRUN_LITELLM_BIN, else the one in that virtualenv,
else the one on PATH, and skip when there is none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmrun.errors import RateLimitError
from llmrun.types import ChatRequest

from .realcli import litellm_env
from .server_support import LiveServer, ScriptedRunner, live_processes, settings

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(600)]

INSTALL = "bash scripts/install-python-tools (it puts LiteLLM in a virtualenv of its own)"
TOOLS_HOME = Path(os.environ.get("LLMRUN_TOOLS_HOME") or Path.home() / ".local/share/llmrun-tools")
LITELLM = (
    os.environ.get("LLMRUN_LITELLM_BIN")  # read at import: the tests' fixtures clear LLMRUN_* variables
    # The proxy's own environment before PATH: the `litellm` extra puts a `litellm` without the
    # proxy's dependencies in llmrun's environment, which `make test` puts first on PATH.
    or next((str(p) for p in [TOOLS_HOME / "litellm/bin/litellm"] if p.is_file()), None)
    or shutil.which("litellm")
)
PATH = os.environ.get("PATH", "/usr/bin:/bin")
START_LIMIT = 180.0  # the proxy starts in seconds, but the machine may be busy
MASTER_KEY = "sk-litellm-master"
Json = dict[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    """One `llmrun serve` with its own key; its runners say which daemon answered."""

    name: str
    live: LiveServer
    key: str
    scripted: ScriptedRunner
    limited: ScriptedRunner
    """Fails every request with a rate limit (HTTP 429 from the daemon)."""

    @classmethod
    def start(cls, name: str, tmp_path: Path) -> Daemon:
        tmp_path.mkdir()
        key = f"sk-daemon-{name}"
        scripted = ScriptedRunner(lambda request: f"{name} answered {len(request.messages)} messages")
        limited = ScriptedRunner(lambda request: RateLimitError("usage limit reached", runner="limited"))
        config = settings(tmp_path, api_key=key)
        live = LiveServer(config, runners={"scripted": scripted, "limited": limited}).start()
        return cls(name, live, key, scripted, limited)

    def deployment(self, group: str, *, runner: str = "scripted", key: str | None = None, **params: Any) -> Json:
        """A LiteLLM model_list entry: `group` served by this daemon's `runner`."""
        litellm_params = {
            "model": f"openai/{runner}",
            "api_base": f"{self.live.url}/v1",
            "api_key": key or self.key,
            **params,
        }
        return {"model_name": group, "litellm_params": litellm_params, "model_info": {"id": f"{group}-{self.name}"}}


@dataclass
class Proxy:
    """LiteLLM's proxy as a process group of its own, with its output in a file."""

    config: Json
    tmp_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.tmp_path / "litellm.log"

    def start(self) -> Proxy:
        assert LITELLM is not None
        home = self.tmp_path / "home"
        home.mkdir()
        path = self.tmp_path / "litellm.yaml"
        path.write_text(json.dumps(self.config, indent=2))  # JSON is YAML
        env = litellm_env(home, PATH)  # the PATH of the session: the cluster empties its own
        argv = [LITELLM, "--config", str(path), "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"litellm did not start within {START_LIMIT:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left of it after a grace."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):  # the group may have ended by itself
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)
        assert not live_processes(group=group), "a process of the proxy was left behind"

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def client(self, **headers: str) -> openai.OpenAI:
        # No retries in the client: every retry and fail-over seen here is LiteLLM's.
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=120, default_headers=headers
        )


@dataclass
class Cluster:
    a: Daemon
    b: Daemon
    spare: Daemon
    """Serves only the fail-over test, which stops it."""
    proxy: Proxy

    def client(self, **headers: str) -> openai.OpenAI:
        return self.proxy.client(**headers)


def proxy_config(a: Daemon, b: Daemon, spare: Daemon) -> Json:
    model_list = [
        # Load spread: one model served by two machines.
        a.deployment("llmrun"),
        b.deployment("llmrun"),
        # One machine each, for tests that decide where each turn lands.
        a.deployment("llmrun-a"),
        b.deployment("llmrun-b"),
        # Fail-over: `order` sends everything to the spare while it answers.
        spare.deployment("failover", order=1),
        a.deployment("failover", order=2),
        # A daemon that refuses the key it is given (401), and one whose tool is rate limited (429).
        a.deployment("wrong-key", key="sk-not-this-daemons", order=1),
        b.deployment("wrong-key", order=2),
        a.deployment("wrong-key-alone", key="sk-not-this-daemons"),
        a.deployment("limited", runner="limited"),
        b.deployment("limited"),
    ]
    return {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": 2,
            "cooldown_time": 60,
            "timeout": 120,
            # Turns that carry the same `x-litellm-session-id` go to the same deployment.
            "optional_pre_call_checks": ["session_affinity"],
        },
        "litellm_settings": {
            # Forward the client's x-* headers (X-Llmrun-Session among them) to these groups' daemons.
            "model_group_settings": {"forward_client_headers_to_llm_api": ["llmrun", "llmrun-a", "llmrun-b"]},
        },
        "general_settings": {"master_key": MASTER_KEY},
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if LITELLM is None:
        pytest.skip(f"litellm is not installed: {INSTALL}")
    tmp_path = tmp_path_factory.mktemp("litellm")
    with pytest.MonkeyPatch.context() as env, contextlib.ExitStack() as running:
        # The daemons serve their scripted runners alone: with no real tool on PATH, LiteLLM's
        # periodic GET /v1/models of each deployment starts none.
        for name in [n for n in os.environ if n.startswith("LLMRUN_")]:
            env.delenv(name)
        env.setenv("LLMRUN_CONFIG", str(tmp_path / "no-config.toml"))
        env.setenv("PATH", str(tmp_path))
        daemons = []
        for name in ("a", "b", "spare"):
            daemons.append(Daemon.start(name, tmp_path / name))
            running.callback(daemons[-1].live.stop)  # stopping a stopped one is harmless
        proxy = Proxy(proxy_config(*daemons), tmp_path)
        running.callback(proxy.stop)
        a, b, spare = daemons
        yield Cluster(a, b, spare, proxy.start())


def user(text: str) -> ChatCompletionMessageParam:
    return {"role": "user", "content": text}


def assistant(text: str) -> ChatCompletionMessageParam:
    return {"role": "assistant", "content": text}


def ask(sdk: openai.OpenAI, model: str, messages: list[ChatCompletionMessageParam], **headers: str) -> str:
    done = sdk.chat.completions.create(model=model, messages=messages, extra_headers=headers)
    return done.choices[0].message.content or ""


def counts(*runners: ScriptedRunner) -> list[int]:
    return [len(runner.requests) for runner in runners]


# --- load spread ------------------------------------------------------------------------------


def test_independent_requests_land_on_both_daemons(cluster: Cluster) -> None:
    """simple-shuffle picks a deployment at random per request: with 24 requests, a fair
    router misses one of two daemons with a chance of 2 in 2**24."""
    sdk = cluster.client()
    before = counts(cluster.a.scripted, cluster.b.scripted)
    answers = [ask(sdk, "llmrun", [user(f"question {n}")]) for n in range(24)]
    after = counts(cluster.a.scripted, cluster.b.scripted)
    on_a, on_b = after[0] - before[0], after[1] - before[1]
    assert on_a > 0 and on_b > 0, f"a answered {on_a}, b answered {on_b}"
    assert on_a + on_b == 24  # each request ran once: no retries
    assert sorted(answers) == sorted(["a answered 1 messages"] * on_a + ["b answered 1 messages"] * on_b)


# --- fail-over --------------------------------------------------------------------------------


def test_a_stopped_daemon_fails_over_to_the_other(cluster: Cluster) -> None:
    sdk = cluster.client()
    assert ask(sdk, "failover", [user("while both are up")]) == "spare answered 1 messages"
    cluster.spare.live.stop()  # connection refused from now on
    before = counts(cluster.a.scripted)[0]
    for n in range(4):
        raw = sdk.chat.completions.with_raw_response.create(model="failover", messages=[user(f"after {n}")])
        assert raw.parse().choices[0].message.content == "a answered 1 messages"
        if n == 0:  # the first request after the stop tried the spare, then fell back to the next `order`
            assert raw.headers.get("x-litellm-attempted-fallbacks") == "1"
            assert raw.headers.get("x-litellm-model-id") == "failover-a"
    assert counts(cluster.a.scripted)[0] - before == 4
    assert len(cluster.spare.scripted.requests) == 1


def test_a_daemon_refusing_the_key_is_skipped_for_the_next_one(cluster: Cluster) -> None:
    """llmrun answers a wrong key with 401 (and `x-should-retry: false`): LiteLLM cools that
    deployment down and tries the group's next one."""
    sdk = cluster.client()
    before = counts(cluster.a.scripted, cluster.b.scripted)
    raw = sdk.chat.completions.with_raw_response.create(model="wrong-key", messages=[user("hello")])
    assert raw.parse().choices[0].message.content == "b answered 1 messages"
    assert counts(cluster.a.scripted, cluster.b.scripted) == [before[0], before[1] + 1]
    # One more attempt than the answer: the refusing daemon, tried first for its `order`.
    attempts = [raw.headers.get(f"x-litellm-attempted-{kind}") for kind in ("retries", "fallbacks")]
    assert sum(int(n or 0) for n in attempts) == 1


def test_a_401_from_the_only_daemon_reaches_the_client(cluster: Cluster) -> None:
    sdk = cluster.client()
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(sdk, "wrong-key-alone", [user("hello")])
    assert caught.value.status_code == 401


def test_a_rate_limited_daemon_is_asked_once_and_another_answers(cluster: Cluster) -> None:
    """llmrun answers a tool's rate limit with 429, `retry-after` and `x-should-retry: true`.
    Where the group has another deployment, LiteLLM retries there at once and cools the
    limited one down, so the next requests do not reach it. simple-shuffle picks the limited
    daemon first about every other request: ask until it has been picked."""
    sdk = cluster.client()
    limited, other = cluster.a.limited, cluster.b.scripted
    for _ in range(24):
        before = counts(limited, other)
        assert ask(sdk, "limited", [user("hello")]) == "b answered 1 messages"
        if counts(limited) != before[:1]:
            break
    else:
        pytest.fail("simple-shuffle never picked the rate-limited deployment")
    assert counts(limited, other) == [before[0] + 1, before[1] + 1]
    # Cooled down: without that, simple-shuffle would send about half of these to it.
    answers = {ask(sdk, "limited", [user(f"then {n}")]) for n in range(8)}
    assert answers == {"b answered 1 messages"}
    assert counts(limited) == [before[0] + 1]


# --- conversations ----------------------------------------------------------------------------


def test_a_conversation_continues_on_whichever_daemon_gets_its_next_turn(cluster: Cluster) -> None:
    """A client that sends its whole history each turn: the daemon that answered the turn
    before resumes its tool session; another daemon replays the history to a new one."""
    sdk = cluster.client()
    a, b = cluster.a.scripted, cluster.b.scripted
    history = [user("first, on a")]
    turns = ["llmrun-a", "llmrun-b", "llmrun-b", "llmrun-a"]
    asked: list[ChatRequest] = []
    for n, model in enumerate(turns):
        runner = a if model == "llmrun-a" else b
        answer = ask(sdk, model, history)
        asked.append(runner.requests[-1])
        history += [assistant(answer), user(f"turn {n + 2}")]
    assert [len(request.messages) for request in asked] == [1, 3, 5, 7]  # each saw the whole history
    first, moved, stayed, back = (request.session_id for request in asked)
    assert first is None  # a new conversation
    assert moved is None  # b never saw it: the history replayed to a new tool session
    assert stayed is not None and stayed.startswith("scripted-session-")  # b resumed its own session
    assert back is None  # a holds only the first turn, not the ones b answered since: replayed


def test_a_named_conversation_is_forwarded_to_the_daemon(cluster: Cluster) -> None:
    """`X-Llmrun-Session` reaches the daemon through LiteLLM (forward_client_headers_to_llm_api),
    so a client that sends only its new turn continues its tool session."""
    sdk = cluster.client()
    named = {"X-Llmrun-Session": "forwarded-conversation"}
    ask(sdk, "llmrun-a", [user("remember 7")], **named)
    ask(sdk, "llmrun-a", [user("what did I ask you to remember?")], **named)
    first, second = cluster.a.scripted.requests[-2:]
    assert first.session_id is None
    assert second.session_id is not None and len(second.messages) == 1
    # Without the header the same new turn starts afresh.
    ask(sdk, "llmrun-a", [user("what did I ask you to remember?")])
    assert cluster.a.scripted.requests[-1].session_id is None


def test_litellm_session_affinity_keeps_a_conversation_on_one_daemon(cluster: Cluster) -> None:
    """With `session_affinity`, turns that carry one `x-litellm-session-id` go to the daemon
    that answered the first: each turn after it resumes that daemon's tool session."""
    sdk = cluster.client()
    a, b = cluster.a.scripted, cluster.b.scripted
    before = counts(a, b)
    history = [user("pinned conversation")]
    for n in range(8):
        answer = ask(sdk, "llmrun", history, **{"x-litellm-session-id": "pinned-conversation-1"})
        history += [assistant(answer), user(f"turn {n + 2}")]
    added = [now - then for now, then in zip(counts(a, b), before, strict=True)]
    assert sorted(added) == [0, 8], f"the turns were split between the daemons: {added}"
    runner = a if added[0] else b
    assert runner.requests[-8].session_id is None
    assert all(request.session_id is not None for request in runner.requests[-7:])
