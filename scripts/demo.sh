#!/usr/bin/env bash
# The main job on the embedded default: sizes, bottlenecks and FLOPs of the paper's variants.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
vitok info "$@"
