"""The conversation service's storage: every SQL statement of the service and its jobs is in this package.

- :class:`ConversationStore` (``conversations.py``): conversations and their messages, with their domain events in
  the same transactions (transactional outbox);
- :class:`ExportStore` (``exports.py``): the export rows the export job fills in;
- ``turn_sql.py``: a conversation turn's statements on the database driver itself (the hot path).
"""

from chatplane.conversation.store.conversations import (
    PRODUCER,
    ConversationMoved,
    ConversationStore,
    NewMessage,
    PageKey,
    StoredReply,
)
from chatplane.conversation.store.exports import ExportStore
from chatplane.conversation.store.turn_sql import HistoryMessage

__all__ = [
    "PRODUCER", "ConversationMoved", "ConversationStore", "ExportStore", "HistoryMessage", "NewMessage", "PageKey",
    "StoredReply",
]
