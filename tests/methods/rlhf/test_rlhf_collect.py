"""`%rlhf collect`: the JSONL holds exactly the choices made, survives a killed kernel, resumes."""
import json
import os

import pytest

from llm_magics import api
from llm_magics.preference.collect import CollectSession
from llm_magics.preference.data import prepare_preferences

PROMPTS = [f"Review {i}: the film was" for i in range(6)]


def fake(prompt):
    return [prompt[-3:] + " good", prompt[-3:] + " bad"]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_choices_ties_skips_and_undo_in_python(tmp_path):
    path = tmp_path / "prefs.jsonl"
    session = CollectSession(path, PROMPTS, fake)
    session.choose(0)
    session.tie()
    session.choose(1)
    session.undo()            # the third choice is taken back, and its prompt shown again
    assert session.index == 2 and session.completions == fake(PROMPTS[2])
    session.skip()
    assert lines(path) == [{"prompt": PROMPTS[0], "chosen": "was good", "rejected": "was bad"},
                           {"prompt": PROMPTS[1], "event": "tie"}, {"prompt": PROMPTS[2], "event": "skip"}]
    again = CollectSession(path, PROMPTS, fake)   # reopened: resumes after the last prompt answered
    assert again.index == 3 and again.answered == 3
    for _ in range(10):
        again.choose(1)
    assert again.done and len(lines(path)) == 6
    data = prepare_preferences(str(path), val_size=0.25, test_size=0.25)  # ties and skips are not pairs
    assert len(data.train) + len(data.validation) + len(data.test) == 4


def test_collect_command_shows_sampled_completions(tiny_llama, tmp_path, store):
    session = api.rlhf.collect(path=str(tmp_path / "p.jsonl"), model=str(tiny_llama), prompts=PROMPTS, k=3,
                               max_new_tokens=5)
    assert len(session.completions) == 3 and session.prompt == PROMPTS[0]
    assert len(session.widget.children[1].children) == 3
    assert store.list() == []   # collecting records no run


def test_collect_compares_a_tuned_adapter_with_its_base_blind(tiny_llama, separable, tmp_path, store):
    import random

    import pandas as pd
    _, pos, neg = separable
    rng = random.Random(0)
    words = lambda pool: " " + " ".join(rng.choice(pool) for _ in range(4))  # noqa: E731
    pairs = pd.DataFrame([{"prompt": "Review:", "chosen": words(pos), "rejected": words(neg)} for _ in range(40)])
    api.rlhf.dpo(policy=str(tiny_llama), data=pairs, method="lora", lr=5e-3, steps=4, batch_size=8, name="tuned")
    path = tmp_path / "blind.jsonl"
    kw = dict(path=str(path), models=["tuned", str(tiny_llama)], prompts=PROMPTS, max_new_tokens=4, seed=3)
    session = api.rlhf.collect(**kw)
    buttons = [box.children[1].description for box in session.widget.children[1].children]
    assert buttons == ["A is better", "B is better"]            # names hidden
    orders = []
    for _ in range(4):
        orders.append(tuple(session.sources))
        assert sorted(session.sources) == sorted(["tuned", str(tiny_llama)])
        session.choose(session.sources.index("tuned"))           # always prefer the tuned adapter's answer
    assert len(set(orders)) == 2                                 # the side each model is shown on varies
    shown = (session.completions, session.sources)
    again = api.rlhf.collect(**kw)                               # reopened: same prompt, same blind draw
    assert again.index == 4 and (again.completions, again.sources) == shown
    pairs_written = [r for r in lines(path) if "chosen" in r]
    assert len(pairs_written) >= 3
    assert all(r["chosen_by"] == "tuned" and r["rejected_by"] == str(tiny_llama) for r in pairs_written)
    tally = again.tally()
    assert tally.iloc[0]["model"] == "tuned" and tally.iloc[0]["win_rate"] == 1.0
    assert tally.set_index("model").loc["tuned", "wins"] == len(pairs_written)
    api.lora.unload(name="tuned")


