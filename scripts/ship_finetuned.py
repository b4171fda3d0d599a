"""Ship a `barcodemae finetune` run: re-export its final classifier's encoder into pretrained/NAME/ with the
run's TRAINING.md and a model card carrying evaluation results (the same code path as the run's own export).

python scripts/ship_finetuned.py ../shared/runs/ft-genus-bag pretrained/barcodemae-small-genus \
    --results results/test/identification-results.json --results-key barcodemae-small-genus
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from transformers import HfArgumentParser

from barcodemae.hub import write_model_card
from barcodemae.training import FinetuneArguments, training_record, write_encoder
from modeling_barcodemae import BarcodeMAEForSequenceClassification
from tokenization_barcodemae import BarcodeMAETokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--results", help="results JSON for the model card's model-index")
    parser.add_argument("--results-key", help="which entry of --results")
    args = parser.parse_args()
    info = json.loads((args.run / "run_info.json").read_text())
    recorded = shlex.split(info["command"])[2:]  # after `barcodemae finetune`
    (finetune_args,) = HfArgumentParser(FinetuneArguments).parse_args_into_dataclasses(
        recorded, return_remaining_strings=True
    )[:1]
    model = BarcodeMAEForSequenceClassification.from_pretrained(args.run, local_files_only=True)
    tokenizer = BarcodeMAETokenizer.from_pretrained(args.run, local_files_only=True)
    write_encoder(model, tokenizer, args.out, finetune_args, info["training_barcodes"])
    (args.out / "TRAINING.md").write_text(training_record(info, finetune_args))
    if args.results:
        source = f"fine-tuned from `{finetune_args.model}` ({args.run.name}, step {info['global_step']})"
        write_model_card(args.out, results=args.results, results_key=args.results_key, source=source)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
