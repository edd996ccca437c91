"""The inference service with the real vLLM engine (shared by the test run)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

pytestmark = pytest.mark.engine


@pytest.fixture
async def stub(inference_server, tls_channel):
    async with tls_channel(inference_server) as chan:
        yield inference_pb2_grpc.InferenceServiceStub(chan)


def chat(text: str, system: str | None = None) -> pb.ChatMessages:
    first = [pb.ChatMessage(role="system", content=system)] if system else []
    return pb.ChatMessages(messages=[*first, pb.ChatMessage(role="user", content=text)])


# Without a system prompt SmolLM2 (bfloat16, this machine's CPU) answers at temperature 0 "L'Étoile, la Marseillaise,
# ..."; with this one, "The capital of France is Paris.".
PARIS = chat("What is the capital of France?", system="You are a helpful assistant.")


async def collect(stub, request) -> tuple[str, pb.GenerateResponse]:
    text, last = "", None
    async for msg in stub.Generate(request):
        text += msg.text
        last = msg
    return text, last


async def test_health_is_serving(inference_server, tls_channel):
    async with tls_channel(inference_server, "probe") as chan:
        reply = await health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service="chatplane.inference.v1.InferenceService")
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_answers_the_capital_of_france(stub):
    text, last = await collect(
        stub,
        pb.GenerateRequest(chat=PARIS, sampling=pb.SamplingParams(max_tokens=30, temperature=0)),
    )
    assert "Paris" in text
    assert last.finish_reason == "stop"
    assert last.usage.completion_tokens > 0
    count = await stub.CountTokens(pb.CountTokensRequest(chat=PARIS))
    assert last.usage.prompt_tokens == count.token_count


async def test_max_tokens_stops_with_length(stub):
    text, last = await collect(
        stub, pb.GenerateRequest(chat=chat("Count from 1 to 100."), sampling=pb.SamplingParams(max_tokens=3))
    )
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 3


async def test_same_seed_same_text(stub):
    req = pb.GenerateRequest(chat=chat("Name a color."), sampling=pb.SamplingParams(max_tokens=12, seed=7))
    a, _ = await collect(stub, req)
    b, _ = await collect(stub, req)
    assert a == b


async def test_stop_sequence_ends_the_reply(stub):
    text, last = await collect(
        stub,
        pb.GenerateRequest(chat=PARIS, sampling=pb.SamplingParams(max_tokens=30, temperature=0, stop=["Paris"])),
    )
    assert "Paris" not in text
    assert last.finish_reason == "stop"


async def test_count_tokens_uses_the_chat_template(stub):
    plain = await stub.CountTokens(pb.CountTokensRequest(prompt="hello"))
    templated = await stub.CountTokens(pb.CountTokensRequest(chat=chat("hello")))
    assert templated.token_count > plain.token_count  # role markers of the ChatML template
    assert templated.max_model_len == 2048


async def test_list_models(stub):
    reply = await stub.ListModels(pb.ListModelsRequest())
    assert [m.id for m in reply.models] == ["SmolLM2-135M-Instruct"]
    assert reply.models[0].max_model_len == 2048


@pytest.mark.parametrize(
    ("request_", "status", "param"),
    [
        (pb.GenerateRequest(model="gpt-17", chat=chat("hi")), grpc.StatusCode.NOT_FOUND, "model"),
        (pb.GenerateRequest(chat=pb.ChatMessages()), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (
            pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="wizard", content="hi")])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[0].role",
        ),
        (
            pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(max_tokens=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens",
        ),
        (
            pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(max_tokens=5000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens",
        ),
        (
            pb.GenerateRequest(chat=chat("word " * 3000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages",
        ),
        (
            pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(temperature=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "temperature",
        ),
    ],
)
async def test_bad_requests_get_a_clear_status(stub, request_, status, param):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, request_)
    assert err.value.code() == status
    assert (("chatplane-error-param", param)) in tuple(err.value.trailing_metadata())


async def test_cancelling_the_rpc_aborts_the_engine_request(stub):
    before = await stub.GetEngineStats(pb.GetEngineStatsRequest())
    call = stub.Generate(
        pb.GenerateRequest(
            chat=chat("Write a very long essay about the history of Europe."),
            sampling=pb.SamplingParams(max_tokens=1500, temperature=0.8, seed=1),
        )
    )
    got = 0
    async for _ in call:
        got += 1
        if got == 3:
            break
    during = await stub.GetEngineStats(pb.GetEngineStatsRequest())
    assert during.running >= 1
    call.cancel()
    after = during
    for _ in range(50):
        await asyncio.sleep(0.1)
        after = await stub.GetEngineStats(pb.GetEngineStatsRequest())
        if after.running == 0:
            break
    assert after.running == 0
    assert after.aborted_total == before.aborted_total + 1


WEATHER = pb.Tool(name="get_weather", description="The weather in a city.", parameters_json=json.dumps({
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}))


async def replies(stub, request) -> list[pb.GenerateResponse]:
    return [m async for m in stub.Generate(request)]


async def test_n_choices_each_end_and_usage_counts_them_all(stub):
    out = await replies(stub, pb.GenerateRequest(
        chat=chat("Name a color."), sampling=pb.SamplingParams(max_tokens=5, n=3, temperature=1, seed=2, logprobs=1)))
    ends = {m.index: m.finish_reason for m in out if m.finish_reason}
    assert ends == {0: "length", 1: "length", 2: "length"} or set(ends) == {0, 1, 2}
    assert out[-1].HasField("usage") and sum(m.HasField("usage") for m in out) == 1
    tokens = sum(len(m.logprobs) for m in out)
    assert out[-1].usage.completion_tokens >= tokens > 0
    for m in out:
        for t in m.logprobs:
            assert len(t.top_logprobs) == 1 and t.logprob <= 0


async def test_prompt_logprobs_come_first(stub):
    out = await replies(stub, pb.GenerateRequest(
        prompt="The capital of France is", sampling=pb.SamplingParams(max_tokens=2, prompt_logprobs=0, temperature=0)))
    count = await stub.CountTokens(pb.CountTokensRequest(prompt="The capital of France is"))
    assert len(out[0].prompt_logprobs) == count.token_count
    assert all(t.token for t in out[0].prompt_logprobs[1:])


async def test_named_tool_call_parses_and_matches_the_schema(stub):
    out = await replies(stub, pb.GenerateRequest(
        chat=chat("Weather in Oslo?"), tools=[WEATHER], sampling=pb.SamplingParams(max_tokens=60),
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_FUNCTION, function="get_weather")))
    pieces = [d for m in out for d in m.tool_calls]
    assert pieces[0].name == "get_weather" and pieces[0].id
    arguments = json.loads("".join(d.arguments for d in pieces))
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert out[-1].finish_reason == "tool_calls"
    # The tools are in the prompt: it is longer than without them.
    with_tools = await stub.CountTokens(pb.CountTokensRequest(chat=chat("Weather in Oslo?"), tools=[WEATHER]))
    without = await stub.CountTokens(pb.CountTokensRequest(chat=chat("Weather in Oslo?")))
    assert with_tools.token_count > without.token_count + 20
    assert out[-1].usage.prompt_tokens == with_tools.token_count


async def test_structured_output_follows_the_schema(stub):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    text, last = await collect(stub, pb.GenerateRequest(
        chat=chat("Is Paris in France?"), sampling=pb.SamplingParams(max_tokens=30),
        structured_output=pb.StructuredOutput(json_schema=json.dumps(schema))))
    assert set(json.loads(text)) == {"ok"} and last.finish_reason == "stop"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.GenerateRequest(chat=chat("hi"), structured_output=pb.StructuredOutput(json_schema='{"type": "nope"}')),
         "response_format"),
        (pb.GenerateRequest(chat=chat("hi"), structured_output=pb.StructuredOutput(json_schema="[1]")),
         "response_format"),
        (pb.GenerateRequest(chat=chat("hi"), tools=[WEATHER],
                            tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_FUNCTION, function="other")),
         "tool_choice"),
        (pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(logit_bias={10**8: 1.0})), "logit_bias"),
        (pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(n=17)), "n"),
        (pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(logprobs=21)), "top_logprobs"),
        (pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="tool", content="x")])),
         "messages[0].tool_call_id"),
    ],
)
async def test_bad_tools_formats_and_sampling_are_invalid_argument(stub, request_, param):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("chatplane-error-param", param) in tuple(err.value.trailing_metadata())
