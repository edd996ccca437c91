"""Server-sent events, and stopping the upstream work as soon as the client goes away.

A model call's client may leave while its request waits for the engine, while the reply streams, or while a
non-streamed answer is being put together. uvicorn (ASGI 2.3) does not fail a ``send`` to a gone client: the only
sign is ``http.disconnect`` from ``receive``. :class:`ClientWatch` waits for it in one task per model call, from the
call's start to its answer's last byte, and cancels the request's task when it comes; the route turns that into
:class:`ClientGone` (before the answer started) and :class:`EventStream` into the end of the stream, whose generator
is always closed so that its ``finally`` (which cancels the gRPC call) runs at once. One watcher task per request
replaces the task group (and the tasks) of Starlette's way, which cost more than the rest of the stream's setup.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import JSONResponse, Response, StreamingResponse
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


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


class ClientWatch:
    """Watches one request's client from the start of its model call to its answer's end (see the module doc).

    Create it in the request's task; :meth:`guard` an awaitable (raises :class:`ClientGone` when the client leaves
    meanwhile); hand it to :class:`EventStream`, or :meth:`stop` it once the answer is ready.
    """

    __slots__ = ("gone", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._watcher = None
        if self._task is not None:
            self.gone = True
            self._task.cancel()

    def stop(self) -> None:
        """The answer is complete (or failed): a disconnect from now on is not a reason to cancel anything."""
        self._task = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def absorb(self) -> bool:
        """After a CancelledError in the request's task: True when it was this watch's (the cancellation is then
        taken back, and the task goes on); False when something else cancelled the task."""
        return self.gone and asyncio.current_task().uncancel() == 0  # type: ignore[union-attr]

    async def guard(self, work: Awaitable[T]) -> T:
        """``await work``, but :class:`ClientGone` as soon as the client disconnects."""
        try:
            return await work
        except asyncio.CancelledError:
            if self.absorb():
                raise ClientGone from None
            raise


class EventStream(StreamingResponse):
    body_iterator: AsyncIterator[bytes]

    def __init__(
        self, content: AsyncIterator[bytes], watch: ClientWatch, status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, headers={**SSE_HEADERS, **(headers or {})},
                         media_type="text/event-stream")
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not self.watch.absorb():
                raise
        except OSError:
            pass  # the client is gone (ASGI 2.4 servers raise on send)
        finally:
            self.watch.stop()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # Complete: the server answers http.disconnect to every receive from now on, which is not the client leaving.
        self.watch.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def first_reply(
    receive: Receive, call: Any, read: Callable[[Any], Awaitable[Any]], check: Callable[[Any], None] | None = None
) -> tuple[ClientWatch, Any]:
    """Start watching the client of a model call and wait for the call's first reply (``read(call)``, then
    ``check(reply)`` if given), so that a failure before the answer starts is an ordinary HTTP error. On any failure
    (the client gone included) the watch stops and the call is cancelled."""
    watch = ClientWatch(receive)
    try:
        first = await watch.guard(read(call))
        if check is not None:
            check(first)
    except BaseException:
        watch.stop()
        call.cancel()
        raise
    return watch, first


async def answer(
    call: Any,
    watch: ClientWatch,
    *,
    stream: bool,
    events: Callable[[], AsyncIterator[bytes]],
    whole: Callable[[], Awaitable[Any]],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A model call's answer, with ``headers`` (its rate-limit headers): its events as SSE (the stream's generator
    cancels the call at its end), or the whole answer as JSON once it is put together (the call cancelled and the
    watch stopped either way)."""
    if stream:
        return EventStream(events(), watch, headers=headers)
    try:
        return JSONResponse(await watch.guard(whole()), status_code=status_code, headers=headers)
    finally:
        watch.stop()
        call.cancel()
