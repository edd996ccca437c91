"""Background jobs of the conversation service, run by a Celery worker (``python -m chatplane.conversation worker``).

- ``title``: after a conversation's first exchange, the model names it (a user's own title always wins);
- ``export``: a conversation rendered as Markdown or JSON into its export row;
- ``retention``: scheduled; deletes archived conversations untouched for ``retention_days``.

Every job is idempotent (running it twice changes nothing) and retried with exponential backoff on transient errors,
so the queue may deliver at least once (late acknowledgement).
"""

TITLE_TASK = "chatplane.conversation.title"
EXPORT_TASK = "chatplane.conversation.export"
RETENTION_TASK = "chatplane.conversation.retention"
EXPORT_EXPIRY_TASK = "chatplane.conversation.export_expiry"
