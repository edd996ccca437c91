"""Metered model calls: the wrappers of the inference and conversation streams that, when the route is done with the
call, settle its admission ticket with the exact usage (``admission.py``) and, for ``/v1/chat/completions``, record
the ``completion.finished`` event (``completions.py``; the conversation service writes its own).
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import grpc

from chatplane.common.errors import ServiceError
from chatplane.gateway.admission import Admitter, Ticket
from chatplane.gateway.authn import Principal
from chatplane.protos.events.v1 import events_pb2


class Recorder(Protocol):
    def add(self, completion: events_pb2.CompletionFinished) -> None: ...


def rough_tokens(chars: int) -> int:
    """A prompt's token count without asking the tokenizer (about four characters a token)."""
    return math.ceil(chars / 4)


class MeteredGeneration:
    """Wraps an inference ``Generate`` call: notes the first token, model, finish reason and usage as the route reads
    it, and when the route is done with it (``cancel()``, which every path calls) settles and records the completion.
    """

    def __init__(
        self,
        call: Any,
        admitter: Admitter,
        ticket: Ticket | None,
        recorder: Recorder,
        principal: Principal,
        request_id: str,
        model: str,
        prompt_estimate: int,
        path: str = "chat",
    ) -> None:
        self._call = call
        self._path = path
        self._admitter = admitter
        self._ticket = ticket
        self._recorder = recorder
        self._principal = principal
        self._request_id = request_id
        self._model = model
        self._prompt_estimate = prompt_estimate
        self._started = time.monotonic()
        self._first_token: float | None = None
        self._replies = 0
        self._chars = 0  # of the replies so far: the completion estimate of a stream cut short
        self._finish_reason = ""
        self._usage: tuple[int, int] | None = None
        self._failed = False
        self._done = False

    async def read(self) -> Any:
        try:
            reply = await self._call.read()
        except ServiceError:
            self._failed = True
            raise
        if reply is not None:
            self._replies += 1
            if self._first_token is None and reply.text:
                self._first_token = time.monotonic()
            if reply.finish_reason:  # the last reply: the only one with the model and usage
                self._finish_reason = reply.finish_reason
                if reply.model:
                    self._model = reply.model
                if reply.HasField("usage"):
                    self._usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
            else:
                self._chars += len(reply.text)
        return reply

    def cancel(self) -> bool:
        result = self._call.cancel()
        if not self._done:
            self._done = True
            self._finish()
        return result

    def _finish(self) -> None:
        if self._failed and self._replies == 0:  # refused or failed upstream: nothing was processed, nothing charged
            self._admitter.settle(self._ticket, 0)
            return
        if self._usage is not None:
            prompt, completion = self._usage
        else:
            # Cut short: the prompt went to the engine (the client left, or the stream broke) and each reply carried at
            # least a token (often several). A client gone before the first token is charged its prompt: the gateway
            # cannot tell a request still queued from one whose prompt the engine has processed.
            prompt, completion = self._prompt_estimate, max(self._replies, rough_tokens(self._chars))
        finish_reason = self._finish_reason or ("error" if self._failed else "abort")
        now = time.monotonic()
        self._admitter.settle(self._ticket, prompt + completion)
        self._recorder.add(
            events_pb2.CompletionFinished(
                request_id=self._request_id,
                user_id=self._principal.user_id,
                api_key_id=self._principal.api_key_id,
                model=self._model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=round((now - self._started) * 1000),
                ttft_ms=round((self._first_token - self._started) * 1000) if self._first_token else 0,
                finish_reason=finish_reason,
                path=self._path,
            )
        )


class MeteredConversationReply:
    """Wraps a conversation ``SendMessage`` call: settles the admission with the usage of its ``done`` event (the
    conversation service writes the completion event itself)."""

    def __init__(self, call: Any, admitter: Admitter, ticket: Ticket | None) -> None:
        self._call = call
        self._admitter = admitter
        self._ticket = ticket
        self._usage: int | None = None
        self._replies = 0

    async def read(self) -> Any:
        reply = await self._call.read()
        if reply is not grpc.aio.EOF:
            self._replies += 1
            if reply.WhichOneof("event") == "done":
                self._usage = reply.done.prompt_tokens + reply.done.completion_tokens
        return reply

    def cancel(self) -> bool:
        result = self._call.cancel()
        # No reply at all: refused before anything was stored; cut short: the estimate stays charged.
        self._admitter.settle(self._ticket, 0 if self._replies == 0 else self._usage)
        return result
