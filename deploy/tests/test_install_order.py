"""What rendering alone cannot show about an install, checked over every values file: hooks that need objects the
release has not created yet, secrets that change from one render to the next, rollouts that take every replica down,
a model claim that a second node cannot mount, and migrations that run at the same time."""

from __future__ import annotations

import re

import helm_python
import pytest
from chart_support import CHART, NAMESPACE, RELEASE, VALUE_SETS, fullname, inference_pools, load_values, pod_spec

PRE_INSTALL = "pre-install"


def hook_of(obj) -> tuple[list[str], int] | None:
    annotations = obj["metadata"].get("annotations") or {}
    if "helm.sh/hook" not in annotations:
        return None
    return annotations["helm.sh/hook"].split(","), int(annotations.get("helm.sh/hook-weight", "0"))


def references(obj) -> list[tuple[str, str]]:
    """(kind, name) of the namespaced objects a workload needs before its pod can start."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    found = [("ServiceAccount", spec.get("serviceAccountName", "default"))]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            found.append(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            found.append(("ConfigMap", volume["configMap"]["name"]))
        if "persistentVolumeClaim" in volume:
            found.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    for container in spec.get("initContainers", []) + spec["containers"]:
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                found.append(("Secret", source["secretKeyRef"]["name"]))
            if "configMapKeyRef" in source:
                found.append(("ConfigMap", source["configMapKeyRef"]["name"]))
        for source in container.get("envFrom", []):
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in source:
                    found.append((kind, source[key]["name"]))
    return found


def hook_problems(rendered) -> list[str]:
    """Every pre-install hook's needs: an object the chart renders must be a pre-install hook of a lower weight (the
    release's ordinary objects are created only after the pre-install hooks). An object the chart does not render
    exists beforehand (named by the values, or the namespace's default ServiceAccount)."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered.objects}
    problems = []
    for obj in rendered.objects:
        hook = hook_of(obj)
        if hook is None or PRE_INSTALL not in hook[0]:
            continue
        for kind, name in references(obj):
            needed = objects.get((kind, name))
            if needed is None:
                continue
            needed_hook = hook_of(needed)
            if needed_hook is None:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} needs {kind}/{name}, created after the hooks")
            elif PRE_INSTALL not in needed_hook[0] or needed_hook[1] >= hook[1]:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} needs {kind}/{name}, not an earlier hook")
    return problems


def test_every_resource_a_hook_needs_exists_before_it(renders):
    hooks_seen = 0
    for rendered in renders.values():
        assert not hook_problems(rendered), (rendered.name, hook_problems(rendered))
        hooks_seen += sum(1 for o in rendered.objects if (hook_of(o) or ([], 0))[0].count(PRE_INSTALL))
    assert hooks_seen, "some values file must render a pre-install hook (an external database)"


def test_the_hook_check_catches_the_install_that_hung(renders):
    """The bug it was written for: with an external database the migrations Job ran at pre-install under the
    chart's ServiceAccount, which Helm creates only after the hooks."""
    rendered = renders["ci/external-values.yaml"]
    job = rendered.get("Job", fullname("auth-migrate"))
    job["spec"]["template"]["spec"]["serviceAccountName"] = fullname("")[:-1]  # the chart's own ServiceAccount
    try:
        assert any("created after the hooks" in p for p in hook_problems(rendered))
    finally:
        job["spec"]["template"]["spec"]["serviceAccountName"] = fullname("migrate")


def test_the_migrations_job_runs_under_an_earlier_hook_service_account(renders):
    rendered = renders["ci/external-values.yaml"]
    account = rendered.get("ServiceAccount", fullname("migrate"))
    hooks, weight = hook_of(account)
    assert PRE_INSTALL in hooks and weight < hook_of(rendered.get("Job", fullname("auth-migrate")))[1]
    assert account["automountServiceAccountToken"] is False
    # a ServiceAccount the values name exists already: the Job uses it, no hook account is made
    minimal = renders["ci/minimal-values.yaml"]
    assert minimal.find("ServiceAccount", fullname("migrate")) is None


def render_text(values: dict) -> str:
    chart = helm_python.Chart.load(CHART)
    try:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    return "\n".join(text for _, text in sorted(manifests.items()))


def test_rendering_twice_gives_the_same_manifests_when_the_values_name_the_secrets():
    values = load_values(VALUE_SETS["ci/gitops-values.yaml"])
    first, second = render_text(values), render_text(values)
    assert first == second
    assert "kind: Secret" not in first


