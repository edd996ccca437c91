"""The committed gRPC stubs match proto/: `make proto` was run after the last contract change."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_committed_stubs_match_proto(tmp_path):
    out = tmp_path / "protos"
    _load_generator().generate(out)
    committed = ROOT / "libs" / "protos"
    assert _files(out) == _files(committed), "stubs added or removed in proto/: run `make proto`"
    stale = [f for f in sorted(_files(out)) if not filecmp.cmp(out / f, committed / f, shallow=False)]
    assert not stale, f"stale generated stubs {stale}: run `make proto`"


def test_every_proto_file_has_a_versioned_package():
    for proto in (ROOT / "proto").rglob("*.proto"):
        parts = proto.relative_to(ROOT / "proto").parts  # chatplane/<svc>/v1/<name>.proto
        package = ".".join(parts[:-1])
        assert f"package {package};" in proto.read_text(), f"{proto} must declare package {package}"
