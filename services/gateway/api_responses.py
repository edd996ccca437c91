"""``/v1/responses``: OpenAI's Responses API, over the conversation service.

A response is the assistant's reply to input items (messages, function calls and their outputs) after the history
of ``previous_response_id``. The conversation service builds the prompt (the history fitted into the context window,
``instructions`` as a system message of this reply only), streams the reply from inference and stores the input
items and the reply in a conversation: a new one, or the one of ``previous_response_id``. A chain of responses is
therefore a conversation the user also sees under ``/v1/conversations``. A response's id is ``resp_`` followed by
its assistant message's id. With ``store: false`` nothing is stored (the usage is still recorded).

Streaming sends OpenAI's typed events (``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta``, ...,
``response.function_call_arguments.delta``, ..., ``response.completed`` or ``response.incomplete``), each as
``event: <type>`` with its ``sequence_number``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from chatplane.gateway.api_conversations import _read
from chatplane.gateway.api_models import check_max_tokens, model_not_found
from chatplane.gateway.deps import BackendsDep, ConversationStub, CurrentPrincipal, SettingsDep
from chatplane.gateway.errors import APIError, stream_failure, upstream
from chatplane.gateway.metering import MeteredConversationReply
from chatplane.gateway.observability import observe
from chatplane.gateway.responses_request import PREFIX, build_request, estimate, reply_id
from chatplane.gateway.schemas import ResponsesRequest, ResponseToolChoiceFunction
from chatplane.gateway.sse import answer, first_reply
from chatplane.protos.conversation.v1 import conversation_pb2

router = APIRouter(prefix="/v1/responses", tags=["responses"])

ResponseId = Annotated[str, Path(min_length=1, max_length=128)]


# --- response objects ---------------------------------------------------------------------------------------------


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message_item(reply_id: str, text: str, status: str) -> dict[str, Any]:
    """A message output item; one in progress has no content yet (its part is added by an event)."""
    content = [] if status == "in_progress" else [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    ]
    return {"id": f"msg_{reply_id}", "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(reply_id: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": f"fc_{reply_id}_{index}", "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _output(reply_id: str, text: str, calls: list[tuple[str, str, str]], status: str) -> list[dict[str, Any]]:
    out = []
    if text or not calls:
        out.append(_message_item(reply_id, text, status))
    out.extend(_call_item(reply_id, i, *call, status) for i, call in enumerate(calls))
    return out


class _Response:
    """The response object's fields that come from the request (echoed in every state of the response)."""

    def __init__(self, body: ResponsesRequest | None, created_at: int, model: str, store: bool) -> None:
        self.created_at = created_at
        self.model = model
        self.store = store
        self.id = ""
        self.fields: dict[str, Any] = {
            "instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
            "previous_response_id": None, "temperature": None, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": None, "truncation": "disabled", "user": None,
        }
        if body is not None:
            fmt = body.text.format if body.text is not None and body.text.format is not None else None
            self.fields.update({
                "instructions": body.instructions,
                "max_output_tokens": body.max_output_tokens,
                "metadata": body.metadata or {},
                "parallel_tool_calls": body.parallel_tool_calls is not False,
                "previous_response_id": body.previous_response_id,
                "temperature": body.temperature,
                "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
                "tool_choice": (
                    body.tool_choice.model_dump() if isinstance(body.tool_choice, ResponseToolChoiceFunction)
                    else body.tool_choice or "auto"
                ),
                "tools": [{**t.model_dump(exclude_none=True), "strict": bool(t.strict)} for t in body.tools or ()],
                "top_p": body.top_p,
                "truncation": body.truncation or "disabled",
                "user": body.user,
            })

    def object(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None, *,
        finish_reason: str = "", error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if finish_reason == "length" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": error, "incomplete_details": incomplete, "max_tool_calls": None,
            "model": self.model, "output": output, "reasoning": {"effort": None, "summary": None},
            "service_tier": "default", "store": self.store, "top_logprobs": 0, "usage": usage, **self.fields,
        }


def _status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def _done_calls(message: conversation_pb2.Message) -> list[tuple[str, str, str]]:
    return [(c.id, c.name, c.arguments) for c in message.tool_calls]


