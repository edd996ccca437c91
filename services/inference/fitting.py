"""Fitting a chat into the context window (``GenerateRequest.fit``), with the model's own tokenizer.

The messages between a kept head (the system prompt) and a kept tail (the new message or messages) are history, in
turns: a user message and what follows it until the next one. The oldest whole turns are left out until the
prompt's tokens plus the reply budget fit, so a reply never stays without the question it answers. Counting is a
call of the engine's tokenizer in this process: one count when everything fits, otherwise a binary search over the
number of turns left out (counts only grow with more history, so the search is exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chatplane.common.chat import group_turns
from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import Turn


@dataclass(frozen=True)
class Fitted:
    messages: list[Turn]
    prompt_tokens: int
    max_tokens: int  # the reply budget: prompt_tokens + max_tokens <= max_model_len
    dropped_messages: int  # history messages left out, the oldest


def fit(
    messages: Sequence[Turn],
    *,
    keep_first: int,
    keep_last: int,
    max_tokens: int | None,
    default_max_tokens: int,
    max_model_len: int,
    count: Callable[[Sequence[Turn]], int],
) -> Fitted:
    """The chat to generate from and its reply budget; :class:`InvalidArgument` (context_length_exceeded) when
    nothing fits. ``max_tokens``: the caller's explicit budget (None: ``default_max_tokens``, 0 meaning the room
    left, shrunk to the room left when needed)."""
    keep_first = min(keep_first, len(messages))
    keep_last = min(keep_last, len(messages) - keep_first)
    head = list(messages[:keep_first])
    tail = list(messages[len(messages) - keep_last:])
    turns = group_turns(messages[keep_first:len(messages) - keep_last])
    budget = max_tokens if max_tokens is not None else (default_max_tokens or None)
    counted: dict[int, int] = {}

    def assemble(dropped: int) -> list[Turn]:
        return [*head, *(m for t in turns[dropped:] for m in t), *tail]

    def tokens(dropped: int) -> int:
        if dropped not in counted:
            counted[dropped] = count(assemble(dropped))
        return counted[dropped]

    def fitted(dropped: int, reply_budget: int) -> Fitted:
        return Fitted(assemble(dropped), counted[dropped], reply_budget, sum(len(t) for t in turns[:dropped]))

    limit = max_model_len
    if budget is not None and tokens(0) + budget <= limit:
        return fitted(0, budget)
    everything = len(turns)
    least = tokens(everything)
    if least >= limit:
        raise InvalidArgument(
            f"This model's maximum context length is {limit} tokens, but the message needs {least} tokens "
            "without any history. Please shorten the message.",
            param="messages", code="context_length_exceeded",
        )
    if budget is None:  # the room left: as much history as leaves room for a reply
        budget = 1
        if tokens(0) + budget <= limit:
            return fitted(0, limit - counted[0])
    if least + budget > limit:
        if max_tokens is not None:
            raise InvalidArgument(
                f"This model's maximum context length is {limit} tokens. However, you requested {least + budget} "
                f"tokens ({least} in the messages, {budget} in the completion). Please reduce max_tokens.",
                param="max_tokens", code="context_length_exceeded",
            )
        return fitted(everything, limit - least)
    low, high = 1, everything  # dropping none does not fit, dropping all does: the fewest drops that fit
    while low < high:
        middle = (low + high) // 2
        if tokens(middle) + budget <= limit:
            high = middle
        else:
            low = middle + 1
    if max_tokens is None and not default_max_tokens:
        return fitted(low, limit - counted[low])
    return fitted(low, budget)
