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
from chatplane.common.tls import TlsSettings

# The reads of auth and conversation that change nothing: tried again (gRPC's own retries, before any answer came)
# when a replica was unavailable, e.g. one stopping under a rolling update; round_robin takes another. Writes and
# streams are never retried here (the inference client fails over by itself).
IDEMPOTENT_READS = {
    "chatplane.auth.v1.AuthService": ("Authenticate", "GetJwks", "GetLimits", "ListApiKeys", "GetUsage", "ListQuotas"),
    "chatplane.conversation.v1.ConversationService": (
        "ListConversations", "GetConversation", "GetResponse", "GetExport",
    ),
}
READ_RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": [{}], "waitForReady": False},
            {
                "name": [{"service": service, "method": method}
                         for service, methods in IDEMPOTENT_READS.items() for method in methods],
                "waitForReady": False,
                "retryPolicy": READ_RETRY_POLICY,
            },
        ],
    }
)


def channel(target: str, *, server_name: str | None = None) -> grpc.aio.Channel:
    """A channel to ``target``: mutual TLS with this process's certificate when the CHATPLANE_TLS_* files are set
    (:mod:`chatplane.common.tls`), plaintext otherwise. The server's certificate must name the target's host, or
    ``server_name`` when given (a pool of replicas reached by their addresses: their certificates name the service)."""
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A peer that was away is tried again within 5 s (gRPC's default backoff grows to 2 minutes, so a gateway
        # started during an auth outage would answer 503 for up to that long after auth is back).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    interceptors = tracing.client_interceptors() or None  # the caller's trace context travels in the metadata
    tls = TlsSettings().files()
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options, interceptors=interceptors)


async def is_serving(chan: grpc.aio.Channel, service: str = "", timeout: float = 2.0) -> bool:
    """True when the peer's standard health service answers SERVING."""
    stub = health_pb2_grpc.HealthStub(chan)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
