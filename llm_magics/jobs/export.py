"""`%llm export RUN_ID PATH`: a recorded training run as a job for a shell or a cluster.

PATH receives `train.py` (the standalone script), `job.json` (the method and its
options, seed included, and the strategy the run used), the data as Parquet files
(or copies of the data files the run read), `accelerate.yaml` (accelerate's launcher
config: processes, machines, and FSDP's wrap class when the run used FSDP) and a
`README.md` with the one command for one node and for several (torchrun, or
`accelerate launch --config_file accelerate.yaml`). Run from a shell, the job
records its Result in that machine's run store, where `%llm compare` shows it
beside the notebook's runs.

The data comes from the run's launch folder when it ran with `--devices`, else
from what its options name: a file (copied), a dataset name (kept), or a notebook
variable that still exists (written as Parquet). A run that got its data as a
Python object through the API has nothing to name it by, and is refused. The job
carries the data the run trained on or nothing: the method prepares what the job
will read as the run did, and a fingerprint other than the run's recorded one (the
variable or file changed since), or data that cannot be read (a variable deleted),
is one line. The folder is written whole or not at all (`safe_io.atomic_folder`,
with a checksum list); `job.json` names data files relative to the job folder, and
a model given as a relative folder relative to it too (`paths`).

`%rlhf` runs are recorded as method "rlhf" with their command ("reward", "dpo", …): the job re-runs that
subcommand. `reward` and `dpo|kto|orpo` carry their preference pairs (train,
validation, test as the run was given them; the seed splits the rest alike) and
launch like `%finetune`. `ppo|grpo|rloo` run in one process (`python train.py`,
no launcher config) and are exported when their reward is a saved reward model,
whose folder is copied into the job (`reward_model/`) with the prompts as Parquet;
a Python callable reward cannot travel, and is refused in one line, as are `eval`
(it trains nothing) and `collect` (it needs a person).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..common_options import file_path
from ..errors import UsageError
from ..options import option
from .accelerate import ACCELERATE_FILE, wrap_classes, write_accelerate_config
from ..launch.spec import DATA_FIELDS, write_data
from ..records import run_title
from ..safe_io import atomic_folder, write_manifest
from .job import JOB

DROPPED = ("out", "bg", "resume")
MODEL_FIELDS = ("model", "policy")   # the options that name a model (a relative folder is kept relative to the job)
# The %rlhf commands a job cannot re-run, and why (one line each). `reward` and `dpo|kto|orpo` train on
# preference pairs, which a job carries as files; `ppo|grpo|rloo` go when their reward is a saved reward model
# (its folder travels with the job), not when it is a Python callable (`_online`).
REFUSED = {
    "rlhf eval": "%rlhf eval runs score a policy and train nothing; export takes training runs (%finetune, "
                 "%lora, %rlhf reward, dpo, kto, orpo, and ppo, grpo, rloo against a reward model)",
    "rlhf collect": "%rlhf collect asks a person in a widget, which a shell job cannot; export takes training runs",
}
ONLINE = ("rlhf ppo", "rlhf grpo", "rlhf rloo")   # one process each: the job runs `python train.py`


@dataclass
class ExportOptions:
    run_id: str = option(positional=True, help="the recorded run (%llm runs lists them)", metavar="RUN_ID")
    path: str = option(positional=True, help="a new folder for the job", metavar="PATH", check=file_path)

TRAIN_PY = '''#!/usr/bin/env python
"""{method} run {run_id}, exported by llm-magics (`%llm export`). See README.md.

    python train.py                                   # one process
    torchrun --standalone --nproc-per-node {devices} train.py   # {devices} processes on this machine
"""
import sys
from pathlib import Path

from llm_magics.jobs.job import main

if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent))
'''

README = """# {method} run {run_id}, exported

Reproduces the recorded run (same options, data and seed: `job.json`; data in this folder). Needs
`pip install llm-magics` (the version that recorded it: {version}) on every machine, and this folder on each.

## One machine

```
torchrun --standalone --nproc-per-node {devices} train.py
```

(one process per GPU; on a machine without one, CPU processes with the gloo backend). `python train.py` runs it in
one process.

With accelerate instead (`accelerate.yaml`: {processes} processes, strategy {strategy}{wrap_line}):

```
accelerate launch --config_file accelerate.yaml train.py
```

## Several machines

On each of the M machines, in this folder, with R its index (0 on the machine at HOST, which every machine reaches
on PORT):

```
torchrun --nnodes M --node-rank R --master-addr HOST --master-port PORT --nproc-per-node {devices} train.py
```

