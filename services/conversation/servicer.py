"""The gRPC adapter: converts messages and calls the domain core; :func:`~chatplane.common.errors.handled` turns its
errors into statuses. No logic of its own."""

from __future__ import annotations

import sqlite3

from asyncpg import PostgresConnectionError
from sqlalchemy.exc import InterfaceError, OperationalError

from chatplane.common import errors
from chatplane.conversation.models import (
    EXPORT_COMPLETED,
    EXPORT_FAILED,
    EXPORT_JSON,
    EXPORT_MARKDOWN,
    EXPORT_PENDING,
    STATUS_COMPLETE,
    STATUS_INCOMPLETE,
    Conversation,
    ExportJob,
    Message,
)
from chatplane.conversation.replies import (
    Delta,
    Done,
    Event,
    InputMessage,
    RespondRequest,
    SendRequest,
    Started,
    chat_message,
)
from chatplane.conversation.service import ConversationCore
from chatplane.protos.conversation.v1 import conversation_pb2 as pb
from chatplane.protos.conversation.v1 import conversation_pb2_grpc

_STATUS = {STATUS_COMPLETE: pb.MESSAGE_STATUS_COMPLETE, STATUS_INCOMPLETE: pb.MESSAGE_STATUS_INCOMPLETE}
_EXPORT_FORMAT = {EXPORT_MARKDOWN: pb.EXPORT_FORMAT_MARKDOWN, EXPORT_JSON: pb.EXPORT_FORMAT_JSON}
_EXPORT_FORMAT_NAME = {value: name for name, value in _EXPORT_FORMAT.items()}
_EXPORT_STATUS = {
    EXPORT_PENDING: pb.EXPORT_STATUS_PENDING,
    EXPORT_COMPLETED: pb.EXPORT_STATUS_COMPLETED,
    EXPORT_FAILED: pb.EXPORT_STATUS_FAILED,
}


def conversation_pb(row: Conversation) -> pb.Conversation:
    msg = pb.Conversation(id=row.id, title=row.title, archived=row.archived)
    msg.created_at.FromDatetime(row.created_at)
    msg.updated_at.FromDatetime(row.updated_at)
    return msg


def message_pb(row: Message) -> pb.Message:
    msg = pb.Message(
        id=row.id,
        role=row.role,
        content=row.content,
        status=_STATUS.get(row.status, pb.MESSAGE_STATUS_UNSPECIFIED),
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        finish_reason=row.finish_reason,
        tool_call_id=row.tool_call_id,
    )
    for call_id, name, arguments in chat_message(row).tool_calls:
        msg.tool_calls.add(id=call_id, name=name, arguments=arguments)
    msg.created_at.FromDatetime(row.created_at)
    return msg


def export_pb(row: ExportJob) -> pb.Export:
    msg = pb.Export(
        id=row.id,
        conversation_id=row.conversation_id,
        format=_EXPORT_FORMAT.get(row.format, pb.EXPORT_FORMAT_UNSPECIFIED),
        status=_EXPORT_STATUS.get(row.status, pb.EXPORT_STATUS_UNSPECIFIED),
        content=row.content or "",
        error=row.error,
    )
    msg.created_at.FromDatetime(row.created_at)
    if row.completed_at is not None:
        msg.completed_at.FromDatetime(row.completed_at)
    return msg


def event_pb(event: Event) -> pb.SendMessageEvent:
    if isinstance(event, Started):
        return pb.SendMessageEvent(
            started=pb.SendMessageStarted(
                user_message_id=event.user_message.id if event.user_message is not None else "", model=event.model,
                conversation_id=event.conversation_id, reply_id=event.reply_id,
            )
        )
    if isinstance(event, Delta):
        return pb.SendMessageEvent(delta=pb.SendMessageDelta(text=event.text, tool_calls=event.tool_calls))
    if isinstance(event, Done):
        reply = event.assistant_message
        return pb.SendMessageEvent(
            done=pb.SendMessageDone(
                user_message_id=event.user_message.id if event.user_message is not None else "",
                assistant_message_id=reply.id,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                finish_reason=reply.finish_reason,
                assistant_message=message_pb(reply),
            )
        )
    raise TypeError(f"unknown event {event!r}")


