"""Chat completions: OpenAI's request rules, response and SSE format, the openai SDK, and cancellation."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import httpx
import jsonschema
import openai
import pytest

from chatplane.common.errors import ServiceError
from chatplane.inference.synthetic_content import pieces


def chat(content: str = "Hi", **extra) -> dict:
    return {"model": "test-model", "messages": [{"role": "user", "content": content}], **extra}


def sse_data(text: str) -> list[str]:
    """The data fields of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    out = []
    for ev in events:
        assert ev.startswith("data: "), ev
        out.append(ev[len("data: "):])
    return out


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ],
)
async def test_unsupported_params_are_400_naming_them(client, auth_headers, fakes, extra, param):
    resp = await client.post("/v1/chat/completions", json=chat(**extra), headers=auth_headers)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert param in err["message"]
    assert fakes.inference_calls("Generate") == 0


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 9}, "n"),  # the configured maximum is 8
        ({"n": 0}, "n"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}]},
         "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": 3}}}]},
         "tools[0].function.parameters"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wrong"}}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minLength": -1}}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"the": 3}}, "logit_bias"),
        ({"logit_bias": {"50": 300}}, "logit_bias"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]}, "messages[0].tool_call_id"),
    ],
)
async def test_bad_values_are_400_naming_the_parameter(client, auth_headers, fakes, extra, param):
    resp = await client.post("/v1/chat/completions", json=chat(**extra), headers=auth_headers)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param, resp.text
    assert fakes.inference_calls("Generate") == 0


async def test_neutral_values_of_unsupported_params_are_accepted(client, auth_headers):
    body = chat(n=1, presence_penalty=0, frequency_penalty=0, logprobs=False, response_format={"type": "text"},
                user="u-1", store=False, modalities=["text"])
    resp = await client.post("/v1/chat/completions", json=body, headers=auth_headers)
    assert resp.status_code == 200, resp.text


async def test_sampling_tools_and_format_reach_inference(client, auth_headers, fakes):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = chat(
        n=2, presence_penalty=0.5, frequency_penalty=-1, logit_bias={"42": -100, "7": 2.5}, logprobs=True,
        top_logprobs=3, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}},
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
        ],
    )
    resp = await client.post("/v1/chat/completions", json=body, headers=auth_headers)
    assert resp.status_code == 200, resp.text
    # What the engine was asked, as inference understood the request.
    (sent,) = fakes.inference.generations
    s = sent.sampling
    assert (s.n, s.presence_penalty, s.frequency_penalty, s.logprobs) == (2, 0.5, -1, 3)
    assert dict(s.logit_bias) == {42: -100, 7: 2.5}
    assert [(m.role, m.content, m.tool_call_id) for m in sent.messages] == [
        ("system", "Be brief.", ""), ("user", "Weather?", ""), ("assistant", "", ""), ("tool", "cold", "call_1")]
    (call,) = sent.messages[2].tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("call_1", "get_weather", {"city": "Oslo"})
    (tool,) = sent.tools.functions
    assert tool.name == "get_weather" and tool.parameters == WEATHER["function"]["parameters"]
    assert (sent.tools.choice, sent.tools.function, sent.tools.parallel) == ("function", "get_weather", False)
    assert sent.structured.json_schema == schema
    # The named function is called (for both choices) with arguments of its schema.
    for choice in resp.json()["choices"]:
        (made,) = choice["message"]["tool_calls"]
        assert made["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(made["function"]["arguments"]), WEATHER["function"]["parameters"])


async def test_unknown_param_is_400_like_openai(client, auth_headers):
    resp = await client.post("/v1/chat/completions", json=chat(frobnicate=True), headers=auth_headers)
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "message": "Unrecognized request argument supplied: frobnicate",
        "type": "invalid_request_error",
        "param": "frobnicate",
        "code": None,
    }