or with accelerate (`num_machines`, `machine_rank`, `main_process_ip` and `main_process_port` in `accelerate.yaml`
are the run's; on the command line they override the file, and `--num_processes` counts every machine's):

```
accelerate launch --config_file accelerate.yaml --num_machines M --machine_rank R --main_process_ip HOST \
    --main_process_port PORT --num_processes $((M * {devices})) train.py
```

The global batch is `--batch-size` {batch_size} whatever the number of processes: each process trains on its slice
of every batch, and gradients are averaged, so the run follows the one-process run.

## Where the result goes

The Result is recorded in the run store of the machine that runs rank 0 (`$LLM_MAGICS_HOME/runs.sqlite`, by default
`~/.cache/llm_magics/runs.sqlite`); `%llm compare` there shows it beside the notebook's runs. Its checkpoints are in
`$LLM_MAGICS_HOME/runs/<run id>/`.

Original metrics: {metrics}
"""


README_ONE = """# {method} run {run_id}, exported

Reproduces the recorded run (same options, prompts, reward model and seed: `job.json`; the prompts and the reward
model's folder are in this folder). Needs `pip install llm-magics` (the version that recorded it: {version}).

```
python train.py
```

{method} runs in one process (rollouts and updates on one device): the job takes no multi-process launcher. The
Result is recorded in this machine's run store (`$LLM_MAGICS_HOME/runs.sqlite`, by default
`~/.cache/llm_magics/runs.sqlite`), where `%llm compare` shows it beside the notebook's runs.

Original metrics: {metrics}
"""


def export(run_id: str, path: str | Path, namespace: dict | None = None) -> Path:
    from ..version import __version__ as version
    from ..registry import registry
    from ..runs import RunStore
    from ..settings import current
    record = RunStore(current().runs_path).get(run_id)
    if record is None:
        raise UsageError(f"%llm export: no recorded run {run_id!r} (%llm runs lists them)")
    name, word = record["method"], record.get("command")
    method = run_title(name, word)   # "rlhf dpo": the keys of REFUSED and ONLINE, and what the job's texts say
    cls = registry().load(name)
    command = cls.command(word)
    if command is None:
        raise UsageError(f"%llm export: run {run_id} was recorded by %{name} {word}, which this version of "
                         f"llm-magics does not have")
    refusal = REFUSED.get(method)
    if refusal:
        raise UsageError(f"%llm export: {refusal}")
    names = {f for f in getattr(command.options, "__dataclass_fields__", {})}
    if "devices" not in names:
        raise UsageError(f"%llm export: {method} runs do not train (export takes %finetune, %lora and other "
                         "training runs)")
    target = _target(path)
    namespace = namespace or {}
    options = {k: v for k, v in record["options"].items() if k in names and k not in DROPPED}
    try:
        _write(target, record, cls, command, run_id, method, options, namespace, version)
    except UsageError as exc:   # safe_io's own (a folder that cannot be written) named as export's
        if str(exc).startswith("%llm export"):
            raise
        raise UsageError(f"%llm export: {exc}") from None
    return target


def _write(target: Path, record: dict, cls, command, run_id: str, method: str, options: dict, namespace: dict,
           version: str) -> None:
    name, word = record["method"], record.get("command")
    with atomic_folder(target) as staging:   # a kill leaves the whole job or none (safe_io)
        if method in ONLINE:
            data_files = _online(run_id, word, options, namespace, staging)
        else:
            data_files = _data(run_id, options, namespace, staging)
            _check_data(run_id, record, cls, word, options, data_files, staging, namespace)
        _write_launch_files(staging, record, command, method, run_id, options, version)
        paths = _model_paths(options, target)
        (staging / JOB).write_text(json.dumps({"method": name, "command": word, "run_id": run_id,
                                               "options": options, "data_files": data_files, "paths": paths},
                                              indent=1))
        write_manifest(staging)


def _target(path: str | Path) -> Path:
    """The job's folder: a new name, or an empty folder; a file, a name too long or a full folder is one line."""
    too_long = file_path(str(path))   # the one name rule (the magic's option check; here for the API too)
    if too_long:
        raise UsageError(f"%llm export: PATH {too_long}")
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise UsageError(f"%llm export: {target} is a file; name a new folder for the job")
    try:
        full = target.is_dir() and any(target.iterdir())
    except OSError as exc:
        raise UsageError(f"%llm export: cannot read {target} ({exc.strerror or exc}); name a new folder") from None
    if full:
        raise UsageError(f"%llm export: {target} exists and is not empty; name a new folder")
    return target


