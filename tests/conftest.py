"""Shared fixtures: an isolated llm-magics home per test, tiny models, demo data."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_bert, build_llama
from tests.helpers import MODELS_CACHE, word_task, WORDS


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


@pytest.fixture
def separable():
    return word_task()


@pytest.fixture
def store():
    from llm_magics.runs import RunStore
    from llm_magics.settings import current
    return RunStore(current().runs_path)


@pytest.fixture
def sft_rows():
    """Prompt/response pairs in a fixed answer format, learnable by a tiny causal LM."""
    import pandas as pd
    return pd.DataFrame([{"prompt": f"Say the word number {i % 5}", "response": f"Word: {WORDS[i % 5]}"}
                         for i in range(80)])
