#!/usr/bin/env bash
# Every GPU check of the project as one prepared run, for a session lent a GPU (about 10 minutes on one
# H100/H200). Run from the repository root; results land in $OUT (default gpu_out/).
#
#   SHARED=.device/shared OUT=gpu_out bash tools/gpu_session.sh
#
# SHARED: a copy of what the checks read from ../shared (data/flow, data/video, weights/raft-small.pth),
# because a device machine sees only the repository (carry it in a git-ignored folder such as .device/).
# Nothing is installed: torch, torchvision, CuPy, OpenCV, PyAV, decord, Lightning must be there already
# (carry wheels for those that are not; see the device tool's README).
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
export PYTHONUNBUFFERED=1
SHARED=${SHARED:-../shared}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
step() { echo "=== $*" | tee -a "$OUT/steps.txt"; }

step "doctor: versions, kernels against the PyTorch path, engines on each device, bench"
python -m flow_engine doctor --bench --raft-weights "$SHARED/weights/raft-small.pth" --json "$OUT/doctor.json" 2>&1 | tee "$OUT/doctor.txt"

step "pytest -m gpu (kernels, engines, training step on CUDA)"
python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/pytest_gpu.txt"

step "PWC-Net: pairs/s at 1024x436 bf16, the cost volume CuPy vs PyTorch, clips of 16 frames"
python -m flow_engine bench --size 1024x436 --batch 8 --dtype bf16 --iters 20 --clip 16 --json "$OUT/bench_pwcnet_bf16.json" 2>&1 | tee "$OUT/bench_pwcnet.txt"
python -m flow_engine bench --size 1024x436 --batch 32 --dtype bf16 --iters 10 --skip-cost-volume --json "$OUT/bench_pwcnet_b32.json" 2>&1 | tail -3

step "RAFT-small: pairs/s at 1024x436 bf16, and its EPE on the shared cases"
python -m flow_engine bench --engine raft_small --weights "$SHARED/weights/raft-small.pth" --size 1024x436 --batch 8 --dtype bf16 \
    --iters 10 --skip-cost-volume --json "$OUT/bench_raft_small.json" 2>&1 | tail -3
python -m flow_engine eval --cases "$SHARED/data/flow" --engine raft_small --weights "$SHARED/weights/raft-small.pth" --no-progress \
    --json "$OUT/eval_raft_small.json" 2>&1 | tail -2
python -m flow_engine eval --cases "$SHARED/data/flow" --engine pwcnet --no-progress --json "$OUT/eval_pwcnet.json" 2>&1 | tail -2

step "precompute: flow frames/s end to end at 340x256 (PWC-Net, bf16)"
python -m actionflow bench-cache --engine pwcnet --videos "$SHARED/data/video" --size 340x256 --json "$OUT/bench_cache_pwcnet.json" 2>&1 | tail -12

step "a short bf16 distillation burst (labels made on the GPU unless carried in runs/flow/distill_gpu/labels)"
timeout 420 python -m flow_engine train --config configs/flow/distill_gpu.yaml --trainer.max_time 00:00:05:00 \
    --data.val_cases "$SHARED/data/flow" --teacher-weights "$SHARED/weights/raft-small.pth" --videos "$SHARED/data/video_real" \
    --export "$OUT/pwcnet_gpu_burst.pt" 2>&1 | grep -E "INFO|rror|best" | tail -40 | tee "$OUT/train_burst.txt"
step "done: $(ls "$OUT" | tr '\n' ' ')"
