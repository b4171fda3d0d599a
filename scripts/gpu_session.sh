#!/usr/bin/env bash
# One lent-GPU session (an H100/H200 for ~10 minutes): the GPU benchmark of issue 7, then side-by-side
# pretraining runs of issue 8 on the real barcodes, each stopped by a wall-clock budget. Everything that comes
# back is written to $OUT (at most 8 files):
#   session.log               environment, benchmark tables, per-run status
#   pretrain_step_gpu.json    benchmarks.pretrain_step on the GPU (bf16): MAE vs MLM, ours vs reference, MFU
#   metrics.tgz               every run's log, run_info.json, trainer_state.json (all evaluations), loss curve
#   encoder-RUN.tgz           the exported encoder (best checkpoint by val_unseen genus 1-NN) of the runs in
#                             $BRING_BACK
#
# Used as: device run "bash scripts/gpu_session.sh" with .gpudata (the data file) and .whl (wheels the image
# lacks: datasets and its pins, transformers/evaluate as used here) carried. Dry run on CPU:
#   OUT=/tmp/gpu_out DEVICE=cpu TRAIN_MINUTES=0.3 PRESET=tiny bash scripts/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.gpudata/barcodes.tsv.gz}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
TRAIN_MINUTES=${TRAIN_MINUTES:-5}
BRING_BACK=${BRING_BACK:-"mae-vis mlm mae-vis-bigdec"}
RUNS=/tmp/barcodemae-runs
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$RUNS"
LOG="$OUT/session.log"
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
echo "== benchmark: python3 -m benchmarks.pretrain_step $BENCH" >>"$LOG"
# shellcheck disable=SC2086
timeout 200 "$PYTHON" -m benchmarks.pretrain_step $BENCH --output "$OUT/pretrain_step_gpu.json" >>"$LOG" 2>&1
echo "== benchmark exit $?" >>"$LOG"

# ---------------------------------------------------------------- 2. pretraining runs, side by side
common=(--data_file "$DATA" --preset "$PRESET" --max_train_minutes "$TRAIN_MINUTES" --max_steps 100000
    --per_device_train_batch_size 256 --learning_rate 4e-4 --weight_decay 0.01 --warmup_steps 200
    --lr_scheduler_type constant_with_warmup --eval_strategy steps --eval_steps 250 --save_steps 250
    --save_total_limit 2 --logging_steps 50 --load_best_model_at_end --metric_for_best_model genus_1nn_unseen
    --greater_is_better true --probe_references 5000 --probe_queries 2000 --per_device_eval_batch_size 512
    --max_eval_samples 2000 --preprocessing_num_workers 3 --dataloader_num_workers 2 --seed 0
    --disable_tqdm true --report_to none)
if [ "$DEVICE" = cuda ]; then common+=(--bf16 true --tf32 true); else common+=(--use_cpu true --eval_steps 5 \
    --save_steps 5 --per_device_train_batch_size 16 --probe_references 200 --probe_queries 100 \
    --max_eval_samples 100 --warmup_steps 2); fi

train() {  # NAME ARGS...: one run, its log beside its folder
    local name=$1
    shift
    echo "== run $name: python train.py ${common[*]} --output_dir runs/$name $*" >>"$LOG"
    timeout $("$PYTHON" -c "print(int($TRAIN_MINUTES * 60 + 150))") \
        "$PYTHON" train.py "${common[@]}" --output_dir "$RUNS/$name" "$@" >"$RUNS/$name.log" 2>&1
    echo "== run $name exit $?" >>"$LOG"
}
train mae-vis --objective mae --visible_loss_weight 1.0 &
train mlm --objective mlm &
train mae-vis-bigdec --objective mae --visible_loss_weight 1.0 --decoder_hidden_size 256 \
    --decoder_num_hidden_layers 4 --decoder_num_attention_heads 4 --decoder_intermediate_size 1024 &
train mae-bigdec --objective mae --decoder_hidden_size 256 --decoder_num_hidden_layers 4 \
    --decoder_num_attention_heads 4 --decoder_intermediate_size 1024 &
wait

# ---------------------------------------------------------------- 3. bring back
(
    cd "$RUNS" || exit 1
    find . -maxdepth 2 \( -name '*.log' -o -name run_info.json -o -name trainer_state.json -o -name loss_curve.png \
        -o -name data_report.json \) -print0 | xargs -0 tar czf "$OUT/metrics.tgz"
    for name in $BRING_BACK; do
        [ -d "$name/encoder" ] && tar czf "$OUT/encoder-$name.tgz" "$name/encoder"
    done
)
ls -la "$OUT" >>"$LOG"
tail -n 3 "$RUNS"/*.log >>"$LOG" 2>&1
