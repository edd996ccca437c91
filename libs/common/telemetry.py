"""What every process's ``__main__`` calls after setting up logging: traces (when configured) and metrics."""

from __future__ import annotations

from chatplane.common import metrics, tracing


def setup_telemetry(service: str, metrics_port: int, host: str) -> metrics.MetricsServer | None:
    """Tracing from the OTEL_* variables (off without an endpoint); database timing when the process has SQLAlchemy;
    the metrics endpoint on ``host:metrics_port`` (0: none)."""
    tracing.setup_tracing(service)
    metrics.instrument_databases()
    return metrics.serve_metrics(metrics_port, host)
