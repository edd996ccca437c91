"""Exports of a conversation: the stored export jobs, and the Markdown and JSON renderings the worker writes into them.

The renderings depend only on the stored conversation (no "exported at" clock), so running an export twice gives
the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.common.db import new_id, sessionmaker, utcnow, writer
from chatplane.conversation.models import (
    EXPORT_COMPLETED,
    EXPORT_ERROR_CHARS,
    EXPORT_FAILED,
    EXPORT_JSON,
    EXPORT_MARKDOWN,
    EXPORT_PENDING,
    Conversation,
    ExportJob,
    Message,
)

FORMATS = (EXPORT_MARKDOWN, EXPORT_JSON)


class ExportStore:
    """Export rows. Reads by a user are scoped by owner and conversation; the worker reads by id."""

    def __init__(self, engine: AsyncEngine, ttl_seconds: float = 0) -> None:
        self.ttl = timedelta(seconds=ttl_seconds) if ttl_seconds > 0 else None  # None: exports never expire
        self._engine = engine
        self._sessions = sessionmaker(engine)

    async def create(self, user_id: str, conversation_id: str, fmt: str) -> ExportJob | None:
        """A pending export of an owned conversation; None when the conversation is not the user's."""
        async with writer(self._engine), self._sessions() as session, session.begin():
            owned = await session.scalar(
                select(Conversation.id).where(Conversation.id == conversation_id, Conversation.user_id == user_id)
            )
            if owned is None:
                return None
            row = ExportJob(
                id=new_id(),
                conversation_id=conversation_id,
                user_id=user_id,
                format=fmt,
                status=EXPORT_PENDING,
                content=None,
                error="",
                created_at=utcnow(),
                completed_at=None,
            )
            session.add(row)
        return row

    async def get(self, user_id: str, conversation_id: str, export_id: str) -> ExportJob | None:
        """The user's export, None when there is none or it has expired (it is then deleted by :meth:`expire`)."""
        query = select(ExportJob).where(
            ExportJob.id == export_id, ExportJob.conversation_id == conversation_id, ExportJob.user_id == user_id
        )
        if self.ttl is not None:
            query = query.where(ExportJob.created_at >= utcnow() - self.ttl)
        async with self._sessions() as session:
            return await session.scalar(query)

    async def expire(self) -> int:
        """Delete the exports older than the time to live; the number deleted."""
        if self.ttl is None:
            return 0
        async with writer(self._engine), self._sessions() as session, session.begin():
            result = await session.execute(
                delete(ExportJob).where(ExportJob.created_at < utcnow() - self.ttl)
                .execution_options(synchronize_session=False)
            )
        return result.rowcount

    async def by_id(self, export_id: str) -> ExportJob | None:
        async with self._sessions() as session:
            return await session.scalar(select(ExportJob).where(ExportJob.id == export_id))

    async def snapshot(self, conversation_id: str) -> tuple[Conversation, list[Message]] | None:
        """The conversation and all its messages, oldest first, read in one transaction."""
        async with self._sessions() as session, session.begin():
            row = await session.scalar(select(Conversation).where(Conversation.id == conversation_id))
            if row is None:
                return None
            messages = await session.scalars(
                select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq)
            )
            return row, list(messages.all())

    async def finish(self, export_id: str, *, content: str | None = None, error: str = "") -> bool:
        """Complete (content) or fail (error) a pending export. False when it is not pending any more."""
        values = {
            "status": EXPORT_FAILED if content is None else EXPORT_COMPLETED,
            "content": content,
            "error": error[:EXPORT_ERROR_CHARS],
            "completed_at": utcnow(),
        }
        async with writer(self._engine), self._sessions() as session, session.begin():
            result = await session.execute(
                update(ExportJob)
                .where(ExportJob.id == export_id, ExportJob.status == EXPORT_PENDING)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        return result.rowcount == 1


def _stamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def render_json(conversation: Conversation, messages: Sequence[Message]) -> str:
    doc = {
        "id": conversation.id,
        "object": "conversation",
        "title": conversation.title,
        "archived": conversation.archived,
        "created_at": _stamp(conversation.created_at),
        "updated_at": _stamp(conversation.updated_at),
        "messages": [
            {
                "id": m.id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "model": m.model or None,
                "finish_reason": m.finish_reason or None,
                "usage": (
                    {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens}
                    if m.role == "assistant"
                    else None
                ),
                "created_at": _stamp(m.created_at),
                **_tool_fields(m),
            }
            for m in messages
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2)


def render_markdown(conversation: Conversation, messages: Sequence[Message]) -> str:
    """A readable transcript: a heading per message; message text verbatim (it is often Markdown itself)."""
    lines = [
        f"# {_one_line(conversation.title)}",
        "",
        f"- Conversation: `{conversation.id}`",
        f"- Created: {_stamp(conversation.created_at)}",
        f"- Updated: {_stamp(conversation.updated_at)}",
        f"- Messages: {len(messages)}",
    ]
    for m in messages:
        heading = _HEADINGS.get(m.role, m.role.title())
        notes = [_stamp(m.created_at)]
        if m.model:
            notes.append(m.model)
        if m.status != "complete":
            notes.append(f"{m.status}: {m.finish_reason or 'cut short'}")
        if m.tool_call_id:
            notes.append(f"result of `{m.tool_call_id}`")
        lines += ["", f"## {heading}", "", f"_{' · '.join(notes)}_", "", m.content]
        for call in _tool_fields(m).get("tool_calls", ()):
            lines += ["", f"Called `{call['name']}` (`{call['id']}`) with `{call['arguments']}`"]
    return "\n".join(lines) + "\n"


_HEADINGS = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool result"}


def _tool_fields(m: Message) -> dict:
    """An assistant message's function calls, a tool result's call id (messages of the Responses API)."""
    out: dict = {}
    if m.tool_calls:
        try:
            out["tool_calls"] = json.loads(m.tool_calls)
        except ValueError:
            out["tool_calls"] = []
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def render(fmt: str, conversation: Conversation, messages: Sequence[Message]) -> str:
    if fmt == EXPORT_JSON:
        return render_json(conversation, messages)
    if fmt == EXPORT_MARKDOWN:
        return render_markdown(conversation, messages)
    raise ValueError(f"unknown export format {fmt!r}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
