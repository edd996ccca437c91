#!/usr/bin/env bash
# Installs Debian's prometheus package (the server and promtool) when missing: the observability test and
# `make observe` run a real Prometheus on 127.0.0.1. Idempotent; needs root or sudo on first use.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy prometheus 2>/dev/null | grep -q "Candidate: [0-9]"; then
  $SUDO apt-get update -qq
fi
# Never let the package start its own daemon (it would listen on 0.0.0.0:9090): policy-rc.d refuses service starts
# for the duration of the install. --no-install-recommends: no node exporter.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=""
if [[ ! -e "$POLICY" ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  ADDED_POLICY=1
fi
trap '[[ -n "$ADDED_POLICY" ]] && $SUDO rm -f "$POLICY"' EXIT
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "installed prometheus $(prometheus --version 2>&1 | head -1)"
