"""Reading a stream ahead of its consumer, so that what arrives while the consumer is busy goes on together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """Reads an async iterator in its own task while the consumer works (sends), so that the items produced meanwhile
    are taken together (coalescing under backpressure: one message, and one event-loop wake-up on each hop behind
    it, for many tokens). Nothing is held back: :meth:`ready` returns at once with whatever is there and waits only
    when nothing is, so the first item always goes as soon as it exists; :meth:`hold` lets items gather on purpose.

    The inference servicer reads the engine with it; the conversation service reads inference's stream with it.
    """

    __slots__ = ("_stream", "_items", "_waiter", "_end_waiter", "_error", "_ended", "_task")

    def __init__(self, stream: AsyncIterator[T]) -> None:
        self._stream = stream
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None
        self._end_waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for item in self._stream:
                self._items.append(item)
                waiter = self._waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        except Exception as e:  # noqa: BLE001 - raised to the consumer by ready(), after the items before it
            self._error = e
        finally:
            self._ended = True
            for waiter in (self._waiter, self._end_waiter):
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def ready(self) -> list[T]:
        """Every item produced since the last call (waiting for one when there is none); [] at the end. The stream's
        error, if it failed, is raised once the items before it were taken."""
        if not self._items and not self._ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        if items:
            self._items = []
            return items
        if self._error is not None:
            raise self._error
        return []

    async def hold(self, seconds: float) -> None:
        """Let items gather for ``seconds``, or until the stream ends if that comes first (an end is never held)."""
        if self._ended:
            return
        loop = asyncio.get_running_loop()
        waiter = self._end_waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._end_waiter = None

    def stop(self, *_: object) -> None:
        """Stop reading (usable as a callback)."""
        self._task.cancel()

    async def close(self) -> None:
        """Stop reading and wait until the reader (and the stream's cleanup) is done."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
