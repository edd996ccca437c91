"""SendMessage: prompt building within the context window, streaming, storing, cancellation, inference failures."""

from __future__ import annotations

import asyncio
from datetime import UTC

import grpc
import pytest
from conv_harness import SYSTEM_PROMPT, Harness, harness, status_of
from chatplane.dev.inference import MODEL, REPLY, calls, inference_service
from tests_support import eventually

from chatplane.common.errors import InvalidArgument
from chatplane.common.limits import MAX_MESSAGE_CHARS
from chatplane.dev.procs import free_port
from chatplane.conversation.replies import Delta, SendRequest
from chatplane.protos.conversation.v1 import conversation_pb2 as pb




def sent_chat(h: Harness, index: int = -1) -> list[tuple[str, str]]:
    """The chat the engine generated from (as inference fitted it) in a generation."""
    return [(m.role, m.content) for m in h.inference.generations[index].messages]


async def test_reply_is_streamed_and_stored(conv: Harness):
    c = await conv.create()
    conv.inference.engine.pace(0.02)  # paced as a model's tokens are (chunks ready together go on as one delta)
    events = await conv.send(c.id, "What is the capital of France?", request_id="req-1")

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started"] + ["delta"] * len(REPLY) + ["done"]
    started, done = events[0].started, events[-1].done
    assert started.model == MODEL
    assert "".join(e.delta.text for e in events[1:-1]) == "Hello from the synthetic model."

    stored = await conv.get(c.id)
    user, assistant = stored.messages
    assert (user.role, user.content) == ("user", "What is the capital of France?")
    assert user.status == pb.MESSAGE_STATUS_COMPLETE
    assert done.user_message_id == user.id == started.user_message_id
    assert done.assistant_message_id == assistant.id
    assert done.assistant_message == assistant
    expected_prompt = conv.inference.count([("system", SYSTEM_PROMPT), ("user", "What is the capital of France?")])
    assert (assistant.role, assistant.content, assistant.status) == (
        "assistant",
        "Hello from the synthetic model.",
        pb.MESSAGE_STATUS_COMPLETE,
    )
    assert (assistant.model, assistant.finish_reason) == (MODEL, "stop")
    assert (assistant.prompt_tokens, assistant.completion_tokens) == (expected_prompt, len(REPLY))
    assert (done.prompt_tokens, done.completion_tokens, done.finish_reason) == (expected_prompt, 5, "stop")

    generation = conv.inference.generations[0]
    assert generation.request_id == "req-1"
    assert generation.sampling.max_tokens == conv.settings.default_max_tokens
    assert generation.sampling.temperature is None
    # Sending touched the conversation: it is the newest now.
    assert stored.conversation.updated_at.ToDatetime(UTC) > c.updated_at.ToDatetime(UTC)
    other = await conv.create()
    await conv.send(c.id, "again")
    page = await conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice"))
    assert [x.id for x in page.conversations] == [c.id, other.id]


async def test_history_is_sent_in_order(conv: Harness):
    c = await conv.create()
    counted, generated = calls("CountTokens"), calls("Generate")
    conv.inference.reply("first", " answer")
    await conv.send(c.id, "one")
    conv.inference.reply("second", " answer")
    await conv.send(c.id, "two", max_tokens=3, temperature=0.5)
    await conv.send(c.id, "three")
    assert sent_chat(conv) == [
        ("system", SYSTEM_PROMPT),
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
        ("assistant", "second answer"),
        ("user", "three"),
    ]
    sampling = conv.inference.generations[1].sampling
    assert sampling.max_tokens == 3 and sampling.temperature == pytest.approx(0.5)
    # One inference call per message: inference fits the chat it generates from (nothing is counted apart).
    assert calls("CountTokens") == counted and calls("Generate") == generated + 3
    assert len(conv.inference.generations) == 3


async def test_oldest_turns_are_dropped_to_fit(sqlite_database_url, tmp_path):
    async with inference_service(max_model_len=100) as inference, \
            harness(sqlite_database_url, inference, tmp_path) as h:
        c = await h.create()
        words = " ".join(["word"] * 10)
        turns = []
        for i in range(6):
            inference.reply(f"reply{i}")
            await h.send(c.id, f"q{i} {words}")
            turns.append([("user", f"q{i} {words}"), ("assistant", f"reply{i}")])

        inference.reply("ok")
        await h.send(c.id, "final question", max_tokens=20)
        chat = sent_chat(h)
        # The system prompt and the new message always stay; whole turns go, oldest first.
        assert chat[0] == ("system", SYSTEM_PROMPT) and chat[-1] == ("user", "final question")
        history = chat[1:-1]
        kept = len(history) // 2
        assert 0 < kept < 6
        assert history == [m for turn in turns[6 - kept :] for m in turn]
        # As many turns as fit: one more would not.
        assert inference.count(chat) + 20 <= 100
        assert inference.count([chat[0], *turns[6 - kept - 1], *chat[1:]]) + 20 > 100
        # Nothing was lost from storage.
        assert len((await h.get(c.id)).messages) == 14


