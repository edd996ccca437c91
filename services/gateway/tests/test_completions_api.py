"""Legacy completions (POST /v1/completions): OpenAI's request rules, prompts lists, echo, logprobs, streaming."""

from __future__ import annotations

import json

import openai
import pytest


def completion(prompt="Once upon a time", **extra) -> dict:
    return {"model": "test-model", "prompt": prompt, **extra}


async def test_one_prompt(client, auth_headers, fakes):
    resp = await client.post("/v1/completions", json=completion(max_tokens=50, seed=3, temperature=0.5),
                             headers=auth_headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    assert data["choices"] == [{"text": fakes.reply_text, "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert data["usage"]["total_tokens"] == fakes.count(prompt="Once upon a time") + len(fakes.reply_pieces)
    (sent,) = fakes.inference.generations
    assert sent.prompt == "Once upon a time" and sent.messages == []
    assert (sent.sampling.max_tokens, sent.sampling.seed) == (50, 3)
    assert resp.headers["x-ratelimit-limit-requests"]


async def test_default_max_tokens_is_16(client, auth_headers, fakes):
    await client.post("/v1/completions", json=completion(), headers=auth_headers)
    assert fakes.inference.generations[0].sampling.max_tokens == 16


async def test_prompt_list_gives_indexed_choices_and_summed_usage(client, auth_headers, fakes):
    resp = await client.post("/v1/completions", json=completion(["a b", "c d", "e f"], n=2, logprobs=1),
                             headers=auth_headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert [c["index"] for c in data["choices"]] == list(range(6))
    assert sorted(g.prompt for g in fakes.inference.generations) == ["a b", "c d", "e f"]
    assert data["usage"]["prompt_tokens"] == 3 * fakes.count(prompt="a b")
    assert data["usage"]["completion_tokens"] == 3 * 2 * len(fakes.reply_pieces)
    lp = data["choices"][0]["logprobs"]
    assert lp["tokens"] == list(fakes.reply_pieces)
    assert lp["text_offset"] == [0, 5, 7, 12]
    assert lp["top_logprobs"][0] == {"Hello": lp["token_logprobs"][0]} and lp["token_logprobs"][0] < 0


async def test_echo_with_logprobs(client, auth_headers, fakes):
    resp = await client.post("/v1/completions", json=completion("a b", echo=True, logprobs=0), headers=auth_headers)
    choice = resp.json()["choices"][0]
    assert choice["text"] == "a b" + fakes.reply_text
    lp = choice["logprobs"]
    assert lp["tokens"][:2] == ["a", " b"] and lp["token_logprobs"][0] is None and lp["token_logprobs"][1] < 0
    assert lp["top_logprobs"][0] is None and lp["text_offset"][:3] == [0, 1, 3]
    assert fakes.inference.generations[0].sampling.prompt_logprobs == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": [1, 2, 3]}, "prompt[0]"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok"] * 33}, "prompt"),
        ({"suffix": "end"}, "suffix"),
        ({"n": 2, "best_of": 3}, "best_of"),
        ({"n": 9}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"max_tokens": 4096}, "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
    ],
)
async def test_bad_values_are_400_naming_the_parameter(client, auth_headers, fakes, extra, param):
    resp = await client.post("/v1/completions", json=completion(**extra), headers=auth_headers)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert fakes.inference_calls("Generate") == 0


async def test_sdk_streams_several_prompts(live_url, user_key):
    sdk = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=user_key.secret, max_retries=0)
    stream = await sdk.completions.create(
        model="test-model", prompt=["a b", "c d"], stream=True, echo=True, stream_options={"include_usage": True})
    texts: dict[int, str] = {}
    finishes = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage
    assert texts == {0: "a bHello, world!", 1: "c dHello, world!"}
    assert finishes == {0: "stop", 1: "stop"}
    assert usage.completion_tokens == 2 * 4
    reply = await sdk.completions.create(model="test-model", prompt="Hi")
    assert reply.choices[0].text == "Hello, world!"


async def test_client_gone_cancels_the_inference_call(live_url, auth_headers, fakes):
    import asyncio

    import httpx

    async with httpx.AsyncClient(base_url=live_url) as c:
        fakes.inference.pace(30)  # the first token at once, the next in 30 s
        async with c.stream("POST", "/v1/completions", json=completion(stream=True),
                            headers=auth_headers) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    json.loads(line[6:])
                    break
    await asyncio.wait_for(fakes.inference.engine.closed.wait(), 5)
