"""Fitting a chat into the context window (GenerateRequest.fit): which history is kept, found with few counts."""

from __future__ import annotations

import random

import pytest

from chatplane.common.chat import group_turns
from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import Turn
from chatplane.inference.fitting import fit


def counter(calls: list[int]):
    def count(messages):
        calls.append(len(messages))
        return tokens(messages)

    return count


def tokens(messages) -> int:
    return sum(len(m.content.split()) + 3 for m in messages)


def history(rng: random.Random, turns: int) -> list[Turn]:
    out = []
    for i in range(turns):
        out.append(Turn("user", " ".join(["u"] * rng.randint(1, 30)) + f" {i}"))
        for _ in range(rng.choice([0, 1, 1, 2])):  # no reply (failed), one, or a partial one and a full one
            out.append(Turn("assistant", " ".join(["a"] * rng.randint(1, 30))))
    return out


def test_keeps_the_most_recent_whole_turns_that_fit():
    rng = random.Random(7)
    system, new = Turn("system", "sys"), Turn("user", "the new question")
    for _ in range(200):
        past = history(rng, rng.randint(0, 40))
        limit, budget = rng.randint(30, 600), rng.randint(1, 20)
        calls: list[int] = []
        try:
            fitted = fit([system, *past, new], keep_first=1, keep_last=1, max_tokens=budget, default_max_tokens=99,
                         max_model_len=limit, count=counter(calls))
        except InvalidArgument as err:
            assert tokens([system, new]) + budget > limit and err.code == "context_length_exceeded"
            continue
        # Reference: drop whole turns from the front, one at a time, until it fits.
        turns = group_turns(past)
        for dropped in range(len(turns) + 1):
            expected = [system, *(m for t in turns[dropped:] for m in t), new]
            if tokens(expected) + budget <= limit:
                break
        assert fitted.messages == expected
        assert fitted.prompt_tokens == tokens(expected) and fitted.max_tokens == budget
        assert fitted.dropped_messages == len(past) - (len(expected) - 2)
        assert len(calls) <= 2 + max(1, len(turns)).bit_length()


def test_default_budget_shrinks_to_the_room_left():
    new = Turn("user", " ".join(["w"] * 10))
    fitted = fit([Turn("user", "old"), Turn("assistant", "reply"), new], keep_first=0, keep_last=1,
                 max_tokens=None, default_max_tokens=50, max_model_len=20, count=counter([]))
    assert fitted.messages == [new] and fitted.max_tokens == 20 - 13 and fitted.dropped_messages == 2


def test_nothing_fits():
    with pytest.raises(InvalidArgument) as err:
        fit([Turn("system", "sys"), Turn("user", " ".join(["w"] * 20))], keep_first=1, keep_last=1,
            max_tokens=None, default_max_tokens=5, max_model_len=20, count=counter([]))
    assert (err.value.param, err.value.code) == ("messages", "context_length_exceeded")
    with pytest.raises(InvalidArgument) as err:
        fit([Turn("user", "short")], keep_first=0, keep_last=1, max_tokens=50, default_max_tokens=5,
            max_model_len=20, count=counter([]))
    assert err.value.param == "max_tokens"


def test_turns_keep_replies_with_their_question():
    msgs = [Turn("assistant", "orphan"), Turn("user", "q1"), Turn("assistant", "a1"),
            Turn("user", "q2"), Turn("user", "q3"), Turn("assistant", "a3")]
    assert [[m.content for m in t] for t in group_turns(msgs)] == [["orphan"], ["q1", "a1"], ["q2"], ["q3", "a3"]]
