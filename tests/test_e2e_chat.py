"""End to end: the official openai SDK against the gateway, with the real auth service and the real model."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import openai
import pytest

from chatplane.protos.inference.v1 import inference_pb2 as ipb
from chatplane.protos.inference.v1 import inference_pb2_grpc

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
# With a system prompt: without one SmolLM2 (bfloat16, this machine's CPU) answers it at temperature 0 with "L'Étoile,
# la Marseillaise, ..."; with this one, "The capital of France is Paris." (see the stack fixture in conftest.py).
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(stack, account):
    return openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=account.api_key, max_retries=0)


async def test_models_list(client):
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"


async def test_chat_completion_answers_paris(client):
    reply = await client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.role == "assistant"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_streaming_with_usage(client):
    stream = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_stream_ends_with_done(stack, account):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", headers=account.headers,
            json={"model": MODEL, "messages": QUESTION, "max_tokens": 5, "stream": True},
        ) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    json.loads(lines[0][6:])


async def test_max_tokens_and_seed(client):
    a = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_completion_tokens=4, seed=11, temperature=1.0)
    b = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, seed=11, temperature=1.0)
    assert a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 4
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"model": "gpt-17"}, 404, "model"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 100_000}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"n": 9}, 400, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice"),
        ({"temperature": 5}, None, "temperature"),
    ],
)
async def test_bad_parameters_get_openai_errors(client, kwargs, status, param):
    args = {"model": MODEL, "messages": QUESTION, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(**args)
    if status is not None:
        assert err.value.status_code == status
    else:
        assert err.value.status_code in (400, 422)
    body = err.value.body
    assert body["message"] and body["type"]
    assert param in (body.get("param") or ""), body


async def test_context_length_error_code(client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=10)
    assert err.value.code == "context_length_exceeded"


async def test_unknown_and_revoked_keys_are_401(stack, account):
    bad = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="cp-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        jwt_headers = {"Authorization": f"Bearer {account.token}"}
        created = (await http.post("/v1/api-keys", json={"name": "short-lived"}, headers=jwt_headers)).json()
        key_client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=created["key"], max_retries=0)
        await key_client.models.list()
        r = await http.delete(f"/v1/api-keys/{created['id']}", headers=jwt_headers)
        assert r.status_code == 200 and r.json()["revoked_at"]
    with pytest.raises(openai.AuthenticationError) as err:
        await key_client.models.list()
    assert created["key"] not in str(err.value.body)


async def test_client_disconnect_aborts_the_engine_request(stack, account, tls_channel):
    async with tls_channel(stack.inference) as chan:
        engine = inference_pb2_grpc.InferenceServiceStub(chan)
        before = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
            async with http.stream(
                "POST", "/v1/chat/completions", headers=account.headers,
                json={"model": MODEL, "stream": True, "max_tokens": 1500, "temperature": 0.8, "seed": 3,
                      "messages": [{"role": "user", "content": "Write a very long essay about the history of Europe."}]},
            ) as resp:
                seen = 0
                async for line in resp.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 4:
                        break
                during = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
                assert during.running >= 1
        after = during
        for _ in range(100):
            await asyncio.sleep(0.1)
            after = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
            if after.running == 0 and after.aborted_total > before.aborted_total:
                break
        assert after.running == 0
        assert after.aborted_total == before.aborted_total + 1


async def test_concurrent_streams(client):
    async def one(i: int) -> int:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say a number bigger than {i}."}], max_tokens=16)
        return reply.usage.completion_tokens

    counts = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(0 < c <= 16 for c in counts)
