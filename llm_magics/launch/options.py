"""What the launcher checks of a run's launch options before it starts anything.

The options themselves (`--devices`, `--strategy`, `--nodes`, `--node-rank`, `--master-addr`) are declared
once, in the contract layer: `llm_magics.common_options.LaunchOptions`. Here they are read as plain
attributes, so the launcher needs nothing from above it.
"""
from __future__ import annotations

import os

from ..errors import UsageError


def check_launch(o) -> None:
    if o.node_rank >= o.nodes:
        raise UsageError(f"--node-rank {o.node_rank} is not below --nodes {o.nodes}: number the machines 0 … "
                         f"{o.nodes - 1}")
    if o.nodes > 1 and not o.master_addr:
        raise UsageError(f"--nodes {o.nodes} needs --master-addr (the address of node 0, which every node reaches)")


def launched(o) -> bool:
    """True when these options ask for workers (and we are not one already)."""
    if os.environ.get("LLM_MAGICS_WORKER"):
        return False
    return getattr(o, "devices", 1) > 1 or getattr(o, "nodes", 1) > 1
