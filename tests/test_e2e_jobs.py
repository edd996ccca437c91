"""End to end: the Celery jobs behind the gateway, run by the worker that ``make run`` starts, on the embedded broker
(kombu's SQLAlchemy transport on a SQLite file: no Redis) with the conversations in PostgreSQL and the real model."""

from __future__ import annotations

import json

import pytest
from tests_support import eventually

pytestmark = pytest.mark.engine

DEFAULT = "New conversation"


def poll(check):
    return eventually(check, timeout=90, interval=0.25)


async def test_title_appears_in_the_list_and_exports_come_back(http, account, other_account):
    r = await http.post("/v1/conversations", json={}, headers=account.headers)
    conv = r.json()
    assert conv["title"] == DEFAULT
    r = await http.post(
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "What is the capital of France?", "temperature": 0, "max_tokens": 20},
        headers=account.headers,
    )
    assert r.status_code == 201, r.text

    async def titled():
        page = await http.get("/v1/conversations", headers=account.headers)
        title = next(c["title"] for c in page.json()["data"] if c["id"] == conv["id"])
        return title if title != DEFAULT else None

    title = await poll(titled)
    assert 0 < len(title) <= 60 and "\n" not in title

    r = await http.post(f"/v1/conversations/{conv['id']}/export", json={"format": "json"}, headers=account.headers)
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["status"], job["format"], job["content"]) == ("pending", "json", None)
    url = f"/v1/conversations/{conv['id']}/export/{job['id']}"

    async def completed():
        got = await http.get(url, headers=account.headers)
        assert got.status_code == 200, got.text
        return got.json() if got.json()["status"] != "pending" else None

    done = await poll(completed)
    assert done["status"] == "completed" and done["completed_at"] is not None
    doc = json.loads(done["content"])
    assert doc["title"] == title
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][0]["content"] == "What is the capital of France?"

    r = await http.post(f"/v1/conversations/{conv['id']}/export", headers=account.headers)  # Markdown by default
    md = await poll(lambda: _done(http, account, conv["id"], r.json()["id"]))
    assert md["format"] == "markdown" and md["content"].startswith(f"# {title}\n")
    assert "## User\n" in md["content"] and "What is the capital of France?" in md["content"]

    # Another user sees neither the conversation's exports nor can make one; bad formats are refused.
    assert (await http.get(url, headers=other_account.headers)).status_code == 404
    r = await http.post(f"/v1/conversations/{conv['id']}/export", json={}, headers=other_account.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await http.post(f"/v1/conversations/{conv['id']}/export", json={"format": "pdf"}, headers=account.headers)
    assert r.status_code in (400, 422)


async def _done(http, account, conversation_id: str, export_id: str):
    got = await http.get(f"/v1/conversations/{conversation_id}/export/{export_id}", headers=account.headers)
    return got.json() if got.json()["status"] != "pending" else None
