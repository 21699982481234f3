"""A worker's Result carried back to the kernel: JSON + PNG + safetensors, never pickle.

Rank 0 writes `launch/result.json` (every plain field of the Result, the history
and tables as records, figures as PNG files) and the trained weights
(`launch/final/`, the trainable tensors of the weights the Result holds: the best
ones when a best checkpoint was kept). The kernel builds the method's own Result
class from them, so the Result, its artifacts and its run record have the form a
one-process run's have. Then the Result's one `restore` hook makes it usable: a
trained model loads on first use (`predict`, `generate`, `save`), on the CPU (the
kernel initialises no CUDA); a `%lora` or `%rlhf dpo` adapter joins the session's
adapters at once, as a one-process run leaves it; a reward model or a fully tuned
policy loads from its folder (`Result.model_in_folders`: no second copy is written).
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

RESULT = "result.json"
FINAL = "final"
_SKIP = {"tables", "figures", "history"}


def _plain(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def write_result(result, folder: Path) -> Path:
    """Rank 0: the Result as JSON, and the weights it holds."""
    from ..engine import checkpoint
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        if f.name in _SKIP or f.name.startswith("_"):   # what the kernel needs is public or in a folder
            continue
        value = getattr(result, f.name)
        if _plain(value):
            fields[f.name] = value
    history = getattr(result, "history", None)
    payload = {"class": f"{type(result).__module__}.{type(result).__qualname__}", "fields": fields,
               "history": history.to_dict(orient="records") if isinstance(history, pd.DataFrame) else None,
               "tables": {name: json.loads(table.to_json(orient="split", index=False))
                          for name, table in result.tables.items()},
               "figures": {name: base64.b64encode(png).decode() for name, png in result.figures.items()},
               "weights": None}
    model = getattr(result, "_model", None)
    if model is not None and not result.model_in_folders:
        checkpoint.save_weights(model, folder / FINAL)
        payload["weights"] = str(folder / FINAL)
    path = folder / RESULT
    path.write_text(json.dumps(payload, default=str))
    return path


def read_result(method, options, folder: Path, spec, ctx):
    """The kernel's Result, of `method.result_class`, from what rank 0 wrote."""
    payload = json.loads((folder / RESULT).read_text())
    cls = result_class(method, payload.get("class", ""))
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in payload["fields"].items() if k in names}
    if "history" in names and payload.get("history") is not None:
        fields["history"] = pd.DataFrame(payload["history"])
    fields["tables"] = {name: pd.read_json(io.StringIO(json.dumps(t)), orient="split")
                        for name, t in payload.get("tables", {}).items()}
    fields["figures"] = {name: base64.b64decode(png) for name, png in payload.get("figures", {}).items()}
    result = cls(**fields)
    weights = payload.get("weights")
    if weights:
        result.artifacts["final_weights"] = weights
    result.restore(options, (lambda: rebuild_model(method, options, spec, ctx, Path(weights))) if weights else None)
    return result


def result_class(method, path: str) -> type:
    """The Result class rank 0 named (`module.Class`), if it is one this method's runs come back as (its
    `result_class` or its `result_classes`: by default the plain Result); anything else is refused before any import:
    the file is read from disk, and a name in it must not choose what the kernel imports."""
    from ..errors import UsageError
    known = [getattr(method, "result_class", None), *getattr(method, "result_classes", ())]
    allowed = {f"{c.__module__}.{c.__qualname__}": c for c in known if c is not None}
    if path not in allowed:
        raise UsageError(f"{RESULT} names {path!r}, not a Result class of %{method.name} "
                         f"({', '.join(allowed)}): the run's launch folder was changed; run it again")
    return allowed[path]


def rebuild_model(method, options, spec, ctx, weights: Path):
    """The method's model on the CPU with the workers' trained weights (`TrainingMethod.restore_model`), from
    the options the workers ran with: their data as the spec carried it, one process, no --resume."""
    import dataclasses as dc
    o = dc.replace(options, **{k: v for k, v in spec.options.items() if k in ("data", "validation", "test")})
    o.devices, o.nodes, o.resume = 1, 1, None
    return method.restore_model(o, ctx, weights)
