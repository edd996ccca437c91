"""Regenerating a conversation's last reply: which user message is answered again and what the new reply replaces.

The new reply is generated from the history up to and including the last user message; the messages after it (the
old reply) are deleted in the transaction that stores the new one (``ConversationStore.append_messages`` with
``drop_after``), each with a ``message.deleted`` event, and only if no message came in meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from chatplane.common.errors import Aborted
from chatplane.conversation.errors import ServiceError, invalid
from chatplane.conversation.models import ROLE_USER, Message
from chatplane.conversation.store import ConversationMoved, ConversationStore, HistoryMessage, NewMessage
from chatplane.protos.events.v1 import events_pb2

REPLY_IN_PROGRESS = "reply_in_progress"


@dataclass(frozen=True)
class Replaced:
    """What a regenerated reply replaces: the messages after ``answered``, as long as ``last_id`` is the last."""

    conversation_id: str
    answered: HistoryMessage  # the user message answered again
    last_id: str  # the conversation's last message when the turn read it

    async def store(self, store: ConversationStore, user_id: str, new: NewMessage,
                    event: events_pb2.CompletionFinished, finish_reason: str) -> Message | None:
        """Store the new reply in place of the old (None: the conversation is gone). When a message came in
        meanwhile, only its completion event is stored (what was generated is metered all the same) and a reply cut
        short is dropped, a finished one is refused (ABORTED)."""
        try:
            rows = await store.append_messages(user_id, self.conversation_id, [new], event, after=self.last_id,
                                               drop_after=self.answered.seq)
        except ConversationMoved:
            await store.record_completion(event)
            if finish_reason in ("abort", "error"):
                return None
            raise moved() from None
        return rows[0] if rows else None

    def answered_message(self) -> Message:
        a = self.answered
        return Message(id=a.id, conversation_id=self.conversation_id, seq=a.seq, role=a.role, content=a.content,
                       status=a.status, tool_calls=a.tool_calls, tool_call_id=a.tool_call_id)


class Streaming:
    """The conversations a reply is streaming into, in this process (a regeneration meanwhile is refused; one on
    another replica is caught when it stores, by ``Replaced.last_id``)."""

    def __init__(self) -> None:
        self._count: Counter[str] = Counter()

    def busy(self, conversation_id: str) -> bool:
        return self._count[conversation_id] > 0

    @contextmanager
    def into(self, conversation_id: str) -> Iterator[None]:
        self._count[conversation_id] += 1
        try:
            yield
        finally:
            self._count[conversation_id] -= 1
            if not self._count[conversation_id]:
                del self._count[conversation_id]


def regeneration(conversation_id: str, content: str, history: Sequence[HistoryMessage]
                 ) -> tuple[list[HistoryMessage], Replaced]:
    """The history before the last user message and what the new reply replaces (``content`` must be empty)."""
    if content:
        raise invalid("content must be empty when regenerating: the last user message is answered again", "content")
    for i in range(len(history) - 1, -1, -1):
        if history[i].role == ROLE_USER:
            return list(history[:i]), Replaced(conversation_id, history[i], history[-1].id)
    raise invalid("the conversation has no user message to answer: send a message first", "regenerate",
                  code="no_user_message")


def in_progress() -> ServiceError:
    return Aborted("a reply of this conversation is still streaming: stop it or let it finish, then regenerate",
                   code=REPLY_IN_PROGRESS, param="regenerate")


def moved() -> ServiceError:
    return Aborted("another message came into the conversation while the reply was regenerated; it was not stored",
                   code=REPLY_IN_PROGRESS, param="regenerate")
