"""A replica's bounded queue: ``max_num_seqs`` generations run, ``max_waiting`` more wait, the next is refused before
the engine sees it; every way a generation ends frees its place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from pydantic import ValidationError

from chatplane.common.errors import error_details
from chatplane.inference.server import build
from chatplane.inference.servicer import InferenceServicer
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc


class CountingEngine(SyntheticEngine):
    """The synthetic engine, counting the generations it was asked for."""

    def __init__(self, settings: InferenceSettings) -> None:
        super().__init__(settings)
        self.asked = 0

    def generate(self, **kw):
        self.asked += 1
        return super().generate(**kw)


Stub = inference_pb2_grpc.InferenceServiceStub


@asynccontextmanager
async def replica(**kw) -> AsyncIterator[tuple[CountingEngine, InferenceServicer, Stub]]:
    # 20 tokens a second, each its own message: a stream of many tokens stays under way for the whole test.
    settings = InferenceSettings(engine="synthetic", served_model_name="synthetic", synthetic_tokens_per_second=20,
                                 stream_interval_ms=0, **kw)
    engine = CountingEngine(settings)
    await engine.start()
    runtime, servicer = build(engine, settings)
    port = await runtime.start("127.0.0.1:0")
    await runtime.grpc.set_serving(True)
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield engine, servicer, Stub(chan)
    finally:
        await chan.close()
        await runtime.server.stop(0)


def request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Hi")]),
                              sampling=pb.SamplingParams(max_tokens=max_tokens))


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until ``condition`` holds (the server's side of a call the client cannot see, e.g. a call waiting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "the condition did not come true"
        await asyncio.sleep(0.01)


async def refused(stub: Stub) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(request(5)).read()
    return err.value


async def test_one_runs_one_waits_the_next_is_refused_and_every_end_frees_its_place():
    async with replica(max_num_seqs=1, max_waiting=1) as (engine, servicer, stub):
        running = stub.Generate(request(1000))
        await running.read()
        waiting = stub.Generate(request(2))
        await until(lambda: engine.load.waiting == 1)
        assert servicer.under_way == 2 and engine.asked == 2

        err = await refused(stub)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "This replica is busy (2 requests running or waiting); retry shortly."
        assert error_details(err) == ("rate_limit_exceeded", None)
        assert engine.asked == 2  # refused before the engine

        waiting.cancel()  # the client went away while waiting
        await until(lambda: servicer.under_way == 1)
        # Admitted, then failed (the engine's own error): its place is free again.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(request(5000)).read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and engine.asked == 3
        await until(lambda: servicer.under_way == 1)

        finishing = stub.Generate(request(2))  # waits for the running one
        await until(lambda: engine.load.waiting == 1)
        assert (await refused(stub)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        running.cancel()  # cancelled while running
        replies = [r async for r in finishing]  # runs to its end
        assert replies[-1].finish_reason == "length" and sum(r.tokens for r in replies) == 2
        await until(lambda: servicer.under_way == 0)

        # Places for two again: one runs, one waits, the third is refused.
        again = [stub.Generate(request(1000)), stub.Generate(request(1000))]
        await again[0].read()
        await until(lambda: engine.load.waiting == 1)
        assert (await refused(stub)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in again:
            call.cancel()
        await until(lambda: servicer.under_way == 0)


async def test_with_no_waiting_places_only_max_num_seqs_are_admitted():
    async with replica(max_num_seqs=2, max_waiting=0) as (engine, servicer, stub):
        calls = [stub.Generate(request(1000)) for _ in range(2)]
        for call in calls:
            await call.read()
        err = await refused(stub)
        assert (err.code(), err.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "This replica is busy (2 requests running or waiting); retry shortly.")
        assert engine.load.waiting == 0 and engine.asked == 2
        for call in calls:
            call.cancel()
        await until(lambda: servicer.under_way == 0)


class CallEnd:
    """Stands in for a Generate call's context where the test drives the servicer's generator itself: keeps what the
    servicer asks to run at the call's end, and runs it on :meth:`end`."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[..., None]] = []

    def add_done_callback(self, callback: Callable[..., None]) -> None:
        self.callbacks.append(callback)

    def end(self) -> None:
        for callback in self.callbacks:
            callback(self)


async def test_the_calls_end_frees_its_place_while_its_generator_is_left_suspended_and_only_once():
    async with replica(max_num_seqs=1, max_waiting=0) as (engine, servicer, stub):
        call = CallEnd()
        replies = servicer.Generate(request(1000), call)
        await anext(replies)
        assert servicer.under_way == 1 and (await refused(stub)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The RPC ends (a send was cancelled, say) while the generator stays suspended at its yield, not finalized.
        call.end()
        assert servicer.under_way == 0
        replies_of_next = [r async for r in stub.Generate(request(2))]  # admitted: the place is free again
        assert replies_of_next[-1].finish_reason == "length"
        await replies.aclose()  # finalized at last: the place is not freed a second time
        assert servicer.under_way == 0


def test_max_waiting_is_read_from_the_environment_and_never_negative(monkeypatch):
    monkeypatch.delenv("CHATPLANE_INFERENCE_MAX_WAITING", raising=False)
    assert InferenceSettings().max_waiting == 128
    monkeypatch.setenv("CHATPLANE_INFERENCE_MAX_WAITING", "0")
    assert InferenceSettings().max_waiting == 0
    monkeypatch.setenv("CHATPLANE_INFERENCE_MAX_WAITING", "-1")
    with pytest.raises(ValidationError):
        InferenceSettings()
