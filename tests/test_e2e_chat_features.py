"""End to end, the official openai SDK against the real engine: chat completions beyond plain text (n, logprobs,
seed, penalties, logit_bias, structured outputs, tools). The model is tiny: these tests check guarantees (the
arguments parse and match the schema, the JSON validates, the choices are there), not the quality of answers."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now.",
                                            "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone.",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                        "required": ["zone"]}}}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(stack, account):
    return openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=account.api_key, max_retries=0)


async def test_n_choices_with_logprobs(client):
    reply = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=2, max_tokens=8, temperature=1.0, seed=5, logprobs=True, top_logprobs=2)
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        tokens = choice.logprobs.content
        assert tokens and "".join(t.token for t in tokens) == choice.message.content
        for t in tokens:
            assert t.logprob <= 0 and len(t.top_logprobs) == 2
            assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    assert reply.usage.completion_tokens >= sum(len(c.logprobs.content) for c in reply.choices)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_n_choices_stream_with_logprobs(client):
    stream = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=2, max_tokens=6, temperature=1.0, stream=True, logprobs=True,
        top_logprobs=1, stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    tokens = {0: "", 1: ""}
    finishes = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                tokens[c.index] += "".join(t.token for t in c.logprobs.content)
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage
    assert set(finishes) == {0, 1} and all(texts.values())
    assert tokens == texts  # each streamed token comes with its logprob
    assert usage.completion_tokens >= 2


async def test_same_seed_same_choices(client):
    args = dict(model=MODEL, messages=QUESTION, n=2, max_tokens=10, temperature=1.0, seed=1234)
    a = await client.chat.completions.create(**args)
    b = await client.chat.completions.create(**args)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


BANANA = "21285"  # " banana" in SmolLM2's vocabulary


async def test_logit_bias_and_penalties_reach_the_engine(client):
    # A +100 bias makes one token all but certain: greedy decoding repeats it.
    biased = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=3, temperature=0, logit_bias={BANANA: 100})
    assert biased.choices[0].message.content == " banana banana banana"
    # Penalties on the tokens already generated change a greedy reply.
    prompt = [{"role": "user", "content": "Write a short story about a cat."}]
    plain = await client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=30, temperature=0)
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"presence_penalty": -2.0}):
        penalised = await client.chat.completions.create(
            model=MODEL, messages=prompt, max_tokens=30, temperature=0, **penalty)
        assert penalised.choices[0].message.content != plain.choices[0].message.content, penalty


async def test_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    for stream in (False, True):
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
        if stream:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], response_format=fmt,
                max_tokens=60, stream=True, temperature=0)
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            reply = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], response_format=fmt,
                max_tokens=60, temperature=0)
            text = reply.choices[0].message.content
        jsonschema.validate(json.loads(text), schema)


async def test_json_object_output_parses(client):
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe Paris as JSON."}], max_tokens=400, temperature=0,
        response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop"  # a complete object (the grammar ends it)
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


class City(BaseModel):
    # Bounded fields: a tiny model may otherwise write one digit after another until max_tokens.
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    is_capital: bool


async def test_sdk_parse_returns_the_pydantic_model(client):
    reply = await client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about Paris."}], response_format=City,
        max_tokens=120, temperature=0)
    assert isinstance(reply.choices[0].message.parsed, City)


async def test_named_tool_call_arguments_match_the_schema(client):
    reply = await client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q, tools=[WEATHER, TIME], max_tokens=80, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


async def test_named_tool_call_streams_tool_call_deltas(client):
    stream = await client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q, tools=[WEATHER, TIME], max_tokens=80, stream=True, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    name, arguments, ids, finish = "", "", set(), None
    async for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or ():
                assert d.index == 0
                ids.add(d.id) if d.id else None
                name += d.function.name or ""
                arguments += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "get_weather" and len(ids) == 1 and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)


async def test_required_tool_choice_calls_an_offered_function(client):
    reply = await client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q, tools=[WEATHER, TIME], tool_choice="required", max_tokens=120, temperature=0,
        parallel_tool_calls=False)
    calls = reply.choices[0].message.tool_calls
    assert len(calls) == 1
    schema = {"get_weather": WEATHER_PARAMS, "get_time": TIME["function"]["parameters"]}[calls[0].function.name]
    jsonschema.validate(json.loads(calls[0].function.arguments), schema)


async def test_tool_results_in_the_history_and_auto_choice(client):
    history = [
        *WEATHER_Q,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    reply = await client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=40)
    choice = reply.choices[0]
    # auto: the model writes text or calls a tool; whichever it is, it is well formed.
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 9}, "n"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format.json_schema.schema"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"required": "x"}}}]},
         "tools[0].function.parameters"),
    ],
)
async def test_bad_input_is_400_naming_the_parameter(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, **kwargs)
    assert err.value.param == param
