"""Protobuf messages -> the public API's JSON objects."""

from __future__ import annotations

from typing import Any

from chatplane.protos.auth.v1 import auth_pb2
from chatplane.protos.conversation.v1 import conversation_pb2
from chatplane.protos.inference.v1 import inference_pb2


def unix(message: Any, name: str) -> int | None:
    """A Timestamp field as unix seconds (what OpenAI uses), None when unset."""
    if not message.HasField(name):
        return None
    return getattr(message, name).seconds


def user(u: auth_pb2.User) -> dict[str, Any]:
    return {"id": u.id, "object": "user", "email": u.email, "created_at": unix(u, "created_at")}


def api_key(k: auth_pb2.ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "object": "api_key",
        "name": k.name,
        "prefix": k.prefix,
        "created_at": unix(k, "created_at"),
        "last_used_at": unix(k, "last_used_at"),
        "revoked_at": unix(k, "revoked_at"),
    }


def model(m: inference_pb2.Model) -> dict[str, Any]:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by or "chatplane"}


def conversation(c: conversation_pb2.Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "conversation",
        "title": c.title,
        "archived": c.archived,
        "created_at": unix(c, "created_at"),
        "updated_at": unix(c, "updated_at"),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def message(m: conversation_pb2.Message) -> dict[str, Any]:
    incomplete = m.status == conversation_pb2.MESSAGE_STATUS_INCOMPLETE
    out: dict[str, Any] = {
        "id": m.id,
        "object": "conversation.message",
        "role": m.role,
        "content": m.content,
        "status": "incomplete" if incomplete else "complete",
        "model": m.model or None,
        "finish_reason": m.finish_reason or None,
        "usage": usage(m.prompt_tokens, m.completion_tokens) if m.role == "assistant" else None,
        "created_at": unix(m, "created_at"),
    }
    if m.tool_calls:  # an assistant message of the Responses API that called functions
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:  # a function's result
        out["tool_call_id"] = m.tool_call_id
    return out
