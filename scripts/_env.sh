# Sourced by the scripts in this folder: a virtual environment with optuna-fms installed.
# torch is pinned to the CPU build by constraints.txt so pip never pulls a CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
extras="${FMS_EXTRAS:-}"
stamp=".venv/.fms-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -c constraints.txt -e ".${extras:+[$extras]}"
    touch "$stamp"
fi
