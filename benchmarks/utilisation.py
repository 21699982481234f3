"""How close each workload comes to this machine's own limits, measured in one run on the same threads.

    python benchmarks/utilisation.py [--quick] [--threads N] [--results benchmarks/results]

Limits: GEMM GFLOP/s in fp32 and bf16 at the shapes the embedded models use (MiniLM: hidden 384, ffn 1536;
SmolLM2-135M: hidden 576, ffn 1536; tokens = batch x seq), and memory bandwidth (STREAM-like read, copy and
triad in torch, arrays twice the last-level cache or more).

Workloads: real steps through `llm_magics.api` on the embedded models at tiny sizes (SST-2 rows from
../shared/data/sst2, synthetic text when it is absent). Each runs three times with the same data and seed:
  1. plain, first (cold, as a user's first run: kernels are built for its shapes): the busy seconds the Result
     reports (training steps, feature extraction, backend scoring time; model loading and evaluation excluded).
     Neither the profiler's nor the counter's cost per operation is in them: decode's thousand small operations
     a token took 41.7 ms a token under the profiler against 37.2 ms plain (medians of 3 alternating, 2026-12-06);
  2. under torch.profiler (CPU): the top 5 operations by self CPU time;
  3. under FlopCounterMode: the FLOPs of the same steps. For training workloads only the training passes
     count: ops run with grad enabled or inside backward (evaluation and scoring run under no_grad).
The counter counts what executes: a frozen weight gets no weight-gradient GEMM, so LoRA (and every frozen
block) counts about 4N FLOPs a token (2N forward, 2N input gradients) instead of 6N: NeMo's convention
for LoRA MFU, by construction. Padding is executed, so it is counted: FLOP/tok/N above 6 (full) or 4
(LoRA) is mostly padding. Achieved GFLOP/s = counted FLOPs / busy seconds; its share is against the GEMM
peak of the dtype the workload computed in (the best of that model's shapes).

Decode (generation) is reproduced in the script: greedy `generate` with the KV cache on SmolLM2 as the
runs load it, batch 1; every step reads all weights once, so weight bytes x tokens/s is set against the
measured bandwidth (the KV cache is small at these lengths and is not counted).

The table is printed and written to <results>/utilisation-<host>-<cpu>.md with the machine's description (one
host name can stand for different CPUs from one session to the next); a run with --only is appended to that
file as a section of its own (the full run's table stays).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import os
import platform
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared")) / "data" / "sst2"
MODEL_SHAPES = {"minilm": (384, 1536), "smollm2": (576, 1536)}   # hidden, ffn


# ---------------------------------------------------------------- limits

def best_seconds(fn: Callable[[], object], budget_s: float) -> float:
    """The fastest of repeated calls (at least 10, about `budget_s`, after one warm-up): on a shared machine
    the fastest is the one least disturbed by other jobs."""
    fn()
    best, spent, calls = float("inf"), 0.0, 0
    while spent < budget_s or calls < 10:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent, calls = min(best, took), spent + took, calls + 1
    return best


def gemm_gflops(tokens: int, k: int, n: int, dtype: torch.dtype, budget_s: float) -> float:
    a, b = torch.randn(tokens, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * tokens * k * n / best_seconds(lambda: torch.mm(a, b), budget_s) / 1e9


def gemm_limits(tokens: int, budget_s: float) -> tuple[dict, list[dict]]:
    """Per model and dtype, the best GFLOP/s over its linear layers' shapes (and every shape measured)."""
    peaks, rows = {}, []
    for model, (hidden, ffn) in MODEL_SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            for k, n in ((hidden, ffn), (ffn, hidden), (hidden, hidden)):
                rate = gemm_gflops(tokens, k, n, dtype, budget_s)
                rows.append({"model": model, "dtype": dtype_name(dtype), "shape": f"{tokens}x{k} @ {k}x{n}",
                             "gflops": rate})
                key = (model, dtype_name(dtype))
                peaks[key] = max(peaks.get(key, 0.0), rate)
    return peaks, rows


