"""Finished completions into the gateway's durable spool: batch size and delay, retries of a failed write without
double counting, the bounded buffer, the flush at shutdown; and the spool itself, which publishes to the real broker
and keeps, across processes, what the broker did not take."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from chatplane.common.events import USAGE_TOPIC
from chatplane.dev.procs import free_port
from chatplane.gateway.completions import CompletionBatcher, Record
from chatplane.gateway.spool import CompletionSpool
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


class SinkDouble:
    """Test double of the spool's write: records each batch; fails while ``failing``."""

    def __init__(self) -> None:
        self.batches: list[list[Record]] = []
        self.attempts = 0
        self.failing = False

    async def __call__(self, batch: list[Record]) -> None:
        self.attempts += 1
        if self.failing:
            raise OSError("disk full (test)")
        self.batches.append(batch)

    @property
    def records(self) -> list[Record]:
        return [r for b in self.batches for r in b]


async def test_full_batches_go_at_once_and_the_rest_after_the_delay():
    sink = SinkDouble()
    batcher = CompletionBatcher(sink, batch_size=100, max_delay=0.3)
    batcher.start()
    started = time.monotonic()
    for i in range(250):
        batcher.add(finished(i))
    await wait_for(lambda: len(sink.records) >= 200)
    assert [len(b) for b in sink.batches] == [100, 100]  # full batches: no waiting for the delay
    assert time.monotonic() - started < 0.3
    await wait_for(lambda: len(sink.records) == 250)
    assert [len(b) for b in sink.batches] == [100, 100, 50]
    assert [c.request_id for _, c in sink.records] == [f"chatcmpl-{i}" for i in range(250)]
    await batcher.close()


async def test_a_failed_write_is_retried_with_the_same_event_ids():
    sink = SinkDouble()
    sink.failing = True
    batcher = CompletionBatcher(sink, max_delay=0.01, backoff=0.02)
    for i in range(3):
        batcher.add(finished(i))
    await wait_for(lambda: sink.attempts >= 2)  # tried, failed, tried again
    first_ids = None
    sink.failing = False
    await wait_for(lambda: len(sink.records) == 3)
    first_ids = [event_id for event_id, _ in sink.records]
    assert len(set(first_ids)) == 3
    await batcher.close()
    assert batcher.dropped == 0


async def test_buffer_drops_the_oldest_records_while_writing_fails():
    sink = SinkDouble()
    sink.failing = True
    before = dropped("buffer_full")
    batcher = CompletionBatcher(sink, batch_size=4, max_delay=0.01, max_buffer=5, backoff=0.02, max_backoff=0.05)
    for i in range(12):
        batcher.add(finished(i))
        await asyncio.sleep(0.005)
    await wait_for(lambda: sink.attempts >= 2)
    sink.failing = False
    await wait_for(lambda: len(sink.records) == 5)
    await batcher.close()
    # The newest five survived, in order; the others were dropped and counted.
    assert [c.request_id for _, c in sink.records] == [f"chatcmpl-{i}" for i in range(7, 12)]
    assert batcher.dropped == 7
    assert dropped("buffer_full") - before == 7


async def test_close_writes_what_is_queued_without_waiting_for_the_delay():
    sink = SinkDouble()
    batcher = CompletionBatcher(sink, max_delay=30)
    for i in range(3):
        batcher.add(finished(i))
    started = time.monotonic()
    await batcher.close()
    assert time.monotonic() - started < 2
    assert [len(b) for b in sink.batches] == [3]


async def test_gateway_shutdown_writes_every_completion_to_the_spool(make_client, settings, spooled, auth_headers):
    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    async with make_client(settings) as client:
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat, headers=auth_headers)
                                         for _ in range(5)))
        assert all(r.status_code == 200 for r in replies)
    # The app's lifespan has ended: every completion is in the spool file.
    assert sorted(c.request_id for c in spooled()) == sorted(r.json()["id"] for r in replies)


def _consume(bootstrap: str, event_ids: set[str], timeout: float = 30) -> set[str]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(USAGE_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=f"spool-test-{uuid.uuid4().hex}", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1500)
    found: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while found != event_ids and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    env = events_pb2.EventEnvelope.FromString(record.value)
                    if env.event_id in event_ids:
                        found.add(env.event_id)
    finally:
        consumer.close()
    return found


@pytest.mark.timeout(120)
async def test_the_spool_keeps_what_the_broker_did_not_take_for_the_next_process(kafka_broker, tmp_path):
    path = tmp_path / "gateway-spool.db"
    records = [(uuid.uuid4().hex, finished(i)) for i in range(3)]
    # A gateway whose broker is away: the completions are written, not published, and stay in the file.
    away = CompletionSpool(path, f"127.0.0.1:{free_port()}")
    await away.start()
    await away.write(records)
    await away.close()
    # The next process on the same folder publishes them to the (real) broker, where the usage consumer reads.
    back = CompletionSpool(path, kafka_broker.bootstrap_servers)
    await back.start()
    try:
        ids = {event_id for event_id, _ in records}
        found = await asyncio.to_thread(_consume, kafka_broker.bootstrap_servers, ids)
        assert found == ids
    finally:
        await back.close()
