"""Tool calls and structured outputs for the vLLM engine, built from vLLM's own pieces.

- The functions go into the prompt through the chat template's ``tools`` argument. A model whose template ignores
  them (the packaged SmolLM2's does) gets the bundled Hermes-style ChatML template (``chat_templates/hermes.jinja``)
  for the requests that use tools or carry tool calls in their history; ``CHATPLANE_INFERENCE_CHAT_TEMPLATE``
  replaces the model's template for every request.
- The model's tool-call parser (``CHATPLANE_INFERENCE_TOOL_CALL_PARSER``, one of vLLM's, e.g. ``hermes``) finds the
  calls in the generated text, streaming (vLLM's ``Parser.parse_delta``, one parser per choice).
- vLLM's structural tags (xgrammar, at the "parameter" strict level) constrain the calls: with ``required`` or a
  named function the reply is a call of an offered (or the named) function, and every call's arguments parse and
  match that function's JSON schema; with ``auto`` the model may write text, and the calls it starts are
  constrained the same way.
- ``response_format`` becomes vLLM's ``StructuredOutputsParams`` (``json`` for a schema, ``json_object``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import Structured, ToolCallDelta, ToolUse, Turn

log = logging.getLogger(__name__)

BUNDLED_TEMPLATE = Path(__file__).parent / "chat_templates" / "hermes.jinja"
# Every call's arguments are pinned to the function's schema (vLLM's --tool-strict-level parameter).
STRICT_LEVEL = "parameter"
_PROBE_FUNCTION = "chatplane_template_probe"


def turn_dict(turn: Turn) -> dict[str, Any]:
    """A message as chat templates expect it (tool-call arguments as objects, as Hugging Face templates do)."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in turn.tool_calls
        ]
    if turn.tool_call_id:
        message["tool_call_id"] = turn.tool_call_id
    if turn.name:
        message["name"] = turn.name
    return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def function_dict(name: str, description: str, parameters: dict | None, strict: bool = False) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}}
    if description:
        function["description"] = description
    if strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def structured_outputs(structured: Structured | None) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if structured is None:
        return None
    if structured.json_schema is not None:
        return StructuredOutputsParams(json=structured.json_schema)
    if structured.json_object:
        return StructuredOutputsParams(json_object=True)
    return None


def renders_tools(tokenizer: Any, template: str | None = None) -> bool:
    """Whether a chat template (the model's own when None) puts the ``tools`` it is given into the prompt."""
    probe = [function_dict(_PROBE_FUNCTION, "", None)]
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=probe, chat_template=template, tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # noqa: BLE001 - a template that cannot take tools does not render them
        return False
    return _PROBE_FUNCTION in text


@dataclass
class Plan:
    """How one request uses tools and structured outputs: the engine's constraint, the text's parsing."""

    structured_outputs: Any  # vLLM StructuredOutputsParams or None
    skip_special_tokens: bool = True
    parser_cls: Any = None  # vLLM Parser class; None: the text is the reply
    request: Any = None  # the vLLM ChatCompletionRequest the parsers read
    single_call: bool = False

    def extractor(self, prompt_ids: list[int], tokenizer: Any) -> CallExtractor | None:
        if self.parser_cls is None:
            return None
        return CallExtractor(self.parser_cls(tokenizer, self.request.tools), self.request, prompt_ids,
                             self.single_call)


class CallExtractor:
    """One choice's text -> content and tool-call pieces, as it streams (vLLM's parser for the model)."""

    def __init__(self, parser: Any, request: Any, prompt_ids: list[int], single_call: bool) -> None:
        self._parser = parser
        self._request = request
        self._prompt_ids = prompt_ids
        self._single_call = single_call
        self.called = False

    def feed(self, text: str, token_ids: Sequence[int], finished: bool) -> tuple[str, list[ToolCallDelta]]:
        delta = self._parser.parse_delta(
            text, list(token_ids), self._request, prompt_token_ids=self._prompt_ids, finished=finished
        )
        if delta is None:
            return "", []
        calls = []
        for call in delta.tool_calls or ():
            if self._single_call and call.index > 0:
                continue
            function = call.function
            calls.append(ToolCallDelta(
                index=call.index,
                id=call.id or "",
                name=(function.name if function is not None else None) or "",
                arguments=(function.arguments if function is not None else None) or "",
            ))
        if calls:
            self.called = True
        return delta.content or "", calls


