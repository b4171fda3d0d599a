#!/usr/bin/env bash
# Issue 13: the MLM and an MAE recipe at one budget, one after the other, each trained to its budget (or resumed
# from its last complete checkpoint) by scripts/equal_flops.sh and then scored by scripts/flop_curve.py on the val
# protocol (mean, kmer_bag and mean_whitened readouts, species probe, paired MAE − MLM, the small random-init twin).
#   bash scripts/equal_flops_pair.sh BUDGET [MAE_RECIPE]   (MAE_RECIPE: default mae-light-vis)
# Run it again after an interruption: a finished run resumes at its last step and a scored point is not scored
# again. Logs go to RUNS/eqflop-BUDGET-NAME[-seedN].log. Environment: that of equal_flops.sh (RUNS, SEED, THREADS,
# BF16, DEVICE, DATA, PYTHON), which also sets the scoring's threads and precision.
# On the 2-core CPU, e.g.: LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 RUNS=runs THREADS=2
# BF16=1 nohup bash scripts/equal_flops_pair.sh 2 > runs/pair-2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
budget=$1
mae=${2:-mae-light-vis}
runs=${RUNS:-runs}
seed=${SEED:-0}
precision=fp32
{ [ "${BF16:-0}" = 1 ] || [ "${DEVICE:-cpu}" = cuda ]; } && precision=bf16
mkdir -p "$runs"
for name in mlm "$mae"; do
  run=$runs/eqflop-$budget-$name$([ "$seed" = 0 ] || echo "-seed$seed")
  echo "$(date -u +%FT%TZ) training $run"
  bash scripts/equal_flops.sh "$name" "$budget" >> "$run.log" 2>&1
  echo "$(date -u +%FT%TZ) scoring $run"
  OMP_NUM_THREADS=${THREADS:-1} HF_HUB_OFFLINE=1 "${PYTHON:-.venv/bin/python}" scripts/flop_curve.py \
    --data "${DATA:-../shared/data/barcodes.tsv.gz}" --runs "$run" --every 1000 \
    --readout mean kmer_bag mean_whitened --species-probe --paired --precision "$precision" \
    --minus-row mean "pretrained/barcodemae-small random init (mean, 1 frame)"
done
