"""Conversations: create, read, update, delete, ownership, listing and pagination (on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import grpc
import pytest
from conv_harness import Harness, status_of
from sqlalchemy import func, select

from chatplane.common.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_TITLE_CHARS
from chatplane.conversation.models import Conversation, Message
from chatplane.conversation.store import PageKey
from chatplane.conversation.validation import encode_cursor
from chatplane.protos.conversation.v1 import conversation_pb2 as pb

NOT_FOUND_MESSAGE = "conversation not found"


async def message_rows(h: Harness, conversation_id: str) -> int:
    async with h.server.core.store.engine.connect() as conn:
        return await conn.scalar(
            select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
        )


async def list_all(h: Harness, user: str = "alice", limit: int = 0, include_archived: bool = False) -> list[str]:
    ids, cursor = [], ""
    while True:
        page = await h.stub.ListConversations(
            pb.ListConversationsRequest(user_id=user, limit=limit, cursor=cursor, include_archived=include_archived)
        )
        assert limit == 0 or len(page.conversations) <= limit
        ids += [c.id for c in page.conversations]
        cursor = page.next_cursor
        if not cursor:
            return ids


async def test_create_read_update_delete(conv: Harness):
    untitled = await conv.create()
    assert untitled.title == "New conversation"
    assert len(untitled.id) == 32 and not untitled.archived
    assert untitled.created_at.ToDatetime(UTC) == untitled.updated_at.ToDatetime(UTC)

    named = await conv.create(title="  Trip to Lisbon  ")
    assert named.title == "Trip to Lisbon"
    got = await conv.get(named.id)
    assert got.conversation == named and list(got.messages) == []

    renamed = await conv.stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id="alice", conversation_id=named.id, title="Lisbon, again")
    )
    assert renamed.title == "Lisbon, again" and not renamed.archived
    assert renamed.updated_at.ToDatetime(UTC) > named.updated_at.ToDatetime(UTC)
    archived = await conv.stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id="alice", conversation_id=named.id, archived=True)
    )
    assert archived.archived and archived.title == "Lisbon, again"  # the unset field is kept
    assert (await conv.get(named.id)).conversation == archived

    await conv.send(named.id, "hello")
    assert await message_rows(conv, named.id) == 2
    await conv.stub.DeleteConversation(pb.DeleteConversationRequest(user_id="alice", conversation_id=named.id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.get(named.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await message_rows(conv, named.id) == 0  # the messages went with it
    assert (await conv.get(untitled.id)).conversation == untitled  # the other one is untouched


async def test_another_users_conversation_is_not_found(conv: Harness):
    mine = await conv.create(title="private")
    await conv.send(mine.id, "my secret plans")
    before = await conv.get(mine.id)
    generations = len(conv.inference.generations)

    calls = {
        "get": lambda cid: conv.get(cid, user="mallory"),
        "update": lambda cid: conv.stub.UpdateConversation(
            pb.UpdateConversationRequest(user_id="mallory", conversation_id=cid, title="pwned", archived=True)
        ),
        "delete": lambda cid: conv.stub.DeleteConversation(
            pb.DeleteConversationRequest(user_id="mallory", conversation_id=cid)
        ),
        "send": lambda cid: conv.send(cid, "hi", user="mallory"),
    }
    # Another user's id, an id that does not exist and an ill-formed one are indistinguishable.
    for target in (mine.id, "0" * 32, "../../etc/passwd", ""):
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(target)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, (name, target)
            assert err.value.details() == NOT_FOUND_MESSAGE, (name, target)

    assert await conv.get(mine.id) == before
    assert len(conv.inference.generations) == generations
    assert await list_all(conv, user="mallory") == []


async def test_listing_is_newest_first_and_pages_without_gaps_or_duplicates(conv: Harness):
    created = [await conv.create(title=f"c{i}") for i in range(7)]
    await conv.create(user="bob", title="not alice's")
    # Activity moves a conversation to the top: a message, a rename.
    await conv.send(created[2].id, "bump")
    await conv.stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id="alice", conversation_id=created[4].id, title="renamed")
    )
    bumped = [created[4].id, created[2].id]
    expected = bumped + [c.id for c in reversed(created) if c.id not in bumped]

    for limit in (1, 3, 7, 0):
        assert await list_all(conv, limit=limit) == expected, limit
    first = await conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice", limit=7))
    assert first.next_cursor == ""  # exactly one full page: no empty page after it


async def test_pagination_breaks_ties_on_equal_timestamps(conv: Harness):
    """Rows with the very same updated_at still page exactly once each (the cursor carries the id too)."""
    same = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ids = [f"{i:032x}" for i in range(1, 6)]
    async with conv.server.core.store.transaction() as session:
        session.add_all(
            Conversation(id=i, user_id="alice", title=i, archived=False, created_at=same, updated_at=same) for i in ids
        )
    assert await list_all(conv, limit=2) == sorted(ids, reverse=True)


async def test_archived_conversations_are_hidden_unless_asked_for(conv: Harness):
    kept, hidden = await conv.create(title="kept"), await conv.create(title="hidden")
    await conv.stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id="alice", conversation_id=hidden.id, archived=True)
    )
    assert await list_all(conv) == [kept.id]
    assert set(await list_all(conv, include_archived=True, limit=1)) == {kept.id, hidden.id}
    await conv.stub.UpdateConversation(
        pb.UpdateConversationRequest(user_id="alice", conversation_id=hidden.id, archived=False)
    )
    assert await list_all(conv) == [hidden.id, kept.id]


async def test_default_page_size_and_limits(sqlite_conv: Harness):
    for i in range(DEFAULT_PAGE_SIZE + 1):
        await sqlite_conv.create(title=str(i))
    page = await sqlite_conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice"))
    assert len(page.conversations) == DEFAULT_PAGE_SIZE and page.next_cursor
    page = await sqlite_conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice", limit=MAX_PAGE_SIZE))
    assert len(page.conversations) == DEFAULT_PAGE_SIZE + 1 and not page.next_cursor
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice", limit=MAX_PAGE_SIZE + 1))
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, None, "limit")


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        "e30",  # base64 of {}
        encode_cursor(PageKey(datetime(2026, 1, 1, tzinfo=UTC), "1")).rstrip("=")[:-3],
        "x" * 5000,
        base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00", "1" * 32]).encode()).decode(),  # naive time
        base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "Z" * 32]).encode()).decode(),  # bad id
        "' OR 1=1 --",
    ],
)
async def test_bad_cursor_is_invalid_argument(sqlite_conv: Harness, cursor: str):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.stub.ListConversations(pb.ListConversationsRequest(user_id="alice", cursor=cursor))
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, None, "cursor")


async def test_title_rules(conv: Harness):
    sqlish = "Robert'); DROP TABLE conversations;-- \t\x1b[1m ünïcødé 🎉"
    c = await conv.create(title=sqlish)
    assert (await conv.get(c.id)).conversation.title == sqlish
    longest = await conv.create(title="x" * MAX_TITLE_CHARS)
    assert len(longest.title) == MAX_TITLE_CHARS

    bad_creates = ["x" * (MAX_TITLE_CHARS + 1), "nul\x00byte"]
    for title in bad_creates:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await conv.create(title=title)
        assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, None, "title")
    for title in ["", "   ", "x" * (MAX_TITLE_CHARS + 1), "nul\x00byte"]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await conv.stub.UpdateConversation(
                pb.UpdateConversationRequest(user_id="alice", conversation_id=c.id, title=title)
            )
        assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, None, "title")
    assert (await conv.get(c.id)).conversation.title == sqlish
    assert sorted(await list_all(conv)) == sorted([c.id, longest.id])


async def test_user_id_is_required(sqlite_conv: Harness):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sqlite_conv.create(user="")
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, None, "user_id")
