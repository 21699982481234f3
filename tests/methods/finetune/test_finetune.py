"""`%finetune` and the training engine, on tiny config-built models."""
import numpy as np
import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.engine.loop import TrainLoop
from llm_magics.errors import UsageError
from llm_magics.models.classifier import SequenceClassifier

from tests.helpers import WORDS


def fit(model, data, **kwargs):
    args = {"model": str(model), "data": data, "epochs": 3, "dtype": "float32", "seed": 0, **kwargs}
    return api.finetune(**args)


def test_head_only_fast_path_learns_and_trains_only_the_head(tiny_bert, separable, store):
    frame, pos, neg = separable
    result = fit(tiny_bert, frame, train="head", lr=5e-2, epochs=5)
    assert result.metrics["test_accuracy"] >= 0.85
    assert result.trainable_params == 32 * 2 + 2
    assert "head-only fast path" in " ".join(result.notes)
    assert result.predict([" ".join(pos[:4]), " ".join(neg[:4])]) == ["pos", "neg"]
    row = store.get(result.run_id)
    assert row["status"] == "ok" and row["metrics"]["test_accuracy"] == result.metrics["test_accuracy"]
    assert row["trainable_params"] == 66 and row["rows_per_s"] > 0


def test_head_fast_path_matches_training_through_the_frozen_base(tiny_bert, separable):
    frame, _, _ = separable
    fast = fit(tiny_bert, frame, train="head", lr=2e-2, epochs=4)
    slow = fit(tiny_bert, frame, train="head", lr=2e-2, epochs=4, feature_cache=False)
    # Same batches, same dropout masks, features differing only by padding round-off.
    assert fast.metrics["test_accuracy"] == pytest.approx(slow.metrics["test_accuracy"], abs=0.0126)
    assert fast.metrics["val_loss"] == pytest.approx(slow.metrics["val_loss"], abs=1e-3)
    assert slow.trainable_params == fast.trainable_params


def test_head_fast_path_reads_the_probe_feature_cache(tiny_bert, separable):
    frame, _, _ = separable
    probe = api.probe(model=str(tiny_bert), data=frame, dtype="float32")
    calls = []
    hook = probe._loaded.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = fit(tiny_bert, frame, train="head")
    finally:
        hook.remove()
    assert calls == [] and "(features from the cache)" in " ".join(result.notes)


def test_last_n_trains_only_the_last_blocks(tiny_bert, separable):
    frame, _, _ = separable
    before = {k: v.clone() for k, v in api_model_state(tiny_bert).items()}
    result = fit(tiny_bert, frame, train="last:1", lr=1e-3)
    after = {name: p.detach() for name, p in result._model.named_parameters()}
    changed = {name for name in after if not torch.equal(after[name].cpu(), before[name])}
    assert changed and all(name.startswith(("base.encoder.layer.1.", "head.")) for name in changed)
    assert any(name.startswith("base.encoder.layer.1.") for name in changed)
    assert result.trainable_params < result.total_params


def api_model_state(folder):
    from transformers import AutoModel
    torch.manual_seed(0)
    model = SequenceClassifier(AutoModel.from_pretrained(folder), 2, "mean")
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_all_layers_learn_with_history_and_curves(tiny_bert, separable):
    frame, _, _ = separable
    result = fit(tiny_bert, frame, train="all", lr=1e-3)
    assert result.metrics["test_accuracy"] >= 0.9
    history = result.tables["history"]
    assert history["step"].tolist()[0] == 0 and len(history) == 4  # before training + 3 epochs
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    assert result.figures["training curves"].startswith(b"\x89PNG")
    assert result.tokens_per_s > 0 and result.trainable_params == result.total_params


def test_decoder_as_classifier(tiny_llama, separable):
    frame, _, _ = separable
    result = fit(tiny_llama, frame, train="all", lr=3e-3)
    assert result.metrics["val_accuracy"] >= 0.8


def test_sft_loss_falls_and_generate_answers(tiny_llama, sft_rows, tmp_path):
    result = fit(tiny_llama, sft_rows, task="sft", train="all", lr=3e-3, epochs=4, batch_size=8)
    assert result.metrics["val_loss"] < result.metrics["val_loss_before"] - 1
    answers = result.generate(["Say the word number 3", "Say the word number 1"], max_new_tokens=6)
    assert all(isinstance(a, str) for a in answers) and len(answers) == 2
    folder = result.save(tmp_path / "tuned")
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()


def test_sft_on_chat_messages(tiny_llama):
    chats = [{"messages": [{"role": "user", "content": f"number {i % 5}"},
                           {"role": "assistant", "content": WORDS[i % 5]}]} for i in range(40)]
    result = fit(tiny_llama, chats, task="sft", lr=3e-3, batch_size=8)
    assert result.metrics["val_loss"] < result.metrics["val_loss_before"]


def test_sft_labels_only_the_response_and_end_with_eos(tiny_llama):
    from transformers import AutoTokenizer

    from llm_magics.data.sft import IGNORE, encode
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids, labels = encode(tokenizer, {"prompt": "Say the word", "response": "Word: alpha"}, 256)
    learned = [i for i, label in zip(ids, labels) if label != IGNORE]
    assert tokenizer.decode(learned).startswith("Word: alpha") and tokenizer.eos_token_id in learned
    assert "Say the word" not in tokenizer.decode(learned)


def test_background_run_stops_cleanly_with_a_usable_result(tiny_bert, separable, store):
    frame, pos, neg = separable
    handle = api.finetune(model=str(tiny_bert), data=frame, train="all", epochs=200, lr=1e-3, dtype="float32",
                          bg=True)
    while handle.progress.state.done < 5:
        assert not handle.done or handle._error is None, handle._error
        handle.wait(0.05)
    handle.stop()
    result = handle.result(timeout=120)
    assert result.status == "stopped" and 5 <= result.metrics["steps"] < handle.progress.state.total
    assert result.predict([" ".join(pos[:3])])[0] in ("pos", "neg")
    assert store.get(result.run_id)["status"] == "stopped"
    assert "resume_checkpoint" in result.artifacts


def test_resume_after_a_stop_ends_where_an_uninterrupted_run_ends(tiny_bert, separable):
    frame, _, _ = separable
    kwargs = dict(train="all", epochs=3, lr=1e-3, eval_every=4)
    straight = fit(tiny_bert, frame, **kwargs)
    handle = api.finetune(model=str(tiny_bert), data=frame, dtype="float32", seed=0, bg=True, **kwargs)
    while handle.progress.state.done < 6 and not handle.done:
        handle.wait(0.01)
    handle.stop()
    stopped = handle.result(timeout=120)
    assert stopped.status == "stopped" and stopped.metrics["steps"] < straight.metrics["steps"]
    resumed = fit(tiny_bert, frame, resume=stopped.run_id, **kwargs)
    assert resumed.metrics["steps"] == straight.metrics["steps"]
    for key in ("val_loss", "test_loss", "test_accuracy"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4)


def test_resume_after_a_crash(tiny_bert, separable, monkeypatch):
    frame, _, _ = separable
    kwargs = dict(train="all", epochs=2, lr=1e-3, eval_every=3)
    straight = fit(tiny_bert, frame, **kwargs)
    real_step = TrainLoop._optimizer_step
    calls = {"n": 0}

    def crash_at_step_7(self):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("power cut")
        real_step(self)

    monkeypatch.setattr(TrainLoop, "_optimizer_step", crash_at_step_7)
    with pytest.raises(RuntimeError, match="power cut"):
        fit(tiny_bert, frame, **kwargs)
    monkeypatch.setattr(TrainLoop, "_optimizer_step", real_step)
    resumed = fit(tiny_bert, frame, resume="last", **kwargs)
    assert resumed.metrics["steps"] == straight.metrics["steps"]
    assert resumed.metrics["test_loss"] == pytest.approx(straight.metrics["test_loss"], abs=1e-4)


def test_out_of_memory_halves_the_batch_and_says_so(tiny_bert, separable, monkeypatch):
    frame, _, _ = separable
    real_forward = SequenceClassifier.forward

    def small_memory(self, input_ids, attention_mask, labels=None):
        if self.training and input_ids.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_forward(self, input_ids, attention_mask, labels)

    monkeypatch.setattr(SequenceClassifier, "forward", small_memory)
    result = fit(tiny_bert, frame, train="all", lr=1e-3, batch_size=32)
    said = " ".join(result.notes)
    assert "batch size halved to 16" in said and "batch size halved to 8" in said
    assert "gradient accumulation doubled to 4" in said
    assert result.metrics["test_accuracy"] >= 0.9 and result.status == "ok"


@pytest.mark.parametrize("kwargs, message", [
    ({"train": "middle"}, "--train: expects head, last:N"),
    ({"train": "last:0"}, "last:N needs N ≥ 1"),
    ({"train": "last:9"}, "this model has 2 blocks"),
    ({"lr": 0}, "--lr: must be > 0"),
    ({"lr": -1e-3}, "--lr: must be > 0"),
    ({"epochs": 0}, "--epochs: must be > 0"),
    ({"data": pd.DataFrame({"text": [f"t {i}" for i in range(9)], "label": ["x"] * 9})}, "single class"),
    ({"task": "sft", "data": pd.DataFrame({"prompt": ["a"] * 9, "notes": ["b"] * 9})},
     "--task sft needs a response column"),
    ({"task": "sft", "data": pd.DataFrame({"prompt": ["a"] * 9, "response": ["b"] * 9})}, "needs a decoder"),
    ({"resume": "finetune-000000"}, "no resumable checkpoint"),
    ({"prompt": "p"}, "are for --task sft"),
    ({"warmup": 1.5}, "--warmup"),
])
def test_bad_input_gives_one_usage_error_and_no_record(tiny_bert, separable, store, kwargs, message):
    frame, _, _ = separable
    args = {"model": str(tiny_bert), "data": frame, **kwargs}
    with pytest.raises(UsageError) as info:
        api.finetune(**args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.list() == []


def test_resume_refuses_changed_options(tiny_bert, separable):
    frame, _, _ = separable
    handle = api.finetune(model=str(tiny_bert), data=frame, epochs=50, lr=1e-3, dtype="float32", bg=True)
    while handle.progress.state.done < 2 and not handle.done:
        handle.wait(0.01)
    handle.stop()
    run_id = handle.result(timeout=60).run_id
    with pytest.raises(UsageError, match="options differ from it: --lr 0.001 .now 0.002"):
        api.finetune(model=str(tiny_bert), data=frame, epochs=50, lr=2e-3, dtype="float32", resume=run_id)


def test_free_releases_the_trained_model(tiny_bert, separable):
    frame, _, _ = separable
    result = fit(tiny_bert, frame, train="head")
    before = result.predict(["x"])
    api.free()
    assert result._model is None    # released; its weights stay on disk and load again on use
    assert result.predict(["x"]) == before


def test_grouped_batches_cover_every_row_once_and_replay_the_same_plan():
    from llm_magics.engine.batching import grouped_batches
    lengths = np.random.default_rng(1).integers(1, 50, 1000)
    plan = grouped_batches(lengths, 16, np.random.default_rng([0, 2]))
    again = grouped_batches(lengths, 16, np.random.default_rng([0, 2]))
    assert sorted(np.concatenate(plan).tolist()) == list(range(1000))
    assert all((a == b).all() for a, b in zip(plan, again))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in plan])
    assert spread < 5  # grouped: rows of a batch have similar lengths
    assert lengths[plan[0]].max() == lengths.max()


def test_out_of_memory_mid_window_replays_the_window_without_losing_or_repeating_rows(tmp_path):
    """With accumulation, an OOM on the window's second batch replays the whole window in halves."""
    from llm_magics.engine.loop import TrainConfig
    from llm_magics.progress import NullSink, Progress
    seen = []

    class Task:
        lengths = [1] * 64

        def batch(self, indices, device):
            return {"x": torch.randn(len(indices), 4), "indices": indices}

        def loss(self, model, batch):
            seen.append(len(batch["indices"]))
            if len(seen) == 2 and len(batch["indices"]) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return model(batch["x"]).pow(2).mean(), 0

        def evaluate(self, model):
            return {}

    config = TrainConfig(epochs=1, lr=1e-2, batch_size=8, grad_accum=2, group_by_length=False)
    loop = TrainLoop(torch.nn.Linear(4, 1), Task(), config, Progress([NullSink()]), tmp_path, torch.device("cpu"))
    outcome = loop.run()
    assert outcome.trained.rows == 64 and outcome.steps == loop.total_steps == 4
    assert seen[:2] == [8, 8] and seen[2:6] == [4, 4, 4, 4]  # the first window replayed as four halves
    assert "batch size halved to 4" in " ".join(outcome.notes)


