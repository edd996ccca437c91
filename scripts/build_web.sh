#!/usr/bin/env bash
# Builds the web app (web/) into web/dist: `npm ci` when package-lock.json changed, `vite build` (after a type check)
# when a source changed. Idempotent: does nothing when both are as they were.
#   scripts/build_web.sh          # dependencies + build
#   scripts/build_web.sh --deps   # dependencies only (what the unit tests need)
set -euo pipefail
cd "$(dirname "$0")/../web"

if ! command -v npm >/dev/null 2>&1; then
  echo "build_web: npm is missing (Node 20 or newer with npm is needed to build the web app)" >&2
  exit 1
fi

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

LOCK_STAMP=node_modules/.chatplane-lock
want_lock="$(hash_of package-lock.json)"
if [[ ! -f "$LOCK_STAMP" || "$(cat "$LOCK_STAMP")" != "$want_lock" ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want_lock" > "$LOCK_STAMP"
fi
[[ "${1:-}" == "--deps" ]] && exit 0

# The stamp names this checkout's web/dist: worktrees may share one node_modules (a symlink), never one dist.
BUILD_STAMP="node_modules/.chatplane-build-$(pwd -P | sha256sum | cut -c1-16)"
mapfile -t sources < <(find index.html public src package.json package-lock.json vite.config.ts tsconfig.json \
  -type f ! -name '*.test.ts' | LC_ALL=C sort)
want_build="$(hash_of "${sources[@]}")"
if [[ -f dist/index.html && -f "$BUILD_STAMP" && "$(cat "$BUILD_STAMP")" == "$want_build" ]]; then
  exit 0
fi
npm run --silent build -- --logLevel warn
echo "$want_build" > "$BUILD_STAMP"
echo "built the web app into web/dist"
