"""The retention job (scheduled): deletes archived conversations that nobody touched for ``retention_days``.

"Untouched" is measured by ``updated_at``, which archiving itself moves: a conversation is kept at least
``retention_days`` after it was archived. Each deletion is its own transaction together with its deletion event,
so a job that stops half-way leaves nothing half-deleted and a second run only does what is left.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from chatplane.common.db import utcnow
from chatplane.conversation.jobs.context import JobContext

log = logging.getLogger(__name__)

BATCH = 200


async def apply_retention(ctx: JobContext, now: datetime | None = None) -> int:
    """Delete what is due; the number of conversations deleted (0 when retention is off)."""
    days = ctx.settings.retention_days
    if days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=days)
    deleted = 0
    while True:
        batch = await ctx.store.archived_before(cutoff, BATCH)
        for conversation_id, user_id in batch:
            if await ctx.store.delete_conversation(user_id, conversation_id, reason="retention",
                                                   archived_before=cutoff):
                deleted += 1
        if len(batch) < BATCH:
            break
    if deleted:
        log.info("retention deleted archived conversations", extra={"deleted": deleted, "days": days})
    return deleted
