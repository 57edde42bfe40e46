#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, one after another, in at most BUDGET seconds (default 340;
# with nvidia-smi and a hung step's 5 s to die after its TERM, under 6 minutes).
#   bash benchmarks/gpu.sh DATA_ROOT [RESULTS_DIR]     (CLOCK=FILE: see step 1)
# DATA_ROOT holds CIFAR-10 in a layout the project reads (see README); the JSON files go to
# RESULTS_DIR (default benchmarks/results), with this script's output (gpu_sh.log). Each step
# has its own time limit, cut to what is left of BUDGET, and the least time in which it can
# give a figure: a step with less than that left is skipped. A failing, timed-out or skipped
# step does not stop the others; the exit status is non-zero if any failed or was skipped.
# PYTHON: the interpreter (default python3).
# The sizes below (seeds, repeats, images) are cut so that the steps' expected times, reckoned
# from issue 28's H200 figures (imports ~12 s per process, fast94 ~11 ms a step and ~10 s a run),
# add up to about 6 minutes; the limits only stop a step that hangs, and the budget drops the
# last steps: the targets' measurements and the no-sync check come first, the diagnostics
# after them. Not yet run on a GPU.
set -u
export PYTHONUNBUFFERED=1  # each step's progress shows as it runs
root=$(realpath "${1:?usage: bash benchmarks/gpu.sh DATA_ROOT [RESULTS_DIR]}")
out=$(realpath -m "${2:-$(dirname "$0")/results}")
given_clock=${CLOCK:+$(realpath -m -- "$CLOCK")}  # see step 1
py=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1  # the repository root: the scripts' paths are relative to it
mkdir -p "$out" || exit 1
# Everything printed also goes to a file: an early step's traceback stays readable when a
# remote run returns only the end of the output.
exec > >(tee -a "$out/gpu_sh.log") 2>&1
tee_pid=$!  # waited for at the end, so that the log's last lines are written before the exit
budget=${BUDGET:-340}
start=$(date +%s)
failed=0
step() {  # step LEAST_S LIMIT_S COMMAND...: skipped with under LEAST_S of the budget left
    local least=$1 limit=$2 left
    shift 2
    left=$((budget - ($(date +%s) - start)))
    if [ "$left" -lt "$least" ]; then
        echo "== skipped (${left} s of the budget left, ${least} s needed): $*"
        failed=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== at $(($(date +%s) - start)) s, limit ${limit} s: $*"
    timeout -k 5 "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then  # TERM at the limit, KILL 5 s later
        echo "== timed out after ${limit} s: $*"
        failed=1
    elif [ "$rc" -ne 0 ]; then
        echo "== failed (exit $rc): $*"
        failed=1
    fi
}
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 1. fast94 over 3 seeds, after an untimed warm-up run into epoch 4 (Lookahead starts in 3);
#    no per-epoch evaluations (expected ~50 s: 3 runs of ~10 s, warm-up, imports). With
#    CLOCK=FILE, a time_to_accuracy.py JSON of fast94 made on this machine just before (such
#    as the OUT/fast94.json of the side-by-side script the project's GPU sessions bring), that
#    run stands in for this step.
clock="$out/time_to_accuracy_fast94.json"
is_fast94_clock() {  # FILE is a time_to_accuracy.py JSON of fast94 (one run, or several
    # seeds') with its on-clock time (a file saved after the warm-up alone has none)
    "$py" -c 'import json, sys; j = json.load(open(sys.argv[1]))
fast94 = (j.get("runs") or [j])[0].get("experiment") == "fast94"
sys.exit(not (fast94 and isinstance(j.get("mean_on_clock_s", j.get("on_clock_s")), (int, float))))' \
        "$1" 2>/dev/null
}
if [ -n "${CLOCK:-}" ]; then
    if ! is_fast94_clock "$given_clock"; then
        echo "== step 1 failed: CLOCK=$CLOCK is not a readable time_to_accuracy.py JSON of fast94 with its on-clock time"
        rm -f "$clock"  # step 2 reads this session's, never an older one
        failed=1
    elif [ "$given_clock" -ef "$clock" ] || { rm -f "$clock" && cp "$given_clock" "$clock"; }; then
        echo "== step 1: fast94's clock taken from $given_clock"
    else
        echo "== step 1 failed: CLOCK=$CLOCK could not be copied to $clock"
        failed=1
    fi
