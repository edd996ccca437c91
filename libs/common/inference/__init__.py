"""The inference client (``InferenceClient``): routing across model pools and replicas, failover, continuation."""

from chatplane.common.inference.client import Generation, InferenceClient, can_continue
from chatplane.common.inference.pools import Policy, PoolSpec, parse_pools

__all__ = ["Generation", "InferenceClient", "Policy", "PoolSpec", "can_continue", "parse_pools"]
