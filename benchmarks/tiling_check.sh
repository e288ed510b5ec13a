#!/usr/bin/env bash
# GPU check of tiled encode/decode (issue 17), from the repo root:
#   bash benchmarks/tiling_check.sh PHOTOS_DIR LARGE_DIR OUT_DIR
# Trains S-B/16 at 128 px on PHOTOS_DIR/train for one minute (stage 1 only: a short run, so the
# numbers compare tiled with untiled, not with published tokenizers), then runs
# benchmarks/tiling_check.py on the large originals in LARGE_DIR (held-out photos, never upsampled):
# centre crops of 512 ... 4096 px, tiles of 128 px with 32 px overlap, bf16 on the GPU.
set -euo pipefail
photos="$1"; large="$2"; out="$3"
work="${WORK:-/tmp/vitok-tiling-check}"
mkdir -p "$work" "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -f "$work/tok/model/config.json" ]; then
    python3 -m vitok train --config sb16_256 model.image_size=128 model.compile=false train.batch_size=128 \
        train.stage1_steps=1500 train.stage2_steps=0 train.time_limit_minutes="${TRAIN_MINUTES:-1.0}" optim.lr=4e-4 \
        optim.warmup_steps=50 train.eval_every=0 train.image_every=100000 train.progress=false train.log_every=100 \
        data.source="$photos/train" data.val_source="$photos/val" data.workers=14 data.eval_limit=64 \
        loss.require_lpips=false --out "$work/tok" 2>&1 | grep -v "Warning\|warn(" | tail -n 8
fi
python3 benchmarks/tiling_check.py "$work/tok/model" "$large"/*.jpg --out "$out" --sizes 512,1024,2048,4096 --bf16
cp "$work/tok/report.json" "$out/tokenizer_report.json"
