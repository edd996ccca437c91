"""The client and replicas whose queue is full (real inference servers with the synthetic engine, in-process): a full
replica is busy, not broken; the request goes to another, and when every replica is full the caller hears it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import pytest

from chatplane.common.errors import ServiceError
from chatplane.common.inference import InferenceClient
from chatplane.common.inference import metrics
from chatplane.inference.server import build
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

FULL = "This replica's queue is full (1 requests); retry shortly."


@asynccontextmanager
async def replica() -> AsyncIterator[str]:
    """An inference server that admits one generation (running) and none waiting, 20 tokens a second."""
    settings = InferenceSettings(engine="synthetic", served_model_name="synthetic", max_num_seqs=1, max_waiting=0,
                                 synthetic_tokens_per_second=20, stream_interval_ms=0)
    engine = SyntheticEngine(settings)
    await engine.start()
    runtime, _ = build(engine, settings)
    port = await runtime.start("127.0.0.1:0")
    await runtime.grpc.set_serving(True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runtime.server.stop(0)


@asynccontextmanager
async def fleet() -> AsyncIterator[tuple[InferenceClient, list[str]]]:
    """Two replicas, in address order, and a client that tries them in that order (round robin from the first)."""
    async with AsyncExitStack() as stack:
        addresses = sorted([await stack.enter_async_context(replica()) for _ in range(2)])
        client = InferenceClient(json.dumps([{"target": ",".join(addresses), "policy": "round_robin"}]),
                                 timeout=10, stream_timeout=30)
        client.start()
        stack.push_async_callback(client.close)
        deadline = time.monotonic() + 10
        while sum(r.serving for r in client.pools[0].replicas.values()) < 2:
            assert time.monotonic() < deadline, "the replicas did not become serving"
            await asyncio.sleep(0.02)
        yield client, addresses


@asynccontextmanager
async def filled(address: str) -> AsyncIterator[None]:
    """The replica at ``address`` running its one generation (a long one, cancelled at the end)."""
    async with grpc.aio.insecure_channel(address) as chan:
        call = inference_pb2_grpc.InferenceServiceStub(chan).Generate(request(1000))
        await call.read()
        try:
            yield
        finally:
            call.cancel()


def request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Hi")]),
                              sampling=pb.SamplingParams(max_tokens=max_tokens), request_id="full")


def counted(counter, **labels: str) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_a_full_replica_passes_the_request_to_another_and_is_not_failed():
    async with fleet() as (client, (first, second)):
        before = counted(metrics.FAILOVERS), counted(metrics.REQUESTS, replica=first, outcome="full")
        async with filled(first):
            gen = client.generate(request(3))
            replies = [r async for r in gen]
        assert gen.replica.address == second and gen.failovers == 0
        assert replies[-1].finish_reason == "length" and replies[-1].usage.completion_tokens == 3
        assert all(r.failed_until == 0 for r in client.pools[0].replicas.values())
        assert counted(metrics.FAILOVERS) == before[0]
        assert counted(metrics.REQUESTS, replica=first, outcome="full") == before[1] + 1


async def test_every_replica_full_is_resource_exhausted_and_no_replica_is_failed():
    async with fleet() as (client, addresses):
        before = counted(metrics.FAILOVERS), counted(metrics.REQUESTS, outcome="full")
        async with filled(addresses[0]), filled(addresses[1]):
            gen = client.generate(request(3))
            with pytest.raises(ServiceError) as err:
                await gen.read()
        assert (err.value.status, err.value.message, err.value.code) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, FULL, "rate_limit_exceeded")
        assert all(r.failed_until == 0 for r in client.pools[0].replicas.values())
        assert counted(metrics.FAILOVERS) == before[0]
        assert counted(metrics.REQUESTS, outcome="full") == before[1] + 2
