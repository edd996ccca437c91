"""``python -m chatplane.inference``: serve the model engine over gRPC."""

import asyncio


def main() -> None:
    from chatplane.common.logging import setup_logging
    from chatplane.inference.server import serve
    from chatplane.inference.settings import InferenceSettings

    settings = InferenceSettings()
    setup_logging("inference", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
