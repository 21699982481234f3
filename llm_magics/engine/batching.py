"""Length-sorted batches with dynamic padding, and OOM back-off.

Tokenize once without padding, sort by length, cut batches under a token
budget, pad each batch only to its own longest row, move it to the device
batch by batch. On short, uneven texts (SST-2 phrases) that is most of the
speed-up over padding the whole dataset to its longest text.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

import numpy as np
import torch

from .device import builds_kernels_per_shape


def tokenize(tokenizer, texts: Sequence[str], max_length: int, add_special_tokens: bool = True) -> list[list[int]]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        add_special_tokens=add_special_tokens, return_attention_mask=False)
    return encoded["input_ids"]


# Rungs per doubling of the padded length in training batches where each new shape costs kernel builds. A
# training step builds about 20 GEMMs a new length (forward, input gradients, the adapters' products): 2-14 ms
# each on 2 AMX cores, against ~1 ms to run one. Eight rungs (inference's) left ~25 lengths in an SST-2 epoch and
# did not pay; four (at most 1/4 more tokens) took `%lora` MiniLM bf16 from 1,695 to 2,005 tokens/s (medians,
# 2,000 rows, alternating cold runs) and its peak RSS from 1.5 to 1.3 GiB (fewer cached kernels and buffers).
TRAINING_RUNGS = 4
_training_cap: ContextVar[int | None] = ContextVar("llm_magics_training_cap", default=None)


def bucketed(length: int, cap: int, rungs: int = 8) -> int:
    """`length` rounded up a ladder of `rungs` steps per doubling (eight: …, 14, 15, 16, 18, …, 30, 32, 36, …),
    at most 1/rungs more and never past `cap`: batches cut to one bucket share one shape."""
    step = 1 << max(0, length.bit_length() - rungs.bit_length())
    return max(length, min(-(-length // step) * step, cap))


@contextlib.contextmanager
def few_training_shapes(model: torch.nn.Module, device: torch.device, autocast: torch.dtype | None,
                        cap: int) -> Iterator[int | None]:
    """Inside the block (one training run's thread), batches padded without a bucket of their own (`collate`,
    `padded_length`) go up a ladder of `TRAINING_RUNGS` lengths per doubling, never past `cap` (the run's
    longest row), where the matmuls (autocast's dtype, else the weights') cost kernel builds for each new shape
    (`device.builds_kernels_per_shape`); elsewhere each batch stays at its own longest row. Padding is masked,
    so losses and gradients do not change."""
    first = next(model.parameters(), None)
    computes_in = autocast or (first.dtype if first is not None else torch.float32)
    cap = (cap or None) if builds_kernels_per_shape(device, computes_in) else None
    token = _training_cap.set(cap)
    try:
        yield cap
    finally:
        _training_cap.reset(token)


def padded_length(longest: int, bucket_cap: int | None = None) -> int:
    """The length a batch whose longest row is `longest` pads to: `bucketed` up to `bucket_cap` when given,
    else up the training ladder inside `few_training_shapes`, else `longest`."""
    if bucket_cap:
        return bucketed(longest, bucket_cap)
    cap = _training_cap.get()
    return bucketed(longest, cap, TRAINING_RUNGS) if cap else longest


def shape_buckets(lengths: Sequence[int], device: torch.device, dtype: torch.dtype) -> int | None:
    """The `bucket_cap` for inference batches of `lengths` (the longest row: padding never goes past what the
    model already takes), where each new shape costs a kernel build (`device.builds_kernels_per_shape`); None
    elsewhere. Measured on `%probe` MiniLM bf16, 2,000 SST-2 rows, 2 AMX cores, three alternating cold runs:
    oneDNN built 167 kernels instead of 203 (336 ms against 541) and extraction ran 1.38x the rows/s (median)."""
    if not builds_kernels_per_shape(device, dtype):
        return None
    return max(lengths, default=0) or None


def length_batches(lengths: Sequence[int], max_batch: int, max_tokens: int,
                   longest_first: bool = True, bucket_cap: int | None = None) -> list[np.ndarray]:
    """Index arrays, each a batch whose padded size (rows × longest) stays under max_tokens.

    Longest first, so that an out-of-memory shows up on the first batch. With `bucket_cap` the padded length
    is `bucketed` (collate's `bucket_cap`, the same cap): every full batch of one bucket has the same shape.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    if longest_first:
        order = order[::-1]
    batches, current, longest = [], [], 0
    for index in order:
        length = int(lengths[index])
        grown = max(longest, length)
        padded = bucketed(grown, bucket_cap) if bucket_cap else grown
        if current and (len(current) >= max_batch or padded * (len(current) + 1) > max_tokens):
            batches.append(np.asarray(current))
            current, grown = [], length
        current.append(index)
        longest = grown
    if current:
        batches.append(np.asarray(current))
    return batches


def collate(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
            bucket_cap: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest row (`padded_length`: bucketed up to `bucket_cap`, or inside a training run
    where shapes cost builds)."""
    longest = padded_length(max(len(r) for r in rows), bucket_cap)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        if side == "right":
            ids[i, :n] = torch.as_tensor(row)
            mask[i, :n] = 1
        else:
            ids[i, longest - n:] = torch.as_tensor(row)
            mask[i, longest - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def with_oom_backoff(batches: list[np.ndarray], run: Callable[[np.ndarray], None],
                     on_backoff: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Run each batch; on out-of-memory, split it in halves and retry, saying so once per halving.

    Yields each batch (or half) after it ran, for progress accounting.
    """
    queue = list(batches)[::-1]
    while queue:
        batch = queue.pop()
        try:
            run(batch)
        except Exception as exc:
            if not is_oom(exc) or len(batch) == 1:
                raise
            from .device import empty_cache
            empty_cache()
            half = len(batch) // 2
            if on_backoff:
                on_backoff(half)
            queue += [batch[half:], batch[:half]]
            continue
        yield batch


def grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                    group: bool = True, mega: int = 50) -> list[np.ndarray]:
    """One epoch's training batches: shuffled, and (when `group`) of similar lengths.

    Rows are shuffled, cut into mega-batches of `mega` batches, sorted by
    length inside each, split into batches, and the batch order shuffled,
    with the longest batch first so an out-of-memory shows up at once.
    Deterministic for a given generator state: resuming replays the same plan.
    """
    order = rng.permutation(len(lengths))
    if not group:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    batches = []
    for start in range(0, len(order), batch_size * mega):
        chunk = order[start:start + batch_size * mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    longest = int(np.argmax([lengths[b].max() for b in batches]))
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches
