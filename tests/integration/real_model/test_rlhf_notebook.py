"""notebooks/rlhf.ipynb runs headless in a real kernel, small: sentiment probe, PPO, eval, DPO."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import need_sst2, REPO_ROOT, SHARED

pytestmark = [pytest.mark.kernel, pytest.mark.real_model]
NOTEBOOK = REPO_ROOT / "notebooks" / "rlhf.ipynb"


def test_rlhf_notebook_runs_end_to_end(monkeypatch, tmp_path):
    need_sst2()
    monkeypatch.delenv("LLM_MAGICS_PROGRESS")
    monkeypatch.setenv("LLM_MAGICS_SHARED", str(SHARED))
    monkeypatch.setenv("RLHF_NB_ROWS", "200")
    monkeypatch.setenv("RLHF_NB_STEPS", "3")
    monkeypatch.setenv("RLHF_NB_DPO_STEPS", "4")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    from llm_magics.runs import RunStore
    from llm_magics.settings import current
    methods = set(RunStore(current().runs_path).frame()["method"])
    assert {"probe", "rlhf ppo", "rlhf eval", "rlhf dpo"} <= methods
