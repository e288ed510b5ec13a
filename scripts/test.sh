#!/usr/bin/env bash
# Run the test suite in the project's virtual environment (created on first use).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" test
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pytest "$@"
