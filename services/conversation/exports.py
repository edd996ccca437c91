"""Exports of a conversation: the Markdown and JSON renderings the export job writes into its export row (stored by
``chatplane.conversation.store.ExportStore``).

The renderings depend only on the stored conversation (no "exported at" clock), so running an export twice gives
the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from chatplane.conversation.models import EXPORT_JSON, EXPORT_MARKDOWN, Conversation, Message

FORMATS = (EXPORT_MARKDOWN, EXPORT_JSON)


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
