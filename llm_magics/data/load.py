"""Turn whatever the user names into a pandas DataFrame.

A reference is resolved in this order:
1. a Python object: DataFrame, list of dicts, dict of lists, list of strings,
   datasets Dataset / DatasetDict (magics pass the variable; the API passes it directly);
2. a name bound in the notebook's namespace;
3. a file: csv, tsv, jsonl, json, parquet, txt;
4. a dataset name, optionally `name:split`, loaded with `datasets` (users with internet).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UsageError

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")


def is_dataset_dict(obj) -> bool:
    return type(obj).__name__ in ("DatasetDict", "IterableDatasetDict")


def describe(ref: Any) -> str:
    """How a reference shows up in options, error messages and the run store."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, pd.DataFrame):
        return f"<DataFrame {len(ref)} rows>"
    return f"<{type(ref).__name__}>"


def lookup(ref: Any, namespace: dict | None):
    """A string naming a notebook variable → that object; anything else unchanged."""
    if isinstance(ref, str) and namespace and ref in namespace and _IDENTIFIER.match(ref):
        return namespace[ref]
    return ref


def load_frame(ref: Any, namespace: dict | None = None, role: str = "--data") -> pd.DataFrame:
    """One table. A DatasetDict gives its train split here (see `load_splits`)."""
    obj = lookup(ref, namespace)
    if is_dataset_dict(obj):
        if "train" not in obj:
            raise UsageError(f"{role}: the DatasetDict has splits {list(obj)}; pick one, e.g. dd['{next(iter(obj))}']")
        obj = obj["train"]
    if not isinstance(obj, str):
        return from_object(obj, role)
    return from_string(obj, namespace, role)


def load_splits(ref: Any, namespace: dict | None = None, role: str = "--data") -> dict[str, pd.DataFrame]:
    """{'train': ..., plus 'validation'/'test' when the source carries them (a DatasetDict)}."""
    obj = lookup(ref, namespace)
    if is_dataset_dict(obj):
        out = {}
        for name, alias in (("train", "train"), ("validation", "validation"), ("valid", "validation"),
                            ("dev", "validation"), ("test", "test")):
            if name in obj and alias not in out:
                out[alias] = from_object(obj[name], f"{role}[{name}]")
        if "train" not in out:
            raise UsageError(f"{role}: the DatasetDict has no 'train' split (it has {list(obj)})")
        return out
    return {"train": load_frame(obj, namespace, role)}


def load_given(data: Any, validation: Any, test: Any, namespace: dict | None) -> dict[str, pd.DataFrame]:
    """The splits the user gave: train (plus any a DatasetDict carries), validation, test."""
    given = load_splits(data, namespace, "--data")
    if validation is not None:
        given["validation"] = load_frame(validation, namespace, "--validation")
    if test is not None:
        given["test"] = load_frame(test, namespace, "--test")
    return given


def unique_columns(frame: pd.DataFrame, role: str) -> pd.DataFrame:
    """A table whose columns repeat a name is refused: which one would --text mean?"""
    names = [str(c) for c in frame.columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"{role}: the table has duplicated column names ({', '.join(map(repr, repeated))}); "
                         "rename them so that each column has its own name")
    return frame


def from_object(obj: Any, role: str) -> pd.DataFrame:
    if isinstance(obj, pd.DataFrame):
        return unique_columns(obj, role).reset_index(drop=True)
    if isinstance(obj, pd.Series):
        return obj.to_frame(name=obj.name or "text").reset_index(drop=True)
    if type(obj).__name__ in ("Dataset", "IterableDataset") and hasattr(obj, "to_pandas"):
        return obj.to_pandas()
    if isinstance(obj, dict):
        try:
            return pd.DataFrame(obj)
        except ValueError as exc:
            raise UsageError(f"{role}: a dict must map column names to equal-length lists ({exc})") from None
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise UsageError(f"{role} is empty; pass at least one row")
        if all(isinstance(x, str) for x in obj):
            return pd.DataFrame({"text": list(obj)})
        if all(isinstance(x, dict) for x in obj):
            return pd.DataFrame(list(obj))
        raise UsageError(f"{role}: a list must hold dicts (rows) or strings (texts), "
                         f"found {type(obj[0]).__name__}")
    raise UsageError(f"{role}: cannot use a {type(obj).__name__}; pass a DataFrame, a list of dicts, "
                     "a dict of lists, a datasets Dataset, a file path or a dataset name")


def from_string(ref: str, namespace: dict | None, role: str) -> pd.DataFrame:
    path = Path(ref).expanduser()
    if path.is_file():
        return read_file(path, role)
    if path.is_dir():
        raise UsageError(f"{role}: {ref} is a folder; name a file ({', '.join(FILE_SUFFIXES)})")
    looks_like_path = "/" in ref or "\\" in ref or path.suffix.lower() in FILE_SUFFIXES + (".xlsx", ".xls")
    if looks_like_path and (path.suffix or ref.startswith((".", "/", "~"))):
        raise UsageError(f"{role}: file {ref} does not exist")
    if _IDENTIFIER.match(ref) and namespace is not None:
        near = _near_variable(ref, namespace)
        if near:  # a typo of a notebook variable, not a dataset on the hub
            raise UsageError(f"{role}: no variable named {ref!r} in the notebook (did you mean {near}?)")
        return load_hub_dataset(ref, role, also=f"there is no variable named {ref!r} in the notebook")
    return load_hub_dataset(ref, role)


