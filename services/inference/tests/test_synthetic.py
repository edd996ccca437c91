"""The synthetic engine: deterministic, paced, bounded like the real one, cancellable; and behind the real servicer."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import Sampling, create_engine
from chatplane.inference.server import build
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine, count_text
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

HELLO = [("user", "Hello, world!")]  # 4 words/marks + 4 template + 3 generation prompt = 11 tokens


def settings(**kw) -> InferenceSettings:
    return InferenceSettings(engine="synthetic", served_model_name="synthetic", **kw)


async def started(**kw) -> SyntheticEngine:
    engine = create_engine(settings(**kw))
    assert isinstance(engine, SyntheticEngine)
    await engine.start()
    return engine


async def run(engine: SyntheticEngine, sampling: Sampling, messages=HELLO) -> list:
    return [c async for c in engine.generate(messages=messages, prompt=None, sampling=sampling, request_id="r")]


def test_never_the_default_and_never_named_like_the_model(monkeypatch):
    monkeypatch.delenv("CHATPLANE_INFERENCE_ENGINE", raising=False)
    monkeypatch.delenv("CHATPLANE_INFERENCE_SERVED_MODEL_NAME", raising=False)
    assert InferenceSettings().engine == "vllm"
    monkeypatch.setenv("CHATPLANE_INFERENCE_ENGINE", "synthetic")
    assert InferenceSettings().engine == "synthetic"
    assert create_engine(InferenceSettings()).model_name == "synthetic"


async def test_streams_one_token_per_chunk_with_usage_on_the_last():
    engine = await started()
    chunks = await run(engine, Sampling(max_tokens=64))
    assert len(chunks) == 64
    assert all(c.text.startswith(" ") and len(c.text) > 1 for c in chunks)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * 63
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 11, 64)


async def test_same_seed_same_text_and_another_seed_another():
    engine = await started()
    text = lambda chunks: "".join(c.text for c in chunks)  # noqa: E731
    a = text(await run(engine, Sampling(max_tokens=20, seed=1)))
    assert a == text(await run(engine, Sampling(max_tokens=20, seed=1)))
    assert a != text(await run(engine, Sampling(max_tokens=20, seed=2)))


async def test_without_max_tokens_the_reply_has_the_configured_length_and_stops():
    engine = await started(synthetic_reply_tokens=5)
    chunks = await run(engine, Sampling())
    assert len(chunks) == 5 and chunks[-1].finish_reason == "stop"


async def test_a_script_is_the_reply_and_ends_it_like_the_end_of_text():
    engine = await started(synthetic_script=["Hello", " there", "!"])
    chunks = await run(engine, Sampling())
    assert [c.text for c in chunks] == ["Hello", " there", "!"] and chunks[-1].finish_reason == "stop"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (11, 3)
    assert len(await run(engine, Sampling(max_tokens=5))) == 3  # ends before the limit: "stop"
    cut = await run(engine, Sampling(max_tokens=2))
    assert "".join(c.text for c in cut) == "Hello there" and cut[-1].finish_reason == "length"
    # A continued reply goes on after the tokens it already has.
    go_on = [c async for c in engine.generate(messages=HELLO + [("assistant", "Hello there")], prompt=None,
                                              sampling=Sampling(), request_id="r", continue_final=True)]
    assert [c.text for c in go_on] == ["!"] and go_on[-1].finish_reason == "stop"


async def test_counts_tokens_with_a_simple_tokenizer_and_the_chat_template():
    engine = await started(max_model_len=100)
    assert count_text("Hello, world!") == 4
    assert engine.count_tokens(prompt="Hello, world!") == 4
    assert engine.count_tokens(messages=HELLO) == 11
    assert engine.count_tokens(messages=HELLO + [("assistant", "Hi")]) == 16
    assert engine.max_model_len == 100


async def test_rejects_what_does_not_fit_like_vllm():
    engine = await started(max_model_len=16)
    with pytest.raises(InvalidArgument) as err:
        await run(engine, Sampling(max_tokens=6))  # 11 + 6 > 16
    assert (err.value.code, err.value.param) == ("context_length_exceeded", "max_tokens")
    assert "maximum context length is 16 tokens" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        await run(engine, Sampling(), messages=[("user", "word " * 20)])
    assert err.value.param == "messages"
    assert len(await run(engine, Sampling(max_tokens=5))) == 5


async def test_stop_sequence_cuts_the_reply():
    engine = await started()
    full = "".join(c.text for c in await run(engine, Sampling(max_tokens=30, seed=3)))
    word = full.split()[5]
    chunks = await run(engine, Sampling(max_tokens=30, seed=3, stop=(word,)))
    text = "".join(c.text for c in chunks)
    assert text == full[: full.index(word)]
    assert chunks[-1].finish_reason == "stop"


async def test_paces_tokens_and_prefill():
    engine = await started(synthetic_tokens_per_second=100, synthetic_prompt_token_seconds=0.01)
    begin = time.monotonic()
    first = None
    async for _ in engine.generate(messages=HELLO, prompt=None, sampling=Sampling(max_tokens=11), request_id="r"):
        first = first or time.monotonic() - begin
    total = time.monotonic() - begin
    assert 0.1 <= first < 0.5  # 11 prompt tokens x 10 ms
    assert 0.2 <= total < 1.0  # then 10 more tokens at 100/s


async def test_as_fast_as_possible_is_fast():
    engine = await started()
    begin = time.monotonic()
    await run(engine, Sampling(max_tokens=1000))
    assert time.monotonic() - begin < 0.5


async def test_runs_max_num_seqs_at_once_and_queues_the_rest():
    engine = await started(max_num_seqs=2, synthetic_tokens_per_second=50)
    tasks = [asyncio.create_task(run(engine, Sampling(max_tokens=10))) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert (engine.load.running, engine.load.waiting) == (2, 1)
    assert engine.load.kv_cache_usage > 0
    await asyncio.gather(*tasks)
    assert (engine.load.running, engine.load.waiting, engine.load.aborted_total) == (0, 0, 0)
    assert engine.load.kv_cache_usage == 0


async def test_closing_the_stream_frees_the_slot_and_counts_an_abort():
    engine = await started(max_num_seqs=1, synthetic_tokens_per_second=50)
    stream = engine.generate(messages=HELLO, prompt=None, sampling=Sampling(max_tokens=100), request_id="r")
    await anext(stream)
    assert engine.load.running == 1
    await stream.aclose()
    assert (engine.load.running, engine.load.aborted_total) == (0, 1)
    assert len(await run(engine, Sampling(max_tokens=2))) == 2  # the one slot is free again


@pytest.fixture
async def synthetic_stub():
    engine = await started(synthetic_tokens_per_second=100)
    service, servicer = build(engine)
    port = await service.start("127.0.0.1:0")
    await service.grpc.set_serving(True)
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield engine, inference_pb2_grpc.InferenceServiceStub(chan)
    await chan.close()
    await service.server.stop(0)


def chat(text: str) -> pb.ChatMessages:
    return pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)])


async def test_behind_the_grpc_service(synthetic_stub):
    engine, stub = synthetic_stub
    models = await stub.ListModels(pb.ListModelsRequest())
    assert [m.id for m in models.models] == ["synthetic"]
    count = await stub.CountTokens(pb.CountTokensRequest(chat=chat("Hello, world!")))
    assert (count.token_count, count.max_model_len) == (11, 2048)
    replies = [r async for r in stub.Generate(pb.GenerateRequest(chat=chat("Hello, world!"),
                                                                sampling=pb.SamplingParams(max_tokens=8)))]
    # 100 tokens/s, faster than the default stream interval (20 ms): the first token alone, the rest in batches.
    assert replies[0].tokens == 1 and len(replies[0].text.split()) == 1
    assert sum(r.tokens for r in replies) == 8 == len("".join(r.text for r in replies).split())
    assert len(replies) < 8
    assert (replies[-1].usage.prompt_tokens, replies[-1].usage.completion_tokens) == (11, 8)
    assert replies[-1].model == "synthetic"


async def test_by_default_a_stream_of_20_tokens_a_second_goes_token_by_token():
    engine = await started(synthetic_tokens_per_second=20)  # a token every 50 ms, more than the default interval
    service, servicer = build(engine)
    port = await service.start("127.0.0.1:0")
    await service.grpc.set_serving(True)
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = inference_pb2_grpc.InferenceServiceStub(chan)
        replies = [r async for r in stub.Generate(pb.GenerateRequest(chat=chat("Hi"),
                                                                    sampling=pb.SamplingParams(max_tokens=6)))]
    finally:
        await chan.close()
        await service.server.stop(0)
    assert [r.tokens for r in replies] == [1] * 6
    assert replies[-1].usage.completion_tokens == 6


async def test_cancelled_rpc_aborts_the_synthetic_request(synthetic_stub):
    engine, stub = synthetic_stub
    call = stub.Generate(pb.GenerateRequest(chat=chat("Hi"), sampling=pb.SamplingParams(max_tokens=500)))
    await call.read()
    call.cancel()
    for _ in range(50):
        if engine.load.aborted_total:
            break
        await asyncio.sleep(0.02)
    stats = await stub.GetEngineStats(pb.GetEngineStatsRequest())
    assert (stats.running, stats.aborted_total) == (0, 1)


async def test_a_stream_interval_groups_tokens_but_never_holds_the_first_or_the_end():
    engine = await started(synthetic_tokens_per_second=200)  # a token every 5 ms: 40 tokens in about 200 ms
    service, servicer = build(engine, settings(stream_interval_ms=300))
    port = await service.start("127.0.0.1:0")
    await service.grpc.set_serving(True)
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    request = pb.GenerateRequest(chat=chat("Hi"), sampling=pb.SamplingParams(max_tokens=40))
    try:
        stub = inference_pb2_grpc.InferenceServiceStub(chan)
        clock = asyncio.get_running_loop().time
        started_at = clock()
        times, replies = [], []
        async for reply in stub.Generate(request):
            times.append(clock() - started_at)
            replies.append(reply)
    finally:
        await chan.close()
        await service.server.stop(0)
    # The first token alone and at once; the other 39 gathered while the first's interval ran; the stream's end
    # (at about 200 ms) went out when the engine finished, not when the 300 ms interval was over.
    assert [len(r.text.split()) for r in replies] == [1, 39]
    assert times[0] < 0.1
    assert times[1] < 0.28
    assert replies[-1].usage.completion_tokens == 40
