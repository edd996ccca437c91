"""The title job: after a conversation's first exchange, the model names it.

The title is stored only while the conversation still has the default title, so a rename by the user always wins
(also one made while the model was writing), and running the job again changes nothing.
"""

from __future__ import annotations

import logging
import re

from chatplane.common.errors import ServiceError
from chatplane.conversation.jobs.context import JobContext
from chatplane.conversation.jobs.errors import PermanentJobError
from chatplane.conversation.models import ROLE_ASSISTANT, ROLE_USER
from chatplane.conversation.validation import DEFAULT_TITLE
from chatplane.protos.inference.v1 import inference_pb2

log = logging.getLogger(__name__)

TITLE_MAX_CHARS = 60
EXCERPT_CHARS = 1000  # of each message shown to the model: a title needs the gist, and the prompt stays small
TITLE_TIMEOUT_SECONDS = 60.0
INSTRUCTION = (
    "You write short titles for chat conversations. Reply with one title of at most six words that says what the "
    "conversation is about. Reply with the title only: no quotes, no explanation."
)

_QUOTES = "\"“”„«»‹›`"
_EDGE = "'‘’*_#~ "
_PREFIX = re.compile(r"^\s*(?:title|conversation title)\s*[:\-–]\s*", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_title(text: str, max_chars: int = TITLE_MAX_CHARS) -> str:
    """One line, no quotes, no markup at the edges, no trailing full stop, at most ``max_chars`` (cut at a word)."""
    line = next((ln for ln in text.splitlines() if ln.strip(_EDGE + _QUOTES + "\t")), "")
    line = _CONTROL.sub(" ", line)
    line = _PREFIX.sub("", line)
    line = line.translate({ord(c): None for c in _QUOTES})
    line = " ".join(line.split()).strip(_EDGE)
    line = line.rstrip(".,;:!-–— ").strip(_EDGE)
    if len(line) > max_chars:
        cut = line[: max_chars + 1].rsplit(" ", 1)[0] if " " in line[:max_chars] else line[:max_chars]
        line = cut[:max_chars].rstrip(".,;:!-–— ").strip(_EDGE)
    return line


def fallback_title(first_user_message: str) -> str:
    """When the model gives nothing usable: the start of the user's first message."""
    return clean_title(first_user_message)


def title_prompt(user_text: str, assistant_text: str) -> inference_pb2.ChatMessages:
    exchange = f"User: {user_text[:EXCERPT_CHARS]}"
    if assistant_text:
        exchange += f"\nAssistant: {assistant_text[:EXCERPT_CHARS]}"
    return inference_pb2.ChatMessages(
        messages=[
            inference_pb2.ChatMessage(role="system", content=INSTRUCTION),
            inference_pb2.ChatMessage(role="user", content=f"{exchange}\n\nTitle for this conversation:"),
        ]
    )


async def ask_model(ctx: JobContext, user_text: str, assistant_text: str) -> str:
    request = inference_pb2.GenerateRequest(
        chat=title_prompt(user_text, assistant_text),
        sampling=inference_pb2.SamplingParams(max_tokens=ctx.settings.title_max_tokens, temperature=0.2),
    )
    parts: list[str] = []
    try:
        async for chunk in ctx.inference.generate(
            request, timeout=min(TITLE_TIMEOUT_SECONDS, ctx.settings.inference_timeout_seconds)
        ):
            parts.append(chunk.text)
    except ServiceError as err:
        if err.transient:
            raise  # retried with backoff
        log.warning("the model could not write a title", extra={"status": err.status.name})
        return ""
    return "".join(parts)


async def generate_title(ctx: JobContext, conversation_id: str) -> str | None:
    """Name the conversation; the stored title, or None when there was nothing to do."""
    source = await ctx.store.title_source(conversation_id, 8)
    if source is None or source[0] != DEFAULT_TITLE:
        return None  # deleted, renamed, or titled by an earlier run
    first = source[1]
    user = next((m for m in first if m.role == ROLE_USER), None)
    if user is None:
        raise PermanentJobError("the conversation has no message to make a title from")
    assistant = next((m for m in first if m.role == ROLE_ASSISTANT and m.content.strip()), None)

    title = clean_title(await ask_model(ctx, user.content, assistant.content if assistant else ""))
    if not title:
        title = fallback_title(user.content)
    if not title:
        return None
    if not await ctx.store.replace_title(conversation_id, DEFAULT_TITLE, title):  # a user's rename wins
        return None
    log.info("conversation titled", extra={"conversation_id": conversation_id, "chars": len(title)})
    return title