def _write_launch_files(folder: Path, record: dict, command, method: str, run_id: str, options: dict,
                        version: str) -> None:
    """train.py and README.md, and accelerate.yaml for a command torchrun can launch."""
    devices = max(int(options.get("devices") or 1), 1)
    script = TRAIN_PY.format(method=method, run_id=run_id, devices=devices)
    if not command.launchable:
        script = "".join(line for line in script.splitlines(keepends=True) if "torchrun" not in line)
    (folder / "train.py").write_text(script)
    (folder / "train.py").chmod(0o755)
    if not command.launchable:   # one process: no launcher config, a README that says so
        (folder / "README.md").write_text(README_ONE.format(method=method, run_id=run_id, version=version,
                                                            metrics=_metrics_line(record)))
        return
    strategy = options.get("strategy") if options.get("strategy") not in (None, "auto") else "ddp"
    wrap = _wrap_classes(run_id, options) if strategy == "fsdp" else []
    nodes = max(int(options.get("nodes") or 1), 1)
    write_accelerate_config(folder / ACCELERATE_FILE, strategy=strategy, devices=devices, nodes=nodes,
                            node_rank=int(options.get("node_rank") or 0), master_addr=options.get("master_addr"),
                            wrap=wrap, grad_accum=int(options.get("grad_accum") or 1),
                            max_grad_norm=options.get("max_grad_norm"))
    wrap_line = f", wrapping each {', '.join(wrap)}" if wrap else ""
    (folder / "README.md").write_text(README.format(method=method, run_id=run_id, devices=devices,
                                                    batch_size=options.get("batch_size"),
                                                    metrics=_metrics_line(record), version=version,
                                                    processes=devices * nodes, strategy=strategy,
                                                    wrap_line=wrap_line))


def _metrics_line(record: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in (record.get("metrics") or {}).items())


def _online(run_id: str, word: str, options: dict, namespace: dict, target: Path) -> dict[str, str]:
    """`%rlhf ppo|grpo|rloo`: the reward model's folder copied into the job (`reward_model/`), the prompts as a
    Parquet file or a copy of their file; a Python callable reward is refused (nothing can carry it)."""
    from ..preference.reward import find_reward_folder
    value = options.get("reward")
    obj = namespace.get(value) if isinstance(value, str) and value.isidentifier() else None
    if (getattr(obj, "method", None), getattr(obj, "command", None)) == ("rlhf", "reward"):
        # a reward Result (callable too, its .score: asked first)
        folder = obj.folder
    elif obj is not None or not isinstance(value, str) or value.startswith("<"):
        raise UsageError(f"%llm export: run {run_id}'s --reward is a Python callable ({value}), which a job "
                         f"cannot carry; export takes %rlhf {word} runs whose reward is a %rlhf reward model, "
                         f"or run it from a script with llm_magics.api.rlhf.{word}(...)")
    else:
        try:
            folder = find_reward_folder(value)[0]   # a run id or a folder
        except UsageError:
            folder = None
    if not folder or not Path(folder).is_dir():
        raise UsageError(f"%llm export: run {run_id}'s --reward {value!r} is no longer a variable, reward-model "
                         "run or folder here; export it from the session that ran it")
    written = {"reward": "reward_model"}
    shutil.copytree(folder, target / "reward_model")
    options["reward"] = None
    prompts = options.get("prompts")
    if isinstance(prompts, str) and prompts.startswith("<") and prompts.endswith(">"):
        raise UsageError(f"%llm export: run {run_id} got --prompts as a Python object ({prompts}), which was not "
                         "kept; run it again with the prompts in a notebook variable or a file, then export")
    if isinstance(prompts, str) and prompts.isidentifier() and prompts in namespace:
        import pandas as pd

        from ..preference.policy import load_prompts
        frame = pd.DataFrame({"prompt": load_prompts(prompts, options.get("prompt_column"), namespace)})
        frame.to_parquet(target / "prompts.parquet", index=False)
        written["prompts"], options["prompts"], options["prompt_column"] = "prompts.parquet", None, None
    elif isinstance(prompts, str) and Path(prompts).expanduser().is_file():
        file = Path(prompts).expanduser()
        shutil.copy2(file, target / file.name)
        written["prompts"], options["prompts"] = file.name, None
    elif isinstance(prompts, str) and prompts.isidentifier():   # a variable gone (a dataset name with / is kept)
        raise UsageError(f"%llm export: run {run_id}'s --prompts {prompts!r} is no longer a variable or a file "
                         "here; export it from the session that ran it")
    return written


