"""Option bundles several methods share, declared once (like IPython's script magics).

A method's options dataclass inherits the bundles it needs:

    @dataclass
    class ProbeOptions(ModelOptions, DataOptions, RunOptions):
        layer: str = option("-1", ...)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import fraction, option


def identifier(value) -> str | None:
    if value is not None and not str(value).isidentifier():
        return f"{value!r} is not a valid Python variable name"
    return None


@dataclass
class ModelOptions:
    model: str | None = option(None, "an alias (minilm, smollm2), a local folder or a hub id "
                                     "(default: the configured default model)")
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bf16 where the hardware does it natively, else fp32 (fp16 on MPS)",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "run the model repository's own code (only for authors you trust)")


@dataclass
class DataOptions:
    data: Any = option(None, "training data: a variable, a file (csv, tsv, jsonl, json, parquet) or a "
                             "dataset name[:split]; everything when no other split is given", metavar="DATA")
    validation: Any = option(None, "validation data (default: split off --data)", metavar="DATA")
    test: Any = option(None, "test data (default: split off --data)", metavar="DATA")
    text: str | None = option(None, "text column (default: inferred when unambiguous)", metavar="COLUMN")
    label: str | None = option(None, "label column (default: inferred when unambiguous)", metavar="COLUMN")
    seed: int = option(0, "seed for splits, sampling and initialisation")
    val_size: float = option(0.1, "share of --data held out for validation when --validation is not given",
                             check=fraction)
    test_size: float = option(0.2, "share of --data held out for testing when --test is not given",
                              check=fraction)


@dataclass
class RunOptions:
    out: str | None = option(None, "also bind the Result to this variable; the magic then returns nothing",
                             metavar="NAME", check=identifier)
