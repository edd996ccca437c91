"""Regenerate the Python gRPC stubs in libs/protos from proto/ (``make proto``).

Each proto file gives ``<name>_pb2.py`` (messages), ``<name>_pb2_grpc.py`` (stubs and servicers) and their typed
stubs ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.pyi`` (mypy-protobuf's protoc plugins, ``protoc-gen-mypy`` and
``protoc-gen-mypy_grpc``, installed next to this interpreter by the ``dev`` extra).

protoc names imports after the proto file path (``from chatplane.auth.v1 import ...``); the generated modules live
in the ``chatplane.protos`` package, so those imports are rewritten to ``chatplane.protos.auth.v1``.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "libs" / "protos"
IMPORT = re.compile(r"^(from|import) chatplane\.(?!protos\.)", re.MULTILINE)


def plugin(name: str) -> str:
    """``--plugin`` argument for a protoc plugin installed next to this interpreter (or on PATH)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extra (make install)")
    return f"--plugin={name}={found}"


def generate(out: Path) -> None:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            plugin("protoc-gen-mypy"),
            plugin("protoc-gen-mypy_grpc"),
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        gen_root = Path(tmp) / "chatplane"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "__init__.py").write_text('"""Generated from proto/ by `make proto`. Do not edit."""\n')
        for src in sorted(gen_root.rglob("*")):
            rel = src.relative_to(gen_root)
            dst = out / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                (dst / "__init__.py").touch()
                continue
            text = IMPORT.sub(r"\1 chatplane.protos.", src.read_text())
            dst.write_text(text)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    generate(out)
    print(f"generated stubs in {out}")


if __name__ == "__main__":
    main()
