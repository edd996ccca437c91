"""Server-sent events that stop the upstream work when the client goes away.

Starlette's ``StreamingResponse`` only notices a disconnect on servers speaking ASGI < 2.4, and even then leaves a
generator suspended at a ``yield`` un-closed. :class:`EventStream` always watches for ``http.disconnect`` while it
streams and always closes the generator, so that its ``finally`` (which cancels the gRPC call) runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


# One encoder for every event: json.dumps with options builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_encode_str = json.encoder.encode_basestring  # what _ENCODER does to a str (C), without the dispatch
SLOT = "\ue000chatplane-slot\ue000"  # stands for the text in a TextEvent's template


def event(data: Any) -> bytes:
    return b"data: " + _ENCODER.encode(data).encode() + b"\n\n"


class TextEvent:
    """The events of one stream that differ only in one string (a token's text): the template, an encoded event
    holding :data:`SLOT` once, is split around it at the start; each event then costs one string encoding instead
    of building and encoding its whole object (the per-chunk hot path of every streamed reply)."""

    def __init__(self, template: bytes) -> None:
        head, sep, tail = template.partition(_encode_str(SLOT).encode())
        if not sep or SLOT.encode() in tail:
            raise ValueError("the template must hold SLOT exactly once")
        self._head, self._tail = head, tail

    def __call__(self, text: str) -> bytes:
        return self._head + _encode_str(text).encode() + self._tail


class EventStream(StreamingResponse):
    body_iterator: AsyncIterator[bytes]

    def __init__(self, content: AsyncIterator[bytes], status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code, headers=SSE_HEADERS, media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # the client is gone (ASGI 2.4 servers raise on send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it as soon as the client disconnects (non-streaming answers that take a while)."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone
