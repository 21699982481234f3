"""An adapter saved in one kernel predicts the same in a fresh one."""
import json
import os

import numpy as np
import pytest
from jupyter_client.manager import start_new_kernel

from tests.integration.kernel.test_kernel_training import SETUP, run

pytestmark = pytest.mark.kernel
TEXTS = ["best clever days", "worst waste", "the best of the worst"]


def kernel_session(env):
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    return km, kc


def logits_of(kc, expression: str) -> np.ndarray:
    text, _ = run(kc, f"import json; print(json.dumps({expression}.logits({TEXTS!r}).tolist()))")
    return np.array(json.loads(text.strip().splitlines()[-1]))


def test_save_then_load_in_a_fresh_kernel_gives_the_same_logits(tmp_path, tiny_bert):
    env = {**os.environ, "LLM_MAGICS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "LLM_MAGICS_PROGRESS": "none"}
    folder = tmp_path / "adapter"
    km, kc = kernel_session(env)
    try:
        run(kc, SETUP)
        run(kc, f"%lora --model {tiny_bert} --data df --epochs 1 --lr 1e-2 --name first --out r")
        before = logits_of(kc, "r")
        run(kc, f"%lora save first {folder}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    km, kc = kernel_session(env)
    try:
        run(kc, f"%load_ext llm_magics\nfrom llm_magics import api\na = api.lora.load(path={str(folder)!r})")
        after = logits_of(kc, "a")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    assert before.shape == (3, 2)
