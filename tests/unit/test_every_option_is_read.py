"""Every option a built-in command declares is read.

For each command: a baseline run on tiny models with the fewest rows and steps, then one run per option with
a valid value other than its default. The option is read when that run's fingerprint differs from its
baseline's: what the run records and returns (metrics, notes, trainable parameters, dtype, tables) and the
plan its live view shows (the events: what trains, steps, evaluations), timings left out. An option that
only means something on a GPU, in several processes or in a notebook is checked where it is read instead
(OTHERWISE, each with its reason). An option with neither is a failure: declare its value below.
"""
from __future__ import annotations

import inspect
import json
import os
import random
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pandas as pd
import pytest
from tests.helpers import TESTS_DIR, word_task
from tests.tiny_models import build_bert, build_llama

from llm_magics import options as opts
from llm_magics.engine.device import cpu_has_native_bf16
from llm_magics.errors import UsageError
from llm_magics.method import Result
from llm_magics.progress.events import Progress
from llm_magics.registry import registry
from llm_magics.runner import run_method


# ---- what a run leaves: its fingerprint ---------------------------------------------------------------

RUN_ID = re.compile(r"\b[a-z]+-[0-9a-f]{12}\b")
WHEN = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?")
TIMING = re.compile(r"seconds|_s$|per_s|/s$|elapsed|wall|peak|tokens_per|rows_per|runtime|per_second|flos|time")


def _plain(text: str) -> str:
    return WHEN.sub("<when>", RUN_ID.sub("<run>", str(text)))


def _metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not TIMING.search(k)}


def _table(frame: pd.DataFrame) -> str:
    return _plain(frame[[c for c in frame.columns if not TIMING.search(str(c))]].to_csv())


def fingerprint(returned: Any, events: list) -> dict:
    """What a run shows: its Result (or returned value) and its live view's events, timings and run ids left out."""
    plan = [(e.kind, _plain(e.title), e.done, e.total, e.unit, _plain(e.message), _metrics(e.metrics))
            for e in events]
    if not isinstance(returned, Result):
        shown = _table(returned) if isinstance(returned, pd.DataFrame) else _plain(repr(returned))
        return {"returned": shown, "plan": plan}
    r = returned
    return {"status": r.status, "metrics": _metrics(r.metrics), "trainable": (r.trainable_params, r.total_params),
            "model": _plain(r.model), "data": r.data_fingerprint, "device": r.device, "dtype": r.dtype,
            "labels": r.label_names, "notes": [_plain(n) for n in r.notes], "artifacts": sorted(r.artifacts),
            "tables": {k: _table(v) for k, v in r.tables.items()}, "plan": plan,
            "predictions": None if r.predictions is None else _table(r.predictions), "own": _own_fields(r),
            "weights": _weights(r)}


def _weights(result: Result) -> list[float]:
    """A sum per model the Result holds: what training changed even where no metric shows it yet."""
    import torch
    return [round(float(sum(p.detach().double().sum() for p in value.parameters())), 6)
            for value in vars(result).values() if isinstance(value, torch.nn.Module)]


def _own_fields(result: Result) -> dict:
    """A Result subclass's own plain fields (an index's settings, a probe's layer)."""
    import dataclasses
    base = {f.name for f in dataclasses.fields(Result)}
    return {f.name: _plain(repr(getattr(result, f.name))) for f in dataclasses.fields(result)
            if f.name not in base and isinstance(getattr(result, f.name), (str, int, float, bool, dict, list, tuple))}


@pytest.fixture
def events(monkeypatch) -> list:
    """Every progress event of the runs in this test (the live view's plan and evaluations)."""
    seen: list = []
    emit = Progress._emit

    def record(self, kind, metrics=None, message="", info=None):
        emit(self, kind, metrics, message, info)
        seen.append(self.events[-1])
    monkeypatch.setattr(Progress, "_emit", record)
    return seen


def outcome(method: str, command: str | None, kwargs: dict, events: list, after=None, before=None) -> dict:
    if before is not None:
        before()
    events.clear()
    try:
        returned = run_method(method, command, **kwargs)
    except UsageError as error:   # a valid value must not be refused: the fingerprint says so, and the test fails
        return {"refused": _plain(str(error))}
    shown = fingerprint(returned, events)
    if getattr(returned, "adapter", None):   # the next run may take the same adapter name
        run_method("lora", "unload", name=returned.adapter)
    if after is not None:
        shown["after"] = fingerprint(after(kwargs, returned), [])
    return shown


# ---- the tiny world every command runs in ---------------------------------------------------------------

@dataclass
class World:
    bert: Path
    bert_other: Path        # one layer, hidden 16: another encoder
    llama: Path
    llama_other: Path
    frame: pd.DataFrame     # text, label + notes (another text column) and flag (another label column)
    frame_other: pd.DataFrame
    sft: pd.DataFrame       # prompt, response + ask/reply (other columns), turns (chat messages)
    pairs: pd.DataFrame     # prompt, chosen, rejected + question/better/worse
    pairs_other: pd.DataFrame
    prompts: list[str]
    state: dict             # what a case's setup made (a tuned policy to evaluate)
    api: str                # an OpenAI-compatible server (tests/openai_stub_server.py) serving `llama`
    scratch: Path           # pytest's temporary folder for what cases write (removed with pytest's others)


