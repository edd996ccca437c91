"""Building the prompt for a new message from a conversation's history, within the model's context window.

Tokens are counted by the inference service (the real tokenizer and chat template), through the ``count`` callable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from chatplane.common.limits import MAX_MESSAGES

# History sent to inference at most: beyond these the oldest turns are dropped before any token is counted, so a
# huge conversation never turns into a huge CountTokens request (gRPC messages are capped at 16 MiB).
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


# Counts the tokens of a chat as the model will see it: returns (prompt_tokens, max_model_len).
CountTokens = Callable[[Sequence[ChatMessage]], Awaitable[tuple[int, int]]]


@dataclass(frozen=True)
class Prompt:
    messages: list[ChatMessage]
    prompt_tokens: int
    max_tokens: int  # the reply budget: prompt_tokens + max_tokens <= max_model_len
    max_model_len: int
    dropped_messages: int  # history messages left out to make it fit


class ContextLengthExceeded(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def group_turns(history: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    """Split the history into turns: a user message with the assistant replies that follow it.

    Dropping happens a whole turn at a time, so a reply never stays without the question it answers.
    """
    turns: list[list[ChatMessage]] = []
    for message in history:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


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


async def build_prompt(
    *,
    system_prompt: str,
    history: Sequence[ChatMessage],
    new_message: ChatMessage | Sequence[ChatMessage],
    max_tokens: int | None,
    default_max_tokens: int,
    count: CountTokens,
) -> Prompt:
    """The chat to send: system prompt, as much recent history as fits, the new message (or messages).

    Fitting means ``prompt_tokens + reply budget <= max_model_len``. The budget is ``max_tokens`` when given, else
    ``default_max_tokens``; the oldest turns are dropped until it fits (never the system prompt or the new message).
    Without an explicit ``max_tokens``, if even the system prompt and the new message leave less room than the
    default budget, the reply gets whatever room is left. Raises :class:`ContextLengthExceeded` when nothing fits.
    Needs one token count when everything fits, otherwise a binary search over the number of dropped turns.
    """
    new_messages = [new_message] if isinstance(new_message, ChatMessage) else list(new_message)
    turns = cap_turns(
        group_turns([m for m in history if m.content or m.tool_calls]),
        MAX_HISTORY_MESSAGES - len(new_messages) + 1, MAX_HISTORY_CHARS,
    )
    head = [ChatMessage("system", system_prompt)] if system_prompt else []
    budget = max_tokens if max_tokens is not None else default_max_tokens
    counted: dict[int, tuple[int, int]] = {}

    def assemble(dropped: int) -> list[ChatMessage]:
        return [*head, *(m for t in turns[dropped:] for m in t), *new_messages]

    async def tokens(dropped: int) -> tuple[int, int]:
        if dropped not in counted:
            counted[dropped] = await count(assemble(dropped))
        return counted[dropped]

    def prompt(dropped: int, reply_budget: int) -> Prompt:
        used, limit = counted[dropped]
        return Prompt(
            messages=assemble(dropped),
            prompt_tokens=used,
            max_tokens=reply_budget,
            max_model_len=limit,
            dropped_messages=sum(len(t) for t in turns[:dropped]),
        )

    used, limit = await tokens(0)
    if used + budget <= limit:
        return prompt(0, budget)

    everything = len(turns)
    least, limit = await tokens(everything)
    if least + budget > limit:
        if least >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but the message needs {least} tokens "
                "without any history. Please shorten the message.",
                param="content",
            )
        if max_tokens is not None:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested {least + budget} "
                f"tokens ({least} in the messages, {budget} in the completion). Please reduce max_tokens.",
                param="max_tokens",
            )
        return prompt(everything, limit - least)

    # Dropping 0 turns does not fit, dropping all does: find the fewest drops that fit (counts only grow with
    # more history, so a binary search is exact).
    low, high = 1, everything
    while low < high:
        middle = (low + high) // 2
        used, limit = await tokens(middle)
        if used + budget <= limit:
            high = middle
        else:
            low = middle + 1
    return prompt(low, budget)
