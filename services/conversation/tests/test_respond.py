"""Respond (the Responses API): input items stored in a conversation (new, or the previous response's), the reply
with its function calls, chains, store=false, cancellation."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conv_harness import SYSTEM_PROMPT, Harness, status_of
from chatplane.dev.inference import MODEL

from chatplane.inference.engine import Function
from chatplane.protos.conversation.v1 import conversation_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2 as ipb

WEATHER = ipb.Tool(name="get_weather", parameters_json='{"type": "object"}')


async def respond(h: Harness, *items: pb.InputItem, user: str = "alice", **fields) -> list[pb.SendMessageEvent]:
    request = pb.RespondRequest(user_id=user, input=list(items), **fields)
    return [event async for event in h.stub.Respond(request)]


def user(text: str) -> pb.InputItem:
    return pb.InputItem(role="user", content=text)


async def test_a_new_response_is_a_new_conversation(conv: Harness):
    events = await respond(conv, user("Hi there"), instructions="Be brief.", store=True, request_id="r-1")
    started, done = events[0].started, events[-1].done
    assert started.conversation_id and started.reply_id and started.model == MODEL
    assert done.assistant_message.id == started.reply_id == done.assistant_message_id
    stored = await conv.get(started.conversation_id)
    assert [(m.role, m.content) for m in stored.messages] == [("user", "Hi there"),
                                                             ("assistant", "Hello from the synthetic model.")]
    assert stored.messages[0].id == started.user_message_id
    # The instructions are a system message of this reply only, after the service's own system prompt.
    sent = conv.inference.generations[0]
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", SYSTEM_PROMPT + "\n\nBe brief."), ("user", "Hi there")]


async def test_a_chain_continues_its_conversation_with_tool_calls(conv: Harness):
    conv.inference.engine.tool_call = ("call_7", "get_weather", ['{"city":', ' "Oslo"}'])
    first = await respond(conv, user("Weather in Oslo?"), tools=[WEATHER], store=True)
    started = first[0].started
    deltas = [d for e in first if e.WhichOneof("event") == "delta" for d in e.delta.tool_calls]
    assert deltas[0].id == "call_7" and "".join(d.arguments for d in deltas) == '{"city": "Oslo"}'
    reply = first[-1].done.assistant_message
    assert reply.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [("call_7", "get_weather", '{"city": "Oslo"}')]

    conv.inference.engine.tool_call = None
    second = await respond(conv, pb.InputItem(role="tool", content="snow", tool_call_id="call_7"), tools=[WEATHER],
                           previous_response_id=started.reply_id, store=True)
    assert second[0].started.conversation_id == started.conversation_id
    stored = await conv.get(started.conversation_id)
    assert [m.role for m in stored.messages] == ["user", "assistant", "tool", "assistant"]
    assert stored.messages[2].tool_call_id == "call_7"
    assert stored.messages[1].tool_calls[0].name == "get_weather"
    # Inference saw the whole chain, the tool call and its result included.
    history = conv.inference.generations[-1].messages
    assert [(m.role, m.tool_call_id) for m in history][1:] == [
        ("user", ""), ("assistant", ""), ("tool", "call_7")]
    assert history[2].tool_calls[0].arguments == '{"city": "Oslo"}'
    assert conv.inference.generations[-1].tools.functions == (Function("get_weather", parameters={"type": "object"}),)

    latest = second[-1].done.assistant_message_id
    found = await conv.stub.GetResponse(pb.GetResponseRequest(user_id="alice", response_id=latest))
    assert found.previous_response_id == started.reply_id and found.conversation_id == started.conversation_id
    # Only the latest response can be continued; another user's is not found.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await respond(conv, user("again"), previous_response_id=started.reply_id, store=True)
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, "previous_response_not_latest",
                                    "previous_response_id")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await respond(conv, user("mine?"), user="mallory", previous_response_id=second[0].started.reply_id)
    assert status_of(err.value)[0] == grpc.StatusCode.NOT_FOUND


async def test_store_false_keeps_nothing(conv: Harness):
    events = await respond(conv, user("Hi"), store=False)
    started = events[0].started
    assert started.conversation_id == "" and started.reply_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.stub.GetResponse(pb.GetResponseRequest(user_id="alice", response_id=started.reply_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listing = await conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice"))
    assert list(listing.conversations) == []


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([], "input"),
        ([pb.InputItem(role="tool", content="x")], "input[0].call_id"),
        ([pb.InputItem(role="wizard", content="x")], "input[0].role"),
        ([pb.InputItem(role="user", content="")], "input[0].content"),
    ],
)
async def test_bad_input_is_invalid_argument(sqlite_conv: Harness, items, param):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await respond(sqlite_conv, *items, store=True)
    assert status_of(err.value)[0] == grpc.StatusCode.INVALID_ARGUMENT and status_of(err.value)[2] == param


async def test_a_response_cut_short_is_stored_incomplete(conv: Harness):
    conv.inference.engine.pace(0.2)
    call = conv.stub.Respond(pb.RespondRequest(user_id="alice", input=[user("Tell me")], store=True))
    started = None
    async for event in call:
        if event.WhichOneof("event") == "started":
            started = event.started
        elif event.WhichOneof("event") == "delta":
            break
    call.cancel()
    for _ in range(100):
        stored = await conv.get(started.conversation_id)
        if len(stored.messages) == 2:
            break
        await asyncio.sleep(0.05)
    reply = stored.messages[1]
    assert reply.id == started.reply_id and reply.status == pb.MESSAGE_STATUS_INCOMPLETE
    assert reply.content.startswith("Hello") and reply.finish_reason == "abort"