def _near_variable(name: str, namespace: dict) -> str | None:
    from ..errors import closest
    tables = [k for k, v in namespace.items() if not k.startswith("_")
              and (isinstance(v, (pd.DataFrame, list, dict)) or is_dataset_dict(v)
                   or type(v).__name__ == "Dataset")]
    return closest(name, tables)


def read_file(path: Path, role: str = "--data") -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            frame = read_delimited(path, "\t" if suffix == ".tsv" else ",", role)
        elif suffix == ".jsonl":
            frame = pd.read_json(path, lines=True)
        elif suffix == ".json":
            frame = read_json(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".txt":
            lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
            frame = pd.DataFrame({"text": [line for line in lines if line.strip()]})
        else:
            raise UsageError(f"{role}: cannot read {path.name} ({suffix or 'no extension'}); "
                             f"use one of {', '.join(FILE_SUFFIXES)}")
    except UsageError:
        raise
    except Exception as exc:  # a corrupt or mislabelled file is the user's to fix
        raise UsageError(f"{role}: could not read {path} as {suffix[1:]}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return unique_columns(frame, f"{role} ({path.name})")


def read_delimited(path: Path, sep: str, role: str = "--data") -> pd.DataFrame:
    """csv/tsv, with or without a header row (AG News ships without one).

    TSV is read without quote handling: texts hold unmatched quotes (SST-2).
    A row with more fields than the header is an error naming its line (pandas
    would silently turn the extra leading fields into the index).
    """
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as f:
        first = f.readline().rstrip("\r\n")
    header = 0 if looks_like_header(first.split(sep) if quoting == csv.QUOTE_NONE
                                    else next(csv.reader([first], delimiter=sep), [])) else None
    try:
        frame = pd.read_csv(path, sep=sep, quoting=quoting, header=header, encoding="utf-8",
                            keep_default_na=False, na_values=[""])
    except pd.errors.ParserError:
        if first_long_row(path, sep, quoting) is None:
            raise
        frame = None
    if frame is None or not isinstance(frame.index, pd.RangeIndex):  # pandas made an index of extra fields
        found = first_long_row(path, sep, quoting)
        first = "the first row" if header is None else "the header"
        where = (f"line {found[0]} has {found[1]} fields but {first} has {found[2]}" if found
                 else f"a row has more fields than {first}")
        raise UsageError(f"{role}: {path.name} {where}; "
                         + ("quote texts that hold commas" if sep == "," else "a text holds a tab")
                         + " or fix the row")
    if header is None:
        frame.columns = [f"column_{i}" for i in range(frame.shape[1])]
    return frame


def first_long_row(path: Path, sep: str, quoting: int) -> tuple[int, int, int] | None:
    """(line number, its fields, the header's fields) of the first row longer than the header
    (than the first row, for a file without a header)."""
    with open(path, encoding="utf-8", newline="") as f:
        if quoting == csv.QUOTE_NONE:
            rows = ((i, line.rstrip("\r\n").split(sep)) for i, line in enumerate(f, 1))
        else:
            reader = csv.reader(f, delimiter=sep)
            rows = ((reader.line_num, row) for row in reader)
        _, header = next(rows, (1, []))
        for number, row in rows:
            if len(row) > len(header):
                return number, len(row), len(header)
    return None


def looks_like_header(fields: list[str]) -> bool:
    """Column names are short identifiers; a data row usually holds a sentence or a number."""
    if not fields:
        return False
    for value in fields:
        value = value.strip()
        if not value or len(value) > 40 or len(value.split()) > 3:
            return False
        try:
            float(value)
            return False
        except ValueError:
            pass
    return len(set(fields)) == len(fields)


def read_json(path: Path) -> pd.DataFrame:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        # {"data": [...]} and {"train": [...]} wrappers are common.
        lists = [v for v in data.values() if isinstance(v, list)]
        if all(isinstance(v, list) for v in data.values()):
            lengths = {len(v) for v in data.values()}
            if len(lengths) == 1:
                return pd.DataFrame(data)
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON list of records or a dict of columns")
    return pd.DataFrame(data)


def load_hub_dataset(ref: str, role: str, also: str = "") -> pd.DataFrame:
    """`name` or `name:split` through datasets (needs the hub, or its local cache)."""
    from .. import hf_hub as hub
    name, _, split = ref.partition(":")
    why = f"{also}, and" if also else f"{ref!r} is not a variable or a file, and"
    advice = "pass a DataFrame variable or a file path (or a dataset name with internet)"
    if not hub.reachable():
        raise UsageError(f"{role}: {why} the Hugging Face hub is not reachable to load it as a dataset; {advice}")
    import datasets
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UsageError(f"{role}: {why} loading it as a dataset failed ({reason}); {advice}") from None
    return ds.to_pandas()