def last_level_cache_bytes() -> int:
    """The largest CPU cache (Linux sysfs), 64 MiB where it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = entry.read_text().strip()
            sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[text[-1]])
    return max(sizes, default=64 << 20)


def stream_elements(elements: int) -> int:
    """fp32 elements of each STREAM array: `elements`, or twice the last-level cache where that is more."""
    return max(elements, 2 * last_level_cache_bytes() // 4)


def bandwidth(elements: int, budget_s: float) -> dict[str, float]:
    """STREAM-like read (a sum), copy (2 arrays touched) and triad (3) in fp32, GB/s. Each array is at least
    twice the last-level cache: some CPUs carry hundreds of MiB of L3, and an array that fits measures the
    cache (a 300 MiB L3 read 128 MiB arrays at twice the memory's rate)."""
    elements = stream_elements(elements)
    a, b, c = (torch.rand(elements) for _ in range(3))
    read = best_seconds(lambda: a.sum(), budget_s)
    copy = best_seconds(lambda: b.copy_(a), budget_s)
    triad = best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), budget_s)
    return {"read": 4 * elements / read / 1e9, "copy": 2 * 4 * elements / copy / 1e9,
            "triad": 3 * 4 * elements / triad / 1e9}


def bandwidth_text(bw: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate:.1f} GB/s" for name, rate in bw.items())


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------- data

def sst2_rows(n: int, offset: int = 0):
    """SST-2 training sentences (text, label), or synthetic reviews when ../shared is absent."""
    import pandas as pd
    if (SST2 / "train.tsv").exists():
        frame = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE)
        frame = frame[frame["sentence"].str.split().str.len() >= 4]
        return frame.rename(columns={"sentence": "text"}).iloc[offset:offset + n].reset_index(drop=True)
    good, bad = ["warm", "funny", "moving", "sharp"], ["dull", "tired", "clumsy", "flat"]
    rows = [{"text": f"a {(good if i % 2 else bad)[i % 4]} film with a {(good if i % 2 else bad)[(i // 2) % 4]} "
                     f"cast and a story number {i + offset}", "label": i % 2} for i in range(n)]
    return pd.DataFrame(rows)


def sft_rows(n: int, offset: int = 0):
    frame = sst2_rows(n, offset)
    return frame.assign(prompt="Review: " + frame["text"] + "\nSentiment:",
                        response=frame["label"].map({0: " negative", 1: " positive"}))[["prompt", "response"]]


def preference_rows(n: int, offset: int = 0):
    import pandas as pd
    frame = sst2_rows(4 * n, offset)
    good, bad = frame[frame["label"] == 1]["text"].tolist(), frame[frame["label"] == 0]["text"].tolist()
    count = min(n, len(good), len(bad))
    return pd.DataFrame({"prompt": ["Write a positive movie review:"] * count,
                         "chosen": [" " + t for t in good[:count]], "rejected": [" " + t for t in bad[:count]]})


def icl_rows(n: int, offset: int = 0):
    frame = sst2_rows(n, offset)
    return frame.assign(label=frame["label"].map({0: "negative", 1: "positive"}))


# ---------------------------------------------------------------- workloads

@dataclass
class Measured:
    seconds: float                 # busy seconds of the counted steps
    dtype: str                     # what the steps computed in
    tokens: int | None = None      # real tokens in those seconds
    weight_bytes: int | None = None    # decode: bytes of weights read per step


@dataclass
class Workload:
    name: str
    model: str
    kind: str                              # train | infer | decode
    run: Callable[[], Measured]
    note: str = ""
    result: dict = field(default_factory=dict)


