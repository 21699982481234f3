"""`%finetune` against transformers.Trainer: same model, data, layers frozen, batch size.

    python benchmarks/finetune_vs_trainer.py [--rows 4000] [--all-rows 2000] [--device cpu]

1. Head only, 3 epochs: ours runs the frozen base once (features, the %probe
   cache) and trains the head on them; Trainer runs the frozen base every
   step. Goal on CPU: ≥ 5× faster at equal accuracy (± 0.01).
2. All layers, 1 epoch: training tokens/s (real, unpadded tokens over training
   time). Goal on CPU: ≥ 1.3× Trainer's.

Both sides train the same mean-pooled `SequenceClassifier` (the architecture
%finetune uses), so accuracy differences come from the training, not the head;
Trainer's own AutoModelForSequenceClassification (a [CLS] pooler head) is shown
for reference. Every contender runs in its own subprocess, so each peak
memory is its own.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared")) / "data" / "sst2"
LR = {"head": 5e-3, "all": 5e-5}


def load(rows: int):
    import pandas as pd
    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE).sample(rows, random_state=0)
    test = pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    return train.rename(columns={"sentence": "text"}), test.rename(columns={"sentence": "text"})


def ours(train_mode: str, rows: int, epochs: int, device: str) -> dict:
    from llm_magics import api
    train, test = load(rows)
    started = time.perf_counter()  # from the DataFrame to test accuracy, model load included
    result = api.finetune(model="minilm", data=train, test=test, train=train_mode, epochs=epochs,
                          lr=LR[train_mode], batch_size=32, device=device, dtype="float32" if train_mode == "all"
                          else "auto")
    return {"seconds": time.perf_counter() - started, "accuracy": result.metrics["test_accuracy"],
            "tokens_per_s": result.tokens_per_s, "peak_mb": result.peak_mem_bytes / 2**20,
            "train_seconds": None}


def trainer(train_mode: str, rows: int, epochs: int, device: str, hf_head: bool = False) -> dict:
    import numpy as np
    from datasets import Dataset
    from transformers import (AutoModel, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    from llm_magics.data import prepare_classification
    from llm_magics.engine.device import MemoryMonitor
    from llm_magics.models import resolve
    from llm_magics.models.classifier import SequenceClassifier
    train, test = load(rows)
    started = time.perf_counter()  # like ours: from the DataFrame to test accuracy, model load included
    task = prepare_classification(train, test=test, seed=0)  # the same split %finetune makes
    path = resolve("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    if hf_head:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        head_names = ("classifier.",)
    else:
        model = TrainerClassifier(SequenceClassifier(AutoModel.from_pretrained(path), 2, "mean"))
        head_names = ("inner.head.",)
    if train_mode == "head":
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head_names)

    def encode(frame):
        ds = Dataset.from_pandas(frame[["text", "label"]].rename(columns={"label": "labels"}))
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=256), batched=True,
                      remove_columns=["text"])

    train_ds, test_ds = encode(task.train), encode(task.test)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, per_device_eval_batch_size=64,
                                 num_train_epochs=epochs, learning_rate=LR[train_mode], warmup_steps=0.06,
                                 weight_decay=0.01, lr_scheduler_type="linear", save_strategy="no",
                                 eval_strategy="no", report_to="none", logging_steps=10**6, seed=0,
                                 use_cpu=device == "cpu", dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                          data_collator=DataCollatorWithPadding(tokenizer))
        with MemoryMonitor(torch.device(device)) as memory:
            stats = trainer.train()
            predictions = trainer.predict(test_ds)
        seconds = time.perf_counter() - started
    logits = predictions.predictions[0] if isinstance(predictions.predictions, tuple) else predictions.predictions
    accuracy = float((np.argmax(logits, -1) == predictions.label_ids).mean())
    tokens = sum(len(x) for x in train_ds["input_ids"]) * epochs
    return {"seconds": seconds, "accuracy": accuracy, "train_seconds": stats.metrics["train_runtime"],
            "tokens_per_s": tokens / stats.metrics["train_runtime"], "peak_mb": memory.peak_bytes / 2**20}


class TrainerClassifier(torch.nn.Module):
    """Trainer wants a dict with `loss`; inside is the same SequenceClassifier %finetune trains."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, labels=None, **_):
        out = self.inner(input_ids, attention_mask, labels)
        return {"logits": out.logits} if labels is None else {"loss": out.loss, "logits": out.logits}


def contender(name: str, args) -> dict:
    mode, rows, epochs = ("head", args.rows, 3) if name.endswith("head") else ("all", args.all_rows, 1)
    if name.startswith("ours"):
        return ours(mode, rows, epochs, args.device)
    return trainer(mode, rows, epochs, args.device, hf_head=name.startswith("hf"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4000, help="training rows for the head-only comparison")
    parser.add_argument("--all-rows", type=int, default=2000, help="training rows for the all-layers comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
        print("RESULT " + json.dumps(contender(args.contender, args)))
        return 0
    home = tempfile.mkdtemp(prefix="llm-magics-bench-")  # a cold feature cache for ours
    results = {}
    for name in ("trainer-head", "ours-head", "hf-head", "trainer-all", "ours-all"):
        env = {**os.environ, "LLM_MAGICS_HOME": os.path.join(home, name)}
        done = subprocess.run([sys.executable, __file__, "--contender", name, "--rows", str(args.rows),
                               "--all-rows", str(args.all_rows), "--device", args.device],
                              capture_output=True, text=True, env=env)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        results[name] = json.loads(line[0][7:])
        r = results[name]
        print(f"{name:13} {r['seconds']:8.1f} s  accuracy {r['accuracy']:.4f}  "
              f"tokens/s {r['tokens_per_s'] or 0:8.0f}  peak {r['peak_mb']:7.0f} MiB", flush=True)
    th, oh = results["trainer-head"], results["ours-head"]
    ta, oa = results["trainer-all"], results["ours-all"]
    speed, gap = th["seconds"] / oh["seconds"], oh["accuracy"] - th["accuracy"]
    ratio = oa["tokens_per_s"] / ta["tokens_per_s"]
    print(f"\nhead only, 3 epochs, {args.rows} rows: {speed:.1f}× faster than Trainer (goal ≥ 5×), "
          f"accuracy {oh['accuracy']:.4f} vs {th['accuracy']:.4f} ({gap:+.4f}; goal within ±0.01), "
          f"peak {oh['peak_mb']:.0f} vs {th['peak_mb']:.0f} MiB")
    print(f"all layers, 1 epoch, {args.all_rows} rows: {ratio:.2f}× Trainer's tokens/s (goal ≥ 1.3×), "
          f"peak {oa['peak_mb']:.0f} vs {ta['peak_mb']:.0f} MiB; accuracy {oa['accuracy']:.4f} vs {ta['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
