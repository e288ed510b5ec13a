#!/usr/bin/env bash
# GPU check of the v2 architecture (issue 19), from the repo root:
#   bash benchmarks/v2_check.sh OUT_DIR [BENCH ROWS...]
# 1. the v2 tests (CPU reference fixture) under this machine's torch;
# 2. benchmarks/v2_gpu_check.py: the converted fixture on CUDA, float32 and bf16, against the
#    authors' reference numbers;
# 3. benchmarks/bench.py: vitok's v2 implementation (the released 350M architecture, random
#    weights) against vitok's own S-B/16, encode / decode / encode+decode and the model-only
#    training step, eager and compiled, in one run (default rows: both at 256p and 512p).
set -euo pipefail
out="$1"; shift
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(S-B/16@256 v2-350M@256 S-B/16@512 v2-350M@512)
mkdir -p "$out"
export PYTHONPATH="$PWD/src"
python3 -m pytest -q -p no:cacheprovider tests/model/test_vitok_v2.py > "$out/pytest.txt" 2>&1 \
    || echo "v2 tests failed (see pytest.txt)"
tail -n 3 "$out/pytest.txt"
python3 benchmarks/v2_gpu_check.py --out "$out/v2_gpu_check.json" > "$out/v2_gpu_check.txt" 2>&1
python3 benchmarks/bench.py --only "${rows[@]}" --modes eager,compiled --parts infer,train \
    --out "$out/bench.json" 2>&1 | tee "$out/bench.txt" | tail -n 20
