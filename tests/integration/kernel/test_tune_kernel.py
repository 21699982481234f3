"""`%llm tune` in a real Jupyter kernel, driven through the widgets' comm messages as a frontend sends them."""
import json
import os
import time

import pytest
from jupyter_client.manager import start_new_kernel
from tests.unit.test_tune import install_plugin

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext llm_magics
import json, random, pandas as pd
from llm_magics.demo import POSITIVE, NEGATIVE
from llm_magics.runs import RunStore
from llm_magics.settings import current
pos = sorted(set(" ".join(POSITIVE).lower().split()) - set(" ".join(NEGATIVE).lower().split()))
neg = sorted(set(" ".join(NEGATIVE).lower().split()) - set(" ".join(POSITIVE).lower().split()))
rng = random.Random(0)
df = pd.DataFrame([{"text": " ".join(rng.choice(pos if i % 2 else neg) for _ in range(5)),
                    "label": "pos" if i % 2 else "neg"} for i in range(200)])
store = RunStore(current().runs_path)
def ids(panel):
    out = {n: w.model_id for n, (f, w, m) in panel.fields.items()}
    out.update(method=panel.method.model_id, run=panel.run_button.model_id, stop=panel.stop_button.model_id,
               out=panel.out.model_id)
    return json.dumps(out)
def index(dropdown, value):
    return [v for _, v in dropdown.options].index(value)
