"""Rate limits and quotas at the gateway: the edges (exactly at the limit, one over, the window refilling), OpenAI's
headers and errors, in-process and in Redis; two gateway processes sharing one Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from chatplane.dev.procs import free_port
from chatplane.protos.auth.v1 import auth_pb2

REDIS_URL = os.environ.get("CHATPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def chat(content: str = "Hi", **extra) -> dict:
    return {"model": "test-model", "messages": [{"role": "user", "content": content}], **extra}


def prompt_estimate(content: str = "Hi") -> int:
    """What the gateway estimates for a one-message prompt without a tokenizer call (see metering.rough_tokens)."""
    return -(-len(content) // 4) + 4


@pytest.fixture(params=["in-process", "redis"])
def limiter_settings(request, settings):
    """The gateway's settings with the in-process limiter or with Redis (a key prefix of its own per test)."""
    if request.param == "redis":
        return settings.model_copy(update={"redis_url": REDIS_URL, "redis_key_prefix": f"cp-test-{uuid.uuid4().hex}:"})
    return settings


def new_key(fakes) -> tuple[str, dict[str, str]]:
    user_id = fakes.auth.add_user(f"{uuid.uuid4().hex[:8]}@example.com")
    key = fakes.auth.add_key(user_id)
    return user_id, {"Authorization": f"Bearer {key.secret}"}


async def test_requests_per_minute_exactly_at_the_limit_then_429(make_client, limiter_settings, fakes):
    settings = limiter_settings.model_copy(update={"rate_limit_requests_per_minute": 3,
                                                   "rate_limit_tokens_per_minute": 0})
    _, headers = new_key(fakes)
    async with make_client(settings) as client:
        remaining = []
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json=chat(), headers=headers)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert remaining == [2, 1, 0]
        r = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert r.status_code == 429
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 20  # one request comes back every 20 s
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        # Another key has its own budget.
        _, other = new_key(fakes)
        assert (await client.post("/v1/chat/completions", json=chat(), headers=other)).status_code == 200


async def test_the_window_refills_after_retry_after(make_client, limiter_settings, fakes):
    settings = limiter_settings.model_copy(update={"rate_limit_requests_per_minute": 120,
                                                   "rate_limit_tokens_per_minute": 0})
    _, headers = new_key(fakes)
    async with make_client(settings) as client:
        started = time.monotonic()
        statuses = [(await client.post("/v1/chat/completions", json=chat(), headers=headers)).status_code
                    for _ in range(125)]
        assert statuses[:120] == [200] * 120
        # Two requests a second come back: the five over the limit meet a 429 unless the burst took 2.5 s (a busy
        # machine), which the drain below covers.
        assert 429 in statuses[120:] or time.monotonic() - started > 2.4
        r = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        while r.status_code == 200:  # drain what refilled meanwhile
            r = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        wait_ms = int(r.headers["retry-after-ms"])
        assert 0 < wait_ms <= 500  # 2 requests a second come back
        await asyncio.sleep(wait_ms / 1000 + 0.05)
        assert (await client.post("/v1/chat/completions", json=chat(), headers=headers)).status_code == 200


async def test_tokens_per_minute_exactly_at_the_limit_and_one_over(make_client, limiter_settings, fakes):
    settings = limiter_settings.model_copy(update={"rate_limit_requests_per_minute": 0,
                                                   "rate_limit_tokens_per_minute": 100})
    async with make_client(settings) as client:
        _, at_limit = new_key(fakes)
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=100 - prompt_estimate()),
                              headers=at_limit)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-tokens"] == "100"
        assert r.headers["x-ratelimit-remaining-tokens"] == "0"
        _, one_over = new_key(fakes)
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=101 - prompt_estimate()),
                              headers=one_over)
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "tokens"
        assert "x-ratelimit-remaining-tokens" in r.headers and "retry-after" in r.headers


