"""Execute a notebook headless in a real kernel and print its runs' comparison table.

    python scripts/run_notebook.py notebooks/quickstart.ipynb

The executed copy is written beside it as NAME.executed.ipynb. The runs go to a
fresh run store, so the printed table holds exactly this execution's results.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="llm-magics-runs-")) / "runs.sqlite"
    os.environ["LLM_MAGICS_RUNS"] = str(runs)  # the kernel inherits it
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    started = time.perf_counter()
    print(f"executing {args.notebook} ...", flush=True)
    try:
        client.execute()
    except CellExecutionError as exc:
        print(str(exc)[-3000:], file=sys.stderr)
        return 1
    finally:
        out = args.notebook.with_suffix(".executed.ipynb")
        nbformat.write(nb, out)
        print(f"executed copy: {out}")
    print(f"done in {time.perf_counter() - started:.0f} s\n")
    from llm_magics.runs import RunStore, compare
    table = compare(RunStore(runs).frame()).table
    with_metrics = [c for c in ("run_id", "method", "model", "test_accuracy", "val_accuracy", "trainable_params",
                                "wall_s", "peak_mem_mb", "device") if c in table]
    print(table[with_metrics].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
