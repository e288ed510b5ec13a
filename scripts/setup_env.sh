#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install vitok into it.
# Usage: source scripts/setup_env.sh [EXTRAS]   e.g. EXTRAS=test
# VITOK_VENV chooses the folder (default .venv); VITOK_TORCH the torch requirement installed
# when the environment has none (default torch==2.13.0, the CPU build this workplace keeps on disk).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VITOK_VENV:-$root/.venv}"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    "$py" -m pip install -q "${VITOK_TORCH:-torch==2.13.0}"
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
"$py" -m pip install -q -e "$spec"
export PATH="$venv/bin:$PATH"
