#!/usr/bin/env bash
# GPU check of the video path on real footage (issue 17), from the repo root:
#   bash benchmarks/video_check.sh PHOTOS_DIR VIDEOS_DIR OUT_DIR
# 1. benchmarks/pan_clips.py: camera pans over the training photos plus the first 75 % of each real
#    clip (train), pans over the held-out photos plus the last 25 % of each real clip (val), 128 px.
# 2. S-B/4x8 (16-frame clips, c = 16) trained on them for TRAIN_MINUTES (stage 1, no LPIPS: a short run).
# 3. vitok eval on the held-out clips at the model's 16 frames, and on 32-frame clips (two chunks of
#    16 with 4 shared, and whole-clip attention for comparison): PSNR/SSIM per frame, the temporal metric.
# 4. vitok reconstruct of the held-out real clips in chunks (per-frame PSNR, temporal RMSE, chunk-edge ratio).
# Resumable (WORK is kept while the machine is warm); everything but weights is packed into OUT_DIR.
set -euo pipefail
photos="$1"; videos="$2"; out="$3"
work="${WORK:-/tmp/vitok-video-check}"; TRAIN_MINUTES="${TRAIN_MINUTES:-4}"
mkdir -p "$work" "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -f "$work/clips/done" ] || { python3 benchmarks/pan_clips.py "$photos" "$videos" "$work/clips" --size 128 \
    --frames 32 --per-photo 4 && touch "$work/clips/done"; }
if [ ! -f "$work/tok/model/config.json" ]; then
    python3 -m vitok train --config sb4x8_video model.compile=false train.batch_size=32 train.stage1_steps=4000 \
        train.stage2_steps=0 train.time_limit_minutes="$TRAIN_MINUTES" optim.lr=2e-4 optim.warmup_steps=100 \
        loss.lpips_weight=0 loss.require_lpips=false train.eval_every=0 train.image_every=100000 \
        train.progress=false train.log_every=100 data.source="$work/clips/train" data.val_source="$work/clips/val" \
        data.workers=12 data.eval_limit=64 --out "$work/tok" 2>&1 | grep -v "Warning\|warn(" | tail -n 6
fi
ev() { python3 -m vitok eval "$work/tok/model" --data "$work/clips/val" --workers 8 --metrics psnr,ssim,temporal "$@" 2>&1 | grep -v "Warning\|warn(\|eval:" | tail -n 5; }
ev --frames 16 --out "$out/eval16"
ev --frames 32 --chunk 16 --chunk-overlap 4 --out "$out/eval32_chunked"
ev --frames 32 --no-tiling --out "$out/eval32_whole"
python3 -m vitok reconstruct "$work/tok/model" "$work/clips/val"/real-*.mp4 --out "$out/real" --device cuda \
    --chunk 16 --chunk-overlap 4 2>&1 | tail -n 4
cp "$work/tok/report.json" "$out/tokenizer_report.json"
ls "$work/clips/train" | wc -l > "$out/clip_counts.txt"; ls "$work/clips/val" | wc -l >> "$out/clip_counts.txt"
