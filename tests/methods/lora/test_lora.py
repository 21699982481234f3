"""`%lora`: every PEFT method trains; adapters save, load, switch, merge; bad inputs refused."""
import pytest
import torch

from llm_magics import api
from llm_magics.adapters import hub
from llm_magics.errors import UsageError

METHODS = ["lora", "rslora", "dora", "adalora", "ia3", "loha", "lokr", "oft", "prefix", "ptuning", "prompt"]
LR = {"ia3": 5e-2, "prefix": 3e-2, "ptuning": 3e-2, "prompt": 5e-2, "adalora": 3e-2}


@pytest.fixture(autouse=True)
def empty_hub():
    hub().release()
    yield
    hub().release()


def train(model, data, **kwargs):
    args = {"model": str(model), "data": data, "epochs": 2, "dtype": "float32", "seed": 0, **kwargs}
    return api.lora(**args)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_classifier_and_its_loss_falls(tiny_bert, separable, method):
    frame, _, _ = separable
    result = train(tiny_bert, frame, method=method, lr=LR.get(method, 1e-2), epochs=3, batch_size=16)
    history = result.tables["history"]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0] - 0.02, history
    assert 0 < result.trainable_params < result.total_params
    assert result.adapter in hub().names()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_tunes_a_causal_lm_and_its_loss_falls(tiny_llama, sft_rows, method):
    result = train(tiny_llama, sft_rows, task="sft", method=method, lr=LR.get(method, 1e-2), epochs=3,
                   batch_size=8)
    history = result.tables["history"]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0] - 0.01, history
    assert isinstance(result.generate("Say the word number 2", max_new_tokens=4), str)