class ToolSupport:
    """One engine's tool handling: its parser class and chat templates (made once, when the engine starts)."""

    def __init__(self, tokenizer: Any, *, model_name: str, parser_name: str, chat_template: str | None) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.parser_name = parser_name
        self.parser_cls = None
        if parser_name:
            from vllm.parser.parser_manager import ParserManager

            self.parser_cls = ParserManager.get_parser(
                tool_parser_name=parser_name, enable_auto_tools=True, model_name=model_name,
                tool_strict_level=STRICT_LEVEL, tokenizer=tokenizer,
            )
        self.chat_template = chat_template
        self.fallback_template: str | None = None
        if chat_template is None and not renders_tools(tokenizer):
            self.fallback_template = BUNDLED_TEMPLATE.read_text()
            log.info("the model's chat template ignores tools: requests with tools use the bundled Hermes template")

    def template_for(self, messages: Sequence[Turn], tools: list[dict] | None) -> str | None:
        if self.chat_template is not None:
            return self.chat_template
        if self.fallback_template is not None and (
            tools or any(m.tool_calls or m.role == "tool" for m in messages)
        ):
            return self.fallback_template
        return None  # the model's own

    def render(self, messages: Sequence[Turn], tools: ToolUse | None, continue_final: bool = False) -> str:
        """The prompt text of a chat: the generation prompt appended, or (``continue_final``) the last message, an
        assistant reply, left open to be continued, as vLLM's server does with ``continue_final_message``."""
        # With tool_choice "none" the model is not shown the functions: it cannot call what it does not see.
        tool_dicts = (
            [function_dict(f.name, f.description, f.parameters, f.strict) for f in tools.functions]
            if tools is not None and tools.functions and tools.choice != "none"
            else None
        )
        return self.tokenizer.apply_chat_template(
            [turn_dict(m) for m in messages], tools=tool_dicts, chat_template=self.template_for(messages, tool_dicts),
            tokenize=False, add_generation_prompt=not continue_final, continue_final_message=continue_final,
        )

    def plan(self, tools: ToolUse | None, structured: Structured | None) -> Plan:
        if tools is None or not tools.functions or tools.choice == "none":
            return Plan(structured_outputs(structured))
        if self.parser_cls is None:
            raise InvalidArgument(
                "This model has no tool-call parser configured (CHATPLANE_INFERENCE_TOOL_CALL_PARSER), so it cannot "
                "call tools.", param="tools",
            )
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        if tools.choice == "function":
            choice: Any = {"type": "function", "function": {"name": tools.function}}
        else:
            choice = tools.choice
        try:
            request = ChatCompletionRequest.model_validate({
                "model": self.model_name,
                "messages": [{"role": "user", "content": "."}],  # the parsers read the tools, not the history
                "tools": [function_dict(f.name, f.description, f.parameters, f.strict) for f in tools.functions],
                "tool_choice": choice,
                "parallel_tool_calls": tools.parallel,
            })
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            raise InvalidArgument(str(first.get("msg", exc))[:500], param="tool_choice") from None
        request.structured_outputs = structured_outputs(structured)
        request = self.parser_cls(self.tokenizer, request.tools).adjust_request(request)
        return Plan(
            structured_outputs=request.extract_structured_outputs(),
            skip_special_tokens=request.skip_special_tokens,
            parser_cls=self.parser_cls,
            request=request,
            single_call=tools.parallel is False,
        )
