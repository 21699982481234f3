"""Plain helpers shared by the tests (functions and constants; the fixtures stay in tests/conftest.py).

Import them as `from tests.helpers import ...`: tests/ is a package, so this is one module from every folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


TESTS_DIR = Path(__file__).resolve().parent  # tests/
REPO_ROOT = TESTS_DIR.parent

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared"))
SST2 = SHARED / "data" / "sst2"
# Converted models are reused across tests and sessions (the GGUF conversion takes ~30 s).
MODELS_CACHE = Path(os.environ.get("LLM_MAGICS_MODELS", Path(tempfile.gettempdir()) / "llm_magics_test_models"))


def word_task(n: int = 400, seed: int = 0):
    """Texts drawn from two disjoint word sets: separable even by random tiny models,
    so a probe that scores near chance means rows and labels got misaligned."""
    import random

    import pandas as pd

    from llm_magics.demo import NEGATIVE, POSITIVE
    pos_words = set(" ".join(POSITIVE).lower().split())
    neg_words = set(" ".join(NEGATIVE).lower().split())
    pos, neg = sorted(pos_words - neg_words), sorted(neg_words - pos_words)
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(pos if i % 2 else neg) for _ in range(rng.randint(3, 8))),
             "label": "pos" if i % 2 else "neg"} for i in range(n)]
    return pd.DataFrame(rows), pos, neg


def need_shared(path: Path, what: str) -> Path:
    """The one policy for data from ../shared: a user's machine without it skips; CI (CI=true) fails, so a
    missing folder never passes as a silent skip."""
    if not path.exists():
        message = f"{what} not found at {path} (set LLM_MAGICS_SHARED)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def need_sst2():
    need_shared(SST2 / "train.tsv", "SST-2")
    return SST2


def sst2_sample(rows: int):
    """(a seeded sample of SST-2 train rows, the path of the 872 test sentences)."""
    import csv

    import pandas as pd
    root = need_sst2()
    train = pd.read_csv(root / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE).sample(rows, random_state=0)
    return train, str(root / "test.tsv")


WORDS = ["alpha", "beta", "gamma", "delta", "omega"]


def one_usage_line(shell, capsys, cell: str) -> str:
    """Run a cell that must fail as a user mistake: one `UsageError:` line, nothing else; returns that line."""
    capsys.readouterr()
    result = shell.run_cell(cell)
    captured = capsys.readouterr()
    lines = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
    assert not result.success, f"{cell!r} did not fail"
    assert len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    return lines[0]
