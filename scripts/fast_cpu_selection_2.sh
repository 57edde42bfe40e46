#!/usr/bin/env bash
# Runs docs/fast_cpu/selection-2.md's protocol, one run at a time, and copies each finished
# run's config, log, metrics and results.json under docs/fast_cpu/runs/selection-2/.
#   bash scripts/fast_cpu_selection_2.sh screen [NAME ...]   # S1..S12 with seed 0 (or those named)
#   bash scripts/fast_cpu_selection_2.sh confirm F1 F2       # v1, F1, F2 with seeds 1-5, interleaved
#   bash scripts/fast_cpu_selection_2.sh retime NAME ...     # seed-0 runs again, alone, for their
#                                                            # times (into .../selection-2-retime/)
# A run already copied is skipped; a killed one resumes from its last.ckpt (fixed run folder).
# DATA_ROOT (default data/cifar10-jpeg) is where the JPEG copy is unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
data_root=${DATA_ROOT:-data/cifar10-jpeg}
docs=docs/fast_cpu/runs/selection-2
stage=selection-2

P7="trainer.max_epochs=7 module.train_resolution=[16,16,24,24,24,32]"
P6="trainer.max_epochs=6 module.train_resolution=[24,24,24,24,32]"
P8="trainer.max_epochs=8 module.train_resolution=[16,16,16,24,24,24,32]"
P6s="trainer.max_epochs=6 module.train_resolution=[16,16,24,24,32]"
H="model.activation=silu module.label_smoothing=0.1 optimizer.filter_lr=0.2"
H="$H optimizer.filter_momentum=0.65 optimizer.momentum=0.825 model.whiten_bias_epochs=1"
declare -A POOL=(
  [v1]=""
  [S1]="$P7" [S2]="$P6" [S3]="$P8" [S4]="$P6s"
  [S5]="$P7 model.activation=silu" [S6]="$P7 module.label_smoothing=0.1"
  [S7]="$P7 optimizer.filter_lr=0.2 optimizer.filter_momentum=0.65"
  [S8]="$P7 optimizer.momentum=0.825" [S9]="$P7 model.whiten_bias_epochs=1"
  [S10]="$P7 $H" [S11]="$P8 $H" [S12]="$P6 $H"
)

run() {  # run NAME SEED
  local name=$1 seed=$2 out="outputs/$stage/$1_seed$2" dest="$docs/$1_seed$2"
  [[ -v "POOL[$name]" ]] || { echo "error: no candidate $name in the pool" >&2; exit 2; }
  if [[ -f $dest/results.json ]]; then echo "$dest: done, skipped"; return; fi
  echo "$(date -u +%FT%TZ) $name seed $seed -> $out"
  # shellcheck disable=SC2086  # the overrides are words
  python train.py experiment=fast_cpu_v1 "data.root=$data_root" data.val_size=5000 test=false \
    "seed=$seed" ${POOL[$name]} "hydra.run.dir=$out"
  mkdir -p "$dest.tmp"
  cp -r "$out/.hydra" "$out/train.log" "$out/metrics.csv" "$out/results.json" "$dest.tmp/"
  # The saved configs name this machine's working directory; the project speaks of itself only.
  find "$dest.tmp" -type f -exec sed -i "s|$PWD/||g; s|cwd: $PWD\$|cwd: .|" {} +
  mv "$dest.tmp" "$dest"
}

case ${1:-} in
  screen)
    shift
    names=("$@")
    [[ ${#names[@]} -gt 0 ]] || names=(S1 S2 S3 S4 S5 S6 S7 S8 S9 S10 S11 S12)
    for n in "${names[@]}"; do run "$n" 0; done ;;
  confirm)
    [[ $# -eq 3 ]] || { echo "error: confirm takes the two finalists' names" >&2; exit 2; }
    for seed in 1 2 3 4 5; do for n in v1 "$2" "$3"; do run "$n" "$seed"; done; done ;;
  retime)
    shift
    [[ $# -gt 0 ]] || { echo "error: retime takes the names of the runs to time" >&2; exit 2; }
    stage=selection-2-retime docs=docs/fast_cpu/runs/selection-2-retime
    for n in "$@"; do run "$n" 0; done ;;
  *) echo "usage: $0 screen [NAME ...] | confirm F1 F2 | retime NAME ..." >&2; exit 2 ;;
esac
