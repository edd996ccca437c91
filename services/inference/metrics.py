"""The inference service's own metrics, read from the engine when Prometheus scrapes (nothing on the token path).

vLLM's ``vllm:*`` metrics (queue, running, KV-cache use, TTFT, inter-token latency, tokens) are in the same default
registry, so the service's one metrics endpoint shows both. These also work with the synthetic engine.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatplane.common.grpc_server import GrpcService
from chatplane.inference.engine import Engine


class InferenceCollector(Collector):
    def __init__(self, engine: Engine, service: GrpcService) -> None:
        self.engine = engine
        self.service = service

    def collect(self) -> Iterator[Metric]:
        model = [self.engine.model_name]
        load = self.engine.load

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["model"])
            family.add_metric(model, value)
            return family

        yield gauge("chatplane_inference_engine_ready", "1 when the model engine is up and serving, else 0.",
                    1.0 if self.service.state == "serving" else 0.0)
        yield gauge("chatplane_inference_requests_running", "Requests the engine is generating for now.", load.running)
        yield gauge("chatplane_inference_requests_waiting", "Requests waiting in the engine's queue.", load.waiting)
        yield gauge("chatplane_inference_kv_cache_usage_ratio", "Share of the KV cache in use (0 to 1).",
                    load.kv_cache_usage)
        aborted = CounterMetricFamily(
            "chatplane_inference_aborted_requests",
            "Generations stopped before they finished (client gone, deadline, cancel): the engine slot was freed.",
            labels=["model"],
        )
        aborted.add_metric(model, load.aborted_total)
        yield aborted


def register_collector(engine: Engine, service: GrpcService) -> InferenceCollector:
    collector = InferenceCollector(engine, service)
    REGISTRY.register(collector)
    return collector
