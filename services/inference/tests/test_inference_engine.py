"""The inference service with the real vLLM engine (shared by the test run)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

pytestmark = pytest.mark.engine


@pytest.fixture
async def stub(inference_server):
    async with grpc.aio.insecure_channel(inference_server) as chan:
        yield inference_pb2_grpc.InferenceServiceStub(chan)


def chat(text: str) -> pb.ChatMessages:
    return pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)])


async def collect(stub, request) -> tuple[str, pb.GenerateResponse]:
    text, last = "", None
    async for msg in stub.Generate(request):
        text += msg.text
        last = msg
    return text, last


async def test_health_is_serving(inference_server):
    async with grpc.aio.insecure_channel(inference_server) as chan:
        reply = await health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service="chatplane.inference.v1.InferenceService")
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_answers_the_capital_of_france(stub):
    text, last = await collect(
        stub,
        pb.GenerateRequest(
            chat=chat("What is the capital of France?"), sampling=pb.SamplingParams(max_tokens=30, temperature=0)
        ),
    )
    assert "Paris" in text
    assert last.finish_reason == "stop"
    assert last.usage.completion_tokens > 0
    count = await stub.CountTokens(pb.CountTokensRequest(chat=chat("What is the capital of France?")))
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
        pb.GenerateRequest(
            chat=chat("What is the capital of France?"),
            sampling=pb.SamplingParams(max_tokens=30, temperature=0, stop=["Paris"]),
        ),
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
