"""A synthetic model engine: deterministic made-up tokens at a configured pace, no model, no GPU, no CPU to speak of.

Selected with ``CHATPLANE_INFERENCE_ENGINE=synthetic`` (never the default). It is the platform's test double of
inference, behind the real servicer and server (:func:`chatplane.inference.server.build`): the benchmarks measure
everything above the engine (gRPC, the conversation service, the gateway, SSE) without the model's cost with it, the
way llm-d's inference simulator and production-stack's fake server do for their routers, and tests that need a
working inference service without a model start it (tests/test_tracing.py, tests/test_fleet.py,
services/inference/tests/test_synthetic.py, the conversation service's tests). It behaves like the vLLM engine
(:mod:`chatplane.inference.vllm_engine`) where the platform can tell: the same context-window errors, usage on the last
chunk, ``max_num_seqs`` running at once with the rest waiting, engine statistics, stop sequences, and a cancelled
stream frees its slot at once.

Tokens are words of a small fixed vocabulary, each one chunk (" word"), chosen by a generator seeded with the
request's seed (or the engine seed), so the same request gives the same reply; or, with ``synthetic_script``, the
script's tokens, ending like a model's end of text after the last one. Prompts are counted with a simple
deterministic tokenizer: one token per word or punctuation mark, plus a few per message for the chat template.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import AsyncIterator

from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import (
    Chunk,
    EngineLoad,
    Messages,
    Sampling,
    Structured,
    ToolUse,
)
from chatplane.inference.settings import InferenceSettings

DEFAULT_MAX_MODEL_LEN = 2048
# Per message "<|im_start|>", role, "\n" ... "<|im_end|>" and "\n"; the generation prompt "<|im_start|>assistant\n".
TOKENS_PER_MESSAGE = 4
GENERATION_PROMPT_TOKENS = 3
VOCABULARY = (
    "the", "a", "river", "bread", "dragon", "baked", "slowly", "under", "golden", "light", "and", "every", "morning",
    "village", "smelled", "of", "warm", "crust", "while", "children", "laughed", "near", "old", "stone", "bridge",
    "quiet", "ovens", "glowed", "through", "long", "winter", "nights",
)
_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_text(text: str) -> int:
    """Tokens of ``text``: one per word or punctuation mark."""
    return len(_TOKEN.findall(text))


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
            return sum(TOKENS_PER_MESSAGE + count_text(m[1]) for m in messages) + opened
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
        for param, used in (("n", sampling.n > 1), ("logprobs", sampling.logprobs is not None),
                            ("logprobs", sampling.prompt_logprobs is not None), ("tools", tools is not None),
                            ("response_format", structured is not None)):
            if used:
                raise InvalidArgument(f"the synthetic engine does not support {param}", param=param)
        prompt_tokens = self.count_tokens(messages=messages, prompt=prompt, continue_final=continue_final)
        # A continued reply goes on with the same words the uninterrupted one would have had (same seed): the words
        # already given are skipped, so a stream continued on another replica reads exactly like one that was not.
        given_text = messages[-1][1] if continue_final and messages else ""
        if self.script:
            words = _after(self.script, given_text)
            max_tokens = self._budget(prompt_tokens, sampling, messages is not None, len(words))
            # The script's end is the model's end of text ("stop"), unless max_tokens comes first ("length").
            end_reason = "stop" if len(words) <= max_tokens else "length"
            words = words[:max_tokens]
        else:
            given = count_text(given_text)
            reply = self.settings.synthetic_reply_tokens - given
            max_tokens = self._budget(prompt_tokens, sampling, messages is not None, reply)
            seed = sampling.seed if sampling.seed is not None else self.settings.seed
            words = _reply(seed, given + max_tokens)[given:]
            # With no max_tokens the reply ends on its own ("stop", the model's end of text); otherwise at the limit.
            end_reason = "stop" if sampling.max_tokens is None else "length"
        load = self.load
        finished = False
        load.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            load.waiting -= 1
        load.running += 1
        self._tokens_in_use += prompt_tokens + max_tokens
        self._update_load()
        try:
            async for chunk in self._stream(words, prompt_tokens, sampling.stop, end_reason):
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            self._slots.release()
            load.running -= 1
            self._tokens_in_use -= prompt_tokens + max_tokens
            self._update_load()
            if not finished:
                load.aborted_total += 1  # the caller went away: its slot is free again

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
                hit = _first_stop(text + piece, stop, len(text))
                if hit is not None:
                    # As vLLM does: the stop sequence and what follows are not part of the reply.
                    yield Chunk(hit[len(text):], "stop", prompt_tokens, i + 1, tokens=1)
                    return
            text += piece
            if i == last:
                yield Chunk(piece, end_reason, prompt_tokens, i + 1, tokens=1)
            else:
                yield Chunk(piece, prompt_tokens=prompt_tokens, tokens=1)

    def _update_load(self) -> None:
        capacity = self.settings.max_num_seqs * self.max_model_len
        self.load.kv_cache_usage = min(1.0, self._tokens_in_use / capacity)
        self.load.updated = time.monotonic()

    async def stop(self) -> None:
        return None


@functools.lru_cache(maxsize=256)
def _reply(seed: int, length: int) -> tuple[str, ...]:
    """The words of a reply; cached, since seeding a generator costs more than the rest of a fast request."""
    rng = random.Random(seed)
    return tuple(" " + rng.choice(VOCABULARY) for _ in range(length))


def _after(script: tuple[str, ...], given: str) -> tuple[str, ...]:
    """The script's tokens after those ``given`` already holds (a continued reply goes on where it stopped)."""
    done = 0
    while done < len(script) and script[done] and given.startswith(script[done]):
        given = given[len(script[done]):]
        done += 1
    return script[done:]


def _first_stop(text: str, stop: tuple[str, ...], searched: int) -> str | None:
    """``text`` cut before the earliest stop sequence that ends past ``searched``, None when there is none."""
    cut = None
    for s in stop:
        at = text.find(s, max(0, searched - len(s) + 1))
        if at != -1 and (cut is None or at < cut):
            cut = at
    return None if cut is None else text[:cut]
