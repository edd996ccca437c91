"""Conversations of the calling user and their messages (stored by the conversation service)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Path, Query, Request, status

from chatplane.common import limits
from chatplane.gateway import convert
from chatplane.gateway.api_models import check_max_tokens
from chatplane.gateway.deps import BackendsDep, ConversationStub, CurrentPrincipal, SettingsDep
from chatplane.gateway.errors import APIError, invalid, stream_failure, upstream
from chatplane.gateway.metering import MeteredConversationReply, rough_tokens
from chatplane.gateway.observability import observe
from chatplane.gateway.schemas import (
    ConversationCreate,
    ConversationDeleted,
    ConversationList,
    ConversationOut,
    ConversationUpdate,
    ConversationWithMessagesOut,
    MessageCreate,
    SentMessageOut,
)
from chatplane.gateway.sse import DONE, SLOT, TextEvent, answer, event, first_reply
from chatplane.protos.conversation.v1 import conversation_pb2

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

ConversationId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


def _as_after(err: APIError, service_param: str) -> APIError:
    """The conversation service names a bad cursor by its own field; the query parameter is ``after``."""
    if err.param == service_param:
        err.param = "after"
        err.message = "The 'after' cursor is not valid: use a next_cursor from a previous page."
    return err


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConversationOut, summary="Create a conversation")
async def create_conversation(
    principal: CurrentPrincipal, stub: ConversationStub, settings: SettingsDep, body: ConversationCreate | None = None
) -> dict:
    title = body.title if body is not None and body.title is not None else ""
    with upstream("conversation"):
        created = await stub.CreateConversation(
            conversation_pb2.CreateConversationRequest(user_id=principal.user_id, title=title),
            timeout=settings.upstream_timeout_seconds,
        )
    return convert.conversation(created)


@router.get("", response_model=ConversationList, summary="List conversations, newest first")
async def list_conversations(
    principal: CurrentPrincipal,
    stub: ConversationStub,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)] = limits.DEFAULT_PAGE_SIZE,
    after: Annotated[str | None, Query(max_length=1024, pattern=r"^[\x21-\x7e]*$")] = None,
    include_archived: bool = False,
) -> dict:
    try:
        with upstream("conversation"):
            reply = await stub.ListConversations(
                conversation_pb2.ListConversationsRequest(
                    user_id=principal.user_id, limit=limit, cursor=after or "", include_archived=include_archived
                ),
                timeout=settings.upstream_timeout_seconds,
            )
    except APIError as err:
        raise _as_after(err, "cursor") from None
    return {
        "object": "list",
        "data": [convert.conversation(c) for c in reply.conversations],
        "has_more": bool(reply.next_cursor),
        "next_cursor": reply.next_cursor or None,
    }


@router.get(
    "/{conversation_id}",
    response_model=ConversationWithMessagesOut,
    summary="A conversation and one page of its messages, oldest first (next pages: after=next_cursor)",
)
async def get_conversation(
    conversation_id: ConversationId,
    principal: CurrentPrincipal,
    stub: ConversationStub,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_MESSAGE_PAGE)] = limits.DEFAULT_MESSAGE_PAGE,
    after: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = None,
) -> dict:
    try:
        with upstream("conversation"):
            reply = await stub.GetConversation(
                conversation_pb2.GetConversationRequest(
                    user_id=principal.user_id, conversation_id=conversation_id, message_limit=limit,
                    messages_cursor=after or "",
                ),
                timeout=settings.upstream_timeout_seconds,
            )
    except APIError as err:
        raise _as_after(err, "messages_cursor") from None
    return {
        **convert.conversation(reply.conversation),
        "messages": [convert.message(m) for m in reply.messages],
        "has_more": bool(reply.next_messages_cursor),
        "next_cursor": reply.next_messages_cursor or None,
    }


@router.patch("/{conversation_id}", response_model=ConversationOut, summary="Rename or (un)archive a conversation")
async def update_conversation(
    conversation_id: ConversationId,
    body: ConversationUpdate,
    principal: CurrentPrincipal,
    stub: ConversationStub,
    settings: SettingsDep,
) -> dict:
    request = conversation_pb2.UpdateConversationRequest(user_id=principal.user_id, conversation_id=conversation_id)
    if body.title is not None:
        request.title = body.title
    if body.archived is not None:
        request.archived = body.archived
    with upstream("conversation"):
        updated = await stub.UpdateConversation(request, timeout=settings.upstream_timeout_seconds)
    return convert.conversation(updated)


@router.delete("/{conversation_id}", response_model=ConversationDeleted, summary="Delete a conversation")
async def delete_conversation(
    conversation_id: ConversationId, principal: CurrentPrincipal, stub: ConversationStub, settings: SettingsDep
) -> dict:
    with upstream("conversation"):
        await stub.DeleteConversation(
            conversation_pb2.DeleteConversationRequest(user_id=principal.user_id, conversation_id=conversation_id),
            timeout=settings.upstream_timeout_seconds,
        )
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


async def _read(call: Any) -> conversation_pb2.SendMessageEvent | None:
    with upstream("conversation"):
        reply = await call.read()
    return None if reply is grpc.aio.EOF else reply


def _broken() -> APIError:
    return APIError(502, "The conversation service ended the reply unexpectedly.", type="server_error")


@router.post(
    "/{conversation_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=SentMessageOut,
    summary="Send a message and get the assistant's reply (streamed as server-sent events with stream=true); "
            "regenerate=true without content replaces the last reply with a new one to the last user message",
    responses={200: {"description": "With stream=true: the reply's events (server-sent events)",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def send_message(
    conversation_id: ConversationId,
    body: MessageCreate,
    principal: CurrentPrincipal,
    backends: BackendsDep,
    request: Request,
) -> Any:
    if body.regenerate and body.content is not None:
        raise invalid("Send either content or regenerate: a regenerated reply answers the last user message again.",
                      "content")
    if not body.regenerate and body.content is None:
        raise invalid("content is required (or regenerate: true to replace the last reply).", "content")
    content = body.content or ""
    request_id = f"msg-{uuid.uuid4().hex}"
    observe().request_id = request_id  # the access log line names the call
    send = conversation_pb2.SendMessageRequest(
        user_id=principal.user_id,
        conversation_id=conversation_id,
        content=content,
        regenerate=body.regenerate,
        model=body.model or "",
        api_key_id=principal.api_key_id,
        request_id=request_id,
    )
    if body.max_tokens is not None:
        send.max_tokens = body.max_tokens
        with upstream("inference"):
            model = await backends.inference.model(body.model or "")  # "": the default model
        if model is not None:  # an unknown model is the conversation service's 404
            check_max_tokens(model, body.max_tokens, "max_tokens")
    if body.temperature is not None:
        send.temperature = body.temperature

    async def prompt_tokens(exact: bool) -> int:
        # The history is the conversation service's to fit: estimate the new message, settle with the exact usage.
        return rough_tokens(len(content)) + 4

    reserve = body.max_tokens if body.max_tokens is not None else backends.settings.estimated_completion_tokens
    ticket = await backends.admission.admit(principal, prompt_tokens=prompt_tokens, reserve=reserve)
    call = MeteredConversationReply(
        backends.conversation.SendMessage(send, timeout=backends.settings.stream_timeout_seconds),
        backends.admission,
        ticket,
    )
    with ticket.headed():
        # `started`, or an ordinary HTTP error (404 conversation, 400 too long, ...).
        watch, first = await first_reply(request.receive, call, _read, _started)
        return await answer(call, watch, stream=body.stream, events=lambda: _stream(call, first, request_id),
                            whole=lambda: _complete(call, first), status_code=status.HTTP_201_CREATED,
                            headers=ticket.headers)


def _started(first: conversation_pb2.SendMessageEvent | None) -> None:
    if first is None:
        raise _broken()
    if first.WhichOneof("event") == "started":
        observe().model = first.started.model  # the served model: a bounded metrics label


async def _complete(call: Any, reply: conversation_pb2.SendMessageEvent | None) -> dict[str, Any]:
    parts: list[str] = []
    model = ""
    user_message_id = ""
    while reply is not None:
        kind = reply.WhichOneof("event")
        if kind == "started":
            user_message_id, model = reply.started.user_message_id, reply.started.model
        elif kind == "delta":
            parts.append(reply.delta.text)
        elif kind == "done":
            done = reply.done
            if done.HasField("assistant_message"):
                out = convert.message(done.assistant_message)
            else:
                out = {
                    "id": done.assistant_message_id,
                    "object": "conversation.message",
                    "role": "assistant",
                    "content": "".join(parts),
                    "status": "complete",
                    "model": model or None,
                    "finish_reason": done.finish_reason or None,
                    "usage": None,
                    "created_at": None,
                }
            out["usage"] = convert.usage(done.prompt_tokens, done.completion_tokens)
            observe().tokens(model, done.prompt_tokens, done.completion_tokens)
            out["user_message_id"] = done.user_message_id or user_message_id
            return out
        reply = await _read(call)
    raise _broken()


_delta = TextEvent(event({"type": "message.delta", "delta": SLOT}))  # the per-token event, encoded once


async def _stream(call: Any, reply: conversation_pb2.SendMessageEvent | None, request_id: str) -> AsyncIterator[bytes]:
    observation = observe()  # told of each token event once it is sent
    try:
        while reply is not None:
            kind = reply.WhichOneof("event")
            if kind == "started":
                yield event({"type": "message.started", "user_message_id": reply.started.user_message_id,
                             "model": reply.started.model})
            elif kind == "delta":
                if reply.delta.text:
                    yield _delta(reply.delta.text)
                    observation.token()
            elif kind == "done":
                done = reply.done
                observation.tokens("", done.prompt_tokens, done.completion_tokens)
                yield event({
                    "type": "message.done",
                    "user_message_id": done.user_message_id,
                    "assistant_message_id": done.assistant_message_id,
                    "finish_reason": done.finish_reason or None,
                    "usage": convert.usage(done.prompt_tokens, done.completion_tokens),
                })
                yield DONE
                return
            reply = await _read(call)
        raise _broken()
    except Exception as exc:  # noqa: BLE001 - the status line is gone already: the error travels as an event
        yield event(stream_failure(exc, "conversation", request_id).body())
    finally:
        call.cancel()
