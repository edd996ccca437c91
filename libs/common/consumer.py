"""Consuming domain events: a kafka-python consumer group, idempotent by event id, committing after processing.

Each polled batch is applied in one database transaction: the ids this group has not processed yet are inserted into
the consumer's ``processed_events`` table (:func:`chatplane.common.outbox.processed_events_table`) and the handler
runs for each of those events, in order, in the same transaction (or a batch handler once for all of them). An event
delivered again (after a crash before the offset commit, a rebalance, or a relay that re-sent it) finds its id there
and is skipped, so its effect is applied exactly once. Offsets are committed only after the batch's transaction.
When the batch's transaction fails (another consumer of the group inserted one of the ids meanwhile, or a handler
failed) it is rolled back and the batch is applied again one event per transaction, so that one event's problem is
that event's alone.

One transaction per batch instead of one per event, for the CPU per event (the figures: README "Performance").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import String, column, insert, select, table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatplane.common.db import UTCDateTime, utcnow
from chatplane.common import metrics, retry, tracing
from chatplane.common.events import EventEnvelope, decode, topic_of
from chatplane.common.outbox import PROCESSED_EVENTS
from chatplane.common.relay import ensure_topics

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, EventEnvelope], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, list[EventEnvelope]], Awaitable[None]]

_processed = table(
    PROCESSED_EVENTS, column("consumer", String), column("event_id", String), column("processed_at", UTCDateTime())
)


def consumer_config(bootstrap_servers: str, group_id: str, session_timeout_ms: int) -> dict[str, Any]:
    return {
        "bootstrap_servers": [s.strip() for s in bootstrap_servers.split(",") if s.strip()],
        "group_id": group_id,
        "client_id": f"chatplane-{group_id}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(500, session_timeout_ms // 4),
        "max_poll_records": 500,
        "fetch_max_wait_ms": 100,  # a quiet topic answers a fetch after 100 ms instead of 500: lower latency
        "request_timeout_ms": max(30000, session_timeout_ms + 5000),
    }


class EventConsumer:
    """Apply events from ``topics`` with ``handler(session, envelope)``; one instance per process and group.

    ``handler`` is called only for events this group has not processed yet, inside the transaction that records the
    event id. Event types the handler does not care about should simply return.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        sessions: async_sessionmaker[AsyncSession],
        handler: Handler,
        *,
        session_timeout_ms: int = 10000,
        poll_timeout_ms: int = 500,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = list(topics)
        self.sessions = sessions
        self.handler = handler
        # Optional: the new events of a batch in one call (e.g. summed before writing); ``handler`` is then used only
        # when a batch is applied one event at a time.
        self.batch_handler = batch_handler
        self.session_timeout_ms = session_timeout_ms
        self.poll_timeout_ms = poll_timeout_ms
        self.processed = 0  # events applied by this instance
        self.skipped = 0  # duplicates recognised by event id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consumer-{group_id}")
        self._consumer: Any = None
        self._stopping = False

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> Any:
        from kafka import KafkaConsumer

        ensure_topics(self.bootstrap_servers, client_id=f"chatplane-{self.group_id}-admin")
        consumer = KafkaConsumer(**consumer_config(self.bootstrap_servers, self.group_id, self.session_timeout_ms))
        consumer.subscribe(self.topics)
        return consumer

    async def run(self) -> None:
        """Consume until :meth:`stop` (or cancellation). While the broker or the database is unreachable, reconnects
        by the one retry policy (:mod:`chatplane.common.retry`)."""
        while not self._stopping:
            await retry.until_success(self._poll_once, maximum=10.0, on_failure=self._failed)

    async def _poll_once(self) -> None:
        if self._stopping:
            return
        if self._consumer is None:
            self._consumer = await self._in_thread(self._open)
            log.info("consumer started", extra={"group": self.group_id, "topics": self.topics})
        batch = await self._in_thread(self._poll)
        if batch:
            await self.apply_batch([record.value for record in batch])
            await self._in_thread(self._consumer.commit)

    async def _failed(self, exc: BaseException, delay: float) -> None:
        log.warning("consumer error, retrying",
                    extra={"group": self.group_id, "retry_in_s": round(delay, 2), "error": repr(exc)[:300]})
        await self._in_thread(self._close)

    def _poll(self) -> list[Any]:
        records = self._consumer.poll(timeout_ms=self.poll_timeout_ms)
        metrics.record_consumer_lag(self.group_id, self._consumer)
        # Within a partition records come in offset order; partitions are independent (their keys differ).
        return [r for part in records.values() for r in part]

    async def apply_batch(self, values: list[bytes]) -> int:
        """Apply serialized envelopes in one transaction (one per event when that fails); the number applied."""
        events: dict[str, EventEnvelope] = {}
        for value in values:
            env = decode(value)
            if not env.event_id:
                log.warning("event without id skipped", extra={"group": self.group_id})
            elif env.event_id in events:
                self._counted(env, applied=False)
            else:
                events[env.event_id] = env
        if not events:
            return 0
        try:
            applied = await self._apply_together(events)
        except Exception as exc:  # noqa: BLE001 - retried one by one, where an error is the event's own
            log.info("batch not applied together, applying one event at a time",
                     extra={"group": self.group_id, "events": len(events), "error": repr(exc)[:300]})
            return sum([await self._apply_one(env) for env in events.values()])
        for env in events.values():
            self._counted(env, applied=env.event_id in applied)
        return len(applied)

    async def _apply_together(self, events: dict[str, EventEnvelope]) -> set[str]:
        async with self.sessions() as session, session.begin():
            done = set(
                (
                    await session.execute(
                        select(_processed.c.event_id).where(
                            _processed.c.consumer == self.group_id, _processed.c.event_id.in_(list(events))
                        )
                    )
                ).scalars()
            )
            new = [env for event_id, env in events.items() if event_id not in done]
            if new:
                now = utcnow()
                await session.execute(
                    insert(_processed),
                    [{"consumer": self.group_id, "event_id": env.event_id, "processed_at": now} for env in new],
                )
                if self.batch_handler is not None:
                    for env in new:  # the events' traces still get their consumer span
                        with tracing.consumer_span(self._topic(env), self.group_id, env.type, env.traceparent):
                            pass
                    await self.batch_handler(session, new)
                else:
                    for env in new:
                        with tracing.consumer_span(self._topic(env), self.group_id, env.type, env.traceparent):
                            await self.handler(session, env)
        return {env.event_id for env in new}

    def _topic(self, env: EventEnvelope) -> str:
        return topic_of(env) if env.WhichOneof("payload") else "unknown"

    def _counted(self, env: EventEnvelope, *, applied: bool) -> None:
        if applied:
            self.processed += 1
        else:
            self.skipped += 1
        metrics.record_consumed(self._topic(env), self.group_id, applied=applied)

    async def _apply_one(self, env: EventEnvelope) -> bool:
        # A span in the trace of the request that produced the event (its envelope carries the traceparent).
        with tracing.consumer_span(self._topic(env), self.group_id, env.type, env.traceparent):
            try:
                async with self.sessions() as session, session.begin():
                    await session.execute(
                        insert(_processed).values(consumer=self.group_id, event_id=env.event_id, processed_at=utcnow())
                    )
                    await self.handler(session, env)
            except IntegrityError:
                self._counted(env, applied=False)
                return False
        self._counted(env, applied=True)
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current poll."""
        self._stopping = True

    def _close(self, *, commit: bool = False) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=commit)
            except Exception:  # noqa: BLE001, S110 - closing a broken consumer
                pass
            self._consumer = None

    async def close(self) -> None:
        """Leave the group (without committing anything not yet committed) and release the thread."""
        self._stopping = True
        await self._in_thread(self._close)
        self._executor.shutdown(wait=False)

