"""A stopped run is continued once: the run that resumed it marks its checkpoint
as continued and drops its optimizer state; resuming it again is refused, naming that run."""
import pytest

from llm_magics import api
from llm_magics.engine import checkpoint
from llm_magics.errors import UsageError

KWARGS = dict(train="all", epochs=6, lr=1e-3, dtype="float32", eval_every=2)


def start(tiny_bert, frame, **kwargs):
    return api.finetune(model=str(tiny_bert), data=frame, **KWARGS, **kwargs)


def stop_early(handle, steps=3):
    while handle.progress.state.done < steps and not handle.done:
        handle.wait(0.01)
    handle.stop()
    result = handle.result(timeout=120)
    assert result.status == "stopped"
    return result


def test_a_stopped_run_is_resumed_once(tiny_bert, separable, store, home):
    frame, _, _ = separable
    stopped = stop_early(start(tiny_bert, frame, bg=True))
    folder = home.subdir("runs") / stopped.run_id / "checkpoint-last"
    resumed = start(tiny_bert, frame, resume=stopped.run_id)
    assert resumed.status == "ok"
    # Kept, marked, and lighter: the weights stay, the optimizer state (2x the weights) goes.
    assert folder.is_dir() and checkpoint.continued_by(folder) == resumed.run_id
    assert (folder / checkpoint.WEIGHTS).exists() and not (folder / checkpoint.OPTIMIZER).exists()
    assert not checkpoint.exists(folder)
    with pytest.raises(UsageError) as info:
        start(tiny_bert, frame, resume=stopped.run_id)
    message = str(info.value)
    assert "\n" not in message and f"already continued by run {resumed.run_id}" in message
    with pytest.raises(UsageError, match="no stopped or crashed finetune run"):
        start(tiny_bert, frame, resume="last")
    assert sorted(r["run_id"] for r in store.list()) == sorted([stopped.run_id, resumed.run_id])
    assert [r["status"] for r in store.list() if r["run_id"] == resumed.run_id] == ["ok"]


def test_a_chain_of_stops_resumes_from_its_newest_link(tiny_bert, separable, store):
    frame, _, _ = separable
    first = stop_early(start(tiny_bert, frame, bg=True))
    second = stop_early(start(tiny_bert, frame, bg=True, resume=first.run_id), steps=first.metrics["steps"] + 3)
    with pytest.raises(UsageError, match=f"continued by run {second.run_id}.*--resume {second.run_id}"):
        start(tiny_bert, frame, resume=first.run_id)
    third = start(tiny_bert, frame, resume="last")   # the newest resumable link: the second run's
    straight = start(tiny_bert, frame)
    assert third.status == "ok" and third.metrics["steps"] == straight.metrics["steps"]
    assert third.metrics["test_loss"] == pytest.approx(straight.metrics["test_loss"], abs=1e-4)
    assert [r["status"] for r in store.list()].count("ok") == 2


def test_a_source_folder_gone_before_the_end_is_a_note_not_a_lost_run(tiny_bert, separable, monkeypatch):
    frame, _, _ = separable
    stopped = stop_early(start(tiny_bert, frame, bg=True))

    def gone(folder, run_id):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(checkpoint, "mark_continued", gone)
    resumed = start(tiny_bert, frame, resume=stopped.run_id)
    assert resumed.status == "ok" and "could not mark" in " ".join(resumed.notes)
