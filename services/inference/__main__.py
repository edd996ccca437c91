"""``python -m chatplane.inference``: serve the model engine over gRPC."""

import asyncio


def main() -> None:
    from chatplane.common.logging import setup_logging
    from chatplane.common.telemetry import setup_telemetry
    from chatplane.inference.server import serve
    from chatplane.inference.settings import InferenceSettings

    settings = InferenceSettings()
    setup_logging("inference", settings.log_level)
    setup_telemetry("inference", settings.metrics_port, settings.host)
    try:
        import uvloop  # the event loop in C: less CPU per streamed message (README, "Performance")
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
