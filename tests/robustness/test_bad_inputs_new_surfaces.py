"""Bad input on the surfaces added since tests/robustness/test_bad_inputs.py: bounds on generation lengths,
virtual tokens, sweeps and devices; `%rlhf ppo`'s ranges; `%rlhf collect`'s file and model; preference data
that used to raise a raw traceback.

Each row runs through the magics in a real IPython shell, as in tests/robustness/test_bad_inputs.py: exactly one printed
line, `UsageError: ...` holding the fragment; no run recorded; no file left in the home folder (nor the collect
file the row names). `$BERT` is a tiny encoder (128 positions), `$LLAMA` a tiny causal LM (512), `$INPUTS` a
folder of bad files, `$OUT` an empty folder. A hypothesis property over the `%llm sweep` option space ends it.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import one_usage_line
from tests.robustness.test_bad_inputs import files_under

from llm_magics import options as opts
from llm_magics.errors import UsageError

ICL_BODY = "\nReview: {text}\nSentiment: {label}"
PPO = "%rlhf ppo --policy $LLAMA --reward score --prompts prompts"
ONLINE = "--policy $LLAMA --reward score --prompts prompts"
COLLECT = "%rlhf collect $OUT/choices.jsonl --prompts prompts"
SWEEP = "%llm sweep lora --model $BERT --data df --epochs 1"

BOUNDS = [
    # generation lengths: a static cap at the parser, then the model's context once it is loaded
    (PPO + " --max-new-tokens 1000000000", "--max-new-tokens: must be at most 32768"),
    ("%rlhf grpo " + ONLINE + " --max-new-tokens 40000", "--max-new-tokens: must be at most 32768"),
    ("%rlhf rloo " + ONLINE + " --max-new-tokens 1000000000", "--max-new-tokens: must be at most 32768"),
    ("%rlhf eval nosuch_run --reward score --prompts prompts --max-new-tokens 1000000000",
     "--max-new-tokens: must be at most 32768"),
    (COLLECT + " --model $LLAMA --max-new-tokens 1000000000", "--max-new-tokens: must be at most 32768"),
    ("%%icl --model $LLAMA --data df --max-tokens 1000000000" + ICL_BODY, "--max-tokens: must be at most 32768"),
    (PPO + " --max-new-tokens 600", "--max-new-tokens 600 is not below the model's context of 512 tokens"),
    ("%rlhf grpo " + ONLINE + " --max-new-tokens 512", "--max-new-tokens 512 is not below the model's context of 512"),
    (COLLECT + " --model $LLAMA --max-new-tokens 600", "--max-new-tokens 600 is not below the model's context of 512"),
    # virtual tokens: refused from the model folder's config, before the base loads
    ("%lora --model $LLAMA --data df --method prompt --virtual-tokens 99999999",
     "--virtual-tokens 99999999 is more than half of the model's context of 512 positions"),
    ("%lora --model $BERT --data df --method ptuning --virtual-tokens 65",
     "--virtual-tokens 65 is more than half of the model's context of 128 positions"),
    # sweeps: counted, never built, above the limit
    (SWEEP + " --grid 'r=1~64' --random 1000000000000", "--random 1,000,000,000,000 is above the limit of 1,000 runs"),
    (SWEEP + " --grid 'r=1,2,3,4,5,6,7,8,9,10 alpha=1,2,3,4,5,6,7,8,9,10 batch_size=1,2,3,4,5,6,7,8,9,10 "
             "epochs=1,2,3,4,5,6,7,8,9,10 dropout=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 "
             "lr=1e-4,2e-4,3e-4,4e-4,5e-4,6e-4,7e-4,8e-4,9e-4,1e-3'",
     "the grid's 1,000,000 points is above the limit of 1,000 runs"),
    (SWEEP + " --grid 'r=1~64' --random 2000 --max-points 1500", "--random 2,000 is above the limit of 1,500 runs"),
    (SWEEP + " --grid 'r=1,2' --max-points 1000000", "--max-points: must be at most 100000"),
    (SWEEP + " --grid 'r=1,2' --max-points 0", "--max-points: must be > 0"),
    # devices: no more workers than the machine has (CUDA devices, or CPU cores)
    ("%lora --model $BERT --data df --devices 100000", "--devices: 100000 is more than the"),
    ("%finetune --model $BERT --data df --devices $DEVICES_PLUS_ONE", "--devices: $DEVICES_PLUS_ONE is more than the"),
    ("%rlhf reward --model $BERT --data pairs --devices 100000", "--devices: 100000 is more than the"),
    # PPO's ranges
    (PPO + " --lam 5", "--lam: must be in [0, 1], got 5.0"),
    (PPO + " --gamma 7", "--gamma: must be in [0, 1], got 7.0"),
    (PPO + " --gamma -0.5", "--gamma: must be in [0, 1], got -0.5"),
    (PPO + " --batch-size 8 --minibatch-size 16", "--minibatch-size 16 is above --batch-size 8"),
]

COLLECT_ROWS = [
    ("%rlhf collect $INPUTS/folder.jsonl --model $LLAMA --prompts prompts", "is a folder; name a .jsonl file"),
    ("%rlhf collect $INPUTS/latin1.jsonl --model $LLAMA --prompts prompts", "is not UTF-8 text"),
    (COLLECT + " --model $BERT", "is not a causal LM; completions need a decoder"),
]

DATA_ROWS = [
    ("%rlhf reward --model $BERT --data $INPUTS/ranked_text_scores.jsonl", "scores ['high', 'low'] are not all numbers"),
    ("%rlhf reward --model $BERT --data $INPUTS/ranked_one_score.jsonl", "scores is a single int"),
    ("%rlhf reward --model $BERT --data $INPUTS/ranked_text_ranks.jsonl", "ranks ['first', 'second'] are not all"),
    ("%rlhf reward --model $BERT --data $INPUTS/plain.jsonl.gz", "is not a whole gzip file"),
    ("%rlhf reward --model $BERT --data $INPUTS/cut.jsonl.gz", "is not a whole gzip file"),
    ("%rlhf dpo --policy $LLAMA --data $INPUTS/plain.jsonl.gz", "is not a whole gzip file"),
]

LONG = "n" * 300   # a name past the one name rule (common_options.NAME_LIMIT): refused before anything runs
TRL_POLICY = {"dpo": "--data pairs", "kto": "--data pairs", "orpo": "--data pairs", "grpo": "--reward score "
              "--prompts prompts", "rloo": "--reward score --prompts prompts"}
NAME_ROWS = [
    *((f"%rlhf {kind} --policy $LLAMA {rest} --method lora --name {name}", f"--name: {name!r} is not a valid name")
      for kind, rest in TRL_POLICY.items() for name in ("../x", "a.b")),
    (f"%rlhf dpo --policy $LLAMA --data pairs --method lora --name {LONG}", "--name: the name is 300 characters long"),
    (f"%lora --model $BERT --data df --name {LONG}", "--name: the name is 300 characters long: at most 100"),
    (f"%lora save {LONG} $OUT/adapter", "name: the name is 300 characters long"),
    (f"%lora save nosuch $OUT/{LONG}", "the file name nnnnnnnnnnnnnnnnnnnn… is 300 characters long"),
    (f"%lora merge nosuch --save $OUT/{LONG}", "the file name nnnnnnnnnnnnnnnnnnnn… is 300 characters long"),
    (f"%lora load $OUT --as {LONG}", "--as: the name is 300 characters long"),
    (f"%rlhf collect $OUT/{LONG}.jsonl --model $LLAMA --prompts prompts", "is 306 characters long: at most 100"),
    (f"%llm export nosuch_run $OUT/{LONG}", "the file name nnnnnnnnnnnnnnnnnnnn… is 300 characters long"),
    (f"%probe --model $BERT --data df --out {LONG}", "--out: the name is 300 characters long"),
]

RESUME_ROWS = [   # --resume names a run, never a folder: the outside one is neither read nor changed
    ("%finetune --model $BERT --data df --resume $OUT", "is not a run id or 'last'"),
    ("%lora --model $BERT --data df --resume ../../elsewhere", "'../../elsewhere' is not a run id or 'last'"),
    ("%finetune --model $BERT --data df --resume lora-1/../../x", "is not a run id or 'last'"),
]

ROWS = BOUNDS + COLLECT_ROWS + DATA_ROWS + NAME_ROWS + RESUME_ROWS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs-new")
    (folder / "folder.jsonl").mkdir()
    (folder / "latin1.jsonl").write_bytes('{"prompt": "café", "event": "skip"}\n'.encode("latin-1"))

    def ranked(name: str, **fields):
        rows = [{"prompt": f"question {i}", "responses": ["a fine answer", "a poor answer"], **fields}
                for i in range(20)]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ranked("ranked_text_scores.jsonl", scores=["high", "low"])
    ranked("ranked_one_score.jsonl", scores=1)
    ranked("ranked_text_ranks.jsonl", ranks=["first", "second"])
    pair = json.dumps({"prompt": "q", "chosen": "yes", "rejected": "no"}) + "\n"
    (folder / "plain.jsonl.gz").write_text(pair * 20)
    (folder / "cut.jsonl.gz").write_bytes(gzip.compress((pair * 200).encode())[:60])
    return folder


def namespace(demo) -> dict:
    train, _ = demo
    return {"df": train, "prompts": [f"Review {i}:" for i in range(8)],
            "score": lambda prompts, completions: [float(len(c)) for c in completions],
            "pairs": pd.DataFrame({"prompt": [f"q{i}" for i in range(20)], "chosen": ["yes"] * 20,
                                   "rejected": ["no"] * 20})}


def devices_here() -> int:
    import os

    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else len(os.sched_getaffinity(0))


@pytest.mark.parametrize("line, fragment", ROWS, ids=[line.split("\n")[0][:90] for line, _ in ROWS])
def test_a_bad_input_on_a_new_surface_is_one_usage_line(shell, capsys, home, store, demo, tiny_bert, tiny_llama,
                                                        inputs, tmp_path, line, fragment):
    out = tmp_path / "out"
    out.mkdir()
    shell.user_ns.update(namespace(demo))
    values = {"$BERT": str(tiny_bert), "$LLAMA": str(tiny_llama), "$INPUTS": str(inputs), "$OUT": str(out),
              "$DEVICES_PLUS_ONE": str(devices_here() + 1)}
    cell, before = line, files_under(home.cache_dir)
    for key, value in values.items():
        cell, fragment = cell.replace(key, value), fragment.replace(key, value)
    assert fragment in one_usage_line(shell, capsys, cell)
    assert store.list() == [], "a run was recorded"
    assert files_under(home.cache_dir) == before, "files were left in the home folder"
    assert list(out.iterdir()) == [], "the collect file was written"


def test_the_table_covers_every_bound_and_shape_the_issue_names():
    text = " ".join(line for line, _ in ROWS)
    for flag in ("--max-new-tokens", "--max-tokens", "--virtual-tokens", "--random", "--max-points", "--devices",
                 "--lam", "--gamma", "--minibatch-size", ".jsonl.gz", "folder.jsonl", "latin1"):
        assert flag in text, flag
    assert {line.split()[1] for line, _ in ROWS if line.startswith("%rlhf")} >= {
        "ppo", "grpo", "rloo", "eval", "collect", "reward", "dpo"}


# ---- bounds are declared beside the option, and shown where the option is --------------------------

def test_bounds_show_in_the_magic_help_and_the_tuning_form():
    from llm_magics.common_options import LaunchOptions
    from llm_magics.methods.icl.options import IclOptions
    from llm_magics.methods.lora import LoraOptions
    from llm_magics.methods.rlhf.options import CollectOptions, EvalOptions, OnlineOptions, PpoOptions
    from llm_magics.tune import form
    from llm_magics.tune.sweep import SweepOptions
    for cls in (PpoOptions, OnlineOptions, EvalOptions, CollectOptions):
        assert "(1 … 32768, and below the model's context)" in opts.help_text(cls, "rlhf"), cls
    assert "1 … 32768" in opts.help_text(IclOptions, "icl")
    help_lines = opts.help_text(PpoOptions, "rlhf ppo").splitlines()
    assert any("--lam" in x and "in [0, 1]" in x for x in help_lines)
    assert any("--gamma" in x and "in [0, 1]" in x for x in help_lines)
    assert "at most half the model's positions" in opts.help_text(LoraOptions, "lora")
    assert "at most the visible devices" in opts.help_text(LaunchOptions, "lora")
    assert "1 … 100000" in opts.help_text(SweepOptions, "llm sweep")
    # The form's field carries the same help (its tooltip) and checks a value as it is typed.
    field = next(f for f in form.fields(PpoOptions) if f.name == "max_new_tokens")
    assert "1 … 32768" in field.spec.help
    assert form.check(field.spec, "40000") == "--max-new-tokens: must be at most 32768, got 40000"
    assert form.check(field.spec, "100") is None


def test_devices_above_the_physical_cores_run_with_a_note(monkeypatch):
    """On a CPU --devices may use every core this process may run on; past the physical ones the Result says so."""
    import psutil

    from llm_magics.common_options import within_devices
    from llm_magics.engine import device
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    assert within_devices(8) is None and "more than the 8 CPU cores" in within_devices(9)
    assert device.cores_note(4) is None
    assert device.cores_note(6) == "--devices 6 is above this machine's 4 physical cores: the workers share them"


def test_devices_count_cuda_devices_when_there_are_some(monkeypatch):
    from llm_magics.common_options import within_devices
    from llm_magics.engine import device
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device.torch.cuda, "device_count", lambda: 2)
    assert within_devices(2) is None and device.cores_note(2) is None
    assert within_devices(3) == "3 is more than the 2 CUDA devices here: at most 2"


def test_virtual_tokens_are_refused_before_the_base_loads(shell, capsys, demo, tiny_llama, monkeypatch):
    from llm_magics.methods import lora

    def no_load(*args, **kwargs):
        raise AssertionError("the base model was loaded")
    monkeypatch.setattr(lora, "base_model", no_load)
    shell.user_ns.update(namespace(demo))
    line = one_usage_line(shell, capsys, f"%lora --model {tiny_llama} --data df --method prefix --virtual-tokens 300")
    assert "--virtual-tokens 300 is more than half of the model's context of 512 positions" in line


# ---- sweeps are counted, not built --------------------------------------------------------------

def test_a_random_search_draws_grid_positions_as_it_drew_grid_points():
    """The points of a seeded random search over a finite grid are those the whole-grid draw gave."""
    import itertools
    import random

    from llm_magics.methods.lora import LoraOptions
    from llm_magics.tune.sweep import parse_grid, points
    axes = parse_grid(LoraOptions, "r=1,2,4,8 lr=1e-4,5e-4,1e-3 epochs=1,2", random_points=5)
    grid = [dict(zip(["r", "lr", "epochs"], combo)) for combo in itertools.product(*(a.values for a in axes))]
    for seed in range(5):
        assert points(axes, 5, seed) == random.Random(seed).sample(grid, 5)
    assert points(axes, 24, 0) != points(axes, 24, 1) and len({str(p) for p in points(axes, 24, 0)}) == 24


def test_a_huge_grid_is_refused_before_any_point_is_built(monkeypatch):
    from llm_magics.tune import sweep
    monkeypatch.setattr(sweep, "points", lambda *a, **k: pytest.fail("points were built"))
    values = ",".join(str(i) for i in range(1, 101))
    with pytest.raises(UsageError, match="the grid's 1,000,000,000,000 points is above the limit"):
        sweep.from_line(f"lora --model minilm --data df --grid 'r={values} block_size={values} virtual_tokens={values} "
                        f"encoder_hidden={values} target_r={values} epochs={values}'")


def test_max_points_raises_the_limit(tiny_bert, demo):
    from llm_magics.tune import sweep
    line = f"lora --model {tiny_bert} --data df --grid 'r=1~64' --random 1500"
    with pytest.raises(UsageError, match="above the limit of 1,000 runs"):
        sweep.from_line(line, {"df": demo[0]})
    run, options = sweep.from_line(line + " --max-points 1500", {"df": demo[0]})
    assert len(run.points) == 1500 and options.max_points == 1500


SWEPT = {"r": st.integers(-3, 70), "lr": st.sampled_from(["1e-4", "0", "nan", "-1", "x", "1e9"]),
         "epochs": st.integers(-1, 3), "dropout": st.sampled_from(["0", "0.1", "1", "-0.2"]),
         "virtual_tokens": st.integers(0, 100), "nosuch": st.just("1")}


@st.composite
def sweep_lines(draw):
    names = draw(st.lists(st.sampled_from(sorted(SWEPT)), min_size=0, max_size=3, unique=True))
    grid = " ".join(f"{n}={','.join(str(v) for v in draw(st.lists(SWEPT[n], min_size=1, max_size=3)))}"
                    for n in names)
    parts = [f"--grid '{grid}'"] if names or draw(st.booleans()) else []
    if draw(st.booleans()):
        parts.append(f"--random {draw(st.sampled_from(['1', '2', '0', '-3', '1500', '10**12', '1000000000000']))}")
    if draw(st.booleans()):
        parts.append(f"--max-points {draw(st.sampled_from(['1', '3', '0', '2000', '200000']))}")
    if draw(st.booleans()):
        parts.append(f"--sweep-seed {draw(st.sampled_from(['0', '7', '-1', 'x']))}")
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["--method prompt", "--method loraa", "--metric val_loss", "--epochs 0"])))
    return " ".join(draw(st.permutations(parts)))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(rest=sweep_lines())
def test_every_sweep_line_is_a_sweep_or_one_usage_line(rest, shell, capsys, home, store, demo, tiny_bert):
    """`%llm sweep` over its option space: a sweep (stopped before its first point runs) or one UsageError
    line, never a traceback, never a run recorded or a file left."""
    shell.user_ns.update(namespace(demo))
    before = files_under(home.cache_dir)
    started = []
    from llm_magics.tune import sweep
    original = sweep.Sweep.start
    sweep.Sweep.start = lambda self: started.append(self) or self   # parsed and built, not run
    try:
        capsys.readouterr()
        result = shell.run_cell(f"%llm sweep lora --model {tiny_bert} --data df {rest}")
    finally:
        sweep.Sweep.start = original
    captured = capsys.readouterr()
    lines = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
    if result.success:
        assert len(started) == 1 and len(started[0].points) <= 100_000
    else:
        assert len(lines) == 1 and lines[0].startswith("UsageError:"), (rest, lines)
    assert store.list() == [] and files_under(home.cache_dir) == before


# ---- %rlhf reward caps --max-length as the other trainers do -----------------------------------------

def test_reward_caps_max_length_at_the_model_positions_with_a_note(tiny_bert, store):
    from llm_magics import api
    long = " ".join(["word"] * 300)
    pairs = pd.DataFrame({"prompt": [f"q{i} {long}" for i in range(20)], "chosen": ["yes"] * 20,
                          "rejected": ["no"] * 20})
    result = api.rlhf.reward(model=str(tiny_bert), data=pairs, epochs=1, batch_size=8)   # default 256 on 128
    assert "--max-length 256 is beyond what the model reads (128 tokens): rows are cut at 128" in result.notes
    assert result.status == "ok" and result._max_length == 128


# ---- %index build --from FOLDER keeps to the folder ----------------------------------------------

def test_index_build_skips_symlinks_out_of_the_folder_with_a_note(tmp_path, tiny_bert):
    from llm_magics import api
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("the secret outside the folder")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("The first document talks about films.")
    (docs / "sub" / "b.md").write_text("The second one is about music.")
    (docs / "link.txt").symlink_to(outside / "key.txt")
    (docs / "linked").symlink_to(outside, target_is_directory=True)   # the walk does not enter linked folders
    (docs / "inside.txt").symlink_to(docs / "a.txt")   # a link that stays inside is kept
    result = api.index.build(name="docs_ix", source=str(docs), model=str(tiny_bert))
    sources = set(api.index.query(name="docs_ix", query="secret", k=10)["source"])
    assert not any("secret" in s or "key" in s for s in sources), sources
    assert any("1 file(s) skipped: symlinks to outside" in note for note in result.notes), result.notes


# ---- --resume finds a checkpoint only inside the home's runs folder ------------------------------------

def test_resume_never_reaches_a_checkpoint_outside_the_runs_folder(home, tmp_path):
    """Past the option's check (an API caller, a run folder that is a symlink out), the lookup itself stays in
    the runs folder: the outside checkpoint keeps its optimizer file and gets no continued.json."""
    from types import SimpleNamespace

    from llm_magics.engine import checkpoint
    from llm_magics.training import find_checkpoint
    outside = tmp_path / "elsewhere" / "checkpoint-last"
    outside.mkdir(parents=True)
    for name in (checkpoint.STATE, checkpoint.WEIGHTS, checkpoint.OPTIMIZER):
        (outside / name).write_text("theirs")
    (home.subdir("runs") / "lora-linked").symlink_to(outside.parent, target_is_directory=True)
    ctx = SimpleNamespace(settings=home, method="lora")
    for spec in (str(outside.parent), "../../elsewhere", "lora-linked"):
        with pytest.raises(UsageError, match="--resume: .*(not a run id|leads out of the runs folder)"):
            find_checkpoint(spec, ctx)
    assert sorted(p.name for p in outside.iterdir()) == sorted([checkpoint.STATE, checkpoint.WEIGHTS,
                                                                checkpoint.OPTIMIZER])
