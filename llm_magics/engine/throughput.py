"""How much work went through a model, and how fast: what every Result reports."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Throughput:
    rows: int = 0            # rows that went through the model
    tokens: int = 0          # real (unpadded) tokens among them
    seconds: float = 0.0
    backoffs: int = 0        # batches split after an out-of-memory

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.rows and self.seconds else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds else None

    def add(self, other: "Throughput") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
