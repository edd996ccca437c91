"""Sign-up, login, JWTs verified locally, the API key cache, and API key management."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import jwt

from chatplane.common import limits


async def test_signup_and_login_give_a_working_jwt(client, fakes):
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    resp = await client.post("/v1/auth/signup", json={"email": email, "password": "correct horse battery"})
    assert resp.status_code == 201, resp.text
    user = resp.json()
    assert set(user) == {"id", "object", "email", "created_at"}
    assert user["object"] == "user" and user["email"] == email and isinstance(user["created_at"], int)

    resp = await client.post("/v1/auth/login", json={"email": email, "password": "wrong password"})
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "Incorrect email or password."

    resp = await client.post("/v1/auth/login", json={"email": email, "password": "correct horse battery"})
    assert resp.status_code == 200
    token = resp.json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 600

    headers = {"Authorization": f"Bearer {token['access_token']}"}
    for _ in range(3):
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
    # Verified locally: auth was asked for its keys once, never to authenticate the token.
    assert fakes.auth.authenticate_calls == 0
    assert fakes.auth.jwks_calls == 1
    # And the JWT's subject is the caller.
    resp = await client.post("/v1/conversations", json={"title": "mine"}, headers=headers)
    assert fakes.conversation.conversations[resp.json()["id"]].user_id == user["id"]


async def test_expired_jwt_is_401(client, fakes):
    token = fakes.auth.sign("user-1", expires_in=-60)
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_tampered_jwt_is_401(client, fakes):
    token = fakes.auth.sign("user-1")
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = ".".join([header, _b64({**claims, "sub": "someone-else"}), signature])
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401
    assert forged not in resp.text
    # An unsigned token ("alg": "none", junk signature) is refused too.
    unsigned = ".".join([_b64({"alg": "none", "typ": "JWT", "kid": "key-1"}), _b64(claims), "AAAA"])
    assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {unsigned}"})).status_code == 401
    assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_jwt_of_another_issuer_or_audience_is_401(client, fakes):
    for claims in ({"iss": "evil"}, {"aud": "other-app"}):
        token = fakes.auth.sign("user-1", **claims)
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})).status_code == 401


async def test_jwt_signed_by_an_unknown_key_is_401(client, fakes):
    assert (await client.get("/v1/models", headers=bearer(fakes.auth.sign("u")))).status_code == 200
    # A forger's key under a known kid, and under a new kid.
    for kid in ("key-1", "key-forged"):
        token = fakes.auth.sign("user-1", key=fakes.auth.new_signing_key(kid, publish=False))
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})).status_code == 401


async def test_unknown_kid_refreshes_jwks_at_most_every_few_seconds(client, fakes, settings):
    assert (await client.get("/v1/models", headers=bearer(fakes.auth.sign("u")))).status_code == 200
    assert fakes.auth.jwks_calls == 1
    forged = fakes.auth.sign("u", key=fakes.auth.new_signing_key("unknown", publish=False))
    await asyncio.sleep(settings.jwks_refresh_seconds)
    for _ in range(5):
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
    assert fakes.auth.jwks_calls == 2  # one refetch for the unknown kid, not one per request


async def test_rotated_signing_key_is_picked_up(client, fakes, settings):
    assert (await client.get("/v1/models", headers=bearer(fakes.auth.sign("u")))).status_code == 200
    rotated = fakes.auth.new_signing_key("key-2", publish=True)
    await asyncio.sleep(settings.jwks_refresh_seconds)
    token = fakes.auth.sign("u", key=rotated)
    assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_api_key_answers_are_cached(client, fakes, auth_headers):
    for _ in range(2):
        assert (await client.get("/v1/models", headers=auth_headers)).status_code == 200
    assert fakes.auth.authenticate_calls == 1


async def test_cache_respects_the_ttl_auth_gives(client, fakes, auth_headers):
    fakes.auth.cache_ttl_seconds = 0
    for _ in range(2):
        assert (await client.get("/v1/models", headers=auth_headers)).status_code == 200
    assert fakes.auth.authenticate_calls == 2


async def test_revoking_a_key_drops_it_from_the_cache(client, fakes, user_key, auth_headers):
    other = fakes.auth.add_key(user_key.user_id, "second")
    other_headers = {"Authorization": f"Bearer {other.secret}"}
    assert (await client.get("/v1/models", headers=other_headers)).status_code == 200  # now cached
    resp = await client.delete(f"/v1/api-keys/{other.id}", headers=auth_headers)
    assert resp.status_code == 200, resp.text
    revoked = resp.json()
    assert revoked["id"] == other.id and revoked["object"] == "api_key"
    assert isinstance(revoked["revoked_at"], int)
    assert "key" not in revoked
    assert (await client.get("/v1/models", headers=other_headers)).status_code == 401
    # The caller's own key is still cached and fine.
    calls = fakes.auth.authenticate_calls
    assert (await client.get("/v1/models", headers=auth_headers)).status_code == 200
    assert fakes.auth.authenticate_calls == calls


async def test_a_key_can_revoke_itself(client, fakes, user_key, auth_headers):
    assert (await client.delete(f"/v1/api-keys/{user_key.id}", headers=auth_headers)).status_code == 200
    assert (await client.get("/v1/models", headers=auth_headers)).status_code == 401


async def test_api_key_lifecycle(client, fakes, user_key, auth_headers):
    resp = await client.post("/v1/api-keys", json={"name": "laptop"}, headers=auth_headers)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert set(created) == {"id", "object", "name", "prefix", "key", "created_at", "last_used_at", "revoked_at"}
    assert created["object"] == "api_key" and created["name"] == "laptop"
    assert created["last_used_at"] is None and created["revoked_at"] is None
    assert created["key"].startswith(created["prefix"])

    new_headers = {"Authorization": f"Bearer {created['key']}"}
    listed = (await client.get("/v1/api-keys", headers=new_headers)).json()
    assert listed["object"] == "list"
    assert {k["id"] for k in listed["data"]} == {user_key.id, created["id"]}
    assert all("key" not in k for k in listed["data"])
    assert created["key"] not in json.dumps(listed)


async def test_revoking_another_users_key_is_404(client, fakes, auth_headers):
    stranger = fakes.auth.add_key(fakes.auth.add_user("stranger@example.com"))
    resp = await client.delete(f"/v1/api-keys/{stranger.id}", headers=auth_headers)
    assert resp.status_code == 404
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert stranger.revoked_at is None


async def test_api_key_name_limits(client, auth_headers):
    resp = await client.post("/v1/api-keys", json={"name": "x" * (limits.MAX_API_KEY_NAME_CHARS + 1)},
                             headers=auth_headers)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "name"
    resp = await client.post("/v1/api-keys", json={"name": "a\x00b"}, headers=auth_headers)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "name"


async def test_oversized_credential_is_401_without_a_call(client, fakes):
    headers = {"Authorization": "Bearer " + "k" * (limits.MAX_CREDENTIAL_CHARS + 1)}
    assert (await client.get("/v1/models", headers=headers)).status_code == 401
    assert fakes.auth.authenticate_calls == 0
