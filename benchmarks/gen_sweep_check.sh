#!/usr/bin/env bash
# GPU check of the generation sweep (issue 15), from the repo root:
#   bash benchmarks/gen_sweep_check.sh PHOTOS_DIR OUT_DIR
# PHOTOS_DIR holds train/ (and val/, unused here). A labelled set is cut from the training photos
# with benchmarks/crop_set.py, one class per photo: PER_TRAIN crops per photo (seed 0) to train on
# and PER_VAL other crops of the same photos (seed 1) held out, all 128 px. Then the shipped spec
# gen_sweep_small runs on it: tokenizers on the training crops (centre crop = the whole 128 px crop,
# flips), evaluated on the held-out crops, and each point's generation phase on the same sets.
# The sweep resumes, so a call cut by its time limit is continued by running the script again on the
# same machine (WORK is kept). Everything but weights, latents and samples.safetensors is packed into
# OUT_DIR/gen_sweep_check.tgz.
set -euo pipefail
photos="$1"; out="$2"
work="${WORK:-/tmp/vitok-gen-sweep-check}"
PER_TRAIN="${PER_TRAIN:-48}"; PER_VAL="${PER_VAL:-8}"; LIMIT="${LIMIT:-540}"
mkdir -p "$work" "$out"
export PYTHONPATH="$PWD/src" PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
if [ ! -f "$work/set/done" ]; then
    rm -rf "$work/set"
    python3 benchmarks/crop_set.py "$photos/train" "$work/set/train" --class-by photo --per-image "$PER_TRAIN" \
        --size 128 --min-scale 0.1 --seed 0 | tail -n 1
    python3 benchmarks/crop_set.py "$photos/train" "$work/set/val" --class-by photo --per-image "$PER_VAL" \
        --size 128 --min-scale 0.1 --seed 1 | tail -n 1
    touch "$work/set/done"
fi
status=0
timeout "$LIMIT" python3 -m vitok sweep gen_sweep_small \
    data.source="$work/set/train" data.val_source="$work/set/val" data.crop=center data.workers=12 loss.require_lpips=false \
    generation.data="$work/set/train" generation.val_data="$work/set/val" ${EXTRA:-} --out "$work/sweep" \
    2>&1 | grep -v "Warning\|warn(" | tee "$work/sweep.log" | tail -n 40 || status=$?
echo "sweep exit status $status at ${SECONDS}s"
tar czf "$out/gen_sweep_check.tgz" -C "$work" --exclude='checkpoints' --exclude='*.safetensors' \
    --exclude='latents' --exclude='set' --exclude='*.pt' sweep sweep.log
ls -la "$out"