async def test_without_max_tokens_the_reply_gets_the_room_left(sqlite_database_url, tmp_path):
    async with inference_service(max_model_len=30) as inference, \
            harness(sqlite_database_url, inference, tmp_path) as h:
        c = await h.create()
        content = " ".join(["w"] * 10)
        await h.send(c.id, content)
        prompt = inference.count([("system", SYSTEM_PROMPT), ("user", content)])
        assert inference.generations[-1].sampling.max_tokens == 30 - prompt < h.settings.default_max_tokens


async def test_message_too_long_for_the_context_window_is_rejected_and_not_stored(conv: Harness):
    c = await conv.create()
    await conv.send(c.id, "a short one")
    before = await conv.get(c.id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.send(c.id, " ".join(["word"] * 300))
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded", "content")
    assert "256" in err.value.details()
    # A max_tokens the window cannot hold is the same error, on max_tokens.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.send(c.id, "fine", max_tokens=1000)
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded", "max_tokens")
    assert await conv.get(c.id) == before
    assert len(conv.inference.generations) == 1


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"content": ""}, "content"),
        ({"content": " \n\t "}, "content"),
        ({"content": "x" * (MAX_MESSAGE_CHARS + 1)}, "content"),
        ({"content": "nul \x00 byte"}, "content"),
        ({"content": "hi", "max_tokens": 0}, "max_tokens"),
        ({"content": "hi", "temperature": 2.5}, "temperature"),
        ({"content": "hi", "temperature": -0.1}, "temperature"),
        ({"content": "hi", "temperature": float("nan")}, "temperature"),
        ({"content": "hi", "model": "m" * 500}, "model"),
    ],
)
async def test_invalid_requests_store_nothing(sqlite_conv: Harness, fields, param):
    c = await sqlite_conv.create()
    counted, generated = calls("CountTokens"), calls("Generate")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.send(c.id, **fields)
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, None, param)
    assert list((await sqlite_conv.get(c.id)).messages) == []
    assert calls("CountTokens") == counted and calls("Generate") == generated
    assert sqlite_conv.inference.generations == []


async def test_longest_message_is_accepted(sqlite_database_url, tmp_path):
    async with inference_service(max_model_len=100_000) as inference, \
            harness(sqlite_database_url, inference, tmp_path) as h:
        c = await h.create()
        content = "y" * MAX_MESSAGE_CHARS
        await h.send(c.id, content)
        assert (await h.get(c.id)).messages[0].content == content


async def test_sql_and_control_characters_are_stored_verbatim(conv: Harness):
    c = await conv.create()
    content = "Robert'); DROP TABLE messages;--\t\r\n\x1b[31mred\x1b[0m \u202e\x7f\\x00 %s %(x)s ünïcødé 🎉"
    conv.inference.reply("'; DELETE FROM conversations; --", "\x01\x02\r\n", "😀")
    await conv.send(c.id, content)
    user, assistant = (await conv.get(c.id)).messages
    assert user.content == content
    assert assistant.content == "'; DELETE FROM conversations; --\x01\x02\r\n😀"
    assert sent_chat(conv)[-1] == ("user", content)


async def test_client_cancel_stops_inference_and_keeps_the_partial_reply(conv: Harness):
    c = await conv.create()
    story = [f" part{i}" for i in range(40)]
    conv.inference.reply(*story)
    conv.inference.engine.pace(0.05)
    call = conv.stub.SendMessage(
        pb.SendMessageRequest(user_id="alice", conversation_id=c.id, content="tell me a long story", request_id="r-9")
    )
    received = ""
    async for event in call:
        if event.HasField("delta"):
            received += event.delta.text
            if received.count("part") == 3:
                break
    call.cancel()

    await eventually(lambda: _async(conv.inference.engine.cancelled == ["r-9"]))
    messages = await eventually(lambda: _messages_when(conv, c.id, 2))
    user, partial = messages
    assert user.content == "tell me a long story"
    assert partial.status == pb.MESSAGE_STATUS_INCOMPLETE and partial.finish_reason == "abort"
    assert partial.content.startswith(received) and len(partial.content) < len("".join(story))
    assert partial.model == MODEL and partial.prompt_tokens > 0

    # The partial reply is history for the next message.
    conv.inference.engine.pace(0)
    conv.inference.reply("done")
    await conv.send(c.id, "go on")
    assert sent_chat(conv)[-3:] == [("user", "tell me a long story"), ("assistant", partial.content), ("user", "go on")]


