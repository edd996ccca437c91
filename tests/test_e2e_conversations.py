"""End to end: conversations through the gateway, stored by the real conversation service (PostgreSQL) and answered
by the real model."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest

from chatplane.protos.inference.v1 import inference_pb2 as ipb
from chatplane.protos.inference.v1 import inference_pb2_grpc

pytestmark = pytest.mark.engine


async def new_conversation(http, account, title: str | None = None) -> dict:
    body = {} if title is None else {"title": title}
    r = await http.post("/v1/conversations", json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def messages_of(http, account, conv_id: str) -> list[dict]:
    r = await http.get(f"/v1/conversations/{conv_id}", headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def sse_events(lines: list[str]) -> list[dict | str]:
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_send_message_non_streaming_stores_both(http, account):
    conv = await new_conversation(http, account, "Geography")
    r = await http.post(
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "What is the capital of France?", "temperature": 0, "max_tokens": 30},
        headers=account.headers,
    )
    assert r.status_code == 201, r.text
    reply = r.json()
    assert "Paris" in reply["content"] and reply["role"] == "assistant" and reply["status"] == "complete"
    stored = await messages_of(http, account, conv["id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == "What is the capital of France?"
    assert stored[1]["id"] == reply["id"] and stored[1]["content"] == reply["content"]
    assert stored[1]["usage"]["completion_tokens"] > 0


async def test_streaming_send_and_history_is_used(http, account):
    conv = await new_conversation(http, account)
    first = await http.post(
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "My name is Zorblax. Remember it.", "max_tokens": 20, "temperature": 0},
        headers=account.headers,
    )
    assert first.status_code == 201
    async with http.stream(
        "POST", f"/v1/conversations/{conv['id']}/messages",
        json={"content": "What is my name?", "stream": True, "max_tokens": 20, "temperature": 0},
        headers=account.headers,
    ) as resp:
        assert resp.status_code == 200
        events = sse_events([line async for line in resp.aiter_lines()])
    assert events[-1] == "[DONE]"
    started, *deltas, done, _ = events
    assert started["type"] == "message.started" and done["type"] == "message.done"
    text = "".join(d["delta"] for d in deltas)
    stored = await messages_of(http, account, conv["id"])
    assert len(stored) == 4
    assert stored[2]["id"] == done["user_message_id"] and stored[3]["id"] == done["assistant_message_id"]
    assert stored[3]["content"] == text
    assert done["usage"]["completion_tokens"] == stored[3]["usage"]["completion_tokens"]
    # The prompt carried the first exchange: more prompt tokens than the question alone.
    assert done["usage"]["prompt_tokens"] > stored[1]["usage"]["prompt_tokens"]


async def test_other_users_conversation_is_404_and_untouched(http, account, other_account):
    conv = await new_conversation(http, account, "mine")
    for method, path, body in [
        ("GET", f"/v1/conversations/{conv['id']}", None),
        ("PATCH", f"/v1/conversations/{conv['id']}", {"title": "stolen"}),
        ("DELETE", f"/v1/conversations/{conv['id']}", None),
        ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": "hi"}),
    ]:
        r = await http.request(method, path, json=body, headers=other_account.headers)
        assert r.status_code == 404, (method, r.text)
        assert r.json()["error"]["message"]
    r = await http.get(f"/v1/conversations/{conv['id']}", headers=account.headers)
    assert r.json()["title"] == "mine" and r.json()["messages"] == []


async def test_list_update_delete(http, account):
    made = [await new_conversation(http, account, f"c{i}") for i in range(3)]
    r = await http.get("/v1/conversations", params={"limit": 2}, headers=account.headers)
    page = r.json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [c["id"] for c in page["data"]] == [made[2]["id"], made[1]["id"]]
    r = await http.get("/v1/conversations", params={"limit": 2, "after": page["next_cursor"]}, headers=account.headers)
    assert r.json()["data"][0]["id"] == made[0]["id"]
    r = await http.patch(f"/v1/conversations/{made[0]['id']}", json={"title": "renamed", "archived": True},
                         headers=account.headers)
    assert r.status_code == 200 and r.json()["title"] == "renamed" and r.json()["archived"] is True
    r = await http.delete(f"/v1/conversations/{made[1]['id']}", headers=account.headers)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert (await http.get(f"/v1/conversations/{made[1]['id']}", headers=account.headers)).status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"content": ""}, {400, 422}),
        ({"content": "   "}, {400, 422}),
        ({"content": "x" * 70_000}, {400, 422}),
        ({"content": "hello\u0000world"}, {400, 422}),
        ({"content": "word " * 3000}, {400}),  # longer than the context window
        ({"content": "hi", "max_tokens": 0}, {400, 422}),
        ({"content": "hi", "max_tokens": 100_000}, {400}),
        ({"content": 42}, {422}),
        ({}, {400}),  # neither content nor regenerate: a 400 naming content
    ],
)
async def test_bad_messages_leave_nothing_stored(http, account, body, status):
    conv = await new_conversation(http, account)
    r = await http.post(f"/v1/conversations/{conv['id']}/messages", json=body, headers=account.headers)
    assert r.status_code in status, r.text
    assert r.json()["error"]["message"]
    assert await messages_of(http, account, conv["id"]) == []


async def test_sql_and_control_characters_are_stored_verbatim(http, account):
    title = "'; DROP TABLE conversations; -- \t\x1b[31m"
    conv = await new_conversation(http, account, title)
    content = "Robert'); DELETE FROM messages;--\r\n\x07 say ok"
    r = await http.post(f"/v1/conversations/{conv['id']}/messages", json={"content": content, "max_tokens": 5},
                        headers=account.headers)
    assert r.status_code == 201, r.text
    got = await http.get(f"/v1/conversations/{conv['id']}", headers=account.headers)
    assert got.json()["title"] == title
    assert got.json()["messages"][0]["content"] == content


async def test_disconnect_mid_stream_stores_partial_reply_and_aborts(stack, account, tls_channel):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http, tls_channel(stack.inference) as chan:
        engine = inference_pb2_grpc.InferenceServiceStub(chan)
        conv = await new_conversation(http, account)
        before = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
        received = ""
        async with http.stream(
            "POST", f"/v1/conversations/{conv['id']}/messages",
            json={"content": "Write a very long essay about the history of Europe.", "stream": True,
                  "max_tokens": 1500, "temperature": 0.8},
            headers=account.headers,
        ) as resp:
            deltas = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and '"message.delta"' in line:
                    received += json.loads(line[6:])["delta"]
                    deltas += 1
                    if deltas >= 5:
                        break
        stored = []
        for _ in range(100):
            await asyncio.sleep(0.1)
            stored = await messages_of(http, account, conv["id"])
            stats = await engine.GetEngineStats(ipb.GetEngineStatsRequest())
            if len(stored) == 2 and stats.running == 0:
                break
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert stored[1]["status"] == "incomplete"
        assert stored[1]["content"].startswith(received)
        assert stats.running == 0 and stats.aborted_total == before.aborted_total + 1


async def test_regenerate_replaces_the_last_reply(http, account, other_account):
    conv = await new_conversation(http, account)
    path = f"/v1/conversations/{conv['id']}/messages"
    r = await http.post(path, json={"regenerate": True}, headers=account.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_user_message"
    first = await http.post(path, json={"content": "What is the capital of France?", "max_tokens": 20,
                                        "temperature": 0}, headers=account.headers)
    assert first.status_code == 201, first.text
    r = await http.post(path, json={"regenerate": True}, headers=other_account.headers)
    assert r.status_code == 404

    async with http.stream("POST", path, json={"regenerate": True, "stream": True, "max_tokens": 20,
                                               "temperature": 0}, headers=account.headers) as resp:
        assert resp.status_code == 200
        events = sse_events([line async for line in resp.aiter_lines()])
    started, *deltas, done, end = events
    assert end == "[DONE]" and started["user_message_id"] == first.json()["user_message_id"]
    text = "".join(d["delta"] for d in deltas)
    assert "Paris" in text
    stored = await messages_of(http, account, conv["id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["id"] == done["assistant_message_id"] != first.json()["id"]
    assert stored[1]["content"] == text
    # Metered as a message: the same prompt (the question without the old reply) and the new reply's tokens.
    assert done["usage"]["prompt_tokens"] == first.json()["usage"]["prompt_tokens"]
    assert done["usage"]["completion_tokens"] == stored[1]["usage"]["completion_tokens"] > 0
