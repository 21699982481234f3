"""Every test under tests/integration/<marker>/ carries that folder's marker (kernel, multiprocess, real_model,
browser): a test file put in one of these folders needs no `pytestmark` of its own, and
`python -m pytest -m <marker>` selects it."""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MARKED_FOLDERS = ("browser", "kernel", "multiprocess", "real_model")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items):
    for item in items:  # every collected item (parametrised ones too): only those under a marked folder
        path = Path(item.path).resolve()
        folder = path.relative_to(HERE).parts[0] if path.is_relative_to(HERE) else None
        if folder in MARKED_FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))
