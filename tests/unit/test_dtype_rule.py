"""One `--dtype` rule for every trainer (engine.device.train_dtype): on a CPU, `--dtype bfloat16` trains under
bf16 autocast in `%finetune`, `%lora` and every `%rlhf` trainer, and each reports it the same way; `auto` is fp32
where every weight trains, bf16 for a frozen base on a CPU that does it natively; float16 is refused in one line."""
import random

import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.engine.device import dtype_name, pick_dtype, train_dtype
from llm_magics.errors import UsageError

GREEK = ["Review: alpha", "Review: beta", "Review: gamma", "Review: delta"]


def pairs(pos, neg, n=40):
    rng = random.Random(0)
    make = lambda words: " " + " ".join(rng.choice(words) for _ in range(4))  # noqa: E731
    return pd.DataFrame([{"prompt": "Review:", "chosen": make(pos), "rejected": make(neg)} for _ in range(n)])


def constant(prompts, completions):
    return [float(len(c) % 3) for c in completions]


def trainers(tiny_bert, tiny_llama, separable):
    frame, pos, neg = separable
    prefs, bert, llama = pairs(pos, neg), str(tiny_bert), str(tiny_llama)
    policy = dict(policy=llama, steps=2, batch_size=4)
    online = dict(policy=llama, reward=constant, prompts=GREEK, steps=1, batch_size=4, num_generations=2,
                  max_new_tokens=4)
    return {
        "finetune": lambda **kw: api.finetune(model=bert, data=frame.head(64), train="all", epochs=1, **kw),
        "lora": lambda **kw: api.lora(model=bert, data=frame.head(64), epochs=1, **kw),
        "reward": lambda **kw: api.rlhf.reward(model=bert, data=prefs, epochs=1, batch_size=8, **kw),
        "dpo": lambda **kw: api.rlhf.dpo(data=prefs, **policy, **kw),
        "kto": lambda **kw: api.rlhf.kto(data=prefs, **policy, **kw),
        "orpo": lambda **kw: api.rlhf.orpo(data=prefs, **policy, **kw),
        "grpo": lambda **kw: api.rlhf.grpo(**online, **kw),
        "rloo": lambda **kw: api.rlhf.rloo(**online, **kw),
        "ppo": lambda **kw: api.rlhf.ppo(policy=llama, reward=constant, prompts=GREEK, steps=1, batch_size=4,
                                         minibatch_size=4, max_new_tokens=4, **kw),
    }


@pytest.fixture
def training_forwards():
    """(autocast on, its dtype) of every linear layer's forward pass that builds a graph (a training pass), on
    the CPU. Linear layers: a whole model's hook fires after a wrapper's autocast (accelerate's) has closed."""
    seen: list[tuple[bool, torch.dtype]] = []

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    yield seen
    handle.remove()


@pytest.mark.parametrize("name", ["finetune", "lora", "reward", "dpo", "kto", "orpo", "grpo", "rloo", "ppo"])
def test_bfloat16_on_a_cpu_trains_under_bf16_autocast_in_every_trainer(name, tiny_bert, tiny_llama, separable,
                                                                         training_forwards):
    run = trainers(tiny_bert, tiny_llama, separable)[name]
    result = run(device="cpu", dtype="bfloat16")
    assert result.dtype == "bfloat16", (name, result.dtype)
    assert training_forwards and all(on and dtype == torch.bfloat16 for on, dtype in training_forwards), name
    training_forwards.clear()
    plain = run(device="cpu", dtype="auto")
    # %lora keeps its frozen base in the inference dtype (pick_dtype: bf16 on CPUs that do it natively), and a
    # bf16 base computes under bf16 autocast (train_dtype's `frozen` rule); every other trainer trains all its
    # weights here (its default) and is fp32 (their tuners: the test below)
    frozen = dtype_name(pick_dtype(torch.device("cpu"))) if name == "lora" else "float32"
    assert plain.dtype == frozen, (name, plain.dtype)
    if frozen == "bfloat16":
        assert training_forwards and all(on and dtype == torch.bfloat16 for on, dtype in training_forwards), name
    else:
        assert training_forwards and not any(on for on, _ in training_forwards), name
    for held in (result, plain):
        if getattr(held, "adapter", ""):
            api.lora.unload(name=held.adapter)


@pytest.mark.parametrize("name", ["finetune", "reward", "dpo", "grpo", "ppo"])
def test_float16_on_a_cpu_is_refused_in_one_line_before_anything_runs(name, tiny_bert, tiny_llama, separable,
                                                                       store):
    with pytest.raises(UsageError, match=r"^--dtype float16 trains on CUDA only .*use --dtype bfloat16 or auto"):
        trainers(tiny_bert, tiny_llama, separable)[name](device="cpu", dtype="float16")
    assert store.list() == []


