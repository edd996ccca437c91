"""gRPC channels to the other services.

Targets may be ``host:port`` or ``dns:///name:port``; with a headless Kubernetes Service the DNS name resolves to
every pod and the ``round_robin`` policy balances per request instead of pinning one HTTP/2 connection to one pod.
"""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.common import tracing
from chatplane.common.grpc_server import MAX_MESSAGE_BYTES

_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                # Idempotent reads may be retried when a replica is briefly unavailable; streams are not retried.
                "name": [{}],
                "waitForReady": False,
            }
        ],
    }
)


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
        interceptors=tracing.client_interceptors() or None,  # the caller's trace context travels in the metadata
    )


async def is_serving(chan: grpc.aio.Channel, service: str = "", timeout: float = 2.0) -> bool:
    """True when the peer's standard health service answers SERVING."""
    stub = health_pb2_grpc.HealthStub(chan)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
