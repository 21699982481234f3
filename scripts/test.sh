#!/usr/bin/env bash
# Installs what the tests need, then runs them. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/env.sh"
python -m pytest -q "$@"
