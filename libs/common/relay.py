"""The outbox relay: publishes a service's outbox rows to Kafka, in order, at least once.

An asyncio task inside the owning service's process. It wakes up after each commit that added events (``linger``
seconds later, so that close commits go out together), and every ``poll_interval`` seconds in any case, reads the unsent rows in id order, sends them with kafka-python
(``acks=all``, idempotent producer) in a worker thread, waits for the broker's acknowledgements and only then marks
the acknowledged prefix sent. When the broker is down nothing is marked: the rows wait and the relay retries with
exponential backoff, so events go out when the broker returns, still in id order (hence in order per key).

On PostgreSQL one relay at a time publishes (a transaction-level advisory lock), so that several replicas of a
service do not interleave. Sent rows are deleted after ``keep_sent_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import BigInteger, LargeBinary, String, column, delete, func, select, table, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatplane.common import metrics, outbox, retry
from chatplane.common.db import UTCDateTime, utcnow, writer
from chatplane.common.events import TOPICS, decode

log = logging.getLogger(__name__)

_rows = table(
    outbox.OUTBOX,
    column("id", BigInteger),
    column("event_id", String),
    column("topic", String),
    column("key", String),
    column("payload", LargeBinary),
    column("sent_at", UTCDateTime()),
)


def producer_config(bootstrap_servers: str) -> dict[str, Any]:
    """kafka-python producer settings: every write acknowledged by all in-sync replicas, idempotent, fails fast."""
    return {
        "bootstrap_servers": [s.strip() for s in bootstrap_servers.split(",") if s.strip()],
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 5,
        "request_timeout_ms": 5000,
        "delivery_timeout_ms": 10000,
        "max_block_ms": 5000,
        "client_id": "chatplane-relay",
    }


def ensure_topics(bootstrap_servers: str, partitions: int = 3, *, client_id: str = "chatplane-admin") -> None:
    """Create the event topics that do not exist yet (blocking; call from a thread)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(
        bootstrap_servers=[s.strip() for s in bootstrap_servers.split(",") if s.strip()],
        client_id=client_id,
        request_timeout_ms=5000,
    )
    try:
        missing = [t for t in TOPICS if t not in set(admin.list_topics())]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
            except Exception as exc:  # noqa: BLE001 - a concurrent creator or a cluster that forbids it: use what is
                log.warning("creating topics failed", extra={"topics": missing, "error": repr(exc)[:300]})
    finally:
        admin.close()


class PublishError(Exception):
    """Some rows were not acknowledged by the broker; they stay in the outbox."""