else
    rm -f "$clock"  # step 2 reads this session's, never an older one
    step 60 100 "$py" benchmarks/time_to_accuracy.py --experiment fast94 --target 0.94 \
        --seeds 0 1 2 --warmup-steps 150 --no-epoch-eval \
        --out "$out/time_to_accuracy_fast94.json" data.root="$root"
fi
# 2. a whole `python train.py experiment=fast94`, process start to exit (~27 s in issue 28),
#    set against step 1's on-clock time plus the time of `import pytorch_lightning, hydra`
#    (run twice, ~12 s each, the second timed): the rest's target is 3 s (expected ~65 s, the
#    script's own imports included)
if [ -f "$clock" ] && is_fast94_clock "$clock"; then
    step 70 90 "$py" benchmarks/wall_time.py --out "$out/wall_time_fast94.json" \
        --budget-from "$clock" -- experiment=fast94 data.root="$root"
else  # step 1 failed: the process time alone
    step 45 60 "$py" benchmarks/wall_time.py --out "$out/wall_time_fast94.json" \
        -- experiment=fast94 data.root="$root"
fi
# 3. no synchronising CUDA call in fast94's steps outside logging points: 150 steps (Lookahead's
#    first averages, the health checks' loss windows), then the test's batches after its first,
#    under set_sync_debug_mode("error") (expected ~30 s; the op and host-read counts,
#    benchmarks/op_count.py, run on the CPU)
step 35 60 "$py" benchmarks/sync_check.py --experiment fast94 --steps 150 \
    --out "$out/sync_check_fast94.json" data.root="$root"
# 4. fast94_muon over 3 seeds, after a warm-up run past step 75 (the whitening bias's freeze
#    compiles the network a second time); compiled in torch's default mode, as side_by_side.sh
#    compiles airbench94_muon (max-autotune tunes for minutes); the compiled code serves every
#    later run in the process (expected ~70-120 s: two compilations (training, after the
#    freeze; the test runs eager) and Newton-Schulz's, unmeasured; 3 runs of ~4 s; imports)
rm -f "$out/time_to_accuracy_fast94_muon.json"
step 100 180 "$py" benchmarks/time_to_accuracy.py --experiment fast94_muon --target 0.94 \
    --seeds 0 1 2 --warmup-steps 100 --no-epoch-eval module.compile=true \
    --out "$out/time_to_accuracy_fast94_muon.json" data.root="$root"
# 5. Lightning (bare, and as train.py configures it, feature by feature) vs a plain loop, one
#    epoch of fast94 (48 steps of 1024; trainer=gpu puts it on the GPU) (expected ~45 s)
step 50 90 "$py" benchmarks/loop_overhead.py --experiment fast94 --repeats 3 \
    --out "$out/loop_overhead_fast94_cuda.json" data.root="$root"
# 6. where fast94's step spends its CPU and its GPU kernel time: torch.profiler over one epoch's
#    steps after 5 warm-up steps (expected ~30 s)
step 35 60 "$py" benchmarks/profile_step.py --experiment fast94 --warmup 5 \
    --out "$out/profile_step_fast94_cuda.json" data.root="$root"
# 7. device augmentation vs torchvision's per-image pipeline (DataLoader, 2 workers), 5,120
#    images, 3 rounds of at least 1 s per path, each printed as it ends (expected ~50 s; a
#    diagnostic, so last: the first step the budget drops)
step 45 80 "$py" benchmarks/augment_throughput.py --device cuda --data-root "$root" \
    --images 5120 --repeats 3 --min-seconds 1 --out "$out/augment_throughput_cuda.json"
echo "== done in $(($(date +%s) - start)) s"
# A step stopped at its limit while saving leaves its temporary file (fileio.atomic_write):
# not a result, and one file more for a remote run to bring back.
rm -f "$out"/.*.tmp
exec >&- 2>&-
# Bounded: a stray process still holding the pipe (outside a step's process group) would
# otherwise keep tee, and this script, alive.
for _ in $(seq 50); do kill -0 "$tee_pid" 2>/dev/null || break; sleep 0.1; done
exit $failed
