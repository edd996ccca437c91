# syntax=docker/dockerfile:1
# The auth service: `make images` (podman or docker; context: the repository root), or by hand
#   podman build -f deploy/docker/auth.Dockerfile -t chatplane/auth:TAG .
# Stages: deps (the image's lock installed: rebuilt only when it changes), builder (our code on top), runtime (the
# deps venv, then our package: an edit of the code rebuilds only the last, small layers).
# The base image by digest (the multi-architecture index of python:3.11.14-slim-bookworm): a tag can be moved, a
# digest cannot. deploy/docker/build.sh passes the tag instead only where the pinned image cannot be had and a local
# image of that tag exists (the stand-in ../shared/tools/podman-setup.sh builds where no registry is reachable).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir "pip==25.3"
WORKDIR /src
# The image's lock (scripts/lock.sh): exact versions, every file's hash checked, nothing resolved at build time.
COPY requirements/auth.txt ./requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.txt

FROM deps AS builder
COPY pyproject.toml ./
COPY libs/ libs/
COPY services/ services/
# Our package alone (its dependencies are the deps stage's), into a folder of its own for the runtime stage.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --target /opt/chatplane ".[auth]" && rm -rf /opt/chatplane/bin

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp CHATPLANE_DATA_DIR=/var/lib/chatplane CHATPLANE_AUTH_HOST=0.0.0.0
RUN groupadd --system --gid 10001 chatplane \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatplane \
    && install -d -o 10001 -g 10001 /var/lib/chatplane
COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /opt/chatplane/ /opt/venv/lib/python3.11/site-packages/
USER 10001:10001
EXPOSE 50051
CMD ["python", "-m", "chatplane.auth"]
