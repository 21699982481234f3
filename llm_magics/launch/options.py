"""The options every training method takes to run past one device, declared once here.

`--devices N` above 1 (or `--nodes` above 1) sends the run to `torchrun` workers
(`llm_magics.launch`); with the defaults nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..options import option, positive

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed", "deepspeed-zero2")


def _node_rank(value) -> str | None:
    if value is not None and not (isinstance(value, int) and value >= 0):
        return f"is this machine's index among --nodes (0 … nodes-1), got {value!r}"
    return None


@dataclass
class LaunchOptions:
    devices: int = option(1, "processes on this machine (one per GPU; CPU processes without one); above 1 the run "
                             "goes to torchrun workers and streams back here", check=positive)
    strategy: str = option("auto", "how the workers share the model: ddp (a copy each) or fsdp (sharded, a "
                                   "transformer block per unit); auto: ddp, or fsdp when training would not fit one "
                                   "GPU; deepspeed (ZeRO-3) and deepspeed-zero2 need DeepSpeed (the deepspeed extra)",
                           choices=STRATEGIES)
    nodes: int = option(1, "machines taking part (each runs the same cell with its own --node-rank)", check=positive)
    node_rank: int = option(0, "this machine's index among --nodes", check=_node_rank)
    master_addr: str | None = option(None, "address of node 0 when --nodes is above 1", metavar="HOST")
    # No validate() here: a bundle's validate() would shadow the method's own in the MRO;
    # check_launch() runs when the launcher starts.


def check_launch(o) -> None:
    if o.node_rank >= o.nodes:
        raise UsageError(f"--node-rank {o.node_rank} is not below --nodes {o.nodes}: number the machines 0 … "
                         f"{o.nodes - 1}")
    if o.nodes > 1 and not o.master_addr:
        raise UsageError(f"--nodes {o.nodes} needs --master-addr (the address of node 0, which every node reaches)")


def launched(o) -> bool:
    """True when these options ask for workers (and we are not one already)."""
    import os
    if os.environ.get("LLM_MAGICS_WORKER"):
        return False
    return getattr(o, "devices", 1) > 1 or getattr(o, "nodes", 1) > 1

