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
Python object through the API has nothing to name it by, and is refused.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..options import option
from .accelerate import ACCELERATE_FILE, wrap_classes, write_accelerate_config
from .job import JOB
from .spec import DATA_FIELDS, write_data

DROPPED = ("out", "bg", "resume")


@dataclass
class ExportOptions:
    run_id: str = option(positional=True, help="the recorded run (%llm runs lists them)", metavar="RUN_ID")
    path: str = option(positional=True, help="a new folder for the job", metavar="PATH")

TRAIN_PY = '''#!/usr/bin/env python
"""{method} run {run_id}, exported by llm-magics (`%llm export`). See README.md.

    python train.py                                   # one process
    torchrun --standalone --nproc-per-node {devices} train.py   # {devices} processes on this machine
"""
import sys
from pathlib import Path

from llm_magics.launch.job import main

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


def export(run_id: str, path: str | Path, namespace: dict | None = None) -> Path:
    from .. import __version__ as version
    from ..registry import registry
    from ..runs import RunStore
    from ..settings import current
    record = RunStore(current().runs_path).get(run_id)
    if record is None:
        raise UsageError(f"%llm export: no recorded run {run_id!r} (%llm runs lists them)")
    method = record["method"]
    cls = registry().load(method)
    names = {f for f in getattr(cls.main_command().options, "__dataclass_fields__", {})}
    if "devices" not in names:
        raise UsageError(f"%llm export: {method} runs do not train (export takes %finetune, %lora and other "
                         "training runs)")
    target = Path(path).expanduser()
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"%llm export: {target} exists and is not empty; name a new folder")
    target.mkdir(parents=True, exist_ok=True)
    try:
        options = {k: v for k, v in record["options"].items() if k in names and k not in DROPPED}
        data_files = _data(run_id, options, namespace or {}, target)
        (target / JOB).write_text(json.dumps({"method": method, "run_id": run_id, "options": options,
                                              "data_files": data_files}, indent=1))
        devices = max(int(options.get("devices") or 1), 1)
        (target / "train.py").write_text(TRAIN_PY.format(method=method, run_id=run_id, devices=devices))
        (target / "train.py").chmod(0o755)
        strategy = options.get("strategy") if options.get("strategy") not in (None, "auto") else "ddp"
        wrap = _wrap_classes(run_id, options) if strategy == "fsdp" else []
        nodes = max(int(options.get("nodes") or 1), 1)
        write_accelerate_config(target / ACCELERATE_FILE, strategy=strategy, devices=devices, nodes=nodes,
                                node_rank=int(options.get("node_rank") or 0), master_addr=options.get("master_addr"),
                                wrap=wrap, grad_accum=int(options.get("grad_accum") or 1),
                                max_grad_norm=options.get("max_grad_norm"))
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in (record.get("metrics") or {}).items())
        wrap_line = f", wrapping each {', '.join(wrap)}" if wrap else ""
        (target / "README.md").write_text(README.format(method=method, run_id=run_id, devices=devices,
                                                        batch_size=options.get("batch_size"), metrics=metrics,
                                                        version=version, processes=devices * nodes,
                                                        strategy=strategy, wrap_line=wrap_line))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


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
            shutil.copy2(file, target / Path(file).name)
            written[key] = Path(file).name
        for key in DATA_FIELDS:
            if key not in written and spec["options"].get(key) is not None:
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


def _wrap_classes(run_id: str, options: dict) -> list[str]:
    """The classes FSDP wrapped in the run (its workers wrote them), else the model's block class."""
    from ..engine.distributed import WRAP_FILE
    from ..models import resolve
    from ..settings import current
    written = current().subdir("runs") / run_id / "launch" / WRAP_FILE
    if written.exists():
        return list(json.loads(written.read_text()).get("wrap") or [])
    try:
        source = resolve(options.get("model"))
    except UsageError:
        return []
    return wrap_classes(source.path) if source.local else []
