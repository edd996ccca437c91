"""The gateway's request metrics as the routes report them: a stream's first token and the tokens after it, a 429's
reason, and the rate-limit headers on every answer to an admitted call (errors included)."""

from __future__ import annotations

import json
import uuid

import grpc
from prometheus_client import REGISTRY

from chatplane.common.errors import ServiceError


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ttft_count(**labels: str) -> float:
    """Streams measured with these labels, whatever the others (the model)."""
    return sum(s.value for m in REGISTRY.collect() if m.name == "chatplane_gateway_time_to_first_token_seconds"
               for s in m.samples if s.name.endswith("_count") and all(s.labels.get(k) == v for k, v in labels.items()))


def chat(content: str = "Hi", **extra) -> dict:
    return {"model": "test-model", "messages": [{"role": "user", "content": content}], **extra}


def new_key(fakes) -> tuple[str, dict[str, str]]:
    key = fakes.auth.add_key(fakes.auth.add_user(f"{uuid.uuid4().hex[:8]}@example.com"))
    return key.id, {"Authorization": f"Bearer {key.secret}"}


async def test_a_stream_reports_its_first_token_then_the_gaps_between_tokens(client, fakes):
    key_id, headers = new_key(fakes)
    route = "/v1/chat/completions"
    itl_before = sample("chatplane_gateway_inter_token_latency_seconds_count", route=route, model="test-model")
    r = await client.post(route, json=chat(stream=True), headers=headers)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    ttft = sample("chatplane_gateway_time_to_first_token_seconds_count", route=route, model="test-model",
                  api_key=key_id)
    assert ttft == 1
    itl = sample("chatplane_gateway_inter_token_latency_seconds_count", route=route, model="test-model")
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(tokens) > 1 and itl - itl_before == len(tokens) - 1


async def test_a_conversation_stream_reports_its_first_token(client, fakes, auth_headers, user_key):
    created = (await client.post("/v1/conversations", json={"title": "t"}, headers=auth_headers)).json()
    route = "/v1/conversations/{conversation_id}/messages"
    labels = {"route": route, "api_key": user_key.id}
    before = ttft_count(**labels)
    r = await client.post(f"/v1/conversations/{created['id']}/messages", json={"content": "Hi", "stream": True},
                          headers=auth_headers)
    assert r.status_code == 200 and "message.delta" in r.text
    assert ttft_count(**labels) - before == 1


async def test_a_rejection_is_counted_by_its_reason_and_an_error_after_admission_keeps_the_headers(
    make_client, settings, fakes
):
    key_id, headers = new_key(fakes)
    limited = settings.model_copy(update={"rate_limit_requests_per_minute": 2, "rate_limit_tokens_per_minute": 0})
    async with make_client(limited) as client:
        # Admitted, then inference fails: the 500 still tells the caller its budget.
        fakes.inference.engine.refusal = ServiceError(grpc.StatusCode.INTERNAL, "the engine failed")
        r = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert r.status_code == 500
        fakes.inference.engine.refusal = None
        assert r.headers["x-ratelimit-remaining-requests"] == "1"
        r = await client.post("/v1/chat/completions", json=chat(stream=True), headers=headers)
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
        r = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert sample("chatplane_gateway_rejections_total", reason="rate_limit_exceeded", api_key=key_id) == 1
    assert sample("chatplane_gateway_rejections_total", reason="other", api_key=key_id) == 0
