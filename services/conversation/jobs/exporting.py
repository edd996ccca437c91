"""The export job: renders a conversation into its pending export row (once; later runs change nothing)."""

from __future__ import annotations

import logging

from chatplane.conversation.exports import render
from chatplane.conversation.jobs.context import JobContext
from chatplane.conversation.models import EXPORT_PENDING

log = logging.getLogger(__name__)

MAX_EXPORT_BYTES = 8 * 1024 * 1024  # well under the 16 MiB gRPC message limit the gateway reads it through
FAILED_MESSAGE = "the export failed, please request a new one"


async def run_export(ctx: JobContext, export_id: str) -> str:
    """The export's status after this run."""
    row = await ctx.exports.by_id(export_id)
    if row is None:
        return "gone"  # its conversation was deleted (the export went with it)
    if row.status != EXPORT_PENDING:
        return row.status  # done by an earlier delivery of this job
    snapshot = await ctx.store.snapshot(row.conversation_id)
    if snapshot is None or snapshot[0].user_id != row.user_id:
        await ctx.exports.finish(export_id, error="the conversation was deleted")
        return "failed"
    content = render(row.format, *snapshot)
    if len(content.encode()) > MAX_EXPORT_BYTES:
        too_large = f"the conversation is too large to export (over {MAX_EXPORT_BYTES} bytes)"
        await ctx.exports.finish(export_id, error=too_large)
        return "failed"
    await ctx.exports.finish(export_id, content=content)
    log.info("conversation exported", extra={"export_id": export_id, "format": row.format, "bytes": len(content)})
    return "completed"


async def give_up(ctx: JobContext, export_id: str) -> None:
    """After the last retry: the export fails instead of staying pending for ever."""
    await ctx.exports.finish(export_id, error=FAILED_MESSAGE)
