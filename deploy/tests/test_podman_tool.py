"""podman-up's reading of the chart, without podman: what a kubelet would resolve (Secrets, ConfigMaps, $(VAR)), the
pods it would run, the Service names each answers to and the order the tiers start in. The real run from the images
is deploy/podman/tests (make test-podman)."""

from __future__ import annotations

import sys

import pytest
from chart_support import REPO

sys.path.insert(0, str(REPO / "deploy" / "podman"))

import manifests  # noqa: E402


@pytest.fixture(scope="module")
def objects():
    return manifests.Objects.of(manifests.render([manifests.LOCAL_VALUES], {}))


@pytest.fixture(scope="module")
def workloads(objects):
    return {w.name: w for w in manifests.workloads_of(objects)}


def test_variables_expand_as_kubernetes_expands_them():
    env = {"A": "1", "PASSWORD": "s3cr$t"}
    assert manifests.expand("x$(A)y", env) == "x1y"
    assert manifests.expand("$(B)", env) == "$(B)", "an undefined variable is kept"
    assert manifests.expand("$$(A)", env) == "$(A)", "$$ escapes"
    assert manifests.expand("redis://:$(PASSWORD)@h", env) == "redis://:s3cr$t@h"


def test_tiers_start_stores_and_inference_before_their_callers(workloads):
    order = {w.name: i for i, tier in enumerate(manifests.tiers(
        [w for w in workloads.values() if w.kind != "Job"])) for w in tier}
    for store in ("chatplane-postgresql", "chatplane-redis", "chatplane-kafka"):
        assert order[store] < order["chatplane-auth"] and order[store] < order["chatplane-conversation"]
    assert order["chatplane-inference-smollm2"] < order["chatplane-conversation"] < order["chatplane-gateway"]
    assert order["chatplane-auth"] < order["chatplane-gateway"]
    assert order["chatplane-gateway"] == max(order.values()), "nothing calls the gateway: it starts last"


def test_a_cycle_is_refused(workloads):
    a, b = workloads["chatplane-auth"], workloads["chatplane-gateway"]
    a2 = manifests.Workload(a.obj, a.services, {b.services[0]})
    b2 = manifests.Workload(b.obj, b.services, {a.services[0]})
    with pytest.raises(manifests.UpError, match="cycle"):
        manifests.tiers([a2, b2])


def test_pods_get_resolved_secrets_and_no_cluster_only_fields(objects, workloads):
    auth = workloads["chatplane-auth"]
    assert auth.pod_names("1a2b3c4d") == ["chatplane-auth-1a2b3c4d-0", "chatplane-auth-1a2b3c4d-1"]
    assert workloads["chatplane-postgresql"].pod_names("x") == ["chatplane-postgresql-0"], "by ordinal"
    pod = manifests.pod_manifest(auth, "chatplane-auth-0", objects, {})
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    password = objects.secrets["chatplane-postgresql"]["auth-password"]
    assert env["CHATPLANE_AUTH_DATABASE_URL"] == (
        f"postgresql+asyncpg://auth:{password}@chatplane-postgresql.chatplane.svc.cluster.local:5432/auth")
    assert all("valueFrom" not in e for e in container["env"])
    # Secret volumes (the signing key, the identity's certificate) become ConfigMap volumes of the resolved data.
    assert env["CHATPLANE_AUTH_JWT_PRIVATE_KEY_FILE"] == "/etc/chatplane/secrets/jwt/private-key.pem"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    jwt = objects.configmaps[volumes["secret-jwt"]["configMap"]["name"]]["data"]
    assert list(jwt) == ["private-key.pem"] and jwt["private-key.pem"].startswith("-----BEGIN PRIVATE KEY-----")
    tls = objects.configmaps[volumes["tls"]["configMap"]["name"]]["data"]
    assert sorted(tls) == ["ca.crt", "tls.crt", "tls.key"]
    assert env["CHATPLANE_TLS_CERT_FILE"] == "/etc/chatplane/tls/tls.crt"
    for field in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
        assert field not in container, f"{field} is the tool's job, not podman's"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert pod["metadata"]["labels"][manifests.LABEL] == manifests.RELEASE
    assert "serviceAccountName" not in pod["spec"] and "topologySpreadConstraints" not in pod["spec"]


def test_args_expand_and_claims_become_volumes(objects, workloads):
    redis = workloads["chatplane-redis"]
    pod = manifests.pod_manifest(redis, "chatplane-redis-0", objects, {})
    container = pod["spec"]["containers"][0]
    # the password reaches redis through a configuration file, never a command line
    assert objects.secrets["chatplane-redis"]["password"] not in str(container["args"] + container["command"])
    assert "$REDIS_PASSWORD" in container["args"][0]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["chatplane-mem-chatplane-redis-0-config", "chatplane-pvc-data-chatplane-redis-0"]


def test_the_gateway_is_published_and_services_resolve_by_every_name(objects, workloads):
    gateway = workloads["chatplane-gateway"]
    pod = manifests.pod_manifest(gateway, "chatplane-gateway-0", objects, {"http": 18080})
    (port,) = [p for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "http"]
    assert (port["hostPort"], port["hostIP"]) == (18080, "127.0.0.1")
    names = manifests.aliases(workloads["chatplane-inference-smollm2"])
    assert "chatplane-inference-smollm2" in names
    assert "chatplane-inference-smollm2.chatplane.svc.cluster.local" in names


def test_a_secret_the_values_only_name_is_a_clear_error():
    objects = manifests.Objects.of(manifests.render([manifests.LOCAL_VALUES], {"jwt": {"existingSecret": "mine"}}))
    auth = next(w for w in manifests.workloads_of(objects) if w.name == "chatplane-auth")
    with pytest.raises(manifests.UpError, match="Secret mine is not rendered by the chart"):
        manifests.pod_manifest(auth, "chatplane-auth-0", objects, {})


def test_only_the_gateway_port_reaches_the_host(objects, workloads):
    """`podman kube play` publishes every listed containerPort on the host's same port (PostgreSQL's 5432 would clash
    with the host's): pods list only what is published."""
    for workload in workloads.values():
        publish = {"http": 18080} if workload.name == "chatplane-gateway" else {}
        pod = manifests.pod_manifest(workload, workload.pod_names("0")[0], objects, publish)
        ports = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        if workload.name == "chatplane-gateway":
            assert [(p["hostPort"], p["hostIP"]) for p in ports] == [(18080, "127.0.0.1")]
        else:
            assert ports == [], workload.name
