"""The LP-FT example (examples/lp_ft): a method of two phases on the public training base — one live view,
one Stop, --resume in either phase, --devices refused in one line."""
import sys

import pytest
import torch

from llm_magics.errors import UsageError
from llm_magics.progress.events import Progress
from llm_magics.runner import build_options, execute

from tests.helpers import REPO_ROOT

KWARGS = dict(probe_epochs=2, probe_lr=5e-3, epochs=2, lr=1e-3, eval_every=4, dtype="float32", seed=0)


@pytest.fixture(scope="module")
def lp_ft():
    sys.path.insert(0, str(REPO_ROOT / "examples" / "lp_ft"))
    try:
        from llm_magics_lp_ft import LpFtMethod
    finally:
        sys.path.pop(0)
    return LpFtMethod


def run(method, model, frame, **kwargs):
    options = build_options(method, None, dict(model=str(model), data=frame, **{**KWARGS, **kwargs}))
    return execute("lp_ft", None, options, method_cls=method, progress_mode="none")


def stop_in(monkeypatch, phase: str, step: int):
    """Press Stop once `phase` has taken `step` optimizer steps (between steps, as the Stop button does)."""
    advance = Progress.advance

    def advance_then_stop(self, n=1, **metrics):
        advance(self, n, **metrics)
        if self.state.title.endswith(f"· {phase}") and self.state.unit == "steps" and self.state.done == step:
            self.request_stop()
    monkeypatch.setattr(Progress, "advance", advance_then_stop)


@pytest.fixture
def straight(lp_ft, tiny_bert, separable):
    return run(lp_ft, tiny_bert, separable[0])


def test_both_phases_run_in_one_live_view_and_the_second_starts_from_the_probe(lp_ft, tiny_bert, separable,
                                                                               straight):
    frame = separable[0]
    handle = run(lp_ft, tiny_bert, frame, bg=True)
    result = handle.result(timeout=300)
    kinds = [e.kind for e in handle.progress.events]
    assert kinds.count("end") == 1 and kinds[-1] == "end"
    titles = [e.title for e in handle.progress.events if e.kind == "step"]
    assert titles[0].endswith("· probe") and titles[-1].endswith("· finetune")
    state = handle.progress.state   # the run's clock kept counting through the probe: one clock, two phases
    assert state.elapsed > state.phase_elapsed > 0 and state.status == "ok"
    assert result.status == "ok" and any("head-only fast path" in n for n in result.notes)
    assert result.metrics["test_loss"] == pytest.approx(straight.metrics["test_loss"], abs=1e-5)
    # the fine-tuning phase opens on the probe's head: its first evaluation is the probe's result
    from llm_magics import api
    probe = api.finetune(model=str(tiny_bert), data=frame, train="head", epochs=2, lr=5e-3, eval_every=4,
                         dtype="float32", seed=0)
    assert result.history.iloc[0]["step"] == 0
    assert result.history.iloc[0]["val_loss"] == pytest.approx(probe.metrics["val_loss"], abs=1e-4)
    assert result.trainable_params == result.total_params   # the second phase trains every layer


@pytest.mark.parametrize("phase, step", [("probe", 3), ("finetune", 3)])
def test_a_stop_in_either_phase_resumes_to_the_uninterrupted_runs_metrics(lp_ft, tiny_bert, separable, straight,
                                                                         monkeypatch, phase, step):
    frame = separable[0]
    stop_in(monkeypatch, phase, step)
    stopped = run(lp_ft, tiny_bert, frame)
    monkeypatch.undo()
    assert stopped.status == "stopped" and stopped.metrics["steps"] == step
    assert any(f"stopped in {phase}" in n for n in stopped.notes)
    # a stop in the probe ends the run: the fine-tuning phase did not start
    assert stopped.trainable_params < stopped.total_params if phase == "probe" else True
    resumed = run(lp_ft, tiny_bert, frame, resume=stopped.run_id)
    assert resumed.status == "ok" and resumed.metrics["steps"] == straight.metrics["steps"]
    assert any(f"resumed in {phase}" in n for n in resumed.notes)
    for key in ("val_loss", "test_loss", "test_accuracy", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-5)


def test_resume_checks_the_users_options_not_a_phases(lp_ft, tiny_bert, separable, monkeypatch):
    frame = separable[0]
    stop_in(monkeypatch, "probe", 2)
    stopped = run(lp_ft, tiny_bert, frame)
    monkeypatch.undo()
    with pytest.raises(UsageError, match=r"--probe-lr 0\.005 \(now 0\.01\)"):
        run(lp_ft, tiny_bert, frame, resume=stopped.run_id, probe_lr=1e-2)