def _frame(n: int, seed: int) -> pd.DataFrame:
    frame, _, _ = word_task(n, seed)
    rng = random.Random(seed + 1)
    frame["notes"] = frame["text"].sample(frac=1, random_state=seed).tolist()
    frame["flag"] = [rng.choice(["yes", "no"]) for _ in range(n)]
    return frame


def _sft(n: int) -> pd.DataFrame:
    words = ["alpha", "beta", "gamma", "delta"]
    rows = [{"prompt": f"Say word {i % 4}", "response": f"Word: {words[i % 4]}",
             "ask": f"Name {words[(i + 1) % 4]}", "reply": f"It is {words[(i + 2) % 4]}"}
            for i in range(n)]
    for row in rows:
        row["turns"] = [{"role": "user", "content": row["reply"]}, {"role": "assistant", "content": row["prompt"]}]
    return pd.DataFrame(rows)


def _pairs(n: int, seed: int) -> pd.DataFrame:
    _, pos, neg = word_task(40, 0)
    rng = random.Random(seed)
    make = lambda words: " " + " ".join(rng.choice(words) for _ in range(3))  # noqa: E731
    return pd.DataFrame([{"prompt": "Review:", "chosen": make(pos), "rejected": make(neg),
                          "question": "Say:", "better": make(neg), "worse": make(pos)} for _ in range(n)])


@pytest.fixture(scope="module")
def api_server(tiny_llama):
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, str(TESTS_DIR / "openai_stub_server.py"),
                             "--model", str(tiny_llama), "--served", str(tiny_llama), "--key", SECRET],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.environ[KEY_ENV] = SECRET
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        os.environ.pop(KEY_ENV, None)
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def world(tiny_bert, tiny_llama, tmp_path_factory, api_server) -> World:
    folder = tmp_path_factory.mktemp("other-models")
    return World(bert=tiny_bert, bert_other=build_bert(folder / "bert", layers=1, hidden=16),
                 llama=tiny_llama, llama_other=build_llama(folder / "llama", layers=1, hidden=16),
                 frame=_frame(24, 0), frame_other=_frame(24, 5), sft=_sft(12), pairs=_pairs(16, 0),
                 pairs_other=_pairs(16, 3), prompts=["Review:", "Say:"], state={},
                 api=api_server, scratch=tmp_path_factory.mktemp("scratch"))


def count_a(prompts, completions):
    """A rule reward: how many a's a completion has."""
    return [float(c.count("a")) for c in completions]


def count_e(prompts, completions):
    return [float(c.count("e")) for c in completions]


# ---- values -------------------------------------------------------------------------------------------

@dataclass
class From:
    """A value taken from the World (a model folder, a table)."""
    get: Callable[[World], Any]


@dataclass
class With:
    """A value, and what both it and its baseline need for the option to mean something (`--patience`
    needs evaluations; `--hidden` needs `--classifier mlp`)."""
    value: Any
    base: dict = field(default_factory=dict)


SFT = {"task": "sft", "model": From(lambda w: str(w.llama)), "data": From(lambda w: w.sft), "max_length": 32}

# A value per option name, for every command that declares it (a command's own table wins).
VALUES: dict[str, Any] = {
    "seed": 1, "val_size": 0.3, "test_size": 0.3, "text": "notes", "label": "flag",
    "data": From(lambda w: w.frame_other), "validation": From(lambda w: w.frame_other.head(6)),
    "test": From(lambda w: w.frame_other.tail(6)), "model": From(lambda w: str(w.bert_other)),
    "policy": From(lambda w: str(w.llama_other)), "dtype": "bfloat16",
    "epochs": 2, "batch_size": 2, "max_length": 6, "lr": 0.05, "grad_accum": 2, "max_grad_norm": 0.001,
    "weight_decay": 0.9, "warmup": 0.5, "scheduler": "constant", "eval_every": 1,
    "patience": With(1, {"eval_every": 1, "epochs": 3}),
    "r": 2, "alpha": 64.0, "dropout": 0.3, "target": ["query"], "pooling": "cls", "head_dropout": 0.5,
    "task": With("sft", {**{k: v for k, v in SFT.items() if k != "task"}, "data": From(lambda w: w.sft[["prompt", "response"]])}),
    "prompt": With("ask", SFT), "response": With("reply", SFT), "messages": With("turns", SFT),
    "max_rows": 6, "seeds": 2,
}


def _launch_reason(what: str) -> str:
    return f"{what}: only a launched run reads it; checked where it reaches torchrun's command or the run's spec"


