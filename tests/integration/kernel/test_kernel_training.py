"""Stopping training in a real Jupyter kernel: the Stop button's comm message, and a kernel interrupt."""
import os
import re
import time

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext llm_magics
import random, pandas as pd
from llm_magics.demo import POSITIVE, NEGATIVE
pos = sorted(set(" ".join(POSITIVE).lower().split()) - set(" ".join(NEGATIVE).lower().split()))
neg = sorted(set(" ".join(NEGATIVE).lower().split()) - set(" ".join(POSITIVE).lower().split()))
rng = random.Random(0)
df = pd.DataFrame([{"text": " ".join(rng.choice(pos if i % 2 else neg) for _ in range(5)),
                    "label": "pos" if i % 2 else "neg"} for i in range(400)])
"""
TRAIN = "%finetune --model {model} --data df --train all --epochs 300 --lr 1e-3 --dtype float32 --batch-size 8"


@pytest.fixture
def kernel(tmp_path):
    env = {**os.environ, "LLM_MAGICS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("LLM_MAGICS_PROGRESS", None)  # the kernel picks its own view: HTML + widget
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc, code: str, timeout: float = 120) -> tuple[str, list[dict]]:
    """Execute and wait: (stdout text, every iopub message of the cell)."""
    messages = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=messages.append)
    assert reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    return text, messages


def value(kc, expression: str) -> str:
    text, _ = run(kc, f"print({expression})")
    return text.strip()


def test_stop_button_ends_a_background_run_with_a_usable_result(kernel, tiny_bert):
    _, kc = kernel
    run(kc, SETUP)
    _, messages = run(kc, TRAIN.format(model=tiny_bert) + " --bg --out h")
    stop_ids = [m["content"]["comm_id"] for m in messages if m["msg_type"] == "comm_open"
                and m["content"]["data"].get("state", {}).get("description") == "Stop"]
    assert len(stop_ids) == 1, "the background run shows one Stop button"
    deadline = time.time() + 120
    while int(value(kc, "h.progress.state.done")) < 3:
        assert time.time() < deadline and value(kc, "h.done") == "False"
        time.sleep(0.2)
    # What the frontend sends when the button is clicked.
    click = kc.session.msg("comm_msg", {"comm_id": stop_ids[0],
                                        "data": {"method": "custom", "content": {"event": "click"}}})
    kc.shell_channel.send(click)
    out = value(kc, "(lambda r: (r.status, r.metrics['steps'], h.progress.state.total, "
                    "len(r.predict(['best clever']))))(h.result(timeout=120))")
    status, steps, total, predicted = eval(out)
    assert status == "stopped" and 3 <= steps < total and predicted == 1


def test_kernel_interrupt_stops_cleanly_with_a_partial_result(kernel, tiny_bert):
    km, kc = kernel
    run(kc, SETUP)
    msg_id = kc.execute(TRAIN.format(model=tiny_bert) + " --out r")
    started = time.time()
    # Wait until optimizer steps are reported (the HTML view shows "N/M steps"), then interrupt.
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        html = msg["content"].get("data", {}).get("text/html", "")
        done = re.search(r"([\d,]+)/[\d,]+ steps", html)
        if msg["parent_header"].get("msg_id") == msg_id and done and int(done.group(1).replace(",", "")) > 0:
            break
        assert time.time() - started < 120
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=120)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=120)
    assert reply["content"]["status"] == "ok", "\n".join(reply["content"].get("traceback", []))  # the cell ended normally, with a Result bound
    status, steps = eval(value(kc, "(r.status, r.metrics['steps'])"))
    assert status == "stopped" and steps >= 1
    assert value(kc, "len(r.predict(['best clever', 'worst waste']))") == "2"
