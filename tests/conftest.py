"""Shared fixtures: an isolated llm-magics home per test, tiny models, demo data."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_bert, build_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared"))
SST2 = SHARED / "data" / "sst2"
# Converted models are reused across tests and sessions (the GGUF conversion takes ~30 s).
MODELS_CACHE = Path(os.environ.get("LLM_MAGICS_MODELS", Path(tempfile.gettempdir()) / "llm_magics_test_models"))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own cache, run store and default settings."""
    from llm_magics import settings
    monkeypatch.setenv("LLM_MAGICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_MAGICS_MODELS", str(MODELS_CACHE))
    monkeypatch.setenv("LLM_MAGICS_PROGRESS", "text")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the unit tests never reach a hub
    for name in ("LLM_MAGICS_RUNS", "LLM_MAGICS_DEVICE", "LLM_MAGICS_MODEL"):
        monkeypatch.delenv(name, raising=False)
    yield settings.reset()
    settings.reset()


@pytest.fixture
def shell(home):
    """A real IPython shell with the extension loaded (and unloaded after the test)."""
    from IPython.core.interactiveshell import InteractiveShell
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "llm_magics")
    yield sh
    sh.run_line_magic("unload_ext", "llm_magics")
    sh.config.pop("LLMMagics", None)  # %config values outlive the extension; not past this test


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def bert_without_dropout(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with dropout off: launched ranks draw dropout masks for their own slices."""
    import json
    import shutil
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout") / "model"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def demo():
    from llm_magics.demo import sentiment_splits
    return sentiment_splits(240, 80)


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


@pytest.fixture
def separable():
    return word_task()


@pytest.fixture
def store():
    from llm_magics.runs import RunStore
    from llm_magics.settings import current
    return RunStore(current().runs_path)


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


@pytest.fixture
def sft_rows():
    """Prompt/response pairs in a fixed answer format, learnable by a tiny causal LM."""
    import pandas as pd
    return pd.DataFrame([{"prompt": f"Say the word number {i % 5}", "response": f"Word: {WORDS[i % 5]}"}
                         for i in range(80)])


def one_usage_line(shell, capsys, cell: str) -> str:
    """Run a cell that must fail as a user mistake: one `UsageError:` line, nothing else; returns that line."""
    capsys.readouterr()
    result = shell.run_cell(cell)
    captured = capsys.readouterr()
    lines = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
    assert not result.success, f"{cell!r} did not fail"
    assert len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    return lines[0]
