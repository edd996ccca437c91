"""The chart lints strictly, renders with every values file, validates strictly against the Kubernetes schemas,
rejects broken values through values.schema.json, and packages."""

from __future__ import annotations

import copy
import re

import helm_python
import kubernetes_validate
import pytest
import yaml
from chart_support import CHART, KUBE_VERSIONS, VALUE_SETS, component_of, env_of, load_values, render_chart, workloads

# Custom resources whose CRDs kubernetes-validate has no schema for; their shape is checked by the policy tests.
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule", "HTTPRoute", "Certificate", "Issuer"}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_chart_lints_strictly(values_name, kube_version):
    report = helm_python.lint(
        CHART,
        load_values(VALUE_SETS[values_name]),
        strict=True,
        with_subcharts=True,
        namespace="chat",
        kube_version=f"v{kube_version}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings fail too (strict)
    assert report["total_charts_linted"] >= 1
    assert not problems and not report["errors"], problems or report["errors"]


def test_lint_catches_a_broken_template(tmp_path):
    """The lint call above is not a formality: a template that renders invalid YAML fails it."""
    broken = tmp_path / "chatplane"
    import shutil

    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nmetadata: {name: x\n")
    report = helm_python.lint(broken, strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    assert any(m["severity"] == 3 for m in report["messages"])


def test_every_values_file_renders_objects(renders):
    for name, rendered in renders.items():
        kinds = {o["kind"] for o in rendered.objects}
        assert {"Deployment", "Service"} <= kinds, name
        for obj in rendered.objects:
            assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), (name, obj)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_validates_strictly(renders, kube_version):
    failures = []
    for name, rendered in renders.items():
        for obj in rendered.objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, kube_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_an_unknown_field(default_render):
    """A typo'd field (here in a probe) is an error, not silently dropped: the validation above is strict."""
    deployment = copy.deepcopy(default_render.of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_custom_resources_have_their_essential_fields(renders):
    seen = set()
    for rendered in renders.values():
        for obj in rendered.objects:
            if obj["kind"] in CUSTOM_KINDS:
                seen.add(obj["kind"])
                assert obj["apiVersion"] in {
                    "keda.sh/v1alpha1", "monitoring.coreos.com/v1", "gateway.networking.k8s.io/v1", "cert-manager.io/v1"
                }
                assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
                assert isinstance(obj["spec"], dict) and obj["spec"]
    # PrometheusRule only renders when rules/*.yaml exist: test_policy covers it with a chart copy holding one.
    assert seen >= CUSTOM_KINDS - {"PrometheusRule"}, "some ci/*.yaml must turn on each optional custom resource"


@pytest.mark.parametrize(
    "broken, where",
    [
        ({"inference": {"model": {"source": "s3"}}}, "/inference/model/source"),
        ({"global": {"imageTag": "latest"}}, "/global/imageTag"),
        ({"components": {"gateway": {"replicas": "two"}}}, "/components/gateway/replicas"),
        ({"inference": {"autoscaling": {"mode": "cpu"}}}, "/inference/autoscaling/mode"),
        ({"inference": {"engine": {"gpuMemoryUtilization": 1.5}}}, "/inference/engine/gpuMemoryUtilization"),
        ({"postgresql": {"enabled": False}}, "/postgresql/existingSecret"),
        ({"ingres": {"enabled": True}}, "ingres"),
        # decided: no scale to zero (the schema refuses 0, never a half state)
        ({"inference": {"autoscaling": {"minReplicas": 0}}}, "/inference/autoscaling/minReplicas"),
        ({"inference": {"pools": [{"name": "a", "autoscaling": {"minReplicas": 0}}]}},
         "/inference/pools/0/autoscaling/minReplicas"),
        ({"inference": {"replicas": 0}}, "/inference/replicas"),
        ({"inference": {"pools": [{"name": "Not_A_Label"}]}}, "/inference/pools/0/name"),
        ({"inference": {"pools": []}}, "/inference/pools"),
        ({"inference": {"policy": "random"}}, "/inference/policy"),
        ({"inference": {"discovery": "consul"}}, "/inference/discovery"),
        ({"inference": {"model": {"pvc": {"accessMode": "ReadWrite"}}}}, "/inference/model/pvc/accessMode"),
        ({"components": {"auth": {"strategy": {"type": "Rolling"}}}}, "/components/auth/strategy/type"),
        ({"inference": {"strategy": {"rollingUpdate": {"maxSurge": "one"}}}}, "/inference/strategy/rollingUpdate/maxSurge"),
    ],
)
def test_broken_values_get_a_schema_error(broken, where):
    chart = helm_python.Chart.load(CHART)
    try:
        with pytest.raises(helm_python.HelmValuesError) as exc:
            chart.render(broken, name="cp", namespace="chat")
    finally:
        chart.close()
    assert where in str(exc.value)


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"inference": {"model": {"source": "pvc"}}}, "model.source pvc needs model.pvc.claimName"),
        ({"inference": {"model": {"source": "hostPath"}}}, "needs model.hostPath.path"),
        ({"inference": {"pools": [{"name": "a"}, {"name": "a", "model": {"servedModelName": "b"}}]}},
         'two pools are named "a"'),
        ({"inference": {"pools": [{"name": "a"}, {"name": "b"}]}}, 'two pools serve the model "SmolLM2-135M-Instruct"'),
        ({"inference": {"pools": [{"name": "a" * 30}]}, "fullnameOverride": "x" * 40}, "longer than 63 characters"),
        ({"components": {"auth": {"secretFiles": {"X_KEY_FILE": "jwt"}}}, "jwt": {"existingSecret": ""}}, None),
    ],
)
def test_values_the_schema_cannot_judge_get_a_clear_render_error(broken, message):
    chart = helm_python.Chart.load(CHART)
    try:
        if message is None:  # a control: a valid variation renders
            chart.render(broken, name="cp", namespace="chat")
            return
        with pytest.raises(helm_python.HelmRenderError) as exc:
            chart.render(broken, name="cp", namespace="chat")
    finally:
        chart.close()
    assert message in str(exc.value)


