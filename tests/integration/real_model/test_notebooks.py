"""Notebooks run in a real kernel, headless, as a user's would."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.real_model]
NOTEBOOKS = REPO_ROOT / "notebooks"


def execute(path: Path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def outputs_of(nb, source_start: str) -> list:
    [cell] = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    return cell.outputs


def test_quickstart_runs_and_keeps_one_final_progress_view_per_run(monkeypatch):
    monkeypatch.delenv("LLM_MAGICS_PROGRESS")  # the kernel picks its own: HTML
    nb = execute(NOTEBOOKS / "quickstart.ipynb")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    probe = outputs_of(nb, "%probe --model minilm --data train_df --test test_df --out")
    progress = [o for o in probe if "llm-magics-progress" in o.get("data", {}).get("text/html", "")]
    # One display, updated in place through its display id: the saved notebook holds the final state.
    assert len(progress) == 1 and "ok</span>" in progress[0]["data"]["text/html"]
    assert len(probe) <= 3  # progress, the Result; never a line per batch
    result_html = "".join(o.get("data", {}).get("text/html", "") for o in probe)
    assert "test_accuracy" in result_html
    compare = outputs_of(nb, "%llm compare")
    assert "image/png" in compare[0]["data"]["text/html"] or "data:image/png" in compare[0]["data"]["text/html"]


def test_method_comparison_notebook_compares_every_method(monkeypatch):
    monkeypatch.delenv("LLM_MAGICS_PROGRESS")
    monkeypatch.setenv("LLM_MAGICS_COMPARE_ROWS", "240")
    monkeypatch.setenv("LLM_MAGICS_COMPARE_TEST_ROWS", "60")
    nb = execute(NOTEBOOKS / "compare_methods.ipynb")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    from llm_magics.runs import RunStore
    from llm_magics.settings import current
    runs = RunStore(current().runs_path).frame()
    assert set(runs["method"]) == {"icl", "probe", "finetune", "lora"} and len(runs) == 7
    assert runs["test_accuracy"].notna().all()
    compare = outputs_of(nb, "%llm compare")[0]["data"]["text/html"]
    assert "data:image/png" in compare and "lora" in compare
