"""Helpers shared by the test folders (`tests/` is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import httpx


def assert_openai_error(response, *statuses: int) -> dict:
    """The response has one of ``statuses`` and OpenAI's error object."""
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    return err


async def eventually(check, timeout: float = 20.0, interval: float = 0.05):
    """Poll an async ``check`` until it returns something truthy (returned); fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


@dataclass
class Account:
    email: str
    password: str
    token: str  # JWT access token
    api_key: str
    api_key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def new_account(base_url: str) -> Account:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    password = "correct horse battery staple"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post("/v1/auth/signup", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        token = http.post("/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
        r = http.post("/v1/api-keys", json={"name": "tests"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        key = r.json()
    return Account(email, password, token, key["key"], key["id"])


class CrashBeforeCommit(BaseException):
    """The process of an event consumer killed after it applied a batch and before it committed the batch's offsets.
    A BaseException, as a kill is: nothing in the consumer's loop (which retries on Exception) catches it."""


def crash_before_commit(consumer):
    """Make ``consumer`` (an ``EventConsumer``) die at its first offset commit: its ``run()`` raises
    :class:`CrashBeforeCommit` once the first batch is applied in the database and before Kafka learns of it, so
    that another consumer of the group gets the batch again. Returns the consumer."""
    opened = consumer._open

    def open_crashing():
        client = opened()

        def commit(*args, **kwargs):
            raise CrashBeforeCommit("killed after applying a batch, before committing its offsets")

        client.commit = commit
        return client

    consumer._open = open_crashing
    return consumer
