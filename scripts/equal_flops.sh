#!/usr/bin/env bash
# Issue 13: MAE vs MLM pretraining at equal training FLOPs on the CPU, resumable across sessions.
#   bash scripts/equal_flops.sh NAME        (NAME: mlm | mae-light | mae-shipped; run in the background with nohup)
# Training FLOPs per step of 64 barcodes, counted by torch.utils.flop_counter in benchmarks/pretrain_step.py
# (benchmarks/results/pretrain_step.json, small preset, mask 0.5): MLM 0.156 TFLOP, MAE with the light 2 x 128
# decoder 0.0947, MAE as the small preset ships (decoder as large as the encoder, visible-token loss) 0.243.
# Budget B1 = 1.0 PFLOP per run, so max_steps = 1000 / (TFLOP per step); the cosine schedule anneals to 0 at that
# step. Runs live in ../shared/runs/eqflop-NAME (it survives sessions) and continue from their last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
case $name in
  mlm) steps=6400; extra=(--objective mlm) ;;
  mae-light) steps=10560; extra=(--objective mae --decoder_hidden_size 128 --decoder_num_hidden_layers 2
    --decoder_num_attention_heads 4 --decoder_intermediate_size 512 --visible_loss_weight 0) ;;
  mae-shipped) steps=4115; extra=(--objective mae) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
out=../shared/runs/eqflop-$name
resume=()
last=$(ls -d "$out"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
[ -n "$last" ] && resume=(--resume_from_checkpoint "$last")
OMP_NUM_THREADS=${THREADS:-1} HF_HUB_OFFLINE=1 exec .venv/bin/python train.py --data_file ../shared/data/barcodes.tsv.gz \
  --preset small --embedding_frames 1 --output_dir "$out" --max_steps $steps --per_device_train_batch_size 64 \
  --learning_rate 5e-4 --weight_decay 0.01 --warmup_steps 300 --lr_scheduler_type cosine \
  --eval_strategy steps --eval_steps 1000 --save_steps 250 --save_total_limit 2 --logging_steps 50 \
  --probe_references 5000 --probe_queries 2000 --max_eval_samples 1000 --use_cpu --seed 0 --disable_tqdm true \
  --report_to none "${extra[@]}" "${resume[@]}"
