#!/usr/bin/env bash
# Runs the quickstart notebook headless on the embedded default models and prints its results.
set -euo pipefail
. "$(dirname "$0")/env.sh"
python scripts/run_notebook.py notebooks/quickstart.ipynb
