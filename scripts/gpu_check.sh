#!/usr/bin/env bash
# The GPU check (an H100/H200; at most 600 s a call and ~15 minutes of device time in all, start included): the
# compiled GPU benchmark at the paper's size (the MFU target), then the equal-FLOP runs (scripts/equal_flops.sh) one
# after another on the real barcodes. Everything that comes back is written
# to $OUT (at most 8 files):
#   gpu.log                   environment, benchmark tables, per-run status
#   pretrain_step_gpu.json    (BENCHMARK=1) benchmarks.pretrain_step on the GPU, eager bf16: MAE vs MLM, ours vs
#                             reference, MFU (on an H200: 23% at the paper's size)
#   pretrain_step_gpu_compiled.json  the paper's size torch.compile'd, bf16: the MFU against the >= 40% target
#   metrics.tgz               every run's log, run_info.json, trainer_state.json, loss curve
#   val_protocol.json         scripts/val_protocol.py on each run's final encoder (mean and k-mer bag readouts)
#   encoder-RUN.tgz           the small runs' exported final encoders
#
# Used as: device run "bash scripts/gpu_check.sh" with .gpudata (the data file) and .whl (wheels the image
# lacks: datasets and its pins, transformers/evaluate as used here) carried. Settings (environment): BUDGET (PFLOP
# per small run, 2), PAPER_BUDGET (also MLM and MAE at the paper's size, e.g. 30; unset: skipped), BATCH (256),
# RUNS_TO_DO ("mlm mae-light-vis"; empty: none), BENCHMARK (1 adds the eager benchmark, ~3 min), COMPILED (0
# skips the compiled benchmark; COMPILED_TIMEOUT s, 300), RUN_TIMEOUT (s per run). Time on an H200: each small run
# at 2 PFLOP ~1-2 min of training plus ~1 min of data loading and ~1 min of val protocol; the compiled benchmark's
# time is unmeasured (allow its timeout). So within 600 s a call, run it as two calls: RUNS_TO_DO= (the compiled
# benchmark alone), then COMPILED=0 (the runs). Dry run on CPU (the compiled stage is GPU-only):
#   OUT=/tmp/gpu_out DEVICE=cpu BUDGET=0.0005 BATCH=8 PRESET=tiny INSTALL_WHEELS=0 PYTHON=.venv/bin/python \
#     DATA=../shared/data/barcodes.tsv.gz RUN_TIMEOUT=900 RUNS_TO_DO=mae-light bash scripts/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.gpudata/barcodes.tsv.gz}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
BUDGET=${BUDGET:-2}
BATCH=${BATCH:-256}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BENCHMARK=${BENCHMARK:-0}
COMPILED=${COMPILED:-1}
COMPILED_TIMEOUT=${COMPILED_TIMEOUT:-300}
RUNS_TO_DO=${RUNS_TO_DO-"mlm mae-light-vis"}
RUNS=/tmp/barcodemae-runs
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$RUNS"
LOG="$OUT/gpu.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
if [ -d .whl ] && [ "${INSTALL_WHEELS:-1}" = 1 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site:$PWD
fi
{
    date -u
    nvidia-smi 2>&1 | head -15
    "$PYTHON" -c "import torch, transformers, datasets, tokenizers, accelerate; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'datasets', datasets.__version__, 'tokenizers', tokenizers.__version__, \
'accelerate', accelerate.__version__)"
    nproc
} >>"$LOG" 2>&1

# ---------------------------------------------------------------- 1. benchmark (nothing else on the GPU)
if [ "$DEVICE" = cuda ]; then
    BENCH="--device cuda --bf16 --threads 4 --batch-size 256 --paper-batch-size 256 --repeats 10 --warmup 3"
    BENCH="$BENCH --paper-repeats 10 --profile --profile-preset paper"
else
    BENCH="--device cpu --tiny --repeats 1"
fi
if [ "$BENCHMARK" = 1 ]; then
    echo "== benchmark: python3 -m benchmarks.pretrain_step $BENCH" >>"$LOG"
    # shellcheck disable=SC2086
    timeout 200 "$PYTHON" -m benchmarks.pretrain_step $BENCH --output "$OUT/pretrain_step_gpu.json" >>"$LOG" 2>&1
    echo "== benchmark exit $?" >>"$LOG"
fi
# the compiled paper-size step (issue 13's MFU target; the MAE step has static shapes, so it compiles without graph
# breaks): compile time excluded from the timings, the GPU only (the CPU dry run skips it)
if [ "$COMPILED" = 1 ] && [ "$DEVICE" = cuda ]; then
    COMPILED_BENCH="--device cuda --bf16 --compile --skip-small --paper-batch-size 256 --paper-repeats 10 --warmup 3"
    echo "== compiled benchmark: python3 -m benchmarks.pretrain_step $COMPILED_BENCH" >>"$LOG"
    # shellcheck disable=SC2086
    timeout "$COMPILED_TIMEOUT" "$PYTHON" -m benchmarks.pretrain_step $COMPILED_BENCH \
        --output "$OUT/pretrain_step_gpu_compiled.json" >>"$LOG" 2>&1
    echo "== compiled benchmark exit $?" >>"$LOG"
fi

# ---------------------------------------------------------------- 2. equal-FLOP pretraining runs, one after another
# scripts/equal_flops.sh at $BUDGET PFLOP each (batch 256, cosine to 0 within the budget): MLM, then the MAE with
# the light decoder, then the MAE as the small preset ships; with PAPER_BUDGET set, MLM and MAE at the paper's size
# (6 x 6 x 768 encoder and decoder) at that budget too. Each run has the GPU to itself.
equal_flops() {  # NAME PFLOP: one run, its log beside its folder, then its encoder scored by the val protocol
    echo "== run $1: BATCH=$BATCH DEVICE=$DEVICE bash scripts/equal_flops.sh $1 $2" >>"$LOG"
    BATCH=$BATCH DEVICE=$DEVICE RUNS=$RUNS DATA=$DATA PRESET=$PRESET PYTHON=$PYTHON THREADS=4 \
        timeout "$RUN_TIMEOUT" bash scripts/equal_flops.sh "$1" "$2" >"$RUNS/$1.log" 2>&1
    echo "== run $1 exit $? at $(date -u +%T)" >>"$LOG"
    timeout 300 "$PYTHON" scripts/val_protocol.py --data "$DATA" --model "$RUNS/eqflop-$2-$1/encoder" \
        --readout mean kmer_bag --cache-dir "$RUNS/cache/embeddings" --output "$OUT/val_protocol.json" 2>&1 |
        tr '\r' '\n' | grep -v '^embedding:' >>"$LOG"
    echo "== val protocol $1 exit $?" >>"$LOG"
}
for name in $RUNS_TO_DO; do equal_flops "$name" "$BUDGET"; done
for name in ${PAPER_BUDGET:+paper-mlm paper-mae}; do equal_flops "$name" "$PAPER_BUDGET"; done

# ---------------------------------------------------------------- 3. bring back
(
    cd "$RUNS" || exit 1
    find . -maxdepth 2 \( -name '*.log' -o -name run_info.json -o -name trainer_state.json -o -name loss_curve.png \
        -o -name data_report.json \) -print0 | xargs -0 -r tar czf "$OUT/metrics.tgz"
    # the small runs' encoders (paper-size ones are too large to bring back: their scores are in val_protocol.json)
    for name in $RUNS_TO_DO; do
        folder=eqflop-$BUDGET-$name
        [ -d "$folder/encoder" ] && tar czf "$OUT/encoder-$name.tgz" "$folder/encoder"
    done
)
ls -la "$OUT" >>"$LOG"
for log in "$RUNS"/*.log; do [ ! -e "$log" ] || tail -n 3 "$log"; done >>"$LOG" 2>&1
