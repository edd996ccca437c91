"""The event backbone against a real broker (Tansu) and real databases: outbox -> relay -> Kafka -> consumer."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections import defaultdict

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from chatplane.common import db
from chatplane.common.consumer import EventConsumer
from chatplane.common.events import TOPICS, envelope, topic_of
from chatplane.common.outbox import add_event, outbox_table, processed_events_table
from chatplane.common.relay import OutboxRelay
from chatplane.protos.events.v1 import events_pb2
from tests_support import CrashBeforeCommit, crash_before_commit

SESSION_TIMEOUT_MS = 6000

metadata = MetaData()
outbox = outbox_table(metadata)
processed_events_table(metadata)
applied = Table(  # what the test consumer's handler writes: one row per applied event
    "applied",
    metadata,
    Column("event_id", String(32), primary_key=True),
    Column("key", String(64)),
    Column("seq", Integer),
)


@pytest.fixture
async def engine(database_url):
    engine = db.make_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


def message_event(producer: str, conversation_id: str, seq: int):
    payload = events_pb2.MessageStored(conversation_id=conversation_id, user_id="u", message_id=uuid.uuid4().hex,
                                       role="user", status="complete", seq=seq)
    return envelope(payload, producer=producer)


async def write_events(engine, producer: str, keys: list[str], per_key: int, start: int = 0) -> list[str]:
    """Each event in its own committed transaction, keys interleaved; returns the event ids in commit order."""
    sessions = db.sessionmaker(engine)
    ids = []
    for seq in range(start, start + per_key):
        for key in keys:
            env = message_event(producer, key, seq)
            async with sessions() as session, session.begin():
                await add_event(session, env)
            ids.append(env.event_id)
    return ids


class Recorder:
    """Handler of the test consumer: applies only this test's events; remembers the order per key."""

    def __init__(self, producer: str) -> None:
        self.producer = producer
        self.order: dict[str, list[int]] = defaultdict(list)
        self.ids: list[str] = []

    async def __call__(self, session, env) -> None:
        if env.producer != self.producer:
            return
        self.order[env.key].append(env.message_stored.seq)
        self.ids.append(env.event_id)
        await session.execute(insert(applied).values(event_id=env.event_id, key=env.key,
                                                     seq=env.message_stored.seq))


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def consumer(broker, engine, recorder, group: str | None = None) -> EventConsumer:
    return EventConsumer(
        broker.bootstrap_servers, group or f"test-{uuid.uuid4().hex[:8]}", TOPICS, db.sessionmaker(engine), recorder,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def test_envelope_routes_every_event_type_to_its_topic_and_key():
    cases = [
        (events_pb2.UserSignedUp(user_id="u1"), "chatplane.auth.v1", "u1"),
        (events_pb2.ApiKeyCreated(user_id="u1", api_key_id="k"), "chatplane.auth.v1", "u1"),
        (events_pb2.ApiKeyRevoked(user_id="u1", api_key_id="k"), "chatplane.auth.v1", "u1"),
        (events_pb2.ConversationCreated(conversation_id="c1", user_id="u1"), "chatplane.conversation.v1", "c1"),
        (events_pb2.ConversationDeleted(conversation_id="c1", user_id="u1"), "chatplane.conversation.v1", "c1"),
        (events_pb2.MessageStored(conversation_id="c1", user_id="u1"), "chatplane.conversation.v1", "c1"),
        (events_pb2.CompletionFinished(user_id="u1", model="m"), "chatplane.usage.v1", "u1"),
    ]
    seen_types = set()
    for payload, topic, key in cases:
        env = envelope(payload, producer="test")
        assert (topic_of(env), env.key, env.user_id) == (topic, key, "u1")
        assert len(env.event_id) == 32 and env.occurred_at.seconds > 0
        seen_types.add(env.type)
    assert len(seen_types) == len(cases)


async def test_rolled_back_changes_leave_no_event(engine):
    sessions = db.sessionmaker(engine)
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await add_event(session, message_event("p", "c", 1))
            raise RuntimeError("the state change failed")
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(outbox)) == 0


