#!/usr/bin/env python3
"""Stand-in for `claude -p --output-format stream-json --verbose --include-partial-messages`.

Reads stdin to EOF, then prints system/init, message_start, N text deltas, the whole
assistant message, message_delta, message_stop and a result line with usage: one
os.write per line, as the real tool does. Each delta's text is `time.monotonic_ns()` at
the moment of writing plus a space; CLOCK_MONOTONIC is system-wide on Linux, so the
reader subtracts it from its own clock to get the latency of that delta.

Environment: EMIT_DELTAS (default 200), EMIT_GAP_US (microseconds between deltas,
default 2000; 0 writes as fast as it can). Arguments are ignored.
"""

from __future__ import annotations

import json
import os
import sys
import time

SESSION = "00000000-0000-4000-8000-000000000000"
MESSAGE = "msg_bench_0001"
MODEL = "claude-bench"


def line(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def stream_event(inner: dict[str, object], number: int) -> bytes:
    return line(
        {
            "type": "stream_event",
            "event": inner,
            "session_id": SESSION,
            "parent_tool_use_id": None,
            "uuid": f"00000000-0000-4000-8000-{number:012d}",
        }
    )


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main() -> int:
    deltas = int(os.environ.get("EMIT_DELTAS", "200"))
    gap = int(os.environ.get("EMIT_GAP_US", "2000")) / 1e6

    while os.read(0, 65536):  # the real tool reads the whole prompt before answering
        pass

    write_all(line({"type": "system", "subtype": "init", "session_id": SESSION, "model": MODEL, "tools": []}))
    usage = {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    write_all(
        stream_event(
            {
                "type": "message_start",
                "message": {
                    "id": MESSAGE,
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
            0,
        )
    )
    block = {"type": "text", "text": ""}
    write_all(stream_event({"type": "content_block_start", "index": 0, "content_block": block}, 1))

    # Split a delta line around its text once, so that between reading the clock and
    # writing only a string join happens.
    marker = "@@TEXT@@"
    head, tail = stream_event(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": marker}}, 2
    ).split(marker.encode())
    texts: list[bytes] = []
    for i in range(deltas):
        if gap and i:
            time.sleep(gap)
        stamp = b"%d " % time.monotonic_ns()
        write_all(head + stamp + tail)
        texts.append(stamp)

    text = b"".join(texts).decode()
    write_all(
        line(
            {
                "type": "assistant",
                "message": {
                    "id": MESSAGE,
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": None,
                    "usage": usage,
                },
                "parent_tool_use_id": None,
                "session_id": SESSION,
            }
        )
    )
    write_all(stream_event({"type": "content_block_stop", "index": 0}, 3))
    write_all(
        stream_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": deltas},
            },
            4,
        )
    )
    write_all(stream_event({"type": "message_stop"}, 5))
    write_all(
        line(
            {
                "type": "result",
                "subtype": "success",
                "is_error": False,
                "num_turns": 1,
                "result": text,
                "stop_reason": "end_turn",
                "session_id": SESSION,
                "total_cost_usd": 0.0,
                "usage": {
                    "input_tokens": 12,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": deltas,
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
