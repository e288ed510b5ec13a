#!/usr/bin/env bash
# GPU checks of the training pipeline's speed (issue 18), from the repo root:
#   bash benchmarks/issue18_check.sh PHOTOS_DIR OUT_DIR [PARTS]     PARTS: comma list, default all
# tests    the CUDA-only tests: Triton kernels against float64 autograd, nvJPEG against Pillow, attention
#          through each SDPA backend, the trainer's gpu_idle from CUDA events
# loader   loader_bench.py, 14 workers, 256p, batch 128: the photo folder and `vitok prepare` shards
#          (320 px), each with JPEGs decoded on the CPU (workers) and on the GPU (data.decode=gpu)
# kernels  speed_probe.py: S-B/16 256p encode+decode and training step, model.kernels torch vs triton,
#          eager and compiled (stacks), and bf16-weight inference; one process, ratios in one run
# train    `vitok train --config sb16_256` stage 1 on the photos, compiled, 14 workers, batch 128,
#          TRAIN_MINUTES each: data.decode cpu, data.decode gpu (also with model.kernels=triton), and
#          cpu on the prepared shards (2 photos per shard, so that 14 workers each get whole shards);
#          RUNS (comma list of jpeg_cpu,jpeg_gpu,jpeg_gpu_triton,shards_cpu,shards_gpu,stage2_gpu) picks
#          some; stage2_gpu: stage 2 (discriminator, R1, adaptive weight; no LPIPS) on the photos
# bench    bench.py S-B/16@256 eager and compiled, encode/decode against the SD VAE (compiled too)
# probe    decode_probe.py: nvJPEG decode and crop time per batch, the compiled step fed through the
#          decode thread against a fixed batch (no loader processes)
# stages   bench.py S-B/16@256 compiled: model-only, +LPIPS and stage-2 steps (the trainer's), then
#          profile_step.py's kernel categories of the stage-2 step (plain and with R1)
# fast     bench.py S-B/16@256 model-only training step (the trainer's), eager and compiled, with the settings
#          that trained fastest in speed_probe (model.kernels=triton, bf16 residual stream), and without
# tune     kernel_tune.py: every candidate launch shape of the memory-bound Triton kernels, then
#          speed_probe.py's fastest training configuration with the shipped shapes and with the fastest
#          ones (--tuning), interleaved three times
# gemm     gemm_probe.py: Triton GEMMs (pointer, TMA, persistent TMA) against cuBLAS at S-B/16's matmuls, then
#          --fused: model/gemm.py's ops (norm row scale + RoPE, gate, residual add) against the paths they
#          replace; then speed_probe.py's encode + decode (bf16 weights, batch 512, eager with kernels), this
#          tree and BASE (a tree without model/gemm.py) interleaved twice, compiled stacks once, and the
#          training step (eager + kernels, bf16 stream, batch 256) of both trees (GEMM_PLAIN=0: no first probe)
# disc     speed_probe.py's stage-2 section: the discriminator's passes compiled as the trainer runs them,
#          R1 as one compiled graph (R1 kernel lists); top kernels; LPIPS compiled
# Every part writes under OUT_DIR; the parts are independent and bounded by `timeout`. SRC: another
# copy of the package to run (a baseline from `git archive`), TAG: a suffix for the output names.
set -uo pipefail
photos="$1"; out="$2"; parts="${3:-tests,loader,kernels,train,bench,probe,stages,fast,tune,gemm,disc}"
work="${WORK:-/tmp/vitok-issue18}"; TRAIN_MINUTES="${TRAIN_MINUTES:-1.5}"
mkdir -p "$work" "$out"
export PYTHONPATH="${SRC:-$PWD/src}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1; tag="${TAG:-}"
has() { [[ ",$parts," == *",$1,"* ]]; }
shards() { [ -f "$work/prep320/done" ] || { python3 -m vitok prepare "$photos/train" --out "$work/prep320" --size 320 \
    --shard-size 2 >/dev/null && touch "$work/prep320/done"; }; }

if has tests; then
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/model/test_kernels.py tests/model/test_gemm.py \
        tests/data/test_gpu_decode.py \
        tests/train/test_loop.py tests/model/test_blocks.py tests/train/test_clock.py \
        -k "kernels or gemm or gpu or nvjpeg or compiled_lpips or cuda" \
        2>&1 | tail -n 15 | tee "$out/tests.log"
fi
if has loader; then
    shards
    timeout 240 python3 benchmarks/loader_bench.py "$photos/train" "$work/prep320" --size 256 --batch 128 \
        --workers 14 --batches 30 --decode cpu,gpu 2>&1 | grep --line-buffered -v -i warn | tee "$out/loader.log"
fi
if has kernels; then
    timeout 330 python3 benchmarks/speed_probe.py --sections model --variant S-B/16 --size 256 --batch 128 \
        --variants eager,eager+triton,stacks,stacks+triton,stacks-w16-x4,stacks-w16-x4+triton \
        --out "$out/kernels.json" 2>&1 | grep --line-buffered -v -i warn | tail -n 8
