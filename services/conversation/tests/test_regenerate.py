"""SendMessage with regenerate: the last reply replaced in place, its events, cancellation and the refusals."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conv_harness import SYSTEM_PROMPT, Harness, status_of
from sqlalchemy import text
from tests_support import eventually

from chatplane.common.events import decode
from chatplane.conversation.store import NewMessage
from chatplane.protos.conversation.v1 import conversation_pb2 as pb


async def _outbox(h: Harness, conversation_id: str) -> list:
    """The events of one conversation (and its completions) in the outbox, oldest first."""
    async with h.server.core.store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT payload FROM outbox ORDER BY id"))).all()
    events = [decode(bytes(p)) for (p,) in rows]
    return [e for e in events if getattr(e, e.WhichOneof("payload")).conversation_id == conversation_id]


def generated_from(h: Harness) -> list[tuple[str, str]]:
    """The chat of the last generation, as inference fitted it."""
    return [(m.role, m.content) for m in h.inference.generations[-1].messages]


async def regenerate(h: Harness, conversation_id: str, user: str = "alice", **fields) -> list[pb.SendMessageEvent]:
    request = pb.SendMessageRequest(user_id=user, conversation_id=conversation_id, regenerate=True, **fields)
    return [event async for event in h.stub.SendMessage(request)]


async def answered_slowly(h: Harness, question: str, chunks: int) -> pb.Conversation:
    """A conversation with one exchange; the next replies come in ``chunks`` slow pieces."""
    c = await h.create()
    await h.send(c.id, question)
    h.inference.reply(*(f" part{i}" for i in range(chunks)))
    h.inference.engine.pace(0.05)
    return c


async def test_regenerate_replaces_the_last_reply(conv: Harness):
    c = await conv.create()
    conv.inference.reply("first answer")
    await conv.send(c.id, "one")
    conv.inference.reply("old answer")
    await conv.send(c.id, "two")
    user, old = (await conv.get(c.id)).messages[2:]

    conv.inference.reply("new", " answer")
    events = await regenerate(conv, c.id, request_id="regen-1")
    started, done = events[0].started, events[-1].done
    assert started.user_message_id == done.user_message_id == user.id
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "new answer"

    # Generated from the history up to and including the last user message, without the old reply.
    assert generated_from(conv) == [
        ("system", SYSTEM_PROMPT), ("user", "one"), ("assistant", "first answer"), ("user", "two")]
    messages = (await conv.get(c.id)).messages
    assert [(m.role, m.content) for m in messages] == [
        ("user", "one"), ("assistant", "first answer"), ("user", "two"), ("assistant", "new answer")]
    assert messages[-1].id == done.assistant_message_id != old.id
    assert messages[-1].status == pb.MESSAGE_STATUS_COMPLETE

    # One transaction: the old reply's message.deleted, the new one's message.stored, its completion (metered).
    tail = [(e.type, getattr(e, e.WhichOneof("payload"))) for e in (await _outbox(conv, c.id))[-3:]]
    assert [t for t, _ in tail] == ["message.deleted", "message.stored", "completion.finished"]
    assert (tail[0][1].message_id, tail[0][1].reason) == (old.id, "regenerated")
    assert tail[1][1].message_id == done.assistant_message_id and tail[1][1].seq > 4  # a position is never reused
    assert (tail[2][1].request_id, tail[2][1].completion_tokens) == ("regen-1", 2)

    # The next message follows the new reply.
    conv.inference.reply("three answer")
    await conv.send(c.id, "three")
    assert generated_from(conv)[-2:] == [("assistant", "new answer"), ("user", "three")]


async def test_regenerate_answers_a_question_left_without_reply(sqlite_conv: Harness):
    c = await sqlite_conv.create()
    sqlite_conv.inference.engine.fail_after = 0  # inference took the request, then failed: the question stays, no reply
    with pytest.raises(grpc.aio.AioRpcError):
        await sqlite_conv.send(c.id, "hello?")
    assert [m.role for m in (await sqlite_conv.get(c.id)).messages] == ["user"]
    sqlite_conv.inference.engine.fail_after = None
    await regenerate(sqlite_conv, c.id)
    assert [(m.role, m.content) for m in (await sqlite_conv.get(c.id)).messages] == [
        ("user", "hello?"), ("assistant", "Hello from the synthetic model.")]


async def test_regenerate_cut_short_keeps_the_partial_reply_in_place(sqlite_conv: Harness):
    h = sqlite_conv
    c = await answered_slowly(h, "a story", 40)
    call = h.stub.SendMessage(pb.SendMessageRequest(
        user_id="alice", conversation_id=c.id, regenerate=True, request_id="regen-cut"))
    async for event in call:
        if event.HasField("delta"):
            break
    call.cancel()
    await eventually(lambda: _done(h.inference.engine.cancelled == ["regen-cut"]))

    async def replaced():
        messages = (await h.get(c.id)).messages
        return messages if messages[-1].content.startswith(" part") else None

    user, partial = await eventually(replaced)
    assert partial.status == pb.MESSAGE_STATUS_INCOMPLETE and partial.finish_reason == "abort"


async def test_regenerate_refusals(sqlite_conv: Harness):
    h = sqlite_conv
    c = await h.create()
    # Nothing to answer: 400-like, named.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await regenerate(h, c.id)
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, "no_user_message", "regenerate")
    await h.send(c.id, "hi")
    # Content with regenerate.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await regenerate(h, c.id, content="hi")
    assert status_of(err.value)[::2] == (grpc.StatusCode.INVALID_ARGUMENT, "content")
    # Another user's conversation does not exist for them.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await regenerate(h, c.id, user="mallory")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert [m.content for m in (await h.get(c.id)).messages][-1] == "Hello from the synthetic model."


async def test_regenerate_while_a_reply_streams_is_refused(sqlite_conv: Harness):
    h = sqlite_conv
    c = await answered_slowly(h, "first", 20)
    streaming = asyncio.ensure_future(h.send(c.id, "second"))
    await eventually(lambda: _done(len(h.inference.generations) == 2))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await regenerate(h, c.id)
    assert status_of(err.value) == (grpc.StatusCode.ABORTED, "reply_in_progress", "regenerate")
    await streaming
    assert [m.role for m in (await h.get(c.id)).messages] == ["user", "assistant"] * 2


async def test_a_message_sent_during_a_regeneration_wins(sqlite_conv: Harness):
    """The regenerated reply is not stored over a message that came meanwhile (ABORTED); its usage still is."""
    h = sqlite_conv
    c = await answered_slowly(h, "first", 20)
    regenerating = asyncio.ensure_future(regenerate(h, c.id, request_id="regen-late"))
    await eventually(lambda: _done(len(h.inference.generations) == 2))
    # Written as another replica of the service would write it (it does not know of this stream).
    await h.server.core.store.append_message("alice", c.id, NewMessage(role="user", content="meanwhile",
                                                                       status="complete"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await regenerating
    assert status_of(err.value)[:2] == (grpc.StatusCode.ABORTED, "reply_in_progress")
    assert [m.content for m in (await h.get(c.id)).messages] == ["first", "Hello from the synthetic model.", "meanwhile"]
    completions = [e.completion_finished for e in await _outbox(h, c.id) if e.type == "completion.finished"]
    assert [x.request_id for x in completions][-1] == "regen-late"


async def _done(value):
    return value
