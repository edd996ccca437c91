"""The inference client's metrics (in every process that calls inference: gateway, conversation, jobs worker).

``replica`` is a replica's address: bounded by the pool's size, and removed when the replica leaves the pool.
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import Counter, Gauge

OUTCOMES = ("ok", "error", "failed_over", "cancelled", "full")

REQUESTS = Counter(
    "chatplane_inference_client_requests_total",
    "Calls to inference replicas by outcome: ok, error, cancelled (by the caller), failed_over (the replica failed "
    "and the request went on elsewhere), full (the replica's queue was full: the request tried another, if any).",
    ["pool", "replica", "outcome"],
)
IN_FLIGHT = Gauge(
    "chatplane_inference_client_in_flight",
    "Calls this process has under way on each replica.",
    ["pool", "replica"],
    multiprocess_mode="livesum",
)
PICKS = Counter(
    "chatplane_inference_client_picks_total",
    "Replicas chosen, by how: preferred (the key's own replica), spilled (the key's replica was too busy), "
    "least_loaded, round_robin.",
    ["pool", "policy", "result"],
)
FAILOVERS = Counter(
    "chatplane_inference_client_failovers_total",
    "Requests moved to another replica after theirs failed: before_first_token (retried), mid_stream (the reply "
    "continued from what was already sent).",
    ["pool", "stage"],
)
REPLICAS = Gauge(
    "chatplane_inference_pool_replicas",
    "Replicas known to this process per pool, serving or not (starting, draining, unreachable).",
    ["pool", "state"],
    multiprocess_mode="livesum",
)


def start_pool(pool: str, policy: str) -> None:
    """Series at zero from the start (a dashboard shows 0 failovers, not "no data")."""
    for stage in ("before_first_token", "mid_stream"):
        FAILOVERS.labels(pool, stage)
    results = {"affinity": ("preferred", "spilled", "least_loaded"), "least_loaded": ("least_loaded",),
               "round_robin": ("round_robin",)}[policy]
    for result in results:
        PICKS.labels(pool, policy, result)
    for state in ("serving", "not_serving"):
        REPLICAS.labels(pool, state)


def forget_replica(pool: str, replica: str) -> None:
    """Drop a departed replica's series (labels stay bounded while replicas come and go)."""
    with suppress(KeyError):
        IN_FLIGHT.remove(pool, replica)
    for outcome in OUTCOMES:
        with suppress(KeyError):
            REQUESTS.remove(pool, replica, outcome)
