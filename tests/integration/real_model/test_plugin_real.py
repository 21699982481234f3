"""The BitFit example plugin against the built-in fine-tuning, on real data (SST-2, MiniLM)."""
import sys

import pytest

from tests.helpers import REPO_ROOT, sst2_sample
from llm_magics import api

EXAMPLE = REPO_ROOT / "examples" / "bitfit"


@pytest.fixture
def bitfit():
    from llm_magics.registry import registry
    sys.path.insert(0, str(EXAMPLE))
    try:
        from llm_magics_bitfit import BitFitMethod
        registry().add(BitFitMethod, origin="examples/bitfit")
        yield BitFitMethod
    finally:
        registry().entries.pop("bitfit", None)
        sys.path.remove(str(EXAMPLE))


@pytest.mark.real_model
def test_bitfit_is_near_full_finetuning_and_above_head_only(bitfit):
    """The plugin's acceptance run: 2,000 SST-2 train rows, MiniLM, 2 epochs, scored on the 872 test sentences."""
    train, test = sst2_sample(2000)
    common = dict(model="minilm", data=train, test=test, epochs=2, seed=0)
    runs = {"bitfit": api.run("bitfit", **common),
            "all": api.finetune(train="all", **common),
            "head": api.finetune(train="head", **common)}
    acc = {name: r.metrics["test_accuracy"] for name, r in runs.items()}
    for name, r in runs.items():
        print(f"{name:7s} test_accuracy {acc[name]:.4f}  trainable {r.trainable_params:,} / {r.total_params:,}  "
              f"{r.wall_s:.0f} s")
    assert runs["bitfit"].trainable_params < runs["all"].trainable_params / 50
    assert acc["bitfit"] >= acc["all"] - 0.02
    assert acc["bitfit"] > acc["head"]