def test_head_trains_with_the_adapter_and_predictions_use_it(tiny_bert, separable):
    frame, pos, neg = separable
    result = train(tiny_bert, frame, method="lora", lr=1e-2, epochs=4, batch_size=16)
    assert result.metrics["test_accuracy"] >= 0.8  # chance is 0.5; 80 test rows
    assert result.predict([" ".join(pos[:4]), " ".join(neg[:4])]) == ["pos", "neg"]
    names = [n for n, p in result._need_model().named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and any("head" in n for n in names)
    assert not any("word_embeddings" in n or "query.base_layer" in n for n in names)


def test_save_load_gives_the_same_logits_and_a_second_adapter_shares_the_base(tiny_bert, separable, tmp_path):
    frame, pos, neg = separable
    texts = [" ".join(pos[:4]), " ".join(neg[:4]), "best worst"]
    first = train(tiny_bert, frame, method="lora", lr=1e-2, name="first")
    before = first.logits(texts)
    folder = first.save(tmp_path / "first")
    assert (folder / "adapter_model.safetensors").exists() and (folder / "llm_magics_adapter.json").exists()
    second = train(tiny_bert, frame, method="lora", lr=1e-2, r=4, seed=1, name="second")
    assert len(hub().sets) == 1 and set(hub().names()) == {"first", "second"}  # one base, two adapters
    assert not torch.allclose(second.logits(texts), before)
    torch.testing.assert_close(first.logits(texts), before, atol=1e-5, rtol=0)  # switched back, no reload
    api.lora.unload(name="first")
    loaded = api.lora.load(path=str(folder), name="again")
    torch.testing.assert_close(loaded.logits(texts), before, atol=1e-5, rtol=0)
    frame_view = api.lora.adapters()
    assert set(frame_view["name"]) == {"again", "second"}


@pytest.mark.parametrize("method", ["adalora", "ia3", "oft", "prefix"])
def test_save_then_load_reproduces_the_logits(tiny_bert, separable, tmp_path, method):
    frame, _, _ = separable
    result = train(tiny_bert, frame, method=method, lr=LR.get(method, 1e-2), name="saved", batch_size=16)
    texts = ["best clever days", "worst waste", "the best of the worst"]
    before = result.logits(texts)
    folder = result.save(tmp_path / method)
    hub().release()
    torch.testing.assert_close(api.lora.load(path=str(folder)).logits(texts), before, atol=1e-5, rtol=0)


def test_merge_gives_the_adapters_logits(tiny_bert, separable, tmp_path):
    frame, pos, neg = separable
    result = train(tiny_bert, frame, method="lora", lr=1e-2, name="m")
    texts = [" ".join(pos[:4]), " ".join(neg[:4])]
    before = result.logits(texts)
    merged = api.lora.merge(name="m", save=str(tmp_path / "merged"))
    torch.testing.assert_close(merged.logits(texts), before, atol=1e-4, rtol=0)
    assert not any("lora_" in n for n, _ in merged._model.named_parameters())
    assert (tmp_path / "merged" / "model.safetensors").exists()
    # merging wrote a copy: the session's adapter (and its base) still answer exactly as before
    torch.testing.assert_close(result.logits(texts), before, atol=0, rtol=0)
    assert merged._model is not result._need_model()


def test_prompt_learning_classifier_saves_its_head_beside_the_adapter(tiny_bert, separable, tmp_path):
    frame, _, _ = separable
    result = train(tiny_bert, frame, method="prompt", lr=5e-2, name="soft", init_text="positive negative")
    texts = ["best clever", "worst waste"]
    before = result.logits(texts)
    folder = result.save(tmp_path / "p")
    assert (folder / "classifier_head.safetensors").exists()
    hub().release()
    torch.testing.assert_close(api.lora.load(path=str(folder)).logits(texts), before, atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="virtual tokens have no weights to merge"):
        api.lora.merge(name="soft")


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "--r: must be > 0"),
    ({"r": -2}, "--r: must be > 0"),
    ({"method": "lorax"}, "--method 'lorax' is not valid; did you mean lora?"),
    ({"target": "q_proj"}, "--target q_proj: the model has no such linear layer; its layers are"),
    ({"bits": 4}, "needs a CUDA GPU"),
    ({"bits": 3}, "--bits: is 4 or 8"),
    ({"init_text": "hi"}, "--init-text initialises prompt tuning"),
    ({"name": "a/b"}, "is not a valid name"),
    ({"name": "lora"}, "is part of PEFT's parameter prefix 'lora_' for lora"),
    ({"lr": 0}, "--lr: must be > 0"),
])
def test_bad_training_input_gives_one_usage_error_and_no_record(tiny_bert, separable, store, kwargs, message):
    frame, _, _ = separable
    with pytest.raises(UsageError) as info:
        api.lora(model=str(tiny_bert), data=frame, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.list() == []


def test_a_taken_name_is_refused(tiny_bert, separable, tmp_path):
    frame, _, _ = separable
    result = train(tiny_bert, frame, method="lora", name="taken", epochs=1)
    with pytest.raises(UsageError, match="an adapter named 'taken' is already loaded"):
        train(tiny_bert, frame, method="lora", name="taken", epochs=1)
    folder = result.save(tmp_path / "taken")
    with pytest.raises(UsageError, match="already loaded"):
        api.lora.load(path=str(folder))


def test_an_adapter_for_another_base_is_refused(tiny_bert, tiny_llama, separable, tmp_path):
    frame, _, _ = separable
    folder = train(tiny_bert, frame, method="lora", name="bert_one", epochs=1).save(tmp_path / "a")
    with pytest.raises(UsageError, match="was trained on .*tiny-bert.*, not .*tiny-llama"):
        api.lora.load(path=str(folder), name="other", model=str(tiny_llama))


def test_a_method_the_model_cannot_train_names_the_ones_that_can(tmp_path, separable):
    """Prefix tuning needs attention that accepts past keys; DistilBERT's does not."""
    from transformers import DistilBertConfig, DistilBertModel

    from tests.tiny_models import build_bert
    words = build_bert(tmp_path / "vocab")
    folder = tmp_path / "distil"
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(words))
    DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((words / name).read_bytes())
    frame, _, _ = separable
    with pytest.raises(UsageError) as info:
        api.lora(model=str(folder), data=frame, method="prefix")
    message = str(info.value)
    assert "--method prefix does not train distil" in message and "methods that do:" in message
    working = message.split("methods that do: ")[1].split(", ")
    assert "lora" in working and "prefix" not in working


