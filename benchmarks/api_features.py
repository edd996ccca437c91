"""What the API features beyond plain chat cost, through the whole platform with the real engine.

    python benchmarks/api_features.py [--requests 8] [--max-tokens 32] [--json out.json]

Starts the platform (embedded defaults, SQLite in a temp folder), then for each case sends ``--requests`` requests one
after another (after one warm-up) with the official ``openai`` SDK, greedy, ``max_tokens`` fixed, and reports the
median time to the first token (streamed) and to the whole answer, and completion tokens per second. Cases: plain
chat; ``response_format`` json_schema with one schema (xgrammar's compiled-grammar cache warm) and with a new schema
every request (compiled each time); a named tool; ``tools`` with ``auto``; ``logprobs`` with 5 alternatives; ``n=4``
against four concurrent requests; ``/v1/completions``; ``/v1/responses`` stored (the conversation service's path)
and not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODEL_DIR = Path(os.environ.get("CHATPLANE_INFERENCE_MODEL_PATH", "data/models/SmolLM2-135M-Instruct")).resolve()
QUESTION = [{"role": "user", "content": "Tell me about Paris in a few sentences."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                           "age": {"type": "integer"}}, "required": ["name", "age"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}


async def measure(client, model: str, requests: int, max_tokens: int) -> dict:
    chat = client.chat.completions

    async def timed(call, *, stream: bool = False) -> tuple[float, float, int]:
        """(seconds to the first token or None, seconds to the end, completion tokens)."""
        start = time.perf_counter()
        if not stream:
            reply = await call()
            usage = getattr(reply, "usage", None)
            tokens = getattr(usage, "completion_tokens", None) or getattr(usage, "output_tokens", 0)
            return 0.0, time.perf_counter() - start, tokens
        first, tokens = None, 0
        async for chunk in await call():
            if first is None and chunk.choices and _says_something(chunk.choices[0]):
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return first or 0.0, time.perf_counter() - start, tokens

    base = dict(model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0)
    streamed = dict(stream=True, stream_options={"include_usage": True})
    schema_n = iter(range(10**6))
    cases = {
        "chat plain": lambda: chat.create(**base, **streamed),
        "chat json_schema (same schema)": lambda: chat.create(**base, **streamed, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}),
        "chat json_schema (new schema)": lambda: chat.create(**base, **streamed, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": {
                **PERSON, "properties": {**PERSON["properties"], f"f{next(schema_n)}": {"type": "boolean"}}}}}),
        "chat named tool": lambda: chat.create(**base, **streamed, tools=[WEATHER],
                                               tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        "chat tools auto": lambda: chat.create(**base, **streamed, tools=[WEATHER]),
        "chat logprobs top 5": lambda: chat.create(**base, **streamed, logprobs=True, top_logprobs=5),
        "completions": lambda: client.completions.create(
            model=model, prompt="Paris is", max_tokens=max_tokens, temperature=0, **streamed),
        "responses store=false": lambda: client.responses.create(
            model=model, input=QUESTION[0]["content"], max_output_tokens=max_tokens, temperature=0, store=False),
        "responses store=true": lambda: client.responses.create(
            model=model, input=QUESTION[0]["content"], max_output_tokens=max_tokens, temperature=0),
    }
    out: dict = {}
    for name, call in cases.items():
        stream = not name.startswith("responses")
        await timed(call, stream=stream)  # warm-up
        runs = [await timed(call, stream=stream) for _ in range(requests)]
        tokens = sum(t for _, _, t in runs)
        out[name] = {
            "ttft_p50_ms": round(statistics.median(f for f, _, _ in runs) * 1000, 1) if stream else None,
            "latency_p50_ms": round(statistics.median(e for _, e, _ in runs) * 1000, 1),
            "tokens_per_s": round(tokens / sum(e for _, e, _ in runs), 1),
        }
    # n=4 in one request against four concurrent requests.
    sampled = {**base, "temperature": 1.0}
    for label, make in (
        ("chat n=4 (one request)", lambda: [chat.create(**sampled, n=4, seed=1)]),
        ("chat 4 concurrent requests", lambda: [chat.create(**sampled, seed=i) for i in range(4)]),
    ):
        await asyncio.gather(*make())
        elapsed, tokens = [], 0
        for _ in range(max(1, requests // 2)):
            start = time.perf_counter()
            replies = await asyncio.gather(*make())
            elapsed.append(time.perf_counter() - start)
            tokens += sum(r.usage.completion_tokens for r in replies)
        out[label] = {"ttft_p50_ms": None, "latency_p50_ms": round(statistics.median(elapsed) * 1000, 1),
                      "tokens_per_s": round(tokens / sum(elapsed), 1)}
    return out


def _says_something(choice) -> bool:
    """A streamed choice with text (chat content, tool-call pieces, or a legacy completion's text)."""
    delta = getattr(choice, "delta", None)
    if delta is None:
        return bool(choice.text)
    return bool(delta.content or delta.tool_calls)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: stop the platform on the way out
    import openai

    from chatplane.dev.procs import free_port
    from chatplane.dev.stack import Ports, dev_api_key, services, start_all, stop_all

    with tempfile.TemporaryDirectory() as tmp:
        # Free ports only (metrics off, no Kafka: events wait in the outboxes), so that it runs beside `make run`.
        ports = Ports(gateway=free_port(), auth=free_port(), conversation=free_port(), inference=free_port(),
                      gateway_metrics=0, auth_metrics=0, conversation_metrics=0, inference_metrics=0,
                      worker_metrics=0, usage_metrics=0)
        svcs = services(ports, Path(tmp), log_dir=Path(tmp), env={"CHATPLANE_INFERENCE_MODEL_PATH": str(MODEL_DIR)},
                        kafka_bootstrap_servers="")
        try:
            start_all(svcs, 600)
            base = f"http://127.0.0.1:{ports.gateway}"
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=dev_api_key(base, Path(tmp)), max_retries=0)
            report = asyncio.run(measure(client, MODEL_DIR.name, ARGS.requests, ARGS.max_tokens))
        finally:
            stop_all(svcs)
    print(f"{'case':<32} {'TTFT p50 ms':>12} {'latency p50 ms':>15} {'tokens/s':>9}")
    for name, row in report.items():
        ttft = "" if row["ttft_p50_ms"] is None else row["ttft_p50_ms"]
        print(f"{name:<32} {ttft:>12} {row['latency_p50_ms']:>15} {row['tokens_per_s']:>9}")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps({"max_tokens": ARGS.max_tokens, "cases": report}, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json")
    ARGS = parser.parse_args()
    sys.exit(main())
