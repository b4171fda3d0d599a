"""Closed-world accuracy of a fine-tuned classifier (the BIOSCAN-5M "fine-tuned" column): the label its
`AutoModelForSequenceClassification` head predicts for each unique barcode of a seen-species split, against the
barcode's label (species or genus, whichever the head was trained on); rows whose label the head does not know are
counted and left out.

python scripts/finetuned_accuracy.py --model ../shared/runs/ft-species-bag --data barcodes.tsv.gz --split val
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from barcodemae.evaluation.metrics import accuracy, macro_f1
from barcodemae.evaluation.protocol import load_records, prepare_protocol


@torch.inference_mode()
def predict(model, tokenizer, sequences: list[str], batch_size: int = 256) -> list[str]:
    names = []
    for start in range(0, len(sequences), batch_size):
        batch = tokenizer(sequences[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        names.extend(model.config.id2label[int(i)] for i in model(**batch).logits.argmax(-1))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args()
    model = AutoModelForSequenceClassification.from_pretrained(args.model, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    known = set(model.config.id2label.values())
    protocol = prepare_protocol(load_records(args.data)[0], seen_split=args.split, unseen_split=f"{args.split}_unseen")
    rows = protocol.test
    level = max(("species", "genus"), key=lambda column: np.mean([label in known for label in getattr(rows, column)]))
    keep = [i for i, label in enumerate(getattr(rows, level)) if label in known]
    truth = [getattr(rows, level)[i] for i in keep]
    predicted = predict(model, tokenizer, [rows.sequences[i] for i in keep])
    result = {
        "model": args.model,
        "split": args.split,
        "level": level,
        "rows": len(keep),
        "rows_with_unknown_label": len(rows) - len(keep),
        "accuracy": accuracy(predicted, truth),
        "macro_f1": macro_f1(predicted, truth),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
