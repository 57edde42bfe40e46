#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, one after another (a few minutes on an H100-class GPU).
#   bash benchmarks/gpu.sh DATA_ROOT [RESULTS_DIR]
# DATA_ROOT holds CIFAR-10 in a layout the project reads (see README); the JSON files go to
# RESULTS_DIR (default benchmarks/results). A failing benchmark does not stop the others; the
# exit status is non-zero if any failed.
set -u
root=$(realpath "${1:?usage: bash benchmarks/gpu.sh DATA_ROOT [RESULTS_DIR]}")
out=$(realpath "${2:-benchmarks/results}")
cd "$(dirname "$0")/.." || exit 1  # the repository root: the scripts' paths are relative to it
failed=0
step() {
    echo "== $*"
    "$@" || { echo "== failed (exit $?): $*"; failed=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 1. device augmentation vs torchvision's per-image pipeline (DataLoader, 2 workers)
step python benchmarks/augment_throughput.py --device cuda --data-root "$root" \
    --images 10240 --repeats 3 --min-seconds 1 --out "$out/augment_throughput_cuda.json"
# 2. Lightning (bare, and as train.py configures it, feature by feature) vs a plain loop, one
#    epoch of fast94 (48 steps of 1024; trainer=gpu puts it on the GPU)
step python benchmarks/loop_overhead.py --experiment fast94 --repeats 5 \
    --out "$out/loop_overhead_fast94_cuda.json" data.root="$root"
# 3. fast94 over 5 seeds, after an untimed warm-up run into epoch 4 (Lookahead starts in 3)
step python benchmarks/time_to_accuracy.py --experiment fast94 --target 0.94 \
    --seeds 0 1 2 3 4 --warmup-steps 150 --out "$out/time_to_accuracy_fast94.json" \
    data.root="$root"
# 4. a whole `python train.py experiment=fast94`, process start to exit
step python benchmarks/wall_time.py --out "$out/wall_time_fast94.json" -- experiment=fast94 \
    data.root="$root"
exit $failed
