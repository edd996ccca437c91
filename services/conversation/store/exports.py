"""Export rows: a requested export of a conversation, filled in by the export job (the renderings are in
``chatplane.conversation.exports``)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.common.db import new_id, sessionmaker, utcnow, writer
from chatplane.conversation.models import EXPORT_COMPLETED, EXPORT_ERROR_CHARS, EXPORT_FAILED, EXPORT_PENDING, Conversation, ExportJob


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
