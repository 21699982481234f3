"""Damaged checkpoints are refused and damaged feature-cache entries rebuilt.

Each damage is done the way a disk, a crash or a colleague would do it: bytes changed under a
header that still parses, a file cut short, a JSON file that no longer parses, a file gone.
"""
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_magics import api
from llm_magics.engine import checkpoint
from llm_magics.errors import UsageError
from llm_magics.safe_io import write_manifest


# ---- helpers -----------------------------------------------------------------------------------
def zero_data(path: Path) -> None:
    """Zero every tensor byte of a safetensors file; its header stays valid."""
    raw = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", bytes(raw[:8]))[0]
    raw[header:] = bytes(len(raw) - header)
    path.write_bytes(bytes(raw))


def noise_data(path: Path, seed: int = 0) -> None:
    """Random float32 values in place of a safetensors file's tensor bytes; the header stays valid."""
    raw = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", bytes(raw[:8]))[0]
    values = np.random.default_rng(seed).normal(0, 10, (len(raw) - header) // 4).astype(np.float32)
    raw[header:] = values.tobytes()
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


def stopped_run(tiny_bert, frame) -> str:
    handle = api.finetune(model=str(tiny_bert), data=frame, train="all", epochs=4, lr=1e-3, dtype="float32",
                          eval_every=4, bg=True)
    while handle.progress.state.done < 3 and not handle.done:
        handle.wait(0.01)
    handle.stop()
    result = handle.result(timeout=120)
    assert result.status == "stopped"
    return result.run_id


def resume(tiny_bert, frame, run_id):
    return api.finetune(model=str(tiny_bert), data=frame, train="all", epochs=4, lr=1e-3, dtype="float32",
                        eval_every=4, resume=run_id)


@pytest.fixture
def stopped(tiny_bert, separable, home):
    frame, _, _ = separable
    run_id = stopped_run(tiny_bert, frame)
    return run_id, home.subdir("runs") / run_id / "checkpoint-last"


# ---- a damaged checkpoint is refused, one line, nothing recorded -----------------------------------
def _damage_state_json(folder: Path) -> None:
    (folder / checkpoint.STATE).write_text("{not json")


def _damage_state_json_consistently(folder: Path) -> None:
    """Invalid JSON with a checksum list that matches it: caught by the parse, not the checksum."""
    (folder / checkpoint.STATE).write_text("{not json")
    write_manifest(folder)


def refused_on_resume(model, frame, store, run_id, folder, names) -> None:
    """--resume of the run is one line naming the file and the way out; no new record, no "ok" at chance."""
    with pytest.raises(UsageError) as info:
        resume(model, frame, run_id)
    message = one_line(info)
    assert names in message and str(folder) in message and "without --resume" in message
    assert [row["run_id"] for row in store.list()] == [run_id]


@pytest.mark.parametrize("damage, names", [
    (lambda f: zero_data(f / checkpoint.WEIGHTS), "trainable.safetensors does not match the checksum"),
    (lambda f: truncate(f / checkpoint.WEIGHTS), "trainable.safetensors has"),
    (lambda f: truncate(f / checkpoint.OPTIMIZER), "optimizer.safetensors has"),
    (lambda f: zero_data(f / checkpoint.OPTIMIZER), "optimizer.safetensors does not match the checksum"),
    (_damage_state_json, "state.json has"),
    (_damage_state_json_consistently, "state.json is not valid JSON"),
    (lambda f: (f / "llm_magics_checksums.json").unlink(), "llm_magics_checksums.json is missing"),
])
def test_a_damaged_checkpoint_is_refused_with_one_line(tiny_bert, separable, store, stopped, damage, names):
    frame, _, _ = separable
    run_id, folder = stopped
    damage(folder)
    refused_on_resume(tiny_bert, frame, store, run_id, folder, names)


def test_missing_run_options_is_one_line(tiny_bert, separable, store, stopped):
    frame, _, _ = separable
    run_id, folder = stopped
    (folder.parent / "run_options.json").unlink()
    with pytest.raises(UsageError) as info:
        resume(tiny_bert, frame, run_id)
    assert "run_options.json is missing" in one_line(info)
    (folder.parent / "run_options.json").write_text("[1, 2")
    with pytest.raises(UsageError) as info:
        resume(tiny_bert, frame, run_id)
    assert "run_options.json is not valid JSON" in one_line(info)
    assert len(store.list()) == 1


def test_an_intact_checkpoint_still_resumes(tiny_bert, separable, stopped):
    frame, _, _ = separable
    run_id, _ = stopped
    assert resume(tiny_bert, frame, run_id).status == "ok"


# ---- the engine's own checks -----------------------------------------------------------------------
class Tiny(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.linear = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.linear(x)


def _loop_state():
    return {k: 0 for k in checkpoint.LOOP_KEYS} | {"plan": None, "history": [], "best": None}


def _saved(tmp_path, model=None):
    model = model or Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(3, model.linear.in_features)).sum().backward()
    optimizer.step()
    folder = tmp_path / "run-x" / "checkpoint-last"
    checkpoint.save(folder, model, optimizer, None, _loop_state())
    return folder, model, optimizer


def test_checkpoint_round_trip_and_its_checksums(tmp_path):
    folder, model, optimizer = _saved(tmp_path)
    assert (folder / "llm_magics_checksums.json").exists() and checkpoint.exists(folder)
    other = Tiny()
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    assert checkpoint.load(folder, other, other_opt, None)["step"] == 0
    assert torch.equal(other.linear.weight, model.linear.weight)
    assert torch.equal(other_opt.state[other.linear.weight]["exp_avg"], optimizer.state[model.linear.weight]["exp_avg"])


def test_a_checkpoint_of_another_model_is_refused_before_anything_changes(tmp_path):
    folder, _, _ = _saved(tmp_path)
    wider = Tiny(width=6)
    before = wider.linear.weight.detach().clone()
    with pytest.raises(UsageError, match=r"linear.weight has shape \(2, 4\) where the model has \(2, 6\)"):
        checkpoint.load(folder, wider, torch.optim.AdamW(wider.parameters()), None)
    assert torch.equal(wider.linear.weight, before)


def test_best_weights_zeroed_are_refused(tmp_path):
    model = Tiny()
    checkpoint.save_weights(model, tmp_path / "checkpoint-best", {"rank_pattern": None})
    zero_data(tmp_path / "checkpoint-best" / checkpoint.WEIGHTS)
    with pytest.raises(UsageError, match="damaged checkpoint: .*trainable.safetensors does not match"):
        checkpoint.load_weights(Tiny(), tmp_path / "checkpoint-best")


def test_a_damaged_best_checkpoint_at_the_end_of_a_run_is_said_not_used(tiny_bert, separable, monkeypatch):
    from llm_magics.engine import loop
    frame, _, _ = separable
    real = loop.checkpoint.load_weights

    def damaged_first(model, folder, *args, **kwargs):
        zero_data(Path(folder) / checkpoint.WEIGHTS)
        return real(model, folder, *args, **kwargs)

    monkeypatch.setattr(loop.checkpoint, "load_weights", damaged_first)
    result = api.finetune(model=str(tiny_bert), data=frame, train="all", epochs=1, lr=1e-3, dtype="float32")
    said = " ".join(result.notes)
    assert "damaged checkpoint" in said and "keeps the last weights" in said


# ---- a damaged feature cache is rebuilt, with a note --------------------------------------------------
def test_noise_in_a_cached_feature_file_is_rebuilt_with_a_note(tiny_bert, separable, home):
    frame, _, _ = separable
    first = api.probe(model=str(tiny_bert), data=frame, dtype="float32")
    files = sorted((home.subdir("features")).rglob("layer_*.safetensors"))
    assert files
    for i, path in enumerate(files):
        noise_data(path, seed=i)
    second = api.probe(model=str(tiny_bert), data=frame, dtype="float32")
    said = " ".join(second.notes)
    assert "feature cache" in said and "do not match the checksum" in said and "extracted again" in said
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    assert second.extract_stats.extracted_layers == len(files)
    third = api.probe(model=str(tiny_bert), data=frame, dtype="float32")   # the rebuilt files are whole
    assert "damaged" not in " ".join(third.notes) and third.extract_stats.extracted_layers == 0


@pytest.mark.parametrize("damage, reason", [
    (truncate, "cannot be read"),
    (lambda p: p.write_bytes(b"\x00" * 64), "cannot be read"),
])
def test_a_torn_feature_file_is_rebuilt(tmp_path, damage, reason):
    from llm_magics.engine.features import FeatureCache
    cache = FeatureCache(tmp_path)
    path = cache.put("k", 1, np.ones((5, 3), dtype=np.float32))
    assert cache.get("k", 1, shape=(5, 3)).shape == (5, 3)
    assert cache.get("k", 1, shape=(5, 4), notes=(notes := [])) is None and "expected" in notes[0]
    cache.put("k", 1, np.ones((5, 3), dtype=np.float32))
    damage(path)
    notes = []
    assert cache.get("k", 1, notes=notes) is None and reason in notes[0] and not path.exists()


def test_a_feature_file_without_a_checksum_is_rebuilt(tmp_path):
    from safetensors.numpy import save_file

    from llm_magics.engine.features import FeatureCache
    cache = FeatureCache(tmp_path)
    path = cache.path("k", 0)
    path.parent.mkdir(parents=True)
    save_file({"features": np.ones((2, 3), dtype=np.float32)}, str(path))   # as older versions wrote it
    notes = []
    assert cache.get("k", 0, notes=notes) is None and "no checksum" in notes[0]


# ---- a forged checkpoint (edited, then its checksum list rewritten) is refused when it is nonsense ------
def _edit_loop(folder: Path, **changes) -> None:
    import json
    state = json.loads((folder / checkpoint.STATE).read_text())
    state["loop"].update(changes)
    (folder / checkpoint.STATE).write_text(json.dumps(state))
    write_manifest(folder)   # the forger's step: the checksums match again


@pytest.mark.parametrize("forge, names", [
    (lambda f: (zero_data(f / checkpoint.WEIGHTS), write_manifest(f)),
     "trainable.safetensors: every trainable weight is zero where the model's are not"),
    (lambda f: _edit_loop(f, step=10**6), "state.json: step 1000000 of epoch"),
    (lambda f: _edit_loop(f, step=-3), "state.json: step -3 of epoch"),
    (lambda f: _edit_loop(f, epoch=3), "of epoch 3 is outside this run's plan"),
    (lambda f: _edit_loop(f, step="7"), "state.json: step '7' of epoch"),
])
def test_a_forged_checkpoint_that_makes_no_sense_is_refused(tiny_bert, separable, store, stopped, forge, names):
    frame, _, _ = separable
    run_id, folder = stopped
    forge(folder)
    refused_on_resume(tiny_bert, frame, store, run_id, folder, names)


def nan_data(path: Path) -> None:
    """NaN in place of every float32 of a safetensors file's tensor bytes; the header stays valid."""
    raw = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", bytes(raw[:8]))[0]
    raw[header:] = np.full((len(raw) - header) // 4, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(raw))


def test_forged_weights_whose_first_loss_is_not_finite_are_refused(tiny_bert, separable, stopped):
    frame, _, _ = separable
    run_id, folder = stopped
    nan_data(folder / checkpoint.WEIGHTS)
    write_manifest(folder)
    with pytest.raises(UsageError) as info:
        resume(tiny_bert, frame, run_id)
    message = one_line(info)
    assert "trainable.safetensors: the loss on the first batch after resuming is nan" in message
    assert str(folder) in message and "without --resume" in message
