"""The inference gRPC adapter and server lifecycle, with a test double engine (no model needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import Chunk, EngineLoad, Sampling
from chatplane.inference.server import build
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc


class FakeEngine:
    """Test double: streams ``words`` one per ``delay`` seconds; records what it was asked."""

    model_name = "fake-model"
    max_model_len = 64
    created = 1

    def __init__(self, words: list[str], delay: float = 0.0) -> None:
        self.words = words
        self.delay = delay
        self.load = EngineLoad()
        self.seen: list[tuple] = []
        self.closed = 0

    async def start(self) -> None:
        return None

    def count_tokens(self, *, messages=None, prompt=None, continue_final=False) -> int:
        return sum(len(m.content.split()) for m in messages) if messages else len((prompt or "").split())

    async def generate(
        self, *, messages, prompt, sampling: Sampling, request_id: str, continue_final: bool = False
    ) -> AsyncIterator[Chunk]:
        self.seen.append((messages, prompt, sampling))
        if sampling.max_tokens and sampling.max_tokens > self.max_model_len:
            raise InvalidArgument("too long", param="max_tokens", code="context_length_exceeded")
        self.load.running += 1
        try:
            for w in self.words:
                await asyncio.sleep(self.delay)
                yield Chunk(w)
            yield Chunk("", finish_reason="stop", prompt_tokens=3, completion_tokens=len(self.words))
        finally:
            self.load.running -= 1
            self.closed += 1

    async def stop(self) -> None:
        return None


@pytest.fixture
async def running():
    engine = FakeEngine(["a", "b", "c"], delay=0.05)
    service, servicer = build(engine)
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
    # The engine's empty last chunk (usage) comes right after "c", before "c" could be sent: one message for both.
    assert [m.text for m in msgs] == ["a", "b", "c"]
    assert msgs[-1].finish_reason == "stop" and msgs[-1].usage.completion_tokens == 3
    assert msgs[-1].model == "fake-model"
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
    engine.words = ["w"] * 100
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    call = stub.Generate(pb.GenerateRequest(chat=chat("hi")))
    async for _ in call:
        break
    assert engine.load.running == 1
    call.cancel()
    for _ in range(40):
        if engine.closed:
            break
        await asyncio.sleep(0.05)
    assert engine.closed == 1 and engine.load.running == 0


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
    words = " ".join(["w"] * 20)  # the FakeEngine counts words; its window is 64 tokens
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
