"""Prompt building: which history fits, found with few token counts."""

from __future__ import annotations

import random

import pytest

from chatplane.conversation.prompt import ChatMessage, ContextLengthExceeded, build_prompt, group_turns


def counter(limit: int, calls: list[int]):
    async def count(messages):
        calls.append(len(messages))
        return sum(len(m.content.split()) + 3 for m in messages), limit

    return count


def history(rng: random.Random, turns: int) -> list[ChatMessage]:
    out = []
    for i in range(turns):
        out.append(ChatMessage("user", " ".join(["u"] * rng.randint(1, 30)) + f" {i}"))
        for _ in range(rng.choice([0, 1, 1, 2])):  # no reply (failed), one, or a partial one and a full one
            out.append(ChatMessage("assistant", " ".join(["a"] * rng.randint(1, 30))))
    return out


def tokens(messages) -> int:
    return sum(len(m.content.split()) + 3 for m in messages)


async def test_keeps_the_most_recent_whole_turns_that_fit():
    rng = random.Random(7)
    for _ in range(200):
        past = history(rng, rng.randint(0, 40))
        new = ChatMessage("user", "the new question")
        limit, budget = rng.randint(30, 600), rng.randint(1, 20)
        calls: list[int] = []
        prompt = await build_prompt(
            system_prompt="sys",
            history=past,
            new_message=new,
            max_tokens=budget,
            default_max_tokens=99,
            count=counter(limit, calls),
        )
        # Reference: drop whole turns from the front, one at a time, until it fits.
        turns = group_turns(past)
        for dropped in range(len(turns) + 1):
            expected = [ChatMessage("system", "sys"), *(m for t in turns[dropped:] for m in t), new]
            if tokens(expected) + budget <= limit:
                break
        assert prompt.messages == expected
        assert prompt.prompt_tokens == tokens(expected) and prompt.max_tokens == budget
        assert prompt.dropped_messages == len(past) - (len(expected) - 2)
        assert len(calls) <= 2 + max(1, len(turns)).bit_length()


async def test_default_budget_shrinks_to_the_room_left():
    calls: list[int] = []
    new = ChatMessage("user", " ".join(["w"] * 10))
    prompt = await build_prompt(
        system_prompt="",
        history=[ChatMessage("user", "old"), ChatMessage("assistant", "reply")],
        new_message=new,
        max_tokens=None,
        default_max_tokens=50,
        count=counter(20, calls),
    )
    assert prompt.messages == [new] and prompt.max_tokens == 20 - 13


async def test_nothing_fits():
    with pytest.raises(ContextLengthExceeded) as err:
        await build_prompt(
            system_prompt="sys",
            history=[],
            new_message=ChatMessage("user", " ".join(["w"] * 20)),
            max_tokens=None,
            default_max_tokens=5,
            count=counter(20, []),
        )
    assert err.value.param == "content"


def test_turns_keep_replies_with_their_question():
    msgs = [ChatMessage("assistant", "orphan"), ChatMessage("user", "q1"), ChatMessage("assistant", "a1"),
            ChatMessage("user", "q2"), ChatMessage("user", "q3"), ChatMessage("assistant", "a3")]
    assert [[m.content for m in t] for t in group_turns(msgs)] == [["orphan"], ["q1", "a1"], ["q2"], ["q3", "a3"]]
