"""Putting jobs on the queue from the service (the producer side; the worker runs them)."""

from __future__ import annotations

import asyncio
import logging

from celery import Celery

from chatplane.conversation.jobs import EXPORT_TASK, TITLE_TASK
from chatplane.conversation.settings import ConversationSettings

log = logging.getLogger(__name__)

ENQUEUE_TIMEOUT_SECONDS = 3.0
# Publishing retries a broken connection briefly, then gives up: a request must not hang on the queue.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


class EnqueueError(Exception):
    """The job could not be put on the queue (broker unreachable)."""


class JobQueue:
    def __init__(self, settings: ConversationSettings) -> None:
        self.settings = settings
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:  # made on first use: a service that never queues never touches the broker
            from chatplane.conversation.jobs.app import make_celery

            self._app = make_celery(self.settings)
        return self._app

    async def enqueue(self, task: str, *args: str) -> str:
        """Publish ``task(*args)``; its Celery task id. Runs in a thread: kombu's producers are blocking."""

        def send() -> str:
            result = self.app.send_task(
                task, args=list(args), queue=self.settings.celery_queue, retry=True, retry_policy=_RETRY_POLICY
            )
            return result.id

        try:
            return await asyncio.wait_for(asyncio.to_thread(send), ENQUEUE_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the caller gets one error type
            raise EnqueueError(f"{type(exc).__name__}: {exc}") from None

    async def title(self, conversation_id: str) -> str:
        return await self.enqueue(TITLE_TASK, conversation_id)

    async def export(self, export_id: str) -> str:
        return await self.enqueue(EXPORT_TASK, export_id)

    async def close(self) -> None:
        if self._app is not None:
            await asyncio.to_thread(self._app.close)
