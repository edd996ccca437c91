"""The Responses API (POST /v1/responses, GET /v1/responses/{id}): request rules, the response object, typed
stream events, the openai SDK; against the conversation service's test double."""

from __future__ import annotations

import json

import openai
import pytest

WEATHER = {"type": "function", "name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def respond(input_="Hello", **extra) -> dict:
    return {"model": "test-model", "input": input_, **extra}


async def test_text_input_gives_a_completed_response(client, auth_headers, fakes):
    resp = await client.post("/v1/responses", json=respond(instructions="Be brief.", max_output_tokens=50,
                                                           metadata={"k": "v"}), headers=auth_headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["object"] == "response" and data["id"].startswith("resp_") and data["status"] == "completed"
    (item,) = data["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"][0] == {"type": "output_text", "text": "Hi there", "annotations": [], "logprobs": []}
    assert data["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}
    assert (data["instructions"], data["max_output_tokens"], data["metadata"]) == ("Be brief.", 50, {"k": "v"})
    (sent,) = fakes.conversation.requests
    assert [(i.role, i.content) for i in sent.input] == [("user", "Hello")]
    assert (sent.instructions, sent.max_tokens, sent.store) == ("Be brief.", 50, True)
    assert resp.headers["x-ratelimit-limit-requests"]


async def test_message_input_items_and_tools_reach_the_conversation_service(client, auth_headers, fakes):
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_9", "output": "cold"},
    ]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    resp = await client.post("/v1/responses", json=respond(
        items, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}}, store=False,
    ), headers=auth_headers)
    assert resp.status_code == 200, resp.text
    (sent,) = fakes.conversation.requests
    assert [(i.role, i.content, i.tool_call_id) for i in sent.input] == [
        ("system", "Use tools.", ""), ("user", "Weather?", ""), ("assistant", "Let me look.", ""),
        ("tool", "cold", "call_9")]
    (call,) = sent.input[2].tool_calls
    assert (call.id, call.name, call.arguments) == ("call_9", "get_weather", '{"city": "Oslo"}')
    assert sent.tools[0].name == "get_weather" and sent.tool_choice.function == "get_weather"
    assert sent.parallel_tool_calls is False and sent.store is False
    assert json.loads(sent.structured_output.json_schema) == schema
    assert resp.json()["store"] is False


async def test_function_call_output_item(client, auth_headers, fakes):
    resp = await client.post("/v1/responses", json=respond("use the tool", tools=[WEATHER]), headers=auth_headers)
    data = resp.json()
    (item,) = data["output"]
    assert item["type"] == "function_call" and item["call_id"] == "call_1" and item["name"] == "get_weather"
    assert json.loads(item["arguments"]) == {"city": "Oslo"} and item["id"].startswith("fc_")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tools": [{**WEATHER, "parameters": {"type": 3}}]}, "tools[0].parameters"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "wrong"}}}},
         "text.format.schema"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"background": True}, "background"),
        ({"max_output_tokens": 4096}, "max_output_tokens"),
    ],
)
async def test_bad_values_are_400_naming_the_parameter(client, auth_headers, fakes, extra, param):
    resp = await client.post("/v1/responses", json=respond(**extra), headers=auth_headers)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert fakes.conversation.requests == []


async def test_unknown_previous_response_is_404(client, auth_headers, fakes):
    for previous in ("resp_" + "0" * 32, "nonsense"):
        resp = await client.post("/v1/responses", json=respond(previous_response_id=previous), headers=auth_headers)
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["param"] == "previous_response_id"


async def test_sdk_streams_typed_events_and_retrieves(live_url, user_key):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    stream = await sdk.responses.create(model="test-model", input="Hello", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hi there"
    final = events[-1].response
    assert final.output_text == "Hi there" and final.usage.total_tokens == 7
    assert events[0].response.id == final.id
    again = await sdk.responses.retrieve(final.id)
    assert again.output_text == "Hi there" and again.id == final.id
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve("resp_" + "f" * 32)
    # The next response of the chain.
    nxt = await sdk.responses.create(model="test-model", input="More", previous_response_id=final.id)
    assert nxt.previous_response_id == final.id and nxt.output_text == "Hi there"


async def test_sdk_streams_function_calls(live_url, user_key):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    stream = await sdk.responses.create(model="test-model", input="use the tool", tools=[WEATHER], stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    (call,) = events[-1].response.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
    assert events[5].arguments == call.arguments


async def test_max_output_tokens_gives_an_incomplete_response(client, auth_headers):
    data = (await client.post("/v1/responses", json=respond(max_output_tokens=1), headers=auth_headers)).json()
    assert data["status"] == "incomplete" and data["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_client_gone_cancels_the_conversation_call(live_url, auth_headers, fakes):
    import asyncio

    import httpx

    async with httpx.AsyncClient(base_url=live_url) as c:
        async with c.stream("POST", "/v1/responses", json=respond("slow", stream=True), headers=auth_headers) as r:
            async for line in r.aiter_lines():
                if "output_text.delta" in line:
                    break
    await asyncio.wait_for(fakes.conversation.cancelled.wait(), 5)
