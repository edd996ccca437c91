"""The conversation domain core: conversations owned by users, replies streamed through inference, exports.

It decides; its dependencies (the stores, the inference client, the job queue) are handed to it, built by the
server (``server.py``). The gRPC adapter (``servicer.py``) converts messages and maps :class:`ServiceError` to
statuses; a conversation turn's streaming is in ``turns.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from chatplane.common.db import migrate
from chatplane.common.inference import InferenceClient
from chatplane.conversation import validation
from chatplane.conversation.errors import ServiceError, invalid, not_found
from chatplane.conversation.exports import FORMATS
from chatplane.conversation.jobs.queue import EnqueueError, JobQueue
from chatplane.conversation.models import Conversation, ExportJob, Message
from chatplane.conversation.replies import Emit, RespondRequest, SendRequest
from chatplane.conversation.settings import ConversationSettings
from chatplane.conversation.store import ConversationStore, ExportStore, PageKey, StoredReply
from chatplane.conversation.turns import Turns

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate_database(url: str) -> None:
    """Upgrade the database to the latest revision."""
    await migrate(MIGRATIONS, url)


class ConversationCore:
    def __init__(
        self,
        settings: ConversationSettings,
        store: ConversationStore,
        exports: ExportStore,
        inference: InferenceClient,
        jobs: JobQueue | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.exports = exports
        self.inference = inference
        self.jobs = jobs  # None: no background jobs (titles are not made, exports refused)
        self.turns = Turns(settings, store, inference, jobs)

    async def close(self) -> None:
        """Finish the protected writes still running (partial replies) and the queued jobs."""
        await self.turns.close()

    # -- conversations ---------------------------------------------------------------------------------------------

    async def create_conversation(self, user_id: str, title: str) -> Conversation:
        user_id = validation.user_id(user_id)
        title = validation.title(title, default=validation.DEFAULT_TITLE)
        return await self.store.create_conversation(user_id, title)

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str, include_archived: bool
    ) -> tuple[list[Conversation], str]:
        """A page of the user's conversations, newest first, and the cursor of the next page ("" when none)."""
        user_id = validation.user_id(user_id)
        size = validation.page_size(limit)
        after = validation.decode_cursor(cursor)
        rows = await self.store.list_conversations(
            user_id, limit=size + 1, after=after, include_archived=include_archived
        )
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        last = rows[-1]
        return rows, validation.encode_cursor(PageKey(last.updated_at, last.id))

    async def get_conversation(
        self, user_id: str, conversation_id: str, *, message_limit: int = 0, messages_cursor: str = ""
    ) -> tuple[Conversation, list[Message], str]:
        """The conversation, one page of its messages (oldest first) and the cursor of the next page ("": none)."""
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        limit = validation.message_page_size(message_limit)
        after = validation.decode_message_cursor(messages_cursor)
        row = await self.store.get_conversation(user_id, conversation_id)
        if row is None:
            raise not_found()
        messages = await self.store.messages(conversation_id, after_seq=after, limit=limit + 1)
        if len(messages) <= limit:
            return row, messages, ""
        page = messages[:limit]
        return row, page, validation.encode_message_cursor(page[-1].seq)

    async def update_conversation(
        self, user_id: str, conversation_id: str, *, title: str | None = None, archived: bool | None = None
    ) -> Conversation:
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if title is not None:
            title = validation.title(title)
        row = await self.store.update_conversation(user_id, conversation_id, title=title, archived=archived)
        if row is None:
            raise not_found()
        return row

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if not await self.store.delete_conversation(user_id, conversation_id):
            raise not_found()

    # -- replies ---------------------------------------------------------------------------------------------------

    async def send_message(self, request: SendRequest, emit: Emit) -> None:
        """See :meth:`Turns.send_message`."""
        await self.turns.send_message(request, emit)

    async def respond(self, request: RespondRequest, emit: Emit) -> None:
        """See :meth:`Turns.respond`."""
        await self.turns.respond(request, emit)

    async def get_response(self, user_id: str, reply_id: str) -> StoredReply:
        user_id = validation.user_id(user_id)
        found = await self.store.reply(user_id, reply_id) if validation.is_id(reply_id) else None
        if found is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "response not found")
        return found

    # -- exports ---------------------------------------------------------------------------------------------------

    async def create_export(self, user_id: str, conversation_id: str, fmt: str) -> ExportJob:
        """A pending export of an owned conversation, queued for the worker."""
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if fmt not in FORMATS:
            raise invalid(f"format must be one of {', '.join(FORMATS)}", "format")
        if self.jobs is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "exports are not available: no job queue")
        row = await self.exports.create(user_id, conversation_id, fmt)
        if row is None:
            raise not_found()
        try:
            await self.jobs.export(row.id)
        except EnqueueError as exc:
            log.error("export job not queued", extra={"export_id": row.id, "error": str(exc)})
            await self.exports.finish(row.id, error="the job queue was unavailable, please retry")
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, "the job queue is unavailable, please retry the export"
            ) from None
        return row

    async def get_export(self, user_id: str, conversation_id: str, export_id: str) -> ExportJob:
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if not validation.is_id(export_id):
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "export not found")
        row = await self.exports.get(user_id, conversation_id, export_id)
        if row is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "export not found")
        return row
