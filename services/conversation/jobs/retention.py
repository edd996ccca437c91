"""The retention job (scheduled): deletes archived conversations that nobody touched for ``retention_days``.

"Untouched" is measured by ``updated_at``, which archiving itself moves: a conversation is kept at least
``retention_days`` after it was archived. Each deletion is its own transaction together with its deletion event,
so a job that stops half-way leaves nothing half-deleted and a second run only does what is left.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.common.db import utcnow
from chatplane.common.events import envelope
from chatplane.common.outbox import add_event
from chatplane.conversation.jobs.context import JobContext
from chatplane.conversation.models import Conversation
from chatplane.conversation.store import PRODUCER
from chatplane.protos.events.v1 import events_pb2

log = logging.getLogger(__name__)

BATCH = 200


async def apply_retention(ctx: JobContext, now: datetime | None = None) -> int:
    """Delete what is due; the number of conversations deleted (0 when retention is off)."""
    days = ctx.settings.retention_days
    if days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=days)

    def due(query):
        return query.where(Conversation.archived.is_(True), Conversation.updated_at < cutoff)

    deleted = 0
    while True:
        async with ctx.sessions() as session:
            batch = (
                await session.execute(
                    due(select(Conversation.id, Conversation.user_id)).order_by(Conversation.updated_at).limit(BATCH)
                )
            ).all()
        for conversation_id, user_id in batch:
            async with ctx.sessions() as session, session.begin():
                # Checked again in the delete itself: a conversation unarchived or touched meanwhile stays.
                result = await session.execute(
                    due(delete(Conversation).where(Conversation.id == conversation_id)).execution_options(
                        synchronize_session=False
                    )
                )
                if result.rowcount == 1:  # messages and exports go by ON DELETE CASCADE
                    await conversation_deleted(session, user_id, conversation_id)
                    deleted += 1
        if len(batch) < BATCH:
            break
    if deleted:
        log.info("retention deleted archived conversations", extra={"deleted": deleted, "days": days})
    return deleted


async def conversation_deleted(session: AsyncSession, user_id: str, conversation_id: str) -> None:
    """The deletion event, written in the transaction that deletes (transactional outbox)."""
    payload = events_pb2.ConversationDeleted(conversation_id=conversation_id, user_id=user_id, reason="retention")
    await add_event(session, envelope(payload, producer=PRODUCER))