# --- routes -------------------------------------------------------------------------------------------------------


@router.post(
    "",
    summary="Create a model response (OpenAI's Responses API)",
    responses={200: {"description": "The response (JSON), or with stream=true its events as server-sent events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def create_response(
    body: ResponsesRequest, principal: CurrentPrincipal, backends: BackendsDep, request: Request
) -> Any:
    request_id = f"resp-{uuid.uuid4().hex}"
    respond = build_request(body, principal.user_id, principal.api_key_id, request_id)
    with upstream("inference"):
        model = await backends.inference.model(body.model)
    if model is None:
        raise model_not_found(body.model, "model")
    check_max_tokens(model, body.max_output_tokens, "max_output_tokens")
    observation = observe()
    observation.model = body.model
    observation.request_id = request_id

    async def prompt_tokens(exact: bool) -> int:
        return estimate(respond)

    reserve = body.max_output_tokens or backends.settings.estimated_completion_tokens
    ticket = await backends.admission.admit(principal, prompt_tokens=prompt_tokens, reserve=reserve)
    call = MeteredConversationReply(
        backends.conversation.Respond(respond, timeout=backends.settings.stream_timeout_seconds),
        backends.admission, ticket,
    )
    with ticket.headed():
        watch, first = await first_reply(request.receive, call, _read, _started)
        response = _Response(body, int(time.time()), first.started.model or body.model, respond.store)
        response.id = PREFIX + first.started.reply_id
        return await answer(call, watch, stream=bool(body.stream), headers=ticket.headers,
                            events=lambda: _stream(call, response, request_id),
                            whole=lambda: _complete(call, response))


def _started(first: conversation_pb2.SendMessageEvent | None) -> None:
    if first is None or first.WhichOneof("event") != "started":
        raise APIError(502, "The conversation service ended the response unexpectedly.", type="server_error")


async def _complete(call: Any, response: _Response) -> dict[str, Any]:
    reply = await _read(call)
    while reply is not None:
        if reply.WhichOneof("event") == "done":
            done = reply.done
            message = done.assistant_message
            observe().tokens(response.model, done.prompt_tokens, done.completion_tokens)
            reply_id = response.id[len(PREFIX):]
            status = _status(done.finish_reason)
            return response.object(
                status, _output(reply_id, message.content, _done_calls(message), status),
                _usage(done.prompt_tokens, done.completion_tokens), finish_reason=done.finish_reason,
            )
        reply = await _read(call)
    raise APIError(502, "The conversation service ended the response unexpectedly.", type="server_error")


class _Events:
    """The typed events of one streamed response, numbered."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **data: Any) -> bytes:
        data = {"type": kind, **data, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data, ensure_ascii=False,
                                                                      separators=(",", ":")).encode() + b"\n\n"


async def _stream(call: Any, response: _Response, request_id: str) -> AsyncIterator[bytes]:
    ev = _Events()
    reply_id = response.id[len(PREFIX):]
    output: list[dict[str, Any]] = []  # finished items
    text_item: dict[str, Any] | None = None  # the message being written: {"id", "index", "parts"}
    calls: dict[int, dict[str, Any]] = {}  # call index -> {"id", "index", "call_id", "name", "parts"}
    open_call: int | None = None

    def close_text() -> bytes:
        nonlocal text_item
        if text_item is None:
            return b""
        item, text_item = text_item, None
        text = "".join(item["parts"])
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        done = _message_item(reply_id, text, "completed")
        done["id"] = item["id"]
        output.append(done)
        common = {"item_id": item["id"], "output_index": item["index"], "content_index": 0}
        return (ev("response.output_text.done", **common, text=text, logprobs=[])
                + ev("response.content_part.done", **common, part=part)
                + ev("response.output_item.done", output_index=item["index"], item=done))

    def close_call() -> bytes:
        nonlocal open_call
        if open_call is None:
            return b""
        c, open_call = calls[open_call], None
        arguments = "".join(c["parts"])
        done = {**_call_item(reply_id, c["n"], c["call_id"], c["name"], arguments, "completed"), "id": c["id"]}
        output.append(done)
        return (ev("response.function_call_arguments.done", item_id=c["id"], output_index=c["index"],
                   arguments=arguments, name=c["name"])
                + ev("response.output_item.done", output_index=c["index"], item=done))

    observation = observe()  # told of each token event once it is sent
    try:
        yield (ev("response.created", response=response.object("in_progress", []))
               + ev("response.in_progress", response=response.object("in_progress", [])))
        reply = await _read(call)
        while reply is not None:
            kind = reply.WhichOneof("event")
            if kind == "delta":
                out = b""
                delta = reply.delta
                if delta.text:
                    if text_item is None:
                        out += close_call()
                        index = len(output)
                        text_item = {"id": f"msg_{reply_id}" if index == 0 else f"msg_{reply_id}_{index}",
                                     "index": index, "parts": []}
                        item = {**_message_item(reply_id, "", "in_progress"), "id": text_item["id"]}
                        out += ev("response.output_item.added", output_index=index, item=item)
                        out += ev("response.content_part.added", item_id=text_item["id"], output_index=index,
                                  content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                         "logprobs": []})
                    text_item["parts"].append(delta.text)
                    out += ev("response.output_text.delta", item_id=text_item["id"],
                              output_index=text_item["index"], content_index=0, delta=delta.text, logprobs=[])
                for piece in delta.tool_calls:
                    if piece.index not in calls:
                        out += close_text() + close_call()
                        index = len(output)
                        c = calls[piece.index] = {"id": f"fc_{reply_id}_{len(calls)}", "n": len(calls),
                                                  "index": index, "call_id": piece.id, "name": piece.name,
                                                  "parts": []}
                        open_call = piece.index
                        item = {**_call_item(reply_id, c["n"], piece.id, piece.name, "", "in_progress"),
                                "id": c["id"]}
                        out += ev("response.output_item.added", output_index=index, item=item)
                    c = calls[piece.index]
                    if piece.arguments:
                        c["parts"].append(piece.arguments)
                        out += ev("response.function_call_arguments.delta", item_id=c["id"],
                                  output_index=c["index"], delta=piece.arguments)
                if out:
                    yield out
                    if delta.text or any(piece.arguments for piece in delta.tool_calls):
                        observation.token()
            elif kind == "done":
                done = reply.done
                observe().tokens(response.model, done.prompt_tokens, done.completion_tokens)
                out = close_text() + close_call()
                if not output:  # nothing was said: an empty message
                    output.append(_message_item(reply_id, "", "completed"))
                status = _status(done.finish_reason)
                final = response.object(status, output, _usage(done.prompt_tokens, done.completion_tokens),
                                        finish_reason=done.finish_reason)
                yield out + ev(f"response.{status}", response=final)
                return
            reply = await _read(call)
        raise APIError(502, "The conversation service ended the response unexpectedly.", type="server_error")
    except Exception as exc:  # noqa: BLE001 - the status line is gone already: the error travels as an event
        err = stream_failure(exc, "response", request_id)
        yield ev("error", code=err.code or err.type, message=err.message, param=err.param)
    finally:
        call.cancel()


@router.get("/{response_id}", summary="Retrieve a stored response")
async def get_response(
    response_id: ResponseId, principal: CurrentPrincipal, stub: ConversationStub, settings: SettingsDep
) -> dict[str, Any]:
    reply = reply_id(response_id)
    with upstream("conversation"):
        stored = await stub.GetResponse(
            conversation_pb2.GetResponseRequest(user_id=principal.user_id, response_id=reply),
            timeout=settings.upstream_timeout_seconds,
        )
    message = stored.message
    response = _Response(None, message.created_at.seconds, message.model, True)
    response.id = response_id
    if stored.previous_response_id:
        response.fields["previous_response_id"] = PREFIX + stored.previous_response_id
    incomplete = message.status == conversation_pb2.MESSAGE_STATUS_INCOMPLETE
    status = "incomplete" if incomplete else _status(message.finish_reason)
    return response.object(
        status, _output(reply, message.content, _done_calls(message), "incomplete" if incomplete else "completed"),
        _usage(message.prompt_tokens, message.completion_tokens), finish_reason=message.finish_reason,
    )
