# syntax=docker/dockerfile:1
# The inference service on NVIDIA GPUs, from the official vLLM image (CUDA, vLLM and torch already installed).
# The model is mounted (a PVC or a host path); none is baked in.
#   docker build -f deploy/docker/inference-gpu.Dockerfile -t chatplane/inference-gpu:TAG .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${VLLM_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CHATPLANE_DATA_DIR=/var/lib/chatplane CHATPLANE_INFERENCE_HOST=0.0.0.0
WORKDIR /src
COPY pyproject.toml ./
COPY libs/ libs/
COPY services/ services/
# The image's own vLLM (same version as the `inference-gpu` extra) satisfies the extra; the image's Python may be
# newer than pyproject's requires-python, which targets the CPU build's wheels.
RUN python3 -m pip install --ignore-requires-python ".[inference-gpu]" \
    && rm -rf /src \
    && { command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; } \
    && groupadd --system --gid 10001 chatplane \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatplane \
    && install -d -o 10001 -g 10001 /var/lib/chatplane
WORKDIR /
USER 10001:10001
EXPOSE 50053
ENTRYPOINT []
CMD ["python", "-m", "chatplane.inference"]
