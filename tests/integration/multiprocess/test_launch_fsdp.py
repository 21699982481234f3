"""`--devices 2 --strategy fsdp`: real torchrun workers on the CPU (gloo), FSDP2 over tiny models.

Tolerance: with the same global batch and seed, a 2-process FSDP run's validation loss stays
within 0.005 of the 1-process run's at every evaluation. Measured on this machine (the runs
below, each also run with --strategy ddp beside them): tiny BERT trained whole,
dropout off: FSDP 6.0e-8 from one process (DDP 4.4e-11); dropout on (each rank draws masks for
its own slice): 1.4e-3 for both, FSDP 6.0e-8 from DDP; LoRA on the tiny llama (sft, dropout off):
3.8e-6 for both, FSDP identical to DDP.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from llm_magics import api

from tests.integration.multiprocess.test_launch_multiprocess import (  # noqa: F401
    TOLERANCE, no_leftovers, run_processes, assert_adapter_holds_trained_weights, stopped_one_process_run, val_losses,
    wait_for)

pytestmark = pytest.mark.multiprocess


def test_fsdp_finetune_follows_one_process(bert_without_dropout, separable, store, home, tmp_path):
    frame, pos, _ = separable
    # Dropout off: each rank draws masks for its own slice, and AdamW turns that into weights 0.008 apart
    # after 6 steps (DDP's run lands on the very same weights as FSDP's: the difference is dropout's)
    args = dict(model=str(bert_without_dropout), data=frame.head(160), train="all", lr=1e-3, epochs=2,
                batch_size=16, eval_every=3, dtype="float32", seed=0, head_dropout=0.0)
    one = api.finetune(**args)
    two = api.finetune(devices=2, strategy="fsdp", **args)
    assert len(val_losses(one)) == len(val_losses(two)) >= 5
    assert np.abs(val_losses(one) - val_losses(two)).max() < TOLERANCE, (val_losses(one), val_losses(two))
    assert two.status == "ok" and two.metrics["steps"] == one.metrics["steps"]
    assert abs(two.metrics["test_loss"] - one.metrics["test_loss"]) < TOLERANCE
    assert two.device == "cpu ×2 (fsdp)" and "trained on 2 processes (fsdp)" in " ".join(two.notes)
    assert "strategy fsdp (asked for)" in " ".join(two.notes)
    # rank 0 gathered the whole model: the kernel's copy, rebuilt from it, is the one-process run's model
    texts = frame["text"].head(8).tolist()
    assert np.allclose(two.logits(texts).numpy(), one.logits(texts).numpy(), atol=1e-3)
    assert store.get(two.run_id)["metrics"]["val_loss"] == pytest.approx(two.metrics["val_loss"])
    assert "FSDP units: 2 × BertLayer, the head, the root (the rest)" in two.notes
    # exported, the job runs FSDP again, and accelerate's config names the block it wrapped
    from llm_magics.jobs.export import export
    job = export(two.run_id, tmp_path / "job")
    assert json.loads((job / "job.json").read_text())["options"]["strategy"] == "fsdp"
    config = yaml.safe_load((job / "accelerate.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["num_processes"] == 2
    assert config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
    assert "accelerate launch --config_file accelerate.yaml train.py" in (job / "README.md").read_text()
    # ... and accelerate launches it from a shell with that file: FSDP again, the notebook run's metrics
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
                           "accelerate.yaml", "train.py"], cwd=job,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)),   # torchrun's log folder
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [r for r in store.list() if r.get("artifacts", {}).get("job") == str(job)]
    assert len(rows) == 1 and rows[0]["device"] == "cpu ×2 (fsdp)"
    for key in ("val_loss", "test_loss", "train_loss"):
        assert rows[0]["metrics"][key] == pytest.approx(two.metrics[key], abs=1e-5), key


def test_an_adapter_saved_under_fsdp_holds_the_trained_weights(tiny_llama, sft_rows):
    """The known failure elsewhere: a LoRA adapter saved from a sharded model comes out empty."""
    args = dict(model=str(tiny_llama), data=sft_rows, task="sft", lr=1e-2, dropout=0.0, epochs=2, batch_size=8,
                eval_every=3, dtype="float32", seed=0)
    one = api.lora(name="one", **args)
    two = api.lora(name="two", devices=2, strategy="fsdp", **args)
    assert two.device == "cpu ×2 (fsdp)" and "trained on 2 processes (fsdp)" in " ".join(two.notes)
    assert np.abs(val_losses(one) - val_losses(two)).max() < TOLERANCE, (val_losses(one), val_losses(two))
    assert val_losses(two)[-1] < val_losses(two)[0] - 0.1
    assert_adapter_holds_trained_weights(two, one, "two", tiny_llama)


def test_stop_and_resume_cross_between_one_process_and_fsdp(tiny_bert, separable):
    """FSDP reads and writes checkpoints in the one-process format: a one-process run stopped resumes
    under FSDP, which stopped in turn resumes in one process, and ends where one run would have."""
    frame, _, _ = separable
    args = dict(model=str(tiny_bert), data=frame.head(200), train="all", lr=1e-3, epochs=3, batch_size=16,
                dtype="float32")
    first = stopped_one_process_run(args)
    handle = api.finetune(resume=first.run_id, devices=2, strategy="fsdp", bg=True, **args)
    wait_for(handle, first.metrics["steps"] + 2)   # the view counts from the checkpoint's step, as the worker
    handle.stop()
    second = handle.result(timeout=60)
    assert second.status == "stopped" and second.device == "cpu ×2 (fsdp)"
    assert handle.progress.state.done == second.metrics["steps"]
    assert first.metrics["steps"] < second.metrics["steps"] < handle.progress.state.total
    assert run_processes() == []
    whole = api.finetune(**args)
    last = api.finetune(resume=second.run_id, **args)
    assert last.status == "ok" and last.metrics["steps"] == whole.metrics["steps"]
    # Twice the straight runs' tolerance: the steps taken under FSDP (its own reduction order) depend on when the
    # Stop lands, and the gap grows with them (0.0053 measured in a full CI run on 2 cores). The step count above
    # checks that it continued rather than restarted.
    assert np.abs(val_losses(whole) - val_losses(last)).max() < 2 * TOLERANCE, (val_losses(whole), val_losses(last))


UNSHARD = """import os, sys, torch, torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import AutoModel
from llm_magics.engine.distributed import gather_whole, shard, unshard_in_place
from llm_magics.models.classifier import SequenceClassifier
dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:" + sys.argv[2])
torch.manual_seed(0)
model = SequenceClassifier(AutoModel.from_pretrained(sys.argv[1]), 2, "mean", 0.0)
ids, mask = torch.randint(5, 60, (3, 9)), torch.ones(3, 9, dtype=torch.long)
shard(model)
assert all(isinstance(p, DTensor) for p in model.parameters())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
model(ids, mask, labels=torch.tensor([0, 1, 0])).loss.backward()
optimizer.step()
with torch.no_grad():
    sharded = model(ids, mask).logits
unshard_in_place(model, gather_whole(model), torch.device("cpu"))
dist.destroy_process_group()
assert not any(isinstance(p, DTensor) for p in model.parameters())
assert not any(type(m).__name__.startswith("FSDP") for m in model.modules())
assert not any(m._forward_pre_hooks or m._forward_hooks or m._state_dict_pre_hooks or m._load_state_dict_pre_hooks
               or m._load_state_dict_post_hooks for m in model.modules())
model.load_state_dict(model.state_dict())   # no FSDP hook puts shards back
assert not any(isinstance(p, DTensor) for p in model.parameters())
with torch.no_grad():
    plain = model(ids, mask).logits   # no process group left: a plain module
assert torch.allclose(plain, sharded), (plain - sharded).abs().max()
print("OK")
"""


def test_fsdp_comes_off_the_model_which_is_then_plain(tiny_bert):
    """What rank 0 does when training ends: gather the whole weights, take FSDP off; the method then
    has the plain module a one-process run ends with (no DTensor, no FSDP class or hook)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-c", UNSHARD, str(tiny_bert), str(port)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
