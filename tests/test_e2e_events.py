"""End to end: domain events from auth and conversation reach Kafka once and in order per key; the usage consumer
turns completions into usage that adds up; quotas set through the API are enforced (the real stack and model)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import httpx
import openai
import pytest
from sqlalchemy import MetaData

from chatplane.common import db
from chatplane.common.consumer import EventConsumer
from chatplane.common.events import TOPICS
from chatplane.common.outbox import processed_events_table

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"


async def signup(http: httpx.AsyncClient) -> tuple[str, dict[str, str], str]:
    """A new user: (user id, headers with a new API key, the key's id)."""
    email, password = f"events-{uuid.uuid4().hex[:10]}@example.com", "correct horse battery staple"
    r = await http.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    token = (await http.post("/v1/auth/login", json={"email": email, "password": password})).json()["access_token"]
    r = await http.post("/v1/api-keys", json={"name": "events"}, headers={"Authorization": f"Bearer {token}"})
    key = r.json()
    return user_id, {"Authorization": f"Bearer {key['key']}"}, key["id"]


class Collector:
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.by_key: dict[str, list] = defaultdict(list)
        self.all: list = []

    async def __call__(self, session, env) -> None:
        if env.user_id == self.user_id:
            self.by_key[env.key].append(env)
            self.all.append(env)


async def test_every_event_type_arrives_once_in_order_per_key(stack, tmp_path):
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'consumer.db'}")
    metadata = MetaData()
    processed_events_table(metadata)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http:
        user_id, headers, key_id = await signup(http)
        collector = Collector(user_id)
        consumer = EventConsumer(stack.kafka_bootstrap_servers, f"e2e-{uuid.uuid4().hex[:8]}", TOPICS,
                                 db.sessionmaker(engine), collector, session_timeout_ms=6000)
        task = asyncio.create_task(consumer.run())
        try:
            second = (await http.post("/v1/api-keys", json={"name": "to revoke"}, headers=headers)).json()
            assert (await http.delete(f"/v1/api-keys/{second['id']}", headers=headers)).status_code == 200
            assert (await http.delete(f"/v1/api-keys/{second['id']}", headers=headers)).status_code == 200  # no event
            conv = (await http.post("/v1/conversations", json={"title": "events"}, headers=headers)).json()["id"]
            r = await http.post(f"/v1/conversations/{conv}/messages", json={"content": "Hi", "max_tokens": 8},
                                headers=headers)
            assert r.status_code == 201, r.text
            r = await http.post("/v1/chat/completions", headers=headers, json={
                "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
            assert r.status_code == 200, r.text
            chat_id = r.json()["id"]
            assert (await http.delete(f"/v1/conversations/{conv}", headers=headers)).status_code == 200

            deadline = time.monotonic() + 90
            while len(collector.all) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # a duplicate would show up now
        finally:
            consumer.stop()
            await asyncio.gather(task, return_exceptions=True)
            await consumer.close()
            await engine.dispose()

    assert len({e.event_id for e in collector.all}) == len(collector.all)  # once each
    user_events = [e.type for e in collector.by_key[user_id]]
    # Auth topic and usage topic share the user key but not the partition order; check each topic's order.
    auth_events = [t for t in user_events if not t.startswith("completion")]
    assert auth_events == ["user.signed_up", "api_key.created", "api_key.created", "api_key.revoked"]
    conv_events = collector.by_key[conv]
    assert [e.type for e in conv_events] == [
        "conversation.created", "message.stored", "message.stored", "conversation.deleted"]
    assert [e.message_stored.role for e in conv_events[1:3]] == ["user", "assistant"]
    assert [e.message_stored.seq for e in conv_events[1:3]] == [1, 2]
    completions = [e.completion_finished for e in collector.by_key[user_id] if e.type == "completion.finished"]
    assert sorted(c.path for c in completions) == ["chat", "conversation"]
    for c in completions:
        assert c.api_key_id == key_id and c.model == MODEL and c.prompt_tokens > 0 and c.completion_tokens > 0
        assert c.finish_reason in ("stop", "length") and c.latency_ms >= c.ttft_ms > 0
    assert next(c for c in completions if c.path == "chat").request_id == chat_id
    assert next(c for c in completions if c.path == "conversation").conversation_id == conv


async def test_usage_adds_up_and_quotas_are_enforced(stack):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http:
        user_id, headers, key_id = await signup(http)
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=headers["Authorization"][7:],
                                    max_retries=0)
        expected = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for content in ("Hi", "What is the capital of France?", "Name a colour."):
            reply = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=6)
            expected["requests"] += 1
            expected["prompt_tokens"] += reply.usage.prompt_tokens
            expected["completion_tokens"] += reply.usage.completion_tokens
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                expected["requests"] += 1
                expected["prompt_tokens"] += chunk.usage.prompt_tokens
                expected["completion_tokens"] += chunk.usage.completion_tokens

        deadline = time.monotonic() + 60
        while True:
            usage = (await http.get("/v1/usage", headers=headers)).json()
            totals = {k: usage["totals"][k] for k in expected}
            if totals == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert totals == expected
        assert {(row["api_key_id"], row["model"]) for row in usage["data"]} == {(key_id, MODEL)}

        # A quota on the key with what is used so far as its budget: the next request is refused.
        used = expected["prompt_tokens"] + expected["completion_tokens"]
        r = await http.put(f"/v1/quotas/api-keys/{key_id}", json={"period": "day", "token_limit": used},
                           headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["used_tokens"] == used
        with pytest.raises(openai.RateLimitError) as err:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=6)
        assert err.value.code == "insufficient_quota"
        # Non-admins cannot see everyone's usage.
        assert (await http.get("/v1/admin/usage", headers=headers)).status_code == 403
