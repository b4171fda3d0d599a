#!/usr/bin/env bash
# MAE vs MLM pretraining at equal training FLOPs (results/equal-flops.md); a run started again resumes.
#   bash scripts/equal_flops.sh NAME [PFLOP]   (NAME: mlm | mae-light | mae-light-vis | mae-big | mae-shipped |
#                                               paper-mlm | paper-mae | paper-mae-vis;
#                                               PFLOP: budget, default 0.25)
# On the CPU run it in the background with nohup; run it again to continue from the last checkpoint.
# Training FLOPs per step of 64 barcodes, counted by torch.utils.flop_counter in benchmarks/pretrain_step.py
# (benchmarks/results/pretrain_step.json, small preset, mask 0.5): MLM 0.156 TFLOP; MAE with the light 2 x 128
# decoder 0.0947 (with the visible-token loss: 0.106, the small preset's MAE); MAE with a decoder as large as the
# encoder, the paper's recipe (masked-token loss only) 0.221; with that decoder and the visible-token loss (the shipped
# barcodemae-small's recipe) 0.243; at the
# paper's size (configs/paper.json, encoder and decoder 6 x 6 x 768; pretrain_step_h200.json at batch 256 / 4)
# MLM 1.92, MAE 3.41 (the authors' design: Bernoulli masking, whose static shapes give the encoder 87 of 110 slots),
# MAE with the visible-token loss 3.51 (counted as tests/test_equal_flops.py does, with a compiled step's static
# slots; an eager step trims them to the batch's largest counts, so an eager paper-size MAE run
# spends less than its budget: the budget is an upper bound for it). The paper-size runs of
# results/equal-flops.md predate that design: pre-norm blocks, exactly half masked (MAE 2.82, with visible loss 2.88).
# max_steps = budget / (FLOP per step at BATCH), rounded to a multiple of 16 (sixteen checkpoints, the FLOP curve
# of results/equal-flops.md is measured on them), or of 8 for runs under 256 steps (eight checkpoints), so every
# budget is met within 3%; warm-up is 5% of max_steps and the cosine schedule anneals to 0 at max_steps.
# Environment: BATCH (64), LR (5e-4 at batch 64, scaled by sqrt(BATCH/64)), DEVICE (cpu | cuda: bf16, 4 loader
# workers), BF16 (1: bf16 autocast on the CPU too, ~2x faster steps where the CPU has AVX-512 BF16 or AMX;
# default 0, fp32), THREADS (1, CPU), RUNS (runs: git-ignored; see DEVELOPERS.md on runs longer than a
# machine's lease), SEED (0; another seed trains into eqflop-BUDGET-NAME-seedN,
# which scripts/flop_curve.py --paired pairs with the MLM of the same seed), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
budget=${2:-0.25}
batch=${BATCH:-64}
preset=${PRESET:-small}
light_decoder=(--decoder_hidden_size 128 --decoder_num_hidden_layers 2 --decoder_num_attention_heads 4
  --decoder_intermediate_size 512)
# a decoder as large as the preset's encoder (4 x 256 for small), for mae-big and mae-shipped
read -ra big_decoder <<< "$(python3 -c "import json; c = json.load(open('configs/$preset.json'))
print(' '.join(f'--decoder_{f} {c[f]}' for f in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                                                  'intermediate_size')))")"
case $name in
  mlm) tflop=0.156; extra=(--objective mlm) ;;
  mae-light) tflop=0.0947; extra=(--objective mae "${light_decoder[@]}" --visible_loss_weight 0) ;;
  mae-light-vis) tflop=0.106; extra=(--objective mae "${light_decoder[@]}" --visible_loss_weight 1) ;;
  mae-big) tflop=0.221; extra=(--objective mae "${big_decoder[@]}" --visible_loss_weight 0) ;;
  mae-shipped) tflop=0.243; extra=(--objective mae "${big_decoder[@]}" --visible_loss_weight 1) ;;
  paper-mlm) tflop=1.92; preset=paper; extra=(--objective mlm) ;;
  paper-mae) tflop=3.41; preset=paper; extra=(--objective mae) ;;
  paper-mae-vis) tflop=3.51; preset=paper; extra=(--objective mae --visible_loss_weight 1) ;;
  *) echo "unknown run $name" >&2; exit 2 ;;
esac
read -r steps saves <<< "$(python3 -c "exact = $budget * 1000 / ($tflop * $batch / 64); saves = 16 if exact >= 256 else 8
print(max(saves, round(exact / saves) * saves), saves)")"
lr=${LR:-$(python3 -c "print(f'{5e-4 * ($batch / 64) ** 0.5:.3g}')")}
seed=${SEED:-0}
out=${RUNS:-runs}/eqflop-$budget-$name$([ "$seed" = 0 ] || echo "-seed$seed")
if [ "${DEVICE:-cpu}" = cuda ]; then device=(--bf16 true --tf32 true --dataloader_num_workers 4); precision=bf16
elif [ "${BF16:-0}" = 1 ]; then device=(--use_cpu true --bf16 true); precision=bf16
else device=(--use_cpu true); precision=fp32; fi
mkdir -p "$out"
printf '{"recipe": "%s", "budget_pflop": %s, "tflop_per_step_at_batch_64": %s, "batch": %s, "max_steps": %s, "precision": "%s", "learning_rate": %s, "seed": %s}\n' \
  "$name" "$budget" "$tflop" "$batch" "$steps" "$precision" "$lr" "$seed" > "$out/budget.json"
resume=()
# the last complete checkpoint: the Trainer writes trainer_state.json last, so a save cut off by an interruption is
# skipped
state=$(ls "$out"/checkpoint-*/trainer_state.json 2>/dev/null | sort -V | tail -1 || true)
[ -n "$state" ] && resume=(--resume_from_checkpoint "$(dirname "$state")")
OMP_NUM_THREADS=${THREADS:-1} HF_HUB_OFFLINE=1 exec "${PYTHON:-.venv/bin/python}" train.py \
  --data_file "${DATA:-../shared/data/barcodes.tsv.gz}" --preset "$preset" --embedding_frames 1 \
  --output_dir "$out" --max_steps "$steps" --per_device_train_batch_size "$batch" --learning_rate "$lr" \
  --weight_decay 0.01 --warmup_steps $((steps / 20)) --lr_scheduler_type cosine --eval_strategy no \
  --embedding_probe false --save_steps $((steps / saves)) --logging_steps 50 --seed "$seed" --disable_tqdm true \
  --report_to none "${device[@]}" "${extra[@]}" "${resume[@]}"
