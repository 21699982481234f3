"""A reward model from preference pairs, trained on our engine.

The model is the project's `SequenceClassifier` with one output (mean-pooled for encoders,
last token for decoders — the pooling sentence encoders such as MiniLM were trained for),
and the loss is Bradley–Terry on pairs: −log σ(r(chosen) − r(rejected)), as in InstructGPT
and TRL's RewardTrainer. Differences from RewardTrainer that matter here:

- pairs longer than `max_length` are truncated from the left (HH pairs share a long prefix and
  differ only in the last turn, which must survive), never dropped;
- chosen and rejected go through the model as one batch (one forward, one backward);
- any tokenizer works (BERT's has no EOS, which RewardTrainer needs).

`--train full|head` or any PEFT tuner (`lora`, `dora`, …): a tuner is merged into the weights
when training ends, so the saved reward model is a plain classifier folder that
`load_reward(run_id or folder)` (methods/rlhf/results.py) reads back after a kernel restart.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.batching import collate, length_batches
from ..engine.device import eval_mode
from ..errors import UsageError
from ..models.classifier import SequenceClassifier, is_saved_classifier
from .data import PreferenceData

REWARD_FOLDER = "reward_model"
META = "llm_magics_reward.json"


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with the tokenizer's special tokens, truncated from the left (the end is kept)."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def fix_score_bias(model: nn.Module) -> int:
    """Hold the score head's bias at zero, untrained; returns how many biases it fixed.

    The Bradley–Terry loss sees only r(chosen) − r(rejected), so a constant added to every score changes
    nothing: the head's bias gets a gradient of float noise alone (the two halves of a pair cancel), and
    AdamW, which divides by that gradient's own running size, turns the noise into full learning-rate steps
    — two otherwise identical runs then differ by a random constant in `.score()`. We follow OpenRLHF, whose
    reward model's `value_head` is `nn.Linear(hidden_size, 1, bias=False)`, and transformers' decoder
    classifiers that TRL's RewardTrainer trains (`score = nn.Linear(..., bias=False)`); TRL keeps the bias of
    an encoder's classifier and trains it, which is the drift above. Zero rather than a dropped bias keeps
    the saved head's format (`SequenceClassifier`) as every classifier folder has it. Call it after
    whatever sets `requires_grad` (`trainable.apply`, `get_peft_model`): a PEFT `modules_to_save` copy of
    the head is a Linear of its own, fixed likewise."""
    fixed = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == 1 and module.bias is not None and \
                "head" in name.split("."):
            with torch.no_grad():
                module.bias.zero_()
            module.bias.requires_grad_(False)
            fixed += 1
    return fixed


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(r_c − r_r), averaged over pairs."""
    return -nn.functional.logsigmoid(chosen.float() - rejected.float()).mean()


@torch.no_grad()
def rewards(model, ids: list[list[int]], pad: int, device: torch.device, max_tokens: int = 4096) -> torch.Tensor:
    """One scalar per sequence, in the given order (length-sorted batches inside)."""
    out = torch.zeros(len(ids))
    with eval_mode(model):
        for batch in length_batches([len(x) for x in ids], 128, max_tokens):
            inputs = {k: v.to(device) for k, v in collate([ids[i] for i in batch], pad).items()}
            out[torch.as_tensor(batch)] = model(**inputs).logits[:, 0].float().cpu()
    return out


def pair_accuracy(margin: torch.Tensor) -> float:
    """The share of pairs whose chosen answer scores higher; a tie counts half (a model that cannot tell the two
    apart, such as a DPO policy still equal to its reference, is at chance, 0.5)."""
    return float((margin > 0).float().mean() + 0.5 * (margin == 0).float().mean())


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, prefix: str) -> dict[str, float]:
    margin = chosen - rejected
    return {f"{prefix}_loss": float(bradley_terry(chosen, rejected)), f"{prefix}_accuracy": pair_accuracy(margin),
            f"{prefix}_margin": float(margin.mean())}


def pair_predictions(frame, chosen: torch.Tensor, rejected: torch.Tensor):
    """One row per held-out pair (runs/predictions.py), keyed by the pair's whole text (prompt, chosen, rejected), so
    two runs scoring the same pairs pair up in `%llm compare --paired` (a reward model's scores, or a DPO policy's
    implicit rewards): the prediction is the answer ranked higher, its score σ(margin), `correct` 1 when that is
    the chosen one (0.5 for a tie, as `pair_accuracy` counts it)."""
    from ..runs import predictions
    texts = [f"{p}\n[chosen] {c}\n[rejected] {r}" for p, c, r in
             zip(frame["prompt"].fillna("").astype(str), frame["chosen"], frame["rejected"])]
    margin = (chosen - rejected).float().cpu()
    guess = ["chosen" if m > 0 else "rejected" if m < 0 else "tie" for m in margin.tolist()]
    kept = predictions.per_item(texts, ["chosen"] * len(texts), guess, torch.sigmoid(margin).tolist())
    kept.loc[kept["prediction"] == "tie", "correct"] = 0.5
    return kept


