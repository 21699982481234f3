"""Third-party methods, pip-installed from their own distributions (examples/), found through the entry point."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
PUBLIC = {"llm_magics.plugin", "llm_magics.training", "llm_magics.testing"}

SESSION = """
from IPython.core.interactiveshell import InteractiveShell
import pandas as pd
sh = InteractiveShell.instance()
sh.run_line_magic('load_ext', 'llm_magics')
sh.user_ns['df'] = pd.DataFrame({'text': ['hello there world', 'one two']})
r = sh.run_cell('%echo --data df --shout').result
print('METRICS', r.metrics, r.notes)
methods = sh.run_cell('%llm methods').result.frames()['methods'].set_index('name')
print('BROKEN', methods.loc['broken', 'status'], '|', methods.loc['broken', 'error'])
print('ORIGIN', methods.loc['echo', 'origin'], methods.loc['probe', 'origin'], methods.loc['bitfit', 'origin'])
bad = sh.run_cell('%broken')
print('BROKEN_RUN', bad.success)
from llm_magics import api
print('API', api.echo(data=['a b c']).metrics)
print('FILE', sh.object_inspect('%bitfit')['file'])
"""

BITFIT = """
import sys
from IPython.core.interactiveshell import InteractiveShell
from llm_magics.demo import sentiment_splits
from llm_magics.testing import build_bert
model = build_bert(__import__('pathlib').Path(sys.argv[1]))
sh = InteractiveShell.instance()
sh.run_line_magic('load_ext', 'llm_magics')
sh.user_ns['train'], sh.user_ns['test'] = sentiment_splits(120, 40)
r = sh.run_line_magic('bitfit', f'--model {model} --data train --test test --epochs 1 --head-lr 0.01')
print('RESULT', r.method, r.status, r.trainable_params, r.total_params, sorted(r.metrics))
print('REPR', repr(r))
print('BIASES', sorted(set(r.tables['trainable parameters'].query('trainable > 0')['group'])))
print('RUNS', list(sh.run_line_magic('llm', 'runs').runs['method']))
from llm_magics.registry import registry
print('HELP', registry().load('bitfit').help())
"""


def _site(tmp_path_factory, *names):
    site = tmp_path_factory.mktemp("plugin-site")
    for name in names:
        # From a copy: an in-tree build would leave build/ and *.egg-info in examples/.
        source = tmp_path_factory.mktemp(name)
        subprocess.run(["cp", "-r", str(EXAMPLES / name) + "/.", str(source)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(source)], check=True, capture_output=True)
    return site


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    return _site(tmp_path_factory, "echo", "bitfit")


def _env(site, tmp_path):
    return {"PYTHONPATH": str(site), "LLM_MAGICS_HOME": str(tmp_path), "LLM_MAGICS_PROGRESS": "none",
            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_installed_plugin_runs_and_a_broken_one_is_listed(plugin_site, tmp_path):
    done = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True,
                          env=_env(plugin_site, tmp_path), timeout=180)
    out = done.stdout
    assert "METRICS {'rows': 2, 'words': 5} ['HELLO THERE WORLD']" in out, done.stderr
    assert "BROKEN failed | missing package 'not_a_real_package_for_llm_magics'" in out
    assert "ORIGIN llm-magics-echo llm-magics llm-magics-bitfit" in out
    assert "BROKEN_RUN False" in out and "could not be imported" in done.stderr
    assert "API {'rows': 1, 'words': 3}" in out
    # `%bitfit?` names the plugin's own file, not llm_magics/magics.py
    assert "FILE " + str(plugin_site / "llm_magics_bitfit" / "__init__.py") in out


def test_bitfit_example_trains_through_its_magic(plugin_site, tmp_path):
    done = subprocess.run([sys.executable, "-c", BITFIT, str(tmp_path / "bert")], capture_output=True, text=True,
                          env=_env(plugin_site, tmp_path), timeout=300)
    out = done.stdout
    assert "RESULT bitfit ok" in out, done.stderr[-3000:]
    trainable, total = map(int, out.split("RESULT bitfit ok ")[1].split()[:2])
    assert 0 < trainable < total / 5
    assert "'test_accuracy'" in out and "'train_loss'" in out
    repr_line = out.split("REPR ")[1].splitlines()[0]
    assert repr_line.startswith("<TrainedResult bitfit · run bitfit-") and len(repr_line) < 400
    # biases sit in every group; the head trains whole
    assert "'head'" in out.split("BIASES ")[1].splitlines()[0]
    assert "RUNS ['bitfit']" in out
    help_text = out.split("HELP ")[1]
    assert help_text.index("--norms") < help_text.index("--pooling") < help_text.index("--model")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def _code_lines(path: Path) -> int:
    """Lines of code: no blank lines, comments or docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            first = node.body[0]
            docstrings |= set(range(first.lineno, first.end_lineno + 1))
    return sum(1 for i, line in enumerate(path.read_text().splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in docstrings)


def test_bitfit_uses_only_the_public_modules_in_under_40_lines():
    source = EXAMPLES / "bitfit" / "llm_magics_bitfit" / "__init__.py"
    assert _imports(source) <= PUBLIC, _imports(source) - PUBLIC
    assert _code_lines(source) <= 40
    echo = EXAMPLES / "echo" / "llm_magics_echo" / "__init__.py"
    assert _imports(echo) <= PUBLIC


def test_the_import_check_catches_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from llm_magics.methods.training_common import TrainedResult\nimport torch\n")
    assert _imports(bad) - PUBLIC == {"llm_magics.methods.training_common", "torch"}
    assert _code_lines(bad) == 2


PLUGIN_TESTS = '''
pytest_plugins = ["llm_magics.testing"]
import pandas as pd


def reviews(n):
    return pd.DataFrame({"text": ["a warm , funny and moving film", "a dull , slow and empty film"] * (n // 2),
                         "label": ["positive", "negative"] * (n // 2)})


def test_bitfit_trains(llm_shell, tiny_bert):
    llm_shell.user_ns["train"], llm_shell.user_ns["test"] = reviews(120), reviews(40)
    r = llm_shell.run_line_magic("bitfit", f"--model {tiny_bert} --data train --test test --epochs 1")
    assert r.status == "ok" and 0 < r.trainable_params < r.total_params
    assert {"train_loss", "test_accuracy"} <= set(r.metrics)


def test_the_home_is_isolated(llm_home, tmp_path):
    assert str(llm_home.cache_dir).startswith(str(tmp_path))
'''


def test_a_plugins_own_tests_use_the_testing_fixtures(plugin_site, tmp_path):
    """docs/plugins.md's test example, run by pytest in a plugin's own folder."""
    (tmp_path / "test_bitfit.py").write_text(PLUGIN_TESTS)
    env = _env(plugin_site, tmp_path)
    env.pop("LLM_MAGICS_HOME")  # the fixture gives each test its own
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
