"""README.md stays true: its configuration table is the settings classes' own, and its commands exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _settings_doc():
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_table_matches_the_settings():
    doc = _settings_doc()
    assert doc.section((ROOT / "README.md").read_text()) == doc.render().strip(), (
        "README.md's configuration table is stale: run `python scripts/settings_doc.py --write`"
    )


def test_readme_commands_are_make_targets_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", readme, re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"README names `make {target}`, Makefile lacks it"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
