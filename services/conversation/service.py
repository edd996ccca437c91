"""The conversation domain core: conversations owned by users, and replies streamed through inference.

Transport-agnostic: the gRPC adapter (servicer.py) converts messages and maps :class:`ServiceError` to statuses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from chatplane.common.db import make_engine, migrate, new_id, utcnow
from chatplane.common.inference import InferenceClient
from chatplane.common.limits import MAX_MESSAGE_CHARS
from chatplane.common.relay import OutboxRelay
from chatplane.common.streams import ReadAhead
from chatplane.conversation import validation
from chatplane.conversation.errors import ServiceError, from_inference, invalid, not_found
from chatplane.conversation.exports import FORMATS, ExportStore
from chatplane.conversation.jobs.queue import EnqueueError, JobQueue
from chatplane.conversation.models import (
    ROLE_ASSISTANT,
    ROLE_SYSTEM,
    ROLE_TOOL,
    ROLE_USER,
    STATUS_COMPLETE,
    STATUS_INCOMPLETE,
    Conversation,
    ExportJob,
    Message,
)
from chatplane.conversation.prompt import (
    MAX_HISTORY_MESSAGES,
    ChatMessage,
    ContextLengthExceeded,
    build_prompt,
)
from chatplane.conversation.settings import ConversationSettings
from chatplane.conversation.store import ConversationMoved, ConversationStore, NewMessage, PageKey, StoredReply
from chatplane.protos.events.v1 import events_pb2
from chatplane.protos.inference.v1 import inference_pb2

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
UNARY_TIMEOUT_SECONDS = 30.0  # CountTokens, ListModels (capped by inference_timeout_seconds)

T = TypeVar("T")


async def migrate_database(url: str) -> None:
    """Upgrade the database to the latest revision."""
    await migrate(MIGRATIONS, url)


@dataclass(frozen=True)
class SendRequest:
    user_id: str
    conversation_id: str
    content: str
    max_tokens: int | None = None
    temperature: float | None = None
    model: str = ""  # empty: the served model
    api_key_id: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class InputMessage:
    """One input item of a Responses API request."""

    role: str  # user | system | assistant | tool
    content: str
    tool_calls: tuple[tuple[str, str, str], ...] = ()  # assistant: (id, name, arguments)
    tool_call_id: str = ""  # tool


@dataclass(frozen=True)
class RespondRequest:
    """A Responses API request: a reply to ``input`` after the history of ``previous_reply_id``."""

    user_id: str
    input: tuple[InputMessage, ...]
    previous_reply_id: str = ""
    instructions: str = ""
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: tuple[inference_pb2.Tool, ...] = ()
    tool_choice: inference_pb2.ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    structured_output: inference_pb2.StructuredOutput | None = None
    store: bool = True
    api_key_id: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Started:
    user_message: Message | None
    model: str
    conversation_id: str = ""  # Respond: where the reply goes ("" when nothing is stored)
    reply_id: str = ""  # Respond: the id the reply is stored under


@dataclass(frozen=True)
class Delta:
    text: str
    tool_calls: tuple[inference_pb2.ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class Done:
    user_message: Message | None
    assistant_message: Message


Event = Started | Delta | Done
Emit = Callable[[Event], Awaitable[None]]


@dataclass
class _Reply:
    """What the inference stream has said so far."""

    model: str
    prompt_tokens: int
    parts: list[str] = field(default_factory=list)
    finish_reason: str = ""
    completion_tokens: int | None = None  # the engine's count, on the last message
    tokens: int = 0  # counted as the messages arrive: what a reply cut short used
    # For the completion.finished event.
    user_id: str = ""
    api_key_id: str = ""
    request_id: str = ""
    conversation_id: str = ""
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    path: str = "conversation"
    reply_id: str = ""  # the id to store the reply under ("": a new one)
    calls: dict[int, list[str]] = field(default_factory=dict)  # tool call index -> [id, name, arguments...]

    def completion_event(self, finish_reason: str, completion_tokens: int) -> events_pb2.CompletionFinished:
        now = time.monotonic()
        return events_pb2.CompletionFinished(
            request_id=self.request_id,
            user_id=self.user_id,
            api_key_id=self.api_key_id,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=round((now - self.started) * 1000),
            ttft_ms=round((self.first_token_at - self.started) * 1000) if self.first_token_at is not None else 0,
            finish_reason=finish_reason,
            path=self.path,
            conversation_id=self.conversation_id,
        )

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def tool_calls_json(self) -> str:
        """The reply's function calls as stored (a JSON list), "" when none."""
        if not self.calls:
            return ""
        return json.dumps([{"id": c[0], "name": c[1], "arguments": "".join(c[2:])}
                           for _, c in sorted(self.calls.items())], ensure_ascii=False)

    def add_calls(self, pieces) -> None:
        for piece in pieces:
            call = self.calls.setdefault(piece.index, [piece.id, piece.name])
            call[0] = call[0] or piece.id
            call[1] = call[1] or piece.name
            call.append(piece.arguments)

    def absorb(self, chunk: inference_pb2.GenerateResponse) -> None:
        if self.first_token_at is None and (chunk.text or chunk.tool_calls):
            self.first_token_at = time.monotonic()
        if chunk.text:
            self.parts.append(chunk.text)
        self.tokens += chunk.tokens
        if chunk.model:
            self.model = chunk.model
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if chunk.HasField("usage"):
            self.prompt_tokens = chunk.usage.prompt_tokens or self.prompt_tokens
            self.completion_tokens = chunk.usage.completion_tokens


