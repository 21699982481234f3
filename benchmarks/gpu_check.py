"""Every method end to end on one CUDA GPU at small size, in one table: minutes, not hours.

    python benchmarks/gpu_check.py              # on a machine with a GPU (about 5-8 min on one H100/H200)
    python benchmarks/gpu_check.py --dry-run    # anywhere: lists the steps, imports what they need, checks
                                                # every step's options as the api would (names, types, choices)

Each step calls `llm_magics.api` with the device left to pick (CUDA) and dtype auto (bf16 autocast on cards
that do bf16) and reports wall seconds, peak GPU memory (torch.cuda.max_memory_allocated, reset before each
step) and the step's main metric. A step that fails prints its error in its row and the others go on.

Two figures beside the table:
- LoRA MFU on SmolLM2 (SFT, LoRA r 8 on every linear layer): FLOPs of the training passes counted by
  FlopCounterMode exactly as benchmarks/utilisation.py counts them (frozen weights get no weight-gradient
  GEMM, so about 4N a token: NeMo's convention), over the Result's training seconds, against the card's
  dense bf16 peak (H100/H200 SXM 989 TFLOP/s; --peak-tflops for another card);
- DPO steps/s (LoRA r 16, batch 4, 128 tokens) against TRL's DPOTrainer with its defaults on the same pairs,
  model and LoRA config, in the same run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from utilisation import StepFlops, icl_rows, preference_rows, sft_rows, sst2_rows  # noqa: E402

REQUIRED = ("torch", "transformers", "peft", "trl", "faiss", "datasets", "llm_magics.api")
OPTIONAL = {"bitsandbytes": "QLoRA steps (--bits 4 and 8) are skipped"}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}   # dense bf16
DPO_STEPS, DPO_PAIRS = 12, 48


@dataclass
class Step:
    name: str
    call: str                                  # the api path: "lora", "rlhf.dpo", "index.build"
    kwargs: Callable[[], dict]                 # built when the step runs (or is checked)
    needs: tuple[str, ...] = ()                # optional modules the step needs
    metric: Callable[[object], str] = field(default=lambda result: main_metric(result))


def main_metric(result) -> str:
    metrics = getattr(result, "metrics", None) or {}
    for key in ("test_accuracy", "test_pair_accuracy", "accuracy", "test_margin", "val_loss", "reward_mean",
                "train_loss"):
        if key in metrics:
            return f"{key} {metrics[key]:.3f}"
    return type(result).__name__


def classify_data(rows: int = 256) -> dict:
    return dict(data=sst2_rows(rows), validation=sst2_rows(32, 5000), test=sst2_rows(64, 6000))


def sft_data(rows: int = 256) -> dict:
    return dict(data=sft_rows(rows), validation=sft_rows(16, 5000), task="sft")


def dpo_data() -> dict:
    return dict(data=preference_rows(DPO_PAIRS), validation=preference_rows(8, 5000), test=preference_rows(16, 6000))


def ppo_reward(prompts, completions, **_):
    """A rule reward: the completion says something positive."""
    return [float(any(w in c for w in (" good", " great", " warm", " funny"))) for c in completions]


def ppo_prompts():
    import pandas as pd
    return pd.DataFrame({"prompt": [f"Review: the film {w}" for w in ("was", "felt", "had", "made", "is", "seemed",
                                                                       "left", "gave")]})


def steps(home: Path) -> list[Step]:
    docs = home / "docs"
    lora_sft = dict(model="smollm2", epochs=1, batch_size=16, max_length=128, r=8)
    return [
        Step("probe minilm", "probe", lambda: dict(model="minilm", cache=False, **classify_data(1024))),
        Step("finetune head minilm", "finetune", lambda: dict(model="minilm", train="head", epochs=2,
                                                               **classify_data())),
        Step("finetune all minilm", "finetune", lambda: dict(model="minilm", train="all", epochs=1,
                                                              **classify_data())),
        Step("finetune all smollm2 sft", "finetune", lambda: dict(model="smollm2", train="all", epochs=1,
                                                                   batch_size=16, **sft_data(128))),
        Step("lora smollm2 classify", "lora", lambda: dict(model="smollm2", task="classify", epochs=1,
                                                           **classify_data())),
        Step("lora smollm2 sft (MFU)", "lora", lambda: dict(**lora_sft, **sft_data(512))),
        Step("qlora 4-bit smollm2 sft", "lora", lambda: dict(**lora_sft, bits=4, **sft_data()), ("bitsandbytes",)),
        Step("qlora 8-bit smollm2 sft", "lora", lambda: dict(**lora_sft, bits=8, **sft_data()), ("bitsandbytes",)),
        Step("prefix smollm2 sft", "lora", lambda: dict(model="smollm2", method="prefix", virtual_tokens=20,
                                                         epochs=1, batch_size=16, **sft_data())),
        Step("icl smollm2 scoring", "icl", lambda: dict(model="smollm2", template="Review: {text}\nSentiment: {label}",
                                                        data=icl_rows(128, 7000), demos=icl_rows(64, 8000),
                                                        shots=4, labels="negative,positive")),
        Step("index build minilm", "index.build", lambda: dict(name="gpu-check", source=write_docs(docs),
                                                               replace=True)),
        Step("index query", "index.query", lambda: dict(name="gpu-check", query="a warm and funny film", k=5)),
        Step("rlhf reward minilm", "rlhf.reward", lambda: dict(model="minilm", batch_size=16,
                                                               **dict(dpo_data(), data=preference_rows(256)))),
        Step("rlhf dpo smollm2 lora", "rlhf.dpo", lambda: dict(policy="smollm2", method="lora", steps=DPO_STEPS,
                                                               batch_size=4, max_length=128, **dpo_data())),
        Step("rlhf ppo smollm2 lora", "rlhf.ppo", lambda: dict(policy="smollm2", reward=ppo_reward, method="lora",
                                                               prompts=ppo_prompts(),
                                                               steps=3, batch_size=8, minibatch_size=4,
                                                               max_new_tokens=24)),
    ]


def write_docs(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(sst2_rows(2000)["text"]):
        if i % 200 == 0:
            handle = (folder / f"part{i // 200}.txt").open("w")
        handle.write(text + "\n\n")
    handle.close()
    return str(folder)


def api_function(call: str):
    from llm_magics import api
    target = api
    for part in call.split("."):
        target = getattr(target, part)
    return target


def check(step: Step, available: dict[str, bool]) -> str:
    """The step's keyword arguments make valid options for its method (names, types, choices): what the api
    checks before it runs anything (dry run)."""
    from llm_magics.registry import registry
    from llm_magics.runner import build_options
    api_function(step.call)                       # the api path exists
    method, _, command = step.call.partition(".")
    build_options(registry().load(method), command or None, step.kwargs())
    missing = [m for m in step.needs if not available[m]]
    return f"needs {', '.join(missing)} (missing: skipped)" if missing else "ok"


def imports() -> dict[str, bool]:
    """Import every module the steps use: a required one missing is an error, an optional one is said."""
    for name in REQUIRED:
        importlib.import_module(name)
    available = {}
    for name, consequence in OPTIONAL.items():
        try:
            importlib.import_module(name)
            available[name] = True
        except Exception as exc:   # bitsandbytes raises more than ImportError without CUDA
            print(f"{name} not importable ({type(exc).__name__}): {consequence}")
            available[name] = False
    import trl
    print("imported: " + ", ".join(REQUIRED) + f" (trl {trl.__version__})")
    return available


def run_step(step: Step, available: dict[str, bool]) -> dict:
    import torch
    missing = [m for m in step.needs if not available[m]]
    if missing:
        return {"step": step.name, "status": f"skipped: {', '.join(missing)} missing"}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        result = api_function(step.call)(**step.kwargs())
    except Exception as exc:
        traceback.print_exc()
        return {"step": step.name, "status": f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    return {"step": step.name, "status": "ok", "wall s": f"{time.perf_counter() - start:.1f}",
            "peak GiB": f"{torch.cuda.max_memory_allocated() / 2**30:.2f}",
            "device": getattr(result, "device", "") or "", "dtype": getattr(result, "dtype", "") or "",
            "metric": step.metric(result), "_result": result}


def lora_mfu(step: Step, timed: dict, peak_tflops: float) -> str:
    """Training FLOPs of the same LoRA run, counted again under StepFlops, over the timed run's seconds."""
    result = timed.get("_result")
    if result is None or not result.rows_per_s:
        return "LoRA MFU: not measured (the LoRA step did not run)"
    kwargs = step.kwargs()
    seconds = len(kwargs["data"]) / result.rows_per_s
    with StepFlops(training_only=True) as counter:
        api_function(step.call)(**kwargs)
    flops = counter.get_total_flops()
    return (f"LoRA MFU on smollm2: {flops / 1e12:.2f} TFLOP counted in {seconds:.1f} s of training = "
            f"{flops / seconds / 1e12:.1f} TFLOP/s, {100 * flops / seconds / 1e12 / peak_tflops:.1f}% of "
            f"{peak_tflops:.0f} TFLOP/s ({result.tokens_per_s:,.0f} tokens/s; FLOPs as executed: ~4N/token for "
            f"frozen weights, the NeMo count)")