# Options read outside the method (by the runner, the magic or the launcher) or only on hardware this test
# does not have: each is checked where it is read (test_options_read_elsewhere).
OTHERWISE: dict[str, str] = {
    "devices": _launch_reason("processes on this machine"),
    "strategy": _launch_reason("how the workers share the model"),
    "nodes": _launch_reason("machines taking part"),
    "node_rank": _launch_reason("this machine's index among the nodes"),
    "master_addr": _launch_reason("node 0's address"),
    "bg": "the runner reads it for every command: the run goes to a thread and a handle comes back",
    "out": "the magic reads it for every command: the Result is bound to that name",
    "device": "one device here (a CPU): the command must ask the run context for the device it names",
    "trust_remote_code": "tiny models have no code of their own to run: the flag must reach the loader",
    "resume": "continuing a run is tested in test_resume_once.py; here --resume last without a checkpoint is "
              "refused, so it is read",
    "bits": "QLoRA needs bitsandbytes on a CUDA GPU: on a CPU --bits 4 is refused, so it is read",
    "stream": "it changes the cell's output, not the run: the answers must reach RunContext.write, or not",
    "api_key_env": "another variable holding the same key changes nothing: one holding another key is refused",
    "api_timeout": "a longer wait changes nothing on a quick server: one too short to answer in is refused",
    "replace": "without it, building over an index of that name is refused",
    "glob": "the same SOURCE read as a name matches nothing and is refused, with a word on --glob",
}


@dataclass
class Case:
    method: str
    command: str | None
    base: dict                                           # the fewest rows and steps
    values: dict[str, Any] = field(default_factory=dict)  # this command's own values (beside VALUES)
    # A command that shares its options class and its handler with `like` up to the trainer: only the options
    # whose meaning passes through its own trainer are tried here, the rest where `like` tries them.
    like: str | None = None
    only: tuple[str, ...] = ()
    warm: bool = False   # caches (features, vectors): a first run fills them, the baseline reads them
    setup: Callable[[World], None] | None = None   # what the command needs first (an index to query)
    base_needs_setup: bool = False                 # the baseline itself, not only some values (eval's policy)
    before_each: Callable[[World], None] | None = None   # a command that changes what it acts on (%index add)
    refused: dict = field(default_factory=dict)   # this command's own options checked by their refusal (REFUSED)
    after: Callable[[dict, Any], Any] | None = None   # what else shows the effect (kwargs, returned → a value)
    spy: tuple[str, ...] = ()   # "module:function"s whose arguments are part of the plan (what reached FAISS)

    @property
    def id(self) -> str:
        return self.method + (f" {self.command}" if self.command else "")


BERT, LLAMA = From(lambda w: str(w.bert)), From(lambda w: str(w.llama))
FRAME, PAIRS = From(lambda w: w.frame), From(lambda w: w.pairs)
TRAIN = dict(model=BERT, data=FRAME, epochs=1, batch_size=4, max_length=12)
PAIR_VALUES = {"data": From(lambda w: w.pairs_other), "validation": From(lambda w: w.pairs_other.head(4)),
               "test": From(lambda w: w.pairs_other.tail(4)), "prompt": "question", "chosen": "better",
               "rejected": "worse", "max_length": 8}
OFFLINE = dict(policy=LLAMA, data=PAIRS, steps=2, batch_size=4, max_length=12)
TUNER = {"method": "lora", "target": With(["q_proj"], {"method": "lora"}), "r": With(2, {"method": "lora"}),
         "alpha": With(64.0, {"method": "lora"}), "dropout": With(0.3, {"method": "lora"}),
         "name": With("other_name", {"method": "lora"})}
ONLINE = dict(policy=LLAMA, reward=count_a, prompts=From(lambda w: w.prompts), steps=2, batch_size=4,
              num_generations=2, max_new_tokens=3)
ONLINE_VALUES = {**TUNER, "reward": count_e, "prompts": ["Tell:", "Go:"], "steps": 3, "batch_size": 2,
                 "num_generations": 4, "max_new_tokens": 5, "temperature": 0.3, "beta": 0.5,
                 "prompt_column": With("question", {"prompts": From(lambda w: w.pairs[["prompt", "question"]])}),
                 "stop_no_signal": 1, "probe_reward": True, "grad_accum": 2, "warmup": 0.9}
OFFLINE_VALUES = {**PAIR_VALUES, **TUNER, "warmup": 0.9, "beta": 0.5, "steps": 3, "epochs": With(2, {"steps": None})}

TEMPLATE = "Review: {text}\nSentiment: {label}"
CONTEXT = "{context}\nReview: {text}\nSentiment: {label}"
DOCS = From(lambda w: w.frame[["text"]])


def two_indexes(w: World) -> None:
    """docs and docs_other, built again (for a command that changes them)."""
    common = dict(model=str(w.bert), chunk=8, overlap=2, dtype="float32", replace=True)
    run_method("index", "build", name="docs", source=w.frame[["text"]], **common)
    run_method("index", "build", name="docs_other", source=w.frame_other[["notes"]], **common)


