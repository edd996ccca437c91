"""Usage never lost, and what was processed is charged, through the real stack: finished stateless completions go
from the gateway's durable spool to Kafka to the usage table, whatever auth and the gateway do meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc
from tests_support import eventually

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
OUTAGE_SECONDS = 30


async def _usage(http: httpx.AsyncClient, account) -> dict:
    r = await http.get("/v1/usage", headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()["totals"]


@pytest.mark.timeout(400)
async def test_usage_equals_what_clients_received_through_an_auth_outage_and_a_gateway_restart(
    stack, gateway_replica, fresh_account, http, tmp_path
):
    account = fresh_account
    data = str(tmp_path / "gateway-data")  # the replica's spool survives its restart
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}
    received = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    failed: list[int] = []
    url: dict[str, str | None] = {"now": None}
    stop = asyncio.Event()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            while not stop.is_set():
                if url["now"] is None:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    r = await c.post(f"{url['now']}/v1/chat/completions", json=body, headers=account.headers)
                except httpx.HTTPError:
                    failed.append(0)  # the gateway went away meanwhile: nothing received
                    await asyncio.sleep(0.1)
                    continue
                if r.status_code == 200:
                    usage = r.json()["usage"]
                    received["requests"] += 1
                    received["prompt_tokens"] += usage["prompt_tokens"]
                    received["completion_tokens"] += usage["completion_tokens"]
                else:
                    failed.append(r.status_code)  # 503 while auth is away and the key is not cached
                    await asyncio.sleep(0.2)

    clients = [asyncio.create_task(client()) for _ in range(2)]
    auth = stack.service("auth")
    try:
        with gateway_replica(CHATPLANE_DATA_DIR=data) as first:
            url["now"] = first
            await eventually(lambda: _ready(received, 4), timeout=60)
            auth.stop()  # auth away for 30 s: the stateless path needs it only for keys it has not cached
            outage = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS / 2)
            url["now"] = None
        # The gateway restarted (SIGTERM: in-flight requests finish, the spool stays on disk) while auth is away (so
        # it is alive, not ready).
        with gateway_replica(ready_path="/healthz", CHATPLANE_DATA_DIR=data) as second:
            url["now"] = second
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage)))
            auth.start()
            auth.wait_ready(120)
            before = received["requests"]
            await eventually(lambda: _ready(received, before + 4), timeout=60)
            stop.set()
            await asyncio.gather(*clients)
    finally:
        stop.set()
        if auth.proc is None or auth.proc.poll() is not None:
            auth.start()
            auth.wait_ready(120)
        # The stack's own gateway sees auth again before the next test.
        await eventually(lambda: _ok(http, "/readyz"), timeout=60, interval=0.5)
    assert received["requests"] >= 8

    async def settled():
        totals = await _usage(http, account)
        return totals if totals["requests"] >= received["requests"] else None

    totals = await eventually(settled, timeout=90, interval=0.5)
    print(f"received {received}, usage {totals}, failed requests {len(failed)}")
    assert totals["requests"] == received["requests"]
    assert totals["prompt_tokens"] == received["prompt_tokens"]
    assert totals["completion_tokens"] == received["completion_tokens"]


async def _ready(received: dict, n: int) -> bool:
    return received["requests"] >= n


async def _ok(http: httpx.AsyncClient, path: str) -> bool:
    return (await http.get(path)).status_code == 200


def _generate_in_flight(metrics_port: int) -> float:
    """Generate calls the inference server is handling now (its own gRPC metric)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("chatplane_grpc_server_in_flight{") and 'grpc_method="Generate"' in line)


async def test_a_client_gone_before_the_first_token_is_charged_its_prompt(stack, fresh_account, http, tls_channel,
                                                                          inference_metrics_port):
    account = fresh_account
    long_prompt = "Tell me about the history of Paris. " * 150  # a prefill the engine takes a while over
    body = {"model": MODEL, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 20, "stream": True}

    async def leave_early() -> None:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as c:
            async with c.stream("POST", "/v1/chat/completions", json=body, headers=account.headers) as r:
                async for _ in r.aiter_bytes():
                    break

    async with tls_channel(stack.inference) as chan:
        engine = inference_pb2_grpc.InferenceServiceStub(chan)
        before = await asyncio.to_thread(_generate_in_flight, inference_metrics_port)
        task = asyncio.create_task(leave_early())

        async def in_the_engine():
            # The engine's own figures move only once its first step (the whole prefill) is done, which a slow CPU
            # takes longer than this wait over; the inference server handling the call is the same fact sooner.
            stats = await engine.GetEngineStats(inference_pb2.GetEngineStatsRequest())
            return stats.running + stats.waiting >= 1 or (
                await asyncio.to_thread(_generate_in_flight, inference_metrics_port) > before)

        await eventually(in_the_engine, timeout=30, interval=0.02)  # the prompt reached the engine; leave now
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    async def charged():
        totals = await _usage(http, account)
        return totals if totals["requests"] == 1 else None

    totals = await eventually(charged, timeout=60, interval=0.5)
    assert totals["prompt_tokens"] > 1000  # the prompt the engine was given, estimated
    assert totals["completion_tokens"] < 20
