"""The pre-encoded SSE events are byte for byte what encoding the whole object gives; a client leaving stops the
work behind its answer."""

from __future__ import annotations

import asyncio
import json

import pytest

from chatplane.gateway.sse import SLOT, ClientGone, ClientWatch, EventStream, TextEvent, event

TEXTS = [" bread", "", 'a "quoted" \\ back\\slash', "line\nbreak\ttab\r\x01\x1f", "é 東京 🐉", "\u2028\u2029", "</script>"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_event_is_the_encoded_object(text):
    def chunk(content: str) -> dict:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}]}

    fast = TextEvent(event(chunk(SLOT)))
    assert fast(text) == event(chunk(text))
    assert json.loads(fast(text)[len(b"data: "):])["choices"][0]["delta"]["content"] == text
    assert fast(text).endswith(b"\n\n")


def test_template_needs_the_slot_once():
    with pytest.raises(ValueError):
        TextEvent(event({"delta": "no slot"}))
    with pytest.raises(ValueError):
        TextEvent(event({"a": SLOT, "b": SLOT}))


# --- ClientWatch and EventStream, driven at the ASGI level -----------------------------------------------------------


class Client:
    """An ASGI client whose ``receive`` blocks until :meth:`leave` (then answers http.disconnect for ever)."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent: list[dict] = []

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        await asyncio.sleep(0)


async def test_guard_raises_client_gone_and_cancels_the_work():
    client = Client()
    cancelled = asyncio.Event()

    async def work():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    watch = ClientWatch(client.receive)
    asyncio.get_running_loop().call_later(0.05, client.leave)
    with pytest.raises(ClientGone):
        await watch.guard(work())
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # the cancellation was taken back: the task goes on
    await asyncio.sleep(0.01)


async def test_guard_returns_the_result_and_a_later_disconnect_cancels_nothing():
    client = Client()
    watch = ClientWatch(client.receive)

    async def work():
        await asyncio.sleep(0.01)
        return 42

    assert await watch.guard(work()) == 42
    watch.stop()
    client.leave()
    await asyncio.sleep(0.05)  # would raise CancelledError here if the watch still acted
    assert not watch.gone


async def test_a_foreign_cancellation_is_not_absorbed():
    client = Client()

    async def request():
        watch = ClientWatch(client.receive)
        await watch.guard(asyncio.sleep(30))

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_event_stream_ends_and_closes_its_generator_when_the_client_leaves():
    client = Client()
    closed = asyncio.Event()

    async def events():
        try:
            yield b"data: first\n\n"
            client.leave()
            while True:
                await asyncio.sleep(0.01)
                yield b"data: more\n\n"
        finally:
            closed.set()

    stream = EventStream(events(), ClientWatch(client.receive))
    await stream({"type": "http"}, client.receive, client.send)  # in the task that made the watch, as a route does
    assert closed.is_set()
    assert asyncio.current_task().cancelling() == 0
    bodies = [m for m in client.sent if m["type"] == "http.response.body"]
    assert bodies[0]["body"] == b"data: first\n\n"
    assert all(m.get("more_body") for m in bodies)  # never completed: the client was gone


async def test_event_stream_completes_and_stops_watching():
    client = Client()

    async def events():
        yield b"data: only\n\n"

    watch = ClientWatch(client.receive)
    await EventStream(events(), watch)({"type": "http"}, client.receive, client.send)
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    client.leave()  # what the server says after a complete answer
    await asyncio.sleep(0.02)
    assert not watch.gone
