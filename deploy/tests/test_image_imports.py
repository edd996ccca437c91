"""Each image's processes start with only their own extra installed, checked without building the images: a
subprocess of the test interpreter refuses every import of a package that the image's extra does not install (the
dependency closure of `chatplane[<extra>]`, read from the installed metadata), then does what the image's entry point
does up to serving (imports, settings, telemetry, the app). The gateway image once exited at start because telemetry
imported SQLAlchemy, which only the database services install."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# image -> (extra, what its processes run before they serve)
STARTS = {
    "gateway": (
        "gateway",
        "from chatplane.gateway.__main__ import main\n"
        "from chatplane.gateway.app import create_app\n"
        "from chatplane.gateway.settings import GatewaySettings\n"
        "from chatplane.common.telemetry import setup_telemetry\n"
        "setup_telemetry('gateway', 0, '127.0.0.1')\n"
        "create_app(GatewaySettings())\n",
    ),
    "auth": (
        "auth",
        "from chatplane.auth.__main__ import main\n"
        "from chatplane.auth.server import serve, migrate\n"
        "from chatplane.auth.usage_consumer import consume_usage\n"
        "from chatplane.common.telemetry import setup_telemetry\n"
        "setup_telemetry('auth', 0, '127.0.0.1')\n",
    ),
    "conversation": (
        "conversation",
        "from chatplane.conversation.__main__ import main\n"
        "from chatplane.conversation.jobs.worker import run_worker\n"
        "from chatplane.common.telemetry import setup_telemetry\n"
        "setup_telemetry('conversation', 0, '127.0.0.1')\n",
    ),
    "inference-cpu": (
        "inference-cpu",
        "from chatplane.inference.__main__ import main\n"
        "from chatplane.inference.server import serve\n"
        "from chatplane.inference.settings import InferenceSettings\n"
        "from chatplane.common.telemetry import setup_telemetry\n"
        "InferenceSettings()\n"
        "setup_telemetry('inference', 0, '127.0.0.1')\n",
    ),
}

REPO = Path(__file__).resolve().parents[2]


def requires(name: str) -> list[str]:
    """A distribution's requirements; chatplane's from pyproject.toml, the source of truth (installed metadata goes
    stale: an old chatplane.egg-info in the checkout shadows the environment's and misses a new dependency)."""
    if canonicalize_name(name) != "chatplane":
        return md.distribution(name).requires or []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = [f"{r}; extra == '{e}'" for e, reqs in project["optional-dependencies"].items() for r in reqs]
    return [*project["dependencies"], *optional]


def closure(extra: str) -> set[str]:
    """Canonical names of the distributions `pip install .[extra]` installs (markers evaluated here)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [("chatplane", frozenset({extra}))]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        try:
            texts = requires(name)
        except md.PackageNotFoundError:  # a dependency for another platform or Python
            continue
        seen.add((canonicalize_name(name), extras))
        for text in texts:
            req = Requirement(text)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen}


def site_of(extra: str, root: Path) -> Path:
    """A folder holding only what `pip install .[extra]` installs: the top-level entries (packages, modules, their
    .dist-info and shared-library folders) of this environment's site-packages that belong to the extra's
    distributions, as symbolic links, and the chatplane packages from the repository."""
    allowed = closure(extra)
    site = root / "site"
    site.mkdir()
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in allowed or name == "chatplane":
            continue
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / top).exists() and (base / top).exists() and not top.endswith(".pth"):
                (site / top).symlink_to(base / top)
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    (site / "chatplane").mkdir()
    for package, folder in package_dirs.items():
        (site / "chatplane" / package.split(".", 1)[1]).symlink_to(REPO / folder)
    return site


def start_with_only(
    extra: str, code: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python that sees the standard library and the extra's packages only (``-S``: no
    site-packages of this environment)."""
    site = site_of(extra, tmp_path)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site),
        "CHATPLANE_DATA_DIR": str(tmp_path), "CHATPLANE_KAFKA_BOOTSTRAP_SERVERS": "", **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path
    )


@pytest.mark.parametrize("image", list(STARTS))
def test_the_image_starts_with_only_its_extra(image, tmp_path):
    extra, start = STARTS[image]
    result = start_with_only(extra, start, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("image", list(STARTS))
def test_the_image_starts_with_tracing_on(image, tmp_path):
    """With an OTLP endpoint set, each process installs the OpenTelemetry instrumentations of the libraries its
    image has (Celery, SQLAlchemy): each instrumentation is installed by the extra that installs its library."""
    extra, start = STARTS[image]
    code = start + (
        "from chatplane.common import tracing\n"
        "assert tracing.enabled()\n"
        "print(sorted(type(i).__name__ for i in tracing._instrumented() if i.is_instrumented_by_opentelemetry))\n"
    )
    result = start_with_only(extra, code, tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"gateway": ["SQLAlchemyInstrumentor"], "auth": ["SQLAlchemyInstrumentor"],
                "conversation": ["CeleryInstrumentor", "SQLAlchemyInstrumentor"], "inference-cpu": []}[image]
    assert result.stdout.strip().splitlines()[-1] == str(expected)


def test_a_package_outside_the_extra_is_missing(tmp_path):
    """The check above can fail: the gateway's environment has no Celery (the conversation image's has), and the
    gateway's SQLAlchemy (its completion spool) is there."""
    result = start_with_only("gateway", "import celery", tmp_path)
    assert result.returncode != 0 and "No module named 'celery'" in result.stderr
    (tmp_path / "auth").mkdir()
    assert start_with_only("auth", "import sqlalchemy, chatplane.auth.server", tmp_path / "auth").returncode == 0
