"""The web app's first screen stays within its budget: under 300 KB of gzipped JavaScript (what `make bench` reports),
with the API keys and usage pages and the code highlighter in chunks of their own, and no inline script (the
gateway's Content-Security-Policy allows none)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "web" / "dist"


def _web_bench():
    spec = importlib.util.spec_from_file_location("web_bench", REPO / "benchmarks" / "web.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dist() -> Path:
    if not (DIST / "index.html").is_file():
        pytest.skip("web/dist is not built (make web)")
    return DIST


def test_first_screen_javascript_is_within_budget(dist):
    report = _web_bench().bundle(dist)
    assert report["first_screen_js_gzip_kb"] < 300, report
    later = " ".join(report["later_chunks_gzip_kb"])
    for page in ("KeysPage", "UsagePage", "highlight", "Markdown"):
        assert page in later, f"{page} should be a chunk of its own, loaded when needed: {later}"


def test_index_has_no_inline_script_or_style(dist):
    html = (dist / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, f"inline script in index.html: {tag}"
    assert "<style" not in html and " style=" not in html
    assert all((dist / p).is_file() for p in re.findall(r'(?:src|href)="/([^"]+)"', html))
