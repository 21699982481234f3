"""The run store and the comparison of recorded runs."""
from .compare import Comparison, compare
from .store import RunStore

__all__ = ["RunStore", "Comparison", "compare"]
