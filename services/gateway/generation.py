"""The OpenAI parameters of a generation -> inference's ``GenerateRequest``; its replies -> OpenAI's choices.

Shared by ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses``: tools and tool choice, structured
outputs (``response_format``, the Responses API's ``text.format``), logprobs, ``n``, penalties and ``logit_bias``,
and the accumulation of a stream of replies (several choices, tool-call pieces, log probabilities) into choices.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any


from chatplane.common import limits
from chatplane.gateway.errors import APIError, invalid
from chatplane.protos.inference.v1 import inference_pb2

_CHOICE_MODES = {
    "none": inference_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": inference_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": inference_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def unsupported(param: str) -> APIError:
    return invalid(
        f"The '{param}' parameter is not supported by this server.", param=param, code="unsupported_parameter"
    )


SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


def copy_given(source: Any, target: Any, names: tuple[str, ...] = SAMPLING_FIELDS) -> None:
    """Set each of ``names`` on ``target`` (a message) that the request ``source`` gives (is not None)."""
    for name in names:
        value = getattr(source, name)
        if value is not None:
            setattr(target, name, value)


def check_text(text: str, param: str) -> str:
    """A text parameter within the limits: at most ``MAX_MESSAGE_CHARS`` characters, no NUL; 400 naming it."""
    if len(text) > limits.MAX_MESSAGE_CHARS:
        raise invalid(f"'{param}' is too long: at most {limits.MAX_MESSAGE_CHARS} characters.", param,
                      code="string_above_max_length")
    if "\x00" in text:
        raise invalid(f"'{param}' must not contain NUL (\\u0000) characters.", param)
    return text


def check_schema(schema: Any, param: str) -> str:
    """A JSON Schema as JSON text; 400 naming ``param`` when it is not a valid JSON Schema."""
    import jsonschema

    if not isinstance(schema, dict):
        raise invalid(f"'{param}' must be a JSON Schema object.", param, code="invalid_json_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise invalid(
            f"Invalid JSON Schema in '{param}'" + (f" at '{where}'" if where else "") + f": {exc.message}"[:500],
            param, code="invalid_json_schema",
        ) from None
    except Exception as exc:  # noqa: BLE001 - e.g. an unresolvable $schema: the schema is unusable either way
        raise invalid(f"Invalid JSON Schema in '{param}': {exc}"[:500], param, code="invalid_json_schema") from None
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    if len(text) > limits.MAX_SCHEMA_CHARS:
        raise invalid(f"'{param}' is too large: at most {limits.MAX_SCHEMA_CHARS} characters.", param)
    return text


def function_tool(
    name: str, description: str | None, parameters: dict | None, strict: bool | None, param: str
) -> inference_pb2.Tool:
    tool = inference_pb2.Tool(name=name, description=description or "", strict=bool(strict))
    if parameters is not None:
        tool.parameters_json = check_schema(parameters, f"{param}.parameters")
    return tool


def check_tool_names(tools: list[inference_pb2.Tool], param: str) -> list[str]:
    names = [t.name for t in tools]
    for i, name in enumerate(names):
        if not name.replace("_", "").replace("-", "").isalnum() or not name.isascii():
            raise invalid(
                f"Invalid '{param}[{i}]' function name {name!r}: use letters, digits, underscores and dashes.",
                f"{param}[{i}]",
            )
    if len(set(names)) != len(names):
        raise invalid(f"Two tools in '{param}' have the same name.", param)
    return names


def tool_choice(choice: str | None, function: str | None, names: list[str]) -> inference_pb2.ToolChoice:
    """``tool_choice`` (a mode, or the name of one of ``names``) as the contract's; 400 naming it when it names a
    function that is not among the tools."""
    if function is not None:
        if function not in names:
            raise invalid(
                f"Invalid value for 'tool_choice': no function named '{function}' in 'tools'.", "tool_choice",
                code="invalid_value",
            )
        return inference_pb2.ToolChoice(mode=inference_pb2.TOOL_CHOICE_MODE_FUNCTION, function=function)
    if choice in (None, "auto") and not names:
        return inference_pb2.ToolChoice()
    if choice in ("required",) and not names:
        raise invalid("'tool_choice' is 'required' but no 'tools' are given.", "tool_choice")
    return inference_pb2.ToolChoice(mode=_CHOICE_MODES[choice or "auto"])


def structured_output(kind: str, schema: Any, param: str) -> inference_pb2.StructuredOutput | None:
    """A response format (``text``, ``json_object``, ``json_schema``) as the contract's structured output."""
    if kind == "json_object":
        return inference_pb2.StructuredOutput(json_object=True)
    if kind == "json_schema":
        if schema is None:
            raise invalid(f"'{param}' is required for the 'json_schema' response format.", param)
        return inference_pb2.StructuredOutput(json_schema=check_schema(schema, param))
    return None


def logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.isdigit() or len(key) > 9:
            raise invalid(f"Invalid key in 'logit_bias': {key!r} is not a token id.", "logit_bias")
        if not -100 <= value <= 100:
            raise invalid("Each 'logit_bias' value must be between -100 and 100.", "logit_bias")
        out[int(key)] = value
    return out


def check_n(n: int | None, maximum: int) -> int:
    n = 1 if n is None else n
    if not 1 <= n <= maximum:
        raise invalid(f"Invalid 'n': {n}. This server generates at most {maximum} choices per request.", "n",
                      code="invalid_value")
    return n


# --- replies -> choices -------------------------------------------------------------------------------------------


def logprob_value(value: float) -> float:
    return max(value, -9999.0)


def chat_logprob(item: inference_pb2.TokenLogprob) -> dict[str, Any]:
    """One token's logprob in the chat format (``logprobs.content[]``)."""
    return {
        "token": item.token,
        "logprob": logprob_value(item.logprob),
        "bytes": list(item.token.encode()),
        "top_logprobs": [
            {"token": t.token, "logprob": logprob_value(t.logprob), "bytes": list(t.token.encode())}
            for t in item.top_logprobs
        ],
    }


@dataclass
class Choice:
    """What the stream said about one choice."""

    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # call index -> {id, name, arguments parts}
    finish_reason: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
            for _, c in sorted(self.calls.items())
        ]


class Choices:
    """Accumulates a stream of replies (any number of choices) for a non-streamed answer. ``per_prompt`` choices
    come from each prompt (several prompts: see :class:`MergedCalls`)."""

    def __init__(self, count: int, per_prompt: int | None = None) -> None:
        self.choices = [Choice(i) for i in range(count)]
        self.per_prompt = per_prompt or count
        self.prompt_logprobs: dict[int, list[inference_pb2.TokenLogprob]] = {}  # prompt -> its tokens

    def add(self, reply: inference_pb2.GenerateResponse) -> Choice:
        choice = self.choices[reply.index] if reply.index < len(self.choices) else self.choices[-1]
        if reply.text:
            choice.parts.append(reply.text)
        if reply.logprobs:
            choice.logprobs.extend(reply.logprobs)
        if reply.prompt_logprobs:
            self.prompt_logprobs.setdefault(reply.index // self.per_prompt, []).extend(reply.prompt_logprobs)
        for delta in reply.tool_calls:
            call = choice.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": []})
            call["id"] = call["id"] or delta.id
            call["name"] = call["name"] or delta.name
            call["arguments"].append(delta.arguments)
        if reply.finish_reason:
            choice.finish_reason = reply.finish_reason
        return choice


def tool_call_deltas(reply: inference_pb2.GenerateResponse) -> list[dict[str, Any]]:
    """A reply's tool-call pieces as the chat stream's ``delta.tool_calls``."""
    out = []
    for d in reply.tool_calls:
        function: dict[str, Any] = {"arguments": d.arguments}
        item: dict[str, Any] = {"index": d.index}
        if d.id or d.name:
            item["id"] = d.id
            item["type"] = "function"
            function["name"] = d.name
        item["function"] = function
        out.append(item)
    return out


_END = object()


class MergedCalls:
    """Several ``Generate`` streams read as one (a request with several prompts). Call ``i``'s choice ``j`` becomes
    choice ``i * n + j``; the stream's last reply carries the usage of all calls, summed. ``read()`` (None at the end)
    and ``cancel()`` as an inference client's :class:`~chatplane.common.inference.Generation`."""

    def __init__(self, calls: list[Any], n: int) -> None:
        self._calls = calls
        self._n = n
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._open = len(calls)
        self._ended_calls = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._tasks = [asyncio.ensure_future(self._pump(i, call)) for i, call in enumerate(calls)]

    async def _pump(self, i: int, call: Any) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is None:
                    break
                self._queue.put_nowait((i, reply))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, in order
            self._queue.put_nowait((i, exc))
        finally:
            self._queue.put_nowait((i, _END))

    async def read(self) -> Any:
        while self._open:
            i, item = await self._queue.get()
            if item is _END:
                self._open -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            reply = item
            reply.index += i * self._n
            if reply.HasField("usage"):  # call i ended
                self._ended_calls += 1
                self._prompt_tokens += reply.usage.prompt_tokens
                self._completion_tokens += reply.usage.completion_tokens
                if self._ended_calls < len(self._calls):
                    reply.ClearField("usage")
                else:
                    reply.usage.prompt_tokens = self._prompt_tokens
                    reply.usage.completion_tokens = self._completion_tokens
            return reply
        return None

    def cancel(self) -> bool:
        for task in self._tasks:
            task.cancel()
        return any([call.cancel() for call in self._calls])
