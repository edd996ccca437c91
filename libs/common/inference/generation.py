"""One streamed generation through the client: failover before the first token, continuation after it.

A request that fails before its first token is sent to another replica; a reply cut off mid-stream is continued on
another replica from the prompt plus what was already said (the partial reply as an assistant message to continue),
so the caller reads one uninterrupted stream. What cannot be continued (:func:`can_continue`) ends with an error.
A replica whose queue is full (RESOURCE_EXHAUSTED with the code ``rate_limit_exceeded``, before any message of the
call: :func:`is_full`) is healthy, only busy: the request, or a continuation, tries the pool's replicas not tried yet.
When none is left the caller hears that the model is busy (:data:`BUSY`, RESOURCE_EXHAUSTED) if any of them was full,
and a continuation ends as any reply lost mid-stream ends (UNAVAILABLE): never "busy" after text was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from chatplane.common.errors import ServiceError, error_details
from chatplane.common.inference import metrics
from chatplane.common.inference.replica import Pool, Replica, unavailable
from chatplane.protos.inference.v1 import inference_pb2 as pb

if TYPE_CHECKING:
    from chatplane.common.inference.client import InferenceClient

log = logging.getLogger(__name__)

# A replica that answers one of these did not do the request (or stopped doing it): another replica may.
REPLICA_FAILURES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,  # the server cancelled the call (stopped); our own cancel is told apart
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
})
MAX_ATTEMPTS = 4  # replicas one request may try in all (those that were only full are not counted)
# What the caller hears when no replica is left and one of those tried was full: the model is busy (429 at the
# gateway), whatever the others answered; no replica's own words (its address, its queue) reach the caller.
BUSY = "The model is busy: no replica has room for the request now; retry shortly."
FULL_CODE = "rate_limit_exceeded"  # the code of a replica's "my queue is full" refusal


def is_full(err: grpc.aio.AioRpcError) -> bool:
    """Whether a replica refused a call because its queue is full. RESOURCE_EXHAUSTED alone does not say it: gRPC
    also gives it to a message over the size limit, which every replica would refuse alike."""
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_details(err)[0] == FULL_CODE


def can_continue(request: pb.GenerateRequest) -> bool:
    """Whether a reply to ``request`` cut off mid-stream can go on elsewhere from its partial text.

    Chat input only (the partial reply becomes an assistant message to continue). Any request feature whose
    meaning a restart from a text prefix would change (several choices, constrained decoding, log-probabilities)
    must make this False: such a stream ends with an error instead."""
    sampling = request.sampling
    return (
        request.WhichOneof("input") == "chat"
        and sampling.n <= 1
        and not sampling.HasField("logprobs")
        and not sampling.HasField("prompt_logprobs")
        and not request.tools
        and request.structured_output.WhichOneof("format") is None
    )


class Generation:
    """One streamed generation: ``await read()`` gives the next :class:`GenerateResponse`, None at the end; or
    iterate. ``cancel()`` stops it (the replica's engine aborts the request)."""

    def __init__(self, client: InferenceClient, request: pb.GenerateRequest, key: str | None, timeout: float) -> None:
        self.client = client
        self.pool: Pool | None = None  # found at the first read
        self.request = request
        self.key = key
        self.deadline = time.monotonic() + timeout
        self.replica: Replica | None = None  # the replica serving it now
        self.failovers = 0
        self._call = None
        self._tried: set[str] = set()
        self._attempts = 0
        self._full = 0  # of the attempts, those a full replica refused
        self._busy = False  # a replica tried since the request (or its continuation) began looking was full
        self._text: list[str] = []  # the text the caller has been given
        self._given = False  # whether the caller has been given anything (text, tool calls, log-probabilities)
        self._tokens = 0  # completion tokens given
        self._attempt_tokens = 0  # of them, given by the current attempt
        self._prompt_tokens = 0
        self._first_of_attempt = True
        self._strip = ""  # whitespace the continued prefix lost at its end (the chat template trims it)
        self._ended = False
        self._complete = False  # the last message (with the usage) was given
        self._cancelled = False
        self._last_error: ServiceError | None = None  # the last replica failure, told when no replica is left

    def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        reply = await self.read()
        if reply is None:
            raise StopAsyncIteration
        return reply

    def cancel(self) -> None:
        self._cancelled = True
        self._finish("ok" if self._complete else "cancelled", cancel=True)

    async def read(self) -> pb.GenerateResponse | None:
        try:
            return await self._read()
        except asyncio.CancelledError:
            self.cancel()  # the reader was cancelled (its client went away): stop the replica's work too
            raise

    async def _read(self) -> pb.GenerateResponse | None:
        while not self._ended:
            if self._cancelled:
                raise ServiceError(grpc.StatusCode.CANCELLED, "the generation was cancelled")
            if self._call is None:
                last = await self._start()
                if last is not None:
                    return last
            try:
                reply = await self._call.read()
            except grpc.aio.AioRpcError as err:
                if self._cancelled:
                    raise ServiceError(grpc.StatusCode.CANCELLED, "the generation was cancelled") from None
                if self._first_of_attempt and is_full(err):  # refused before any message of this call
                    self._pass_full()
                    continue
                if err.code() in REPLICA_FAILURES:
                    self._last_error = ServiceError.from_rpc(err)
                    self._fail_over(err.code().name)
                    continue
                self._finish("error")
                raise ServiceError.from_rpc(err) from None
            if reply is grpc.aio.EOF:  # ended without its last message: the replica went away
                self._last_error = unavailable("the model's replica went away before the reply was complete")
                self._fail_over("ended early")
                continue
            if reply.finish_reason == "abort":  # the replica's engine gave the request up (it is stopping)
                given = self._take(reply, final=False)
                self._last_error = unavailable("the model's replica stopped the reply before it was complete")
                self._fail_over("aborted")
                if given is not None:
                    return given
                continue
            # The stream's last message carries the usage (with n > 1 each choice's last has a finish_reason).
            return self._take(reply, final=reply.HasField("usage"))
        if self._call is not None:  # the last message came: read the call's end (it ends the call's trace span)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._call.read()
            self._finish("ok")
        return None

    # --- internals ------------------------------------------------------------------------------------------------

    async def _start(self) -> pb.GenerateResponse | None:
        """Send the request (or its continuation) to a replica; a last reply when there is nothing left to ask."""
        if self._attempts - self._full >= MAX_ATTEMPTS:
            raise self._lost("the model's replicas kept failing")
        if time.monotonic() >= self.deadline:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the generation did not finish in time")
        if self.pool is None:
            self.pool = await self.client._pool(self.request.model)  # noqa: SLF001 - the client's own helper
        request = self.request if not self._given else self._continuation()
        if request is None:  # the token budget was used up exactly when the replica was lost
            self._ended = True
            return pb.GenerateResponse(
                finish_reason="length",
                usage=pb.Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._tokens),
                model=self.pool.model,
            )
        try:
            replica = await self.pool.pick(self.key, self._tried, self.deadline)
        except ServiceError as err:
            raise self._none_left(err) from None
        self._attempts += 1
        self._tried.add(replica.address)
        self.replica = replica
        replica.call_started()
        self._first_of_attempt = True
        self._attempt_tokens = 0
        self._call = replica.stub.Generate(request, timeout=max(0.01, self.deadline - time.monotonic()))
        return None

    def _continuation(self) -> pb.GenerateRequest | None:
        """The request that goes on with the reply given so far, on another replica."""
        if not can_continue(self.request):
            raise self._lost("the reply was cut off and this request cannot be continued elsewhere")
        partial = "".join(self._text)
        request = pb.GenerateRequest()
        request.CopyFrom(self.request)
        request.chat.messages.add(role="assistant", content=partial)
        request.continue_final_message = True
        request.request_id = f"{self.request.request_id or 'req'}-cont{self.failovers}"
        if self.request.sampling.HasField("max_tokens"):
            left = self.request.sampling.max_tokens - self._tokens
            if left < 1:
                return None
            request.sampling.max_tokens = left
        if self.request.HasField("fit"):  # fitted again there: the partial reply is kept like the new message
            request.fit.keep_last += 1
            if request.fit.default_max_tokens:
                left = request.fit.default_max_tokens - self._tokens
                if left < 1:
                    return None
                request.fit.default_max_tokens = left
        self._strip = partial[len(partial.rstrip()):]
        return request

    def _take(self, reply: pb.GenerateResponse, *, final: bool) -> pb.GenerateResponse | None:
        """Account for a reply from the current attempt and make it what the caller sees."""
        continued = self._given
        if self._first_of_attempt:
            self._first_of_attempt = False
            if self._attempts == 1 or not continued:
                self._prompt_tokens = reply.prompt_tokens
            elif reply.prompt_tokens or reply.dropped_messages:
                reply.prompt_tokens = 0  # the caller's prompt was counted once, on its first message
                reply.dropped_messages = 0
            if self._strip and reply.text.startswith(self._strip):
                reply.text = reply.text[len(self._strip):]
            self._strip = ""
        if reply.text:
            self._text.append(reply.text)
        tokens_before = self._tokens - self._attempt_tokens
        self._tokens += reply.tokens
        self._attempt_tokens += reply.tokens
        if not final:
            if reply.finish_reason == "abort":  # an aborted last message: only its text goes on
                reply = pb.GenerateResponse(text=reply.text, tokens=reply.tokens, prompt_tokens=reply.prompt_tokens)
                if not reply.text:
                    return None
            self._given = True
            return reply
        if self.failovers and self._attempts > 1 and tokens_before:
            # Usage as if one replica had answered: the first prompt, every token given.
            reply.usage.prompt_tokens = self._prompt_tokens or reply.usage.prompt_tokens
            reply.usage.completion_tokens = tokens_before + reply.usage.completion_tokens
        self._ended = self._complete = True
        return reply

    def _fail_over(self, reason: str) -> None:
        replica = self.replica
        stage = "mid_stream" if self._given else "before_first_token"
        log.warning("inference replica failed, going on with another",
                    extra={"pool": self.pool.spec.name, "replica": replica.address if replica else None,
                           "reason": reason, "stage": stage, "request_id": self.request.request_id})
        self._finish("failed_over", cancel=True)
        if replica is not None:
            replica.failed()
        self.failovers += 1
        metrics.FAILOVERS.labels(self.pool.spec.name, stage).inc()
        if stage == "mid_stream":
            self._tried = {replica.address} if replica else set()  # a fresh choice among the others
            self._busy = False

    def _pass_full(self) -> None:
        """The replica refused the request because its queue is full: another one not tried yet gets it. The replica
        is not failed (it serves), and this is no failover (the replicas not tried yet bound these attempts)."""
        log.debug("inference replica full, trying another",
                  extra={"pool": self.pool.spec.name, "replica": self.replica.address if self.replica else None,
                         "request_id": self.request.request_id})
        self._finish("full")
        self._full += 1
        self._busy = True

    def _none_left(self, err: ServiceError) -> ServiceError:
        """What the caller hears when no replica is left to try (``err``: the pool's own word for it)."""
        self._ended = True
        if self._given:  # a reply cut off: it ends like any other lost mid-stream, whatever the replicas said
            if self._busy:
                return self._lost("the reply was cut off and the model's other replicas are busy")
            return self._last_error or self._lost(err.message)
        if self._busy:  # the replicas that work are full: retrying later is the answer (those that failed aside)
            return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY, code=FULL_CODE)
        return self._last_error or err

    def _finish(self, outcome: str, *, cancel: bool = False) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        if cancel:
            call.cancel()
        if self.replica is not None:
            self.replica.call_ended(outcome)

    def _lost(self, message: str) -> ServiceError:
        self._ended = True
        log.error("inference stream lost", extra={"pool": self.pool.spec.name if self.pool else "",
                                                  "request_id": self.request.request_id, "reason": message})
        return unavailable(message)
