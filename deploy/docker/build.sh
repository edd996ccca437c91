#!/usr/bin/env bash
# Build chatplane's images with podman or docker, whichever works here (podman first; CONTAINER_ENGINE=docker to
# choose). `make images` calls it:
#   deploy/docker/build.sh TAG_PREFIX TAG IMAGE...        e.g. deploy/docker/build.sh chatplane 0.1.0 auth gateway
# Layers are cached by the engine between runs: an edit of our code rebuilds only each image's last layers.
# inference-cpu: the CPU wheel of torch comes from pip's configured find-links folder when it holds the wheel
# (PyTorch's CPU index cannot be reached everywhere), else from that index. WHEELS_DIR=/path overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/../.."

prefix=$1 tag=$2
shift 2

engine=${CONTAINER_ENGINE:-}
if [[ -z "$engine" ]]; then
  for candidate in podman docker; do
    # A client without a working engine (a docker CLI with no daemon) does not count.
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
      engine=$candidate
      break
    fi
  done
fi
if [[ -z "$engine" ]]; then
  echo "make images: neither podman nor docker works here (podman: run ../shared/tools/podman-setup.sh as root)" >&2
  exit 1
fi

torch_wheels() {
  local dirs=${WHEELS_DIR:-}
  if [[ -z "$dirs" ]]; then
    local python=.venv/bin/python
    [[ -x "$python" ]] || python=python3
    dirs=$("$python" -m pip config get global.find-links 2>/dev/null || true)
    dirs="$dirs ${PIP_FIND_LINKS:-}"
  fi
  for dir in $dirs; do
    dir=${dir#file://}
    if compgen -G "$dir/torch-2.13.0+cpu-*.whl" >/dev/null; then
      echo "$dir"
      return
    fi
  done
}

# The Dockerfiles pin their base image by digest (ARG PYTHON_IMAGE=name:tag@sha256:...). Where that image is not here
# and no registry can be reached (this project's machines), a local image of the same name:tag stands in: the one
# ../shared/tools/podman-setup.sh builds from Debian's packages. It is used only when the pinned one is absent, and
# said so; PYTHON_IMAGE=... chooses the base explicitly, REQUIRE_PINNED_BASE=1 refuses the stand-in.
base_image_arg() {
  local pinned
  pinned=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$1" | head -n 1)
  if [[ -n "${PYTHON_IMAGE:-}" ]]; then
    echo "$PYTHON_IMAGE"
  elif [[ "$pinned" == *@sha256:* ]] && ! "$engine" image inspect "$pinned" >/dev/null 2>&1 \
      && [[ -z "${REQUIRE_PINNED_BASE:-}" ]] && "$engine" image inspect "${pinned%@*}" >/dev/null 2>&1; then
    echo "== $1: $pinned is not here; building from the local ${pinned%@*} instead (unpinned stand-in)" >&2
    echo "${pinned%@*}"
  fi
}

for image in "$@"; do
  args=(-f "deploy/docker/$image.Dockerfile" -t "$prefix/$image:$tag")
  base=$(base_image_arg "deploy/docker/$image.Dockerfile")
  [[ -z "$base" ]] || args+=(--build-arg "PYTHON_IMAGE=$base")
  if [[ "$image" == inference-cpu ]]; then
    wheels=$(torch_wheels)
    if [[ -n "$wheels" ]]; then
      args+=(--build-context "wheels=$wheels" --build-arg TORCH_INDEX_URL=)
    fi
  fi
  echo "== $engine build ${args[*]} ." >&2
  start=$SECONDS
  "$engine" build "${args[@]}" .
  echo "== $prefix/$image:$tag built in $((SECONDS - start)) s" >&2
done
