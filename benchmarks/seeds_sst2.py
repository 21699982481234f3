"""`--seeds N` on SST-2 with the embedded MiniLM: two methods, each run N times, compared with their intervals.

Runs, as a notebook would (the magics in an IPython shell):

    %probe    --model minilm --data train --test test --seeds 3 --out p
    %finetune --model minilm --data train --test test --train last:1 --epochs 1 --seeds 3 --out f
    %llm compare
    %llm compare p f --paired

on a seeded sample of SST-2's train.tsv and the first --test-rows sentences of test.tsv, and prints each Result,
the comparison and the paired test (docs/comparing.md shows one run's output):

    python benchmarks/seeds_sst2.py --rows 500 --test-rows 300 --threads 2
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import add_threads_option, set_threads
from ladder_sst2 import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500, help="train rows sampled from train.tsv")
    parser.add_argument("--test-rows", type=int, default=300, help="the first N test sentences")
    parser.add_argument("--seeds", type=int, default=3)
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="seeds-sst2-"))
    os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")

    from llm_magics import api
    from llm_magics.testing import shell_with_extension
    train, test = load(args.rows, args.test_rows)
    print(f"SST-2: {len(train)} train rows, {len(test)} test sentences, --seeds {args.seeds}", flush=True)
    with shell_with_extension() as shell:
        shell.user_ns.update(train=train, test=test)
        for line in (f"%probe --model minilm --data train --test test --seeds {args.seeds} --out p",
                     f"%finetune --model minilm --data train --test test --train last:1 --epochs 1 "
                     f"--seeds {args.seeds} --out f"):
            began = time.time()
            assert shell.run_cell(line).success, line
            result = shell.user_ns[line.rsplit(" ", 1)[-1]]
            print(f"\n{line}   ({time.time() - began:.0f} s)\n{result!r}\n{result.seeded}", flush=True)
        print("\n%llm compare\n" + repr(api.compare()))
        print("\n%llm compare p f --paired\n" + repr(api.compare_paired(shell.user_ns["p"], shell.user_ns["f"],
                                                                         names=("p", "f"))))

if __name__ == "__main__":
    main()
