"""Helpers shared by the test folders (`tests/` is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio


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
