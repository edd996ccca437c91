"""End to end, the official openai SDK against the real engine: the legacy completions API (/v1/completions)."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def client(stack, account):
    return openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=account.api_key, max_retries=0)


async def test_prompt_list_with_n_and_logprobs(client):
    reply = await client.completions.create(
        model=MODEL, prompt=["The capital of France is", "Once upon a time"], n=2, max_tokens=5, logprobs=2,
        temperature=1.0, seed=7)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        lp = choice.logprobs
        assert "".join(lp.tokens) == choice.text
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        assert all(len(top) >= 1 for top in lp.top_logprobs)
        assert choice.finish_reason in ("length", "stop")
    assert reply.usage.completion_tokens >= sum(len(c.logprobs.tokens) for c in reply.choices)


async def test_echo_returns_the_prompt_with_its_logprobs(client):
    prompt = "The capital of France is"
    reply = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, echo=True, logprobs=1,
                                            temperature=0)
    choice = reply.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens).startswith(prompt)


async def test_stream_and_seed(client):
    args = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=99)
    whole = await client.completions.create(**args)
    stream = await client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    async for chunk in stream:
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert text == whole.choices[0].text
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


async def test_token_array_prompt_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(model=MODEL, prompt=[1, 2, 3])
    assert err.value.param == "prompt[0]"
