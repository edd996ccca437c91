"""The pre-encoded SSE events are byte for byte what encoding the whole object gives."""

from __future__ import annotations

import json

import pytest

from chatplane.gateway.sse import SLOT, TextEvent, event

TEXTS = [" bread", "", 'a "quoted" \\ back\\slash', "line\nbreak\ttab\r\x01\x1f", "é 東京 🐉", "\u2028\u2029", "</script>"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_event_is_the_encoded_object(text):
    def chunk(content: str) -> dict:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}]}

    fast = TextEvent(event(chunk(SLOT)))
    assert fast(text) == event(chunk(text))
    assert json.loads(fast(text)[len(b"data: "):])["choices"][0]["delta"]["content"] == text
    assert fast(text).endswith(b"\n\n")


def test_template_needs_the_slot_once():
    with pytest.raises(ValueError):
        TextEvent(event({"delta": "no slot"}))
    with pytest.raises(ValueError):
        TextEvent(event({"a": SLOT, "b": SLOT}))