"""
# Two records of one run: everything but what names or times the run must be equal.
SAME = ("method", "model", "status", "options", "data_fingerprint", "metrics", "trainable_params",
        "total_params", "device", "dtype")


@pytest.fixture
def kernel(tmp_path):
    site = tmp_path / "site"
    install_plugin(site)
    env = {**os.environ, "LLM_MAGICS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("LLM_MAGICS_PROGRESS", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc, code: str, timeout: float = 120):
    messages = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=messages.append)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream"), messages


def value(kc, expression: str) -> str:
    return run(kc, f"print({expression})")[0].strip()


def send(kc, comm_id: str, data: dict) -> None:
    kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))


def set_value(kc, comm_id: str, value, key: str = "value") -> None:
    """What the frontend sends when a user types into a field (`index` for a dropdown's choice)."""
    send(kc, comm_id, {"method": "update", "state": {key: value}, "buffer_paths": []})


def click(kc, comm_id: str) -> None:
    send(kc, comm_id, {"method": "custom", "content": {"event": "click"}})


def wait_done(kc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while value(kc, "panel.run_button.disabled") == "True":
        assert time.time() < deadline
        time.sleep(0.2)


def choose(kc, ids, field: str, option: str, dropdown: str | None = None) -> None:
    set_value(kc, ids[field], int(value(kc, f"index({dropdown or 'panel.fields[%r][1]' % field}, {option!r})")),
              key="index")


def test_panel_runs_probe_lora_and_a_plugin_like_their_lines(kernel, tiny_bert):
    _, kc = kernel
    run(kc, SETUP)
    _, messages = run(kc, "panel = %llm tune probe\npanel")
    assert any(m["msg_type"] in ("display_data", "execute_result")
               and "application/vnd.jupyter.widget-view+json" in m["content"]["data"] for m in messages)
    ids = json.loads(value(kc, "ids(panel)"))

    # %probe, options chosen in the form.
    set_value(kc, ids["data"], "df")
    set_value(kc, ids["model"], str(tiny_bert))
    choose(kc, ids, "pooling", "cls")
    set_value(kc, ids["C"], "0.5")
    set_value(kc, ids["out"], "from_panel")
    click(kc, ids["run"])
    wait_done(kc)
    line = value(kc, "panel.magic_line()")
    assert line == f"%probe --data df --model {tiny_bert} --pooling cls --C 0.5 --out from_panel"
    run(kc, line)                       # the line the panel showed, typed into a cell
    records = json.loads(value(kc, "json.dumps(store.list(limit=2), default=str)"))
    assert len(records) == 2 and records[0]["run_id"] != records[1]["run_id"]
    assert {k: records[0][k] for k in SAME} == {k: records[1][k] for k in SAME}

    # %lora: the data and model carry over; the method's own options appear.
    choose(kc, ids, "method", "lora", dropdown="panel.method")
    ids = json.loads(value(kc, "ids(panel)"))
    assert {"r", "target", "epochs", "lr"} <= set(ids)
    set_value(kc, ids["epochs"], "1")
    set_value(kc, ids["r"], "4")
    set_value(kc, ids["lr"], "0.002")
    set_value(kc, ids["out"], "lora_run")
    # An invalid value shows its message next to the field and, on Run, starts nothing.
    set_value(kc, ids["batch_size"], "-2")
    assert "must be &gt; 0" in value(kc, "panel.fields['batch_size'][2].value")
    count = value(kc, "len(store.list())")
    click(kc, ids["run"])
    assert "--batch-size: must be &gt; 0" in value(kc, "panel.error.value")
    assert value(kc, "len(store.list())") == count and value(kc, "panel.run_button.disabled") == "False"
    set_value(kc, ids["batch_size"], "16")
    click(kc, ids["run"])
    wait_done(kc)
    line = value(kc, "panel.magic_line()")
    assert line == f"%lora --data df --model {tiny_bert} --epochs 1 --batch-size 16 --lr 0.002 --r 4 --out lora_run"
    assert value(kc, "lora_run.status") == "ok"
    run(kc, line)
    records = json.loads(value(kc, "json.dumps(store.list(limit=2), default=str)"))
    timing = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
    for record in records:
        record["metrics"] = {k: v for k, v in record["metrics"].items() if k not in timing and "_per_s" not in k}
    assert {k: records[0][k] for k in SAME} == {k: records[1][k] for k in SAME}

    # The pip-installed plugin: in the dropdown, with its own options, and it runs.
    labels = value(kc, "[l for l, v in panel.method.options]")
    assert "echo (llm-magics-echo)" in labels
    choose(kc, ids, "method", "echo", dropdown="panel.method")
    ids = json.loads(value(kc, "ids(panel)"))
    assert set(ids) == {"data", "shout", "method", "run", "stop", "out"}
    set_value(kc, ids["data"], "df")
    set_value(kc, ids["shout"], True)
    set_value(kc, ids["out"], "echoed")
    click(kc, ids["run"])
    wait_done(kc)
    assert value(kc, "panel.magic_line()") == "%echo --data df --shout --out echoed"
    assert value(kc, "echoed.metrics['rows']") == "200"


def test_panel_stop_ends_the_run_as_stopped(kernel, tiny_bert):
    _, kc = kernel
    run(kc, SETUP)
    run(kc, "panel = %llm tune finetune\npanel")
    ids = json.loads(value(kc, "ids(panel)"))
    for name, text in (("data", "df"), ("model", str(tiny_bert)), ("epochs", "300"), ("batch_size", "8"),
                       ("lr", "0.001"), ("train", "all"), ("out", "stopped_run")):
        set_value(kc, ids[name], text)
    click(kc, ids["run"])
    deadline = time.time() + 120
    while int(value(kc, "panel.handle.progress.state.done if panel.handle else 0")) < 3:
        assert time.time() < deadline
        time.sleep(0.2)
    click(kc, ids["stop"])
    wait_done(kc)
    assert value(kc, "stopped_run.status") == "stopped"
    live = value(kc, "panel.live.value")
    assert "stopped at step" in live and "stop requested" not in live


def test_sweep_view_in_a_kernel_stops_the_whole_sweep(kernel, tiny_bert):
    _, kc = kernel
    run(kc, SETUP)
    _, messages = run(kc, f"view = %llm sweep finetune --model {tiny_bert} --data df --train all --batch-size 8 "
                          "--grid \"epochs=300,301\" --out s\nview")
    assert any(m["msg_type"] in ("display_data", "execute_result")
               and "application/vnd.jupyter.widget-view+json" in m["content"]["data"] for m in messages)
    # Beside the widget, its snapshot: HTML with a display id, what a saved notebook keeps of the view.
    assert any(m["msg_type"] == "display_data" and "llm-magics-snapshot" in m["content"]["data"].get("text/html", "")
               and m["content"].get("transient", {}).get("display_id") for m in messages)
    deadline = time.time() + 120
    while value(kc, "s.current is not None and s.current.progress.state.done >= 2") != "True":
        assert time.time() < deadline and value(kc, "s.finished") == "False"
        time.sleep(0.2)
    click(kc, value(kc, "view.stop_button.model_id"))
    while value(kc, "s.finished") != "True":
        assert time.time() < deadline + 120
        time.sleep(0.2)
    assert value(kc, "[r['status'] for r in s.rows]") == "['stopped', 'skipped']"
    board = value(kc, "view.board.value")
    assert "1/2 points" not in board and "stopped" in board and "skipped" in board
    assert value(kc, "view.stop_button.description") == "Sweep stopped"
    assert value(kc, "[r['sweep_id'] == s.id for r in store.list()]") == "[True]"
