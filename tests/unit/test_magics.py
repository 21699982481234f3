"""The magic layer in a real IPython shell."""
import os
import subprocess
import sys

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from llm_magics import settings


def run(sh, cell, capsys):
    result = sh.run_cell(cell)
    out = capsys.readouterr()
    return result, out.out, out.err


def test_load_ext_registers_llm_and_probe_without_importing_methods():
    code = ("from IPython.core.interactiveshell import InteractiveShell; import sys\n"
            "sh = InteractiveShell.instance(); sh.run_line_magic('load_ext', 'llm_magics')\n"
            "m = sh.magics_manager.magics\n"
            "print('llm' in m['line'], 'probe' in m['line'], 'probe' in m['cell'],"
            " 'llm_magics.methods.probe' in sys.modules, 'torch' in sys.modules)")
    env = {**os.environ, "LLM_MAGICS_DEVICE": "cpu"}  # a device setting is checked at the first run, not here
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["True", "True", "True", "False", "False"]


def test_reload_keeps_one_configurable_and_unload_removes_it(home):
    from llm_magics.magics import LLMMagics
    sh = InteractiveShell.instance()
    ours = lambda: [c for c in sh.configurables if isinstance(c, LLMMagics)]  # noqa: E731
    sh.run_line_magic("load_ext", "llm_magics")
    sh.run_line_magic("reload_ext", "llm_magics")
    assert len(ours()) == 1
    sh.run_line_magic("unload_ext", "llm_magics")
    assert ours() == [] and "probe" not in sh.magics_manager.magics["line"]
    assert "llm" not in sh.magics_manager.magics["line"]


def test_question_mark_shows_option_help(shell, capsys):
    _, out, _ = run(shell, "%probe?", capsys)
    for flag in ("--model", "--layer", "--pooling", "--classifier", "--data", "--out", "(default: -1)"):
        assert flag in out


def test_probe_magic_with_a_namespace_variable_and_out(shell, capsys, tiny_bert, demo, store):
    shell.user_ns["train_df"], shell.user_ns["test_df"] = demo
    result, _, err = run(shell, f"%probe --model {tiny_bert} --data train_df --test test_df --out r1", capsys)
    assert result.success and result.result is None, err
    r1 = shell.user_ns["r1"]
    test_df = shell.user_ns["test_df"]   # the recorded accuracy is the Result's own predictions scored
    own = (pd.Series(r1.predict(test_df.text.tolist())) == test_df.label).mean()
    assert r1.metrics["test_accuracy"] == pytest.approx(own) and store.get(r1.run_id)["options"]["data"] == "train_df"
    result, _, _ = run(shell, f"%probe --model {tiny_bert} --data train_df --test test_df", capsys)
    assert result.result.method == "probe"  # without --out the Result is the cell's value


@pytest.mark.parametrize("line, message", [
    ("%probe --modle minilm", "unknown option --modle; did you mean --model?"),
    ("%probe --model nosuch --data train_df", "unknown model 'nosuch'"),
    ("%probe --data nothing_here", "no variable named 'nothing_here'"),
    ("%probe --data train_df --label stars", "--label 'stars': no such column"),
    ("%probe --data /no/such.csv", "does not exist"),
    ("%%probe --data train_df\nbody", "takes no cell body"),
    ("%llm bogus", "unknown command 'bogus'"),
    ("%llm compare --metrc x", "did you mean --metric?"),
])
def test_mistakes_print_one_usage_line_without_traceback(shell, capsys, demo, store, line, message):
    shell.user_ns["train_df"] = demo[0]
    result, out, err = run(shell, line, capsys)
    assert not result.success
    lines = [x for x in (out + err).splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("UsageError:") and message in lines[0], lines
    assert store.list() == []


def test_llm_overview_runs_compare_and_free(shell, capsys, tiny_bert, demo):
    shell.user_ns["train_df"], shell.user_ns["test_df"] = demo
    run(shell, f"%probe --model {tiny_bert} --data train_df --test test_df --out a", capsys)
    run(shell, f"%probe --model {tiny_bert} --data train_df --test test_df --layer all --out b", capsys)
    overview = shell.run_cell("%llm").result
    frames = overview.frames()
    assert set(frames) == {"methods", "models", "device", "runs"}
    assert "probe" in frames["methods"]["name"].tolist() and len(frames["runs"]) == 2
    assert set(frames["models"]["alias"]) == {"minilm", "smollm2"}
    comparison = shell.run_cell("%llm compare").result
    assert comparison.metric == "test_accuracy" and len(comparison.table) == 2
    assert comparison.png.startswith(b"\x89PNG") and "<img" in comparison._repr_html_()
    assert len(shell.run_cell("%llm runs --limit 1").result.frames()["runs"]) == 1
    assert "cpu" in repr(shell.run_cell("%llm device").result)
    result, out, _ = run(shell, "%llm free", capsys)
    assert "released" in out and shell.user_ns["a"]._loaded is None


def test_config_traits_set_the_settings(shell, capsys, tmp_path):
    shell.run_cell('%config LLMMagics.device = "cpu"')
    shell.run_cell(f'%config LLMMagics.runs_db = "{tmp_path / "runs.db"}"')
    shell.run_cell('%config LLMMagics.default_model = "smollm2"')
    assert settings.current().device == "cpu"
    assert settings.current().runs_path == tmp_path / "runs.db"
    assert settings.current().default_model == "smollm2"


def test_finetune_magic_help_and_a_background_handle(shell, capsys, tiny_bert, separable):
    _, out, _ = run(shell, "%finetune?", capsys)
    for flag in ("--train SPEC", "--task", "--epochs", "--resume RUN_ID", "--bg/--no-bg", "--feature-cache", "--head-dropout"):
        assert flag in out
    shell.user_ns["df"] = separable[0]
    result, _, err = run(shell, f"%finetune --model {tiny_bert} --data df --train head --bg --out job", capsys)
    assert result.success and result.result is None, err
    job = shell.user_ns["job"]
    assert job.result(timeout=120).metrics["test_accuracy"] > 0.5 and job.status == "ok"
