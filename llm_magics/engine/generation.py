"""Left-pad → generate → decode: the one way every path continues prompts (`%lora` answers, `%rlhf` policies,
PPO rollouts, `%rlhf collect`). Generation continues from the right edge of each row, so prompts of different
lengths are padded on the left; the tokenizer's own padding side is restored afterwards."""
from __future__ import annotations

from typing import Sequence

import torch

from .device import eval_mode


def encode_left(tokenizer, texts: Sequence[str], device: torch.device, **encode_kwargs):
    """The prompts as one left-padded batch on `device`."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(list(texts), return_tensors="pt", padding=True, **encode_kwargs).to(device)
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def generate_ids(model, tokenizer, texts: Sequence[str], max_new_tokens: int, *, pad_token_id=None,
                 eos_token_id=None, encode_kwargs: dict | None = None, **generate_kwargs):
    """(the encoded prompts, the generated ids: prompt and continuation) in eval mode."""
    device = next(model.parameters()).device
    enc = encode_left(tokenizer, texts, device, **(encode_kwargs or {}))
    pad = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    with eval_mode(model):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                             **generate_kwargs)
    return enc, out


def complete(model, tokenizer, prompts: Sequence[str] | str, max_new_tokens: int, **kwargs) -> list[str] | str:
    """The continuations of the prompts as text (one string for one prompt); kwargs go to `generate_ids`."""
    single = isinstance(prompts, str)
    enc, out = generate_ids(model, tokenizer, [prompts] if single else list(prompts), max_new_tokens, **kwargs)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts[0] if single else texts