async def test_events_arrive_once_and_in_order_per_key(engine, kafka_broker):
    producer = uuid.uuid4().hex
    keys = [uuid.uuid4().hex for _ in range(5)]
    relay = OutboxRelay(engine, kafka_broker.bootstrap_servers, name=producer, poll_interval=0.2)
    relay.start()
    recorder = Recorder(producer)
    cons = consumer(kafka_broker, engine, recorder)
    task = asyncio.create_task(cons.run())
    try:
        ids = await write_events(engine, producer, keys, per_key=20)
        await wait_until(lambda: len(recorder.ids) >= len(ids), 60, "all events consumed")
        await asyncio.sleep(0.5)  # anything extra would show up now
    finally:
        cons.stop()
        await asyncio.gather(task, return_exceptions=True)
        await cons.close()
        await relay.stop()
    assert sorted(recorder.ids) == sorted(ids)  # every event, once
    for key in keys:
        assert recorder.order[key] == list(range(20))  # in order per key
    async with db.sessionmaker(engine)() as session:
        unsent = await session.scalar(select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None)))
    assert unsent == 0


async def _outage(engine, kafka_broker, *, kill: bool) -> None:
    producer = uuid.uuid4().hex
    keys = [uuid.uuid4().hex for _ in range(4)]
    relay = OutboxRelay(engine, kafka_broker.bootstrap_servers, name=producer, poll_interval=0.2, max_backoff=1.0)
    relay.start()
    recorder = Recorder(producer)
    group = f"outage-{uuid.uuid4().hex[:8]}"
    cons = consumer(kafka_broker, engine, recorder, group)
    task = asyncio.create_task(cons.run())
    try:
        first = await write_events(engine, producer, keys, per_key=10)
        await wait_until(lambda: len(recorder.ids) >= len(first), 60, "events before the outage")
        kafka_broker.stop() if kill else kafka_broker.pause()
        try:
            # Traffic while the broker is away: the events wait in the outbox.
            during = await write_events(engine, producer, keys, per_key=10, start=10)
            await asyncio.sleep(3)
            async with db.sessionmaker(engine)() as session:
                waiting = await session.scalar(
                    select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                )
            assert waiting == len(during)
        finally:
            if kill:
                # The embedded broker is memory-only: its restart forgets the topics and the group's offsets, so the
                # consumer's remembered positions mean nothing. Apache Kafka keeps both; a restarted consumer is what
                # reads a forgotten log from its start. It is stopped while the broker is down: a consumer that
                # rejoined the restarted broker and then left sent Tansu's group into an endless rebalance.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await cons.close()
                kafka_broker.start()
                kafka_broker.wait_ready(30)
                cons = consumer(kafka_broker, engine, recorder, group)
                task = asyncio.create_task(cons.run())
            else:
                kafka_broker.resume()
        after = await write_events(engine, producer, keys, per_key=5, start=20)
        total = first + during + after
        await wait_until(lambda: len(recorder.ids) >= len(total), 90, "events after the outage")
        await asyncio.sleep(0.5)
    finally:
        cons.stop()
        await asyncio.gather(task, return_exceptions=True)
        await cons.close()
        await relay.stop()
    assert sorted(recorder.ids) == sorted(total)  # nothing lost, nothing applied twice
    for key in keys:
        assert recorder.order[key] == list(range(25))  # still in order per key


async def test_broker_unreachable_for_a_while_loses_nothing(engine, kafka_broker):
    await _outage(engine, kafka_broker, kill=False)


