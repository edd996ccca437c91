"""Every error the gateway answers has OpenAI's shape and the right status."""

from __future__ import annotations

import json

import grpc
import pytest

from chatplane.common import limits
from chatplane.common.errors import ServiceError


def assert_error(resp, status: int, *, param=None, code=None, type_=None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    if type_ is not None:
        assert err["type"] == type_
    return err


def chat(model: str = "test-model", content: str = "Hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_unknown_route_is_404(client, auth_headers):
    err = assert_error(await client.get("/v1/nope", headers=auth_headers), 404, type_="invalid_request_error")
    assert "GET /v1/nope" in err["message"]


async def test_wrong_method_is_405(client, auth_headers):
    assert_error(await client.put("/v1/models", headers=auth_headers), 405)


async def test_malformed_json_is_400(client, auth_headers):
    resp = await client.post(
        "/v1/chat/completions", content=b'{"model": "test-model", "messages": [', headers={
            **auth_headers, "Content-Type": "application/json"}
    )
    err = assert_error(resp, 400, type_="invalid_request_error")
    assert "JSON" in err["message"]


async def test_wrong_type_is_422_naming_the_field(client, auth_headers):
    resp = await client.post("/v1/chat/completions", json=chat(temperature="hot"), headers=auth_headers)
    assert_error(resp, 422, param="temperature", type_="invalid_request_error")
    resp = await client.post("/v1/chat/completions", json={"model": "test-model"}, headers=auth_headers)
    assert_error(resp, 422, param="messages")
    resp = await client.post("/v1/chat/completions", json={"model": "test-model", "messages": [{"role": "user",
                             "content": 5}]}, headers=auth_headers)
    assert_error(resp, 422, param="messages[0].content")


async def test_declared_oversized_body_is_413(client, auth_headers):
    big = json.dumps(chat(content="x" * (limits.MAX_REQUEST_BODY_BYTES + 10)))
    resp = await client.post("/v1/chat/completions", content=big, headers={**auth_headers,
                             "Content-Type": "application/json"})
    assert_error(resp, 413)


async def test_streamed_oversized_body_without_length_is_413(client, auth_headers, fakes):
    sent = 0

    async def body():
        nonlocal sent
        for _ in range(100):  # 100 chunks of 64 KiB: 6.4 MiB, far over the limit
            sent += 1
            yield b"x" * 65536

    resp = await client.post("/v1/chat/completions", content=body(), headers={**auth_headers,
                             "Content-Type": "application/json"})
    assert_error(resp, 413)
    assert sent < 100, "the gateway read the whole body"
    assert fakes.inference_calls("Generate") == 0


async def test_missing_credential_is_401(client):
    err = assert_error(await client.get("/v1/models"), 401, code="invalid_api_key", type_="invalid_request_error")
    assert "API key" in err["message"]
    err = assert_error(await client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)


async def test_unknown_api_key_is_401_without_echoing_it(client):
    secret = "sk-nope-0123456789abcdef"
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    err = assert_error(resp, 401, code="invalid_api_key")
    assert "Incorrect API key" in err["message"]
    assert secret not in resp.text and "0123456789" not in resp.text


async def test_signup_taken_is_409(client, fakes):
    fakes.auth.add_user("taken@example.com")
    resp = await client.post("/v1/auth/signup", json={"email": "taken@example.com", "password": "long enough pw"})
    assert_error(resp, 409, code="email_taken", param="email")


async def test_service_error_details_pass_through_as_400(client):
    resp = await client.post("/v1/auth/signup", json={"email": "no-at-sign", "password": "long enough pw"})
    assert_error(resp, 400, code="invalid_email", param="email")


async def test_short_password_is_400_at_the_edge(client, fakes):
    resp = await client.post("/v1/auth/signup", json={"email": "a@example.com", "password": "short"})
    assert_error(resp, 400, param="password")
    assert "a@example.com" not in fakes.auth.users


async def test_a_full_replica_is_429(make_client, full_replica, auth_headers):
    async with make_client(full_replica) as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers=auth_headers)
    assert_error(resp, 429, code="rate_limit_exceeded")
    assert int(resp.headers["retry-after"]) >= 1


async def test_context_length_error_keeps_code_and_param(client, auth_headers):
    too_long = "word " * 2100  # the test model's context is 2048 tokens
    resp = await client.post("/v1/chat/completions", json=chat(content=too_long), headers=auth_headers)
    assert_error(resp, 400, code="context_length_exceeded", param="messages")


async def test_internal_upstream_error_is_500_without_details(client, auth_headers, fakes):
    # An upstream that tells too much: the gateway never passes an internal error's details on.
    fakes.inference.engine.refusal = ServiceError(grpc.StatusCode.INTERNAL, fakes.secret_detail)
    resp = await client.post("/v1/chat/completions", json=chat(), headers=auth_headers)
    assert_error(resp, 500, type_="server_error")
    assert "hunter2" not in resp.text and "internal.py" not in resp.text


async def test_backend_down_is_503(make_client, settings, auth_headers):
    from chatplane.dev.procs import free_port

    down = settings.model_copy(update={"conversation_target": f"127.0.0.1:{free_port()}"})
    async with make_client(down) as c:
        resp = await c.get("/v1/conversations", headers=auth_headers)
        err = assert_error(resp, 503, type_="service_unavailable")
        assert "conversation" in err["message"]
        # Everything else still works.
        assert (await c.get("/v1/models", headers=auth_headers)).status_code == 200


async def test_auth_down_is_503_not_401(make_client, settings, user_key):
    from chatplane.dev.procs import free_port

    down = settings.model_copy(update={"auth_target": f"127.0.0.1:{free_port()}"})
    async with make_client(down) as c:
        resp = await c.get("/v1/models", headers={"Authorization": f"Bearer {user_key.secret}"})
        assert_error(resp, 503, type_="service_unavailable")


async def test_unknown_model_is_404_model_not_found(client, auth_headers, fakes):
    resp = await client.post("/v1/chat/completions", json=chat(model="gpt-17"), headers=auth_headers)
    assert_error(resp, 404, code="model_not_found", param="model")
    assert fakes.inference_calls("Generate") == 0
    assert_error(await client.get("/v1/models/gpt-17", headers=auth_headers), 404, code="model_not_found")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(content="a\x00b"), "messages[0].content"),
        (chat(content="x" * (limits.MAX_MESSAGE_CHARS + 1)), "messages[0].content"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(stop=""), "stop"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(temperature=2.5), "temperature"),
        (chat(top_p=0), "top_p"),
        ({"model": "test-model", "messages": []}, "messages"),
        ({"model": "test-model", "messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"model": "test-model", "messages": [{"role": "user", "content": [{"type": "image_url",
          "image_url": {"url": "http://x"}}]}]}, "messages[0].content[0].type"),
    ],
)
async def test_bad_values_are_400_naming_the_param(client, auth_headers, fakes, body, param):
    resp = await client.post("/v1/chat/completions", json=body, headers=auth_headers)
    assert_error(resp, 400, param=param, type_="invalid_request_error")
    assert fakes.inference_calls("Generate") == 0


async def test_too_many_messages_is_400(client, auth_headers):
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}] * (limits.MAX_MESSAGES + 1)}
    assert_error(await client.post("/v1/chat/completions", json=body, headers=auth_headers), 400, param="messages")