def test_devices_2_is_refused_in_one_line(lp_ft, tiny_bert, separable):
    with pytest.raises(UsageError) as info:
        run(lp_ft, tiny_bert, separable[0], devices=2)
    assert "\n" not in str(info.value) and str(info.value).startswith("%lp_ft runs in one process")


def test_the_example_is_on_the_public_modules_in_at_most_40_lines():
    from tests.unit.test_plugin import PUBLIC, _code_lines, _imports
    source = REPO_ROOT / "examples" / "lp_ft" / "llm_magics_lp_ft" / "__init__.py"
    assert _imports(source) <= PUBLIC, _imports(source) - PUBLIC
    assert _code_lines(source) <= 40


MAGIC = """
import sys
from IPython.core.interactiveshell import InteractiveShell
from llm_magics.testing import build_bert
from tests.helpers import word_task
model = build_bert(__import__('pathlib').Path(sys.argv[1]))
sh = InteractiveShell.instance()
sh.run_line_magic('load_ext', 'llm_magics')
sh.user_ns['train'] = word_task()[0]
r = sh.run_line_magic('lp_ft', f'--model {model} --data train --probe-epochs 1 --epochs 1 --dtype float32')
print('RESULT', r.method, r.status, r.trainable_params == r.total_params, [n for n in r.notes if 'phases' in n])
"""


def test_the_installed_plugin_runs_both_phases_through_its_magic(tmp_path_factory, tmp_path):
    import subprocess

    from tests.unit.test_plugin import _env, _site
    env = _env(_site(tmp_path_factory, "lp_ft"), tmp_path)
    env["PYTHONPATH"] += f":{REPO_ROOT}"
    done = subprocess.run([sys.executable, "-c", MAGIC, str(tmp_path / "bert")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "RESULT lp_ft ok True ['phases probe, finetune']" in done.stdout, done.stderr[-3000:]


def all_then_head(late_head_only=False):
    """A method whose last phase freezes what its first trained: its Result must rebuild both from disk."""
    from llm_magics.plugin import dataclass, option
    from llm_magics.training import ClassifierTrainingMethod, ClassifierTrainingOptions, Phase

    @dataclass
    class StagedOptions(ClassifierTrainingOptions):
        stage: str = option("all", "what trains", choices=("all", "head"))

    class AllThenHead(ClassifierTrainingMethod):
        name, Options = "all_then_head", StagedOptions

        def phases(self, options):
            return [Phase("all", {"epochs": 1}), Phase("head", {"stage": "head"}, head_only=late_head_only)]

        def select_trainable(self, model, options):
            return None if options.stage == "all" else (lambda name, param: False)
    return AllThenHead


def test_a_result_rebuilt_from_disk_holds_every_phases_weights(tiny_bert, separable):
    frame, pos, neg = separable
    method = all_then_head()
    options = build_options(method, None, dict(model=str(tiny_bert), data=frame, epochs=2, lr=1e-3, dtype="float32"))
    result = execute(method.name, None, options, method_cls=method, progress_mode="none")
    assert result.status == "ok" and result.trainable_params < result.total_params
    texts = [" ".join(pos[:4]), " ".join(neg[:4])]
    in_memory = result.logits(texts)
    result.release()
    assert torch.allclose(result.logits(texts), in_memory, atol=1e-5)   # rebuilt: the base's first-phase weights too


def test_a_head_only_phase_after_the_first_is_refused(tiny_bert, separable):
    method = all_then_head(late_head_only=True)
    options = build_options(method, None, dict(model=str(tiny_bert), data=separable[0], dtype="float32"))
    with pytest.raises(TypeError, match="head_only is for the first phase only"):
        execute(method.name, None, options, method_cls=method, progress_mode="none")


def test_resuming_a_later_phase_whose_earlier_weights_are_gone_is_one_line(lp_ft, tiny_bert, separable, monkeypatch,
                                                                          home):
    import shutil
    stop_in(monkeypatch, "finetune", 2)
    stopped = run(lp_ft, tiny_bert, separable[0])
    monkeypatch.undo()
    shutil.rmtree(home.subdir("runs") / stopped.run_id / "phases")
    with pytest.raises(UsageError, match="earlier phases' weights are gone") as info:
        run(lp_ft, tiny_bert, separable[0], resume=stopped.run_id)
    assert "\n" not in str(info.value)


def test_the_guide_shows_the_example_as_it_is():
    guide = (REPO_ROOT / "docs" / "plugins.md").read_text().split("## 5b.")[1]
    shown = guide.split("```python\n")[1].split("```")[0]
    source = (REPO_ROOT / "examples" / "lp_ft" / "llm_magics_lp_ft" / "__init__.py").read_text()
    assert source.split('"""', 2)[2].strip() == shown.strip()
