"""The house's shape, checked on every test run as CI checks it (docs/architecture.md): the import-linter
contracts in pyproject.toml, ruff at zero findings, and no import that runs up a layer or in a circle."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
BIN = Path(sys.executable).parent   # the venv's: lint-imports and ruff come with the test extra


def counter():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "scripts" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    done = run(str(BIN / "lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_finds_nothing():
    done = run(sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def known_open() -> set[tuple[str, str]]:
    """The upward imports still open, listed in the layers contract's ignore_imports (each to be removed)."""
    import tomllib
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    listed = next(c for c in contracts if c["id"] == "layers").get("ignore_imports", [])
    return {tuple(part.strip() for part in line.split("->")) for line in listed}


def test_no_import_runs_up_a_layer_or_in_a_circle():
    layers = counter()
    graph = layers.edges(layers.modules())
    # exactly the listed open ones: a new upward import fails, and so does a fixed one still listed
    assert set(layers.upward(graph)) == known_open()
    assert layers.cycles(graph) == []


def test_the_counter_sees_an_upward_import_and_a_circle(tmp_path):
    """The counter itself can fail: a ground module importing the face, and two modules importing each
    other (inside a function too), are found."""
    layers = counter()
    package = tmp_path / "llm_magics"
    (package / "runs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api.py").write_text("from .runs import store\n")
    (package / "runs" / "__init__.py").write_text("")
    (package / "runs" / "store.py").write_text("def f():\n    from .. import api\n")
    (package / "errors.py").write_text("from . import settings\n")
    (package / "settings.py").write_text("from .errors import UsageError\n")
    graph = layers.edges(layers.modules(package))
    assert layers.upward(graph) == [("llm_magics.runs.store", "llm_magics.api")]
    assert layers.cycles(graph) == [["llm_magics.api", "llm_magics.runs.store"],
                                    ["llm_magics.errors", "llm_magics.settings"]]