def build_indexes(w: World) -> None:
    """docs (flat, with BM25), docs_other (other texts), docs_ivf and docs_hnsw, on the tiny encoder."""
    common = dict(model=str(w.bert), chunk=8, overlap=2, dtype="float32")
    run_method("index", "build", name="docs", source=w.frame[["text"]], **common)
    run_method("index", "build", name="docs_other", source=w.frame_other[["notes"]], **common)
    run_method("index", "build", name="docs_ivf", source=w.frame[["text"]], kind="ivf", nlist=2, **common)
    run_method("index", "build", name="docs_hnsw", source=w.frame[["text"]], kind="hnsw", **common)


def query_built(kwargs: dict, returned=None):
    return run_method("index", "query", name=kwargs["name"], query="good fine", k=3, mode="dense")


ICL = dict(model=LLAMA, template=TEMPLATE, data=From(lambda w: w.frame.head(6)), demos=FRAME, shots=1,
           labels=["neg", "pos"], dtype="float32")
GENERATE = {"labels": None, "max_tokens": 2}
KEY_ENV, SECRET = "LLM_MAGICS_TEST_OPTION_KEY", "sk-option-test"
API = {"api_base": From(lambda w: w.api), "api_key_env": KEY_ENV}
SIMILAR = {"select": "similar", "embed_model": BERT}
def eval_queries(w: World) -> pd.DataFrame:
    """Queries with known answers for %index eval: in `source`, each text's second BM25 hit in `docs`; in `top`,
    its first; in `both`, its second hits in docs and docs_other (so either index can be scored). BM25, so that
    no encoder is loaded (and cached) before the run that is watched."""
    texts = w.frame["text"].head(6).tolist()
    hits, other = (run_method("index", "query", name=name, query=texts, k=2, mode="lexical")   # in the texts' order
                   for name in ("docs", "docs_other"))
    second = hits[hits["rank"] == 2]["source"].tolist()
    return pd.DataFrame({"text": texts, "notes": w.frame["notes"].head(6).tolist(), "source": second,
                         "top": hits[hits["rank"] == 1]["source"].tolist(),
                         "both": [[a, b] for a, b in zip(second, other[other["rank"] == 2]["source"])]})


INDEXED = {"index": "docs", "template": CONTEXT, "top_k": 1}

def two_adapters(w: World) -> None:
    """LoRA adapters `one` and `two` (r 2 and r 4) in the session, and a folder to save them in."""
    import tempfile
    for name, r in (("one", 2), ("two", 4)):
        if name not in run_method("lora", "adapters")["name"].tolist():
            run_method("lora", None, **{**_given_all(TRAIN, w), "r": r, "name": name})
    w.state["folder"] = Path(tempfile.mkdtemp(prefix="adapters-", dir=w.scratch))


def a_folder(w: World) -> None:
    import tempfile
    w.state["folder"] = Path(tempfile.mkdtemp(prefix="collect-", dir=w.scratch))


def saved_adapters(w: World) -> None:
    """`one` and `two` saved, each in its folder (for %lora load)."""
    two_adapters(w)
    w.state["saved"] = w.state["folder"] / "saved"
    for name in ("one", "two"):
        if not (w.state["saved"] / name).exists():
            run_method("lora", "save", name=name, path=str(w.state["saved"] / name))


def unload(*names: str) -> None:
    for name in set(names) & set(run_method("lora", "adapters")["name"]):
        run_method("lora", "unload", name=name)


def saved_config(kwargs: dict, returned=None) -> dict:
    """What `%lora save` wrote: the adapter's config, minus where it came from."""
    config = json.loads((Path(kwargs["path"]) / "adapter_config.json").read_text())
    return {k: v for k, v in config.items() if "path" not in k}


def tuned_policies(w: World) -> None:
    """Two tuned policies (one DPO step each, on other pairs) for %rlhf eval."""
    for key, pairs in (("policy", w.pairs), ("policy_other", w.pairs_other)):
        w.state[key] = run_method("rlhf", "dpo", **{**_given_all(OFFLINE, w), "data": pairs, "steps": 1, "lr": 0.05,
                                                     "warmup": 0})   # one step: no warmup, or its lr is 0