def test_adapter_commands_in_a_shell(tiny_bert, separable, tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magics")
    try:
        shell.user_ns["df"] = separable[0]
        assert shell.run_cell(f"%lora --model {tiny_bert} --data df --epochs 1 --name one --out r").success
        assert shell.run_cell(f"%lora save one {tmp_path / 'one'}").success
        assert shell.run_cell(f"%lora load {tmp_path / 'one'} --as two").success
        assert shell.run_cell("%lora use one").result.name == "one"
        listed = shell.run_cell("%lora adapters").result
        assert set(listed["name"]) == {"one", "two"} and listed.set_index("name").loc["one", "active"]
        assert shell.run_cell("%lora merge two").result.task == "classify"
        assert shell.run_cell("%lora unload two").success and hub().names() == ["one"]
        capsys.readouterr()
        bad = shell.run_cell("%lora use nobody")
        assert not bad.success and "no adapter named 'nobody'" in capsys.readouterr().err
        bad = shell.run_cell("%lora adaptrs")   # a misspelt command is named as one, with the right spelling
        assert not bad.success and "unknown command 'adaptrs'; did you mean adapters?" in capsys.readouterr().err
    finally:
        shell.run_line_magic("unload_ext", "llm_magics")


def test_the_peft_kinds_table_drives_the_options_defaults_and_resume_keys():
    """Adding a PEFT method is one entry in adapters/configs.py: choices, learning rates, resume keys, labels."""
    import peft

    from llm_magics.adapters.configs import KINDS, METHODS, PEFT_TYPES, PROMPT_LEARNING, AdapterSpec
    from llm_magics.methods.lora import LoraMethod, LoraOptions
    from llm_magics.options import specs
    assert next(s for s in specs(LoraOptions) if s.name == "method").choices == tuple(KINDS)
    assert set(METHODS) == set(KINDS) and set(PROMPT_LEARNING) == {"prefix", "ptuning", "prompt"}
    method = LoraMethod()
    for name, kind in KINDS.items():
        assert hasattr(peft.PeftType, PEFT_TYPES[name]) and kind.label
        o = LoraOptions(method=name, data="x")
        assert method.peak_lr(o) == kind.lr
        assert set(kind.resume_keys) <= set(method.resume_values(o))
    assert method.peak_lr(LoraOptions(method="lora", task="sft", data="x")) == 5e-4
    assert method.peak_lr(LoraOptions(method="ia3", lr=0.1, data="x")) == 0.1
    spec = AdapterSpec.from_options(LoraOptions(method="dora", r=4, target=["query"], data="x"))
    assert (spec.method, spec.r, spec.scale, spec.target) == ("dora", 4, 8, ("query",))
    assert KINDS["prompt"].describe(spec) == "dora 20 virtual tokens" and KINDS["lora"].describe(spec) == "dora r=4"


def test_load_with_a_device_its_shared_base_is_not_on_is_one_line(tiny_bert, separable, tmp_path, monkeypatch):
    """`%lora load --device X` onto a base already loaded elsewhere: refused in one line, never silently put on
    the loaded base's device (adapters share one base in memory)."""
    frame, _, _ = separable
    folder = train(tiny_bert, frame, method="lora", lr=1e-2, epochs=1, name="first").save(tmp_path / "first")
    api.lora.load(path=str(folder), name="same", device="cpu")       # the base's own device: shared, fine
    assert set(hub().names()) == {"first", "same"} and len(hub().sets) == 1
    import llm_magics.runner as runner
    monkeypatch.setattr(runner, "pick_device", lambda key: torch.device("cuda", 0))   # as if a GPU were there
    with pytest.raises(UsageError, match=r"already loaded on cpu") as refused:
        api.lora.load(path=str(folder), name="elsewhere", device="cuda")
    assert "\n" not in str(refused.value) and "elsewhere" not in hub().names()
