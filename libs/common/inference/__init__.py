"""The inference client (``InferenceClient``): routing across model pools and replicas, failover, continuation."""

from chatplane.common.inference.client import InferenceClient
from chatplane.common.inference.generation import Generation, can_continue
from chatplane.common.inference.pools import Policy, PoolSpec, parse_pools

__all__ = ["Generation", "InferenceClient", "Policy", "PoolSpec", "can_continue", "parse_pools"]