async def test_non_streaming_response_shape(client, auth_headers, fakes):
    body = {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
        ],
        "max_completion_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n"], "seed": 42,
    }
    resp = await client.post("/v1/chat/completions", json=body, headers=auth_headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "test-model"
    assert data["system_fingerprint"] is None
    assert data["choices"] == [{
        "index": 0,
        "message": {"role": "assistant", "content": fakes.reply_text, "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }]
    n = len(fakes.reply_pieces)
    prompt = fakes.inference.count([("system", "Be brief."), ("user", "Hello\nthere")])
    assert data["usage"] == {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    # What the engine was asked.
    (sent,) = fakes.inference.generations
    assert [(m.role, m.content) for m in sent.messages] == [("system", "Be brief."), ("user", "Hello\nthere")]
    assert sent.sampling.max_tokens == 100
    assert sent.sampling.temperature == pytest.approx(0.5)
    assert sent.sampling.top_p == pytest.approx(0.9)
    assert list(sent.sampling.stop) == ["\n\n"]
    assert sent.sampling.seed == 42
    assert sent.request_id == data["id"]


async def test_max_tokens_gives_finish_reason_length(client, auth_headers, fakes):
    resp = await client.post("/v1/chat/completions", json=chat(max_tokens=2), headers=auth_headers)
    data = resp.json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["message"]["content"] == "".join(fakes.reply_pieces[:2])


async def test_model_ids_with_slashes(client, auth_headers, fakes):
    resp = await client.get(f"/v1/models/{fakes.slash_model}", headers=auth_headers)
    assert resp.status_code == 200
    assert resp.json() == {"id": fakes.slash_model, "object": "model", "created": fakes.slash.engine.created,
                           "owned_by": "chatplane"}
    resp = await client.post("/v1/chat/completions", json={**chat(), "model": fakes.slash_model},
                             headers=auth_headers)
    assert resp.json()["model"] == fakes.slash_model
    # Served by the model's own pool: the other replica was never asked.
    assert len(fakes.slash.generations) == 1 and fakes.inference.generations == []


async def test_models_come_from_the_replicas_not_from_a_call_per_request(client, auth_headers, fakes):
    for _ in range(3):
        resp = await client.get("/v1/models", headers=auth_headers)
        assert resp.status_code == 200
    assert resp.json()["object"] == "list"
    assert [m["id"] for m in resp.json()["data"]] == [fakes.model, fakes.slash_model]
    assert fakes.inference_calls("ListModels") == 2  # once per replica (one per pool), when it became serving


async def test_stream_is_openai_sse(live_url, auth_headers, fakes):
    async with httpx.AsyncClient(base_url=live_url) as c:
        resp = await c.post("/v1/chat/completions", json=chat(stream=True), headers=auth_headers)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-accel-buffering"] == "no"
    data = sse_data(resp.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert all(deltas) and "".join(deltas) == fakes.reply_text  # tokens ready together may come in one chunk
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


async def test_stream_with_include_usage(live_url, auth_headers, fakes):
    body = chat(stream=True, stream_options={"include_usage": True})
    async with httpx.AsyncClient(base_url=live_url) as c:
        resp = await c.post("/v1/chat/completions", json=body, headers=auth_headers)
    data = sse_data(resp.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    n, prompt = len(fakes.reply_pieces), fakes.count("Hi")
    assert chunks[-1]["usage"] == {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}


async def test_stream_error_before_first_byte_is_an_http_error(make_live, full_replica, auth_headers):
    async with make_live(full_replica) as url, httpx.AsyncClient(base_url=url) as c:
        resp = await c.post("/v1/chat/completions", json=chat(stream=True), headers=auth_headers)
    assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


async def test_stream_error_after_start_is_an_error_event(live_url, auth_headers, fakes):
    # After the first token, an upstream error that tells too much.
    fakes.inference.engine.fail_after = 1
    fakes.inference.engine.failure = ServiceError(grpc.StatusCode.INTERNAL, fakes.secret_detail)
    async with httpx.AsyncClient(base_url=live_url) as c:
        resp = await c.post("/v1/chat/completions", json=chat(stream=True), headers=auth_headers)
    assert resp.status_code == 200
    data = sse_data(resp.text)
    assert "[DONE]" not in data
    last = json.loads(data[-1])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "server_error"
    assert "hunter2" not in resp.text and "internal.py" not in resp.text
    assert json.loads(data[1])["choices"][0]["delta"]["content"] == fakes.reply_pieces[0]


async def test_engine_abort_is_not_a_normal_finish(client, live_url, auth_headers, fakes):
    fakes.inference.engine.abort_after = 1  # the engine gives the request up after the first token
    resp = await client.post("/v1/chat/completions", json=chat(), headers=auth_headers)
    assert resp.status_code == 503
    async with httpx.AsyncClient(base_url=live_url) as c:
        resp = await c.post("/v1/chat/completions", json=chat(stream=True), headers=auth_headers)
    data = sse_data(resp.text)
    assert "[DONE]" not in data
    assert "error" in json.loads(data[-1])
    assert not any(json.loads(d).get("choices", [{}])[0].get("finish_reason") for d in data[:-1])


async def test_openai_sdk_non_streaming(live_url, user_key, fakes):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    completion = await sdk.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=50
    )
    assert completion.choices[0].message.content == fakes.reply_text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == len(fakes.reply_pieces)
    assert completion.usage.total_tokens == fakes.count("Hi") + len(fakes.reply_pieces)
    models = await sdk.models.list()
    assert [m.id for m in models.data] == [fakes.model, fakes.slash_model]
    await sdk.close()


async def test_openai_sdk_streaming_with_usage(live_url, user_key, fakes):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    stream = await sdk.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == fakes.reply_text
    assert finish == "stop"
    assert usage.prompt_tokens == fakes.count("Hi")
    assert usage.completion_tokens == len(fakes.reply_pieces)
    await sdk.close()


async def test_openai_sdk_errors(live_url, user_key, fakes):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        await sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    assert exc.value.param == "tool_choice"
    bad = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    # An error after the stream started reaches the SDK as an APIError.
    fakes.inference.engine.fail_after = 1
    stream = await sdk.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await sdk.close()
    await bad.close()


async def test_client_disconnect_cancels_generation(live_url, auth_headers, fakes):
    fakes.inference.pace(30)  # the first token at once, the next in 30 s
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as c:
        async with c.stream("POST", "/v1/chat/completions", json=chat(stream=True),
                            headers=auth_headers) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if fakes.reply_pieces[0] in line:
                    break
        # Leaving the block closes the connection mid-stream.
    await asyncio.wait_for(fakes.inference.engine.closed.wait(), 5)


async def test_client_leaving_a_non_streaming_request_cancels_generation(live_url, auth_headers, fakes):
    fakes.inference.pace(30)
    async with httpx.AsyncClient(base_url=live_url, timeout=0.5) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=chat(), headers=auth_headers)
    await asyncio.wait_for(fakes.inference.engine.closed.wait(), 5)


async def test_one_access_log_line_per_request_names_the_call_and_never_the_key(client, auth_headers, caplog):
    caplog.set_level(logging.INFO, logger="chatplane.gateway.access")
    resp = await client.post("/v1/chat/completions", json=chat(stream=True), headers=auth_headers)
    assert resp.status_code == 200
    lines = [r for r in caplog.records if r.name == "chatplane.gateway.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.method, line.route, line.status) == ("POST", "/v1/chat/completions", 200)
    assert line.request_id.startswith("chatcmpl-") and line.user_id and line.api_key_id
    assert line.model == "test-model" and line.duration_ms > 0 and line.client_gone is False
    secret = auth_headers["Authorization"].split()[1]
    assert all(secret not in r.getMessage() and secret not in str(vars(r)) for r in caplog.records)


async def test_n_choices_logprobs_and_usage_summed(client, auth_headers, fakes):
    resp = await client.post("/v1/chat/completions", json=chat(n=3, logprobs=True, top_logprobs=2),
                             headers=auth_headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    for choice in data["choices"]:
        assert choice["message"]["content"] == fakes.reply_text
        tokens = choice["logprobs"]["content"]
        assert [t["token"] for t in tokens] == list(fakes.reply_pieces)
        assert tokens[0]["bytes"] == list(fakes.reply_pieces[0].encode()) and len(tokens[0]["top_logprobs"]) == 2
    assert data["usage"]["completion_tokens"] == 3 * len(fakes.reply_pieces)


async def test_sdk_streams_n_choices_and_named_tool_calls(live_url, user_key):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    stream = await sdk.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Weather?"}], n=2, stream=True,
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict] = {}
    finishes = {}
    roles = []
    async for chunk in stream:
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.index)
            for d in c.delta.tool_calls or ():
                call = calls.setdefault(c.index, {"name": "", "arguments": ""})
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage
    assert sorted(roles) == [0, 1]
    assert finishes == {0: "tool_calls", 1: "tool_calls"}
    assert sorted(calls) == [0, 1] and all(c["name"] == "get_weather" for c in calls.values())
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])
    assert usage.completion_tokens == sum(len(pieces(c["arguments"])) for c in calls.values())
    reply = await sdk.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = reply.choices[0].message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert reply.choices[0].message.content is None and reply.choices[0].finish_reason == "tool_calls"


async def test_sdk_parse_returns_the_model(live_url, user_key):
    from pydantic import BaseModel

    class Thing(BaseModel):
        a: int

    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    reply = await sdk.chat.completions.parse(
        model="test-model", messages=[{"role": "user", "content": "A thing"}], response_format=Thing)
    assert reply.choices[0].message.parsed == Thing(a=1)
