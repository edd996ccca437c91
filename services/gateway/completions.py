"""Batched delivery of the stateless path's completion records to auth (``RecordCompletions``).

One unary call per finished completion cost more CPU (gateway and auth) than the rest of the request's bookkeeping,
so finished completions are queued here and one background task sends them in batches: as soon as ``batch_size``
are queued, or ``max_delay`` seconds after the first of a batch was queued. A batch that meets an unavailable auth
goes back to the front of the queue and is retried with backoff (same event ids: auth writes each event once). The
queue is bounded: while auth stays down, the oldest records are dropped with a warning and a metric.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid

import grpc

from chatplane.gateway.observability import COMPLETION_RECORDS_DROPPED
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc
from chatplane.protos.events.v1 import events_pb2

log = logging.getLogger(__name__)

_RETRIABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CompletionBatcher:
    """Queues completion records and sends them to auth in batches from one task (:meth:`start` / :meth:`close`)."""

    def __init__(
        self,
        auth: auth_pb2_grpc.AuthServiceStub,
        *,
        timeout: float,
        batch_size: int = 100,
        max_delay: float = 0.05,
        max_buffer: int = 10_000,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.auth = auth
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.max_buffer = max_buffer
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._queue: collections.deque[auth_pb2.CompletionRecord] = collections.deque()
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
        self._queue.append(auth_pb2.CompletionRecord(event_id=uuid.uuid4().hex, completion=completion))
        if len(self._queue) > self.max_buffer:
            lost = self._queue.popleft()
            self._drop("buffer_full", 1)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("completion buffer full, dropping the oldest records (auth unavailable?)",
                            extra={"request_id": lost.completion.request_id, "dropped_total": self.dropped})
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
        delay = self.backoff
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
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            if len(self._queue) < self.batch_size and not self._closing:
                self._full.clear()
            if await self._send(batch):
                delay = self.backoff
                continue
            # Auth unavailable: back to the front of the queue (oldest first), and wait before retrying.
            room = self.max_buffer - len(self._queue)
            if room < len(batch):
                self._drop("buffer_full", len(batch) - max(room, 0))
                log.warning("completion buffer full, dropping the oldest records (auth unavailable?)",
                            extra={"dropped_total": self.dropped})
                batch = batch[len(batch) - max(room, 0):]
            self._queue.extendleft(reversed(batch))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _send(self, batch: list[auth_pb2.CompletionRecord]) -> bool:
        """True when auth has the batch (or refused it for good), False when it should be retried."""
        started = time.monotonic()
        try:
            answer = await self.auth.RecordCompletions(
                auth_pb2.RecordCompletionsRequest(records=batch), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in _RETRIABLE:
                log.warning("auth unavailable for completion records, will retry",
                            extra={"count": len(batch), "grpc_status": err.code().name})
                return False
            log.error("completion records not recorded", extra={"count": len(batch), "grpc_status": err.code().name})
            self._drop("rejected", len(batch))
            return True
        if answer.rejected_event_ids:
            log.error("auth rejected completion records", extra={"count": len(answer.rejected_event_ids)})
            self._drop("rejected", len(answer.rejected_event_ids))
        log.debug("completion records sent", extra={"count": len(batch),
                                                    "ms": round((time.monotonic() - started) * 1000, 2)})
        return True
