# Shared by the kind scripts: names, pinned versions and checks. Sourced, not run.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-chatplane}"
NAMESPACE="${NAMESPACE:-chatplane}"
RELEASE="${RELEASE:-chatplane}"
IMAGE_TAG="${IMAGE_TAG:-0.1.0}"
KUBE_CONTEXT="kind-${CLUSTER}"
# Pinned versions of what kind-up installs (override through the environment).
INGRESS_NGINX_VERSION="${INGRESS_NGINX_VERSION:-controller-v1.12.1}"
KUBE_PROMETHEUS_STACK_VERSION="${KUBE_PROMETHEUS_STACK_VERSION:-72.6.2}"
PROMETHEUS_ADAPTER_VERSION="${PROMETHEUS_ADAPTER_VERSION:-4.14.1}"
KEDA_VERSION="${KEDA_VERSION:-2.17.2}"

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "kind: '$tool' is needed (and a running Docker engine)" >&2; exit 1; }
  done
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER"
}
