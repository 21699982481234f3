"""Which training loop a launched worker runs, by `--strategy`: the one table of strategies → loops.

It sits above both loop modules so neither imports the other (DeepSpeed's loop builds on the data-parallel
one). Importing `deepspeed_loop` does not import DeepSpeed: that happens when its loop starts.
"""
from __future__ import annotations

from .deepspeed_loop import DeepSpeedTrainLoop, DeepSpeedZero2TrainLoop
from .distributed import DistributedTrainLoop, FSDPTrainLoop

LOOPS: dict[str, type[DistributedTrainLoop]] = {
    "ddp": DistributedTrainLoop,
    "fsdp": FSDPTrainLoop,
    "deepspeed": DeepSpeedTrainLoop,
    "deepspeed-zero2": DeepSpeedZero2TrainLoop,
}


def loop_for(strategy: str) -> type[DistributedTrainLoop]:
    """The training loop of a launched worker, by the strategy the kernel resolved (`launch.strategy`). An
    exported job started by torchrun itself keeps `auto` unresolved: it runs DDP, as its record says."""
    return LOOPS["ddp" if strategy == "auto" else strategy]
