"""Assembles the inference gRPC service: engine, servicer, and its runtime (NOT_SERVING while the engine loads)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from chatplane.common.runtime import ServiceRuntime
from chatplane.inference.engine import Engine, create_engine
from chatplane.inference.metrics import register_collector
from chatplane.inference.servicer import InferenceServicer
from chatplane.inference.settings import InferenceSettings
from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
# Who may call what (mutual TLS identities): the three callers of the model, nothing else.
ACCESS = {f"/{SERVICE_NAME}/*": {"gateway", "conversation", "worker"}}


def build(engine: Engine, settings: InferenceSettings | None = None) -> tuple[ServiceRuntime, InferenceServicer]:
    """The runtime (not started) serving ``engine``. Its readiness (the runtime's, ``runtime.grpc.state``) is the
    servicer's: generations are refused until it is SERVING and once it drains."""
    settings = settings if settings is not None else InferenceSettings()
    runtime = ServiceRuntime("inference", [SERVICE_NAME], settings, access=ACCESS)
    servicer = InferenceServicer(engine, runtime.grpc, stream_interval=settings.stream_interval_ms / 1000,
                                 capacity=settings.max_num_seqs + settings.max_waiting)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, runtime.server)
    return runtime, servicer


async def serve(settings: InferenceSettings) -> None:
    engine = create_engine(settings)
    runtime, servicer = build(engine, settings)
    collector = register_collector(engine, runtime.grpc)  # engine ready, load and aborts on /metrics
    # The port is open (health answers NOT_SERVING) while the engine loads; SERVING once it is up. An engine that
    # fails to start is not retried: the process ends with its error.
    runtime.on_prepare(engine.start, retry=False)
    # Draining: NOT_SERVING, new generations refused (clients take them elsewhere), the stats watches end; the
    # streams under way finish within the grace period.
    runtime.on_drain(servicer.stop_watches)
    runtime.on_close(engine.stop)

    async def unregister() -> None:
        REGISTRY.unregister(collector)

    runtime.on_close(unregister)
    await runtime.serve()
