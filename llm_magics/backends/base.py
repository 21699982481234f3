"""What every backend offers, and what it reports back."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError


@dataclass
class ScoreTable:
    """Summed log-probabilities [requests, continuations] and the token counts they sum over:
    [continuations] when every request tokenizes a continuation alike, else [requests, continuations].
    `done`: which requests were scored, when a stop cut the call short (None: all of them)."""
    logprobs: np.ndarray
    lengths: np.ndarray
    done: np.ndarray | None = None

    def normalised(self, how: str = "sum") -> np.ndarray:
        return self.logprobs / np.maximum(self.lengths, 1) if how == "mean" else self.logprobs


@dataclass
class GenerateSettings:
    max_tokens: int = 32
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class Usage:
    """Work done, for rows/s and tokens/s."""
    tokens: int = 0           # tokens the model read (prompt tokens not served from a cache)
    generated: int = 0        # tokens the model wrote
    seconds: float = 0.0      # time inside the backend


class Backend:
    name: str = ""            # what the Result shows as the model
    device: str = ""
    dtype: str = ""
    total_params: int = 0

    def __init__(self):
        self.usage = Usage()

    def score(self, requests: Sequence[tuple[str, str]], continuations: Sequence[str],
              progress=None) -> ScoreTable:  # pragma: no cover - interface
        raise NotImplementedError

    def generate(self, requests: Sequence[tuple[str, str]], settings: GenerateSettings,
                 on_text: Callable[[int, str], None] | None = None,
                 progress=None) -> list[str | None]:  # pragma: no cover
        """The answer per request; None for requests left when `progress.should_stop` turned true."""
        raise NotImplementedError

    def chat_text(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The conversation as the model's chat template writes it (for --chat)."""
        raise UsageError(f"--chat needs a local model with a chat template; {self.name} is reached through an API")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the first stop string."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at >= 0:
                cut = min(cut, at)
    return text[:cut]
