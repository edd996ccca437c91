"""What the synthetic engine (:mod:`chatplane.inference.synthetic`) says: made-up words from a seed, the pieces a
text is streamed in, made-up log-probabilities, a JSON value that a schema accepts, stop sequences, and the simple
tokenizer it counts with (one token per word or punctuation mark)."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator

from chatplane.inference.engine import Function, TokenLogprob

VOCABULARY = (
    "the", "a", "river", "bread", "dragon", "baked", "slowly", "under", "golden", "light", "and", "every", "morning",
    "village", "smelled", "of", "warm", "crust", "while", "children", "laughed", "near", "old", "stone", "bridge",
    "quiet", "ovens", "glowed", "through", "long", "winter", "nights",
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")  # a token with the space before it: the pieces make the text again


def count_text(text: str) -> int:
    """Tokens of ``text``: one per word or punctuation mark."""
    return len(_TOKEN.findall(text))


def pieces(text: str) -> tuple[str, ...]:
    """``text`` as tokens: each word or mark with the space before it."""
    return tuple(_PIECE.findall(text))


def logprob(token: str, top: int, rng: random.Random) -> TokenLogprob:
    """A made-up logprob for ``token``, the most likely, and ``top`` alternatives (it first), less likely each."""
    logprob = -round(rng.uniform(0.01, 1.0), 4)
    others = [" " + w for w in VOCABULARY if " " + w != token]
    alternatives = [(token, logprob)] + [(w, round(logprob - 1.5 * (j + 1), 4)) for j, w in enumerate(others)]
    return TokenLogprob(token, logprob, alternatives[:top])


def cut_at_stop(pieces: tuple[str, ...], stop: tuple[str, ...], done: str) -> tuple[tuple[str, ...], str]:
    """The pieces up to the first stop sequence (left out, as vLLM does), and the finish reason."""
    text = ""
    for i, piece in enumerate(pieces):
        hit = first_stop(text + piece, stop, len(text))
        if hit is not None:
            return pieces[:i] + (hit[len(text):],), "stop"
        text += piece
    return pieces, done


def function_json(function: Function) -> dict:
    return {"name": function.name, "description": function.description, "parameters": function.parameters}


def instance(schema: dict | None, root: dict | None, words: Iterator[str]):
    """A JSON value that the JSON ``schema`` accepts (its ``$ref``s resolved in ``root``): the first of each
    choice, every property, the least a length or a bound allows; strings are made-up words (a ``pattern`` or
    ``format`` is not looked at: such a schema may get a value it refuses)."""
    if not isinstance(schema, dict):
        return next(words).strip()
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and isinstance(root, dict):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return instance(target, root, words)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance(schema[key][0], root, words)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return {name: instance(sub, root, words) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance(schema.get("items"), root, words) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        value = low if low is not None else schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else (
            min(1, high) if high is not None else 1)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    word = next(words).strip()  # no ``pattern`` or ``format`` is looked at
    return (word * (1 + schema.get("minLength", 0) // len(word)))[: schema.get("maxLength", 1000)]


@functools.lru_cache(maxsize=256)
def reply(seed: int, length: int) -> tuple[str, ...]:
    """The words of a reply; cached, since seeding a generator costs more than the rest of a fast request."""
    rng = random.Random(seed)
    return tuple(" " + rng.choice(VOCABULARY) for _ in range(length))


def after(script: tuple[str, ...], given: str) -> tuple[str, ...]:
    """The script's tokens after those ``given`` already holds (a continued reply goes on where it stopped)."""
    done = 0
    while done < len(script) and script[done] and given.startswith(script[done]):
        given = given[len(script[done]):]
        done += 1
    return script[done:]


def first_stop(text: str, stop: tuple[str, ...], searched: int) -> str | None:
    """``text`` cut before the earliest stop sequence that ends past ``searched``, None when there is none."""
    cut = None
    for s in stop:
        at = text.find(s, max(0, searched - len(s) + 1))
        if at != -1 and (cut is None or at < cut):
            cut = at
    return None if cut is None else text[:cut]