def with_tuner(model: SequenceClassifier, o, steps: int, model_path, seed: int) -> nn.Module:
    """`model` wrapped with the PEFT tuner `--train` names (`%lora`'s config for it; the score head trains
    beside it as modules_to_save), its bias fixed at zero; the adapter drawn from the run's seed."""
    from peft import get_peft_model

    from ..adapters.configs import AdapterSpec, build_config
    from ..engine.rng import seeded
    spec = AdapterSpec(**{**AdapterSpec.from_options(o).__dict__, "method": o.train})
    config = build_config(spec, model, None, steps, model_path, modules_to_save=["head"])
    with seeded(seed):
        peft = get_peft_model(model, config)
    fix_score_bias(peft)   # the head's trained copy included
    return peft


class PairTask:
    """TrainTask for the engine: batches of pairs, chosen rows first, rejected rows after."""

    def __init__(self, data: PreferenceData, tokenizer, max_length: int, device: torch.device):
        self.tokenizer, self.device = tokenizer, device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids: dict[str, tuple[list, list]] = {}
        for split, frame in data.splits().items():
            prompts = frame["prompt"].fillna("").astype(str).tolist()
            chosen = encode(tokenizer, [p + c for p, c in zip(prompts, frame["chosen"])], max_length)
            rejected = encode(tokenizer, [p + r for p, r in zip(prompts, frame["rejected"])], max_length)
            self.ids[split] = (chosen, rejected)
        chosen, rejected = self.ids["train"]
        self.lengths = [max(len(c), len(r)) for c, r in zip(chosen, rejected)]

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, Any]:
        chosen, rejected = self.ids["train"]
        rows = [chosen[i] for i in indices] + [rejected[i] for i in indices]
        return {k: v.to(device, non_blocking=True) for k, v in collate(rows, self.pad).items()}

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        scores = model(**batch).logits[:, 0]
        half = scores.shape[0] // 2
        return bradley_terry(scores[:half], scores[half:]), int(batch["attention_mask"].sum())

    def split_rewards(self, model, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The rewards of a split's chosen and of its rejected answers, pair by pair."""
        chosen, rejected = self.ids[split]
        scores = rewards(model, chosen + rejected, self.pad, self.device)
        return scores[:len(chosen)], scores[len(chosen):]

    def split_scores(self, model, split: str) -> dict[str, float]:
        if not self.ids[split][0]:
            return {}
        return pair_metrics(*self.split_rewards(model, split), split)

    def scored_test(self, model, frame) -> tuple[dict[str, float], Any]:
        """The held-out pairs' metrics and per-pair predictions (`pair_predictions`); ({}, None) without them."""
        if not self.ids["test"][0]:
            return {}, None
        chosen, rejected = self.split_rewards(model, "test")
        return pair_metrics(chosen, rejected, "test"), pair_predictions(frame, chosen, rejected)

    def evaluate(self, model) -> dict[str, float]:
        return self.split_scores(model, "val")


def save_folder(model: SequenceClassifier, tokenizer, folder: Path, max_length: int, origin: dict) -> Path:
    model.save(folder, tokenizer, ["reward"])
    (folder / META).write_text(json.dumps({"max_length": max_length, **origin}, indent=2))
    return folder


def load_folder(folder: Path, device: torch.device | None = None):
    from transformers import AutoTokenizer
    model, _ = SequenceClassifier.load(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    meta = json.loads((folder / META).read_text()) if (folder / META).exists() else {}
    return model.to(device or torch.device("cpu")), tokenizer, meta


def find_reward_folder(ref: str | Path, settings=None) -> tuple[Path, dict | None]:
    """(the saved reward model's folder, its run record or None) from a run id (in the run store) or a folder."""
    from ..runs import RunStore
    from ..settings import current
    settings = settings or current()
    folder = Path(str(ref)).expanduser()
    row = None
    if not folder.is_dir():
        row = RunStore(settings.runs_path).get(str(ref))
        path = (row or {}).get("artifacts", {}).get("reward_model") if row else None
        if not path:
            raise UsageError(f"{ref!r} is neither a reward-model folder nor the run id of a %rlhf reward run")
        folder = Path(path)
    if (folder / REWARD_FOLDER).is_dir():
        folder = folder / REWARD_FOLDER
    if not is_saved_classifier(folder):
        raise UsageError(f"{folder} holds no saved reward model (written by %rlhf reward)")
    return folder, row
