"""`%llm sweep --search tpe`: an Optuna study over a tiny model, pruned by its evaluations, resumable by name."""
import pytest

from llm_magics.errors import UsageError

optuna = pytest.importorskip("optuna", reason="the tune extra (pip install 'llm-magics[tune]')")

# Pruned on val_loss: a continuous metric trails the median at once, where tiny validation splits tie on accuracy.
LINE = ("%llm sweep finetune --model {model} --data df --train all --epochs 1 --batch-size 8 --eval-every 3 "
        "--grid \"lr=1e-7~3e-2 warmup=0,0.1\" --search tpe --trials {trials} --prune --metric val_loss "
        "--study {study} --out {out}")


def test_a_pruned_study_records_every_trial_and_resumes(shell, tiny_bert, separable, store):
    shell.user_ns["df"] = separable[0].head(120)
    cell = shell.run_cell(LINE.format(model=tiny_bert, trials=8, study="s-test", out="study"))
    assert cell.success, cell.error_in_exec
    sweep = shell.user_ns["study"]
    assert sweep.wait(600) and sweep.status == "done"
    board = sweep.leaderboard()
    statuses = list(board["status"])
    assert len(board) == 8 and statuses.count("pruned") >= 1 and set(statuses) <= {"ok", "pruned"}, board
    trials = sweep.study.trials
    assert len(trials) == 8 and sum(t.state.name == "PRUNED" for t in trials) == statuses.count("pruned")
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    recorded = [r for r in store.list() if r["sweep_id"] == "s-test"]
    assert len(recorded) == 8 and {r["run_id"] for r in recorded} == set(board["run_id"])   # every trial a run
    pruned_run = board[board["status"] == "pruned"].iloc[0]
    assert pruned_run["message"].startswith("pruned at step")
    assert set(sweep.importance) == {"lr", "warmup"} and "parameter importance: --lr" in sweep._repr_html_()

    again = shell.run_cell(LINE.format(model=tiny_bert, trials=2, study="s-test", out="more"))
    assert again.success
    more = shell.user_ns["more"]
    assert more.wait(300) and len(more.rows) == 2
    assert len(more.study.trials) == 10 and more.recorded_trials == 10                 # added to the same study
    assert len([r for r in store.list() if r["sweep_id"] == "s-test"]) == 10


def test_search_mistakes_are_one_line(shell):
    for line, expected in (
            ("%llm sweep probe --data df --grid C=0.1,1 --search tpe", "needs --trials N"),
            ("%llm sweep probe --data df --grid C=0.1,1 --trials 3", "add --search tpe"),
            ("%llm sweep probe --data df --grid C=0.1,1 --search bayes --trials 3", "--search 'bayes' is not valid")):
        with pytest.raises(UsageError, match=expected):
            shell.run_line_magic("llm", line[len("%llm "):])