@dataclass
class RelayStats:
    published: int = 0
    failures: int = 0


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        bootstrap_servers: str,
        *,
        name: str,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        keep_sent_seconds: float = 24 * 3600,
        partitions: int = 3,
        linger: float = 0.0,
    ) -> None:
        self.engine = engine
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.keep_sent = timedelta(seconds=keep_sent_seconds)
        self.partitions = partitions
        # Seconds to wait after a wake-up before reading: the commits of that time go out in one batch (one read,
        # one send, one mark instead of one each per commit), for at most that much more latency.
        self.linger = linger
        self.stats = RelayStats()
        self._lock_id = zlib.crc32(f"chatplane.outbox.{name}".encode())
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"relay-{name}")
        self._producer: Any = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._unsubscribe = None
        self._last_purge = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing in the background (call inside the running event loop); a second call does nothing."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = outbox.on_commit(self.engine, self.wake)
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.name}")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Publish what is waiting (for at most ``drain_timeout`` seconds), then stop and close the producer."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is None:
            self._executor.shutdown(wait=False)
            return
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            try:
                await asyncio.wait_for(self.publish_once(), drain_timeout)
            except Exception as exc:  # noqa: BLE001 - what is left is published at the next start
                log.info("outbox not drained on stop", extra={"relay": self.name, "error": repr(exc)[:300]})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_producer)
        self._executor.shutdown(wait=False)

    def wake(self) -> None:
        """Publish soon (called after a commit that added events; safe from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- the loop --------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            # Broker or database down: retried by the one policy, nothing is lost.
            count = await retry.until_success(self.publish_once, first=self.initial_backoff,
                                              maximum=self.max_backoff, on_failure=self._failed)
            if count >= self.batch_size:
                continue  # more rows are waiting
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            else:
                if self.linger:
                    await asyncio.sleep(self.linger)
            self._wake.clear()

    def _failed(self, exc: BaseException, delay: float) -> None:
        self.stats.failures += 1
        metrics.PUBLISH_FAILURES.inc()
        log.warning("outbox publish failed, retrying",
                    extra={"relay": self.name, "retry_in_s": round(delay, 2), "error": repr(exc)[:300]})

    async def publish_once(self) -> int:
        """Publish one batch of unsent rows; returns how many rows were read (0: nothing to do)."""
        self._wake.clear()
        postgres = self.engine.dialect.name == "postgresql"
        async with self.engine.connect() as conn:
            if postgres:
                # One transaction: lock, read, publish, mark. Another replica holding the lock publishes instead.
                async with conn.begin():
                    if not await conn.scalar(select(func.pg_try_advisory_xact_lock(self._lock_id))):
                        return 0
                    return await self._publish(conn, conn)
            # SQLite cannot upgrade a read transaction to a write one under contention: read, then write anew.
            return await self._publish(conn, None)

    async def _publish(self, conn: AsyncConnection, tx_conn: AsyncConnection | None) -> int:
        query = (
            select(_rows.c.id, _rows.c.event_id, _rows.c.topic, _rows.c.key, _rows.c.payload)
            .where(_rows.c.sent_at.is_(None))
            .order_by(_rows.c.id)
            .limit(self.batch_size)
        )
        if tx_conn is None:
            async with conn.begin():
                rows = (await conn.execute(query)).all()
        else:
            rows = (await conn.execute(query)).all()
        if not rows:
            await self._purge(conn, tx_conn)
            return 0
        loop = asyncio.get_running_loop()
        acked, error = await loop.run_in_executor(self._executor, self._send, rows)
        if acked:
            mark = update(_rows).where(_rows.c.id.in_([r.id for r in rows[:acked]])).values(sent_at=utcnow())
            if tx_conn is None:
                async with writer(self.engine), conn.begin():
                    await conn.execute(mark)
            else:
                await tx_conn.execute(mark)
            self.stats.published += acked
        if acked < len(rows):
            raise PublishError(f"{len(rows) - acked} of {len(rows)} events not acknowledged: {error!r}")
        return len(rows)

    async def _purge(self, conn: AsyncConnection, tx_conn: AsyncConnection | None) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        purge = delete(_rows).where(_rows.c.sent_at.is_not(None), _rows.c.sent_at < utcnow() - self.keep_sent)
        if tx_conn is None:
            async with writer(self.engine), conn.begin():
                await conn.execute(purge)
        else:
            await tx_conn.execute(purge)

    # -- in the worker thread --------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        from kafka import KafkaProducer

        ensure_topics(self.bootstrap_servers, self.partitions, client_id=f"chatplane-relay-{self.name}")
        return KafkaProducer(**producer_config(self.bootstrap_servers))

    def _send(self, rows: list[Any]) -> tuple[int, BaseException | None]:
        """Send ``rows`` and wait for the acknowledgements; returns (length of the acknowledged prefix, error)."""
        futures = []
        error: BaseException | None = None
        try:
            if self._producer is None:
                self._producer = self._connect()
            for row in rows:
                env = decode(row.payload)
                headers = [("event_type", env.type.encode()), ("event_id", row.event_id.encode())]
                if env.traceparent:
                    headers.append(("traceparent", env.traceparent.encode()))
                futures.append(self._producer.send(row.topic, key=row.key.encode(), value=row.payload,
                                                   headers=headers))
        except Exception as exc:  # noqa: BLE001 - counted below: only acknowledged rows are marked
            error = exc
        if self._producer is not None and futures:
            try:
                self._producer.flush(timeout=15)
            except Exception as exc:  # noqa: BLE001
                error = error or exc
        acked = 0
        for future in futures:
            if not (future.is_done and future.succeeded()):
                if error is None and future.is_done:
                    error = future.exception
                break
            acked += 1
            metrics.record_produced(rows[acked - 1].topic)
        if acked < len(rows):
            # A fresh producer (new producer id and sequence numbers) after any failure.
            self._close_producer()
        return acked, error

    def _close_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception:  # noqa: BLE001, S110 - closing a broken producer
                pass
            self._producer = None
