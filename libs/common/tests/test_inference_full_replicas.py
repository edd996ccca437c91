"""The client and replicas whose queue is full (real inference servers with the synthetic engine, in-process): a full
replica is busy, not broken; the request (or a reply continued mid-stream) goes to another, and when no replica is
left the caller hears that the model is busy, or, for a reply already under way, that it was lost."""

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
from chatplane.common.inference.generation import BUSY
from chatplane.dev.inference import Inference, inference_service
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

SCRIPT = [f" word{i}" for i in range(12)]  # every replica's reply


@asynccontextmanager
async def fleet(size: int) -> AsyncIterator[tuple[InferenceClient, list[Inference]]]:
    """``size`` replicas that each admit one generation (running) and none waiting, in address order, and a client
    that picks them round robin: the first pick is the first replica, each later one the next after the count of
    picks so far among the replicas not tried (routing's ``RoundRobin``)."""
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(inference_service(
            served_model_name="synthetic", max_num_seqs=1, max_waiting=0, synthetic_script=SCRIPT))
            for _ in range(size)]
        replicas.sort(key=lambda r: r.target)
        client = InferenceClient(json.dumps([{"target": ",".join(r.target for r in replicas), "policy": "round_robin"}]),
                                 timeout=10, stream_timeout=30)
        client.start()
        stack.push_async_callback(client.close)
        deadline = time.monotonic() + 10
        while sum(r.serving for r in client.pools[0].replicas.values()) < size:
            assert time.monotonic() < deadline, "the replicas did not become serving"
            await asyncio.sleep(0.02)
        yield client, replicas


@asynccontextmanager
async def filled(replica: Inference) -> AsyncIterator[None]:
    """``replica`` running its one generation (one token, then nothing for a minute; cancelled at the end)."""
    replica.pace(60)
    async with grpc.aio.insecure_channel(replica.target) as chan:
        call = inference_pb2_grpc.InferenceServiceStub(chan).Generate(request(5))
        await call.read()
        try:
            yield
        finally:
            call.cancel()


def request(max_tokens: int | None = None, content: str = "Hi") -> pb.GenerateRequest:
    return pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=content)]),
                              sampling=pb.SamplingParams(max_tokens=max_tokens), request_id="full")


def counted(counter, **labels: str) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


def none_failed(client: InferenceClient, *replicas: Inference) -> bool:
    pool = client.pools[0].replicas
    return all(pool[r.target].failed_until == 0 for r in replicas)


async def test_a_full_replica_passes_the_request_to_another_and_is_not_failed():
    async with fleet(2) as (client, (first, second)):
        before = counted(metrics.FAILOVERS), counted(metrics.REQUESTS, replica=first.target, outcome="full")
        async with filled(first):
            gen = client.generate(request(3))
            replies = [r async for r in gen]
        assert gen.replica.address == second.target and gen.failovers == 0
        assert replies[-1].finish_reason == "length" and replies[-1].usage.completion_tokens == 3
        assert none_failed(client, first, second)
        assert counted(metrics.FAILOVERS) == before[0]
        assert counted(metrics.REQUESTS, replica=first.target, outcome="full") == before[1] + 1


async def test_every_replica_full_is_the_model_busy_without_a_replicas_words_and_no_replica_is_failed():
    async with fleet(2) as (client, replicas):
        before = counted(metrics.FAILOVERS), counted(metrics.REQUESTS, outcome="full")
        async with filled(replicas[0]), filled(replicas[1]):
            gen = client.generate(request(3))
            with pytest.raises(ServiceError) as err:
                await gen.read()
        assert (err.value.status, err.value.message, err.value.code) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY, "rate_limit_exceeded")
        assert none_failed(client, *replicas)
        assert counted(metrics.FAILOVERS) == before[0]
        assert counted(metrics.REQUESTS, outcome="full") == before[1] + 2


@pytest.mark.parametrize("full_first", [True, False])
async def test_one_replica_full_and_the_other_down_is_the_model_busy(full_first):
    """The only replica that works is full: retrying shortly is the truthful answer (429), not "unavailable" (503),
    whichever of the two was tried first."""
    async with fleet(2) as (client, replicas):
        full, down = replicas if full_first else replicas[::-1]
        down.engine.refusal = ServiceError(grpc.StatusCode.UNAVAILABLE, "this replica is shutting down")
        async with filled(full):
            gen = client.generate(request(3))
            with pytest.raises(ServiceError) as err:
                await gen.read()
        assert (err.value.status, err.value.message, err.value.code) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY, "rate_limit_exceeded")
        assert len(down.generations) == 1  # it was tried, and failed
        assert none_failed(client, full)


async def test_resource_exhausted_without_the_full_code_goes_to_the_caller_from_the_first_replica():
    """gRPC's own RESOURCE_EXHAUSTED (a message over the size limit) is not a full replica: the request is not sent
    to every replica, and the caller hears what it is, not that the model is busy."""
    async with fleet(2) as (client, _):
        before = counted(metrics.REQUESTS, outcome="full"), counted(metrics.REQUESTS, outcome="error")
        gen = client.generate(request(3, content="x" * (17 * 1024 * 1024)))
        with pytest.raises(ServiceError) as err:
            await gen.read()
        assert err.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.code is None and err.value.message != BUSY
        assert counted(metrics.REQUESTS, outcome="full") == before[0]
        assert counted(metrics.REQUESTS, outcome="error") == before[1] + 1


async def test_a_reply_continued_mid_stream_passes_a_full_replica_over_to_a_free_one():
    async with fleet(3) as (client, (streaming, free, full)):
        # Round robin: the request goes to the first replica; its continuation (the first excluded) to the third.
        streaming.pace(0.05)
        before = counted(metrics.REQUESTS, replica=full.target, outcome="full")
        async with filled(full):
            gen = client.generate(request())
            replies = [await gen.read(), await gen.read()]
            assert gen.replica.address == streaming.target
            await streaming.runtime.server.stop(0)  # stopped mid-stream
            replies += [r async for r in gen]
        assert "".join(r.text for r in replies) == "".join(SCRIPT)
        assert replies[-1].finish_reason == "stop" and replies[-1].usage.completion_tokens == len(SCRIPT)
        assert gen.replica.address == free.target and gen.failovers == 1
        assert counted(metrics.REQUESTS, replica=full.target, outcome="full") == before + 1
        assert none_failed(client, free, full)


async def test_a_reply_continued_mid_stream_with_only_full_replicas_left_ends_as_lost_not_busy():
    async with fleet(2) as (client, (streaming, full)):
        streaming.pace(0.05)
        before = counted(metrics.REQUESTS, replica=full.target, outcome="full")
        async with filled(full):
            gen = client.generate(request())
            given = (await gen.read()).text
            await streaming.runtime.server.stop(0)
            with pytest.raises(ServiceError) as err:
                async for reply in gen:
                    given += reply.text
        assert err.value.status == grpc.StatusCode.UNAVAILABLE and err.value.code is None
        assert given and "".join(SCRIPT).startswith(given)
        assert counted(metrics.REQUESTS, replica=full.target, outcome="full") == before + 1
        assert none_failed(client, full)