class ConversationCore:
    def __init__(
        self,
        settings: ConversationSettings,
        store: ConversationStore,
        inference: InferenceClient,
        *,
        on_close: Sequence[Callable[[], Awaitable[Any]]] = (),
        jobs: JobQueue | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.inference = inference
        self.jobs = jobs  # None: no background jobs (titles are not made, exports refused)
        self.exports = ExportStore(store.engine, settings.export_ttl_seconds)
        self._on_close = list(on_close)
        self._pending: set[asyncio.Task] = set()
        # Publishes the outbox to Kafka; None when events are disabled (they then wait in the outbox).
        self.relay = (
            OutboxRelay(store.engine, settings.kafka_bootstrap_servers, name="conversation")
            if settings.kafka_bootstrap_servers
            else None
        )

    @classmethod
    def from_settings(cls, settings: ConversationSettings) -> ConversationCore:
        """A core with its own database engine and inference client (closed by :meth:`close`)."""
        engine = make_engine(settings.database_url)
        inference = InferenceClient.from_settings(
            settings,
            timeout=min(UNARY_TIMEOUT_SECONDS, settings.inference_timeout_seconds),
            stream_timeout=settings.inference_timeout_seconds,
        )
        jobs = JobQueue(settings)
        return cls(
            settings,
            ConversationStore(engine),
            inference,
            on_close=[inference.close, engine.dispose, jobs.close],
            jobs=jobs,
        )

    async def prepare(self) -> None:
        """Make the service ready: migrate the database when ``auto_migrate`` is set."""
        self.inference.start()  # discovery and the replicas' watches run from now on
        if self.settings.auto_migrate:
            await migrate_database(self.settings.database_url)
            log.info("database migrated")
        if self.relay is not None:
            self.relay.start()

    async def close(self) -> None:
        """Finish the protected writes still running (partial replies), then close the channel and engine."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.relay is not None:
            await self.relay.stop()
        for close in self._on_close:
            await close()

    # -- conversations ---------------------------------------------------------------------------------------------

    async def create_conversation(self, user_id: str, title: str) -> Conversation:
        user_id = validation.user_id(user_id)
        title = validation.title(title, default=validation.DEFAULT_TITLE)
        return await self.store.create_conversation(user_id, title)

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str, include_archived: bool
    ) -> tuple[list[Conversation], str]:
        """A page of the user's conversations, newest first, and the cursor of the next page ("" when none)."""
        user_id = validation.user_id(user_id)
        size = validation.page_size(limit)
        after = validation.decode_cursor(cursor)
        rows = await self.store.list_conversations(
            user_id, limit=size + 1, after=after, include_archived=include_archived
        )
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        last = rows[-1]
        return rows, validation.encode_cursor(PageKey(last.updated_at, last.id))

    async def get_conversation(
        self, user_id: str, conversation_id: str, *, message_limit: int = 0, messages_cursor: str = ""
    ) -> tuple[Conversation, list[Message], str]:
        """The conversation, one page of its messages (oldest first) and the cursor of the next page ("": none)."""
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        limit = validation.message_page_size(message_limit)
        after = validation.decode_message_cursor(messages_cursor)
        row = await self.store.get_conversation(user_id, conversation_id)
        if row is None:
            raise not_found()
        messages = await self.store.messages(conversation_id, after_seq=after, limit=limit + 1)
        if len(messages) <= limit:
            return row, messages, ""
        page = messages[:limit]
        return row, page, validation.encode_message_cursor(page[-1].seq)

    async def update_conversation(
        self, user_id: str, conversation_id: str, *, title: str | None = None, archived: bool | None = None
    ) -> Conversation:
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if title is not None:
            title = validation.title(title)
        row = await self.store.update_conversation(user_id, conversation_id, title=title, archived=archived)
        if row is None:
            raise not_found()
        return row

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if not await self.store.delete_conversation(user_id, conversation_id):
            raise not_found()

    # -- replies ---------------------------------------------------------------------------------------------------

    async def send_message(self, request: SendRequest, emit: Emit) -> None:
        """Store the user's message, stream the reply from inference through ``emit``, store the reply.

        Events: one :class:`Started`, a :class:`Delta` per text chunk, one :class:`Done`. Nothing is stored when the
        request is invalid, the prompt cannot fit or inference cannot be reached before the user message is stored.
        When the caller goes away (cancellation) the inference call is cancelled and the partial reply is stored as
        incomplete; when inference fails mid-stream the partial reply (if any) is stored as incomplete and the
        failure is raised as a :class:`ServiceError`.
        """
        user_id = validation.user_id(request.user_id)
        content = validation.content(request.content)
        max_tokens = validation.max_tokens(request.max_tokens)
        temperature = validation.temperature(request.temperature)
        requested_model = validation.model(request.model)
        request_id = validation.request_id(request.request_id) or new_id()
        conversation_id = validation.conversation_id(request.conversation_id)
        started = time.monotonic()

        loaded = await self.store.conversation_with_recent_messages(user_id, conversation_id, MAX_HISTORY_MESSAGES)
        if loaded is None:
            raise not_found()
        conversation, history = loaded
        model = requested_model or await self._resolve_served_model()
        try:
            prompt = await build_prompt(
                system_prompt=self.settings.system_prompt,
                history=[chat_message(m) for m in history],
                new_message=ChatMessage(ROLE_USER, content),
                max_tokens=max_tokens,
                default_max_tokens=self.settings.default_max_tokens,
                count=self._token_counter(requested_model),
            )
        except ContextLengthExceeded as exc:
            raise invalid(exc.message, exc.param, code="context_length_exceeded") from None
        log.info(
            "sending message",
            extra={
                "conversation_id": conversation_id,
                "request_id": request_id,
                "prompt_tokens": prompt.prompt_tokens,
                "max_tokens": prompt.max_tokens,
                "dropped_messages": prompt.dropped_messages,
            },
        )

        user_message = await self.store.append_message(
            user_id, conversation_id, NewMessage(role=ROLE_USER, content=content, status=STATUS_COMPLETE)
        )
        if user_message is None:  # deleted since it was read
            raise not_found()
        await emit(Started(user_message=user_message, model=model))

        sampling = inference_pb2.SamplingParams(max_tokens=prompt.max_tokens)
        if temperature is not None:
            sampling.temperature = temperature
        # Every turn of a conversation goes to the same replica while it can take it: its history is in that
        # replica's prefix cache.
        call = self.inference.generate(
            inference_pb2.GenerateRequest(
                model=requested_model,
                chat=_chat(prompt.messages),
                sampling=sampling,
                request_id=request_id,
            ),
            key=f"conversation:{conversation_id}",
        )
        reply = _Reply(
            model=model,
            prompt_tokens=prompt.prompt_tokens,
            user_id=user_id,
            api_key_id=request.api_key_id[:64],
            request_id=request_id,
            conversation_id=conversation_id,
            started=started,
        )
        # Read ahead while a delta is written to the gateway: what inference sent meanwhile goes on as one delta.
        ahead = ReadAhead(aiter(call))
        try:
            while chunks := await ahead.ready():
                for chunk in chunks:
                    reply.absorb(chunk)
                text = "".join([chunk.text for chunk in chunks])
                if text:
                    await emit(Delta(text))
        except ServiceError as err:
            log.warning(
                "inference failed mid-reply",
                extra={"request_id": request_id, "status": err.status.name, "details": err.message},
            )
            if reply.parts:
                await self._protected(self._store_partial(user_id, conversation_id, reply, "error"))
            raise from_inference(err) from None
        except BaseException:
            # The caller went away (CancelledError) or could not be written to: stop the generation, keep what
            # arrived. The write is shielded so that a cancellation cannot tear it half-way.
            call.cancel()
            log.info("reply cancelled", extra={"request_id": request_id, "chars": len(reply.text)})
            await self._protected(self._store_partial(user_id, conversation_id, reply, "abort"))
            raise
        finally:
            await ahead.close()

        finish_reason = reply.finish_reason or "stop"
        assistant = await self._protected(
            self.store.append_message(
                user_id,
                conversation_id,
                NewMessage(
                    role=ROLE_ASSISTANT,
                    content=reply.text,
                    status=STATUS_INCOMPLETE if finish_reason == "abort" else STATUS_COMPLETE,
                    model=reply.model,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens or 0,
                    finish_reason=finish_reason,
                ),
                reply.completion_event(finish_reason, reply.completion_tokens or 0),
            )
        )
        if assistant is None:  # the conversation was deleted while the reply streamed
            raise not_found()
        if assistant.status == STATUS_COMPLETE and _first_exchange(conversation, history):
            self._queue_title(conversation_id)
        await emit(Done(user_message=user_message, assistant_message=assistant))

    # -- responses (the Responses API) ---------------------------------------------------------------------------

    async def respond(self, request: RespondRequest, emit: Emit) -> None:
        """A reply to input items after the history of ``previous_reply_id``, streamed through ``emit`` like
        :meth:`send_message` (:class:`Started` names the conversation and the reply's id).

        With ``store``: the input items are stored at the end of that conversation (a new one without a previous
        reply) before the reply is generated, and the reply after it (incomplete when cut short). Without: nothing
        is stored, but the completion is still recorded for metering. ``previous_reply_id`` must be the latest
        message of its conversation (a conversation does not branch).
        """
        user_id = validation.user_id(request.user_id)
        inputs = [_input_message(m, i) for i, m in enumerate(request.input)]
        if not inputs:
            raise invalid("input must not be empty", "input")
        max_tokens = validation.max_tokens(request.max_tokens)
        temperature = validation.temperature(request.temperature)
        requested_model = validation.model(request.model)
        request_id = validation.request_id(request.request_id) or new_id()
        started = time.monotonic()

        previous = None
        history: list[Message] = []
        if request.previous_reply_id:
            previous = await self.store.reply(user_id, request.previous_reply_id) if validation.is_id(
                request.previous_reply_id) else None
            if previous is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "previous response not found",
                                   code="previous_response_not_found", param="previous_response_id")
            if not previous.latest:
                raise invalid("previous_response_id is not the latest response of its conversation: a response "
                              "chain does not branch", "previous_response_id", code="previous_response_not_latest")
            history = await self.store.messages_until(
                previous.conversation.id, previous.message.seq, MAX_HISTORY_MESSAGES
            )
        model = requested_model or await self._resolve_served_model()
        system = "\n\n".join(x for x in (self.settings.system_prompt, request.instructions) if x)
        try:
            prompt = await build_prompt(
                system_prompt=system,
                history=[chat_message(m) for m in history],
                new_message=[ChatMessage(m.role, m.content, m.tool_calls, m.tool_call_id) for m in inputs],
                max_tokens=max_tokens,
                default_max_tokens=self.settings.default_max_tokens,
                count=self._token_counter(requested_model, request.tools),
            )
        except ContextLengthExceeded as exc:
            raise invalid(exc.message, "input" if exc.param == "content" else "max_output_tokens",
                          code="context_length_exceeded") from None

        conversation = previous.conversation if previous is not None else None
        last_input: Message | None = None
        if request.store:
            if conversation is None:
                conversation = await self.store.create_conversation(user_id, validation.DEFAULT_TITLE)
            try:
                stored = await self.store.append_messages(
                    user_id, conversation.id,
                    [NewMessage(role=m.role, content=m.content, status=STATUS_COMPLETE,
                                tool_calls=_calls_json(m.tool_calls), tool_call_id=m.tool_call_id) for m in inputs],
                    after=previous.message.id if previous is not None else None,
                )
            except ConversationMoved:
                raise invalid("previous_response_id is not the latest response of its conversation any more",
                              "previous_response_id", code="previous_response_not_latest") from None
            if stored is None:  # deleted meanwhile
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "previous response not found",
                                   code="previous_response_not_found", param="previous_response_id")
            last_input = stored[-1]
        conversation_id = conversation.id if conversation is not None and request.store else ""
        reply = _Reply(
            model=model, prompt_tokens=prompt.prompt_tokens, user_id=user_id, api_key_id=request.api_key_id[:64],
            request_id=request_id, conversation_id=conversation_id, started=started, path="responses",
            reply_id=new_id(),
        )
        await emit(Started(user_message=last_input, model=model, conversation_id=conversation_id,
                           reply_id=reply.reply_id))

        sampling = inference_pb2.SamplingParams(max_tokens=prompt.max_tokens)
        if temperature is not None:
            sampling.temperature = temperature
        if request.top_p is not None:
            sampling.top_p = request.top_p
        generate = inference_pb2.GenerateRequest(
            model=requested_model, chat=_chat(prompt.messages), sampling=sampling, request_id=request_id,
            tools=request.tools,
        )
        if request.tool_choice is not None:
            generate.tool_choice.CopyFrom(request.tool_choice)
        if request.parallel_tool_calls is not None:
            generate.parallel_tool_calls = request.parallel_tool_calls
        if request.structured_output is not None:
            generate.structured_output.CopyFrom(request.structured_output)
        call = self.inference.generate(generate, key=f"conversation:{conversation_id}")
        ahead = ReadAhead(aiter(call))
        try:
            while chunks := await ahead.ready():
                text: list[str] = []
                pieces = []
                for chunk in chunks:
                    reply.absorb(chunk)
                    text.append(chunk.text)
                    pieces.extend(chunk.tool_calls)
                reply.add_calls(pieces)
                if any(text) or pieces:
                    await emit(Delta("".join(text), tuple(pieces)))
        except ServiceError as err:
            log.warning("inference failed mid-response",
                        extra={"request_id": request_id, "status": err.status.name, "details": err.message})
            if reply.parts or reply.calls:
                await self._protected(self._end_response(request.store, user_id, conversation_id, reply, "error"))
            raise from_inference(err) from None
        except BaseException:
            call.cancel()
            log.info("response cancelled", extra={"request_id": request_id, "chars": len(reply.text)})
            await self._protected(self._end_response(request.store, user_id, conversation_id, reply, "abort"))
            raise
        finally:
            await ahead.close()

        finish_reason = reply.finish_reason or "stop"
        assistant = await self._protected(
            self._end_response(request.store, user_id, conversation_id, reply, finish_reason)
        )
        if assistant is None:  # the conversation was deleted while the reply streamed
            raise not_found()
        if request.store and previous is None and assistant.status == STATUS_COMPLETE:
            self._queue_title(conversation_id)
        await emit(Done(user_message=last_input, assistant_message=assistant))

    async def _end_response(
        self, store: bool, user_id: str, conversation_id: str, reply: _Reply, finish_reason: str
    ) -> Message | None:
        """Store the reply (or only record its completion, when nothing is stored); a reply cut short (abort,
        error) is incomplete."""
        complete = finish_reason not in ("abort", "error")
        # Cut short: the tokens of the messages that arrived.
        completion_tokens = reply.completion_tokens if reply.completion_tokens is not None else reply.tokens
        event = reply.completion_event(finish_reason, completion_tokens)
        new = NewMessage(
            role=ROLE_ASSISTANT, content=reply.text, status=STATUS_COMPLETE if complete else STATUS_INCOMPLETE,
            model=reply.model, prompt_tokens=reply.prompt_tokens, completion_tokens=completion_tokens,
            finish_reason=finish_reason, tool_calls=reply.tool_calls_json(), id=reply.reply_id,
        )
        if store:
            return await self.store.append_message(user_id, conversation_id, new, event)
        await self.store.record_completion(event)
        return Message(
            id=new.id, conversation_id="", seq=0, role=new.role, content=new.content, status=new.status,
            model=new.model, prompt_tokens=new.prompt_tokens, completion_tokens=new.completion_tokens,
            finish_reason=new.finish_reason, created_at=utcnow(), tool_calls=new.tool_calls, tool_call_id="",
        )

    async def get_response(self, user_id: str, reply_id: str) -> StoredReply:
        user_id = validation.user_id(user_id)
        found = await self.store.reply(user_id, reply_id) if validation.is_id(reply_id) else None
        if found is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "response not found")
        return found

    # -- exports ---------------------------------------------------------------------------------------------------

    async def create_export(self, user_id: str, conversation_id: str, fmt: str) -> ExportJob:
        """A pending export of an owned conversation, queued for the worker."""
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if fmt not in FORMATS:
            raise invalid(f"format must be one of {', '.join(FORMATS)}", "format")
        if self.jobs is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "exports are not available: no job queue")
        row = await self.exports.create(user_id, conversation_id, fmt)
        if row is None:
            raise not_found()
        try:
            await self.jobs.export(row.id)
        except EnqueueError as exc:
            log.error("export job not queued", extra={"export_id": row.id, "error": str(exc)})
            await self.exports.finish(row.id, error="the job queue was unavailable, please retry")
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, "the job queue is unavailable, please retry the export"
            ) from None
        return row

    async def get_export(self, user_id: str, conversation_id: str, export_id: str) -> ExportJob:
        user_id = validation.user_id(user_id)
        conversation_id = validation.conversation_id(conversation_id)
        if not validation.is_id(export_id):
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "export not found")
        row = await self.exports.get(user_id, conversation_id, export_id)
        if row is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "export not found")
        return row

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _queue_title(self, conversation_id: str) -> None:
        """Queue the title job in the background: the reply never waits for, or fails because of, the queue."""
        if self.jobs is None or not self.settings.generate_titles:
            return
        jobs = self.jobs

        async def queue() -> None:
            try:
                await jobs.title(conversation_id)
            except EnqueueError as exc:
                log.warning("title job not queued", extra={"conversation_id": conversation_id, "error": str(exc)})

        task = asyncio.ensure_future(queue())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _protected(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a write to its end even if the caller is cancelled meanwhile (the task is kept until close())."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def _store_partial(self, user_id: str, conversation_id: str, reply: _Reply, finish_reason: str) -> None:
        completion_tokens = reply.completion_tokens if reply.completion_tokens is not None else reply.tokens
        try:
            stored = await self.store.append_message(
                user_id,
                conversation_id,
                NewMessage(
                    role=ROLE_ASSISTANT,
                    content=reply.text,
                    status=STATUS_INCOMPLETE,
                    model=reply.model,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=completion_tokens,
                    finish_reason=finish_reason,
                    tool_calls=reply.tool_calls_json(),
                    id=reply.reply_id,
                ),
                reply.completion_event(finish_reason, completion_tokens),
            )
        except Exception:
            log.exception("storing a partial reply failed", extra={"conversation_id": conversation_id})
            return
        if stored is None:
            log.info("partial reply dropped: conversation deleted", extra={"conversation_id": conversation_id})

    def _token_counter(self, model: str, tools: Sequence[inference_pb2.Tool] = ()):
        async def count(messages: Sequence[ChatMessage]) -> tuple[int, int]:
            try:
                reply = await self.inference.count_tokens(
                    inference_pb2.CountTokensRequest(model=model, chat=_chat(messages), tools=tools)
                )
            except ServiceError as err:
                raise from_inference(err) from None
            return reply.token_count, reply.max_model_len

        return count

    async def _resolve_served_model(self) -> str:
        """The name of the default model (for the `started` event)."""
        try:
            model = await self.inference.model("")
        except ServiceError as err:
            raise from_inference(err) from None
        if model is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the inference service serves no model yet")
        return model.id


def _first_exchange(conversation: Conversation, history: Sequence[Message]) -> bool:
    """Whether a reply just completed the first exchange of a conversation that still has the default title."""
    if conversation.title != validation.DEFAULT_TITLE:
        return False
    return not any(m.role == ROLE_ASSISTANT and m.status == STATUS_COMPLETE for m in history)


def _chat(messages: Sequence[ChatMessage]) -> inference_pb2.ChatMessages:
    return inference_pb2.ChatMessages(
        messages=[
            inference_pb2.ChatMessage(
                role=m.role, content=m.content, tool_call_id=m.tool_call_id,
                tool_calls=[inference_pb2.ToolCall(id=i, name=n, arguments=a) for i, n, a in m.tool_calls],
            )
            for m in messages
        ]
    )


def chat_message(m: Message) -> ChatMessage:
    """A stored message as the prompt has it (the function calls of an assistant message, a tool result's call)."""
    calls: tuple[tuple[str, str, str], ...] = ()
    if m.tool_calls:
        try:
            calls = tuple((c["id"], c["name"], c["arguments"]) for c in json.loads(m.tool_calls))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable tool calls of a stored message", extra={"message_id": m.id})
    return ChatMessage(m.role, m.content, calls, m.tool_call_id)


def _input_message(m: InputMessage, index: int) -> InputMessage:
    """An input item, checked (``input[i]`` names it in errors)."""
    param = f"input[{index}]"
    if m.role not in (ROLE_USER, ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_TOOL):
        raise invalid(f"{param}.role must be one of user, system, assistant, tool", f"{param}.role")
    if len(m.content) > MAX_MESSAGE_CHARS or "\x00" in m.content:
        raise invalid(f"{param} content must be at most {MAX_MESSAGE_CHARS} characters, without NUL", param)
    if m.role == ROLE_TOOL and not m.tool_call_id:
        raise invalid(f"{param} (a function call output) needs its call_id", f"{param}.call_id")
    if m.tool_calls and m.role != ROLE_ASSISTANT:
        raise invalid(f"{param}: only the assistant calls functions", param)
    if not m.content and not m.tool_calls and m.role != ROLE_TOOL:
        raise invalid(f"{param} must not be empty", f"{param}.content")
    return m


def _calls_json(calls: Sequence[tuple[str, str, str]]) -> str:
    if not calls:
        return ""
    return json.dumps([{"id": i, "name": n, "arguments": a} for i, n, a in calls], ensure_ascii=False)