def test_values_yaml_documents_every_top_level_key():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z]\w*:", line):
            assert lines[i - 1].startswith("# --") or lines[i - 1].startswith("#"), f"undocumented: {line}"
            # the `# --` marker starts the comment block right above the key
            block = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#"):
                block.append(lines[j])
                j -= 1
            assert any(b.startswith("# --") for b in block), f"no '# --' doc for {line}"


def test_chart_packages_and_the_archive_renders(tmp_path):
    archive = helm_python.package(CHART, destination=tmp_path)
    assert archive.endswith("chatplane-0.1.0.tgz")
    chart = helm_python.Chart.load_archive(open(archive, "rb").read())
    try:
        assert chart.name == "chatplane"
        manifests = chart.render({}, name="cp", namespace="chat")
    finally:
        chart.close()
    docs = [d for path, text in manifests.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    assert any(d["kind"] == "Deployment" for d in docs)


def test_inference_pools_get_their_tool_call_parser_and_chat_template():
    """The tool-call format is a model's: each pool sets its parser (default hermes) and, optionally, a template."""
    rendered = render_chart(CHART, {"inference": {"pools": [
        {"name": "qwen", "model": {"source": "image", "path": "/models/qwen"}},
        {"name": "llama", "model": {"source": "image", "path": "/models/llama", "servedModelName": "llama"},
         "engine": {"toolCallParser": "llama3_json", "chatTemplate": "/models/llama/tool_chat.jinja"}},
    ]}})
    env = {}
    for obj, spec in workloads(rendered):
        if obj["kind"] == "Deployment" and component_of(obj).startswith("inference"):
            env[obj["metadata"]["name"]] = {k: e.get("value") for k, e in env_of(spec["containers"][0]).items()}
    (qwen,) = [e for name, e in env.items() if name.endswith("qwen")]
    (llama,) = [e for name, e in env.items() if name.endswith("llama")]
    assert qwen["CHATPLANE_INFERENCE_TOOL_CALL_PARSER"] == "hermes" and "CHATPLANE_INFERENCE_CHAT_TEMPLATE" not in qwen
    assert llama["CHATPLANE_INFERENCE_TOOL_CALL_PARSER"] == "llama3_json"
    assert llama["CHATPLANE_INFERENCE_CHAT_TEMPLATE"] == "/models/llama/tool_chat.jinja"
