"""Device and dtype choice, and memory measurement.

CUDA, then MPS, then CPU. bf16 where the hardware does it natively: CUDA
cards from Ampere on, and for inference CPUs with AVX512-BF16 or AMX (about
1.8× the fp32 speed on MiniLM features, cosine ≥ 0.9998 to fp32). Training on
CPU stays fp32: bf16 weights would lose small updates.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

import psutil
import torch

from ..errors import UsageError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(preference: str | None = None) -> torch.device:
    """`auto` (or None) picks CUDA → MPS → CPU; an explicit name must exist."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise UsageError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {preference!r} asked for, but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {preference!r} does not exist; this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not _mps_available():
        raise UsageError(f"device {preference!r} asked for, but MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {preference!r}; use auto, cpu, cuda or mps")
    return device


def visible_devices() -> tuple[int, str]:
    """How many worker processes `--devices` may start here, and what they are: one per visible CUDA device,
    or on a CPU one per core this process may run on."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA devices"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, "CPU cores"


def cores_note(devices: int) -> str | None:
    """On a CPU, more workers than physical cores share cores (hyper-threads): slower per worker, said once."""
    physical = None if torch.cuda.is_available() else psutil.cpu_count(logical=False)
    if physical and devices > physical:
        return f"--devices {devices} is above this machine's {physical} physical cores: the workers share them"
    return None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run faster than fp32 instead of being emulated."""
    flags = set(_cpuinfo("flags").split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def pick_dtype(device: torch.device, preference: str | None = None, training: bool = False) -> torch.dtype:
    """bf16 on CUDA cards that support it, fp16 on MPS and older cards; on CPU bf16 for
    inference where native, else fp32."""
    if preference and preference != "auto":
        if preference not in DTYPES:
            raise UsageError(f"unknown dtype {preference!r}; use auto, float32, bfloat16 or float16")
        return DTYPES[preference]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if not training and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def builds_kernels_per_shape(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether each new matmul shape costs a kernel build: oneDNN's bf16/fp16 GEMMs on a CPU are built for the
    shape they first meet (about 7 ms each on 2 AMX cores, against 1.4 ms to run a 1,000-token layer), and
    cached by shape. Inference batches there are cut to a few shapes (`batching.bucketed`), training batches
    pad up a coarser ladder (`batching.few_training_shapes`); fp32 (MKL) and CUDA build nothing per shape."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def compute_dtype_now(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """What `model`'s matmuls compute in here and now: autocast's dtype while it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def train_dtype(device: torch.device, option: str | None = None,
                frozen: torch.dtype | None = None) -> torch.dtype | None:
    """The dtype a training run computes in under autocast (None: fp32), one rule for every trainer.

    CUDA: `pick_dtype`'s choice (bf16 where the card does it, else fp16; `--dtype float32`: none).
    CPU and MPS: bf16 only when asked (`--dtype bfloat16`: native on CPUs with AVX512-BF16/AMX), fp32
    otherwise (bf16 weights would lose small updates; autocast keeps the weights fp32). float16 needs
    CUDA's loss scaling, so it is refused elsewhere.
    `frozen`: the dtype a frozen base was loaded in (adapters). A bf16 base (`pick_dtype`'s choice for a
    frozen CPU model) computes under bf16 autocast unless --dtype float32 was asked: the adapters keep fp32
    weights, and their inputs and outputs no longer go to fp32 and back at every layer."""
    if frozen == torch.bfloat16 and option in (None, "auto") and device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        dtype = pick_dtype(device, option, training=True)
        return None if dtype == torch.float32 else dtype
    asked = pick_dtype(device, option, training=True) if option not in (None, "auto") else None
    if asked == torch.float16:
        raise UsageError(f"--dtype {option} trains on CUDA only (it needs loss scaling); on {device.type} use "
                         "--dtype bfloat16 or auto (fp32)")
    return torch.bfloat16 if asked == torch.bfloat16 else None


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """Autocast to a run's `train_dtype` around forward passes (no-op for None: fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def compute_dtype(weights: torch.dtype, autocast: torch.dtype | None) -> tuple[str, list[str]]:
    """What a training Result reports as its dtype: what the forward passes computed in, and a note
    when that is autocast over weights kept in another dtype."""
    if autocast is None or autocast == weights:
        return dtype_name(weights), []
    return dtype_name(autocast), [f"computed in {dtype_name(autocast)} (autocast); the trained weights stay "
                                  f"{dtype_name(weights)}"]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def device_info(device: torch.device | None = None) -> dict:
    """What `%llm` shows: device, default dtype, free and total memory."""
    device = device or pick_device()
    info = {"device": str(device), "dtype": dtype_name(pick_dtype(device)),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(name=torch.cuda.get_device_name(device), free_bytes=free, total_bytes=total,
                    devices=torch.cuda.device_count())
    else:
        mem = psutil.virtual_memory()
        info.update(name=_cpu_name() if device.type == "cpu" else "Apple MPS",
                    free_bytes=mem.available, total_bytes=mem.total, cores=os.cpu_count())
    return info


def _cpu_name() -> str:
    import platform
    return _cpuinfo("model name") or platform.processor() or "CPU"


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _mps_available():
        torch.mps.empty_cache()


_cuda_monitors: list = []
_cuda_monitors_lock = threading.Lock()


@dataclass(eq=False)
class MemoryMonitor:
    """Peak memory during a block: CUDA's allocator peak on a GPU, else peak RSS.

    RSS is sampled from a daemon thread (every 20 ms), since the kernel only
    keeps a process-lifetime high-water mark. Both are process-wide: runs that
    overlap (`--bg`) report their common peak, and CUDA's counter is reset only
    when no other run is measuring, so one run never erases another's peak.
    """
    device: torch.device | None = None
    interval: float = 0.02
    peak_bytes: int = 0

    def __enter__(self):
        self._cuda = self.device is not None and self.device.type == "cuda"
        if self._cuda:
            with _cuda_monitors_lock:
                if not _cuda_monitors:
                    torch.cuda.reset_peak_memory_stats(self.device)
                _cuda_monitors.append(self)
            return self
        self._proc = psutil.Process()
        self.peak_bytes = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="llm-magics-mem")
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        if self._cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            with _cuda_monitors_lock:
                _cuda_monitors.remove(self)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
        return False


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode for a block, then each module's own mode back.

    `model.train(previous)` would be wrong: it would switch a frozen base's
    dropout on too, and a cached model must never extract features in train mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
