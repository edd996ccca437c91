"""Conversations and their messages (SQLAlchemy; bound parameters only).

Conversation queries are scoped by the owning user; message queries take a conversation id whose ownership the
caller has checked. ``ConversationStore.transaction`` is the single seam where state changes commit; domain events
(conversation created / deleted, message stored / deleted, completion finished) go into the outbox in the same transaction
(``await chatplane.common.outbox.add_event(session, envelope)``). The statements of a conversation turn
(:meth:`ConversationStore.turn_context`, :meth:`ConversationStore.append_messages`) run on the driver itself
(``turn_sql.py``), in one transaction per append with its events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from chatplane.common import tracing
from chatplane.common.db import new_id, sessionmaker, utcnow, writer
from chatplane.common.events import envelope
from chatplane.common.outbox import add_event, add_events, outbox_row
from chatplane.conversation.models import FINISH_REASON_CHARS, MODEL_CHARS, Conversation, ExportJob, Message
from chatplane.conversation.store.turn_sql import HistoryMessage, Moved, turn_sql
from chatplane.protos.events.v1 import events_pb2

PRODUCER = "conversation"
_messages = Message.__table__


@dataclass(frozen=True)
class PageKey:
    """Position in a listing: the (updated_at, id) of the last conversation of the previous page."""

    updated_at: datetime
    id: str


@dataclass(frozen=True)
class NewMessage:
    role: str
    content: str
    status: str
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    tool_calls: str = ""  # JSON list of {"id", "name", "arguments"}; "" when none
    tool_call_id: str = ""
    id: str = ""  # empty: a new one


@dataclass(frozen=True)
class StoredReply:
    """An assistant message found by its id (a stored response), with where it sits in its conversation."""

    conversation: Conversation
    message: Message
    latest: bool  # no message comes after it
    previous_reply_id: str  # the assistant message before it ("" when none)


class ConversationMoved(Exception):
    """The conversation got messages after the one a reply was to follow."""


class ConversationStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine)
        self._turns = turn_sql(engine)  # a turn's statements, on the driver itself

    async def close(self) -> None:
        await self._turns.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """The one place where state changes commit.

        Everything done on the yielded session commits together or not at all. Domain events (the transactional
        outbox) are to be added to this same session, so they commit atomically with the change they describe.
        """
        async with writer(self.engine), self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    # -- conversations ---------------------------------------------------------------------------------------------

    async def create_conversation(self, user_id: str, title: str, conversation_id: str = "") -> Conversation:
        now = utcnow()
        row = Conversation(id=conversation_id or new_id(), user_id=user_id, title=title, archived=False, created_at=now, updated_at=now)
        async with self.transaction() as session:
            session.add(row)
            await add_event(
                session,
                envelope(events_pb2.ConversationCreated(conversation_id=row.id, user_id=user_id), producer=PRODUCER),
            )
        return row

    async def get_conversation(self, user_id: str, conversation_id: str) -> Conversation | None:
        async with self._read() as session:
            return await _owned(session, user_id, conversation_id)

    async def list_conversations(
        self, user_id: str, *, limit: int, after: PageKey | None, include_archived: bool
    ) -> list[Conversation]:
        """Newest first by (updated_at, id); at most ``limit`` rows after ``after``."""
        query = select(Conversation).where(Conversation.user_id == user_id)
        if not include_archived:
            query = query.where(Conversation.archived.is_(False))
        if after is not None:
            query = query.where(
                or_(
                    Conversation.updated_at < after.updated_at,
                    and_(Conversation.updated_at == after.updated_at, Conversation.id < after.id),
                )
            )
        query = query.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
        async with self._read() as session:
            return list((await session.scalars(query)).all())

    async def update_conversation(
        self, user_id: str, conversation_id: str, *, title: str | None, archived: bool | None
    ) -> Conversation | None:
        """Change the given fields; updated_at moves only when something actually changed."""
        values: dict[str, object] = {}
        if title is not None:
            values["title"] = title
        if archived is not None:
            values["archived"] = archived
        async with self.transaction() as session:
            if values:
                # Writing first takes the lock up front (SQLite cannot upgrade a read to a write under contention).
                await session.execute(
                    update(Conversation)
                    .where(
                        Conversation.id == conversation_id,
                        Conversation.user_id == user_id,
                        or_(*(getattr(Conversation, name) != value for name, value in values.items())),
                    )
                    .values(**values, updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
            return await _owned(session, user_id, conversation_id)

    async def delete_conversation(
        self, user_id: str, conversation_id: str, *, reason: str = "user", archived_before: datetime | None = None
    ) -> bool:
        """Delete a conversation, its messages and exports, with its ``conversation.deleted`` event (``reason``:
        "user", "retention"). ``archived_before``: only if it is archived and untouched since then (checked in the
        delete itself, so that a conversation unarchived or touched meanwhile stays)."""
        owned = [Conversation.id == conversation_id, Conversation.user_id == user_id]
        if archived_before is not None:
            owned += [Conversation.archived.is_(True), Conversation.updated_at < archived_before]
        async with self.transaction() as session:
            deleted = await session.execute(delete(Conversation).where(*owned).execution_options(
                synchronize_session=False))
            if deleted.rowcount != 1:
                return False
            # ON DELETE CASCADE does the same; explicit, so that nothing depends on SQLite's foreign_keys pragma.
            await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            await session.execute(delete(ExportJob).where(ExportJob.conversation_id == conversation_id))
            payload = events_pb2.ConversationDeleted(conversation_id=conversation_id, user_id=user_id, reason=reason)
            await add_event(session, envelope(payload, producer=PRODUCER))
        return True

    async def archived_before(self, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
        """(conversation id, user id) of at most ``limit`` archived conversations untouched since ``cutoff``, the
        longest untouched first."""
        query = (
            select(Conversation.id, Conversation.user_id)
            .where(Conversation.archived.is_(True), Conversation.updated_at < cutoff)
            .order_by(Conversation.updated_at).limit(limit)
        )
        async with self.engine.connect() as conn:
            return [(row[0], row[1]) for row in (await conn.execute(query)).all()]

    async def title_source(self, conversation_id: str, limit: int) -> tuple[str, list[Message]] | None:
        """The conversation's title and its first ``limit`` messages (None: no such conversation)."""
        async with self._read() as session:
            title = await session.scalar(select(Conversation.title).where(Conversation.id == conversation_id))
            if title is None:
                return None
            first = await session.scalars(
                select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq).limit(limit)
            )
            return title, list(first.all())

    async def replace_title(self, conversation_id: str, old: str, new: str) -> bool:
        """Set the title while it is still ``old`` (a user's rename wins); updated_at stays (a title is not
        activity, and must not reorder the list)."""
        async with self.transaction() as session:
            result = await session.execute(
                update(Conversation).where(Conversation.id == conversation_id, Conversation.title == old)
                .values(title=new).execution_options(synchronize_session=False)
            )
        return result.rowcount == 1

    # -- messages --------------------------------------------------------------------------------------------------

    async def messages(self, conversation_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Message]:
        """Messages of a conversation after position ``after_seq``, oldest first, at most ``limit``. Callers check
        ownership first."""
        query = select(Message).where(Message.conversation_id == conversation_id, Message.seq > after_seq)
        query = query.order_by(Message.seq)
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as session:
            return list((await session.scalars(query)).all())

    async def snapshot(self, conversation_id: str) -> tuple[Conversation, list[Message]] | None:
        """The conversation and all its messages, oldest first, read in one transaction (an export's source)."""
        async with self._read() as session, session.begin():
            row = await session.scalar(select(Conversation).where(Conversation.id == conversation_id))
            if row is None:
                return None
            messages = await session.scalars(
                select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq)
            )
            return row, list(messages.all())

    async def turn_context(
        self, user_id: str, conversation_id: str, limit: int
    ) -> tuple[str, list[HistoryMessage]] | None:
        """The conversation's title and its last ``limit`` messages, oldest first, in one statement (None: not the
        user's conversation)."""
        return await self._turns.context(user_id, conversation_id, limit)

    async def append_message(
        self,
        user_id: str,
        conversation_id: str,
        new: NewMessage,
        completion: events_pb2.CompletionFinished | None = None,
    ) -> Message | None:
        """Store a message at the end of a conversation and touch the conversation's updated_at.

        Writes a ``message.stored`` event and, for a reply, its ``completion.finished`` event (``completion``), in
        the same transaction.

        None when the conversation does not exist (any more) or is not the user's. The conversation row is updated
        first: that takes its row lock (PostgreSQL) or the write lock (SQLite), so concurrent appends to one
        conversation get distinct, ordered ``seq`` values.
        """
        rows = await self.append_messages(user_id, conversation_id, [new], completion)
        return rows[0] if rows else None

    async def append_messages(
        self,
        user_id: str,
        conversation_id: str,
        news: list[NewMessage],
        completion: events_pb2.CompletionFinished | None = None,
        *,
        after: str | None = None,
        drop_after: int | None = None,
    ) -> list[Message] | None:
        """Store messages, in order, at the end of a conversation in one transaction (see :meth:`append_message`).

        ``after``: the id of the message they must follow; :class:`ConversationMoved` when another came since.
        ``drop_after``: the messages after this position are deleted first, each with a ``message.deleted`` event.
        """
        now = utcnow()
        rows: list[Message] = []
        traceparent = tracing.current_traceparent()  # the events' (build may run in the driver's thread)

        def build(last: int, dropped: list[tuple[str, int]]) -> tuple[list[dict], list[tuple]]:
            values, events = [], []
            for message_id, seq in dropped:
                events.append(envelope(events_pb2.MessageDeleted(
                    conversation_id=conversation_id, user_id=user_id, message_id=message_id, seq=seq,
                    reason="regenerated",
                ), producer=PRODUCER, traceparent=traceparent))
            for i, new in enumerate(news):
                row = dict(
                    id=new.id or new_id(), conversation_id=conversation_id, seq=last + 1 + i, role=new.role,
                    content=new.content, status=new.status,
                    model=new.model[:MODEL_CHARS],  # names come from inference; never fail a reply on a long one
                    prompt_tokens=new.prompt_tokens, completion_tokens=new.completion_tokens,
                    finish_reason=new.finish_reason[:FINISH_REASON_CHARS], created_at=now, tool_calls=new.tool_calls,
                    tool_call_id=new.tool_call_id,
                )
                values.append(row)
                rows.append(Message(**row))
                events.append(envelope(events_pb2.MessageStored(
                    conversation_id=conversation_id, user_id=user_id, message_id=row["id"], role=new.role,
                    status=new.status, seq=row["seq"],
                ), producer=PRODUCER, traceparent=traceparent))
            if completion is not None:
                events.append(envelope(completion, producer=PRODUCER, traceparent=traceparent))
            return values, [outbox_row(e, now) for e in events]

        try:
            if await self._turns.append(user_id, conversation_id, now, build, after, drop_after) is None:
                return None
        except Moved:
            raise ConversationMoved(conversation_id) from None
        return rows  # plain objects with the values just written (never attached to a session)

    async def record_completion(self, completion: events_pb2.CompletionFinished) -> None:
        """The ``completion.finished`` event of a reply that is not stored."""
        async with self.transaction() as session:
            await add_events(session, [envelope(completion, producer=PRODUCER)])

    async def reply(self, user_id: str, message_id: str) -> StoredReply | None:
        """An assistant message of one of the user's conversations, by id (None: no such reply of theirs)."""
        async with self._read() as session, session.begin():
            found = (await session.execute(
                select(Message, Conversation)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.id == message_id, Conversation.user_id == user_id, Message.role == "assistant")
            )).first()
            if found is None:
                return None
            message, conversation = found
            later = await session.scalar(
                select(func.count()).select_from(_messages).where(
                    _messages.c.conversation_id == conversation.id, _messages.c.seq > message.seq)
            )
            previous = await session.scalar(
                select(_messages.c.id).where(
                    _messages.c.conversation_id == conversation.id, _messages.c.seq < message.seq,
                    _messages.c.role == "assistant",
                ).order_by(_messages.c.seq.desc()).limit(1)
            )
        return StoredReply(conversation, message, not later, previous or "")

    async def messages_until(self, conversation_id: str, seq: int, limit: int) -> list[Message]:
        """The last ``limit`` messages up to position ``seq`` (included), oldest first."""
        query = (
            select(Message)
            .where(Message.conversation_id == conversation_id, Message.seq <= seq)
            .order_by(Message.seq.desc())
            .limit(limit)
        )
        async with self._read() as session:
            rows = list((await session.scalars(query)).all())
        rows.reverse()
        return rows


async def _owned(session: AsyncSession, user_id: str, conversation_id: str) -> Conversation | None:
    query = select(Conversation).where(Conversation.id == conversation_id, Conversation.user_id == user_id)
    return await session.scalar(query)
