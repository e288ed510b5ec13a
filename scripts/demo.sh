#!/usr/bin/env bash
# The main job on the embedded default: train and evaluate a small tokenizer on the bundled photos.
# Arguments go to `vitok train` (e.g. --out DIR, key=value overrides).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" ""  # no extras (and not this script's arguments)
vitok train "$@"
