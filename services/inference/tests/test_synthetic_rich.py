"""The synthetic engine's richer requests, answered as the vLLM engine answers them: n choices, log-probabilities,
tool calls, structured output (a JSON value of the schema, whatever the schema)."""

from __future__ import annotations

import datetime
import itertools
import json
import uuid
from typing import Literal, Optional

import grpc
import jsonschema
import pytest
from pydantic import BaseModel, Field

from chatplane.dev.inference import inference_service
from chatplane.inference import synthetic_content
from chatplane.inference.engine import Function, Sampling, Structured, ToolUse
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

HELLO = [("user", "Hello, world!")]  # 11 prompt tokens (see test_synthetic.py)


async def started(**kw) -> SyntheticEngine:
    engine = SyntheticEngine(InferenceSettings(engine="synthetic", served_model_name="synthetic", **kw))
    await engine.start()
    return engine


async def run(engine: SyntheticEngine, sampling: Sampling, messages=HELLO) -> list:
    return [c async for c in engine.generate(messages=messages, prompt=None, sampling=sampling, request_id="r")]


WEATHER = Function("get_weather", "The weather in a city.", {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 2},
                                     "unit": {"enum": ["C", "F"]}},
    "required": ["city", "days", "unit"], "additionalProperties": False})


def by_choice(chunks) -> dict[int, list]:
    out: dict[int, list] = {}
    for c in chunks:
        out.setdefault(c.index, []).append(c)
    return out


