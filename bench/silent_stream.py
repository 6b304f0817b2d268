#!/usr/bin/env python3
"""A tool that thinks silently for minutes, and real clients of the daemon waiting for it.

    npm install --prefix /tmp/llmrun-bench-node openai@5     # the Node SDK client; outside the namespace
    unshare -n sh -c 'ip link set lo up && python3 bench/silent_stream.py'
    unshare -n sh -c 'ip link set lo up && python3 bench/silent_stream.py --silence 60 --client node'

Two daemons run side by side in this process, each serving one runner that says nothing for
--silence seconds (330 by default) and then answers:

- **keep-alive**: `llmrun serve` as it ships: after `first_chunk_grace` (10 s) a silent stream
  sends its status and headers, then a keep-alive every `keepalive_interval` (15 s);
- **silent**: the same with the grace longer than the silence, so nothing is sent before the
  answer (how the daemon behaved before keep-alives).

Each client asks both daemons at once, with its own defaults:

- `qwen` (Qwen Code, OpenAI API; gives up on a silent request after 120 s and retries);
- `opencode` (OpenCode through its OpenAI-compatible provider, the Vercel AI SDK);
- `node`: the OpenAI Node SDK, a streaming chat completion (Node's fetch waits 300 s for
  headers); found under --node-modules (default /tmp/llmrun-bench-node/node_modules).

For each client and daemon the table says whether the answer arrived, after how long, and how
many runs the backend started for that client (each retry of a client starts a new one). A
client missing from this machine is reported as skipped. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a plain checkout runs without installing llmrun

from tests.realcli import opencode_env, opencode_provider, qwen_env  # noqa: E402
from tests.server_support import SILENT_ANSWER as ANSWER  # noqa: E402
from tests.server_support import LiveServer, SilentRunner, settings  # noqa: E402

NODE_CLIENT = """
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-test" });
(async () => {
  const stream = await client.chat.completions.create({
    model: "silent", stream: true, messages: [{ role: "user", content: process.argv[3] }],
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || "";
  console.log(text);
})().catch((error) => { console.error(String(error)); process.exit(1); });
"""


def client_command(
    client: str, url: str, prompt: str, home: Path, node_modules: Path
) -> tuple[list[str], dict[str, str]]:
    if client == "qwen":
        return ["qwen", "-p", prompt, "--auth-type", "openai"], qwen_env(home, f"{url}/v1", model="silent")
    if client == "opencode":
        env = opencode_env(home, None)
        env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_provider(f"{url}/v1", models=("silent",)))
        return ["opencode", "run", "-m", "mock/silent", prompt], env
    script = home / "client.js"
    script.write_text(NODE_CLIENT)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "NODE_PATH": str(node_modules)}
    return ["node", str(script), f"{url}/v1", prompt], env


def available(client: str, node_modules: Path) -> str | None:
    """Why `client` cannot run here, or None."""
    binary = "node" if client == "node" else client
    if subprocess.run(["sh", "-c", f"command -v {binary}"], capture_output=True).returncode:
        return f"{binary} is not installed"
    if client == "node" and not (node_modules / "openai").is_dir():
        return f"the openai npm package is not in {node_modules} (npm install --prefix {node_modules.parent} openai@5)"
    return None


def ask(client: str, mode: str, url: str, limit: float, work: Path, node_modules: Path) -> dict[str, Any]:
    home = work / f"{client}-{mode}"
    home.mkdir(parents=True)
    prompt = f"Say hi ({client}, {mode})"
    argv, env = client_command(client, url, prompt, home, node_modules)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=limit)
        ok, tail = ANSWER in done.stdout, (done.stdout + done.stderr).strip()[-160:]
    except subprocess.TimeoutExpired:
        ok, tail = False, f"still waiting after {limit:.0f} s (stopped)"
    return {
        "client": client,
        "mode": mode,
        "prompt": prompt,
        "ok": ok,
        "seconds": time.monotonic() - started,
        "tail": tail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--silence", type=float, default=330.0, help="seconds the tool says nothing (330)")
    parser.add_argument("--client", action="append", choices=["qwen", "opencode", "node"], help="repeatable; all")
    parser.add_argument("--node-modules", type=Path, default=Path("/tmp/llmrun-bench-node/node_modules"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the daemons' access logs would bury the table
    clients = args.client or ["qwen", "opencode", "node"]
    limit = args.silence + 420  # room for a client's retries to show, then it is stopped

    with tempfile.TemporaryDirectory(prefix="llmrun-silent-") as tmp:
        work = Path(tmp)
        runners = {mode: SilentRunner(args.silence) for mode in ("keep-alive", "silent")}
        grace = {"keep-alive": None, "silent": args.silence + limit}
        servers = {}
        for mode, runner in runners.items():
            fields: dict[str, Any] = {"sessions": work / f"{mode}.sqlite3"}
            fields["first_chunk_grace"] = grace[mode] if grace[mode] is not None else 10.0
            servers[mode] = LiveServer(settings(work, **fields), runners={"silent": runner}).start()
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for client in clients:
                if (reason := available(client, args.node_modules)) is not None:
                    print(f"{client}: skipped ({reason})")
                    continue
                for mode, server in servers.items():
                    jobs.append(pool.submit(ask, client, mode, server.url, limit, work, args.node_modules))
            results = [job.result() for job in jobs]
        for server in servers.values():
            server.stop()

    print(f"\nA tool silent for {args.silence:.0f} s; {platform.node()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'client':<10} {'daemon':<11} {'answer':<7} {'seconds':>8} {'backend runs':>13}  last output")
    for result in results:
        prompts = [request.conversation()[-1].text for request in runners[result["mode"]].requests]
        runs = sum(result["prompt"] in prompt for prompt in prompts)
        answer = "yes" if result["ok"] else "no"
        print(
            f"{result['client']:<10} {result['mode']:<11} {answer:<7} {result['seconds']:>8.1f} {runs:>13}  "
            f"{result['tail'].splitlines()[-1] if result['tail'] else ''}"
        )


if __name__ == "__main__":
    main()