def trained(result, rows: int) -> Measured:
    """A training Result's busy time: rows trained over its rows/s (optimizer steps, evaluation excluded)."""
    seconds = rows / result.rows_per_s
    tokens = round(result.tokens_per_s * seconds) if result.tokens_per_s else None
    return Measured(seconds, result.dtype, tokens)


def workloads(size: dict, home: Path) -> list[Workload]:
    from llm_magics import api
    rows, lm_rows, pairs = size["rows"], size["lm_rows"], size["pairs"]
    common = dict(epochs=1, seed=0, max_length=64)
    val, test = sst2_rows(4, 5000), sst2_rows(4, 6000)

    def probe():
        result = api.probe(model="minilm", data=sst2_rows(rows - len(test)), test=test, cache=False, max_length=64)
        seconds = rows / result.rows_per_s
        return Measured(seconds, result.dtype, round(result.tokens_per_s * seconds) if result.tokens_per_s else None)

    def finetune(train: str, model: str = "minilm", dtype: str = "auto"):
        def run():
            result = api.finetune(model=model, data=sst2_rows(rows), validation=val, test=test, train=train,
                                  batch_size=16, dtype=dtype, **common)
            return trained(result, rows)
        return run

    def lora_classify():
        result = api.lora(model="minilm", data=sst2_rows(rows), validation=val, test=test, task="classify",
                          batch_size=16, dtype="bfloat16", **common)
        return trained(result, rows)

    def lora_sft():
        result = api.lora(model="smollm2", data=sft_rows(lm_rows), validation=sft_rows(2, 5000), task="sft",
                          batch_size=8, dtype="bfloat16", **common)
        return trained(result, lm_rows)

    def dpo():
        result = api.rlhf.dpo(policy="smollm2", data=preference_rows(pairs), validation=preference_rows(2, 5000),
                              method="lora", batch_size=4, max_length=64, seed=0)
        return Measured(result.metrics["train_seconds"], result.dtype or "float32")

    def reward():
        result = api.rlhf.reward(model="minilm", data=preference_rows(rows), validation=preference_rows(4, 5000),
                                 batch_size=8, **common)
        return trained(result, len(preference_rows(rows)))

    def icl():
        queries = icl_rows(lm_rows, 7000)
        result = api.icl(model="smollm2", template="Review: {text}\nSentiment: {label}", data=queries,
                         demos=icl_rows(16, 8000), shots=2, labels="negative,positive", zero_shot=False)
        seconds = len(queries) / result.rows_per_s
        tokens = round(result.tokens_per_s * seconds) if result.tokens_per_s else None
        return Measured(seconds, result.dtype, tokens)

    def decode():
        return generate_tokens(size["new_tokens"])

    return [
        Workload("probe features", "minilm", "infer", probe, "feature extraction (no cache)"),
        Workload("finetune head", "minilm", "train", finetune("head"),
                 "trains on cached features: the base ran in extraction, not counted here"),
        Workload("finetune last:1", "minilm", "train", finetune("last:1")),
        Workload("finetune all", "minilm", "train", finetune("all")),
        Workload("finetune all bf16", "minilm", "train", finetune("all", dtype="bfloat16")),
        Workload("LoRA classify bf16", "minilm", "train", lora_classify),
        Workload("LoRA SFT bf16", "smollm2", "train", lora_sft),
        Workload("DPO (LoRA)", "smollm2", "train", dpo, "TRL trainer; train_seconds includes the reference "
                                                        "pass, which the counter leaves out (no_grad)"),
        Workload("reward model", "minilm", "train", reward),
        Workload("ICL label scoring", "smollm2", "infer", icl, "calibration queries included"),
        Workload("generation (decode)", "smollm2", "decode", decode, "reproduced: HF generate, batch 1, greedy"),
    ]


