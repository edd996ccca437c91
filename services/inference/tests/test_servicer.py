"""The inference gRPC adapter and server lifecycle, with the synthetic engine (no model needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.inference.engine import Chunk, Sampling
from chatplane.inference.server import build
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc


class RecordingEngine(SyntheticEngine):
    """The synthetic engine, recording what it was asked to generate from (the servicer's conversion, tests only)."""

    def __init__(self, settings: InferenceSettings) -> None:
        super().__init__(settings)
        self.seen: list[tuple] = []

    def generate(self, *, messages, prompt, sampling: Sampling, **rest) -> AsyncIterator[Chunk]:
        self.seen.append((messages, prompt, sampling))
        return super().generate(messages=messages, prompt=prompt, sampling=sampling, **rest)


@pytest.fixture
async def running():
    # "a", "b", "c", a token every 50 ms: each its own message (the default stream interval is 20 ms).
    settings = InferenceSettings(engine="synthetic", served_model_name="synthetic", max_model_len=64,
                                 synthetic_script=["a", "b", "c"], synthetic_tokens_per_second=20)
    engine = RecordingEngine(settings)
    await engine.start()
    service, servicer = build(engine, settings)
    port = await service.start("127.0.0.1:0")
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield engine, service, servicer, chan
    await chan.close()
    await service.server.stop(0)


def chat(text: str) -> pb.ChatMessages:
    return pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)])


async def test_not_serving_until_the_engine_is_ready(running):
    engine, service, servicer, chan = running
    health = health_pb2_grpc.HealthStub(chan)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListModels(pb.ListModelsRequest())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await service.grpc.set_serving(True)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


async def test_streams_deltas_then_usage(running):
    engine, service, servicer, chan = running
    await service.grpc.set_serving(True)
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    msgs = [m async for m in stub.Generate(pb.GenerateRequest(chat=chat("hi there"), sampling=pb.SamplingParams(
        max_tokens=5, temperature=0.5, top_p=0.9, stop=["x"], seed=3)))]
    # The last token carries the usage: one message for both.
    assert [m.text for m in msgs] == ["a", "b", "c"]
    assert msgs[-1].finish_reason == "stop" and msgs[-1].usage.completion_tokens == 3
    assert msgs[-1].model == "synthetic"
    _, _, sampling = engine.seen[0]
    assert sampling == Sampling(max_tokens=5, temperature=0.5, top_p=pytest.approx(0.9), stop=("x",), seed=3)


async def test_engine_input_error_becomes_invalid_argument(running):
    engine, service, servicer, chan = running
    await service.grpc.set_serving(True)
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Generate(pb.GenerateRequest(chat=chat("hi"), sampling=pb.SamplingParams(max_tokens=99))):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("chatplane-error-code", "context_length_exceeded") in tuple(err.value.trailing_metadata())


async def test_oversized_message_is_rejected(running):
    engine, service, servicer, chan = running
    await service.grpc.set_serving(True)
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CountTokens(pb.CountTokensRequest(chat=chat("x" * 70_000)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_closes_the_engine_stream(running):
    engine, service, servicer, chan = running
    await service.grpc.set_serving(True)
    engine.script = ()  # made-up words, as many as the window leaves room for (56 at 20 a second)
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    call = stub.Generate(pb.GenerateRequest(chat=chat("hi")))
    async for _ in call:
        break
    assert engine.load.running == 1
    call.cancel()
    for _ in range(40):
        if engine.load.aborted_total:
            break
        await asyncio.sleep(0.05)
    assert engine.load.aborted_total == 1 and engine.load.running == 0


async def test_stop_drains_in_flight_streams(running):
    engine, service, servicer, chan = running
    await service.grpc.set_serving(True)
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    call = stub.Generate(pb.GenerateRequest(chat=chat("hi")))
    first = await call.read()
    stopping = asyncio.create_task(service.stop(grace=5))
    rest = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        rest.append(msg)
    await stopping
    assert first.text == "a" and [m.text for m in rest] == ["b", "c"]
    assert rest[-1].finish_reason == "stop"


async def test_generate_fits_and_says_what_it_left_out(running):
    engine, service, servicer, chan = running
    await service.grpc.set_serving(True)
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    words = " ".join(["w"] * 20)  # 20 tokens for the synthetic tokenizer (4 more per message); the window is 64
    chat = pb.ChatMessages(messages=[
        pb.ChatMessage(role="system", content="sys"),
        pb.ChatMessage(role="user", content=f"old {words}"), pb.ChatMessage(role="assistant", content=words),
        pb.ChatMessage(role="user", content="recent"), pb.ChatMessage(role="assistant", content="fine"),
        pb.ChatMessage(role="user", content="new"),
    ])
    request = pb.GenerateRequest(chat=chat, fit=pb.FitHistory(keep_first=1, keep_last=1, default_max_tokens=30))
    msgs = [m async for m in stub.Generate(request)]
    assert msgs[0].dropped_messages == 2 and [m.dropped_messages for m in msgs[1:]] == [0] * (len(msgs) - 1)
    kept, _, sampling = engine.seen[0]
    assert [t.content for t in kept] == ["sys", "recent", "fine", "new"] and sampling.max_tokens == 30
    request.sampling.max_tokens = 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Generate(request):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("chatplane-error-param", "max_tokens") in tuple(err.value.trailing_metadata())
