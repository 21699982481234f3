"""benchmarks/gpu_check.py --dry-run: what the GPU check would run, its imports and every step's options,
checked on a CPU so the check does not rot while no GPU is lent."""
from __future__ import annotations

import os
import subprocess
import sys
from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
STEPS = ["probe minilm", "finetune head minilm", "finetune all minilm", "finetune all smollm2 sft",
         "lora smollm2 classify", "lora smollm2 sft (MFU)", "qlora 4-bit smollm2 sft", "qlora 8-bit smollm2 sft",
         "prefix smollm2 sft",
         "icl smollm2 scoring", "index build minilm", "index query", "rlhf reward minilm", "rlhf dpo smollm2 lora",
         "rlhf ppo smollm2 lora"]


def dry_run(tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_MAGICS_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env,
                          timeout=600)


def test_dry_run_lists_every_method_with_valid_options(tmp_path):
    done = dry_run(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = {line.split("would run: ", 1)[1][:28].strip(): line for line in done.stdout.splitlines()
              if line.startswith("would run: ") and " api." in line}
    assert list(listed) == STEPS
    try:
        import bitsandbytes  # noqa: F401
        has_bnb = True
    except Exception:
        has_bnb = False
    for name, line in listed.items():
        qlora = name.startswith("qlora")
        assert line.endswith("ok") == (not qlora or has_bnb), line
    if not has_bnb:
        assert "bitsandbytes not importable" in done.stdout
    assert "imported: torch, transformers, peft, trl, faiss, datasets, llm_magics.api" in done.stdout
    assert "TRL DPOTrainer defaults" in done.stdout


def test_a_bad_option_fails_the_dry_run(tmp_path, monkeypatch):
    """The dry run validates options as the api does: a renamed option would fail it."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import pytest

    from llm_magics.errors import UsageError
    monkeypatch.setenv("LLM_MAGICS_HOME", str(tmp_path))
    step = gpu_check.Step("bad", "lora", lambda: dict(model="smollm2", bits=3))
    with pytest.raises(UsageError):
        gpu_check.check(step, {})
    step = gpu_check.Step("bad", "rlhf.dpo", lambda: dict(policy="smollm2", no_such_option=1))
    with pytest.raises(UsageError):
        gpu_check.check(step, {})
