#!/usr/bin/env bash
# Issue 13: MAE vs MLM pretraining at equal training FLOPs on the CPU, resumable across sessions.
#   bash scripts/equal_flops.sh NAME [PFLOP]   (NAME: mlm | mae-light | mae-shipped; PFLOP: budget, default 0.25)
# Run it in the background with nohup; run it again to continue from the last checkpoint.
# Training FLOPs per step of 64 barcodes, counted by torch.utils.flop_counter in benchmarks/pretrain_step.py
# (benchmarks/results/pretrain_step.json, small preset, mask 0.5): MLM 0.156 TFLOP, MAE with the light 2 x 128
# decoder 0.0947, MAE as the small preset ships (decoder as large as the encoder, visible-token loss) 0.243.
# max_steps = budget / (FLOP per step); warm-up is 5% of it and the cosine schedule anneals to 0 at max_steps.
# Sixteen checkpoints are kept per run (the FLOP curve of results/equal-flops.md is measured on them).
# Runs live in runs/eqflop-PFLOP-NAME (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
budget=${2:-0.25}
case $name in
  mlm) tflop=0.156; extra=(--objective mlm) ;;
  mae-light) tflop=0.0947; extra=(--objective mae --decoder_hidden_size 128 --decoder_num_hidden_layers 2
    --decoder_num_attention_heads 4 --decoder_intermediate_size 512 --visible_loss_weight 0) ;;
  mae-shipped) tflop=0.243; extra=(--objective mae) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
steps=$(python3 -c "print(round($budget * 1000 / $tflop / 16) * 16)")
out=runs/eqflop-$budget-$name
resume=()
last=$(ls -d "$out"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
[ -n "$last" ] && resume=(--resume_from_checkpoint "$last")
OMP_NUM_THREADS=${THREADS:-1} HF_HUB_OFFLINE=1 exec .venv/bin/python train.py --data_file ../shared/data/barcodes.tsv.gz \
  --preset small --embedding_frames 1 --output_dir "$out" --max_steps "$steps" --per_device_train_batch_size 64 \
  --learning_rate 5e-4 --weight_decay 0.01 --warmup_steps $((steps / 20)) --lr_scheduler_type cosine \
  --eval_strategy no --embedding_probe false --save_steps $((steps / 16)) --logging_steps 50 \
  --use_cpu --seed 0 --disable_tqdm true --report_to none "${extra[@]}" "${resume[@]}"
