#!/usr/bin/env bash
# GPU check of the training engine (issue 3): S-B/16 at 256p on real photos, both stages, within one
# bounded call. Usage on the GPU machine, from the repo root:
#   NPROC=2 bash benchmarks/train_check.sh PHOTOS_DIR OUT_DIR [key=value ...]
# PHOTOS_DIR holds train/ and val/ image folders. NPROC > 1 launches torchrun (DDP over NCCL).
# The stage-2 settings are those of docs/training_check (a fixed lambda 0.1, full stage-2 lr), which the
# defaults no longer are (docs/stage2_check). The run folder's reports and plots are copied to OUT_DIR; the checkpoints (about 1.5 GB with
# optimizer state) stay in /tmp/vitok-train-check.
set -euo pipefail
photos="$1"; out="$2"; shift 2
nproc="${NPROC:-1}"
run=/tmp/vitok-train-check
rm -rf "$run"
if [ "$nproc" -gt 1 ]; then
    launch=(torchrun --standalone --nproc_per_node="$nproc" -m vitok)
else
    launch=(python3 -m vitok)
fi
"${launch[@]}" train --config sb16_256 --out "$run" \
    data.source="$photos/train" data.val_source="$photos/val" data.holdout=0 data.workers=6 \
    data.min_scale=0.1 data.eval_limit=0 \
    train.batch_size=128 optim.lr=2.0e-4 optim.warmup_steps=200 optim.disc_warmup_steps=100 \
    loss.require_lpips=false loss.gan_weight=0.1 loss.gan_warmup_steps=300 \
    loss.adaptive_gan_weight=false optim.stage2_lr_scale=1.0 \
    loss.disc_channels=32 train.ema_decay=0.999 \
    train.log_every=25 train.eval_every=500 train.image_every=500 train.checkpoint_every=100000 \
    train.time_limit_minutes=7 "$@"
mkdir -p "$out"
cp "$run"/report.json "$run"/report.md "$run"/metrics.jsonl "$run"/config.yaml "$run"/*.png "$out"/