async def test_cancel_while_writing_to_the_client(conv: Harness):
    """The cancellation can also land while an event is being written, not only while waiting for inference."""
    c = await conv.create()
    conv.inference.reply(*(f" part{i}" for i in range(40)))
    conv.inference.engine.pace(0.02)
    written: list[str] = []

    async def emit(event):
        if isinstance(event, Delta):
            written.append(event.text)
            if len(written) == 2:
                asyncio.current_task().cancel()
                await asyncio.sleep(0)  # the cancellation is raised here, inside the write

    request = SendRequest(user_id="alice", conversation_id=c.id, content="a story", request_id="r-w")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(conv.server.core.send_message(request, emit))
    # The partial reply was stored before the cancellation propagated.
    user, partial = (await conv.get(c.id)).messages
    assert (partial.content, partial.status, partial.finish_reason) == (
        " part0 part1",
        pb.MESSAGE_STATUS_INCOMPLETE,
        "abort",
    )
    await eventually(lambda: _async(conv.inference.engine.cancelled == ["r-w"]))


async def test_concurrent_messages_in_one_conversation(conv: Harness):
    c = await conv.create()
    conv.inference.engine.pace(0.01)
    results = await asyncio.gather(*(conv.send(c.id, f"message {i}") for i in range(4)))
    assert all(events[-1].HasField("done") for events in results)
    messages = (await conv.get(c.id)).messages
    assert sorted(m.content for m in messages if m.role == "user") == [f"message {i}" for i in range(4)]
    assert sum(m.role == "assistant" for m in messages) == 4
    assert len({m.id for m in messages}) == 8


async def test_inference_unreachable_is_unavailable_and_stores_nothing(database_url, inference, tmp_path):
    async with harness(database_url, inference, tmp_path, inference_pools=f"127.0.0.1:{free_port()}") as h:
        c = await h.create()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.send(c.id, "anyone there?")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert list((await h.get(c.id)).messages) == []


async def test_inference_failing_mid_stream_keeps_the_partial_reply(conv: Harness):
    c = await conv.create()
    conv.inference.engine.pace(0.02)  # a message per token
    conv.inference.engine.fail_after = 2
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in conv.stub.SendMessage(
            pb.SendMessageRequest(user_id="alice", conversation_id=c.id, content="hi")
        ):
            events.append(event)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [e.WhichOneof("event") for e in events] == ["started", "delta", "delta"]
    user, partial = (await conv.get(c.id)).messages
    assert user.id == events[0].started.user_message_id
    assert (partial.content, partial.status, partial.finish_reason) == (
        "Hello from",
        pb.MESSAGE_STATUS_INCOMPLETE,
        "error",
    )


async def test_inference_failing_before_any_text_stores_no_reply(sqlite_conv: Harness):
    c = await sqlite_conv.create()
    sqlite_conv.inference.engine.fail_after = 0  # the engine fails before its first token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.send(c.id, "hi")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [m.role for m in (await sqlite_conv.get(c.id)).messages] == ["user"]


async def test_inference_invalid_argument_passes_through_with_code_and_param(sqlite_conv: Harness):
    c = await sqlite_conv.create()
    sqlite_conv.inference.engine.refusal = InvalidArgument(
        "temperature not supported", code="unsupported_value", param="temperature"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.send(c.id, "hi")
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, "unsupported_value", "temperature")
    assert err.value.details() == "temperature not supported"
    assert list((await sqlite_conv.get(c.id)).messages) == []


async def test_unknown_model_is_not_found_with_model_code(sqlite_conv: Harness):
    c = await sqlite_conv.create()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.send(c.id, "hi", model="gpt-17")
    assert status_of(err.value) == (grpc.StatusCode.NOT_FOUND, "model_not_found", "model")
    assert list((await sqlite_conv.get(c.id)).messages) == []


async def _async(value):
    return value


async def _messages_when(h: Harness, conversation_id: str, count: int):
    messages = list((await h.get(conversation_id)).messages)
    return messages if len(messages) == count else None
