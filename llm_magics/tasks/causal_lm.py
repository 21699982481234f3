"""Instruction tuning (SFT) as a training task, and generation with the tuned model."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.sft import IGNORE, SftData, chat_prompt, distinct_pad_id, encode
from ..errors import UsageError
from ..engine.batching import length_batches, padded_length
from ..engine.device import eval_mode
from ..engine.generation import complete
from ..engine.limits import fit_max_length


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    longest = padded_length(max(len(ids) for ids, _ in rows))
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.as_tensor(ids)
        labels[i, :len(labs)] = torch.as_tensor(labs)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class SftTask:
    def __init__(self, data: SftData, tokenizer, max_length: int, device: torch.device,
                 notes: list[str] | None = None):
        # Beyond the model's positions the first forward pass would fail: clamp now, with a note.
        max_length = fit_max_length(max_length, tokenizer, notes=data.notes if notes is None else notes)
        self.tokenizer, self.device = tokenizer, device
        self.pad = distinct_pad_id(tokenizer)
        self.rows = {}
        self.dropped = 0
        for split, frame in data.splits().items():
            encoded = [encode(tokenizer, row, max_length) for row in frame.to_dict("records")]
            kept = [(ids, labels) for ids, labels in encoded if any(l != IGNORE for l in labels)]
            self.dropped += len(encoded) - len(kept)
            self.rows[split] = kept
        self.lengths = [len(ids) for ids, _ in self.rows["train"]]

    def batch(self, indices: np.ndarray, device: torch.device) -> dict:
        batch = pad_batch([self.rows["train"][i] for i in indices], self.pad)
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        out = model(**batch)
        return out.loss, int(batch["attention_mask"].sum())

    @torch.no_grad()
    def split_scores(self, model, split: str, max_tokens: int = 8192) -> dict[str, float]:
        """Token-weighted loss over the split's response tokens, and its perplexity."""
        rows = self.rows.get(split) or []
        if not rows:
            return {}
        total, count = 0.0, 0
        with eval_mode(model):
            for batch_index in length_batches([len(ids) for ids, _ in rows], 64, max_tokens):
                rows_in = pad_batch([rows[i] for i in batch_index], self.pad)
                batch = {k: v.to(self.device) for k, v in rows_in.items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                # Prompt-learning adapters prepend virtual tokens: score the real positions only.
                logits = logits[:, logits.shape[1] - batch["input_ids"].shape[1]:]
                shifted = batch["labels"][:, 1:]
                loss = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                   shifted.reshape(-1), ignore_index=IGNORE, reduction="sum")
                total += float(loss)
                count += int((shifted != IGNORE).sum())
        mean = total / max(count, 1)
        return {f"{split}_loss": mean, f"{split}_perplexity": float(np.exp(min(mean, 50)))}

    def evaluate(self, model) -> dict[str, float]:
        return self.split_scores(model, "val")


def require_decoder(loaded, source) -> None:
    if loaded.kind != "decoder":
        raise UsageError(f"--task sft needs a decoder (causal LM); {source.name} is an {loaded.kind}, "
                         "e.g. use --model smollm2")


def sft_task(data, tokenizer, o, device, notes: list[str]) -> SftTask:
    """The SFT task, saying how many rows were dropped; UsageError when none is left."""
    task = SftTask(data, tokenizer, o.max_length, device, notes=notes)
    if task.dropped:
        notes.append(f"{task.dropped} rows dropped: no response token left within --max-length")
    if not task.rows["train"]:
        raise UsageError("no training row has a response within --max-length; raise --max-length")
    return task


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str] | str, max_new_tokens: int = 64, **kwargs) -> list[str] | str:
    """Answers to prompts, rendered with the chat template the model was tuned with; greedy by default."""
    single = isinstance(prompts, str)
    texts = [chat_prompt(tokenizer, p) for p in ([prompts] if single else prompts)]
    kwargs.setdefault("do_sample", False)
    answers = complete(model, tokenizer, texts, max_new_tokens, pad_token_id=distinct_pad_id(tokenizer),
                       encode_kwargs={"add_special_tokens": not getattr(tokenizer, "chat_template", None)}, **kwargs)
    answers = [a.strip() for a in answers]
    return answers[0] if single else answers
