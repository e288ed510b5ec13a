#!/usr/bin/env bash
# GPU check of latent generation (issue 6) in one bounded call, from the repo root:
#   bash benchmarks/dit_check.sh PHOTOS_DIR OUT_DIR
# PHOTOS_DIR holds train/ (file names "<collection>--<name>.jpg") and val/. Steps:
#  1. a tokenizer, S-B/16 at 128p with c = 16 (an 8x8 grid of 16-channel latents), stage 1 on random
#     crops of PHOTOS_DIR/train, evaluated on the whole photos of PHOTOS_DIR/val;
#  2. a labelled set: 64 random crops per training photo at 128p, class = source collection;
#  3. its latent store (`vitok latents`), 4. a class-conditional DiT-B on it (`vitok dit train`),
#  5. sample grids with and without guidance (`vitok dit sample`), 6. the latent-space class and
#     novelty check (benchmarks/dit_class_check.py).
# Everything but the checkpoints is packed into OUT_DIR/dit_check.tgz; the main pictures are copied beside it.
set -euo pipefail
photos="$1"; out="$2"
work=/tmp/vitok-dit-check
rm -rf "$work"; mkdir -p "$work" "$out"
# The knobs below shrink the check for a dry run on a CPU (DEVICE=cpu TOK_MINUTES=0.05 TOK_ARGS='model.name=T-T/16
# train.batch_size=8' DIT_ARGS='width=64 depth=2 heads=2' ...); TOK_ARGS and DIT_ARGS add key=value overrides.
TOK_MINUTES="${TOK_MINUTES:-2.5}"; DIT_MINUTES="${DIT_MINUTES:-3.5}"; DEVICE="${DEVICE:-cuda}"
PER_IMAGE="${PER_IMAGE:-64}"; PER_CLASS="${PER_CLASS:-200}"; STEPS="${STEPS:-100}"
# BUDGET_S bounds the whole script: the last, optional step (the class check) gets what is left,
# less a margin for packing, so a call with a hard limit still returns the pictures and reports.
BUDGET_S="${BUDGET_S:-570}"
left() { echo $(( BUDGET_S - SECONDS - 15 > 1 ? BUDGET_S - SECONDS - 15 : 1 )); }

python3 -m vitok train --config sb16_256 --out "$work/tok" \
    model.image_size=128 model.compile=false data.source="$photos/train" data.val_source="$photos/val" \
    data.holdout=0 data.workers=12 data.min_scale=0.1 data.eval_limit=0 \
    train.batch_size=128 train.stage1_steps=2000 train.stage2_steps=0 optim.lr=4.0e-4 optim.warmup_steps=100 \
    loss.require_lpips=false train.log_every=100 train.eval_every=0 train.image_every=100000 \
    train.checkpoint_every=100000 train.progress=false train.time_limit_minutes="$TOK_MINUTES" ${TOK_ARGS:-}

python3 benchmarks/crop_set.py "$photos/train" "$work/crops" --per-image "$PER_IMAGE" --size 128 --min-scale 0.1 --workers 12
python3 -m vitok latents "$work/tok/model" --data "$work/crops" --out "$work/lat" --device "$DEVICE" --batch-size 256

python3 -m vitok dit train --latents "$work/lat" --model DiT-B --out "$work/dit" \
    steps=8000 batch_size=256 lr=2.0e-4 warmup_steps=200 ema_decay=0.999 log_every=100 sample_every=0 \
    checkpoint_every=100000 num_preview=10 preview_steps="$STEPS" preview_cfg=3.0 time_limit_minutes="$DIT_MINUTES" ${DIT_ARGS:-}

python3 -m vitok dit sample "$work/dit" --num 40 --cfg 3.0 --steps "$STEPS" --batch-size 40 --device "$DEVICE" \
    --out "$work/samples_cfg3"
python3 -m vitok dit sample "$work/dit" --num 40 --cfg 1.0 --steps "$STEPS" --batch-size 40 --device "$DEVICE" \
    --out "$work/samples_cfg1"
timeout "$(left)" python3 benchmarks/dit_class_check.py "$work/dit" --per-class "$PER_CLASS" --cfg 1 1.5 3 \
    --steps "$STEPS" --device "$DEVICE" --out "$work/dit/class_check.json" \
    || echo "class check cut by BUDGET_S=$BUDGET_S; class_check.json holds the guidance scales it finished"

cd "$work"
cp samples_cfg3/grid.png "$out/samples_cfg3.png"; cp samples_cfg1/grid.png "$out/samples_cfg1.png"
cp dit/losses.png "$out/dit_losses.png"
touch dit/class_check.json  # present even when the budget left no time for its first scale
tar czf "$out/dit_check.tgz" tok/report.json tok/report.md tok/*.png tok/metrics.jsonl tok/config.yaml \
    lat/index.json dit/report.json dit/report.md dit/*.png dit/metrics.jsonl dit/config.yaml dit/class_check.json \
    samples_cfg3/grid.png samples_cfg1/grid.png
