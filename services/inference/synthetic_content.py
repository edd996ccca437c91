"""What the synthetic engine (:mod:`chatplane.inference.synthetic`) says: made-up words from a seed, the pieces a
text is streamed in, made-up log-probabilities, a JSON value that a schema accepts, stop sequences, and the simple
tokenizer it counts with (one token per word or punctuation mark)."""

from __future__ import annotations

import functools
import math
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


# Values of the common string formats (a made-up word would be refused by a validator that checks them).
FORMATS = {
    "date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "00:00:00Z", "duration": "P1D",
    "uuid": "00000000-0000-4000-8000-000000000000", "email": "someone@example.com", "uri": "https://example.com/",
    "hostname": "example.com", "ipv4": "127.0.0.1", "ipv6": "::1",
}
SHALLOW = 3  # nesting past which optional parts are left out (recursive schemas end)
DEEPEST = 32  # nesting past which nothing more is built (null): a schema that cannot end


def instance(schema: dict | bool | None, root: dict | None, words: Iterator[str], depth: int = 0):
    """A JSON value that the JSON ``schema`` accepts (``$ref``s resolved in ``root``; ``words`` never ends): the
    first of each choice, every property (past :data:`SHALLOW` levels only the required ones, and a null or no item
    where allowed, so that recursive schemas end), the least a length or a bound allows, distinct items where
    ``uniqueItems`` asks; strings are made-up words or a value of their ``format``. A ``pattern`` is not looked at:
    such a schema may get a value it refuses. Never raises."""
    if depth > DEEPEST:
        return None
    schema = _resolve(schema, root)
    deep = depth >= SHALLOW
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [_resolve(o, root) for o in schema.get(key) or ()]
        if options:
            nulls = [o for o in options if o.get("type") == "null"]
            return instance(nulls[0] if deep and nulls else options[0], root, words, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = "null" if deep and "null" in kind else next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return _object(schema, root, words, depth)
    if kind == "array":
        return _array(schema, root, words, depth)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if schema.get("format") in FORMATS:
        return FORMATS[schema["format"]]
    word = next(words).strip()
    return (word * (1 + schema.get("minLength", 0) // len(word)))[: schema.get("maxLength", 1000)]


def _resolve(schema, root: dict | None) -> dict:
    """``schema`` with its ``$ref`` followed (a chain of them too) and its ``allOf`` merged in."""
    for _ in range(16):
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not (isinstance(ref, str) and ref.startswith("#") and isinstance(root, dict)):
            break
        target = root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **(target if isinstance(target, dict) else {})}
    if not isinstance(schema, dict):
        return {}
    if schema.get("allOf"):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(part, root)
            merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        return merged
    return schema


def _object(schema: dict, root, words: Iterator[str], depth: int) -> dict:
    properties = schema.get("properties") or {}
    required = list(schema.get("required") or ())
    names = required if depth >= SHALLOW else [*properties, *(n for n in required if n not in properties)]
    extra = schema.get("additionalProperties")
    other = extra if isinstance(extra, dict) else {"type": "string"}
    return {name: instance(properties.get(name, other), root, words, depth + 1) for name in names}


def _array(schema: dict, root, words: Iterator[str], depth: int) -> list:
    prefix = list(schema.get("prefixItems") or ())
    least = schema.get("minItems", 0 if depth >= SHALLOW else 1)
    most = schema.get("maxItems", max(least, len(prefix), 1))
    count = min(max(least, len(prefix) if depth < SHALLOW else 0), most)
    items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
    value = [instance(prefix[i] if i < len(prefix) else items, root, words, depth + 1) for i in range(count)]
    if schema.get("uniqueItems"):
        for i in range(1, len(value)):
            while value[i] in value[:i]:
                value[i] = _other(value[i], i)
    return value


def _other(value, i: int):
    """Another value of the same kind as ``value`` (distinct items)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + str(i)
    return value


def _number(schema: dict, integer: bool) -> int | float:
    """The least number the bounds allow (1 when nothing bounds it from below), a multiple of ``multipleOf``."""
    step = 1 if integer else 0.5
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(above, (int, float)) and not isinstance(above, bool):
        low = above + step if low is None or above >= low else low
    if isinstance(below, (int, float)) and not isinstance(below, bool):
        high = below - step if high is None or below <= high else high
    if not integer and isinstance(above, (int, float)) and isinstance(below, (int, float)) and below - above <= 1:
        low = high = (above + below) / 2  # a narrow open interval: its middle
    value = low if low is not None else min(1, high) if high is not None else 1
    multiple = schema.get("multipleOf")
    if isinstance(multiple, (int, float)) and multiple > 0:
        value = math.ceil(value / multiple) * multiple
    if integer:
        value = math.ceil(value)
    return int(value) if integer else float(value)


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
