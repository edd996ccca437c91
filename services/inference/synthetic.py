"""A synthetic model engine: deterministic made-up tokens at a configured pace, no model, no GPU, no CPU to speak of.

Selected with ``CHATPLANE_INFERENCE_ENGINE=synthetic`` (never the default). It is the platform's test double of
inference, behind the real servicer and server (:func:`chatplane.inference.server.build`): the benchmarks measure
everything above the engine (gRPC, the conversation service, the gateway, SSE) without the model's cost with it, the
way llm-d's inference simulator and production-stack's fake server do for their routers, and tests that need a
working inference service without a model start it (tests/test_tracing.py, tests/test_fleet.py,
services/inference/tests/test_synthetic.py, the conversation service's tests). It behaves like the vLLM engine
(:mod:`chatplane.inference.vllm_engine`) where the platform can tell: the same context-window errors, usage on the last
chunk, ``max_num_seqs`` running at once with the rest waiting, engine statistics, stop sequences, and a cancelled
stream frees its slot at once. It speaks the engine contract's richer requests the same way too: ``n`` choices
(interleaved, each ending on its own, the usage of all on the last chunk), log-probabilities with ``logprobs``
alternatives, the prompt's log-probabilities (the first token has none), tool calls (with ``required`` or a named
function: one call of it whose arguments are a JSON value of its parameters' schema, streamed in pieces; with
``auto`` or ``none`` a text reply) and structured output (a JSON value of the schema, or a JSON object).

Tokens are words of a small fixed vocabulary, each one chunk (" word"), chosen by a generator seeded with the
request's seed (or the engine seed; choice i of n: seed + i), so the same request gives the same reply; or, with
``synthetic_script``, the script's tokens, ending like a model's end of text after the last one. Prompts are counted with a simple
deterministic tokenizer: one token per word or punctuation mark, plus a few per message for the chat template.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import NamedTuple

from chatplane.common.errors import InvalidArgument
from chatplane.inference import synthetic_content as content
from chatplane.inference.engine import (
    Chunk,
    EngineLoad,
    Messages,
    Sampling,
    Structured,
    TokenLogprob,
    ToolCallDelta,
    ToolUse,
)
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic_content import count_text

DEFAULT_MAX_MODEL_LEN = 2048
# Per message "<|im_start|>", role, "\n" ... "<|im_end|>" and "\n"; the generation prompt "<|im_start|>assistant\n".
TOKENS_PER_MESSAGE = 4
GENERATION_PROMPT_TOKENS = 3
class SyntheticEngine:
    """Streams deterministic tokens; see the module docstring."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        # Never the model folder's name: a client must be able to tell that these tokens are made up.
        self.model_name = settings.served_model_name or "synthetic"
        self.max_model_len = settings.max_model_len or DEFAULT_MAX_MODEL_LEN
        self.created = int(time.time())
        self.load = EngineLoad()
        self._interval = 1.0 / settings.synthetic_tokens_per_second if settings.synthetic_tokens_per_second else 0.0
        self.script = tuple(settings.synthetic_script)  # the reply's tokens; empty: made-up words
        self._slots: asyncio.Semaphore | None = None
        self._tokens_in_use = 0

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.settings.max_num_seqs)
        self.created = int(time.time())

    def count_tokens(
        self,
        *,
        messages: Messages | None = None,
        prompt: str | None = None,
        tools: ToolUse | None = None,
        continue_final: bool = False,
    ) -> int:
        if messages is not None:
            opened = 0 if continue_final else GENERATION_PROMPT_TOKENS
            offered = count_text(json.dumps([content.function_json(f) for f in tools.functions])) if tools else 0
            return sum(TOKENS_PER_MESSAGE + count_text(m[1]) for m in messages) + opened + offered
        return count_text(prompt or "")

    def _budget(self, prompt_tokens: int, sampling: Sampling, chat: bool, reply: int) -> int:
        """max_tokens as vLLM would check it (same errors), with ``reply`` tokens (capped by the room left) when none
        is given."""
        if prompt_tokens == 0:
            raise InvalidArgument("the prompt is empty", param="messages" if chat else "prompt")
        room = self.max_model_len - prompt_tokens
        asked = sampling.max_tokens
        if room < 1 or (asked is not None and prompt_tokens + asked > self.max_model_len):
            requested = prompt_tokens + (asked if asked is not None else max(room, 0))
            raise InvalidArgument(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{requested} tokens ({prompt_tokens} in the messages, {requested - prompt_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages" if room < 1 or asked is None else "max_tokens",
                code="context_length_exceeded",
            )
        return asked if asked is not None else min(room, max(1, reply))

    async def generate(
        self,
        *,
        messages: Messages | None,
        prompt: str | None,
        sampling: Sampling,
        request_id: str,
        tools: ToolUse | None = None,
        structured: Structured | None = None,
        continue_final: bool = False,
    ) -> AsyncIterator[Chunk]:
        if self._slots is None:
            raise RuntimeError("the engine is not started")
        prompt_tokens = self.count_tokens(messages=messages, prompt=prompt, tools=tools, continue_final=continue_final)
        if (sampling.n > 1 or sampling.logprobs is not None or sampling.prompt_logprobs is not None
                or tools is not None or structured is not None):
            choices = self._choices(prompt_tokens, sampling, messages is not None, tools, structured)
            budget = sum(len(c.pieces) for c in choices)
            prompt_logprobs = self._prompt_logprobs(messages, prompt, sampling)
            stream = self._stream_choices(choices, prompt_tokens, sampling.logprobs, prompt_logprobs)
        else:
            stream, budget = self._plain(prompt_tokens, sampling, messages, continue_final)
        load = self.load
        finished = False
        load.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            load.waiting -= 1
        load.running += 1
        self._tokens_in_use += prompt_tokens + budget
        self._update_load()
        try:
            async for chunk in stream:
                finished = chunk.finish_reason is not None and not chunk.more
                yield chunk
        finally:
            self._slots.release()
            load.running -= 1
            self._tokens_in_use -= prompt_tokens + budget
            self._update_load()
            if not finished:
                load.aborted_total += 1  # the caller went away: its slot is free again

    def _plain(self, prompt_tokens: int, sampling: Sampling, messages: Messages | None,
               continue_final: bool) -> tuple[AsyncIterator[Chunk], int]:
        """The common case (one choice of text): its stream and its token budget."""
        # A continued reply goes on with the same words the uninterrupted one would have had (same seed): the words
        # already given are skipped, so a stream continued on another replica reads exactly like one that was not.
        given_text = messages[-1][1] if continue_final and messages else ""
        if self.script:
            words = content.after(self.script, given_text)
            max_tokens = self._budget(prompt_tokens, sampling, messages is not None, len(words))
            # The script's end is the model's end of text ("stop"), unless max_tokens comes first ("length").
            end_reason = "stop" if len(words) <= max_tokens else "length"
            words = words[:max_tokens]
        else:
            given = count_text(given_text)
            reply = self.settings.synthetic_reply_tokens - given
            max_tokens = self._budget(prompt_tokens, sampling, messages is not None, reply)
            seed = sampling.seed if sampling.seed is not None else self.settings.seed
            words = content.reply(seed, given + max_tokens)[given:]
            # With no max_tokens the reply ends on its own ("stop", the model's end of text) unless the context window
            # ends it first; otherwise at the limit ("length").
            end_reason = "stop" if sampling.max_tokens is None and max_tokens >= reply else "length"
        return self._stream(words, prompt_tokens, sampling.stop, end_reason), max_tokens

    async def _stream(
        self, words: tuple[str, ...], prompt_tokens: int, stop: tuple[str, ...], end_reason: str
    ) -> AsyncIterator[Chunk]:
        prefill = prompt_tokens * self.settings.synthetic_prompt_token_seconds
        start = time.monotonic() + prefill
        if prefill:
            await asyncio.sleep(prefill)
        interval = self._interval
        if not words:  # a continued reply that was already whole
            yield Chunk("", end_reason, prompt_tokens, 0)
            return
        text = ""
        last = len(words) - 1
        for i, word in enumerate(words):
            if interval:
                # Scheduled from the start, so that the pace does not drift with the event loop's delays.
                delay = start + i * interval - time.monotonic()
                await asyncio.sleep(delay if delay > 0 else 0)
            else:
                await asyncio.sleep(0)  # as fast as possible, but let others (and cancellation) in
            piece = word
            if stop:
                hit = content.first_stop(text + piece, stop, len(text))
                if hit is not None:
                    # As vLLM does: the stop sequence and what follows are not part of the reply.
                    yield Chunk(hit[len(text):], "stop", prompt_tokens, i + 1, tokens=1)
                    return
            text += piece
            if i == last:
                yield Chunk(piece, end_reason, prompt_tokens, i + 1, tokens=1)
            else:
                yield Chunk(piece, prompt_tokens=prompt_tokens, tokens=1)

    # --- the richer requests: n choices, logprobs, tool calls, structured output ----------------------------------

    def _choices(self, prompt_tokens: int, sampling: Sampling, chat: bool, tools: ToolUse | None,
                 structured: Structured | None) -> list[_Choice]:
        """Every choice's pieces, worked out before the first is sent (they are deterministic)."""
        choices = []
        seed = sampling.seed if sampling.seed is not None else self.settings.seed
        for i in range(sampling.n):
            words = itertools.cycle(content.reply(seed + i, 64))  # never ends: schemas can be large
            call = None
            if tools is not None and tools.choice in ("required", "function"):
                name = tools.function or tools.functions[0].name
                schema = next(f.parameters for f in tools.functions if f.name == name)
                call = name
                value = content.instance(schema or {"type": "object"}, schema, words)
                pieces: tuple[str, ...] = content.pieces(json.dumps(value))
                done = "tool_calls"
            elif structured is not None:
                schema = structured.json_schema
                value = content.instance(schema, schema, words) if schema else {"answer": next(words).strip()}
                pieces, done = content.pieces(json.dumps(value)), "stop"
            elif self.script:
                pieces, done = self.script, "stop"
            else:
                pieces = content.reply(seed + i, self.settings.synthetic_reply_tokens if sampling.max_tokens is None
                                else sampling.max_tokens + 1)
                done = "stop"
            max_tokens = self._budget(prompt_tokens, sampling, chat, len(pieces))
            if len(pieces) > max_tokens:
                pieces, done = pieces[:max_tokens], "length"
            if call is None and sampling.stop:
                pieces, done = content.cut_at_stop(pieces, sampling.stop, done)
            choices.append(_Choice(i, pieces, done, call, random.Random(seed * 7919 + i)))
        return choices

    def _prompt_logprobs(self, messages: Messages | None, prompt: str | None,
                         sampling: Sampling) -> list[TokenLogprob] | None:
        """The prompt's tokens with made-up logprobs (the first has none: 0 and no alternatives, as vLLM gives). A
        chat's are its messages' words only (vLLM's include the chat template's tokens)."""
        if sampling.prompt_logprobs is None:
            return None
        text = prompt if messages is None else "\n".join(m[1] for m in messages)
        rng = random.Random(len(text or ""))
        tokens = [p for p in content.pieces(text or "") if not p.isspace()]
        return [TokenLogprob(t, 0.0, []) if j == 0 else content.logprob(t, sampling.prompt_logprobs, rng)
                for j, t in enumerate(tokens)]

    async def _stream_choices(self, choices: list[_Choice], prompt_tokens: int, logprobs: int | None,
                              prompt_logprobs: list[TokenLogprob] | None) -> AsyncIterator[Chunk]:
        """The choices' pieces interleaved step by step, each choice's last with its finish reason (``more`` while
        others go on), the usage of all on the stream's last chunk."""
        prefill = prompt_tokens * self.settings.synthetic_prompt_token_seconds
        start = time.monotonic() + prefill
        if prefill:
            await asyncio.sleep(prefill)
        steps = [(step, c) for step in range(max(len(c.pieces) for c in choices))
                 for c in choices if step < len(c.pieces)]
        total = len(steps)
        paced = -1
        for sent, (step, choice) in enumerate(steps, 1):
            if step != paced:  # one token of every choice a step, paced like the plain stream
                paced = step
                delay = start + step * self._interval - time.monotonic() if self._interval else 0
                await asyncio.sleep(delay if delay > 0 else 0)
            piece = choice.pieces[step]
            # Every chunk tells the prompt's size, as the plain stream's do (one choice of text is sent like it).
            chunk = Chunk(piece, prompt_tokens=prompt_tokens, index=choice.index, tokens=1)
            if choice.call is not None:
                chunk.text = ""
                first = step == 0
                chunk.tool_calls = [ToolCallDelta(0, f"call_{uuid.uuid4().hex[:24]}" if first else "",
                                                  choice.call if first else "", piece)]
            if logprobs is not None:
                chunk.logprobs = [content.logprob(piece, logprobs, choice.rng)]
            if prompt_logprobs is not None and sent == 1:
                chunk.prompt_logprobs = prompt_logprobs
            if step == len(choice.pieces) - 1:
                chunk.finish_reason = choice.done
                chunk.more = sent < total
            if sent == total:
                chunk.prompt_tokens, chunk.completion_tokens = prompt_tokens, total
            yield chunk

    def _update_load(self) -> None:
        capacity = self.settings.max_num_seqs * self.max_model_len
        self.load.kv_cache_usage = min(1.0, self._tokens_in_use / capacity)
        self.load.updated = time.monotonic()

    async def stop(self) -> None:
        return None


class _Choice(NamedTuple):
    index: int
    pieces: tuple[str, ...]  # one token each: text, or a tool call's arguments when ``call`` is set
    done: str  # its finish reason
    call: str | None  # the function it calls
    rng: random.Random  # its logprobs
