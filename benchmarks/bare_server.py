"""The baseline: a bare HTTP server that streams the same SSE events the platform does, with no work behind them.

    python benchmarks/bare_server.py PORT [CHUNKS]

A raw ASGI app on uvicorn with uvloop and httptools (what the gateway runs on), no framework, the events encoded once
at start-up: what "calling a zero-cost backend directly" costs in Python on this machine. It answers
``POST /v1/chat/completions`` with OpenAI's chunk objects and ``POST /v1/conversations/<id>/messages`` with the
conversation events, each event its own write, and reads (but does not parse) the request body.
"""

from __future__ import annotations

import json
import sys
import time


def _event(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def chat_events(tokens: list[str]) -> list[bytes]:
    base = {"id": "chatcmpl-bare", "object": "chat.completion.chunk", "created": int(time.time()), "model": "bare",
            "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _event({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": t}) for t in tokens),
            chunk({}, "length"), b"data: [DONE]\n\n"]


def conversation_events(tokens: list[str]) -> list[bytes]:
    return [
        _event({"type": "message.started", "user_message_id": "u", "model": "bare"}),
        *(_event({"type": "message.delta", "delta": t}) for t in tokens),
        _event({"type": "message.done", "user_message_id": "u", "assistant_message_id": "a", "finish_reason": "length",
                "usage": {"prompt_tokens": 11, "completion_tokens": len(tokens), "total_tokens": 11 + len(tokens)}}),
        b"data: [DONE]\n\n",
    ]


def make_app(chunks: int):
    tokens = [f" tok{i}" for i in range(chunks)]
    chat = chat_events(tokens)
    conversation = conversation_events(tokens)
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        events = chat if scope["path"].endswith("/completions") else conversation
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for e in events:
            await send({"type": "http.response.body", "body": e, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    uvicorn.run(make_app(chunks), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