OWN_TRAINER = ("beta", "max_length", "batch_size", "steps", "epochs", "method", "lr")
CASES = [
    Case("probe", None, dict(model=BERT, data=FRAME, dtype="float32"), warm=True, values=
         {"layer": "0", "classifier": "forest", "C": 100.0, "hidden": ["4"], "alpha": 0.5, "trees": 3,
          "max_depth": 1, "max_iter": 1, "standardize": False, "max_length": 3, "batch_tokens": With(32, {"cache": False}),
          "cache": False}),
    Case("icl", None, ICL,
         {"template": "Text: {text}\nAnswer: {label}", "data": From(lambda w: w.frame_other.head(6)),
          "demos": From(lambda w: w.frame_other), "shots": 2, "select": "random", "labels": ["pos", "neg"],
          "label": With("flag", {"labels": ["yes", "no"], "template": "Review: {text}\nSentiment: {flag}"}),
          "calibrate": False, "chat": True, "score": "mean", "zero_shot": False, "separator": "\n", "limit": 3,
          "max_tokens": With(1, GENERATE), "temperature": With(1.5, GENERATE), "top_p": With(0.5, {**GENERATE,
          "temperature": 1.0}), "stop": With([":"], GENERATE), "index": With("docs_other", INDEXED),
          "top_k": With(2, INDEXED), "query_field": With("notes", SIMILAR),
          "embed_model": With(From(lambda w: str(w.bert_other)), SIMILAR), "batch_tokens": 8,
          "model": From(lambda w: str(w.llama_other)), "api_base": With(From(lambda w: w.api), {"api_key_env": KEY_ENV}),
          "api_style": With("chat", {**API, **GENERATE}), "seed": With(1, {"select": "random"})},
         setup=build_indexes),
    Case("rlhf", "eval", dict(run=From(lambda w: w.state["policy"]), reward=count_a, prompts=From(lambda w: w.prompts),
                              max_new_tokens=3, batch_size=2, samples=2),
         {"run": From(lambda w: w.state["policy_other"]), "reward": count_e, "prompts": ["Tell:", "Go:"],
          "prompt_column": With("question", {"prompts": From(lambda w: w.pairs[["prompt", "question"]])}),
          "max_new_tokens": 5, "temperature": 0.3, "batch_size": 1, "samples": 1, "seed": 1},
         setup=tuned_policies, base_needs_setup=True),
    Case("rlhf", None, {}, {"limit": 1}, setup=tuned_policies),
    Case("index", "add", dict(name="docs", source=From(lambda w: w.frame_other[["notes"]])),
         {"source": From(lambda w: w.frame[["text"]].head(4)), "text": With("notes", {"source": FRAME}),
          "doc_id": With("flag", {"source": FRAME, "text": "text"}), "name": "docs_other"},
         setup=two_indexes, base_needs_setup=True, before_each=two_indexes, after=query_built),
    Case("index", "info", dict(name="docs"), {"name": "docs_other"}, setup=build_indexes, base_needs_setup=True),
    Case("index", None, {}), Case("index", "list", {}), Case("lora", "adapters", {}),   # --out or no option
    Case("index", "delete", dict(name="docs", source="*#2", glob=True), {"name": "docs_other", "source": "*#1*"},
         setup=two_indexes, base_needs_setup=True, before_each=two_indexes),
    Case("index", "drop", dict(name="docs"), {"name": "docs_other"}, setup=two_indexes, base_needs_setup=True,
         before_each=two_indexes, after=lambda kwargs, _: run_method("index", "list")[["name", "chunks"]]),
    Case("lora", "use", dict(name="one"), {"name": "two"}, setup=two_adapters, base_needs_setup=True),
    Case("lora", "save", dict(name="one", path=From(lambda w: str(w.state["folder"] / "saved"))),
         {"name": "two", "path": From(lambda w: str(w.state["folder"] / "elsewhere"))}, setup=two_adapters,
         base_needs_setup=True, after=saved_config),
    Case("lora", "unload", dict(name="one"), {"name": "two"}, setup=two_adapters, base_needs_setup=True,
         before_each=two_adapters, after=lambda kwargs, _: run_method("lora", "adapters")[["name"]]),
    Case("lora", "merge", dict(name="one"), {"name": "two", "save": From(lambda w: str(w.state["folder"] / "merged"))},
         setup=two_adapters, base_needs_setup=True, before_each=two_adapters),
    Case("lora", "load", dict(path=From(lambda w: str(w.state["saved"] / "one")), name="loaded"),
         {"path": From(lambda w: str(w.state["saved"] / "two")), "name": "loaded_too"}, setup=saved_adapters,
         base_needs_setup=True, before_each=lambda w: unload("loaded", "loaded_too"),
         refused={"model": (From(lambda w: str(w.bert_other)), {}, "--model|belongs|trained")}),
    Case("rlhf", "collect", dict(path=From(lambda w: str(w.state["folder"] / "choices.jsonl")), model=LLAMA,
                                 prompts=From(lambda w: w.prompts), max_new_tokens=3),
         {"path": From(lambda w: str(w.state["folder"] / "other.jsonl")), "prompts": ["Tell:", "Go:"], "k": 3, "max_new_tokens": 5, "seed": 1,
          # a random tiny model's next-token distribution is all but flat: a low temperature shows which model
          "model": With(From(lambda w: str(w.llama_other)), {"temperature": 0.01}), "temperature": 0.01,
          "prompt_column": With("question", {"prompts": From(lambda w: w.pairs[["prompt", "question"]])})},
         setup=a_folder, base_needs_setup=True, after=lambda kwargs, session: (session.prompts, session.completions),
         refused={"models": (From(lambda w: [str(w.llama), str(w.llama_other)]), {}, "--models")}),
    Case("index", "build", dict(name="docs", source=DOCS, model=BERT, chunk=8, overlap=2, dtype="float32",
                                replace=True),
         {"source": From(lambda w: w.frame_other[["notes"]]), "text": With("notes", {"source": FRAME}),
          "doc_id": With("flag", {"source": FRAME, "text": "text"}), "name": "docs_other", "chunk": 4,
          "overlap": 3, "kind": "hnsw", "nlist": With(3, {"kind": "ivf"}), "nprobe": With(3, {"kind": "ivf", "nlist": 4}),
          "hnsw_m": With(4, {"kind": "hnsw"}), "ef_construction": With(8, {"kind": "hnsw"}),
          "ef_search": With(8, {"kind": "hnsw"}), "precision": "float16", "lexical": False, "cache": False,
          "batch_tokens": With(16, {"cache": False})},
         warm=True, after=query_built),
    Case("index", "query", dict(name="docs", query="good fine", k=3),
         {"name": "docs_other", "query": "bad awful", "k": 2, "text": With("notes", {"query": FRAME}),
          "mode": "dense", "nprobe": With(1, {"name": "docs_ivf"}), "ef_search": With(1, {"name": "docs_hnsw"}),
          "candidates": With(3, {"mode": "hybrid"}), "rrf_k": With(1, {"mode": "hybrid"})},
         setup=build_indexes, base_needs_setup=True,
         spy=("llm_magics.retrieval.vectors:apply_search_params", "llm_magics.retrieval.vectors:search")),
    Case("index", "eval", dict(name="docs", query=From(eval_queries), text="text", k=2, mode="dense"),
         {"name": With("docs_other", {"relevant": "both"}),
          "query": From(lambda w: eval_queries(w).head(3)), "k": 1, "text": "notes",
          "relevant": "top", "mode": "lexical", "nprobe": With(1, {"name": "docs_ivf"}),
          "ef_search": With(1, {"name": "docs_hnsw"}), "candidates": With(3, {"mode": "hybrid"}),
          "rrf_k": With(1, {"mode": "hybrid"})},
         setup=build_indexes, base_needs_setup=True,
         spy=("llm_magics.retrieval.vectors:apply_search_params", "llm_magics.retrieval.vectors:search",
              "llm_magics.retrieval.store:fuse")),
    Case("finetune", None, TRAIN, {"train": "head", "feature_cache": With(False, {"train": "head"})}),
    Case("lora", None, TRAIN,
         {"method": "ia3", "target_r": 2, "block_size": 4, "virtual_tokens": 3, "encoder_hidden": 8,
          "init_text": "positive review", "name": "other_name",
          # auto is already bf16 where the CPU does it natively (the frozen base's dtype, under autocast)
          "dtype": "float32" if cpu_has_native_bf16() else "bfloat16"}),
    Case("rlhf", "reward", dict(model=BERT, data=PAIRS, epochs=1, batch_size=4, max_length=12),
         {**PAIR_VALUES, "train": "head", "r": With(2, {"train": "lora"}), "alpha": With(64.0, {"train": "lora"}),
          "dropout": With(0.3, {"train": "lora"}), "target": With(["query"], {"train": "lora"})}),
    Case("rlhf", "dpo", OFFLINE, {**OFFLINE_VALUES, "sft_weight": 0.5}),
    Case("rlhf", "kto", OFFLINE, OFFLINE_VALUES, like="rlhf dpo", only=OWN_TRAINER),
    Case("rlhf", "orpo", OFFLINE, OFFLINE_VALUES, like="rlhf dpo", only=OWN_TRAINER),
    Case("rlhf", "grpo", ONLINE, ONLINE_VALUES),
    Case("rlhf", "rloo", ONLINE, ONLINE_VALUES, like="rlhf grpo",
         only=("beta", "num_generations", "temperature", "max_new_tokens", "batch_size", "steps", "method")),
    Case("rlhf", "ppo", dict(policy=LLAMA, reward=count_a, prompts=From(lambda w: w.prompts), steps=2, batch_size=4,
                             minibatch_size=2, ppo_epochs=2, max_new_tokens=3, lr=0.01),
         {**ONLINE_VALUES, "minibatch_size": 4, "ppo_epochs": 1, "kl": 0.5, "target_kl": 0.01, "kl_horizon": With(4, {"target_kl": 0.01}),
          "stop_kl": 1e-6, "gamma": 0.5, "lam": 0.5, "clip": 0.01, "vf_clip": 0.01, "vf_coef": 0.9,
          "whiten": False, "reward_norm": True, "no_eos_penalty": -1.0}),
]


