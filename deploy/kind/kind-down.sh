#!/usr/bin/env bash
# Delete the kind cluster (and with it every volume of the release).
source "$(dirname "$0")/common.sh"
need kind
if cluster_exists; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster $CLUSTER"
fi
