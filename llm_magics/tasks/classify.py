"""Sequence classification as a training task: batches, loss, metrics, prediction.

`TokenTask` trains through the model (any of `--train head|last:N|all`);
`FeatureTask` trains only the head on frozen features extracted once (the
head-only fast path). Both train the same `SequenceClassifier`, so their
checkpoints and Results are interchangeable.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data import TaskData
from ..engine.batching import collate, length_batches, shape_buckets, tokenize
from ..engine.device import compute_dtype_now, eval_mode
from ..engine.limits import fit_max_length


def scores(logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    from sklearn.metrics import f1_score
    predicted = logits.argmax(-1).cpu().numpy()
    gold = labels.cpu().numpy()
    return {f"{prefix}_loss": float(nn.functional.cross_entropy(logits.float(), labels)),
            f"{prefix}_accuracy": float((predicted == gold).mean()),
            f"{prefix}_f1": float(f1_score(gold, predicted, average="macro"))}


@torch.no_grad()
def predict_logits(model, tokenizer, texts: Sequence[str], max_length: int, device: torch.device,
                   max_tokens: int = 4096, ids: list[list[int]] | None = None) -> torch.Tensor:
    """Logits for texts in length-sorted, dynamically padded batches, in the texts' order."""
    ids = ids if ids is not None else tokenize(tokenizer, texts, fit_max_length(max_length, tokenizer, model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = [len(x) for x in ids]
    cap = shape_buckets(lengths, device, compute_dtype_now(model, device))
    out = None
    with eval_mode(model):
        for batch in length_batches(lengths, 256, max_tokens, bucket_cap=cap):
            inputs = {k: v.to(device) for k, v in collate([ids[i] for i in batch], pad, bucket_cap=cap).items()}
            logits = model(**inputs).logits.float().cpu()
            if out is None:
                out = torch.zeros((len(ids), logits.shape[-1]))
            out[torch.as_tensor(batch)] = logits
    return out


class TokenTask:
    """Train through the model on tokenized texts."""

    def __init__(self, data: TaskData, tokenizer, max_length: int, device: torch.device,
                 notes: list[str] | None = None):
        # Beyond the model's positions the first forward pass would fail: clamp now, with a note.
        max_length = fit_max_length(max_length, tokenizer, notes=data.notes if notes is None else notes)
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids = {split: tokenize(tokenizer, frame["text"].tolist(), max_length)
                    for split, frame in data.splits().items()}
        self.labels = {split: torch.tensor(frame["label"].to_numpy()) for split, frame in data.splits().items()}
        self.lengths = [len(x) for x in self.ids["train"]]

    def batch(self, indices: np.ndarray, device: torch.device) -> dict:
        inputs = collate([self.ids["train"][i] for i in indices], self.pad)
        inputs["labels"] = self.labels["train"][torch.as_tensor(indices)]
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        return model(**batch).loss, int(batch["attention_mask"].sum())

    def split_logits(self, model, split: str) -> torch.Tensor:
        return predict_logits(model, self.tokenizer, [], self.max_length, self.device, ids=self.ids[split])

    def split_scores(self, model, split: str) -> dict[str, float]:
        return scores(self.split_logits(model, split), self.labels[split], split)

    def evaluate(self, model) -> dict[str, float]:
        return self.split_scores(model, "val")


class FeatureTask:
    """Head-only: the frozen base ran once; its pooled features feed the head every epoch."""

    def __init__(self, features: dict[str, np.ndarray], data: TaskData, device: torch.device):
        self.x = {split: torch.as_tensor(array, dtype=torch.float32, device=device) for split, array in features.items()}
        self.labels = {split: torch.tensor(frame["label"].to_numpy(), device=device)
                       for split, frame in data.splits().items()}
        self.lengths = [1] * len(self.labels["train"])

    def batch(self, indices: np.ndarray, device: torch.device) -> dict:
        index = torch.as_tensor(indices, device=device)
        return {"x": self.x["train"][index], "labels": self.labels["train"][index]}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        logits = model.head(model.dropout(batch["x"]))
        return nn.functional.cross_entropy(logits, batch["labels"]), 0

    @torch.no_grad()
    def split_logits(self, model, split: str) -> torch.Tensor:
        return model.head(self.x[split])

    def split_scores(self, model, split: str) -> dict[str, float]:
        return scores(self.split_logits(model, split), self.labels[split], split)

    def evaluate(self, model) -> dict[str, float]:
        return self.split_scores(model, "val")
