"""``python -m chatplane.inference``: serve the model engine over gRPC."""


def main() -> None:
    from chatplane.common.grpc_server import run
    from chatplane.common.logging import setup_logging
    from chatplane.common.telemetry import setup_telemetry
    from chatplane.inference.server import serve
    from chatplane.inference.settings import InferenceSettings

    settings = InferenceSettings()
    setup_logging("inference", settings.log_level)
    setup_telemetry("inference", settings.metrics_port, settings.host)
    run(serve(settings))


if __name__ == "__main__":
    main()
