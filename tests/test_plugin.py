"""A third-party method, pip-installed from its own distribution, found through the entry point."""
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin_example"

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
print('ORIGIN', methods.loc['echo', 'origin'], methods.loc['probe', 'origin'])
bad = sh.run_cell('%broken')
print('BROKEN_RUN', bad.success)
from llm_magics import api
print('API', api.echo(data=['a b c']).metrics)
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(PLUGIN)], check=True, capture_output=True)
    return site


def test_installed_plugin_runs_and_a_broken_one_is_listed(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site), "LLM_MAGICS_HOME": str(tmp_path), "LLM_MAGICS_PROGRESS": "none",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, env=env, timeout=120)
    out = done.stdout
    assert "METRICS {'rows': 2, 'words': 5} ['HELLO THERE WORLD']" in out, done.stderr
    assert "BROKEN failed | missing package 'not_a_real_package_for_llm_magics'" in out
    assert "ORIGIN llm-magics-echo llm-magics" in out
    assert "BROKEN_RUN False" in out and "could not be imported" in done.stderr
    assert "API {'rows': 1, 'words': 3}" in out
