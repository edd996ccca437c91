"""Abuse limits through the real stack (auth, conversation, the real engine, Redis): login and sign-up throttled per
address and per account and shared by gateway replicas, per-user buckets shared by all of a user's keys, a cap on
keys, exports throttled; a revoked key refused by every replica within a second."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid

import httpx
import pytest

from tests_support import assert_openai_error, eventually

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
DEFAULT_LIMITS = {  # the gateway's defaults, in place of the shared stack's generous ones
    "CHATPLANE_GATEWAY_SIGNUPS_PER_HOUR_PER_ADDRESS": "20",
    "CHATPLANE_GATEWAY_LOGIN_ATTEMPTS_PER_MINUTE_PER_ADDRESS": "30",
    "CHATPLANE_GATEWAY_LOGIN_ATTEMPTS_PER_MINUTE_PER_ACCOUNT": "10",
}


def own_prefix() -> dict[str, str]:
    """Redis keys of this test's replicas only (they share them with each other, not with the stack's gateway)."""
    return {"CHATPLANE_GATEWAY_REDIS_KEY_PREFIX": f"cp-e2e-{uuid.uuid4().hex[:12]}:"}


def assert_throttled(r) -> None:
    err = assert_openai_error(r, 429)
    assert err["code"] == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1


FLOOD = """
import asyncio, json, sys, uuid
import httpx

