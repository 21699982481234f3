"""Which strategy a launched run uses, decided in the kernel before anything is written.

`--strategy ddp|fsdp` is taken as asked. `--strategy deepspeed|deepspeed-zero2` (ZeRO-3/2) is
taken when DeepSpeed is installed (the `deepspeed` extra; engine/deepspeed_loop.py drives it inside
the workers' loop) and refused in one line naming the extra, before anything is written, when not.

Without `--strategy` (auto): DDP, unless the model's training state would not fit one device —
fp32 weights, their gradients and AdamW's two moments, about 16 bytes a parameter — then FSDP,
which holds 1/N of it on each of N devices. On CUDA a device's memory is its total memory, read
with `nvidia-smi` (the kernel initialises no CUDA); on a CPU there is no such bound, and DDP is
used. The parameter count comes from the model's safetensors headers (nothing is loaded). The
note says which was chosen and why.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

from ..errors import UsageError

BYTES_PER_PARAM = 16   # fp32 weight 4 + gradient 4 + AdamW's exp_avg 4 and exp_avg_sq 4
ZERO_STAGE = {"deepspeed": 3, "deepspeed-zero2": 2}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def decide(params: int | None, device_memory: int | None, devices: int) -> tuple[str, str]:
    """(strategy, why) for `--strategy auto`: pure, for any sizes (bytes; None: unknown)."""
    if device_memory is None:
        return "ddp", "strategy ddp (auto: no GPU, so no device memory to outgrow; every worker holds the model)"
    if params is None:
        return "ddp", ("strategy ddp (auto: the model's size is unknown before it loads; --strategy fsdp shards it "
                       "if it does not fit)")
    need = params * BYTES_PER_PARAM
    if need <= device_memory:
        return "ddp", (f"strategy ddp (auto: {params / 1e6:.0f}M parameters need about {_gib(need)} to train, which "
                       f"fits one device's {_gib(device_memory)}; every worker holds the model)")
    return "fsdp", (f"strategy fsdp (auto: {params / 1e6:.0f}M parameters need about {_gib(need)} to train "
                    f"— weights, gradients and AdamW's moments — more than one device's {_gib(device_memory)}; "
                    f"sharded over {devices}, about {_gib(need / devices)} each)")


def cuda_memory() -> int | None:
    """The smallest total memory of this machine's GPUs (bytes), or None without one. Asks nvidia-smi:
    the kernel must not initialise CUDA (its workers would then be refused the devices' memory)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        sizes = [int(float(line.strip())) * 2**20 for line in out.splitlines() if line.strip()]
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return min(sizes) if sizes else None


def count_params(folder: str | Path) -> int | None:
    """Parameters in a local model folder, from its safetensors headers (nothing loaded); None if
    there are none to read."""
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if not files:
        return None
    total = 0
    try:
        for path in files:
            with open(path, "rb") as handle:
                size = struct.unpack("<Q", handle.read(8))[0]
                header = json.loads(handle.read(size))
            for name, entry in header.items():
                if name != "__metadata__":
                    count = 1
                    for dim in entry["shape"]:
                        count *= int(dim)
                    total += count
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total


def choose_strategy(o, source=None, memory=cuda_memory) -> tuple[str, str]:
    """(strategy, the one-line note saying which and why) for options `o`. `source`: the model's
    ModelSource, or a function returning it (resolved only when its size is needed)."""
    asked = getattr(o, "strategy", "auto")
    if asked in ZERO_STAGE:
        from ..engine.deepspeed_loop import EXTRA, available
        if not available():
            raise UsageError(f"--strategy {asked} needs DeepSpeed, which is not installed: {EXTRA} (or --strategy "
                             f"fsdp, which shards weights, gradients and optimizer state as ZeRO-3 does)")
        what = ("weights, gradients and AdamW's moments" if ZERO_STAGE[asked] == 3
                else "gradients and AdamW's moments (each worker holds the whole weights)")
        return asked, f"strategy {asked} (asked for): DeepSpeed ZeRO stage {ZERO_STAGE[asked]} partitions {what}"
    if asked == "fsdp":
        return "fsdp", ("strategy fsdp (asked for): each worker holds 1/N of every weight, gradient and optimizer "
                        "state, a transformer block per unit")
    if asked == "ddp":
        return "ddp", "strategy ddp (asked for): every worker holds the model and a slice of each batch"
    device = getattr(o, "device", None)
    available = None if (device or "").startswith(("cpu", "mps")) else memory()
    params = None
    if available is not None and source is not None:
        source = source() if callable(source) else source
        params = count_params(source.path) if getattr(source, "local", False) else None
    return decide(params, available, max(int(getattr(o, "devices", 1)), 1))
