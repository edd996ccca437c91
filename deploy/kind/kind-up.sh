#!/usr/bin/env bash
# Create the kind cluster and install ingress-nginx; optionally kube-prometheus-stack + prometheus-adapter
# (WITH_MONITORING=1) and KEDA (WITH_KEDA=1) from their public charts. Idempotent.
source "$(dirname "$0")/common.sh"
need docker kind kubectl helm

if cluster_exists; then
  echo "kind cluster $CLUSTER exists"
else
  mkdir -p "$REPO/data/models"
  sed "s#__REPO__#$REPO#g" "$REPO/deploy/kind/cluster.yaml" | kind create cluster --name "$CLUSTER" --config -
fi
kubectl config use-context "$KUBE_CONTEXT" >/dev/null

echo "installing ingress-nginx ($INGRESS_NGINX_VERSION)"
kubectl apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/${INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=300s

if [[ "${WITH_MONITORING:-0}" == "1" ]]; then
  helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
  helm repo update prometheus-community >/dev/null
  helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --namespace monitoring --create-namespace --version "$KUBE_PROMETHEUS_STACK_VERSION" \
    --set grafana.sidecar.dashboards.enabled=true --set grafana.sidecar.dashboards.searchNamespace=ALL --wait
  helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter \
    --namespace monitoring --version "$PROMETHEUS_ADAPTER_VERSION" \
    -f "$REPO/deploy/kind/prometheus-adapter-values.yaml" --wait
fi
if [[ "${WITH_KEDA:-0}" == "1" ]]; then
  helm repo add kedacore https://kedacore.github.io/charts >/dev/null
  helm repo update kedacore >/dev/null
  helm upgrade --install keda kedacore/keda --namespace keda --create-namespace --version "$KEDA_VERSION" --wait
fi
echo "kind cluster $CLUSTER is ready (context $KUBE_CONTEXT); next: make deploy"