# The conversation database unreachable or locked (through SQLAlchemy or the turn's own drivers): UNAVAILABLE (the
# gateway answers 503 and the client's service config retries the idempotent reads), not an internal error.
handled = errors.handled(
    unavailable=(OperationalError, InterfaceError, sqlite3.OperationalError, PostgresConnectionError, OSError,
                 TimeoutError),
    unavailable_message="the conversation database is unavailable, retry later",
)


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    def __init__(self, core: ConversationCore) -> None:
        self.core = core

    @handled
    async def CreateConversation(self, request: pb.CreateConversationRequest, context) -> pb.Conversation:  # noqa: N802
        row = await self.core.create_conversation(request.user_id, request.title)
        return conversation_pb(row)

    @handled
    async def ListConversations(  # noqa: N802
        self, request: pb.ListConversationsRequest, context
    ) -> pb.ListConversationsResponse:
        rows, cursor = await self.core.list_conversations(
            request.user_id,
            limit=request.limit,
            cursor=request.cursor,
            include_archived=request.include_archived,
        )
        return pb.ListConversationsResponse(conversations=[conversation_pb(r) for r in rows], next_cursor=cursor)

    @handled
    async def GetConversation(  # noqa: N802
        self, request: pb.GetConversationRequest, context
    ) -> pb.ConversationWithMessages:
        row, messages, cursor = await self.core.get_conversation(
            request.user_id, request.conversation_id, message_limit=request.message_limit,
            messages_cursor=request.messages_cursor,
        )
        return pb.ConversationWithMessages(
            conversation=conversation_pb(row), messages=[message_pb(m) for m in messages], next_messages_cursor=cursor
        )

    @handled
    async def UpdateConversation(self, request: pb.UpdateConversationRequest, context) -> pb.Conversation:  # noqa: N802
        row = await self.core.update_conversation(
            request.user_id,
            request.conversation_id,
            title=request.title if request.HasField("title") else None,
            archived=request.archived if request.HasField("archived") else None,
        )
        return conversation_pb(row)

    @handled
    async def DeleteConversation(  # noqa: N802
        self, request: pb.DeleteConversationRequest, context
    ) -> pb.DeleteConversationResponse:
        await self.core.delete_conversation(request.user_id, request.conversation_id)
        return pb.DeleteConversationResponse()

    @handled
    async def SendMessage(self, request: pb.SendMessageRequest, context) -> None:  # noqa: N802
        # Written with context.write (not as a generator) so that a client cancellation lands inside the core, which
        # then cancels inference and stores the partial reply.
        async def emit(event: Event) -> None:
            await context.write(event_pb(event))

        send = SendRequest(
            user_id=request.user_id,
            conversation_id=request.conversation_id,
            content=request.content,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            temperature=request.temperature if request.HasField("temperature") else None,
            model=request.model,
            api_key_id=request.api_key_id,
            request_id=request.request_id,
            regenerate=request.regenerate,
        )
        await self.core.send_message(send, emit)

    @handled
    async def Respond(self, request: pb.RespondRequest, context) -> None:  # noqa: N802
        async def emit(event: Event) -> None:
            await context.write(event_pb(event))

        respond = RespondRequest(
            user_id=request.user_id,
            input=tuple(
                InputMessage(i.role, i.content, tuple((c.id, c.name, c.arguments) for c in i.tool_calls),
                             i.tool_call_id)
                for i in request.input
            ),
            previous_reply_id=request.previous_response_id,
            instructions=request.instructions,
            model=request.model,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_p=request.top_p if request.HasField("top_p") else None,
            tools=tuple(request.tools),
            tool_choice=request.tool_choice if request.HasField("tool_choice") else None,
            parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None,
            structured_output=request.structured_output if request.HasField("structured_output") else None,
            store=request.store,
            api_key_id=request.api_key_id,
            request_id=request.request_id,
        )
        await self.core.respond(respond, emit)

    @handled
    async def GetResponse(self, request: pb.GetResponseRequest, context) -> pb.StoredResponse:  # noqa: N802
        found = await self.core.get_response(request.user_id, request.response_id)
        return pb.StoredResponse(
            conversation_id=found.conversation.id, message=message_pb(found.message),
            previous_response_id=found.previous_reply_id,
        )

    @handled
    async def CreateExport(self, request: pb.CreateExportRequest, context) -> pb.Export:  # noqa: N802
        row = await self.core.create_export(
            request.user_id, request.conversation_id, _EXPORT_FORMAT_NAME.get(request.format, "")
        )
        return export_pb(row)

    @handled
    async def GetExport(self, request: pb.GetExportRequest, context) -> pb.Export:  # noqa: N802
        row = await self.core.get_export(request.user_id, request.conversation_id, request.export_id)
        return export_pb(row)