@functools.cache
def linear_params(alias: str) -> int:
    """N for FLOP/tok/N: the weights of the model's linear layers (SmolLM2's tied LM head included), the
    ones every token multiplies; embeddings (half of MiniLM's parameters) are lookups."""
    from transformers import AutoModel, AutoModelForCausalLM

    from llm_magics.models import resolve
    loader = AutoModelForCausalLM if alias == "smollm2" else AutoModel
    model = loader.from_pretrained(resolve(alias).path)
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "pooler" not in name)


@functools.cache
def smollm2_for_generation():
    """SmolLM2 as the runs load it on a CPU (fp32), warmed up once outside the measured steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_magics.models import resolve
    path = resolve("smollm2").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=2, do_sample=False,
                       pad_token_id=tokenizer.eos_token_id)
    return model, tokenizer


def generate_tokens(new_tokens: int) -> Measured:
    model, tokenizer = smollm2_for_generation()
    inputs = tokenizer("Review: a warm, funny film about", return_tensors="pt")
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        seconds = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return Measured(seconds, dtype_name(next(model.parameters()).dtype), out.shape[1] - inputs["input_ids"].shape[1],
                    weights)


# ---------------------------------------------------------------- counting and profiling

class StepFlops(FlopCounterMode):
    """FlopCounterMode that, for training, counts only the training passes: ops run with grad enabled or
    inside backward (evaluation, scoring and feature extraction run under no_grad)."""

    def __init__(self, training_only: bool):
        super().__init__(display=False)
        self.training_only = training_only

    def _count_flops(self, func_packet, out, args, kwargs):
        if self.training_only and not (torch.is_grad_enabled() or torch._C._current_autograd_node() is not None):
            return out
        return super()._count_flops(func_packet, out, args, kwargs)


def top_ops(profile, count: int = 5) -> str:
    events = [e for e in profile.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return ", ".join(f"{e.key.replace('aten::', '')} {100 * e.self_cpu_time_total / total:.0f}%"
                     for e in events[:count])


def measure(workload: Workload) -> None:
    """Timed plain and cold, then profiled, then counted (the module's docstring says why in that order)."""
    from torch.profiler import ProfilerActivity, profile
    measured = workload.run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        workload.run()
    with StepFlops(training_only=workload.kind == "train") as counter:
        workload.run()
    workload.result = {"measured": measured, "flops": counter.get_total_flops(), "top": top_ops(prof)}


# ---------------------------------------------------------------- the table

def row(workload: Workload, peaks: dict, bw: dict) -> dict:
    m, flops = workload.result["measured"], workload.result["flops"]
    achieved = flops / m.seconds / 1e9
    peak = peaks.get((workload.model, m.dtype))
    out = {"workload": workload.name, "model": workload.model, "dtype": m.dtype, "busy s": f"{m.seconds:.2f}",
           "GFLOP": f"{flops / 1e9:.1f}", "GFLOP/s": f"{achieved:.1f}",
           "% GEMM peak": f"{100 * achieved / peak:.0f}%" if peak else "-",
           "FLOP/tok/N": f"{flops / m.tokens / linear_params(workload.model):.1f}" if m.tokens else "-",
           "GB/s (% bw)": "-", "top 5 ops by self CPU": workload.result["top"]}
    if m.weight_bytes:
        rate = m.weight_bytes * m.tokens / m.seconds / 1e9
        out["GB/s (% bw)"] = f"{rate:.1f} ({100 * rate / max(bw.values()):.0f}%), {m.tokens / m.seconds:.1f} tok/s"
    return out


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_slug() -> str:
    """The CPU's model name for a file name: "Intel(R) Xeon(R) Processor" → intel-xeon-processor."""
    name = re.sub(r"\((R|TM)\)", "", cpu_model(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                return " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    return ""


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"- CPU: {cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores\n"
            f"- torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}\n"
            f"- load average at start: {load[0]:.2f} (other jobs running: the machine is shared)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter timings")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for utilisation-<host>-<cpu>.md")
    parser.add_argument("--only", default=None, help="comma-separated workload names to run (default: all)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = (dict(rows=24, lm_rows=8, pairs=8, new_tokens=16, tokens=256, budget=0.15, elements=2**24)
            if args.quick else
            dict(rows=256, lm_rows=48, pairs=32, new_tokens=32, tokens=512, budget=0.4, elements=2**25))
    described = machine()
    print(described, flush=True)
    with tempfile.TemporaryDirectory() as home:
        # Runs and caches of this benchmark stay out of yours; converted models are reused from your cache.
        from llm_magics.settings import current, reset
        os.environ.setdefault("LLM_MAGICS_MODELS", str(current().models_path))
        os.environ["LLM_MAGICS_HOME"] = home
        reset()
        os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
        started = time.perf_counter()
        peaks, gemm_rows = gemm_limits(size["tokens"], size["budget"])
        bw = bandwidth(size["elements"], size["budget"] * 3)
        print(markdown([{**r, "gflops": f"{r['gflops']:.1f}"} for r in gemm_rows]), flush=True)
        print(f"bandwidth: {bandwidth_text(bw)}", flush=True)
        chosen = workloads(size, Path(home))
        if args.only:
            names = {n.strip() for n in args.only.split(",")}
            unknown = names - {w.name for w in chosen}
            if unknown:
                raise SystemExit(f"--only: no workload named {', '.join(sorted(unknown))}; the names: "
                                 + ", ".join(w.name for w in chosen))
            chosen = [w for w in chosen if w.name in names]
        for workload in chosen:
            measure(workload)
            print(f"{workload.name}: {workload.result['top']}", flush=True)
        # Measured again after the workloads; the better of the two is the limit (other jobs only slow it).
        peaks_end, gemm_end = gemm_limits(size["tokens"], size["budget"])
        bw_end = bandwidth(size["elements"], size["budget"] * 3)
        peaks = {k: max(v, peaks_end[k]) for k, v in peaks.items()}
        gemm_rows = [{**a, "gflops": max(a["gflops"], b["gflops"])} for a, b in zip(gemm_rows, gemm_end)]
        bw = {k: max(v, bw_end[k]) for k, v in bw.items()}
        table = [row(workload, peaks, bw) for workload in chosen]
        elapsed = time.perf_counter() - started
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report = "\n\n".join([
        f"# Utilisation on {socket.gethostname()} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        described + f"\n- load average at end: {load_end:.2f}; whole run {elapsed:.0f} s"
        + (" (--quick)" if args.quick else ""),
        "## Limits (same run, same threads; the better of a measurement before and after the workloads)\n\n"
        + markdown([{**r, "gflops": f"{r['gflops']:.1f}"} for r in gemm_rows])
        + f"\n\nMemory bandwidth (fp32, {stream_elements(size['elements']) * 4 >> 20} MiB "
          f"arrays, last-level cache {last_level_cache_bytes() >> 20} MiB): {bandwidth_text(bw)}",
        "## Workloads\n\n" + markdown(table),
        "## Notes\n\n" + "\n".join(f"- {w.name}: {w.note}" for w in chosen if w.note) + "\n"
        + "- " + " ".join(__doc__.split("\n\n")[2:4]).replace("\n", " "),
    ])
    print("\n" + markdown(table))
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"utilisation-{socket.gethostname()}-{cpu_slug()}.md"
    if args.only and path.exists():   # a partial run is added below the full one's table, never in its place
        path.write_text(path.read_text().rstrip() + "\n\n" + demoted(report, f"--only {args.only}") + "\n")
        print(f"appended to: {path}")
    else:
        path.write_text(report + "\n")
        print(f"written: {path}")


def demoted(report: str, label: str) -> str:
    """`report` one heading level down, its title naming the partial run."""
    lines = ["#" + line if line.startswith("#") else line for line in report.splitlines()]
    lines[0] = lines[0].replace("## Utilisation on", f"## Partial run ({label}): utilisation on", 1)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