def test_generated_secrets_change_between_renders_and_gitops_refuses_them():
    """Without a cluster to look the live Secret up in, every render generates new secrets (what Argo CD would
    apply on each sync): `gitOps: true` refuses to generate them and names the value to set."""
    secret = re.compile(r"private-key\.pem: (\S+)")
    assert secret.search(render_text({}))[1] != secret.search(render_text({}))[1]
    cert_manager = {"tls": {"certManager": {"enabled": True}}}
    named = {"jwt": {"existingSecret": "jwt"}, "postgresql": {"existingSecret": "db"}, "redis": {"existingSecret": "r"}}
    for missing, value in (
        (cert_manager, "jwt.existingSecret"),
        ({**cert_manager, "jwt": {"existingSecret": "jwt"}}, "postgresql.existingSecret"),
        ({**cert_manager, "jwt": {"existingSecret": "jwt"}, "postgresql": {"existingSecret": "db"}},
         "redis.existingSecret"),
        # the services' certificates: cert-manager's (made in the cluster) or existing Secrets, never generated
        (named, "tls.existingSecrets"),
    ):
        with pytest.raises(helm_python.HelmRenderError) as exc:
            render_text({"gitOps": True, **missing})
        assert value in str(exc.value) and "gitOps" in str(exc.value)
    identities = ["auth", "conversation", "gateway", "inference", "worker"]
    existing = {"tls": {"existingSecrets": {i: f"tls-{i}" for i in identities}}}
    assert "kind: Secret" not in render_text({"gitOps": True, **named, **existing})


def fewest_replicas(rendered, deployment) -> int:
    name = deployment["metadata"]["name"]
    for kind, key in (("HorizontalPodAutoscaler", "minReplicas"), ("ScaledObject", "minReplicaCount")):
        scaler = rendered.find(kind, name)
        if scaler is not None:
            return scaler["spec"][key]
    return deployment["spec"]["replicas"]


def test_no_rollout_takes_every_replica_down(renders):
    for rendered in renders.values():
        for deployment in rendered.of_kind("Deployment"):
            strategy = deployment["spec"]["strategy"]
            where = f"{rendered.name}: {deployment['metadata']['name']}"
            if strategy["type"] == "Recreate":
                assert fewest_replicas(rendered, deployment) == 1, where
                continue
            rolling = strategy["rollingUpdate"]
            if rolling["maxSurge"] == 0:
                assert rolling["maxUnavailable"] < fewest_replicas(rendered, deployment), where


def test_the_rollout_strategy_is_a_value_and_an_outage_is_refused():
    values = {"inference": {"replicas": 2, "strategy": {"type": "RollingUpdate",
                                                        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}},
              "components": {"auth": {"strategy": {"type": "Recreate"}}}}
    text = render_text(values)
    assert "maxSurge: 0" in text and "type: Recreate" in text
    for broken, where in (
        ({"inference": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}},
         "inference.pools[0] (smollm2).strategy"),
        ({"components": {"auth": {"replicas": 2, "strategy": {
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 2}}}}},
         "components.auth.strategy"),
    ):
        with pytest.raises(helm_python.HelmRenderError) as exc:
            render_text(broken)
        assert where in str(exc.value) and "outage" in str(exc.value)


def test_model_claims_state_their_access_mode_and_one_node_claims_are_refused_for_several_pods(renders):
    created = 0
    for rendered in renders.values():
        for name, pool in inference_pools(rendered).items():
            deployment = rendered.get("Deployment", fullname(f"inference-{name}"))
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
            if pool["model"]["source"] != "pvc":
                assert "persistentVolumeClaim" not in str(volumes)
                continue
            claim = volumes["model"]["persistentVolumeClaim"]
            assert claim["readOnly"] is True
            made = rendered.find("PersistentVolumeClaim", claim["claimName"])
            assert (made is not None) == pool["model"]["pvc"]["create"], rendered.name
            if made is not None:
                created += 1
                assert made["spec"]["accessModes"] == [pool["model"]["pvc"]["accessMode"]]
                assert made["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert created, "some values file must let the chart create a model claim"
    for access in ("ReadWriteOnce", "ReadWriteOncePod"):
        with pytest.raises(helm_python.HelmRenderError) as exc:
            render_text({"inference": {"replicas": 2, "model": {"source": "pvc", "pvc": {
                "claimName": "models", "accessMode": access}}}})
        assert access in str(exc.value) and "ReadOnlyMany" in str(exc.value)
    # one replica that never surges may use a one-node claim
    render_text({"inference": {"strategy": {"type": "Recreate"}, "model": {"source": "pvc", "pvc": {
        "claimName": "models", "accessMode": "ReadWriteOnce"}}}})
