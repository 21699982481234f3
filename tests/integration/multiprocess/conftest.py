"""Every test under this folder carries the `multiprocess` marker (starts torchrun workers).

It is applied here: a test file put in this folder needs no `pytestmark` of its own, and
`python -m pytest -m multiprocess` selects it."""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items):
    for item in items:  # every collected item (parametrised ones too): only those under this folder are marked
        if Path(item.path).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.multiprocess)
