"""``POST /v1/chat/completions``: OpenAI-compatible, stateless, straight to inference ``Generate``."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatplane.common import limits
from chatplane.gateway import convert
from chatplane.gateway.api_models import check_max_tokens, model_not_found
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.backends import Backends
from chatplane.gateway.errors import APIError, from_grpc, invalid
from chatplane.gateway.metering import Admission, MeteredGeneration, rough_tokens
from chatplane.gateway.observability import observe
from chatplane.gateway.schemas import ChatCompletionRequest, ChatMessageIn
from chatplane.gateway.sse import DONE, SLOT, ClientWatch, EventStream, TextEvent, event
from chatplane.protos.inference.v1 import inference_pb2

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/chat", tags=["chat"])

# Parameters OpenAI knows that this server does not support, with the value that means "not used".
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "store": False,
    "logit_bias": {},
    "metadata": {},
    "modalities": ["text"],
    "response_format": {"type": "text"},
}
_ALWAYS_UNSUPPORTED = (
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "top_logprobs", "audio",
    "prediction", "reasoning_effort", "verbosity", "web_search_options",
)
_MESSAGE_UNSUPPORTED = ("tool_calls", "tool_call_id", "function_call", "audio", "refusal")


def _unsupported(param: str) -> APIError:
    return invalid(
        f"The '{param}' parameter is not supported by this server.", param=param, code="unsupported_parameter"
    )


def check_supported(req: ChatCompletionRequest) -> None:
    for name in _ALWAYS_UNSUPPORTED:
        if getattr(req, name) is not None:
            raise _unsupported(name)
    for name, neutral in _NEUTRAL.items():
        value = getattr(req, name)
        if value is not None and value != neutral:
            if name == "n":
                raise invalid("Only n=1 is supported by this server.", param="n", code="unsupported_value")
            raise _unsupported(name)
    if req.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier")
    if req.stream_options is not None and not req.stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")


def _message_text(msg: ChatMessageIn, index: int) -> str:
    param = f"messages[{index}]"
    for name in _MESSAGE_UNSUPPORTED:
        if getattr(msg, name) is not None:
            raise _unsupported(f"{param}.{name}")
    content = msg.content
    if content is None:
        raise invalid(f"Missing content in '{param}'.", f"{param}.content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            part_param = f"{param}.content[{j}]"
            if part.get("type") != "text":
                raise invalid(
                    f"Invalid content part type in '{part_param}': only 'text' parts are supported.",
                    f"{part_param}.type",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"Missing or invalid 'text' in '{part_param}'.", f"{part_param}.text")
            texts.append(text)
        content = "\n".join(texts)
    if len(content) > limits.MAX_MESSAGE_CHARS:
        raise invalid(
            f"'{param}.content' is too long: at most {limits.MAX_MESSAGE_CHARS} characters.", f"{param}.content",
            code="string_above_max_length",
        )
    if "\x00" in content:
        raise invalid(f"'{param}.content' must not contain NUL (\\u0000) characters.", f"{param}.content")
    return content


def _stop(req: ChatCompletionRequest) -> list[str]:
    if req.stop is None:
        return []
    stops = [req.stop] if isinstance(req.stop, str) else req.stop
    if len(stops) > limits.MAX_STOP_SEQUENCES:
        raise invalid(f"'stop' may have at most {limits.MAX_STOP_SEQUENCES} sequences.", "stop")
    for i, s in enumerate(stops):
        param = "stop" if isinstance(req.stop, str) else f"stop[{i}]"
        if not s or len(s) > limits.MAX_STOP_CHARS or "\x00" in s:
            raise invalid(
                f"Each stop sequence must have 1 to {limits.MAX_STOP_CHARS} characters and no NUL characters.", param
            )
    return stops


def build_request(req: ChatCompletionRequest, request_id: str) -> inference_pb2.GenerateRequest:
    check_supported(req)
    messages = [
        inference_pb2.ChatMessage(role=m.role, content=_message_text(m, i)) for i, m in enumerate(req.messages)
    ]
    sampling = inference_pb2.SamplingParams(stop=_stop(req))
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if req.temperature is not None:
        sampling.temperature = req.temperature
    if req.top_p is not None:
        sampling.top_p = req.top_p
    if req.seed is not None:
        sampling.seed = req.seed
    return inference_pb2.GenerateRequest(
        model=req.model,
        chat=inference_pb2.ChatMessages(messages=messages),
        sampling=sampling,
        request_id=request_id,
    )


def _aborted() -> APIError:
    return APIError(
        503, "The generation was aborted by the server before it finished. Please retry.",
        type="service_unavailable", code="generation_aborted",
    )


def _finish_reason(reply: inference_pb2.GenerateResponse) -> str:
    if reply.finish_reason == "abort":
        raise _aborted()
    return "length" if reply.finish_reason == "length" else "stop"


async def _read(call: Any) -> inference_pb2.GenerateResponse | None:
    """The next reply of the stream, None at its end; gRPC errors become API errors."""
    try:
        reply = await call.read()
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, "inference") from None
    return None if reply is grpc.aio.EOF else reply


async def _admit(
    backends: Backends, principal: Any, request: Request, generate: inference_pb2.GenerateRequest
) -> tuple[Admission, int]:
    """Rate limits and quotas for this request (429 when over); returns the admission and the prompt estimate."""
    counted = 0

    async def prompt_tokens(exact: bool) -> int:
        nonlocal counted
        if exact:  # a quota applies: count with the model's tokenizer
            try:
                reply = await backends.inference.CountTokens(
                    inference_pb2.CountTokensRequest(model=generate.model, chat=generate.chat),
                    timeout=backends.settings.upstream_timeout_seconds,
                )
            except grpc.aio.AioRpcError as err:
                raise from_grpc(err, "inference") from None
            counted = reply.token_count
        else:
            messages = generate.chat.messages
            counted = rough_tokens(sum(len(m.content) for m in messages)) + 4 * len(messages)
        return counted

    sampling = generate.sampling
    reserve = sampling.max_tokens if sampling.HasField("max_tokens") else backends.settings.estimated_completion_tokens
    admission = await backends.metering.admit(principal, request.state, prompt_tokens=prompt_tokens, reserve=reserve)
    return admission, counted


@router.post(
    "/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    responses={200: {"description": "The completion (JSON), or with stream=true its chunks as server-sent events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, principal: CurrentPrincipal, backends: BackendsDep, request: Request
) -> Any:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    generate = build_request(body, completion_id)
    model = await backends.models.get(body.model)
    if model is None:
        raise model_not_found(body.model, "model")
    if body.max_completion_tokens is not None:
        check_max_tokens(model, body.max_completion_tokens, "max_completion_tokens")
    else:
        check_max_tokens(model, body.max_tokens, "max_tokens")
    observation = observe()
    observation.model = body.model  # a served model: a bounded metrics label
    observation.request_id = completion_id  # the access log line names the call
    admission, prompt_estimate = await _admit(backends, principal, request, generate)
    call = MeteredGeneration(
        backends.inference.Generate(generate, timeout=backends.settings.stream_timeout_seconds),
        backends.metering, admission, principal, completion_id, body.model, prompt_estimate,
    )
    watch = ClientWatch(request.receive)
    try:
        # Wait for the first reply before answering, so that an early error is an ordinary HTTP error.
        first = await watch.guard(_read(call))
    except BaseException:
        watch.stop()
        call.cancel()
        raise
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _stream(call, first, completion_id, created, body.model, include_usage)
        return EventStream(chunks, watch)
    try:
        answer = _complete(call, first, completion_id, created, body.model)
        return JSONResponse(await watch.guard(answer))
    finally:
        watch.stop()
        call.cancel()


async def _complete(
    call: Any, reply: inference_pb2.GenerateResponse | None, completion_id: str, created: int, model: str
) -> dict[str, Any]:
    parts: list[str] = []
    finish_reason = "stop"
    usage = convert.usage(0, 0)
    while reply is not None:
        parts.append(reply.text)
        model = reply.model or model
        if reply.finish_reason:
            finish_reason = _finish_reason(reply)
        if reply.HasField("usage"):
            usage = convert.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
            observe().tokens(model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        reply = await _read(call)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts), "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


async def _stream(
    call: Any,
    reply: inference_pb2.GenerateResponse | None,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    if reply is not None and reply.model:
        model = reply.model

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            data["usage"] = None
        return event(data)

    content = TextEvent(chunk({"content": SLOT}))  # the per-token chunk, encoded once
    # The role chunk goes out with the first token (one write, one trip through the middleware, sooner first token).
    role = chunk({"role": "assistant", "content": ""})
    try:
        finish_reason = "stop"
        usage = convert.usage(0, 0)
        while reply is not None:
            text = reply.text
            if text:
                if role:
                    yield role + content(text)
                    role = b""
                else:
                    yield content(text)
            if reply.finish_reason:  # the last reply: the only one with usage
                finish_reason = _finish_reason(reply)
                if reply.HasField("usage"):
                    usage = convert.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
                    observe().tokens(model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
            reply = await _read(call)
        yield role + chunk({}, finish_reason)
        if include_usage:
            yield event({
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage,
            })
        yield DONE
    except APIError as err:
        # The status line is gone already: the error travels as an event, then the stream ends.
        yield event(err.body())
    except Exception:
        log.exception("chat completion stream failed", extra={"request_id": completion_id})
        yield event(APIError(500, "The server had an error while streaming the response.", type="server_error").body())
    finally:
        call.cancel()
