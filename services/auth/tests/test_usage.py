"""Usage metering, quotas and limits in auth: events in the outbox, the usage consumer (real broker) with a crash
before its offset commit, quotas with their use, rate-limit overrides, the admin flag."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import select

from chatplane.auth.metering import USAGE_TOPICS, apply_event, apply_events
from chatplane.auth.models import outbox
from chatplane.common import db
from chatplane.common.consumer import EventConsumer
from chatplane.common.events import envelope
from chatplane.common.outbox import add_events
from chatplane.common.relay import OutboxRelay
from chatplane.protos.auth.v1 import auth_pb2
from chatplane.protos.events.v1 import events_pb2
from tests_support import CrashBeforeCommit, crash_before_commit


def today() -> str:
    return datetime.now(UTC).date().isoformat()


async def outbox_types(auth) -> list[str]:
    async with db.sessionmaker(auth.server.engine)() as session:
        return list((await session.scalars(select(outbox.c.event_type).order_by(outbox.c.id))).all())


async def test_state_changes_write_their_events(auth):
    user = await auth.sign_up(f"{uuid.uuid4().hex[:8]}@example.com")
    with pytest.raises(grpc.aio.AioRpcError):
        await auth.sign_up(user.email)  # refused: no second event
    key = await auth.create_key(user.id)
    for _ in range(2):  # revoking twice is one event
        await auth.stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(user_id=user.id, api_key_id=key.api_key.id))
    assert await outbox_types(auth) == ["user.signed_up", "api_key.created", "api_key.revoked"]


def completion(user_id: str, key_id: str, model: str, prompt: int, done: int) -> events_pb2.CompletionFinished:
    return events_pb2.CompletionFinished(request_id=uuid.uuid4().hex, user_id=user_id, api_key_id=key_id, model=model,
                                         prompt_tokens=prompt, completion_tokens=done, finish_reason="stop",
                                         path="chat", latency_ms=10, ttft_ms=5)


async def test_usage_consumer_crash_before_commit_counts_each_completion_once(auth, kafka_broker):
    user = await auth.sign_up(f"{uuid.uuid4().hex[:8]}@example.com")
    key = (await auth.create_key(user.id)).api_key.id
    sent = [completion(user.id, key, "m1", 10 + i, 3 + i) for i in range(6)]
    sent += [completion(user.id, "", "m2", 7, 2) for _ in range(3)]  # JWT caller: no key
    # As the gateway's spool publishes them, through auth's outbox here (the relay below is the broker's way in).
    envs = [envelope(c, producer="gateway") for c in sent]
    async with db.sessionmaker(auth.server.engine)() as session, session.begin():
        await add_events(session, envs)
    assert (await outbox_types(auth)).count("completion.finished") == len(sent)

    relay = OutboxRelay(auth.server.engine, kafka_broker.bootstrap_servers, name=f"auth-{uuid.uuid4().hex[:6]}")
    assert await relay.publish_once() >= len(sent)
    await relay.stop()
    sessions = db.sessionmaker(auth.server.engine)
    group = f"usage-{uuid.uuid4().hex[:8]}"
    # As the usage consumer is built (usage_consumer.py): batches summed per usage row by apply_events.
    first = crash_before_commit(EventConsumer(kafka_broker.bootstrap_servers, group, USAGE_TOPICS, sessions,
                                              apply_event, session_timeout_ms=6000, batch_handler=apply_events))
    with pytest.raises(CrashBeforeCommit):
        await asyncio.wait_for(first.run(), 60)
    await first.close()
    assert first.processed > 0

    second = EventConsumer(kafka_broker.bootstrap_servers, group, USAGE_TOPICS, sessions, apply_event,
                           session_timeout_ms=6000, batch_handler=apply_events)
    task = asyncio.create_task(second.run())
    try:
        for _ in range(600):
            usage = await auth.stub.GetUsage(auth_pb2.GetUsageRequest(user_id=user.id, start_date=today(),
                                                                      end_date=today()))
            if sum(r.requests for r in usage.rows) >= len(sent) and second.skipped >= first.processed:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        usage = await auth.stub.GetUsage(auth_pb2.GetUsageRequest(user_id=user.id, start_date=today(),
                                                                  end_date=today()))
    finally:
        second.stop()
        await asyncio.gather(task, return_exceptions=True)
        await second.close()
    rows = {(r.api_key_id, r.model): r for r in usage.rows}
    assert set(rows) == {(key, "m1"), ("", "m2")}
    m1 = rows[(key, "m1")]
    assert (m1.requests, m1.prompt_tokens, m1.completion_tokens) == (
        6, sum(c.prompt_tokens for c in sent[:6]), sum(c.completion_tokens for c in sent[:6]))
    m2 = rows[("", "m2")]
    assert (m2.requests, m2.prompt_tokens, m2.completion_tokens) == (3, 21, 6)
    assert second.skipped >= first.processed  # redelivered, recognised, not counted again

    # Quotas report what was used in their period; the principal carries them with the key's rate limits.
    quota = await auth.stub.SetQuota(auth_pb2.SetQuotaRequest(user_id=user.id, api_key_id=key,
                                                              period=auth_pb2.QUOTA_PERIOD_MONTH, token_limit=1000))
    assert quota.used_tokens == m1.prompt_tokens + m1.completion_tokens
    await auth.stub.SetRateLimits(auth_pb2.SetRateLimitsRequest(
        api_key_id=key, rate_limits=auth_pb2.RateLimits(requests_per_minute=7)))
    limits = await auth.stub.GetLimits(auth_pb2.GetLimitsRequest(user_id=user.id, api_key_id=key))
    assert limits.rate_limits.requests_per_minute == 7 and not limits.is_admin
    assert [(q.api_key_id, q.token_limit) for q in limits.quotas] == [(key, 1000)]


async def test_quota_and_usage_input_is_checked(auth):
    user = await auth.sign_up(f"{uuid.uuid4().hex[:8]}@example.com")
    other = await auth.sign_up(f"{uuid.uuid4().hex[:8]}@example.com")
    other_key = (await auth.create_key(other.id)).api_key.id
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another user's key does not exist for this user
        await auth.stub.SetQuota(auth_pb2.SetQuotaRequest(user_id=user.id, api_key_id=other_key,
                                                          period=auth_pb2.QUOTA_PERIOD_DAY, token_limit=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.SetQuota(auth_pb2.SetQuotaRequest(user_id=user.id, token_limit=5))  # no period
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for start, end in (("2026-13-01", "2026-12-01"), ("2026-02-01", "2026-01-01"), ("x'; DROP TABLE", "")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth.stub.GetUsage(auth_pb2.GetUsageRequest(user_id=user.id, start_date=start, end_date=end))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_make_admin(auth):
    from chatplane.auth.admin import make_admin

    user = await auth.sign_up(f"{uuid.uuid4().hex[:8]}@example.com")
    assert await make_admin(auth.settings, user.email) == 0
    assert (await auth.stub.GetLimits(auth_pb2.GetLimitsRequest(user_id=user.id))).is_admin
    assert await make_admin(auth.settings, "nobody@example.com") == 1


async def test_a_batch_of_events_is_summed_per_usage_row(auth):
    user = await auth.sign_up(f"{uuid.uuid4().hex[:8]}@example.com")
    envs = [envelope(completion(user.id, "k1", "m", 10, 1), producer="gateway") for _ in range(3)]
    envs.append(envelope(completion(user.id, "", "m", 5, 2), producer="gateway"))
    envs.append(envelope(events_pb2.UserSignedUp(user_id=user.id), producer="auth"))  # not usage: ignored
    sessions = db.sessionmaker(auth.server.engine)
    async with sessions() as session, session.begin():
        await apply_events(session, envs)
    async with sessions() as session, session.begin():
        await apply_event(session, envs[0])  # one more on an existing row
    usage = await auth.stub.GetUsage(auth_pb2.GetUsageRequest(user_id=user.id, start_date=today(), end_date=today()))
    rows = {r.api_key_id: (r.requests, r.prompt_tokens, r.completion_tokens) for r in usage.rows}
    assert rows == {"k1": (4, 40, 4), "": (1, 5, 2)}
