# syntax=docker/dockerfile:1
# The auth service: `docker build -f deploy/docker/auth.Dockerfile -t chatplane/auth:TAG .` (context: repo root).
# Multi-stage: the builder installs only the `auth` extra of pyproject.toml into a venv; the runtime copies the venv.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install "pip==25.3"
WORKDIR /src
COPY pyproject.toml ./
COPY libs/ libs/
COPY services/ services/
RUN /opt/venv/bin/pip install ".[auth]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp CHATPLANE_DATA_DIR=/var/lib/chatplane CHATPLANE_AUTH_HOST=0.0.0.0
RUN groupadd --system --gid 10001 chatplane \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatplane \
    && install -d -o 10001 -g 10001 /var/lib/chatplane
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50051
CMD ["python", "-m", "chatplane.auth"]