def trl_dpo_steps_per_s() -> float:
    """TRL's DPOTrainer with its defaults on the same pairs, model and LoRA config (bf16 on the GPU)."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from llm_magics.models import load_tokenizer, resolve
    source = resolve("smollm2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=4, max_steps=DPO_STEPS, max_length=128,
                           learning_rate=5e-4, bf16=True, report_to=[], save_strategy="no", disable_tqdm=True,
                           logging_steps=50)
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        start = time.perf_counter()
        trainer = DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_pandas(dpo_data()["data"]),
                             processing_class=load_tokenizer(source), peft_config=peft)
        trainer.train()
        return DPO_STEPS / (time.perf_counter() - start)


def table(rows: list[dict]) -> str:
    head = ["step", "status", "wall s", "peak GiB", "device", "dtype", "metric"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def card_peak(override: float | None) -> tuple[str, float]:
    import torch
    name = torch.cuda.get_device_name()
    if override:
        return name, override
    found = [tflops for key, tflops in PEAK_TFLOPS.items() if key in name]
    if not found:
        raise SystemExit(f"unknown card {name!r}: pass --peak-tflops (its dense bf16 TFLOP/s)")
    return name, found[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list the steps and check imports, no GPU needed")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 TFLOP/s")
    args = parser.parse_args(argv)
    import os
    with tempfile.TemporaryDirectory() as home:
        # The check's runs, caches and index stay out of yours; converted models are reused from your cache.
        from llm_magics.settings import current, reset
        os.environ.setdefault("LLM_MAGICS_MODELS", str(current().models_path))
        os.environ["LLM_MAGICS_HOME"] = home
        os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
        reset()
        available = imports()
        plan = steps(Path(home))
        if args.dry_run:
            for step in plan:
                print(f"would run: {step.name:28s} api.{step.call:12s} {check(step, available)}")
            print("would run: LoRA MFU (the 'lora smollm2 sft (MFU)' step counted again) and TRL DPOTrainer "
                  f"defaults, {DPO_STEPS} steps, against 'rlhf dpo smollm2 lora'")
            return 0
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f"no CUDA device (torch {torch.__version__}): install the CUDA build of torch "
                             "(benchmarks/README.md, 'GPU check'), or pass --dry-run")
        card, peak = card_peak(args.peak_tflops)
        started = time.perf_counter()
        rows = []
        for step in plan:
            rows.append(run_step(step, available))
            print(f"{step.name}: {rows[-1]['status']} {rows[-1].get('wall s', '')}", flush=True)
        by_name = {r["step"]: r for r in rows}
        mfu_step = next(s for s in plan if s.name.endswith("(MFU)"))
        lines = [lora_mfu(mfu_step, by_name[mfu_step.name], peak)]
        dpo = by_name["rlhf dpo smollm2 lora"].get("_result")
        try:
            trl_rate = trl_dpo_steps_per_s()
            ours = DPO_STEPS / dpo.metrics["train_seconds"] if dpo else float("nan")
            lines.append(f"DPO steps/s: ours {ours:.2f}, TRL DPOTrainer defaults {trl_rate:.2f} "
                         f"({ours / trl_rate:.2f}x)")
        except Exception as exc:
            traceback.print_exc()
            lines.append(f"DPO vs TRL: FAILED {type(exc).__name__}: {exc}")
        print(f"\n{card}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
              f"{time.perf_counter() - started:.0f} s in all\n")
        print(table(rows))
        print("\n".join(lines))
        return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
