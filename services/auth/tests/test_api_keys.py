"""API keys: shown once, stored hashed, authenticate, listed without the secret, revocable; SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC

import grpc
from sqlalchemy import select

from chatplane.auth.models import ApiKey
from chatplane.protos.auth.v1 import auth_pb2


async def stored_key(auth, api_key_id: str) -> ApiKey:
    async with auth.server.core.sessions() as session:
        return await session.get(ApiKey, api_key_id)


async def test_api_key_lifecycle(auth, fails):
    user = await auth.sign_up("keys@example.com")
    created = await auth.create_key(user.id, "my laptop")
    key = created.key
    assert key.startswith("cp-") and len(key) >= 40
    assert created.api_key.prefix == key[:12]
    assert created.api_key.name == "my laptop"
    assert not created.api_key.HasField("last_used_at") and not created.api_key.HasField("revoked_at")

    principal = await auth.authenticate(key)
    assert principal.user_id == user.id and principal.email == "keys@example.com"
    assert principal.credential_type == auth_pb2.CREDENTIAL_TYPE_API_KEY
    assert principal.api_key_id == created.api_key.id
    assert principal.cache_ttl_seconds == 30

    (listed,) = await auth.list_keys(user.id)
    assert listed.id == created.api_key.id and listed.prefix == key[:12]
    assert key not in str(listed) and key.encode() not in listed.SerializeToString()

    row = await stored_key(auth, created.api_key.id)
    assert row.key_hash != key and key not in row.key_hash
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()

    revoked = await auth.revoke(user.id, created.api_key.id)
    assert revoked.HasField("revoked_at")
    failure = await fails(auth.authenticate(key))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.message == "invalid API key"
    assert key not in failure.message and key[3:] not in failure.message

    # revoking again is fine and keeps the first revocation time
    again = await auth.revoke(user.id, created.api_key.id)
    assert again.revoked_at == revoked.revoked_at
    (listed,) = await auth.list_keys(user.id)
    assert listed.revoked_at == revoked.revoked_at


async def test_unknown_keys_and_garbage_credentials_are_unauthenticated(auth, fails):
    user = await auth.sign_up("garbage@example.com")
    key = (await auth.create_key(user.id)).key
    bad = ["cp-" + "x" * 43, key[:-1], key + "x", key.upper(), "", "Bearer " + key, "'; DROP TABLE api_keys;--"]
    for credential in bad:
        failure = await fails(auth.authenticate(credential))
        assert failure.code == grpc.StatusCode.UNAUTHENTICATED, credential
    assert (await auth.authenticate(key)).user_id == user.id


async def test_another_users_key_cannot_be_revoked(auth, fails):
    alice = await auth.sign_up("alice@example.com")
    mallory = await auth.sign_up("mallory@example.com")
    alice_key = await auth.create_key(alice.id)

    failure = await fails(auth.revoke(mallory.id, alice_key.api_key.id))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    for unknown_id in [uuid.uuid4().hex, "not-an-id", "'; DELETE FROM api_keys;--", ""]:
        assert (await fails(auth.revoke(alice.id, unknown_id))).code == grpc.StatusCode.NOT_FOUND

    assert (await auth.authenticate(alice_key.key)).user_id == alice.id
    (listed,) = await auth.list_keys(alice.id)
    assert not listed.HasField("revoked_at")
    assert await auth.list_keys(mallory.id) == []


async def test_last_used_at_is_written_at_most_once_per_interval(auth):
    user = await auth.sign_up("used@example.com")
    created = await auth.create_key(user.id)
    assert (await stored_key(auth, created.api_key.id)).last_used_at is None

    await auth.authenticate(created.key)
    first = (await stored_key(auth, created.api_key.id)).last_used_at
    assert first is not None and first.tzinfo is not None

    auth.clock.advance(5)
    await auth.authenticate(created.key)
    assert (await stored_key(auth, created.api_key.id)).last_used_at == first  # no write per request
    (listed,) = await auth.list_keys(user.id)
    assert listed.last_used_at.ToDatetime(tzinfo=UTC) == first

    auth.clock.advance(auth.settings.last_used_update_interval_seconds)
    await auth.authenticate(created.key)
    later = (await stored_key(auth, created.api_key.id)).last_used_at
    assert later > first


async def test_keys_are_listed_newest_first(auth):
    user = await auth.sign_up("list@example.com")
    for name in ["first", "second", "third"]:
        await auth.create_key(user.id, name)
        auth.clock.advance(1)
    assert [k.name for k in await auth.list_keys(user.id)] == ["third", "second", "first"]


async def test_unknown_user_is_not_found(auth, fails):
    for call in [auth.create_key(uuid.uuid4().hex), auth.list_keys(uuid.uuid4().hex), auth.create_key("nope")]:
        failure = await fails(call)
        assert failure.code == grpc.StatusCode.NOT_FOUND
    async with auth.server.core.sessions() as session:
        assert (await session.scalars(select(ApiKey))).all() == []
