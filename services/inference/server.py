"""Assembles the inference gRPC server: engine, servicer, health."""

from __future__ import annotations

from prometheus_client import REGISTRY

from chatplane.common.grpc_server import GrpcService, run_until_signal
from chatplane.inference.engine import Engine, create_engine
from chatplane.inference.metrics import register_collector
from chatplane.inference.servicer import InferenceServicer
from chatplane.inference.settings import InferenceSettings
from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
# Who may call what (mutual TLS identities): the three callers of the model, nothing else.
ACCESS = {f"/{SERVICE_NAME}/*": {"gateway", "conversation", "worker"}}


def build(engine: Engine, settings: InferenceSettings | None = None) -> tuple[GrpcService, InferenceServicer]:
    service = GrpcService([SERVICE_NAME], settings=settings, access=ACCESS)
    if settings is None:  # tests: the defaults
        interval_ms = InferenceSettings.model_fields["stream_interval_ms"].default
    else:
        interval_ms = settings.stream_interval_ms
    servicer = InferenceServicer(engine, stream_interval=interval_ms / 1000)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, service.server)
    return service, servicer


async def serve(settings: InferenceSettings) -> None:
    engine = create_engine(settings)
    service, servicer = build(engine, settings)
    collector = register_collector(engine, servicer)  # engine ready, load and aborts on /metrics

    async def start_engine() -> None:
        # The port is open (health answers NOT_SERVING) while the engine loads; SERVING only once it is up.
        await engine.start()
        servicer.ready = True

    def drain() -> None:
        # Health says NOT_SERVING from now on (the server's drain); new generations are refused so that clients
        # take them elsewhere, the streams under way finish within the grace period.
        servicer.draining = True
        servicer.stop_watches()

    async def stop_engine() -> None:
        servicer.ready = False
        await engine.stop()
        REGISTRY.unregister(collector)

    await run_until_signal(
        service,
        settings.listen_address(),
        grace=settings.shutdown_grace_seconds,
        on_ready=start_engine,
        on_drain=drain,
        on_stop=stop_engine,
    )