async def test_broker_restarted_loses_nothing(sqlite_database_url, kafka_broker):
    engine = db.make_engine(sqlite_database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        await _outage(engine, kafka_broker, kill=True)
    finally:
        await engine.dispose()


async def test_consumer_crash_before_commit_reprocesses_without_double_counting(engine, kafka_broker):
    producer = uuid.uuid4().hex
    keys = [uuid.uuid4().hex for _ in range(3)]
    ids = await write_events(engine, producer, keys, per_key=10)
    relay = OutboxRelay(engine, kafka_broker.bootstrap_servers, name=producer, poll_interval=0.2)
    await relay.publish_once()
    group = f"crash-{uuid.uuid4().hex[:8]}"
    first = Recorder(producer)
    crashing = crash_before_commit(consumer(kafka_broker, engine, first, group))
    with pytest.raises(CrashBeforeCommit):
        await asyncio.wait_for(crashing.run(), 60)
    await crashing.close()
    assert crashing.processed > 0

    second = Recorder(producer)
    again = consumer(kafka_broker, engine, second, group)
    task = asyncio.create_task(again.run())
    try:
        await wait_until(lambda: len(first.ids) + len(second.ids) >= len(ids), 60, "the rest of the events")
        await wait_until(lambda: again.skipped >= len(first.ids), 30, "the redelivered events")
    finally:
        again.stop()
        await asyncio.gather(task, return_exceptions=True)
        await again.close()
        await relay.stop()
    # The events applied before the crash came again and were recognised; each event was applied exactly once.
    assert sorted(first.ids + second.ids) == sorted(ids)
    async with db.sessionmaker(engine)() as session:
        rows = (await session.execute(select(applied.c.event_id).where(applied.c.key.in_(keys)))).scalars().all()
    assert sorted(rows) == sorted(ids)


async def test_a_batch_is_applied_once_per_event_id_and_a_failing_event_fails_alone(engine):
    producer = uuid.uuid4().hex
    events = [message_event(producer, f"k{i}", i) for i in range(7)]
    raw = [env.SerializeToString() for env in events]
    recorder = Recorder(producer)
    poisoned: set[str] = set()

    async def handler(session, env) -> None:
        if env.event_id in poisoned:
            raise RuntimeError("this event cannot be applied")
        await recorder(session, env)

    applier = EventConsumer("127.0.0.1:1", f"batch-{uuid.uuid4().hex[:8]}", TOPICS, db.sessionmaker(engine), handler)

    async def rows() -> list[str]:
        async with db.sessionmaker(engine)() as session:
            keys = [env.key for env in events]
            return sorted((await session.execute(select(applied.c.event_id).where(applied.c.key.in_(keys)))).scalars())

    # Together, with an event delivered twice in the same batch.
    assert await applier.apply_batch([raw[0], raw[1], raw[0], raw[2]]) == 3
    assert (applier.processed, applier.skipped) == (3, 1)
    # Delivered again beside a new one: only the new one is applied.
    assert await applier.apply_batch([raw[1], raw[3]]) == 1
    assert await rows() == sorted(env.event_id for env in events[:4])

    # A failing event: the batch's transaction rolls back, the events are applied one by one up to the failing one,
    # which stops the batch (the consumer retries it from the last committed offset)...
    poisoned.add(events[5].event_id)
    with pytest.raises(RuntimeError):
        await applier.apply_batch(raw[4:])
    assert await rows() == sorted(env.event_id for env in events[:5])
    # ... and once it can be applied, the redelivered batch applies exactly what is missing.
    poisoned.clear()
    assert await applier.apply_batch(raw[4:]) == 2
    assert await rows() == sorted(env.event_id for env in events)


async def test_a_batch_waits_for_another_writer_of_the_sqlite_file_instead_of_failing(sqlite_database_url, caplog):
    # Another process writing the same file (the auth service beside its usage consumer): the batch's transaction
    # waits for the write lock and applies together, rather than failing and falling back to one event at a time.
    # (pysqlite begins a transaction only at its first write, so the batch's SELECT does not hold a snapshot that
    # would make that write fail at once.)
    engine = db.make_engine(sqlite_database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    producer = uuid.uuid4().hex
    events = [message_event(producer, "k", i) for i in range(5)]
    applier = EventConsumer("127.0.0.1:1", f"busy-{uuid.uuid4().hex[:8]}", TOPICS, db.sessionmaker(engine),
                            Recorder(producer))
    other = sqlite3.connect(sqlite_database_url.split("///", 1)[1], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        other.execute("INSERT INTO applied (event_id, key, seq) VALUES ('other', 'other', 0)")
        caplog.set_level(logging.INFO, logger="chatplane.common.consumer")
        batch = asyncio.ensure_future(applier.apply_batch([env.SerializeToString() for env in events]))
        await asyncio.sleep(0.3)
        assert not batch.done()  # waiting for the lock
        other.execute("COMMIT")
        assert await asyncio.wait_for(batch, 30) == 5
    finally:
        other.close()
        await engine.dispose()
    assert not [r for r in caplog.records if "one event at a time" in r.getMessage()]


async def test_a_lingering_relay_sends_close_commits_in_one_batch(engine, kafka_broker):
    producer = uuid.uuid4().hex
    relay = OutboxRelay(engine, kafka_broker.bootstrap_servers, name=producer, poll_interval=30, linger=0.5)
    sends: list[int] = []
    send = relay._send

    def counted(rows):
        sends.append(len(rows))
        return send(rows)

    relay._send = counted
    relay.start()
    try:
        await asyncio.sleep(0.3)  # its first read at start (nothing to send yet)
        for _ in range(3):  # three commits, 0.1 s apart: all within the linger of the first
            await write_events(engine, producer, ["k"], per_key=1)
            await asyncio.sleep(0.1)
        await wait_until(lambda: relay.stats.published >= 3, 30, "the events published")
    finally:
        await relay.stop()
    assert sends == [3]