async def test_n_choices_interleave_each_end_on_its_own_and_the_last_carries_all_the_usage():
    engine = await started()
    chunks = await run(engine, Sampling(n=3, max_tokens=4, seed=5))
    assert [c.index for c in chunks[:3]] == [0, 1, 2]  # one token of each choice a step
    choices = by_choice(chunks)
    assert sorted(choices) == [0, 1, 2] and all(len(cs) == 4 for cs in choices.values())
    texts = ["".join(c.text for c in cs) for cs in choices.values()]
    assert len(set(texts)) == 3  # seed + i: three different samples
    assert texts[0] == "".join(c.text for c in await run(engine, Sampling(max_tokens=4, seed=5)))
    ends = [c for c in chunks if c.finish_reason]
    assert [(c.finish_reason, c.more) for c in ends] == [("length", True), ("length", True), ("length", False)]
    assert chunks[-1] is ends[-1] and (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (11, 12)
    assert engine.load.aborted_total == 0


async def test_logprobs_give_each_token_its_logprob_and_that_many_alternatives_it_first():
    engine = await started()
    chunks = await run(engine, Sampling(max_tokens=5, logprobs=3))
    for c in chunks:
        (lp,) = c.logprobs
        assert lp.token == c.text and lp.logprob < 0
        assert len(lp.top) == 3 and lp.top[0] == (c.text, lp.logprob)
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
    again = await run(engine, Sampling(max_tokens=5, logprobs=3))
    assert [c.logprobs for c in again] == [c.logprobs for c in chunks]  # deterministic
    assert all(c.logprobs[0].top == [] for c in await run(engine, Sampling(max_tokens=2, logprobs=0)))


async def test_prompt_logprobs_cover_the_prompt_and_the_first_token_has_none():
    engine = await started()
    chunks = [c async for c in engine.generate(messages=None, prompt="The cat, sat.", request_id="r",
                                               sampling=Sampling(max_tokens=2, prompt_logprobs=1))]
    prompt = chunks[0].prompt_logprobs
    assert "".join(t.token for t in prompt) == "The cat, sat."
    assert (prompt[0].logprob, prompt[0].top) == (0.0, [])
    assert all(t.logprob < 0 and len(t.top) == 1 for t in prompt[1:])
    assert all(c.prompt_logprobs is None for c in chunks[1:]) and chunks[-1].prompt_tokens == len(prompt)


@pytest.mark.parametrize("choice", ["function", "required"])
async def test_a_named_or_required_tool_is_called_with_arguments_of_its_schema(choice):
    engine = await started()
    tools = ToolUse((Function("other"), WEATHER) if choice == "function" else (WEATHER,), choice,
                    "get_weather" if choice == "function" else "")
    chunks = [c async for c in engine.generate(messages=HELLO, prompt=None, sampling=Sampling(n=2),
                                               request_id="r", tools=tools)]
    for calls in by_choice(chunks).values():
        deltas = [d for c in calls for d in c.tool_calls]
        assert deltas[0].name == "get_weather" and deltas[0].id.startswith("call_")
        assert all(not d.id and not d.name for d in deltas[1:]) and all(c.text == "" for c in calls)
        arguments = json.loads("".join(d.arguments for d in deltas))
        jsonschema.validate(arguments, WEATHER.parameters)
        assert calls[-1].finish_reason == "tool_calls"
    assert chunks[-1].completion_tokens == len(chunks)
    # The offered functions are part of the prompt, as a chat template puts them there.
    assert chunks[-1].prompt_tokens > engine.count_tokens(messages=HELLO)
    assert chunks[-1].prompt_tokens == engine.count_tokens(messages=HELLO, tools=tools)


async def test_with_auto_the_reply_is_text():
    engine = await started(synthetic_script=["Sunny", "."])
    chunks = [c async for c in engine.generate(messages=HELLO, prompt=None, sampling=Sampling(), request_id="r",
                                               tools=ToolUse((WEATHER,), "auto"))]
    assert "".join(c.text for c in chunks) == "Sunny." and chunks[-1].finish_reason == "stop"
    assert not any(c.tool_calls for c in chunks)


class Thing(BaseModel):
    class Part(BaseModel):
        name: str = Field(min_length=12)
        size: float | None

    a: int
    parts: list[Part]
    kind: Literal["big", "small"]


@pytest.mark.parametrize("structured", [Structured(json_schema=Thing.model_json_schema()),
                                        Structured(json_object=True)])
async def test_structured_output_is_json_of_the_schema_or_an_object(structured):
    engine = await started()
    chunks = [c async for c in engine.generate(messages=HELLO, prompt=None, sampling=Sampling(), request_id="r",
                                               structured=structured)]
    value = json.loads("".join(c.text for c in chunks))
    assert isinstance(value, dict) and chunks[-1].finish_reason == "stop"
    if structured.json_schema:
        Thing.model_validate(value)
    cut = [c async for c in engine.generate(messages=HELLO, prompt=None, sampling=Sampling(max_tokens=3),
                                            request_id="r", structured=structured)]
    assert len(cut) == 3 and cut[-1].finish_reason == "length"  # as a real model's JSON cut at max_tokens


async def test_a_rich_stream_closed_early_frees_its_slot_and_counts_an_abort():
    engine = await started(max_num_seqs=1)
    stream = engine.generate(messages=HELLO, prompt=None, sampling=Sampling(n=2, max_tokens=8), request_id="r")
    await anext(stream)
    assert engine.load.running == 1
    await stream.aclose()
    assert (engine.load.running, engine.load.aborted_total) == (0, 1)


async def test_rich_requests_behind_the_grpc_service():
    async with inference_service(max_model_len=2048, synthetic_script=[]) as inference:
        async with grpc.aio.insecure_channel(inference.target) as channel:
            request = pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Hi")]),
                                         sampling=pb.SamplingParams(n=2, max_tokens=3, logprobs=1))
            replies = [r async for r in inference_pb2_grpc.InferenceServiceStub(channel).Generate(request)]
    assert {r.index for r in replies} == {0, 1}
    assert all(len(r.logprobs) == r.tokens for r in replies)
    assert replies[-1].usage.completion_tokens == 6 and replies[-1].finish_reason == "length"


class Node(BaseModel):
    name: str
    children: list[Node]


class Linked(BaseModel):
    value: int
    next: Optional[Linked]  # noqa: UP045 - the Optional form, as many schemas are written


class Bounded(BaseModel):
    share: float = Field(gt=0, lt=1)
    below: int = Field(lt=0)
    third: int = Field(ge=3, multiple_of=3)
    tags: set[int] = Field(min_length=3)
    pair: tuple[int, str]
    when: datetime.datetime
    id: uuid.UUID
    nothing: list[int] = Field(max_length=0)


Wide = type("Wide", (BaseModel,), {"__annotations__": {f"field_{i}": str for i in range(150)}})


@pytest.mark.parametrize("model", [Node, Linked, Bounded, Wide])
def test_a_json_value_of_any_schema_pydantic_writes(model):
    schema = model.model_json_schema()
    value = synthetic_content.instance(schema, schema, itertools.cycle(synthetic_content.reply(0, 64)))
    jsonschema.validate(value, schema)
    model.model_validate(value)
