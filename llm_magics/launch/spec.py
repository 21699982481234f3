"""A launched run's spec: what the workers need to run the method the kernel was asked to run.

`launch/spec.json` in the run's folder holds the method, its options (plain JSON
values), the settings (cache, run store, models folder) and the run id. Data the
user passed as a notebook variable (a DataFrame, a list of rows, a dict of columns,
a `datasets` Dataset or DatasetDict) is written beside it as Parquet
(`launch/data-<split>.parquet`) and the options name those files; files are named
by their absolute path; dataset names pass through. Nothing is pickled.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.load import load_frame, load_splits, lookup
from ..errors import UsageError
from ..records import as_dict

DATA_FIELDS = ("data", "validation", "test")
SPEC = "spec.json"


@dataclass
class LaunchSpec:
    method: str
    command: str | None
    run_id: str
    options: dict[str, Any]
    settings: dict[str, Any]
    data_files: dict[str, str] = field(default_factory=dict)   # option → the Parquet file written for it
    cwd: str = field(default_factory=os.getcwd)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SPEC
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def read(cls, path: Path) -> "LaunchSpec":
        return cls(**json.loads(Path(path).read_text()))


def _is_file_or_name(value: Any, namespace: dict) -> bool:
    return isinstance(value, str) and not (value.isidentifier() and value in namespace)


def write_data(options, namespace: dict, folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(option values for the workers, option → Parquet file written) for the data options."""
    values: dict[str, Any] = {}
    written: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name in DATA_FIELDS:
        if not hasattr(options, name):
            continue
        value = getattr(options, name)
        if value is None:
            continue
        if _is_file_or_name(value, namespace):
            path = Path(value).expanduser()
            values[name] = str(path.resolve()) if path.exists() else value   # a dataset name passes through
            continue
        obj = lookup(value, namespace)
        frames = load_splits(obj, namespace, f"--{name}") if name == "data" else {name: load_frame(obj, namespace,
                                                                                                 f"--{name}")}
        for split, frame in frames.items():
            key = "data" if split == "train" else split
            if key != name and getattr(options, key, None) is not None:
                continue   # the user's own --validation/--test win over a DatasetDict's split
            target = folder / f"data-{key}.parquet"
            try:
                frame.to_parquet(target, index=False)
            except Exception as exc:   # noqa: BLE001 - pyarrow's many type errors
                raise UsageError(f"--{name}: the workers of --devices read the data from a Parquet file, and this "
                                 f"table does not convert ({type(exc).__name__}: {exc}); use plain columns "
                                 "(text, numbers, lists)") from None
            values[key], written[key] = str(target), str(target)
    return values, written


def make_spec(method: str, command: str | None, options, namespace: dict, run_id: str, settings,
              folder: Path) -> LaunchSpec:
    values = as_dict(options)
    data_values, written = write_data(options, namespace, folder)
    values.update(data_values)
    for key in ("out", "bg"):
        if key in values:
            values[key] = None if key == "out" else False
    unknown = [k for k, v in values.items() if isinstance(v, str) and v.startswith("<") and v.endswith(">")]
    if unknown:
        raise UsageError(f"--devices: {', '.join('--' + k.replace('_', '-') for k in unknown)} cannot reach the "
                         "workers (not a file, a name or plain data)")
    kept = {"cache_dir": str(settings.cache_dir), "runs_db": str(settings.runs_db) if settings.runs_db else None,
            "models_dir": str(settings.models_dir) if settings.models_dir else None,
            "default_model": settings.default_model}
    return LaunchSpec(method, command, run_id, values, kept, written)


def apply_settings(saved: dict[str, Any]) -> None:
    """The kernel's settings, in a worker."""
    from .. import settings
    current = settings.current()
    current.cache_dir = Path(saved["cache_dir"])
    current.runs_db = Path(saved["runs_db"]) if saved.get("runs_db") else None
    current.models_dir = Path(saved["models_dir"]) if saved.get("models_dir") else None
    current.default_model = saved.get("default_model") or current.default_model
    current.progress = "none"
