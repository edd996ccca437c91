"""Picking a replica for a request: the three policies of a pool, as pure functions of the replicas' loads.

- ``affinity``: a request with a key (a conversation's id, a session) goes to the replica that ranks first for that
  key by rendezvous hashing (highest random weight), so that its history stays in that replica's prefix cache, unless
  that replica is too busy: a replica whose load is at or above ``ceil(BOUND * (total + 1) / n)`` is passed over for
  the next in the key's ranking (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam, 2018).
  A replica joining or leaving moves only the keys that rank it first, about 1/n of them. Without a key: least loaded.
- ``least_loaded``: the replica with the least load; ties are broken at random.
- ``round_robin``: each replica in turn.

A replica's load is what the caller knows of it: requests this client has in flight there, or the engine's own
running and waiting figures when those are higher (other clients' requests).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from chatplane.common.inference.pools import Policy

BOUND = 1.25  # a replica above about 1.25x the pool's mean load is passed over by affinity


class Candidate(Protocol):
    @property
    def address(self) -> str: ...

    @property
    def load(self) -> int: ...


class Pick(StrEnum):
    """How a replica was chosen (a metrics label)."""

    preferred = "preferred"  # the key's first choice
    spilled = "spilled"  # the key's first choice was too busy: the next one in its ranking
    least_loaded = "least_loaded"
    round_robin = "round_robin"


def score(key: str, address: str) -> int:
    """The key's weight for a replica: the same in every process (never Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{address}".encode(), digest_size=8).digest(), "big")


def ranking(key: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: score(key, c.address), reverse=True)


def capacity(candidates: Sequence[Candidate], bound: float = BOUND) -> int:
    """The load at which a replica is passed over when one more request arrives."""
    total = sum(c.load for c in candidates)
    return math.ceil(bound * (total + 1) / len(candidates))


def by_affinity(key: str, candidates: Sequence[Candidate], bound: float = BOUND) -> tuple[Candidate, Pick]:
    limit = capacity(candidates, bound)
    ordered = ranking(key, candidates)
    for i, candidate in enumerate(ordered):
        if candidate.load < limit:
            return candidate, Pick.preferred if i == 0 else Pick.spilled
    return ordered[0], Pick.preferred  # every load >= limit cannot happen (the mean is below it); keep the key's


def least_loaded(candidates: Sequence[Candidate], rng: random.Random | None = None) -> Candidate:
    least = min(c.load for c in candidates)
    tied = [c for c in candidates if c.load == least]
    return tied[0] if len(tied) == 1 else (rng or random).choice(tied)


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        ordered = sorted(candidates, key=lambda c: c.address)
        chosen = ordered[self._next % len(ordered)]
        self._next += 1
        return chosen


class Picker:
    """A pool's policy, applied to the replicas that may take a request now."""

    def __init__(self, policy: Policy, bound: float = BOUND) -> None:
        self.policy = policy
        self.bound = bound
        self._round_robin = RoundRobin()

    def pick(self, candidates: Sequence[Candidate], key: str | None) -> tuple[Candidate, Pick]:
        if not candidates:
            raise ValueError("no replica to pick from")
        if self.policy is Policy.round_robin:
            return self._round_robin.pick(candidates), Pick.round_robin
        if self.policy is Policy.affinity and key:
            return by_affinity(key, candidates, self.bound)
        return least_loaded(candidates), Pick.least_loaded
