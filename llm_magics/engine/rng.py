"""Each run draws its random numbers from its own generator state.

Why a lock and a swap, not a `torch.Generator` per run: dropout, a classification
head's initialisation (`nn.Linear`'s `reset_parameters`) and PEFT's adapter
initialisation all draw from torch's *global* generator — they take no generator
argument. Two runs in one process (two `--bg` runs in one kernel) would interleave
their draws, and neither would reproduce the result it gives alone. So a run keeps
its own generator state (`RunRng`) and swaps it into the global generator, under
one process-wide lock, only around the code that draws: model construction
(`seeded`) and each training forward/backward and evaluation (`RunRng.active`).
Outside those blocks the global generator is the user's; runs neither read nor
move it.

The price: forward/backward passes of concurrent runs take turns (they would
compete for the same cores or device anyway); tokenising, the optimizer step and
checkpointing run outside the lock.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

# Re-entrant: a scope may open inside another (a model built inside a seeded block);
# the inner one saves and restores the outer one's state like any other.
_LOCK = threading.RLock()


def _cuda_index(device) -> int | None:
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def _restored() -> Iterator[None]:
    """The global generators (CPU, and CUDA once initialised) as they were when the block began."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from a generator seeded with `seed` (as `torch.manual_seed(seed)` would) inside the
    block, without another run's draws in between, and leave the global generator as it was."""
    with _LOCK, _restored():
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Draws inside the block (a smoke test's dropout) move no run's state and not the user's."""
    with _LOCK, _restored():
        yield


@contextlib.contextmanager
def constructing() -> Iterator[None]:
    """Load or build a model, one thread at a time. transformers' `from_pretrained` swaps
    process-wide functions while it loads (`PreTrainedModel.tie_weights`, torch.nn.init's
    initialisers) and puts them back after: two threads loading at once put back each other's
    stand-ins, which then stay for good (tied embeddings left on the meta device, initialisers
    that do nothing). Under the RNG lock, so what it initialises draws no run's numbers either."""
    with _LOCK:
        yield


class RunRng:
    """One run's generator state: the CPU generator, and its CUDA device's when it trains on one.

    Starts as `torch.manual_seed(seed)` leaves the global generator, so a run alone draws exactly
    what the serial code drew; checkpoints save and restore it (`state` / `set_state`)."""

    def __init__(self, seed: int, device=None):
        self.cuda_index = _cuda_index(device)
        with seeded(seed):
            self.cpu = torch.get_rng_state()
            self.cuda = torch.cuda.get_rng_state(self.cuda_index) if self.cuda_index is not None else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The global generator is this run's inside the block (and no other run's draws interleave)."""
        with _LOCK:
            saved_cpu = torch.get_rng_state()
            torch.set_rng_state(self.cpu)
            if self.cuda_index is not None:
                saved_cuda = torch.cuda.get_rng_state(self.cuda_index)
                torch.cuda.set_rng_state(self.cuda, self.cuda_index)
            try:
                yield
            finally:
                self.cpu = torch.get_rng_state()
                torch.set_rng_state(saved_cpu)
                if self.cuda_index is not None:
                    self.cuda = torch.cuda.get_rng_state(self.cuda_index)
                    torch.cuda.set_rng_state(saved_cuda, self.cuda_index)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint (safetensors)."""
        tensors = {"__rng_cpu": self.cpu.clone()}
        if self.cuda is not None:
            tensors["__rng_cuda"] = self.cuda.clone()
        return tensors

    def set_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state` saved. A checkpoint from another device type keeps the CPU state;
        older checkpoints named the CUDA states per device (`__rng_cuda_N`)."""
        self.cpu = tensors["__rng_cpu"].to(torch.uint8).clone()
        if self.cuda_index is not None:
            saved = tensors.get("__rng_cuda", tensors.get(f"__rng_cuda_{self.cuda_index}"))
            if saved is not None:
                self.cuda = saved.to(torch.uint8).clone()
