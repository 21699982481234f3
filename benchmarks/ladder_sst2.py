"""Issue 20's acceptance run of `%llm ladder`: every default rung on SST-2, with intervals, cost and a recommendation.

SST-2: a seeded sample of train.tsv (2,000 rows by default) to adapt on, the 872 held-out sentences of test.tsv to
score; labels as the words negative / positive (so the in-context rungs score those verbalizers after the template
"Review: {sentence}\\nSentiment: {label}"). The default rungs (ICL 0-shot and 4-shot calibrated on SmolLM2; the
probe, head, last:1, LoRA and all layers on MiniLM), `--seeds 3`, inside `--budget 45m`:

    python benchmarks/ladder_sst2.py                          # the acceptance run (382 s on 2 cores, budget 45m)
    python benchmarks/ladder_sst2.py --rows 200 --test-rows 100 --seeds 1 --budget 5m    # a quick look

Prints the table, the Pareto frontier and the recommendation; --out FILE also writes them as JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from common import add_threads_option, set_threads

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared")) / "data" / "sst2"
TEMPLATE = "Review: {sentence}\\nSentiment: {label}"
WORDS = {0: "negative", 1: "positive"}


def load(rows: int, test_rows: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    read = dict(sep="\t", quoting=csv.QUOTE_NONE)
    train = pd.read_csv(SST2 / "train.tsv", **read).sample(rows, random_state=0).reset_index(drop=True)
    test = pd.read_csv(SST2 / "test.tsv", **read)
    test = test if test_rows is None else test.head(test_rows)
    return tuple(frame.assign(label=frame["label"].map(WORDS)) for frame in (train, test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="train rows sampled from train.tsv")
    parser.add_argument("--test-rows", type=int, default=None, help="the first N test sentences (default: all 872)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", default="45m")
    parser.add_argument("--rungs", default=None, help="as %%llm ladder --rungs (default: the default rungs)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table and sentence as JSON")
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="ladder-sst2-"))
    os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")

    from llm_magics import api
    from llm_magics.tune.ladder import TextLadderView, from_line
    train, test = load(args.rows, args.test_rows)
    print(f"SST-2: {len(train)} train rows, {len(test)} test sentences; seeds {args.seeds}, budget {args.budget}",
          flush=True)
    line = ["--data", "train", "--test", "test", "--seeds", str(args.seeds), "--budget", args.budget,
            "--template", TEMPLATE] + (["--rungs", args.rungs] if args.rungs else [])
    print("%llm ladder " + " ".join(f'"{t}"' if " " in t else t for t in line), flush=True)
    ladder = from_line(line, {"train": train, "test": test})
    TextLadderView(ladder, sys.stdout)
    began = time.time()
    ladder.start()
    ladder.wait()
    result = ladder.result()
    table = result.table().drop(columns=["line"])
    print(f"\nfinished in {time.time() - began:.0f} s ({ladder.status}); ladder {ladder.id}\n")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nPareto frontier (quality against training seconds):",
          ", ".join(r.label for r in sorted(result.rungs, key=lambda r: r.costs["train_s"])
                    if r.label in result.frontier))
    print("recommendation:", result.sentence)
    for note in result.notes:
        print("-", note)
    if args.out:
        args.out.write_text(json.dumps({"ladder": ladder.id, "seconds": time.time() - began,
                                        "sentence": result.sentence, "notes": result.notes,
                                        "table": json.loads(table.to_json(orient="records"))}, indent=1))
    api.free()


if __name__ == "__main__":
    main()