@pytest.mark.parametrize("kw, message", [
    (dict(models=["a"]), "--models needs at least two different models"),
    (dict(models=["a", "b"], model="c"), "not both"),
])
def test_collect_models_mistakes(tmp_path, kw, message):
    from llm_magics.errors import UsageError
    with pytest.raises(UsageError, match=message):
        api.rlhf.collect(path=str(tmp_path / "x.jsonl"), prompts=PROMPTS, **kw)
    assert not (tmp_path / "x.jsonl").exists()


# ---- a real kernel, driven by comm messages as a frontend sends them ----------------------------------

KERNEL_HELPERS = """
import json
def ids(s):   # the buttons of the pair on screen, once it is shown
    s.widget
    s.wait()
    return json.dumps({b.description: b.model_id for b in s._buttons})
"""


def run_cell(kc, code: str, timeout: float = 120) -> str:
    messages = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=messages.append)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream").strip()


def send_click(kc, comm_id: str) -> None:
    kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id,
                                                      "data": {"method": "custom", "content": {"event": "click"}}}))


def click(kc, comm_id: str) -> None:
    send_click(kc, comm_id)
    run_cell(kc, "pass")   # the click is handled before this cell runs


@pytest.fixture
def kernel(tmp_path):
    from jupyter_client.manager import start_new_kernel
    env = {**os.environ, "LLM_MAGICS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("LLM_MAGICS_PROGRESS", None)
    started = []

    def start():
        km, kc = start_new_kernel(kernel_name="python3", env=env)
        started.append((km, kc))
        run_cell(kc, KERNEL_HELPERS)
        return km, kc
    yield start
    for km, kc in started:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.kernel
def test_collect_in_a_real_kernel_survives_a_kill_and_resumes(tiny_llama, tmp_path, kernel):
    path = tmp_path / "prefs.jsonl"
    cell = (f"%load_ext llm_magics\nprompts = {PROMPTS!r}\n"
            f"s = %rlhf collect {path} --model {tiny_llama} --prompts prompts --k 2 --max-new-tokens 4")

    def open_widget(kc):
        run_cell(kc, cell)
        return json.loads(run_cell(kc, "print(ids(s))"))

    km, kc = kernel()
    buttons = open_widget(kc)
    assert set(buttons) == {"1 is better", "2 is better", "Tie", "Skip", "Undo"}
    click(kc, buttons["1 is better"])
    assert [r["prompt"] for r in lines(path)] == [PROMPTS[0]]   # in the file at once
    click(kc, json.loads(run_cell(kc, "print(ids(s))"))["Tie"])   # the next pair's Tie, once it is shown
    assert [r.get("event") for r in lines(path)] == [None, "tie"]
    km.shutdown_kernel(now=True)   # killed without a chance to save anything
    assert len(lines(path)) == 2 and lines(path)[0]["chosen"] != lines(path)[0]["rejected"]
    km, kc = kernel()
    click(kc, open_widget(kc)["Skip"])
    records = lines(path)
    assert [r["prompt"] for r in records] == PROMPTS[:3]   # resumed at the third prompt
    assert records[2] == {"prompt": PROMPTS[2], "event": "skip"}


SLOW_SESSION = """
import time
from llm_magics.preference.collect import CollectSession
def slow(prompt):   # a model that takes 1.5 s a pair
    time.sleep(1.5)
    return [prompt[-3:] + " good", prompt[-3:] + " bad"]
s = CollectSession({path!r}, {prompts!r}, slow)
display(s)
"""


@pytest.mark.kernel
def test_clicks_during_generation_record_only_the_pairs_shown(tmp_path, kernel):
    """A double click, a click while the next pair is generated and a click on the old prompt's buttons after
    the new pair is shown: the file holds one line per pair the user saw and chose on, nothing else."""
    path = tmp_path / "prefs.jsonl"
    _, kc = kernel()
    run_cell(kc, SLOW_SESSION.format(path=str(path), prompts=PROMPTS))
    shown = [json.loads(run_cell(kc, "print(json.dumps([s.prompt, s.completions]))"))]
    first = json.loads(run_cell(kc, "print(ids(s))"))
    send_click(kc, first["1 is better"])
    send_click(kc, first["1 is better"])             # the double click
    run_cell(kc, "pass")
    assert run_cell(kc, "print(s.generating, 'generating the next pair' in s._status.value, "
                        "all(b.disabled for b in s._buttons), len(s._answers.children))") == "True True True 0"
    click(kc, first["Tie"])                          # while generating
    second = json.loads(run_cell(kc, "print(ids(s))"))   # waits until the next pair is shown
    shown.append(json.loads(run_cell(kc, "print(json.dumps([s.prompt, s.completions]))")))
    click(kc, first["2 is better"])                  # the old prompt's button, after the new pair is shown
    click(kc, second["2 is better"])
    run_cell(kc, "s.wait()")
    assert shown[0][0] == PROMPTS[0] and shown[1][0] == PROMPTS[1]
    assert lines(path) == [{"prompt": PROMPTS[0], "chosen": shown[0][1][0], "rejected": shown[0][1][1]},
                           {"prompt": PROMPTS[1], "chosen": shown[1][1][1], "rejected": shown[1][1][0]}]
    notes = json.loads(run_cell(kc, "print(json.dumps(s.notes))"))
    assert notes == ["a click while the next pair was being generated was ignored"] * 2 + \
        ["a click on pair 1 was ignored: pair 2 is on screen"]
    assert run_cell(kc, "print(s.answered, s.index)") == "2 2"


def test_a_click_counts_only_for_the_pair_on_screen(tmp_path):
    import threading
    release = threading.Event()

    def gated(prompt):   # the second pair is generated only when the test says so
        assert prompt == PROMPTS[0] or release.wait(10)
        return fake(prompt)
    path = tmp_path / "prefs.jsonl"
    session = CollectSession(path, PROMPTS, gated)
    widget = session.widget
    first = session.pair
    assert session.choose(0, pair=first)                     # a click on the pair shown: recorded
    assert session.generating and "generating the next pair" in session._status.value
    assert widget.children[1].children == () and all(b.disabled for b in session._buttons)
    assert not session.choose(0, pair=first)                 # the double click
    assert not session.skip(pair=first + 1)                  # the next pair's id, before it is shown
    release.set()
    session.wait()
    assert session.prompt == PROMPTS[1] and session.pair == first + 1 and not session.generating
    assert not session.choose(1, pair=first)                 # the old pair's button after the new one shows
    assert session.tie(pair=session.pair)
    session.wait()
    assert lines(path) == [{"prompt": PROMPTS[0], "chosen": "was good", "rejected": "was bad"},
                           {"prompt": PROMPTS[1], "event": "tie"}]
    assert session.notes[-1] == f"a click on pair {first} was ignored: pair {first + 1} is on screen"
    assert len(session.notes) == 3 and session.answered == 2
    assert session.undo() and session.prompt == PROMPTS[1]  # from Python: the pair on screen, no id needed
    assert len(lines(path)) == 1


def test_the_widget_leaves_a_snapshot_of_its_state_in_the_notebook(tmp_path, monkeypatch):
    """Beside the widget a static HTML copy (updated by display id) keeps the prompt on screen, the counts and the
    file, so a reopened notebook shows them instead of "model not found"; the last one is the final state."""
    import IPython.display

    from llm_magics.progress.widget import LIVE_CLASS, SNAPSHOT_CLASS
    shown = []

    class Handle:
        def update(self, new):
            shown[-1] = new

    def display(obj, display_id=False, **_kwargs):
        shown.append(obj)
        return Handle() if display_id else None
    monkeypatch.setattr(IPython.display, "display", display)
    path = tmp_path / "prefs.jsonl"
    session = CollectSession(path, PROMPTS[:3], fake)
    session._ipython_display_()
    assert shown[0] is session.widget and LIVE_CLASS in session.widget._dom_classes
    assert SNAPSHOT_CLASS in shown[1].data and "Review 0" in shown[1].data
    assert session.choose(0, pair=session.pair)
    session.wait()
    assert session.tie(pair=session.pair)
    session.wait()
    snapshot = shown[1].data
    assert "Review 2: the film was" in snapshot and "Review 1" not in snapshot and "was good" in snapshot
    assert "1 chosen · 1 ties · 0 skipped · prompt 3 of 3" in snapshot and str(path) in snapshot
    assert session.skip(pair=session.pair)
    session.wait()
    assert "All prompts answered" in shown[1].data and "1 chosen · 1 ties · 1 skipped" in shown[1].data


def test_collect_uses_a_held_result_without_loading_its_reference(tiny_llama, separable, tmp_path, monkeypatch):
    import pandas as pd

    from llm_magics.preference import evaluate
    _, pos, neg = separable
    pairs = pd.DataFrame([{"prompt": "Review:", "chosen": f" {p}", "rejected": f" {n}"} for p, n in zip(pos, neg)] * 4)
    tuned = api.rlhf.dpo(policy=str(tiny_llama), data=pairs, lr=1e-3, steps=2, batch_size=4)
    monkeypatch.setattr(evaluate, "policy_of", lambda *a, **k: pytest.fail("a held Result was loaded again"))
    session = api.rlhf.collect(path=str(tmp_path / "p.jsonl"), models=[tuned, str(tiny_llama)], prompts=PROMPTS,
                               max_new_tokens=3)
    assert sorted(session.sources) == sorted([tuned.run_id, str(tiny_llama)])


# ---- a torn last line -------------------------------------------------------------------------------

def test_a_torn_last_line_is_moved_aside_and_every_whole_line_kept(tmp_path):
    path = tmp_path / "prefs.jsonl"
    session = CollectSession(path, PROMPTS, fake)
    session.choose(0)
    session.tie()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"prompt": "Review 2: the film was", "chosen": "was go')   # killed mid-write
    again = CollectSession(path, PROMPTS, fake)
    assert path.read_bytes() == whole and again.index == 2
    assert (tmp_path / "prefs.jsonl.torn-1").read_bytes().endswith(b'"chosen": "was go')
    assert again.notes == ["prefs.jsonl: its last line was cut off mid-write (a killed kernel); moved to "
                           "prefs.jsonl.torn-1, the 2 whole lines kept"]
    path.write_bytes(whole + b'{"prompt": "Review 2: the film was", "event": "skip"}')   # only the newline lost
    assert CollectSession(path, PROMPTS, fake).index == 3 and path.read_bytes().endswith(b"skip\"}\n")
    assert not (tmp_path / "prefs.jsonl.torn-2").exists()


WRITER = """
import sys
from llm_magics.preference.collect import CollectSession
big = "x" * 1_100_000   # two completions of 1.1 MB: a pair line of over 2 MB
prompts = [f"prompt {i}" for i in range(100_000)]
session = CollectSession(sys.argv[1], prompts, lambda p: [p + " good " + big, p + " bad " + big])
while True:
    session.choose(0)
"""


def ends_mid_line(path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def test_collect_files_killed_mid_write_stay_usable(tmp_path):
    """20 kills of a process appending 2 MB lines through the real writer, aimed into a write (the file's end
    mid-line): every file resumes and loads as preference data afterwards (before the repair a torn last line
    blocked both)."""
    import random
    import signal
    import subprocess
    import sys
    import time
    rng, torn, unusable = random.Random(0), 0, []
    for kill in range(20):
        path = tmp_path / f"kill{kill}.jsonl"
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        try:
            while not path.exists() or path.stat().st_size < 3 * 2_200_000:   # a few whole lines first
                assert child.poll() is None, "the writer died"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.2))
            caught = time.monotonic() + 2
            while not ends_mid_line(path) and time.monotonic() < caught:   # aim the kill into a write
                time.sleep(0.0005)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        torn += not path.read_bytes().endswith(b"\n")
        try:
            session = CollectSession(path, [f"prompt {i}" for i in range(100_000)], fake)
            data = prepare_preferences(str(path), val_size=0.25, test_size=0.25)
            assert session.index == len(lines(path)) == len(data.train) + len(data.validation) + len(data.test)
        except Exception as error:   # noqa: BLE001 - counted, then reported
            unusable.append(f"{path.name}: {error}")
    assert unusable == [], unusable
    assert torn >= 10, f"only {torn} of 20 kills landed mid-write: the test no longer tests the repair"
