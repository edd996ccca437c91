"""``python -m chatplane.gateway``: serve the public HTTP API with uvicorn."""

from __future__ import annotations

import uvicorn

from chatplane.common.logging import setup_logging
from chatplane.common.telemetry import setup_telemetry
from chatplane.gateway.app import create_app
from chatplane.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level)
    setup_telemetry("gateway", settings.metrics_port, settings.host)  # /metrics on a port of its own
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # the gateway writes its own access line (JSON, with route, key and request id)
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        # The client address (login and sign-up limits) comes from X-Forwarded-For only behind these proxies.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


if __name__ == "__main__":
    main()
