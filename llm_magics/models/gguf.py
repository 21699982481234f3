"""GGUF → a plain safetensors folder, once, in the cache.

Loading a GGUF dequantises every tensor (~17 s for SmolLM2) and marks the model
as quantized, which blocks training and `save_pretrained`. We convert once,
clear the quantizer marks, save a normal folder, and load from there (~2 s).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .. import settings


def converted_folder(gguf_path: Path, name: str) -> Path:
    target = settings.current().models_path / name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .quiet import quiet, quiet_gguf_reader
    print(f"converting {gguf_path.name} to safetensors once, into {target} (about 30 s) ...",
          file=sys.stderr, flush=True)
    folder, file = str(gguf_path.parent), gguf_path.name
    with quiet(), quiet_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write beside the target and rename, so a crash never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with quiet():
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
