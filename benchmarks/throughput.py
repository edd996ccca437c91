"""Tokens per second through the whole platform against vLLM's ``AsyncLLM`` called directly, same model, same run.

    python benchmarks/throughput.py [--streams 1 8] [--max-tokens 128] [--json out.json]

Starts the platform (embedded defaults, SQLite in a temp folder) and streams chat completions through the gateway
with the official ``openai`` SDK; stops it, then runs the same requests against an in-process ``AsyncLLM``. The two
never run at once (2 cores). Figures: time to ready, aggregate completion tokens/s, TTFT p50, and the ratio.
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

PROMPT = "Write a long story about a dragon who learns to bake bread."
MODEL_DIR = Path(os.environ.get("CHATPLANE_INFERENCE_MODEL_PATH", "data/models/SmolLM2-135M-Instruct")).resolve()


async def through_gateway(base_url: str, key: str, model: str, streams: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)

    async def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        ttft = None
        tokens = 0
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, temperature=0.8,
            seed=i, stream=True, stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return tokens, ttft or 0.0

    await one(999)  # warm-up
    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.perf_counter() - started
    await client.close()
    return summarize(results, elapsed)


async def direct(streams: int, max_tokens: int) -> dict:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from chatplane.inference.vllm_engine import prepare_environment, engine_kwargs
    from chatplane.inference.settings import InferenceSettings

    settings = InferenceSettings(model_path=MODEL_DIR)
    prepare_environment(settings)
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(settings)))
    tok = llm.get_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)

    async def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        ttft = None
        tokens = 0
        params = SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i, output_kind=RequestOutputKind.DELTA)
        async for out in llm.generate({"prompt_token_ids": ids}, params, f"bench-{i}-{time.monotonic_ns()}"):
            if ttft is None and out.outputs[0].text:
                ttft = time.perf_counter() - start
            tokens += len(out.outputs[0].token_ids)
        return tokens, ttft or 0.0

    try:
        await one(999)
        out = {}
        for n in ARGS.streams:
            started = time.perf_counter()
            results = await asyncio.gather(*(one(i) for i in range(n)))
            out[n] = summarize(results, time.perf_counter() - started)
        return out
    finally:
        llm.shutdown()


def summarize(results: list[tuple[int, float]], elapsed: float) -> dict:
    tokens = sum(t for t, _ in results)
    return {
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "ttft_p50_ms": round(statistics.median(f for _, f in results) * 1000, 1),
    }


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: stop the platform on the way out
    from chatplane.dev.procs import free_port
    from chatplane.dev.stack import Ports, dev_api_key, services, start_all, stop_all

    report: dict = {"prompt": PROMPT, "max_tokens": ARGS.max_tokens, "gateway": {}, "direct": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ports = Ports(gateway=free_port(), auth=free_port(), conversation=free_port(), inference=free_port())
        svcs = services(ports, Path(tmp), log_dir=Path(tmp),
                        env={"CHATPLANE_INFERENCE_MODEL_PATH": str(MODEL_DIR)})
        started = time.perf_counter()
        try:
            start_all(svcs, 600)
            report["ready_seconds"] = round(time.perf_counter() - started, 1)
            base = f"http://127.0.0.1:{ports.gateway}"
            key = dev_api_key(base, Path(tmp))
            for n in ARGS.streams:
                report["gateway"][n] = asyncio.run(through_gateway(base, key, MODEL_DIR.name, n, ARGS.max_tokens))
        finally:
            stop_all(svcs)
    report["direct"] = asyncio.run(direct(ARGS.streams, ARGS.max_tokens))
    print(f"platform ready in {report['ready_seconds']} s")
    print(f"{'streams':>7} {'gateway tok/s':>14} {'direct tok/s':>13} {'ratio':>6} {'TTFT p50 gw/direct (ms)':>24}")
    for n in ARGS.streams:
        g, d = report["gateway"][n], report["direct"][n]
        print(f"{n:>7} {g['tokens_per_s']:>14} {d['tokens_per_s']:>13} {g['tokens_per_s'] / d['tokens_per_s']:>6.2f} "
              f"{g['ttft_p50_ms']:>12} / {d['ttft_p50_ms']}")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json")
    ARGS = parser.parse_args()
    sys.exit(main())
