"""What the job bodies work with: the settings, the stores and the inference service (one per worker process)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.common.db import make_engine
from chatplane.common.inference import InferenceClient
from chatplane.conversation.store import ConversationStore, ExportStore
from chatplane.conversation.settings import ConversationSettings

T = TypeVar("T")


@dataclass
class JobContext:
    settings: ConversationSettings
    engine: AsyncEngine
    store: ConversationStore
    exports: ExportStore
    inference: InferenceClient

    @classmethod
    def open(cls, settings: ConversationSettings) -> JobContext:
        """Call inside the event loop that will use it (the client's channels and watches bind to it)."""
        engine = make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            store=ConversationStore(engine),
            exports=ExportStore(engine, settings.export_ttl_seconds),
            inference=InferenceClient.from_settings(
                settings, timeout=settings.inference_timeout_seconds, stream_timeout=settings.inference_timeout_seconds
            ),
        )

    async def close(self) -> None:
        await self.inference.close()
        await self.store.close()
        await self.engine.dispose()


class Runtime:
    """One event loop and one :class:`JobContext` per worker process, made on first use.

    Celery tasks are synchronous functions; the job bodies are coroutines. Keeping the loop (instead of
    ``asyncio.run`` per task) keeps the database pool and the gRPC channel open between jobs. A forked child
    notices the new pid and makes its own.
    """

    def __init__(self, settings: ConversationSettings) -> None:
        self.settings = settings
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: JobContext | None = None

    def run(self, body: Callable[[JobContext], Coroutine[Any, Any, T]]) -> T:
        if self._pid != os.getpid() or self._loop is None or self._context is None:
            self._loop = asyncio.new_event_loop()
            self._context = self._loop.run_until_complete(self._open())
            self._pid = os.getpid()
        return self._loop.run_until_complete(body(self._context))

    async def _open(self) -> JobContext:
        return JobContext.open(self.settings)

    def close(self) -> None:
        if self._loop is not None and self._context is not None and self._pid == os.getpid():
            self._loop.run_until_complete(self._context.close())
            self._loop.close()
        self._loop = self._context = self._pid = None