def day_quota(user_id: str, limit: int, used: int, api_key_id: str = "") -> auth_pb2.Quota:
    now = int(time.time())
    start, end = Timestamp(seconds=now - now % 86400), Timestamp(seconds=now - now % 86400 + 86400)
    return auth_pb2.Quota(user_id=user_id, api_key_id=api_key_id, period=auth_pb2.QUOTA_PERIOD_DAY,
                          token_limit=limit, used_tokens=used, period_start=start, period_end=end)


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_quota_admits_exactly_the_budget_and_settles_with_the_exact_usage(make_client, limiter_settings, fakes,
                                                                                 spooled):
    user_id, headers = new_key(fakes)
    fakes.auth.limits[user_id] = auth_pb2.Limits(quotas=[day_quota(user_id, limit=100, used=50)])
    prompt = fakes.count("Hi")  # counted by inference's CountTokens when a quota applies
    async with make_client(limiter_settings) as client:
        # 50 used + (prompt + max_tokens) = exactly 100: admitted.
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=50 - prompt), headers=headers)
        assert r.status_code == 200, r.text
        actual = r.json()["usage"]["total_tokens"]
        assert actual < 50  # the reply was shorter than reserved: settlement gives the rest back
        await wait_for(lambda: len(spooled()) == 1)
        await asyncio.sleep(0.1)
        left = 100 - 50 - actual
        # One token more than what is left: 429 insufficient_quota.
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=left - prompt + 1), headers=headers)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert r.json()["error"]["type"] == "insufficient_quota"
        # Exactly what is left: admitted.
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=left - prompt), headers=headers)
        assert r.status_code == 200, r.text


async def test_key_quota_applies_to_its_key_only(make_client, settings, fakes):
    user_id = fakes.auth.add_user(f"{uuid.uuid4().hex[:8]}@example.com")
    limited, free = fakes.auth.add_key(user_id), fakes.auth.add_key(user_id)
    fakes.auth.limits[user_id] = auth_pb2.Limits(quotas=[day_quota(user_id, 10, 10, api_key_id=limited.id)])
    async with make_client(settings) as client:
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=1),
                              headers={"Authorization": f"Bearer {limited.secret}"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=1),
                              headers={"Authorization": f"Bearer {free.secret}"})
        assert r.status_code == 200


async def test_finished_completions_are_recorded_with_their_usage(client, spooled, user_key, auth_headers):
    r = await client.post("/v1/chat/completions", json=chat(), headers=auth_headers)
    assert r.status_code == 200
    await wait_for(lambda: len(spooled()) == 1)
    done = spooled()[0]
    usage = r.json()["usage"]
    assert (done.prompt_tokens, done.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert (done.user_id, done.api_key_id, done.path, done.finish_reason) == (
        user_key.user_id, user_key.id, "chat", "stop")
    assert done.request_id == r.json()["id"] and done.model == "test-model" and done.latency_ms >= done.ttft_ms


# --- two gateway processes, one Redis ------------------------------------------------------------------------------


async def _start_gateway(fakes, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "chatplane.gateway"],
        env={**os.environ, **env, "CHATPLANE_GATEWAY_PORT": str(port), "CHATPLANE_GATEWAY_METRICS_PORT": "0",
             "CHATPLANE_DATA_DIR": tempfile.mkdtemp(prefix="gateway-"),
             "CHATPLANE_GATEWAY_AUTH_TARGET": fakes.targets["auth"],
             "CHATPLANE_GATEWAY_CONVERSATION_TARGET": fakes.targets["conversation"],
             "CHATPLANE_INFERENCE_POOLS": fakes.targets["inference"]},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


async def test_two_gateways_sharing_redis_never_admit_more_than_the_limit(fakes):
    limit = 10
    env = {"CHATPLANE_GATEWAY_REDIS_URL": REDIS_URL,
           "CHATPLANE_GATEWAY_REDIS_KEY_PREFIX": f"cp-test-{uuid.uuid4().hex}:",
           "CHATPLANE_GATEWAY_RATE_LIMIT_REQUESTS_PER_MINUTE": str(limit),
           "CHATPLANE_GATEWAY_RATE_LIMIT_TOKENS_PER_MINUTE": "0"}
    gateways = [await _start_gateway(fakes, env) for _ in range(2)]
    _, headers = new_key(fakes)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for proc, url in gateways:
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, "gateway exited"
                    try:
                        if (await http.get(f"{url}/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, "gateway not ready"
                    await asyncio.sleep(0.2)
            # A bounded burst, spread over both replicas at once.
            burst = [http.post(f"{gateways[i % 2][1]}/v1/chat/completions", json=chat(), headers=headers)
                     for i in range(4 * limit)]
            statuses = [r.status_code for r in await asyncio.gather(*burst)]
    finally:
        for proc, _ in gateways:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in gateways:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # The buckets refill by 1 every 6 s: within the burst, at most one more per replica may come back.
    assert limit <= admitted <= limit + 2