# ---- running them -------------------------------------------------------------------------------------

def _given(value: Any, w: World) -> Any:
    return value.get(w) if isinstance(value, From) else value


def _given_all(values: dict, w: World) -> dict:
    return {k: _given(v, w) for k, v in values.items()}


def _key(values: dict) -> tuple:
    return tuple(sorted((k, v if isinstance(v, (str, int, float, bool, type(None))) else id(v))
                        for k, v in values.items()))


def value_for(case: Case, spec: opts.Spec) -> With | None:
    """The option's changed value and the baseline it is compared with (its condition met in both)."""
    chosen = case.values.get(spec.name, VALUES.get(spec.name))
    if chosen is None:
        return None
    if isinstance(chosen, With):
        return chosen
    condition = {}
    if spec.applies is not None:
        a = spec.applies
        condition[a.option] = a.values[0] if a.values else a.above + 1
    return With(chosen, condition)


def declared(case: Case) -> list[opts.Spec]:
    return opts.specs(registry().load(case.method).command(case.command).options)


def spy_on(target: str, events: list, monkeypatch) -> None:
    """Each call of `target` joins the events, as (function name, its plain arguments)."""
    import importlib
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    real = getattr(module, name)

    def spied(*args, **kwargs):
        plain = [a for a in (*args, *kwargs.values()) if isinstance(a, (str, int, float, bool, type(None)))]
        events.append(SimpleNamespace(kind=name, title="", done=0, total=None, unit="", message=repr(plain),
                                      metrics={}))
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spied)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_option_changes_the_run(case, world, events, monkeypatch):
    for target in case.spy:
        spy_on(target, events, monkeypatch)
    if case.setup:
        case.setup(world)
    base = _given_all(case.base, world)
    refresh = (lambda: case.before_each(world)) if case.before_each else None
    baselines: dict[tuple, dict] = {}

    def compared_with(extra: dict) -> dict:
        key = _key(extra)
        if key not in baselines:
            baselines[key] = outcome(case.method, case.command, {**base, **extra}, events, case.after, refresh)
        return baselines[key]

    if case.warm:
        outcome(case.method, case.command, base, events, case.after)   # later runs read what this one wrote
    first = compared_with({})
    assert "refused" not in first, first
    missing, refused, unread = [], [], []
    for spec in declared(case):
        if spec.name in OTHERWISE or spec.name in case.refused or (case.only and spec.name not in case.only):
            continue
        chosen = value_for(case, spec)
        if chosen is None:
            missing.append(spec.flag)
            continue
        extra = _given_all(chosen.base, world)
        before = compared_with(extra)
        assert "refused" not in before, (spec.flag, before)
        after = outcome(case.method, case.command, {**base, **extra, spec.name: _given(chosen.value, world)}, events,
                        case.after, refresh)
        if "refused" in after:
            refused.append(f"{spec.flag}: {after['refused']}")
        elif after == before:
            unread.append(spec.flag)
    assert outcome(case.method, case.command, base, events, case.after, refresh) == first, \
        "the baseline is not repeatable"
    assert not missing, f"no value to try for {missing}: add one to VALUES or the case"
    assert not refused, f"valid values refused: {refused}"
    assert not unread, f"changing these changed nothing the run records, plans or returns: {unread}"


