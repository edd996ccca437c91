"""Batched completion records (gateway -> auth ``RecordCompletions``): batch size and delay, retries while auth is
unavailable without double counting, the bounded buffer, and the flush at shutdown."""

from __future__ import annotations

import asyncio
import time
import uuid

from prometheus_client import REGISTRY

from chatplane.common.grpc_client import channel
from chatplane.gateway.completions import CompletionBatcher
from chatplane.protos.auth.v1 import auth_pb2_grpc
from chatplane.protos.events.v1 import events_pb2


def finished(i: int = 0) -> events_pb2.CompletionFinished:
    return events_pb2.CompletionFinished(request_id=f"chatcmpl-{i}", user_id=uuid.uuid4().hex, model="test-model",
                                         prompt_tokens=3, completion_tokens=i, finish_reason="stop", path="chat")


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("chatplane_gateway_completion_records_dropped_total", {"reason": reason}) or 0


async def test_full_batches_go_at_once_and_the_rest_after_the_delay(fakes):
    async with channel(fakes.targets["auth"]) as ch:
        batcher = CompletionBatcher(auth_pb2_grpc.AuthServiceStub(ch), timeout=5, batch_size=100, max_delay=0.3)
        batcher.start()
        started = time.monotonic()
        for i in range(250):
            batcher.add(finished(i))
        await wait_for(lambda: len(fakes.auth.completions) >= 200)
        assert fakes.auth.completion_batches == [100, 100]  # full batches: no waiting for the delay
        assert time.monotonic() - started < 0.3
        await wait_for(lambda: len(fakes.auth.completions) == 250)
        assert fakes.auth.completion_batches == [100, 100, 50]
        assert [r.completion.request_id for r in fakes.auth.completions] == [f"chatcmpl-{i}" for i in range(250)]
        await batcher.close()


async def test_unavailable_auth_is_retried_with_the_same_event_ids(fakes):
    fakes.auth.record_unavailable = True
    async with channel(fakes.targets["auth"]) as ch:
        batcher = CompletionBatcher(auth_pb2_grpc.AuthServiceStub(ch), timeout=5, max_delay=0.01, backoff=0.02)
        for i in range(3):
            batcher.add(finished(i))
        await wait_for(lambda: len(fakes.auth.completion_batches) >= 2)  # tried, failed, tried again
        assert fakes.auth.completions == []
        fakes.auth.record_unavailable = False
        await wait_for(lambda: len(fakes.auth.completions) == 3)
        event_ids = [r.event_id for r in fakes.auth.completions]
        assert len(set(event_ids)) == 3
        await batcher.close()
    assert batcher.dropped == 0


async def test_buffer_drops_the_oldest_records_while_auth_stays_down(fakes):
    fakes.auth.record_unavailable = True
    before = dropped("buffer_full")
    async with channel(fakes.targets["auth"]) as ch:
        batcher = CompletionBatcher(auth_pb2_grpc.AuthServiceStub(ch), timeout=5, batch_size=4, max_delay=0.01,
                                    max_buffer=5, backoff=0.02, max_backoff=0.05)
        for i in range(12):
            batcher.add(finished(i))
            await asyncio.sleep(0.005)
        await wait_for(lambda: len(fakes.auth.completion_batches) >= 2)
        fakes.auth.record_unavailable = False
        await wait_for(lambda: len(fakes.auth.completions) == 5)
        await batcher.close()
    # The newest five survived, in order; the others were dropped and counted.
    assert [r.completion.request_id for r in fakes.auth.completions] == [f"chatcmpl-{i}" for i in range(7, 12)]
    assert batcher.dropped == 7
    assert dropped("buffer_full") - before == 7


async def test_close_sends_what_is_queued_without_waiting_for_the_delay(fakes):
    async with channel(fakes.targets["auth"]) as ch:
        batcher = CompletionBatcher(auth_pb2_grpc.AuthServiceStub(ch), timeout=5, max_delay=30)
        for i in range(3):
            batcher.add(finished(i))
        started = time.monotonic()
        await batcher.close()
        assert time.monotonic() - started < 2
    assert len(fakes.auth.completions) == 3 and fakes.auth.completion_batches == [3]


async def test_gateway_shutdown_flushes_the_completion_records(make_client, settings, fakes, user_key, auth_headers):
    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    async with make_client(settings) as client:
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat, headers=auth_headers)
                                         for _ in range(5)))
        assert all(r.status_code == 200 for r in replies)
    # The app's lifespan has ended: every completion reached auth, in fewer calls than requests.
    assert sorted(r.completion.request_id for r in fakes.auth.completions) == sorted(r.json()["id"] for r in replies)
    assert sum(fakes.auth.completion_batches) == 5
