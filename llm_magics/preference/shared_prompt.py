"""DPO's pair batches with each prompt run once.

TRL's DPOTrainer scores a pair as two whole sequences, prompt+chosen and prompt+rejected, so every prompt token
goes through the model twice per step (and twice more in the reference pass). On preference data the prompt is
most of the tokens (hh_rlhf_harmless at 128 tokens: 115-token prompts, 27/42-token answers). Here each pair is one
row, `prompt · chosen · p · rejected`, where `p` repeats the prompt's last token at its position: an attention mask
lets the chosen tokens see the prompt, and `p` and the rejected tokens see the prompt but its last token, so every
answer token sees exactly the context it has in its own sequence, and a shifted next-token head scores the row as
it is. The log-probs are those of the two whole sequences (tests compare values and gradients); gradients from
both answers meet in the one prompt pass. A row has at most twice the tokens of either sequence, so a batch never
carries more tokens than TRL's, and one pass casts the weights to bf16 once. The head is TRL's chunked log-prob
kernel, given the answer positions alone (off GPU, TRL's own fused head scores every position).

On smollm2 + LoRA, 4 hh_rlhf_harmless pairs a step at 128 tokens, bf16 autocast, CPU: 1.5 s a training step
against 3.0 s for TRL's forward (`benchmarks/rlhf.py --part dpo` measures whole runs).

Both answers must see the same prompt tokens, so the pairs are truncated as older TRL and OpenRLHF did: the
prompt loses its start until the longer answer fits (`fit_pair`), not each sequence on its own. A batch whose rows
do not share their prompts exactly goes to TRL's own forward, so no result rests on the assumption.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch

from ..engine.batching import padded_length

IGNORE = -100
# Logit rescaling some model families apply in their head; the shared path computes plain `lm_head(h)` logits
RESCALED = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
MIN_PROMPT = 8   # prompt tokens kept when an answer alone would fill max_length


def fit_pair(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int | None):
    """(prompt, chosen, rejected) token ids cut to fit `max_length` with one prompt for both answers: the
    prompt's start goes first (the end of a dialogue is what the answers reply to), then, only if an answer alone
    leaves fewer than MIN_PROMPT prompt tokens, the answers' ends."""
    if max_length is None or len(prompt) + max(len(chosen), len(rejected)) <= max_length:
        return prompt, chosen, rejected
    answer_room = max_length - min(len(prompt), MIN_PROMPT, max_length // 2)
    chosen, rejected = chosen[:answer_room], rejected[:answer_room]
    keep = max_length - max(len(chosen), len(rejected))
    return prompt[len(prompt) - keep:] if keep > 0 else [], chosen, rejected


@dataclass
class Pairs:
    """A [chosen rows; rejected rows] batch split into its shared prompts and its answers."""
    prompt_len: torch.Tensor   # (B,) prompt tokens of pair i
    answer_len: torch.Tensor   # (2B,) answer tokens of row r, rows in the batch's order
    input_ids: torch.Tensor    # (2B, L) the batch as given


def split_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> Pairs | None:
    """The batch as pairs sharing their prompts, or None when it is not exactly that: rows i and B+i carry the
    same prompt tokens, then a contiguous answer (labels not -100), then right padding only."""
    rows, length = input_ids.shape
    if rows % 2 or rows == 0:
        return None
    half = rows // 2
    answer = labels != IGNORE
    if not bool(answer.any(1).all()):
        return None
    prompt_len = answer.int().argmax(1)
    answer_len = answer.sum(1)
    position = torch.arange(length, device=input_ids.device)[None]
    expected = (position >= prompt_len[:, None]) & (position < (prompt_len + answer_len)[:, None])
    if not bool((answer == expected).all()) or not bool((prompt_len > 0).all()):
        return None
    if attention_mask is not None and not bool((attention_mask.bool() == (position < (prompt_len + answer_len)
                                                                             [:, None])).all()):
        return None
    if not bool((prompt_len[:half] == prompt_len[half:]).all()):
        return None
    in_prompt = position < prompt_len[:half, None]
    if not bool(((input_ids[:half] == input_ids[half:]) | ~in_prompt).all()):
        return None
    return Pairs(prompt_len[:half], answer_len, input_ids)


PAD, SHARED, CHOSEN, REJECTED = 0, 1, 2, 3   # segments of a packed row


@dataclass
class Packed:
    """Pairs packed one to a row: `prompt · chosen · prompt[-1] · rejected`, right-padded."""
    input_ids: torch.Tensor      # (B, W)
    position_ids: torch.Tensor   # (B, W) each token's position in its own sequence
    labels: torch.Tensor         # (B, W) the answers' tokens, -100 elsewhere
    segment: torch.Tensor        # (B, W) PAD, SHARED (prompt[:-1]), CHOSEN (prompt[-1], chosen), REJECTED
    source: torch.Tensor         # (2B, L-1) where each of TRL's next-token positions is in the flat (B, W-1)
    valid: torch.Tensor          # (2B, L-1) which of them are answer tokens


def pack(pairs: Pairs) -> Packed:
    ids, half = pairs.input_ids, pairs.prompt_len.numel()
    prompt, chosen, rejected = pairs.prompt_len.tolist(), pairs.answer_len[:half].tolist(), \
        pairs.answer_len[half:].tolist()
    # up the training ladder in a run where shapes cost kernel builds: pads take position 0 and see only themselves
    width = padded_length(max(p + c + 1 + r for p, c, r in zip(prompt, chosen, rejected)))
    rows = {name: torch.zeros((half, width), dtype=torch.long) for name in ("ids", "pos", "seg")}
    labels = torch.full((half, width), IGNORE, dtype=torch.long)
    source = torch.zeros((2 * half, ids.size(1) - 1), dtype=torch.long)
    valid = torch.zeros((2 * half, ids.size(1) - 1), dtype=torch.bool)
    host = ids.cpu()
    for i, (p, c, r) in enumerate(zip(prompt, chosen, rejected)):
        row = torch.cat([host[i, :p + c], host[i, p - 1:p], host[half + i, p:p + r]])
        n = row.numel()
        rows["ids"][i, :n] = row
        rows["pos"][i, :n] = torch.cat([torch.arange(p + c), torch.arange(p - 1, p + r)])
        rows["seg"][i, :n] = torch.tensor([SHARED] * (p - 1) + [CHOSEN] * (c + 1) + [REJECTED] * (r + 1))
        labels[i, p:p + c] = row[p:p + c]
        labels[i, p + c + 1:n] = row[p + c + 1:n]
        # TRL's position t predicts token t+1: chosen token j sits at p+j in both layouts, rejected token j at
        # p+j in its sequence and p+c+1+j here
        flat = i * (width - 1)
        source[i, p - 1:p + c - 1] = flat + torch.arange(p - 1, p + c - 1)
        source[half + i, p - 1:p + r - 1] = flat + torch.arange(p + c, p + c + r)
        valid[i, p - 1:p + c - 1] = True
        valid[half + i, p - 1:p + r - 1] = True
    device = ids.device
    return Packed(rows["ids"].to(device), rows["pos"].to(device), labels.to(device), rows["seg"].to(device),
                  source.to(device), valid.to(device))


def attention_mask(packed: Packed, implementation: str, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, 1, W, W): causal, a token sees the shared prompt and its own segment; padding sees only itself (no
    empty row for the softmax). Boolean for SDPA, additive for eager attention; None for any other kernel."""
    seg = packed.segment
    width = seg.size(1)
    causal = torch.ones((width, width), dtype=torch.bool, device=seg.device).tril()
    query, key = seg[:, :, None], seg[:, None, :]
    allowed = causal & (key != PAD) & ((key == SHARED) | (key == query)) & (query != PAD)
    allowed |= torch.eye(width, dtype=torch.bool, device=seg.device)
    if implementation == "sdpa":
        return allowed[:, None]
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]
    return None


def unpack(value: torch.Tensor, packed: Packed) -> torch.Tensor:
    """A (B, W-1) per-token field of the packed rows in TRL's (2B, L-1) layout, zero outside the answers."""
    return value.reshape(-1)[packed.source].masked_fill(~packed.valid, 0)


FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")   # TRL's per-token fields
VOCAB_CHUNK = 32768   # TRL's tile over the vocabulary


def packed_answers(model, packed: Packed, mask: torch.Tensor, fields=("log_probs",)) -> dict:
    """TRL's per-token fields for the answer tokens of the packed rows, in TRL's (2B, L-1) layout. One backbone
    pass; TRL's chunked log-prob kernel over the answer positions alone (TRL's own head scores every position
    off GPU) — the (tokens, vocabulary) logits are never materialised, in the forward or the backward."""
    from trl.kernels import ChunkedLogProbFunction
    states = model.base_model(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                              use_cache=False).last_hidden_state[:, :-1]
    targets = packed.labels[:, 1:]
    keep = targets != IGNORE
    head = model.get_output_embeddings()
    values = ChunkedLogProbFunction.apply(states[keep], head.weight, head.bias, targets[keep], 1.0, VOCAB_CHUNK,
                                          None, 1.0, tuple(fields))
    return {name: None if value is None else unpack(value.new_zeros(keep.shape).masked_scatter(keep, value), packed)
            for name, value in zip(FIELDS, values)}


@torch.no_grad()
def pair_token_logprobs(model, pairs: Pairs) -> torch.Tensor | None:
    """log p of each answer token, in TRL's (2B, L-1) layout, from the packed rows; for scoring (no gradient).
    `model`: a causal LM (a PEFT model's base, whose adapter layers act as they are set). None where the packed
    rows would not score it as it is (`shares_prompts`)."""
    if not shares_prompts(model):
        return None
    packed = pack(pairs)
    return packed_answers(model, packed, attention_mask(packed, model.config._attn_implementation, torch.float32))[
        "log_probs"]


def shares_prompts(model) -> bool:
    """Whether the packed rows score this model as its own forward does: a plain head (no logit rescaling), an
    attention kernel that takes a custom mask, and TRL's public chunked log-prob kernel."""
    config = model.config.get_text_config()
    if any(getattr(config, name, None) not in (None, 1.0) for name in RESCALED):
        return False
    if model.config._attn_implementation not in ("sdpa", "eager"):
        return False
    try:
        from trl.kernels import ChunkedLogProbFunction  # noqa: F401
    except ImportError:
        return False
    return True


def install(model) -> bool:
    """Route TRL's fused-head calls (`model(..., labels=, fused_lm_head=True)`) for pair batches through one
    packed row per pair; every other call, and any batch that is not pairs sharing their prompts, goes to the
    forward TRL installed. `model` is the causal LM TRL patched (a PEFT model's base). False, and nothing
    changed, where the packed rows would not score the model as it is (`shares_prompts`)."""
    if not shares_prompts(model):
        return False
    from trl.trainer.utils import FusedCausalLMOutput
    trl_forward = model.forward
    fields = ("log_probs", "entropy", "mean_logits", "is_top1")

    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        input_ids = kwargs.get("input_ids")
        plain = not args and input_ids is not None and labels is not None and all(
            v is None or v is False or k in ("input_ids", "attention_mask", "use_cache", "return_dict")
            for k, v in kwargs.items())
        pairs = split_pairs(input_ids, kwargs.get("attention_mask"), labels) if fused_lm_head and plain else None
        if pairs is None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        packed = pack(pairs)
        values = packed_answers(self, packed, attention_mask(packed, self.config._attn_implementation, torch.float32),
                                fields)
        loss = -values["log_probs"].sum() / packed.valid.sum().clamp(min=1)
        return FusedCausalLMOutput(loss=loss, label_mask=packed.valid, **values)

    model.forward = types.MethodType(forward, model)
    return True