def test_every_built_in_command_runs_here():
    """A new command (or a method's new subcommand) fails here until it has its case."""
    commands = {name + (f" {word}" if word else "") for name in ("probe", "icl", "index", "finetune", "lora", "rlhf")
                for word in [None, *registry().load(name).commands]}
    assert commands == {case.id for case in CASES}


def test_a_command_like_another_declares_what_the_other_declares():
    """kto, orpo and rloo try only their trainers' options: every other one is tried on the command they share
    their options class and handler with."""
    by_id = {case.id: case for case in CASES}
    for case in CASES:
        if case.like:
            other = by_id[case.like]
            assert registry().load(case.method).command(case.command).options is \
                registry().load(other.method).command(other.command).options
            assert set(case.only) <= {s.name for s in declared(case)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and the machine is shared."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the options read elsewhere --------------------------------------------------------------------------

class Launched(Exception):
    """Raised by the launcher in place of starting torchrun: what it would have started."""


def _launched(case: Case, world: World, monkeypatch, **values) -> tuple | str:
    """The torchrun flags and the spec's strategy a launched run would start with, or the refusal."""
    from llm_magics.launch.launcher import Launcher

    def start(self):
        spec = json.loads(Path(self.spec_path).read_text())
        raise Launched(sorted(a for a in self.command() if a.startswith("--")), spec["options"].get("strategy"))
    monkeypatch.setattr(Launcher, "start", start)
    try:
        run_method(case.method, case.command, **_given_all(case.base, world), **values)
    except Launched as launched:
        return tuple(map(str, launched.args))
    except UsageError as error:
        return str(error)
    raise AssertionError(f"{case.id} {values} neither launched nor was refused")


def check_launch_option(case, name, world, monkeypatch) -> None:
    two = {"devices": 2}
    nodes = {"devices": 2, "nodes": 2, "master_addr": "10.0.0.1"}
    if name == "devices":
        shown = _launched(case, world, monkeypatch, **two)
        assert "--nproc-per-node=2" in str(shown) or "runs in one process" in str(shown), shown
        return
    base, changed = {"strategy": (two, {**two, "strategy": "fsdp"}), "nodes": (two, nodes),
                     "node_rank": (nodes, {**nodes, "node_rank": 1}),
                     "master_addr": (nodes, {**nodes, "master_addr": "10.0.0.2"})}[name]
    assert _launched(case, world, monkeypatch, **base) != _launched(case, world, monkeypatch, **changed)


def check_background(case, world) -> None:
    from llm_magics.runner import RunHandle
    handle = run_method(case.method, case.command, **_given_all(case.base, world), bg=True)
    assert isinstance(handle, RunHandle) and isinstance(handle.result(timeout=600), Result)


def check_bound(case, world, shell) -> None:
    by_name = {s.name: s for s in declared(case)}
    words = [case.command] if case.command else []
    for name, value in _given_all(case.base, world).items():
        spec = by_name[name]
        flag = [] if spec.positional else [spec.flag]
        if spec.kind is bool:
            words.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif spec.kind is list:
            words += flag + [shlex.quote(",".join(value))]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            words += flag + [shlex.quote(str(value))]
        else:   # tables, callables, Results: by a variable's name, as a notebook gives them
            shell.user_ns[f"given_{name}"] = value
            words += flag + [f"given_{name}"]
    assert shell.run_line_magic(case.method, " ".join(words + ["--out", "bound"])) is None
    assert shell.user_ns["bound"] is not None   # a Result; %index query's table


def check_device(case, world, monkeypatch) -> None:
    from llm_magics.runner import RunContext
    asked, pick = [], RunContext.device

    def device(self, preference=None):
        if not inspect.stack()[1].filename.endswith("runner.py"):   # the method's own question, not the runner's
            asked.append(preference)
        return pick(self, None if preference == "cuda:0" else preference)
    monkeypatch.setattr(RunContext, "device", device)
    if case.id == "lora load":   # it asks for a device only when its base is not in memory: unload what shares it
        unload("one", "two", "loaded", "loaded_too")
    run_method(case.method, case.command, **_given_all(case.base, world), device="cuda:0")
    assert "cuda:0" in asked, asked


def check_loader(case, world, monkeypatch) -> None:
    import transformers

    from llm_magics.models import free
    seen = []
    for auto in (transformers.AutoConfig, transformers.AutoTokenizer):
        load = auto.from_pretrained.__func__

        def spy(cls, *args, _load=load, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _load(cls, *args, **kwargs)
        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    free()   # a cached model would be reused without loading
    run_method(case.method, case.command, **_given_all(case.base, world), trust_remote_code=True)
    assert True in seen, seen


# option → (value, what the run needs beside it, what the refusal says)
REFUSED = {"glob": (False, {}, "--glob"), "resume": ("last", {}, "--resume"), "bits": (4, {}, "--bits"), "replace": (False, {}, "--replace"),
           "api_key_env": ("LLM_MAGICS_TEST_WRONG_KEY", API, "401|key|[Uu]nauthori"),
           "api_timeout": (1e-4, API, "[Tt]ime")}


def check_refused(case, name, world, monkeypatch) -> None:
    value, needs, says = case.refused.get(name) or REFUSED[name]
    value = _given(value, world)
    if case.before_each:
        case.before_each(world)
    monkeypatch.setenv("LLM_MAGICS_TEST_WRONG_KEY", "sk-wrong")
    given = {**_given_all(case.base, world), **_given_all(needs, world)}
    if name == "replace":   # an index of that name first
        run_method(case.method, case.command, **given)
    with pytest.raises(UsageError, match=says):
        run_method(case.method, case.command, **{**given, name: value})


def check_stream(case, world, monkeypatch) -> None:
    from llm_magics.runner import RunContext
    written = []
    monkeypatch.setattr(RunContext, "write", lambda self, text: written.append(text))
    for stream in (False, True):
        written.clear()
        run_method(case.method, case.command, **_given_all({**case.base, **GENERATE}, world), stream=stream)
        assert bool(written) is stream, (stream, written)


ELSEWHERE = [(case, name) for case in CASES if not case.like   # a command like another reaches these by its code
             for name in [*OTHERWISE, *case.refused] if name in {s.name for s in declared(case)}]


@pytest.mark.parametrize("case,name", ELSEWHERE, ids=[f"{c.id} --{n.replace('_', '-')}" for c, n in ELSEWHERE])
def test_options_read_elsewhere(case, name, world, monkeypatch, request):
    if case.base_needs_setup:
        case.setup(world)
    if case.before_each:
        case.before_each(world)
    if name in ("devices", "strategy", "nodes", "node_rank", "master_addr"):
        check_launch_option(case, name, world, monkeypatch)
    elif name == "bg":
        check_background(case, world)
    elif name == "out":
        check_bound(case, world, request.getfixturevalue("shell"))
    elif name == "device":
        check_device(case, world, monkeypatch)
    elif name == "trust_remote_code":
        check_loader(case, world, monkeypatch)
    elif name == "stream":
        check_stream(case, world, monkeypatch)
    else:
        check_refused(case, name, world, monkeypatch)