fi
if has train; then
    shards
    run() {  # name, then overrides
        local name="$1"; shift
        [[ ",${RUNS:-jpeg_cpu,jpeg_gpu,jpeg_gpu_triton,shards_cpu}," == *",$name,"* ]] || return 0
        rm -rf "$work/train_$name"
        timeout 240 python3 -m vitok train --config sb16_256 model.compile=true train.batch_size=128 \
            train.stage1_steps=100000 train.stage2_steps=0 train.time_limit_minutes="$TRAIN_MINUTES" \
            train.eval_every=0 train.image_every=100000 train.progress=false train.log_every=25 \
            data.workers=14 data.eval_limit=32 loss.lpips_weight=0 loss.require_lpips=false \
            data.val_source="$photos/val" "$@" --out "$work/train_$name" 2>&1 | grep --line-buffered -v -i "warn" | tail -n 3
        cp "$work/train_$name/metrics.jsonl" "$out/train_$name$tag.jsonl" 2>/dev/null
    }
    run jpeg_cpu data.source="$photos/train" data.decode=cpu
    run jpeg_gpu data.source="$photos/train" data.decode=gpu
    run jpeg_gpu_triton data.source="$photos/train" data.decode=gpu model.kernels=triton
    run shards_cpu data.source="$work/prep320" data.decode=cpu
    run shards_gpu data.source="$work/prep320" data.decode=gpu
    # Stage 2 from the first step (its speed does not depend on the weights), without LPIPS: no
    # LPIPS weights exist on the GPU machine, and the trainer loads no random ones.
    run stage2_gpu data.source="$photos/train" data.decode=gpu train.stage1_steps=0 train.stage2_steps=100000
fi
if has bench; then
    timeout 420 python3 benchmarks/bench.py --only S-B/16@256 --modes eager,compiled \
        --parts infer,baselines --compile-scope stacks --out "$out/bench.json" 2>&1 \
        | grep --line-buffered -v -i warn | tail -n 30 | tee "$out/bench.log"
fi
if has probe; then
    timeout 180 python3 benchmarks/decode_probe.py "$photos/train" --out "$out/decode_probe$tag.json" 2>&1 \
        | grep --line-buffered -v -i warn | tail -n 6
fi
if has stages; then
    timeout 240 python3 benchmarks/bench.py --only S-B/16@256 --modes compiled --parts train,stages \
        --compile-scope stacks --out "$out/bench_stages$tag.json" 2>&1 | grep --line-buffered -v -i warn \
        | grep --line-buffered -A2 "^row .*mode"
    for r1 in "" "--r1"; do
        timeout 150 python3 benchmarks/profile_step.py --mode stage2 $r1 --scope stacks --batch 128 \
            --out "$out/profile_stage2${r1:+_r1}$tag.json" 2>&1 | grep --line-buffered -v -i warn | tail -n 10
    done
fi
if has fast; then
    for k in "triton bfloat16" "torch float32"; do
        read -r kern stream <<< "$k"
        timeout 240 python3 benchmarks/bench.py --only S-B/16@256 --modes eager,compiled --parts train \
            --compile-scope stacks --kernels "$kern" --residual-dtype "$stream" \
            --out "$out/bench_train_${kern}_$stream$tag.json" 2>&1 \
            | grep --line-buffered -v -i warn | grep --line-buffered -A3 "^row .*mode"
    done
fi
if has tune; then
    timeout 240 python3 benchmarks/kernel_tune.py --out "$out/kernel_tune$tag.json" --best "$out/kernel_best$tag.json" \
        2>&1 | grep -v -i warn > "$out/kernel_tune$tag.log"
    grep '"shipped": true' "$out/kernel_tune$tag.log"; cat "$out/kernel_best$tag.json"
    probe() {  # name, then speed_probe arguments
        local name="$1"; shift
        timeout 150 python3 benchmarks/speed_probe.py --sections model --variant S-B/16 --size 256 --batch 128 \
            --out "$out/probe_$name$tag.json" "$@" 2>&1 | grep --line-buffered -v -i warn | tail -n 4 | cut -c1-400
    }
    for i in 1 2 3; do
        probe "shipped$i" --variants eager-bf16-x2+triton
        probe "tuned$i" --variants eager-bf16-x2+triton --tuning "$out/kernel_best$tag.json"
    done
fi
if has gemm; then
    [ "${GEMM_PLAIN:-1}" = 1 ] && timeout 200 python3 benchmarks/gemm_probe.py --out "$out/gemm_probe$tag.json" 2>&1 \
        | grep -v -i warn | cut -c1-300
    timeout 240 python3 benchmarks/gemm_probe.py --fused --best "$out/gemm_best$tag.json" \
        --out "$out/gemm_fused$tag.json" 2>&1 | grep -v -i warn | cut -c1-400
    probe() {  # tree (cur or base), name, then speed_probe arguments
        local tree="$1" name="$2"; shift 2
        [ "$tree" = base ] && [ -z "${BASE:-}" ] && return 0
        timeout 150 python3 benchmarks/speed_probe.py --sections model --variant S-B/16 --size 256 --batch 128 \
            --src "$([ "$tree" = base ] && echo "$BASE" || echo "$PWD/src")" --out "$out/probe_${name}_$tree$tag.json" \
            "$@" 2>&1 | grep --line-buffered -v -i warn | tail -n 1 | cut -c1-400
    }
    for i in 1 2; do
        for tree in cur base; do probe "$tree" "infer$i" --infer-only --variants eager-w16-x4+triton; done
    done
    probe cur infer_compiled --infer-only --variants stacks-w16-x4
    for tree in cur base; do probe "$tree" train --variants eager-bf16-x2+triton; done
fi
if has disc; then
    timeout 300 python3 benchmarks/speed_probe.py --sections stage2 --lpips-variants compiled \
        --disc-variants compiled,compiled-r1graph \
        --out "$out/probe_disc$tag.json" 2>&1 | grep --line-buffered -v -i warn | cut -c1-300
fi
