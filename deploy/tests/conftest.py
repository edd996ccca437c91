"""Fixtures of the deployment tests (helpers live in chart_support.py, importable from every test file)."""

from __future__ import annotations

import pytest
from chart_support import CHART, VALUE_SETS, Rendered, load_values, render_chart


@pytest.fixture(scope="session")
def renders() -> dict[str, Rendered]:
    """The chart rendered with the default values and with every values file (rendered once per test run)."""
    return {name: render_chart(CHART, load_values(path), name) for name, path in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def default_render(renders) -> Rendered:
    return renders["default"]
