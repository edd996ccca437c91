"""A configured model's details come from its replicas, not from the configuration's placeholder: right after start
the client waits a little for the replicas' first answers, and never again after that."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from chatplane.common.inference import InferenceClient
from chatplane.common.inference.replica import SETTLE_SECONDS
from chatplane.dev.inference import inference_service


def silent_listener() -> socket.socket:
    """A port that accepts connections and never answers (a replica hung before its first word)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


async def test_a_configured_model_is_told_with_its_replicas_context_window_at_once():
    hung = silent_listener()
    async with inference_service(served_model_name="m", max_model_len=512) as inference:
        # A fresh client (as a gateway right after start), one replica serving and one hung.
        pools = json.dumps([{"model": "m", "target": f"{inference.target},127.0.0.1:{hung.getsockname()[1]}"}])
        client = InferenceClient(pools, timeout=10)
        try:
            model = await client.model("m")
            assert (model.id, model.max_model_len, model.created) == ("m", 512, inference.engine.created)
            assert [m.max_model_len for m in await client.wait_models()] == [512]
        finally:
            await client.close()
            hung.close()


async def test_a_pool_whose_replicas_never_answer_waits_once_and_then_not_again():
    hung = silent_listener()
    client = InferenceClient(json.dumps([{"model": "m", "target": f"127.0.0.1:{hung.getsockname()[1]}"}]), timeout=10)
    try:
        started = time.monotonic()
        model = await client.model("m")
        first = time.monotonic() - started
        assert (model.id, model.max_model_len) == ("m", 0)  # the placeholder: nobody could tell more
        assert first < SETTLE_SECONDS + 0.5
        started = time.monotonic()
        for _ in range(5):
            await client.model("m")
        assert time.monotonic() - started < 0.2  # settled: no request waits again
    finally:
        await client.close()
        hung.close()
        await asyncio.sleep(0)
