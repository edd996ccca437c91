"""End to end over plain HTTP: accounts, keys, credentials, and the error contract of the public API."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests_support import assert_openai_error

pytestmark = pytest.mark.engine


async def test_health_and_readiness(http):
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200
    assert (await http.get("/openapi.json")).json()["paths"]["/v1/chat/completions"]


async def test_signup_login_and_errors(http):
    email = f"New-{uuid.uuid4().hex[:8]}@Example.com"
    r = await http.post("/v1/auth/signup", json={"email": email, "password": "a long password"})
    assert r.status_code == 201 and "password" not in r.text
    r = await http.post("/v1/auth/signup", json={"email": email.lower(), "password": "another password"})
    assert_openai_error(r, 409)
    r = await http.post("/v1/auth/login", json={"email": email, "password": "a long password"})
    assert r.status_code == 200 and r.json()["token_type"] == "bearer" and r.json()["expires_in"] > 0
    wrong = await http.post("/v1/auth/login", json={"email": email, "password": "not the password"})
    unknown = await http.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever1"})
    assert_openai_error(wrong, 401)
    assert_openai_error(unknown, 401)
    assert wrong.json() == unknown.json()  # nothing tells which emails exist
    assert_openai_error(await http.post("/v1/auth/signup", json={"email": "x@y.z", "password": "short"}), 400, 422)
    assert_openai_error(await http.post("/v1/auth/signup", json={"email": "not-an-email", "password": "long enough"}),
                        400, 422)


async def test_api_keys_are_shown_once_and_listed_by_prefix(http, account):
    jwt_headers = {"Authorization": f"Bearer {account.token}"}
    made = (await http.post("/v1/api-keys", json={"name": "listing"}, headers=jwt_headers)).json()
    assert made["key"].startswith(made["prefix"])
    listed = (await http.get("/v1/api-keys", headers=jwt_headers)).json()["data"]
    mine = next(k for k in listed if k["id"] == made["id"])
    assert "key" not in mine and mine["prefix"] == made["prefix"]
    assert made["key"] not in json.dumps(listed)


async def test_credentials_are_checked(http, account, stack):
    assert_openai_error(await http.get("/v1/models"), 401)
    assert_openai_error(await http.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)
    assert_openai_error(await http.get("/v1/models", headers={"Authorization": "Bearer cp-nope"}), 401)
    assert (await http.get("/v1/models", headers={"Authorization": f"Bearer {account.token}"})).status_code == 200

    head, payload, sig = account.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "someone-else"}).encode()).rstrip(b"=").decode()
    tampered = f"{head}.{forged}.{sig}"
    assert_openai_error(await http.get("/v1/models", headers={"Authorization": f"Bearer {tampered}"}), 401)

    key = serialization.load_pem_private_key((Path(stack.data_dir) / "auth-jwt-key.pem").read_bytes(), None)
    expired = jwt.encode(
        {**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
        key, algorithm="EdDSA", headers={"kid": jwt.get_unverified_header(account.token)["kid"]},
    )
    assert_openai_error(await http.get("/v1/models", headers={"Authorization": f"Bearer {expired}"}), 401)


async def test_request_errors(http, account):
    h = {**account.headers, "Content-Type": "application/json"}
    assert_openai_error(await http.post("/v1/chat/completions", content=b'{"model": ', headers=h), 400)
    assert_openai_error(
        await http.post("/v1/chat/completions", json={"model": "m", "messages": "not a list"}, headers=account.headers),
        422,
    )
    huge = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]})
    assert_openai_error(await http.post("/v1/chat/completions", content=huge, headers=h), 413)
    r = await http.post(
        "/v1/chat/completions",
        json={"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1},
        headers=account.headers,
    )
    assert_openai_error(r, 400)
    assert "frobnicate" in r.json()["error"]["message"]
    assert_openai_error(await http.get("/v1/no-such-route", headers=account.headers), 404)
