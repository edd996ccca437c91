"""Batched writing of the stateless path's completion records into the gateway's durable spool (``spool.py``).

One write per finished completion would cost more CPU than the rest of the request's bookkeeping, so finished
completions are queued here and one background task writes them in batches (one transaction each): as soon as
``batch_size`` are queued, or ``max_delay`` seconds after the first of a batch was queued. A batch that fails to be
written (a full disk) goes back to the front of the queue and is retried with backoff, with the same event ids. The
queue is bounded: while writing keeps failing, the oldest records are dropped with an error and a metric.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from chatplane.common import retry
from chatplane.gateway.observability import COMPLETION_RECORDS_DROPPED
from chatplane.protos.events.v1 import events_pb2

log = logging.getLogger(__name__)

Record = tuple[str, events_pb2.CompletionFinished]  # (event id, completion)
Sink = Callable[[list[Record]], Awaitable[None]]


class CompletionBatcher:
    """Queues completion records and writes them to ``sink`` in batches from one task (:meth:`start` / :meth:`close`)."""

    def __init__(
        self,
        sink: Sink,
        *,
        batch_size: int = 100,
        max_delay: float = 0.05,
        max_buffer: int = 10_000,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.max_buffer = max_buffer
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._queue: collections.deque[Record] = collections.deque()
        self._queued = asyncio.Event()  # the queue is not empty
        self._full = asyncio.Event()  # a whole batch is queued (or closing): send without waiting
        self._closing = False
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="completion-batcher")

    def add(self, completion: events_pb2.CompletionFinished) -> None:
        """Queue one record (never blocks; drops the oldest queued record when the buffer is full)."""
        self._queue.append((uuid.uuid4().hex, completion))
        if len(self._queue) > self.max_buffer:
            _, lost = self._queue.popleft()
            self._drop("buffer_full", 1)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("completion buffer full, dropping the oldest records (the spool cannot be written?)",
                          extra={"request_id": lost.request_id, "dropped_total": self.dropped})
        self._queued.set()
        if len(self._queue) >= self.batch_size:
            self._full.set()
        if self._task is None:  # used outside an app lifespan (tests, scripts): start on first use
            self.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (retrying within ``timeout``), then stop; what is left is logged and counted."""
        self._closing = True
        self._queued.set()
        self._full.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._queue:
            log.error("completion records not delivered at shutdown", extra={"count": len(self._queue)})
            self._drop("shutdown", len(self._queue))
            self._queue.clear()

    def _drop(self, reason: str, count: int) -> None:
        self.dropped += count
        COMPLETION_RECORDS_DROPPED.labels(reason=reason).inc(count)

    async def _run(self) -> None:
        while True:
            await self._queued.wait()
            if not self._queue:
                if self._closing:
                    return
                self._queued.clear()
                continue
            if len(self._queue) < self.batch_size and not self._closing:
                # Wait for a full batch, at most max_delay after the first record.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_delay)
            # Not written: tried again by the one retry policy (the batch back at the front of the queue meanwhile).
            await retry.until_success(self._write_next, first=self.backoff, maximum=self.max_backoff,
                                      on_failure=self._not_written)

    async def _write_next(self) -> None:
        """Write the next batch; when that fails, it goes back to the front of the queue (oldest first) and this
        raises."""
        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        if len(self._queue) < self.batch_size and not self._closing:
            self._full.clear()
        if not batch:
            return
        started = time.monotonic()
        try:
            await self.sink(batch)
        except Exception:
            room = self.max_buffer - len(self._queue)
            if room < len(batch):
                self._drop("buffer_full", len(batch) - max(room, 0))
                log.error("completion buffer full, dropping the oldest records (the spool cannot be written?)",
                          extra={"dropped_total": self.dropped})
                batch = batch[len(batch) - max(room, 0):]
            self._queue.extendleft(reversed(batch))
            raise
        log.debug("completion records written", extra={"count": len(batch),
                                                      "ms": round((time.monotonic() - started) * 1000, 2)})

    @staticmethod
    def _not_written(exc: BaseException, delay: float) -> None:
        # Kept and retried: a completion's usage is never given up lightly.
        log.error("completion records not written, will retry",
                  extra={"retry_in_s": round(delay, 2), "error": repr(exc)[:300]})
