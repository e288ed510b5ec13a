#!/usr/bin/env bash
# GPU check of stage 2 (issue 13) in one bounded call, from the repo root:
#   bash benchmarks/stage2_check.sh PHOTOS_DIR OUT_DIR
# PHOTOS_DIR holds train/ and val/ image folders. For each c in CHANNELS: S-B/16 at 256p (the shipped
# sb16_256 config with the short-budget settings of train_check.sh), stage 1 for S1 steps on random
# crops of train/ (every c at once on the one GPU); then, from that run's last checkpoint, stage 2
# for S2 steps once per variant in VARIANTS, all at once: the stage-1 folder is copied and continued
# with `vitok train --resume COPY train.stage2_steps=S2 ...` (a stage-1 run extended by a stage 2; the
# guard's reference is the checkpoint it resumes from). Held-out: the whole photos of val/.
# VARIANTS is a space-separated list of NAME=OVERRIDES with the overrides joined by commas, e.g.
#   VARIANTS="defaults= fixed=loss.adaptive_gan_weight=false,loss.gan_weight=0.1"
# Afterwards benchmarks/stage2_report.py writes the table and the 2x-zoom crops, and everything but
# the checkpoints is packed into OUT_DIR/stage2_check.tgz.
set -euo pipefail
photos="$1"; out="$2"
work="${WORK:-/tmp/vitok-stage2-check}"
S1="${S1:-1200}"; S2="${S2:-300}"; CHANNELS="${CHANNELS:-16 128}"; VARIANTS="${VARIANTS:-defaults=}"
EVAL2="${EVAL2:-50}"; S2_MINUTES="${S2_MINUTES:-6}"; DEVICE="${DEVICE:-cuda}"
W1="${W1:-6}"; W2="${W2:-3}"  # loader processes per run in stage 1 / stage 2 (runs share the CPUs)
rm -rf "$work"; mkdir -p "$work" "$out"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
common=(data.source="$photos/train" data.val_source="$photos/val" data.holdout=0 data.min_scale=0.1
        data.eval_limit=0 train.batch_size=128 optim.lr=2.0e-4 optim.warmup_steps=200 loss.require_lpips=false
        train.log_every=25 train.image_every=100000 train.checkpoint_every=100000 train.keep_last=1
        train.progress=false ${COMMON_ARGS:-})

pids=()
for c in $CHANNELS; do
    python3 -m vitok train --config sb16_256 --out "$work/c$c-stage1" model.channels="$c" "${common[@]}" \
        train.stage1_steps="$S1" train.stage2_steps=0 train.eval_every=0 data.workers="$W1" \
        > "$work/c$c-stage1.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "a stage-1 run failed:"; tail -n 20 "$work"/*-stage1.log; exit 1; }
done
echo "stage 1 done at ${SECONDS}s"

pids=()
for c in $CHANNELS; do
    for variant in $VARIANTS; do
        name="${variant%%=*}"; overrides="${variant#*=}"
        run="$work/c$c-$name"
        cp -r "$work/c$c-stage1" "$run"
        python3 -m vitok train --resume "$run" train.stage2_steps="$S2" train.eval_every="$EVAL2" \
            data.workers="$W2" train.time_limit_minutes="$S2_MINUTES" ${overrides//,/ } > "$run.log" 2>&1 &
        pids+=($!)
    done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "stage 2 done at ${SECONDS}s (status $status)"
[ "$status" = 0 ] || tail -n 20 "$work"/c*.log

python3 benchmarks/stage2_report.py "$work" --channels $CHANNELS --variants $(for v in $VARIANTS; do echo "${v%%=*}"; done) \
    --photos "$photos/val" --device "$DEVICE" --out "$work/summary"
cp "$work/summary/"*.md "$work/summary/"*.png "$out"/ 2>/dev/null || true
tar -C "$work" --exclude='checkpoints' --exclude='model' -czf "$out/stage2_check.tgz" .
exit $status
