"""Chat history in turns, as both the conversation service (capping what it sends) and inference (fitting it to the
context window) see it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class _HasRole(Protocol):
    role: str


M = TypeVar("M", bound=_HasRole)


def group_turns(history: Sequence[M]) -> list[list[M]]:
    """Split the history into turns: a user message with the messages that follow it until the next one (leading
    messages before any user message are a turn too). History is left out a whole turn at a time, so a reply never
    stays without the question it answers."""
    turns: list[list[M]] = []
    for message in history:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns
