"""The inference fleet with real inference processes (synthetic engine): discovery, failover before the first token,
a reply continued on another replica when its replica is killed mid-stream, drain on SIGTERM, and the same through
the gateway. The continuation with the real engine is in test_fleet_engine.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatplane.common.inference import InferenceClient
from chatplane.common.inference import metrics as client_metrics
from chatplane.dev.procs import Service, free_port, grpc_serving
from chatplane.protos.inference.v1 import inference_pb2 as pb


class Replica:
    """An inference process with the synthetic engine on a free port."""

    def __init__(self, tmp: Path, tokens_per_second: float = 100.0, **env: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.service = Service(
            f"inference-{self.port}",
            "chatplane.inference",
            {
                "CHATPLANE_DATA_DIR": str(tmp),
                "CHATPLANE_INFERENCE_ENGINE": "synthetic",
                "CHATPLANE_INFERENCE_PORT": str(self.port),
                "CHATPLANE_INFERENCE_METRICS_PORT": "0",
                "CHATPLANE_INFERENCE_SYNTHETIC_TOKENS_PER_SECOND": str(tokens_per_second),
                "CHATPLANE_INFERENCE_SHUTDOWN_GRACE_SECONDS": "20",
                **env,
            },
            lambda: grpc_serving(self.address),
            tmp / f"inference-{self.port}.log",
        )

    def start(self) -> Replica:
        self.service.start()
        return self

    def wait(self) -> Replica:
        self.service.wait_ready(60)
        return self

    def kill(self) -> None:
        assert self.service.proc is not None
        self.service.proc.send_signal(signal.SIGKILL)
        self.service.proc.wait(10)

    def stop(self) -> None:
        self.service.stop(10)


@pytest.fixture
def replicas(tmp_path) -> Iterator:
    started: list[Replica] = []

    def make(n: int, **kw) -> list[Replica]:
        new = [Replica(tmp_path, **kw).start() for _ in range(n)]
        started.extend(new)
        return [r.wait() for r in new]

    yield make
    for r in started:
        with contextlib.suppress(Exception):
            r.stop()


@contextlib.asynccontextmanager
async def client_for(target: str, **kw) -> AsyncIterator[InferenceClient]:
    client = InferenceClient(target, timeout=10, stream_timeout=60, **kw)
    client.start()
    try:
        assert await client.ready(5), "no replica became ready"
        yield client
    finally:
        await client.close()


def request(text: str = "Tell me a story", max_tokens: int = 40, seed: int = 11) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(max_tokens=max_tokens, seed=seed),
        request_id="test",
    )


async def all_serving(client: InferenceClient, count: int, timeout: float = 20) -> None:
    """Until the client sees ``count`` serving replicas (their health watches answer in their own time)."""
    deadline = time.monotonic() + timeout
    while sum(r.serving for r in client.pools[0].replicas.values()) < count:
        assert time.monotonic() < deadline, "the replicas did not all become serving"
        await asyncio.sleep(0.02)


async def collect(gen) -> tuple[str, pb.GenerateResponse]:
    parts, last = [], None
    async for reply in gen:
        parts.append(reply.text)
        last = reply
    return "".join(parts), last


async def cut_after(gen, parts: list[str], words: int, pair) -> tuple[str, pb.GenerateResponse]:
    """Read into ``parts`` until ``words`` words came, kill the replica serving ``gen``, read the rest (which must
    come from the other)."""
    while len("".join(parts).split()) < words:
        parts.append((await gen.read()).text)
    victim = pair[0] if gen.replica.address == pair[0].address else pair[1]
    victim.kill()
    rest, last = await collect(gen)
    assert gen.replica.address != victim.address
    return rest, last


def failovers(stage: str) -> float:
    return sum(
        s.value for m in client_metrics.FAILOVERS.collect() for s in m.samples
        if s.name.endswith("_total") and s.labels.get("stage") == stage
    )


async def test_requests_spread_over_the_replicas_and_a_new_replica_gets_traffic(replicas, tmp_path):
    first = replicas(2, tokens_per_second=200)
    listing = tmp_path / "replicas"
    listing.write_text("\n".join(r.address for r in first))
    async with client_for(f'[{{"target": "file://{listing}", "policy": "least_loaded"}}]',
                          discovery_interval=0.2) as client:
        await all_serving(client, 2)
        gens = [client.generate(request(max_tokens=20)) for _ in range(12)]
        firsts = await asyncio.gather(*(g.read() for g in gens))
        assert all(f.text for f in firsts)
        by_replica = {}
        for g in gens:
            by_replica[g.replica.address] = by_replica.get(g.replica.address, 0) + 1
        assert by_replica == {first[0].address: 6, first[1].address: 6}  # least loaded: evenly
        await asyncio.gather(*(collect(g) for g in gens))

        third = replicas(1, tokens_per_second=200)[0]
        listing.write_text("\n".join(r.address for r in [*first, third]))
        joined = time.monotonic()
        while True:
            gens = [client.generate(request(max_tokens=20)) for _ in range(6)]
            await asyncio.gather(*(g.read() for g in gens))
            used = {g.replica.address for g in gens}
            await asyncio.gather(*(collect(g) for g in gens))
            if third.address in used:
                break
            assert time.monotonic() - joined < 10, "the new replica got no request within 10 s"
            await asyncio.sleep(0.1)


async def test_a_replica_lost_before_the_first_token_is_unseen(replicas):
    # A long prefill: the replica is killed while it has not produced a token yet.
    slow, fast = replicas(1, tokens_per_second=100, CHATPLANE_INFERENCE_SYNTHETIC_PROMPT_TOKEN_SECONDS="0.2")[0], \
        replicas(1, tokens_per_second=100)[0]
    async with client_for(f"{slow.address},{fast.address}") as client:
        await all_serving(client, 2)
        key = next(k for k in (f"session:{i}" for i in range(100))
                   if client.pools[0].picker.pick(list(client.pools[0].replicas.values()), k)[0].address
                   == slow.address)
        before = failovers("before_first_token")
        gen = client.generate(request(max_tokens=10), key=key)
        reading = asyncio.create_task(collect(gen))
        await asyncio.sleep(0.5)
        assert gen.replica.address == slow.address
        slow.kill()
        text, last = await asyncio.wait_for(reading, 20)
        assert gen.replica.address == fast.address
        assert last.finish_reason == "length" and last.usage.completion_tokens == 10
        assert len(text.split()) == 10
        assert failovers("before_first_token") == before + 1


async def test_a_reply_cut_off_mid_stream_continues_on_another_replica_as_if_nothing_happened(replicas):
    a, b = replicas(2, tokens_per_second=40)
    async with client_for(f"{a.address},{b.address}") as client:
        await all_serving(client, 2)
        reference, ref_last = await collect(client.generate(request(max_tokens=60, seed=5)))
        before = failovers("mid_stream")
        gen = client.generate(request(max_tokens=60, seed=5), key="conversation:cut")
        parts = [(await gen.read()).text]
        rest, last = await cut_after(gen, parts, 15, (a, b))
        # The synthetic engine continues a prefix with the words the uninterrupted reply would have had: the client
        # read exactly the reply it would have read without the failure, with its usage.
        assert "".join(parts) + rest == reference
        assert last.finish_reason == "length"
        assert last.usage.completion_tokens == 60
        assert last.usage.prompt_tokens == ref_last.usage.prompt_tokens
        assert failovers("mid_stream") == before + 1


async def test_a_fitted_reply_cut_off_mid_stream_continues_within_its_budget(replicas):
    """A conversation's request (inference fits its history; the reply budget is the fit's default) continued
    elsewhere keeps the partial reply with the new message and what is left of the budget."""
    a, b = replicas(2, tokens_per_second=40)

    def fitted() -> pb.GenerateRequest:
        chat = pb.ChatMessages(messages=[
            pb.ChatMessage(role="system", content="Be brief."), pb.ChatMessage(role="user", content="Hello"),
            pb.ChatMessage(role="assistant", content="Hi there"), pb.ChatMessage(role="user", content="A story?"),
        ])
        return pb.GenerateRequest(chat=chat, sampling=pb.SamplingParams(seed=7), request_id="fit",
                                  fit=pb.FitHistory(keep_first=1, keep_last=1, default_max_tokens=50))

    async with client_for(f"{a.address},{b.address}") as client:
        await all_serving(client, 2)
        reference, ref_last = await collect(client.generate(fitted()))
        gen = client.generate(fitted(), key="conversation:fitted")
        first = await gen.read()
        parts = [first.text]
        rest, last = await cut_after(gen, parts, 12, (a, b))
        assert first.prompt_tokens == ref_last.usage.prompt_tokens and first.dropped_messages == 0
        assert "".join(parts) + rest == reference
        assert (last.finish_reason, last.usage.completion_tokens) == ("length", 50)
        assert last.usage.prompt_tokens == ref_last.usage.prompt_tokens


async def test_a_draining_replica_finishes_its_streams_and_gets_no_new_ones(replicas):
    a, b = replicas(2, tokens_per_second=20)
    async with client_for(f"{a.address},{b.address}") as client:
        await all_serving(client, 2)
        gen = client.generate(request(max_tokens=30), key="session:drain")
        first = await gen.read()
        draining = a if gen.replica.address == a.address else b
        other = b if draining is a else a
        reading = asyncio.create_task(collect(gen))
        draining.service.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # its health says NOT_SERVING at once
        news = [client.generate(request(max_tokens=3)) for _ in range(5)]
        await asyncio.gather(*(collect(g) for g in news))
        assert {g.replica.address for g in news} == {other.address}
        rest, last = await asyncio.wait_for(reading, 20)
        assert gen.replica.address == draining.address and gen.failovers == 0  # finished where it started
        assert len((first.text + rest).split()) == 30 and last.finish_reason == "length"
        assert draining.service.proc.wait(15) == 0  # and then the replica exits


async def test_nothing_to_fail_over_to_is_a_clear_error(replicas):
    (only,) = replicas(1, tokens_per_second=40)
    async with client_for(only.address) as client:
        gen = client.generate(request(max_tokens=60))
        await gen.read()
        only.kill()
        from chatplane.common.errors import ServiceError

        with pytest.raises(ServiceError) as err:
            await collect(gen)
        assert err.value.status.name == "UNAVAILABLE"


async def test_unknown_models_are_not_found_and_models_are_listed(replicas):
    (only,) = replicas(1)
    async with client_for(only.address) as client:
        assert [m.id for m in await client.wait_models()] == ["synthetic"]
        assert await client.model("nope") is None
        from chatplane.common.errors import ServiceError

        with pytest.raises(ServiceError) as err:
            await client.generate(pb.GenerateRequest(model="nope", prompt="hi")).read()
        assert (err.value.status.name, err.value.code) == ("NOT_FOUND", "model_not_found")


if os.environ.get("CHATPLANE_FLEET_DEBUG"):  # pragma: no cover - a switch for looking at the replicas' logs
    pass