def _data(run_id: str, options: dict, namespace: dict, target: Path) -> dict[str, str]:
    """Put the run's data in `target`; option → file name there (the options lose their paths)."""
    from ..settings import current
    spec_file = current().subdir("runs") / run_id / "launch" / "spec.json"
    written: dict[str, str] = {}
    if spec_file.exists():   # a launched run wrote its data for its workers: the same files
        spec = json.loads(spec_file.read_text())
        if spec["options"].get("strategy"):   # the strategy the workers ran (auto resolved in the kernel)
            options["strategy"] = spec["options"]["strategy"]
        for key, file in spec.get("data_files", {}).items():
            if Path(file).is_file():   # removed since: the check below reads what the run was given
                shutil.copy2(file, target / Path(file).name)
                written[key] = Path(file).name
        for key in DATA_FIELDS:
            if key not in spec.get("data_files", {}) and spec["options"].get(key) is not None:
                options[key] = spec["options"][key]
    for key in DATA_FIELDS:
        value = options.get(key)
        if key in written:
            options[key] = None
            continue
        if value is None:
            continue
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            raise UsageError(f"%llm export: run {run_id} got --{key} as a Python object ({value}), which was not "
                             "kept; run it again with the data in a notebook variable or a file, then export")
        if isinstance(value, str) and value.isidentifier() and value in namespace:
            holder = type("Given", (), {key: value})()
            _, files = write_data(holder, namespace, target)
            for k, file in files.items():
                written[k] = Path(file).name
                options[k] = None
            continue
        file = Path(value).expanduser()
        if file.is_file():
            shutil.copy2(file, target / file.name)
            written[key], options[key] = file.name, None
    return written


def _check_data(run_id: str, record: dict, cls, word: str | None, options: dict, data_files: dict[str, str],
                folder: Path, namespace: dict) -> None:
    """Refuse, in one line, a job whose data is not the data the run trained on: the method prepares what the
    job will read (the files in `folder`, the names kept) as the run did, and the fingerprint must be the run's."""
    given = ", ".join(f"--{key} {record['options'][key]!r}" for key in DATA_FIELDS
                      if record["options"].get(key) is not None)
    values = {**options, **{key: str(folder / name) for key, name in data_files.items()}}
    values.update({key: 1 for key in ("devices", "nodes") if key in values})   # the check runs here, in one process
    try:
        found = _data_fingerprint(cls, word, values, namespace)
    except UsageError as exc:   # gone (a variable deleted, a file removed), or no longer data the method takes
        why = str(exc).splitlines()[0] if str(exc) else "it is gone"
        raise UsageError(f"%llm export: run {run_id}'s data ({given}) cannot be read here as the run read it "
                         f"({why}); run it again, or put the data the run used back under that name and export "
                         "again") from None
    expected = record.get("data_fingerprint")
    if expected and found is not None and found != expected:
        raise UsageError(f"%llm export: run {run_id} trained on other data than {given} holds now (fingerprint "
                         f"{expected}, now {found}); run it again on this data and export that run, or put the data "
                         "the run used back under that name") from None


def _data_fingerprint(cls, word: str | None, values: dict, namespace: dict) -> str | None:
    """The fingerprint the method's own data preparation gives `values`' data (None: a method that keeps none)."""
    from types import SimpleNamespace

    from ..runner import build_options
    from ..training import TrainingMethod
    o = build_options(cls, word, values)
    ctx = SimpleNamespace(namespace=namespace)
    method = cls()
    if hasattr(method, "data_fingerprint"):   # a method that reads its data its own way says what it read
        return method.data_fingerprint(o, ctx)
    if not isinstance(method, TrainingMethod):
        return None
    run = SimpleNamespace(options=o, ctx=ctx, task=method.task_of(o))
    method.prepare_data(run)
    return run.data.fingerprint


def _model_paths(options: dict, target: Path) -> dict[str, str]:
    """A model given as a relative folder, made relative to the job folder (job.json then names no path of this
    machine the user did not give; `job_values` resolves it); names, hub ids and absolute paths stay as given."""
    paths = {}
    for key in MODEL_FIELDS:
        value = options.get(key)
        if isinstance(value, str) and not value.startswith(("/", "~")) and Path(value).is_dir():
            paths[key] = os.path.relpath(Path(value).resolve(), target.parent.resolve() / target.name)
            options[key] = None
    return paths


def _wrap_classes(run_id: str, options: dict) -> list[str]:
    """The classes FSDP wrapped in the run (its workers wrote them), else the model's block class."""
    from ..engine.distributed import WRAP_FILE
    from ..models import resolve
    from ..settings import current
    written = current().subdir("runs") / run_id / "launch" / WRAP_FILE
    if written.exists():
        return list(json.loads(written.read_text()).get("wrap") or [])
    try:
        source = resolve(options.get("model") or options.get("policy"))
    except UsageError:
        return []
    return wrap_classes(source.path) if source.local else []
