"""The chat sent to inference for a new message: the system prompt, the conversation's recent history, the new
message. Inference fits it to the model's context window with its own tokenizer (``GenerateRequest.fit``); here the
history is only capped in messages and characters (whole turns), so that a huge conversation never becomes a huge
request (gRPC messages are capped at 16 MiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.common.chat import group_turns
from chatplane.common.limits import MAX_MESSAGES

# History sent to inference at most: beyond these the oldest turns are dropped before inference fits the rest.
MAX_HISTORY_MESSAGES = MAX_MESSAGES - 2  # room for the system prompt and the new message
MAX_HISTORY_CHARS = 1_000_000


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[tuple[str, str, str], ...] = ()  # assistant: (id, name, arguments)
    tool_call_id: str = ""  # tool

    @property
    def size(self) -> int:
        """Characters, tool calls included."""
        return len(self.content) + sum(len(i) + len(n) + len(a) for i, n, a in self.tool_calls)


def cap_turns(turns: list[list[ChatMessage]], max_messages: int, max_chars: int) -> list[list[ChatMessage]]:
    """Drop the oldest turns until the history is within ``max_messages`` and ``max_chars``."""
    messages = sum(len(t) for t in turns)
    chars = sum(m.size for t in turns for m in t)
    start = 0
    while start < len(turns) and (messages > max_messages or chars > max_chars):
        messages -= len(turns[start])
        chars -= sum(m.size for m in turns[start])
        start += 1
    return turns[start:]


def history_chat(system_prompt: str, history: Sequence[ChatMessage], new: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The chat sent to inference: the system prompt, the recent history within the caps (whole turns), the new
    message or messages. Inference then fits it to the context window (``GenerateRequest.fit``)."""
    turns = cap_turns(
        group_turns([m for m in history if m.content or m.tool_calls]),
        MAX_HISTORY_MESSAGES - len(new) + 1, MAX_HISTORY_CHARS,
    )
    head = [ChatMessage("system", system_prompt)] if system_prompt else []
    return [*head, *(m for t in turns for m in t), *new]
