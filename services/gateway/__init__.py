"""The gateway: chatplane's public HTTP API (FastAPI), OpenAI-compatible, a gRPC client of auth, conversation and
inference. Start it with ``python -m chatplane.gateway``."""
