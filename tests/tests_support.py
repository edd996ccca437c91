"""Assertions shared by the end-to-end tests."""

from __future__ import annotations


def assert_openai_error(response, *statuses: int) -> dict:
    """The response has one of ``statuses`` and OpenAI's error object."""
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    return err
