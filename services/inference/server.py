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


def build(engine: Engine, stream_interval_ms: float = 0.0) -> tuple[GrpcService, InferenceServicer]:
    service = GrpcService([SERVICE_NAME])
    servicer = InferenceServicer(engine, stream_interval=stream_interval_ms / 1000)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, service.server)
    return service, servicer


async def serve(settings: InferenceSettings) -> None:
    engine = create_engine(settings)
    service, servicer = build(engine, settings.stream_interval_ms)
    collector = register_collector(engine, servicer)  # engine ready, load and aborts on /metrics

    async def start_engine() -> None:
        # The port is open (health answers NOT_SERVING) while the engine loads; SERVING only once it is up.
        await engine.start()
        servicer.ready = True

    async def stop_engine() -> None:
        servicer.ready = False
        await engine.stop()
        REGISTRY.unregister(collector)

    await run_until_signal(
        service,
        settings.listen_address(),
        grace=settings.shutdown_grace_seconds,
        on_ready=start_engine,
        on_stop=stop_engine,
    )