class _ScriptedTask:
    """Evaluations follow a script, so the best one is known; the weights at each evaluation are kept."""
    lengths = [1] * 16

    def __init__(self, script, snapshots):
        self.script, self.snapshots, self.calls = list(script), snapshots, 0

    def batch(self, indices, device):
        return {"x": torch.ones(len(indices), 4)}

    def loss(self, model, batch):
        return (model(batch["x"]) - 3.0).pow(2).mean(), 0

    def evaluate(self, model):
        self.snapshots.append(model.weight.detach().clone())
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"val_accuracy": value}


def scripted_loop(tmp_path, script, epochs):
    """A TrainLoop on a linear model whose evaluations follow `script` (also used by test_tune_views)."""
    from llm_magics.engine.loop import TrainConfig
    from llm_magics.progress import NullSink, Progress
    snapshots = []
    config = TrainConfig(epochs=epochs, lr=0.1, batch_size=16, best_metric="val_accuracy", greater_is_better=True,
                         warmup=0.0, scheduler="constant")
    model = torch.nn.Linear(4, 1, bias=False)
    loop = TrainLoop(model, _ScriptedTask(script, snapshots), config, Progress([NullSink()]), tmp_path,
                     torch.device("cpu"))
    return loop, model, snapshots


def test_an_ended_run_whose_best_evaluation_is_not_the_last_returns_the_best_weights(tmp_path):
    # The initial evaluation, then one per epoch: the best is epoch 2's (0.9), not the last (0.4).
    loop, model, snapshots = scripted_loop(tmp_path, [0.1, 0.5, 0.9, 0.6, 0.4], epochs=4)
    outcome = loop.run()
    assert outcome.status == "ok" and outcome.best["val_accuracy"] == 0.9
    assert not torch.equal(snapshots[-1], snapshots[2])  # training moved the weights after the best epoch
    assert torch.equal(model.weight.detach(), snapshots[2])


def test_a_stopped_run_returns_the_best_weights_not_the_last(tmp_path):
    loop, model, snapshots = scripted_loop(tmp_path, [0.1, 0.8, 0.3, 0.2, 0.2, 0.2], epochs=6)
    real_evaluate = loop._evaluate

    def evaluate_then_stop_after_the_third(initial=False):
        stop = real_evaluate(initial)
        if len(snapshots) == 4:
            loop.progress.request_stop()
        return stop

    loop._evaluate = evaluate_then_stop_after_the_third
    outcome = loop.run()
    assert outcome.status == "stopped" and outcome.best["val_accuracy"] == 0.8
    assert torch.equal(model.weight.detach(), snapshots[1])
    # and it says which step those weights and metrics come from
    assert outcome.best["step"] < outcome.steps
    assert outcome.notes[-1] == (f"its weights and metrics are the best checkpoint's, from step {outcome.best['step']} "
                                 f"(epoch {outcome.best['epoch']}, val_accuracy 0.8), not step {outcome.steps} "
                                 "where it stopped")


def test_the_result_scores_the_best_checkpoint_it_reports(tiny_bert, separable):
    """The run's metrics are the restored best weights' scores: val_accuracy equals the history's best."""
    frame, _, _ = separable
    result = fit(tiny_bert, frame, train="all", epochs=4, lr=3e-3, eval_every=2)
    best = result.history["val_accuracy"].iloc[1:].max()
    assert result.metrics["val_accuracy"] == pytest.approx(best, abs=1e-9)
    assert "best_checkpoint" in result.artifacts
