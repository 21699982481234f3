"""`%lora` on the embedded models and SST-2: the quality claims, checked for real."""
import pytest

from tests.helpers import sst2_sample
from llm_magics import api

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def sst2():
    return sst2_sample(2000)


def test_minilm_lora_classifier(sst2):
    # Seeds 0 / 1 / 2 with the CPU's cheaper dropout masks (engine/fast_paths.py): 0.818 / 0.841 / 0.834; with
    # nn.Dropout's: 0.846 / 0.834 / 0.843 (issue 22; 872 test rows, about ±0.013). With the batches padded up the
    # training ladder (engine/batching.few_training_shapes: the masks are drawn for the padded shapes, so each seed
    # draws others): 0.835 / 0.835 / 0.807. A draw is noise of about a point either way, so the bar sits below the
    # spread of all three, not at the one draw it was set on.
    train, test = sst2
    result = api.lora(model="minilm", data=train, test=test, method="lora", r=8)
    assert result.metrics["test_accuracy"] >= 0.80, result.metrics
    assert result.trainable_params < 0.02 * result.total_params

