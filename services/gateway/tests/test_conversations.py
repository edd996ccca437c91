"""Conversation routes: CRUD, paging, sending messages (plain and streamed), errors, cancellation."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from chatplane.common import limits
from chatplane.protos.conversation.v1 import conversation_pb2


async def create(client, headers, title: str | None = "Trip") -> dict:
    resp = await client.post("/v1/conversations", json={} if title is None else {"title": title}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_create_get_update_delete(client, auth_headers, fakes):
    conv = await create(client, auth_headers, "Trip to Lyon; DROP TABLE users; --")
    assert set(conv) == {"id", "object", "title", "archived", "created_at", "updated_at"}
    assert conv["object"] == "conversation" and conv["title"] == "Trip to Lyon; DROP TABLE users; --"
    assert conv["archived"] is False and isinstance(conv["created_at"], int)

    got = (await client.get(f"/v1/conversations/{conv['id']}", headers=auth_headers)).json()
    assert got == {**conv, "messages": [], "has_more": False, "next_cursor": None}

    resp = await client.patch(f"/v1/conversations/{conv['id']}", json={"archived": True}, headers=auth_headers)
    assert resp.status_code == 200
    assert resp.json()["archived"] is True and resp.json()["title"] == conv["title"]
    update = fakes.conversation.requests[-1]
    assert update.HasField("archived") and not update.HasField("title")

    resp = await client.delete(f"/v1/conversations/{conv['id']}", headers=auth_headers)
    assert resp.json() == {"id": conv["id"], "object": "conversation.deleted", "deleted": True}
    resp = await client.get(f"/v1/conversations/{conv['id']}", headers=auth_headers)
    assert resp.status_code == 404


async def test_untitled_conversation(client, auth_headers):
    resp = await client.post("/v1/conversations", headers=auth_headers)
    assert resp.status_code == 201 and resp.json()["title"] == ""


async def test_another_users_conversation_is_404_everywhere(client, auth_headers, fakes):
    stranger = fakes.auth.add_key(fakes.auth.add_user("other@example.com"))
    theirs = await create(client, {"Authorization": f"Bearer {stranger.secret}"})
    cid = theirs["id"]
    for method, path, body in [
        ("GET", f"/v1/conversations/{cid}", None),
        ("PATCH", f"/v1/conversations/{cid}", {"title": "mine now"}),
        ("DELETE", f"/v1/conversations/{cid}", None),
        ("POST", f"/v1/conversations/{cid}/messages", {"content": "hello"}),
        ("POST", f"/v1/conversations/{cid}/messages", {"content": "hello", "stream": True}),
        ("POST", f"/v1/conversations/{cid}/messages", {"regenerate": True, "stream": True}),
    ]:
        resp = await client.request(method, path, json=body, headers=auth_headers)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == "conversation_not_found"
    assert fakes.conversation.conversations[cid].proto.title == theirs["title"]


async def test_list_pages_newest_first(client, auth_headers):
    ids = [(await create(client, auth_headers, f"c{i}"))["id"] for i in range(5)]
    page = (await client.get("/v1/conversations?limit=2", headers=auth_headers)).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [c["id"] for c in page["data"]] == ids[::-1][:2]
    seen = [c["id"] for c in page["data"]]
    while page["has_more"]:
        page = (await client.get(f"/v1/conversations?limit=2&after={page['next_cursor']}",
                                 headers=auth_headers)).json()
        seen += [c["id"] for c in page["data"]]
    assert seen == ids[::-1]
    assert page["next_cursor"] is None


async def test_archived_are_hidden_unless_asked(client, auth_headers):
    conv = await create(client, auth_headers)
    await client.patch(f"/v1/conversations/{conv['id']}", json={"archived": True}, headers=auth_headers)
    assert (await client.get("/v1/conversations", headers=auth_headers)).json()["data"] == []
    listed = (await client.get("/v1/conversations?include_archived=true", headers=auth_headers)).json()
    assert [c["id"] for c in listed["data"]] == [conv["id"]]


async def test_bad_inputs(client, auth_headers, fakes):
    conv = await create(client, auth_headers)
    cases = [
        ("POST", "/v1/conversations", {"title": "x" * (limits.MAX_TITLE_CHARS + 1)}, 400, "title"),
        ("PATCH", f"/v1/conversations/{conv['id']}", {"title": "a\x00b"}, 400, "title"),
        ("PATCH", f"/v1/conversations/{conv['id']}", {"archived": "maybe"}, 422, "archived"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": ""}, 400, "content"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": "x" * (limits.MAX_MESSAGE_CHARS + 1)},
         400, "content"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": "hi", "temperature": 3}, 400, "temperature"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": "hi", "tools": []}, 400, "tools"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {}, 400, "content"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": "hi", "regenerate": True}, 400, "content"),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"regenerate": "please"}, 422, "regenerate"),
    ]
    for method, path, body, status, param in cases:
        resp = await client.request(method, path, json=body, headers=auth_headers)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["param"] == param
    resp = await client.get("/v1/conversations?limit=0", headers=auth_headers)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "limit"
    assert not any(type(r).__name__ == "SendMessageRequest" for r in fakes.conversation.requests)


async def test_send_message_without_streaming(client, auth_headers, fakes, user_key):
    conv = await create(client, auth_headers)
    resp = await client.post(f"/v1/conversations/{conv['id']}/messages",
                             json={"content": "Hello?", "max_tokens": 20, "temperature": 0.2},
                             headers=auth_headers)
    assert resp.status_code == 201, resp.text
    msg = resp.json()
    assert msg["object"] == "conversation.message" and msg["role"] == "assistant"
    assert msg["content"] == "Hi there" and msg["status"] == "complete" and msg["finish_reason"] == "stop"
    assert msg["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert msg["model"] == fakes.model

    (sent,) = [r for r in fakes.conversation.requests if type(r).__name__ == "SendMessageRequest"]
    assert sent.content == "Hello?" and sent.max_tokens == 20 and sent.api_key_id == user_key.id
    assert not sent.model

    history = (await client.get(f"/v1/conversations/{conv['id']}", headers=auth_headers)).json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["id"] == msg["user_message_id"] and history[0]["usage"] is None
    assert history[1]["id"] == msg["id"]


async def test_send_message_streaming(live_url, auth_headers, fakes):
    async with httpx.AsyncClient(base_url=live_url) as c:
        conv = await create(c, auth_headers)
        resp = await c.post(f"/v1/conversations/{conv['id']}/messages", json={"content": "Hello?", "stream": True},
                            headers=auth_headers)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in resp.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["type"] == "message.started" and parsed[0]["model"] == fakes.model
    assert [p["delta"] for p in parsed[1:-1]] == ["Hi", " there"]
    done = parsed[-1]
    assert done["type"] == "message.done" and done["user_message_id"] == parsed[0]["user_message_id"]
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    stored = fakes.conversation.conversations[conv["id"]].messages
    assert done["assistant_message_id"] == stored[-1].id


async def test_disconnect_cancels_the_send_message_call(live_url, auth_headers, fakes):
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as c:
        conv = await create(c, auth_headers)
        async with c.stream("POST", f"/v1/conversations/{conv['id']}/messages",
                            json={"content": "slow", "stream": True}, headers=auth_headers) as resp:
            async for line in resp.aiter_lines():
                if "Thinking" in line:
                    break
    await asyncio.wait_for(fakes.conversation.cancelled.wait(), 5)


async def test_client_leaving_a_non_streaming_send_cancels_the_call(live_url, auth_headers, fakes):
    async with httpx.AsyncClient(base_url=live_url, timeout=2) as c:
        conv = await create(c, auth_headers)
        with pytest.raises(httpx.ReadTimeout):
            await c.post(f"/v1/conversations/{conv['id']}/messages", json={"content": "slow"}, headers=auth_headers,
                         timeout=0.5)
    await asyncio.wait_for(fakes.conversation.cancelled.wait(), 5)


async def test_regenerate_replaces_the_last_reply(client, live_url, auth_headers, fakes):
    conv = await create(client, auth_headers)
    path = f"/v1/conversations/{conv['id']}/messages"
    first = (await client.post(path, json={"content": "Hello?"}, headers=auth_headers)).json()

    resp = await client.post(path, json={"regenerate": True}, headers=auth_headers)
    assert resp.status_code == 201, resp.text
    again = resp.json()
    assert again["user_message_id"] == first["user_message_id"] and again["id"] != first["id"]
    assert again["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    sent = fakes.conversation.requests[-1]
    assert sent.regenerate and not sent.content
    history = (await client.get(f"/v1/conversations/{conv['id']}", headers=auth_headers)).json()["messages"]
    assert [(m["role"], m["id"]) for m in history] == [("user", first["user_message_id"]), ("assistant", again["id"])]

    async with httpx.AsyncClient(base_url=live_url) as c:  # streamed like a message
        resp = await c.post(path, json={"regenerate": True, "stream": True}, headers=auth_headers)
    parsed = [json.loads(e.removeprefix("data: ")) for e in resp.text.strip().split("\n\n")[:-1]]
    assert parsed[0] == {"type": "message.started", "user_message_id": first["user_message_id"],
                         "model": fakes.model}
    assert parsed[-1]["type"] == "message.done"


async def test_regenerate_errors(client, auth_headers, fakes):
    conv = await create(client, auth_headers)
    path = f"/v1/conversations/{conv['id']}/messages"
    resp = await client.post(path, json={"regenerate": True}, headers=auth_headers)
    assert resp.status_code == 400
    assert resp.json()["error"] | {"message": ""} == {
        "message": "", "type": "invalid_request_error", "param": "regenerate", "code": "no_user_message"}
    fakes.conversation.conversations[conv["id"]].messages.append(conversation_pb2.Message(id="u1", role="user"))
    resp = await client.post(path, json={"regenerate": True, "stream": True}, headers=auth_headers)
    assert resp.status_code == 409
    assert resp.json()["error"] | {"message": ""} == {
        "message": "", "type": "invalid_request_error", "param": "regenerate", "code": "reply_in_progress"}
