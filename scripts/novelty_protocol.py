"""How well the novel-species flag of `barcodemae identify` works on real barcodes: unique `val` barcodes of species
in the reference (known) and unique `val_unseen` barcodes (novel) against all unique `train` barcodes, with the
threshold that `identify` calibrates on the reference itself. Reports balanced accuracy at that threshold, the
best balanced accuracy any threshold reaches and the AUROC of the nearest-neighbour similarity.

python scripts/novelty_protocol.py --data ../shared/data/barcodes.tsv.gz --model pretrained/barcodemae-small-genus
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from barcodemae.embedding import Embedder, cached_embeddings, default_model_path
from barcodemae.evaluation import load_records, prepare_protocol
from barcodemae.identify import _best_split, calibrate_threshold
from barcodemae.search import nearest_neighbors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    args = parser.parse_args()
    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen")
    reference_species = set(protocol.train.species)
    known = [s for s, name in zip(protocol.test.sequences, protocol.test.species) if name in reference_species]
    embedder = Embedder.from_pretrained(args.model)
    refs, known_emb, novel_emb = (
        cached_embeddings(embedder, sequences, args.cache_dir)
        for sequences in (protocol.train.sequences, known, protocol.unseen.sequences)
    )
    threshold, calibration = calibrate_threshold(refs, [s or "" for s in protocol.train.species])
    known_sim = nearest_neighbors(known_emb, refs)[1][:, 0]
    novel_sim = nearest_neighbors(novel_emb, refs)[1][:, 0]
    at_threshold = ((known_sim >= threshold).mean() + (novel_sim < threshold).mean()) / 2
    labels = np.r_[np.zeros(len(known_sim)), np.ones(len(novel_sim))]
    result = {
        "model": args.model,
        "known_queries": len(known_sim),
        "novel_queries": len(novel_sim),
        "calibrated_threshold": round(threshold, 4),
        "calibration": calibration,
        "balanced_accuracy_at_calibrated_threshold": round(float(at_threshold), 4),
        "known_cleared": round(float((known_sim >= threshold).mean()), 4),
        "novel_flagged": round(float((novel_sim < threshold).mean()), 4),
        "best_balanced_accuracy_any_threshold": round(_best_split(known_sim, novel_sim)[1], 4),
        "auroc_novel_vs_known": round(float(roc_auc_score(labels, -np.r_[known_sim, novel_sim])), 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
