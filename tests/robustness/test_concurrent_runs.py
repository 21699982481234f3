"""Two `--bg` runs started together with the same seed end exactly where the serial run ends:
each run draws dropout masks and initial weights from its own generator."""
import threading

import torch

from llm_magics import api
from llm_magics.engine.rng import RunRng, isolated, seeded

KEYS = ("val_loss", "val_accuracy", "test_loss", "test_accuracy", "train_loss", "steps")


def together(start, n=2):
    handles = [start() for _ in range(n)]
    return [h.result(timeout=300) for h in handles]


def same(a, b):
    return {k: a.metrics[k] for k in KEYS if k in a.metrics} == {k: b.metrics[k] for k in KEYS if k in b.metrics}


def test_two_background_finetune_runs_reproduce_the_serial_run(tiny_bert, separable):
    frame, _, _ = separable
    kwargs = dict(model=str(tiny_bert), data=frame, train="all", epochs=2, lr=1e-3, dtype="float32", seed=3,
                  eval_every=5)
    serial = api.finetune(**kwargs)
    for result in together(lambda: api.finetune(bg=True, **kwargs)):
        assert result.status == "ok"
        assert same(result, serial), (result.metrics, serial.metrics)


def globals_intact() -> None:
    """transformers' from_pretrained swaps these while it loads; they must be back afterwards."""
    import torch.nn.init as init
    from transformers import PreTrainedModel
    assert PreTrainedModel.tie_weights.__name__ == "tie_weights"
    assert PreTrainedModel.init_weights.__name__ == "init_weights"
    assert init.kaiming_uniform_.__module__ == init.normal_.__module__ == "torch.nn.init"


def test_models_loaded_in_parallel_threads_leave_transformers_as_it_was(tiny_llama):
    from llm_magics.models import load_model
    errors = []

    def load():
        try:
            for _ in range(3):
                load_model(str(tiny_llama), "causal_lm", fresh=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    globals_intact()
    model = load_model(str(tiny_llama), "causal_lm", fresh=True).model    # tied, not left on the meta device
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_two_background_lora_runs_reproduce_the_serial_run(tiny_bert, separable):
    frame, _, _ = separable
    kwargs = dict(model=str(tiny_bert), data=frame, epochs=2, dtype="float32", seed=5, dropout=0.2)
    serial = api.lora(**kwargs)
    runs = together(lambda: api.lora(bg=True, **kwargs))
    for result in runs:
        assert result.status == "ok"
        assert same(result, serial), (result.metrics, serial.metrics)


def test_a_run_draws_from_its_own_generator_and_leaves_the_global_one_alone():
    torch.manual_seed(123)
    expected_user = torch.rand(3)
    torch.manual_seed(123)
    rng = RunRng(7)
    with rng.active():
        first = torch.rand(4)
    assert torch.equal(torch.rand(3), expected_user)        # the user's stream did not move
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(4))                # the run's stream is manual_seed(7)'s
    with seeded(7):
        assert torch.equal(torch.rand(4), first)
    with isolated():
        torch.rand(100)


def test_threads_interleaving_draws_each_get_their_serial_stream():
    def stream(seed, out, barrier):
        rng = RunRng(seed)
        barrier.wait()
        for _ in range(200):
            with rng.active():
                out.append(torch.rand(1).item())

    outs, barrier = [[], []], threading.Barrier(2)
    threads = [threading.Thread(target=stream, args=(11, outs[i], barrier)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.manual_seed(11)
    serial = [torch.rand(1).item() for _ in range(200)]
    assert outs[0] == serial and outs[1] == serial
