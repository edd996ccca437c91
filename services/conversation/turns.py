"""A conversation turn: the history read, one inference call that fits it to the context window and streams the
reply, the input stored with its events, the reply stored with its events (a reply cut short too).

Per turn: one statement reads the history; one transaction stores the input (once inference has taken the request,
so that a request it refuses, e.g. too long for the window, stores nothing); one transaction stores the reply.
Inference fits the history with the model's own tokenizer (``GenerateRequest.fit``) and says on its first message
what it left out and how many tokens the prompt has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from chatplane.common.db import new_id
from chatplane.common.inference import InferenceClient
from chatplane.common.streams import ReadAhead
from chatplane.conversation import validation
from chatplane.conversation.errors import ServiceError, from_inference, invalid, not_found
from chatplane.conversation.jobs.queue import EnqueueError, JobQueue
from chatplane.conversation.models import ROLE_ASSISTANT, ROLE_USER, STATUS_COMPLETE, Message
from chatplane.conversation.prompt import MAX_HISTORY_MESSAGES, ChatMessage
from chatplane.conversation.regenerate import Replaced, Streaming, in_progress, regeneration
from chatplane.conversation.replies import (
    Delta,
    Done,
    Emit,
    Reply,
    RespondRequest,
    SendRequest,
    Started,
    calls_json,
    generate_request,
    input_message,
)
from chatplane.conversation.settings import ConversationSettings
from chatplane.conversation.store import ConversationMoved, ConversationStore, HistoryMessage, NewMessage
from chatplane.protos.inference.v1 import inference_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")
# Inference refused the request itself (nothing of it is stored); other failures after it reached a replica keep
# the input, as a reply that failed does.
_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
}
PREVIOUS_NOT_FOUND = "previous response not found"

StoreInput = Callable[[], Awaitable[Message | None]]


class Turns:
    """Sends messages and responses; writes that must finish even when the caller goes away run to their end."""

    def __init__(
        self, settings: ConversationSettings, store: ConversationStore, inference: InferenceClient,
        jobs: JobQueue | None,
    ) -> None:
        self.settings, self.store, self.inference, self.jobs = settings, store, inference, jobs
        self._pending: set[asyncio.Task] = set()
        self._streaming = Streaming()

    async def close(self) -> None:
        """Finish the protected writes still running (partial replies) and the queued title jobs."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def send_message(self, request: SendRequest, emit: Emit) -> None:
        """Store the user's message, stream the reply from inference through ``emit``, store the reply.

        Events: one :class:`Started`, a :class:`Delta` per text chunk, one :class:`Done`. Nothing is stored when the
        request is invalid, the prompt cannot fit or inference cannot be reached. When the caller goes away
        (cancellation) the inference call is cancelled and the partial reply is stored as incomplete; when inference
        fails mid-stream the partial reply (if any) is stored as incomplete and the failure is raised.

        ``regenerate``: no new message; the last user message is answered again and the new reply replaces the
        messages after it (:mod:`~chatplane.conversation.regenerate`).
        """
        user_id = validation.user_id(request.user_id)
        content = request.content if request.regenerate else validation.content(request.content)
        max_tokens = validation.max_tokens(request.max_tokens)
        temperature = validation.temperature(request.temperature)
        requested_model = validation.model(request.model)
        request_id = validation.request_id(request.request_id) or new_id()
        conversation_id = validation.conversation_id(request.conversation_id)
        started = time.monotonic()

        found = await self.store.turn_context(user_id, conversation_id, MAX_HISTORY_MESSAGES)
        if found is None:
            raise not_found()
        title, history = found
        replaced: Replaced | None = None
        if request.regenerate:
            history, replaced = regeneration(conversation_id, content, history)
            content = replaced.answered.content
        model = requested_model or await self._served_model()
        generate = generate_request(
            self.settings.system_prompt, history, [ChatMessage(ROLE_USER, content)], requested_model, request_id,
            max_tokens, temperature, self.settings.default_max_tokens,
        )
        reply = Reply(model=model, user_id=user_id, api_key_id=request.api_key_id[:64], request_id=request_id,
                      conversation_id=conversation_id, started=started)

        async def store_input() -> Message | None:
            if replaced is not None:  # answered again: nothing new to store
                return replaced.answered_message()
            return await self.store.append_message(
                user_id, conversation_id, NewMessage(role=ROLE_USER, content=content, status=STATUS_COMPLETE))

        def on_started(user_message: Message | None) -> Started:
            return Started(user_message=user_message, model=model)

        user_message, assistant = await self._run(
            generate, reply, emit, store_input, on_started, store=True, params={"messages": "content"},
            replaced=replaced)
        if assistant.status == STATUS_COMPLETE and _first_exchange(title, history):
            self._queue_title(conversation_id)
        await emit(Done(user_message=user_message, assistant_message=assistant))

    async def respond(self, request: RespondRequest, emit: Emit) -> None:
        """A reply to input items after the history of ``previous_reply_id``, streamed through ``emit`` like
        :meth:`send_message` (:class:`Started` names the conversation and the reply's id).

        With ``store``: the input items are stored at the end of that conversation (a new one without a previous
        reply), then the reply (incomplete when cut short). Without: nothing is stored, but the completion is still
        recorded for metering. ``previous_reply_id`` must be the latest message of its conversation (a conversation
        does not branch).
        """
        user_id = validation.user_id(request.user_id)
        inputs = [input_message(m, i) for i, m in enumerate(request.input)]
        if not inputs:
            raise invalid("input must not be empty", "input")
        max_tokens = validation.max_tokens(request.max_tokens)
        temperature = validation.temperature(request.temperature)
        requested_model = validation.model(request.model)
        request_id = validation.request_id(request.request_id) or new_id()
        started = time.monotonic()

        previous = None
        history: list[Message] = []  # of the previous response's conversation
        if request.previous_reply_id:
            previous = await self.store.reply(user_id, request.previous_reply_id) if validation.is_id(
                request.previous_reply_id) else None
            if previous is None:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, PREVIOUS_NOT_FOUND,
                                   code="previous_response_not_found", param="previous_response_id")
            if not previous.latest:
                raise invalid("previous_response_id is not the latest response of its conversation: a response "
                              "chain does not branch", "previous_response_id", code="previous_response_not_latest")
            history = await self.store.messages_until(
                previous.conversation.id, previous.message.seq, MAX_HISTORY_MESSAGES
            )
        model = requested_model or await self._served_model()
        system = "\n\n".join(x for x in (self.settings.system_prompt, request.instructions) if x)
        conversation_id = "" if not request.store else previous.conversation.id if previous else new_id()
        generate = generate_request(
            system, history, inputs, requested_model, request_id, max_tokens, temperature,
            self.settings.default_max_tokens, request.tools,
        )
        if request.top_p is not None:
            generate.sampling.top_p = request.top_p
        if request.tool_choice is not None:
            generate.tool_choice.CopyFrom(request.tool_choice)
        if request.parallel_tool_calls is not None:
            generate.parallel_tool_calls = request.parallel_tool_calls
        if request.structured_output is not None:
            generate.structured_output.CopyFrom(request.structured_output)
        reply = Reply(model=model, user_id=user_id, api_key_id=request.api_key_id[:64], request_id=request_id,
                      conversation_id=conversation_id, started=started, path="responses", reply_id=new_id())

        async def store_input() -> Message | None:
            if not request.store:
                return None
            if previous is None:
                await self.store.create_conversation(user_id, validation.DEFAULT_TITLE, conversation_id)
            try:
                stored = await self.store.append_messages(
                    user_id, conversation_id,
                    [NewMessage(role=m.role, content=m.content, status=STATUS_COMPLETE,
                                tool_calls=calls_json(m.tool_calls), tool_call_id=m.tool_call_id) for m in inputs],
                    after=previous.message.id if previous is not None else None,
                )
            except ConversationMoved:
                raise invalid("previous_response_id is not the latest response of its conversation any more",
                              "previous_response_id", code="previous_response_not_latest") from None
            if stored is None:  # deleted meanwhile
                raise ServiceError(grpc.StatusCode.NOT_FOUND, PREVIOUS_NOT_FOUND,
                                   code="previous_response_not_found", param="previous_response_id")
            return stored[-1]

        def on_started(last_input: Message | None) -> Started:
            return Started(user_message=last_input, model=model, conversation_id=conversation_id,
                           reply_id=reply.reply_id)

        last_input, assistant = await self._run(
            generate, reply, emit, store_input, on_started, store=request.store,
            params={"messages": "input", "max_tokens": "max_output_tokens"})
        if request.store and previous is None and assistant.status == STATUS_COMPLETE:
            self._queue_title(conversation_id)
        await emit(Done(user_message=last_input, assistant_message=assistant))

    # -- the stream ------------------------------------------------------------------------------------------------

    async def _run(
        self, generate: inference_pb2.GenerateRequest, reply: Reply, emit: Emit, store_input: StoreInput,
        on_started: Callable[[Message | None], Started], *, store: bool, params: dict[str, str],
        replaced: Replaced | None = None,
    ) -> tuple[Message | None, Message]:
        """Stream the reply: the input is stored once inference took the request (its first message), the reply at
        the end, or cut short (replacing ``replaced``). Returns (the last input stored, the reply)."""
        # Checked where the stream is counted, with no await between: two regenerations cannot both pass.
        if replaced is not None and self._streaming.busy(reply.conversation_id):
            raise in_progress()
        with self._streaming.into(reply.conversation_id if store else ""):
            return await self._stream(generate, reply, emit, store_input, on_started, store, params, replaced)

    async def _stream(
        self, generate: inference_pb2.GenerateRequest, reply: Reply, emit: Emit, store_input: StoreInput,
        on_started: Callable[[Message | None], Started], store: bool, params: dict[str, str],
        replaced: Replaced | None,
    ) -> tuple[Message | None, Message]:
        # Every turn of a conversation goes to the same replica while it can take it: its history is in that
        # replica's prefix cache.
        call = self.inference.generate(generate, key=f"conversation:{reply.conversation_id}")
        # Read ahead while a delta is written to the gateway: what inference sent meanwhile goes on as one delta.
        ahead = ReadAhead(aiter(call))
        stored_input = False
        try:
            try:
                chunks = await ahead.ready()
            except ServiceError as err:
                if err.status not in _REFUSALS and call.replica is not None:
                    await self._protected(store_input())  # inference took it, then failed: the input stays
                raise _refusal(err, params) from None
            user_message = await self._protected(store_input())
            stored_input = True
            if store and user_message is None:  # the conversation was deleted since it was read
                call.cancel()
                raise not_found()
            log.info("reply started", extra={"conversation_id": reply.conversation_id,
                                             "request_id": reply.request_id, "prompt_tokens": chunks[0].prompt_tokens,
                                             "dropped_messages": chunks[0].dropped_messages})
            await emit(on_started(user_message))
            while chunks:
                text: list[str] = []
                pieces = []
                for chunk in chunks:
                    reply.absorb(chunk)
                    text.append(chunk.text)
                    pieces.extend(chunk.tool_calls)
                reply.add_calls(pieces)
                if any(text) or pieces:
                    await emit(Delta("".join(text), tuple(pieces)))
                chunks = await ahead.ready()
        except ServiceError as err:
            if not stored_input:
                raise
            log.warning("inference failed mid-reply", extra={"request_id": reply.request_id,
                                                            "status": err.status.name, "details": err.message})
            if reply.parts or reply.calls:
                await self._protected(self._end(store, reply, "error", replaced))
            raise from_inference(err) from None
        except BaseException:
            # The caller went away (CancelledError) or could not be written to: stop the generation, keep what
            # arrived. The write is shielded so that a cancellation cannot tear it half-way.
            call.cancel()
            if stored_input:
                log.info("reply cancelled", extra={"request_id": reply.request_id, "chars": len(reply.text)})
                # A regeneration stopped before any text keeps the reply it was to replace (its event still meters).
                keep_old = replaced is not None and not (reply.parts or reply.calls)
                await self._protected(self._end(store and not keep_old, reply, "abort", replaced))
            raise
        finally:
            await ahead.close()
        assistant = await self._protected(self._end(store, reply, reply.finish_reason or "stop", replaced))
        if assistant is None:  # the conversation was deleted while the reply streamed
            raise not_found()
        return user_message, assistant

    async def _end(self, store: bool, reply: Reply, finish_reason: str, replaced: Replaced | None = None
                   ) -> Message | None:
        """Store the reply with its completion event (or only the event, when nothing is stored); a regenerated
        reply replaces the messages after the one it answers, unless another message came meanwhile (then only its
        event is stored, so that what was generated is metered all the same)."""
        new, event = reply.ending(finish_reason)
        try:
            if store and replaced is not None:
                return await replaced.store(self.store, reply.user_id, new, event, finish_reason)
            if store:
                stored = await self.store.append_message(reply.user_id, reply.conversation_id, new, event)
                if stored is None:
                    log.info("reply dropped: conversation deleted", extra={"conversation_id": reply.conversation_id})
                return stored
            await self.store.record_completion(event)
        except Exception:
            if finish_reason not in ("abort", "error"):
                raise
            log.exception("storing a partial reply failed", extra={"conversation_id": reply.conversation_id})
            return None
        return reply.unstored(new)

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

    async def _served_model(self) -> str:
        """The name of the default model (for the `started` event)."""
        try:
            model = await self.inference.model("")
        except ServiceError as err:
            raise from_inference(err) from None
        if model is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the inference service serves no model yet")
        return model.id


def _refusal(err: ServiceError, params: dict[str, str]) -> ServiceError:
    """A failure before the first message, as our caller names things (the fitting's params are ours)."""
    if err.code == "context_length_exceeded" and err.param in params:
        return invalid(err.message, params[err.param], code=err.code)
    return from_inference(err)


def _first_exchange(title: str, history: Sequence[HistoryMessage]) -> bool:
    """Whether a reply just completed the first exchange of a conversation that still has the default title."""
    if title != validation.DEFAULT_TITLE:
        return False
    return not any(m.role == ROLE_ASSISTANT and m.status == STATUS_COMPLETE for m in history)
