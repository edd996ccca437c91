"""End to end, the official openai SDK against the real stack and engine: the Responses API (/v1/responses), its
chains of responses stored as conversations, function tools and structured outputs; and the metering of the new
routes (usage adds up, quotas refuse)."""

from __future__ import annotations

import json
import uuid

import httpx
import jsonschema
import openai
import pytest
from tests_support import eventually

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city now.",
           "parameters": WEATHER_PARAMS}


@pytest.fixture
def client(stack, account):
    return openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=account.api_key, max_retries=0)


async def conversation(stack, account, conversation_id: str) -> dict:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        r = await http.get(f"/v1/conversations/{conversation_id}", headers=account.headers)
        assert r.status_code == 200, r.text
        return r.json()


async def conversation_of(stack, account, response_id: str) -> dict:
    """The conversation that holds a stored response (found by its assistant message's id)."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        listing = (await http.get("/v1/conversations?limit=100", headers=account.headers)).json()["data"]
    for c in listing:
        found = await conversation(stack, account, c["id"])
        if any(m["id"] == response_id.removeprefix("resp_") for m in found["messages"]):
            return found
    raise AssertionError(f"no conversation holds {response_id}")


async def test_text_input_and_a_chain_that_is_a_conversation(stack, account, client):
    first = await client.responses.create(
        model=MODEL, input="What is the capital of France?", instructions="Answer in one sentence.",
        max_output_tokens=30, temperature=0)
    assert first.status == "completed" and first.object == "response" and first.id.startswith("resp_")
    assert "Paris" in first.output_text
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

    second = await client.responses.create(
        model=MODEL, input="And of Italy?", previous_response_id=first.id, max_output_tokens=30, temperature=0)
    assert second.previous_response_id == first.id and second.output_text
    # The second saw the first exchange: its prompt is longer than the question alone would be.
    alone = await client.responses.create(model=MODEL, input="And of Italy?", max_output_tokens=5, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + 10

    # The chain is a conversation the user sees, in order, the instructions not stored.
    conv = await conversation_of(stack, account, second.id)
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [
        ("user", "What is the capital of France?"), ("assistant", first.output_text),
        ("user", "And of Italy?"), ("assistant", second.output_text)]
    assert conv["messages"][-1]["id"] == second.id.removeprefix("resp_")

    again = await client.responses.retrieve(second.id)
    assert again.output_text == second.output_text and again.previous_response_id == first.id
    # A response chain does not branch: the first is not the latest any more.
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model=MODEL, input="Hm?", previous_response_id=first.id)
    assert err.value.param == "previous_response_id"


async def test_stream_sends_the_typed_events(client):
    stream = await client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=20, stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          kinds[-1]] and kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and "".join(deltas) == events[-1].response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.id == events[-1].response.id


async def test_max_output_tokens_gives_an_incomplete_response(client):
    reply = await client.responses.create(model=MODEL, input="Write a long story about a dragon.",
                                          max_output_tokens=3)
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 3


async def test_function_tool_round_trip(stack, account, client):
    call = await client.responses.create(
        model=MODEL, input="What is the weather in Oslo?", tools=[WEATHER], temperature=0, max_output_tokens=80,
        tool_choice={"type": "function", "name": "get_weather"})
    (item,) = [o for o in call.output if o.type == "function_call"]
    assert item.name == "get_weather" and item.call_id
    jsonschema.validate(json.loads(item.arguments), WEATHER_PARAMS)

    # The function's result goes back in the next response of the chain.
    answer = await client.responses.create(
        model=MODEL, previous_response_id=call.id, tools=[WEATHER], max_output_tokens=40, temperature=0,
        tool_choice="none",
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "4 degrees, snow"}])
    assert answer.output_text and not [o for o in answer.output if o.type == "function_call"]
    conv = await conversation_of(stack, account, answer.id)
    roles = [m["role"] for m in conv["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    (stored_call,) = conv["messages"][1]["tool_calls"]
    assert stored_call["function"] == {"name": "get_weather", "arguments": item.arguments}
    assert conv["messages"][2]["tool_call_id"] == item.call_id


async def test_required_tool_streams_function_call_events(client):
    stream = await client.responses.create(
        model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required", temperature=0,
        max_output_tokens=80, stream=True, store=False)
    events = [e async for e in stream]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added and added[0].item.type == "function_call"
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == arguments
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert events[-1].type == "response.completed"


async def test_json_schema_text_format_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                               "capital": {"type": "boolean"}},
              "required": ["city", "capital"], "additionalProperties": False}
    reply = await client.responses.create(
        model=MODEL, input="Is Paris a capital?", temperature=0, max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(reply.output_text), schema)


async def test_store_false_is_not_kept(client):
    reply = await client.responses.create(model=MODEL, input="Hi", max_output_tokens=5, store=False)
    assert reply.store is False and reply.output_text
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input="Hi", previous_response_id=reply.id)


async def test_bad_input_is_400_naming_the_parameter(client):
    cases = [
        (dict(tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}), "tool_choice"),
        (dict(text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}),
         "text.format.schema"),
        (dict(tools=[{"type": "web_search"}]), "tools[0].type"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            await client.responses.create(model=MODEL, input="Hi", **kwargs)
        assert err.value.param == param, kwargs


async def test_new_routes_are_metered_and_quotas_refuse_them(stack):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http:
        email = f"meter-{uuid.uuid4().hex[:10]}@example.com"
        assert (await http.post("/v1/auth/signup", json={"email": email, "password": "a long password"})).is_success
        token = (await http.post("/v1/auth/login", json={"email": email, "password": "a long password"})).json()
        jwt = {"Authorization": f"Bearer {token['access_token']}"}
        key = (await http.post("/v1/api-keys", json={"name": "meter"}, headers=jwt)).json()
        headers = {"Authorization": f"Bearer {key['key']}"}
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=key["key"], max_retries=0)

        expected = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

        def count(prompt_tokens: int, completion_tokens: int) -> None:
            expected["requests"] += 1
            expected["prompt_tokens"] += prompt_tokens
            expected["completion_tokens"] += completion_tokens

        c = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
        count(c.usage.prompt_tokens, c.usage.completion_tokens)
        for store in (True, False):
            r = await client.responses.create(model=MODEL, input="Hello", max_output_tokens=5, store=store)
            count(r.usage.input_tokens, r.usage.output_tokens)
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=2, max_tokens=5)
        count(chat.usage.prompt_tokens, chat.usage.completion_tokens)

        async def counted() -> bool:
            totals = (await http.get("/v1/usage", headers=headers)).json()["totals"]
            return {k: totals[k] for k in expected} == expected

        await eventually(counted, timeout=60, interval=0.3)

        used = expected["prompt_tokens"] + expected["completion_tokens"]
        r = await http.put(f"/v1/quotas/api-keys/{key['id']}", json={"period": "day", "token_limit": used},
                           headers=headers)
        assert r.status_code == 200, r.text
        for call in (
            client.responses.create(model=MODEL, input="Hi", max_output_tokens=5),
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=5),
        ):
            with pytest.raises(openai.RateLimitError) as err:
                await call
            assert err.value.code == "insufficient_quota"


async def test_client_gone_aborts_the_engine_and_keeps_the_partial_reply(stack, account, tls_channel):
    from chatplane.protos.inference.v1 import inference_pb2 as ipb
    from chatplane.protos.inference.v1 import inference_pb2_grpc

    async with tls_channel(stack.inference) as chan:  # the engine speaks mutual TLS only
        engine = inference_pb2_grpc.InferenceServiceStub(chan)
        before = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
        reply_id = None
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
            body = {"model": MODEL, "stream": True, "max_output_tokens": 1500, "temperature": 0.8,
                    "input": "Write a very long essay about the history of Europe."}
            async with http.stream("POST", "/v1/responses", headers=account.headers, json=body) as resp:
                deltas = 0
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and reply_id is None:
                        reply_id = json.loads(line[6:])["response"]["id"]
                    deltas += "response.output_text.delta" in line
                    if deltas >= 3:
                        break

        async def aborted():
            stats = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
            return stats.running == 0 and stats.aborted_total > before.aborted_total

        await eventually(aborted, timeout=10)

    async def stored_incomplete():
        try:
            conv = await conversation_of(stack, account, reply_id)
        except AssertionError:
            return None
        return conv["messages"][-1]["status"] == "incomplete" and conv["messages"][-1]["content"]

    assert await eventually(stored_incomplete, timeout=10)