def test_the_rule():
    cpu = torch.device("cpu")
    assert train_dtype(cpu, "auto") is None and train_dtype(cpu, "float32") is None
    assert train_dtype(cpu, "bfloat16") == torch.bfloat16 and train_dtype(cpu, None) is None
    # a frozen base held in bf16 (adapters) computes in bf16 unless fp32 was asked
    assert train_dtype(cpu, "auto", frozen=torch.bfloat16) == torch.bfloat16
    assert train_dtype(cpu, None, frozen=torch.bfloat16) == torch.bfloat16
    assert train_dtype(cpu, "float32", frozen=torch.float32) is None
    assert train_dtype(cpu, "auto", frozen=torch.float32) is None


@pytest.mark.parametrize("name, what", [("lora", {}), ("reward", {"train": "lora"}), ("reward", {"train": "head"}),
                                        ("dpo", {"method": "lora"}), ("grpo", {"method": "lora"}),
                                        ("ppo", {"method": "lora"})])
def test_a_frozen_base_loads_in_bf16_where_the_cpu_does_it_and_computes_under_bf16_autocast(
        name, what, tiny_bert, tiny_llama, separable, training_forwards, monkeypatch):
    """Under an adapter (or below the reward model's head) the base does not train: `auto` loads it in
    `pick_dtype`'s dtype, bf16 on a CPU with native bf16 (pinned here, so any CI CPU runs this path), and its
    passes compute under bf16 autocast; `--dtype float32` keeps everything fp32."""
    import llm_magics.engine.device as device
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    run = trainers(tiny_bert, tiny_llama, separable)[name]
    result = run(device="cpu", dtype="auto", **what)
    assert result.dtype == "bfloat16", (name, what, result.dtype)
    assert training_forwards and all(on and dtype == torch.bfloat16 for on, dtype in training_forwards), name
    training_forwards.clear()
    fp32 = run(device="cpu", dtype="float32", **what)
    assert fp32.dtype == "float32" and training_forwards and not any(on for on, _ in training_forwards), name
    for held in (result, fp32):
        if getattr(held, "adapter", ""):
            api.lora.unload(name=held.adapter)



@pytest.mark.parametrize("name", ["finetune", "lora"])
def test_a_bf16_run_scores_and_predicts_in_its_dtype(name, tiny_bert, tiny_llama, separable):
    """Every forward pass of a bf16 run computes under its autocast: training, the loop's evaluations, the scoring
    of the restored weights on validation and test (fp32 before, so its val metrics were not the best
    evaluation's), and the Result's predictions."""
    frame = separable[0]
    seen: list[bool] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: seen.append(torch.is_autocast_enabled("cpu"))
        if isinstance(module, torch.nn.Linear) else None)
    try:
        result = trainers(tiny_bert, tiny_llama, separable)[name](device="cpu", dtype="bfloat16",
                                                                  validation=frame.tail(24), test=frame.tail(16))
        assert "test_accuracy" in result.metrics and seen and all(seen)
        seen.clear()
        result.predict(frame.tail(16)["text"].tolist())
        assert seen and all(seen)
    finally:
        handle.remove()
    if getattr(result, "adapter", ""):
        api.lora.unload(name=result.adapter)


def test_a_launched_bf16_runs_result_predicts_in_its_dtype(tiny_bert, separable):
    """A `--devices` run's Result is rebuilt in the kernel from rank 0's weights (`restore`): its predictions
    compute under the run's bf16 autocast too, as the one-process Result's do; float16 (CUDA's) predicts in fp32."""
    from types import SimpleNamespace

    from llm_magics.training.result import TrainedResult
    frame = separable[0]
    texts = frame.tail(16)["text"].tolist()
    run = api.finetune(model=str(tiny_bert), data=frame.head(64), train="all", epochs=1, device="cpu",
                       dtype="bfloat16")
    for option, autocast in (("bfloat16", True), ("auto", False), ("float16", False)):
        launched = TrainedResult(method="finetune", label_names=run.label_names)
        launched.restore(SimpleNamespace(dtype=option, max_length=64), lambda: (run._model, run._tokenizer))
        seen: list[bool] = []
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: seen.append(torch.is_autocast_enabled("cpu"))
            if isinstance(module, torch.nn.Linear) else None)
        try:
            logits = launched.logits(texts)
        finally:
            handle.remove()
        assert seen and set(seen) == {autocast}, option
        assert torch.equal(logits, run.logits(texts)) == autocast, option
