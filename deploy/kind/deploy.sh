#!/usr/bin/env bash
# Build the images, load them into kind, install or upgrade the chart with values-kind.yaml, wait for the rollout and
# print the URL. Extra `helm` arguments pass through: deploy/kind/deploy.sh --set inference.replicas=2
source "$(dirname "$0")/common.sh"
need docker kind kubectl helm
cluster_exists || { echo "no kind cluster $CLUSTER: run make kind-up first" >&2; exit 1; }
kubectl config use-context "$KUBE_CONTEXT" >/dev/null

make -C "$REPO" images IMAGE_TAG="$IMAGE_TAG"
for image in auth conversation gateway inference-cpu; do
  kind load docker-image --name "$CLUSTER" "chatplane/${image}:${IMAGE_TAG}"
done

extra=()
if kubectl get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1; then
  extra+=(--set observability.serviceMonitor.enabled=true --set observability.serviceMonitor.labels.release=kube-prometheus-stack
          --set observability.dashboards.enabled=true --set observability.prometheusRule.enabled=true
          --set observability.prometheusRule.labels.release=kube-prometheus-stack)
fi
if kubectl get crd scaledobjects.keda.sh >/dev/null 2>&1; then
  extra+=(--set inference.autoscaling.enabled=true --set inference.autoscaling.mode=keda --set inference.autoscaling.maxReplicas=2)
fi

helm upgrade --install "$RELEASE" "$REPO/deploy/helm/chatplane" \
  --namespace "$NAMESPACE" --create-namespace \
  -f "$REPO/deploy/helm/chatplane/values-kind.yaml" --set global.imageTag="$IMAGE_TAG" \
  "${extra[@]}" "$@" --wait --timeout 20m

for deployment in $(kubectl -n "$NAMESPACE" get deployments -l "app.kubernetes.io/instance=$RELEASE" -o name); do
  kubectl -n "$NAMESPACE" rollout status "$deployment" --timeout=15m
done
echo
echo "chatplane is up: http://localhost:8080/v1  (health: curl http://localhost:8080/healthz)"
echo "status: chatplane status -n $NAMESPACE --release $RELEASE --context $KUBE_CONTEXT"
