"""A ``/v1/responses`` request checked and turned into the conversation service's ``RespondRequest``: the input
items (messages, function calls and their outputs), the parameters this server does not support refused by name,
tools, ``text.format``; and the ids of responses (``resp_`` and the stored reply's id)."""

from __future__ import annotations

import re
from typing import Any

from chatplane.common import limits
from chatplane.gateway import generation
from chatplane.gateway.errors import APIError, invalid
from chatplane.gateway.metering import rough_tokens
from chatplane.gateway.schemas import ResponsesRequest, ResponseToolChoiceFunction
from chatplane.protos.conversation.v1 import conversation_pb2
from chatplane.protos.inference.v1 import inference_pb2

PREFIX = "resp_"
_REPLY_ID = re.compile(r"[0-9a-f]{32}")
_UNSUPPORTED = ("include", "reasoning", "background", "top_logprobs", "prompt", "conversation", "max_tool_calls")
_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}



def _not_found(response_id: str, param: str | None = None) -> APIError:
    what = "Previous response" if param else "Response"
    return APIError(404, f"{what} with id '{response_id}' not found.", param=param,
                    code="previous_response_not_found" if param else "not_found")


def reply_id(response_id: str, param: str | None = None) -> str:
    """The stored reply's (assistant message's) id of a response id; 404 when it cannot be one."""
    reply = response_id[len(PREFIX):] if response_id.startswith(PREFIX) else ""
    if not _REPLY_ID.fullmatch(reply):
        raise _not_found(response_id, param)
    return reply


# --- request ------------------------------------------------------------------------------------------------------


def _text(content: Any, param: str) -> str:
    """A message's content: text, or a list of text parts."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
                kind = part.get("type") if isinstance(part, dict) else None
                raise invalid(f"Invalid content part type {kind!r} in '{param}[{j}]': only text parts are supported.",
                              f"{param}[{j}].type", code="unsupported_value")
            if not isinstance(part.get("text"), str):
                raise invalid(f"Missing or invalid 'text' in '{param}[{j}]'.", f"{param}[{j}].text")
            texts.append(part["text"])
        text = "\n".join(texts)
    else:
        raise invalid(f"'{param}' must be a string or a list of text parts.", param)
    return generation.check_text(text, param)


def _string(item: dict[str, Any], key: str, param: str, *, limit: int = 256, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not value and not empty) or len(value) > limit or "\x00" in value:
        raise invalid(f"Missing or invalid '{param}.{key}'.", f"{param}.{key}")
    return value


def input_items(value: str | list[dict[str, Any]]) -> list[conversation_pb2.InputItem]:
    """The ``input`` as the contract's items. Consecutive function calls (and the assistant text before them) make
    one assistant message, as a model's reply with several calls is one."""
    if isinstance(value, str):
        if not value:
            raise invalid("'input' must not be empty.", "input")
        return [conversation_pb2.InputItem(role="user", content=value)]
    items: list[conversation_pb2.InputItem] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES.get(item.get("role"))
            if role is None:
                raise invalid(f"Invalid '{param}.role': one of user, system, developer, assistant.", f"{param}.role")
            items.append(conversation_pb2.InputItem(role=role, content=_text(item.get("content"), f"{param}.content")))
        elif kind == "function_call":
            call = inference_pb2.ToolCall(
                id=_string(item, "call_id", param),
                name=_string(item, "name", param, limit=limits.MAX_TOOL_NAME_CHARS),
                arguments=_string(item, "arguments", param, limit=limits.MAX_MESSAGE_CHARS, empty=True),
            )
            if not items or items[-1].role != "assistant":
                items.append(conversation_pb2.InputItem(role="assistant"))
            if len(items[-1].tool_calls) >= limits.MAX_TOOL_CALLS:
                raise invalid(f"At most {limits.MAX_TOOL_CALLS} function calls in a row.", param)
            items[-1].tool_calls.append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            items.append(conversation_pb2.InputItem(
                role="tool", tool_call_id=_string(item, "call_id", param),
                content=_text(output, f"{param}.output"),
            ))
        else:
            raise invalid(f"Unsupported input item type {kind!r} in '{param}': messages, function_call and "
                          "function_call_output are supported.", f"{param}.type", code="unsupported_value")
    return items


def build_request(
    body: ResponsesRequest, user_id: str, api_key_id: str, request_id: str
) -> conversation_pb2.RespondRequest:
    for name in _UNSUPPORTED:
        if getattr(body, name) is not None:
            raise generation.unsupported(name)
    if body.service_tier not in (None, "auto", "default"):
        raise generation.unsupported("service_tier")
    if body.text is not None and body.text.verbosity is not None:
        raise generation.unsupported("text.verbosity")
    respond = conversation_pb2.RespondRequest(
        user_id=user_id,
        input=input_items(body.input),
        instructions=body.instructions or "",
        model=body.model,
        store=body.store is not False,
        api_key_id=api_key_id,
        request_id=request_id,
    )
    if body.previous_response_id is not None:
        respond.previous_response_id = reply_id(body.previous_response_id, "previous_response_id")
    if body.max_output_tokens is not None:
        respond.max_tokens = body.max_output_tokens
    generation.copy_given(body, respond, ("temperature", "top_p"))
    for i, tool in enumerate(body.tools or ()):
        respond.tools.append(
            generation.function_tool(tool.name, tool.description, tool.parameters, tool.strict, f"tools[{i}]")
        )
    names = generation.check_tool_names(list(respond.tools), "tools")
    named = body.tool_choice.name if isinstance(body.tool_choice, ResponseToolChoiceFunction) else None
    if body.tool_choice is not None or names:
        respond.tool_choice.CopyFrom(generation.tool_choice(None if named else body.tool_choice, named, names))
    if body.parallel_tool_calls is not None and names:
        respond.parallel_tool_calls = body.parallel_tool_calls
    fmt = body.text.format if body.text is not None else None
    if fmt is not None:
        structured = generation.structured_output(fmt.type, fmt.schema_, "text.format.schema")
        if structured is not None:
            respond.structured_output.CopyFrom(structured)
    return respond


def estimate(respond: conversation_pb2.RespondRequest) -> int:
    """The prompt's tokens, roughly (the history is the conversation service's to fit: settled afterwards)."""
    chars = len(respond.instructions) + sum(
        len(i.content) + sum(len(c.arguments) + len(c.name) for c in i.tool_calls) for i in respond.input
    ) + sum(len(t.parameters_json) + len(t.description) + len(t.name) for t in respond.tools)
    return rough_tokens(chars) + 4 * len(respond.input)