async def main(urls, size):
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=size + 10)) as http:
        replies = await asyncio.gather(*(
            http.post(f"{urls[i % len(urls)]}/v1/auth/login",
                      json={"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "wrong password"})
            for i in range(size)))
    print(json.dumps([[r.status_code, r.headers.get("retry-after"), r.json()] for r in replies]))

asyncio.run(main(sys.argv[2:], int(sys.argv[1])))
"""


async def test_a_flood_of_wrong_logins_is_throttled_while_an_authenticated_client_stays_fast(gateway_replica, account):
    env = {**DEFAULT_LIMITS, **own_prefix()}
    flood_size = 300
    with gateway_replica(**env) as first, gateway_replica(**env) as second:
        async with httpx.AsyncClient(timeout=60) as http:

            async def authenticated_call() -> float:
                started = time.perf_counter()
                r = await http.get(f"{first}/v1/conversations", params={"limit": 1}, headers=account.headers)
                assert r.status_code == 200, r.text
                return time.perf_counter() - started

            baseline = [await authenticated_call() for _ in range(10)]
            # A few hundred wrong passwords at once, for made-up accounts, over both replicas: from a process of its
            # own, so that the load generator's work does not count in the authenticated client's timings.
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FLOOD, str(flood_size), first, second, stdout=asyncio.subprocess.PIPE
            )
            during: list[float] = []
            waiting = asyncio.create_task(flood.communicate())
            while not waiting.done():
                during.append(await authenticated_call())
            out, _ = await waiting
    replies = json.loads(out)
    statuses = [status for status, _, _ in replies]
    assert set(statuses) <= {401, 429}, {s: statuses.count(s) for s in set(statuses)}
    # One bucket of 30 attempts per address, shared by both replicas (it refills by one every 2 s meanwhile).
    assert statuses.count(401) <= 30 + 3
    assert statuses.count(429) >= flood_size - 33
    status, retry_after, body = next(r for r in replies if r[0] == 429)
    assert body["error"]["code"] == "rate_limit_exceeded" and int(retry_after) >= 1
    # The authenticated client was not held up: auth's argon2 work is bounded and refused logins never reach it.
    print(f"authenticated call: baseline median {statistics.median(baseline) * 1000:.0f} ms, during the flood "
          f"median {statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms ({len(during)} calls)")
    assert statistics.median(during) < max(0.5, 10 * statistics.median(baseline))
    assert max(during) < 3.0


async def test_login_is_throttled_per_account_whatever_the_address(gateway_replica, fresh_account, other_account):
    # Three attempts a minute per account (one back every 20 s: none while this test runs), from any address.
    env = {**DEFAULT_LIMITS, **own_prefix(), "CHATPLANE_GATEWAY_FORWARDED_ALLOW_IPS": "127.0.0.1",
           "CHATPLANE_GATEWAY_LOGIN_ATTEMPTS_PER_MINUTE_PER_ACCOUNT": "3"}
    with gateway_replica(**env) as first, gateway_replica(**env) as second:
        async with httpx.AsyncClient(timeout=60) as http:

            async def login(i: int, email: str, password: str):
                return await http.post(f"{(first, second)[i % 2]}/v1/auth/login",
                                       json={"email": email, "password": password},
                                       headers={"X-Forwarded-For": f"198.51.100.{i}"})

            wrong = [await login(i, fresh_account.email, "not the password") for i in range(5)]
            assert [r.status_code for r in wrong[:3]] == [401] * 3
            for r in wrong[3:]:
                assert_throttled(r)
            # The right password waits too: the account's attempts are spent (on both replicas).
            assert_throttled(await login(50, fresh_account.email, fresh_account.password))
            # Another account from the same addresses is not affected.
            assert (await login(3, other_account.email, other_account.password)).status_code == 200


async def test_sign_ups_are_throttled_per_address(gateway_replica):
    env = {**DEFAULT_LIMITS, **own_prefix(), "CHATPLANE_GATEWAY_SIGNUPS_PER_HOUR_PER_ADDRESS": "3"}
    with gateway_replica(**env) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            made = [await http.post("/v1/auth/signup", json={"email": f"s-{uuid.uuid4().hex[:8]}@example.com",
                                                             "password": "a long password"}) for _ in range(4)]
    assert [r.status_code for r in made[:3]] == [201, 201, 201]
    assert_throttled(made[3])
    assert int(made[3].headers["retry-after"]) > 60  # three an hour: the next in about 20 minutes


async def _key(http, base: str, account) -> dict[str, str]:
    r = await http.post(f"{base}/v1/api-keys", json={"name": "second"},
                        headers={"Authorization": f"Bearer {account.token}"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


async def test_a_users_keys_share_one_request_bucket(gateway_replica, fresh_account):
    env = {**own_prefix(), "CHATPLANE_GATEWAY_USER_RATE_LIMIT_REQUESTS_PER_MINUTE": "3"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    with gateway_replica(**env) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            second = await _key(http, url, fresh_account)
            jwt = {"Authorization": f"Bearer {fresh_account.token}"}
            statuses = []
            for headers in (fresh_account.headers, second, fresh_account.headers):
                r = await http.post("/v1/chat/completions", json=body, headers=headers)
                statuses.append(r.status_code)
            assert statuses == [200, 200, 200]
            # The fourth request, with either key or an access token, meets the user's bucket (each key alone has
            # used at most two of its 3000).
            for headers in (second, jwt):
                r = await http.post("/v1/chat/completions", json=body, headers=headers)
                assert_throttled(r)
                assert "account" in r.json()["error"]["message"]


async def test_keys_per_user_are_capped(http, fresh_account):
    jwt = {"Authorization": f"Bearer {fresh_account.token}"}
    made = [await http.post("/v1/api-keys", json={"name": f"k{i}"}, headers=jwt) for i in range(9)]
    assert [r.status_code for r in made] == [201] * 9  # with the account's first: the stack's cap of 10
    r = await http.post("/v1/api-keys", json={"name": "one too many"}, headers=jwt)
    err = assert_openai_error(r, 400)
    assert err["code"] == "api_key_limit_reached"
    assert (await http.delete(f"/v1/api-keys/{made[0].json()['id']}", headers=jwt)).status_code == 200
    assert (await http.post("/v1/api-keys", json={"name": "after a revoke"}, headers=jwt)).status_code == 201


async def test_exports_are_throttled_per_user(gateway_replica, fresh_account):
    env = {**own_prefix(), "CHATPLANE_GATEWAY_EXPORTS_PER_HOUR_PER_USER": "2"}
    with gateway_replica(**env) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=fresh_account.headers) as http:
            conv = (await http.post("/v1/conversations", json={"title": "export me"})).json()["id"]
            made = [await http.post(f"/v1/conversations/{conv}/export", json={"format": "json"}) for _ in range(3)]
    assert [r.status_code for r in made[:2]] == [202, 202]
    assert_throttled(made[2])


async def test_a_revoked_key_is_refused_by_every_replica_within_a_second(gateway_replica, fresh_account):
    env = own_prefix()
    with gateway_replica(**env) as first, gateway_replica(**env) as second:
        async with httpx.AsyncClient(timeout=60) as http:
            key = await _key(http, first, fresh_account)
            for url in (first, second):  # both replicas have the key's answer cached now
                assert (await http.get(f"{url}/v1/models", headers=key)).status_code == 200
            key_id = next(k["id"] for k in (await http.get(
                f"{first}/v1/api-keys", headers={"Authorization": f"Bearer {fresh_account.token}"})).json()["data"]
                if k["name"] == "second")
            r = await http.delete(f"{first}/v1/api-keys/{key_id}",
                                  headers={"Authorization": f"Bearer {fresh_account.token}"})
            assert r.status_code == 200
            revoked_at = time.monotonic()
            while (await http.get(f"{second}/v1/models", headers=key)).status_code != 401:
                assert time.monotonic() - revoked_at < 1.0, "the other replica still accepts the revoked key"
                await asyncio.sleep(0.02)
            assert (await http.get(f"{first}/v1/models", headers=key)).status_code == 401


async def test_exports_expire(http, fresh_account):
    headers = fresh_account.headers
    conv = (await http.post("/v1/conversations", json={"title": "short-lived export"}, headers=headers)).json()["id"]
    made = (await http.post(f"/v1/conversations/{conv}/export", json={"format": "json"}, headers=headers)).json()
    path = f"/v1/conversations/{conv}/export/{made['id']}"

    async def completed():
        r = await http.get(path, headers=headers)
        return r.json() if r.status_code == 200 and r.json()["status"] == "completed" else None

    assert (await eventually(completed, timeout=60, interval=0.5))["content"]
    created = made["created_at"]

    async def gone():
        return (await http.get(path, headers=headers)).status_code == 404

    await eventually(gone, timeout=60, interval=1)
    assert time.time() - created >= 20 - 1  # the stack's CHATPLANE_CONVERSATION_EXPORT_TTL_SECONDS


async def test_a_conversations_messages_come_in_pages(http, fresh_account):
    headers = fresh_account.headers
    conv = (await http.post("/v1/conversations", json={}, headers=headers)).json()["id"]
    for i in range(3):
        r = await http.post(f"/v1/conversations/{conv}/messages", json={"content": f"Say {i}.", "max_tokens": 1},
                            headers=headers)
        assert r.status_code == 201, r.text
    first = (await http.get(f"/v1/conversations/{conv}", params={"limit": 4}, headers=headers)).json()
    assert len(first["messages"]) == 4 and first["has_more"] and first["next_cursor"]
    second = (await http.get(f"/v1/conversations/{conv}", params={"limit": 4, "after": first["next_cursor"]},
                             headers=headers)).json()
    assert len(second["messages"]) == 2 and not second["has_more"] and second["next_cursor"] is None
    roles = [m["role"] for m in first["messages"] + second["messages"]]
    assert roles == ["user", "assistant"] * 3  # oldest first, nothing twice, nothing missed
    whole = (await http.get(f"/v1/conversations/{conv}", headers=headers)).json()  # default page: 100
    assert [m["id"] for m in whole["messages"]] == [m["id"] for m in first["messages"] + second["messages"]]
    for forged in ("bTo5OTk5OTk5OTk5OTk5OQ", "bTowLTE", "eDox", "zzzz"):  # "m:99999999999999", "m:0-1", "x:1", junk
        r = await http.get(f"/v1/conversations/{conv}", params={"after": forged}, headers=headers)
        assert assert_openai_error(r, 400)["param"] == "after"
