"""How well the novel-species flag of `barcodemae identify` works on real barcodes: unique `val` barcodes of species
in the reference (known) and unique `val_unseen` barcodes (novel) against all unique `train` barcodes, with the
thresholds that `identify` calibrates on the reference itself (leave-one-out, reference labels only: no
`val_unseen` label is used). Reports, for the global threshold and for the per-genus thresholds (genus of the best
neighbour), the balanced accuracy, the share of known queries cleared and of novel ones flagged, and the AUROC of
the score (best cosine similarity, minus the threshold in use); plus the best balanced accuracy any single
threshold reaches. Writes the JSON to --output.

python scripts/novelty_protocol.py --data ../shared/data/barcodes.tsv.gz --model pretrained/barcodemae-small-genus
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from barcodemae.embedding import Embedder, cached_embeddings, default_model_path
from barcodemae.evaluation import load_records, prepare_protocol
from barcodemae.identify import ReferenceIndex, _best_split, calibrate_threshold
from barcodemae.io import atomic_text
from barcodemae.search import nearest_neighbors


def flag_scores(known: np.ndarray, novel: np.ndarray) -> dict[str, float]:
    """Scores of a margin ``similarity - threshold`` (a query is flagged novel when it is negative)."""
    labels = np.r_[np.zeros(len(known)), np.ones(len(novel))]
    cleared, flagged = float((known >= 0).mean()), float((novel < 0).mean())
    return {
        "balanced_accuracy": round((cleared + flagged) / 2, 4),
        "known_cleared": round(cleared, 4),
        "novel_flagged": round(flagged, 4),
        "auroc_novel_vs_known": round(float(roc_auc_score(labels, -np.r_[known, novel])), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    parser.add_argument("--output", default="results/val/novelty.json")
    args = parser.parse_args()
    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen")
    train = protocol.train
    reference_species = set(train.species)
    known = [s for s, name in zip(protocol.test.sequences, protocol.test.species) if name in reference_species]
    embedder = Embedder.from_pretrained(args.model)
    refs, known_emb, novel_emb = (
        cached_embeddings(embedder, sequences, args.cache_dir)
        for sequences in (train.sequences, known, protocol.unseen.sequences)
    )
    species, genus = [s or "" for s in train.species], [g or "" for g in train.genus]
    threshold, calibration = calibrate_threshold(refs, species, genus)
    index = ReferenceIndex(refs, [], genus, species, args.model, threshold, calibration)
    (known_idx, known_sim), (novel_idx, novel_sim) = (nearest_neighbors(q, refs) for q in (known_emb, novel_emb))
    per_genus = [np.array([index.threshold_for(genus[i]) for i in idx[:, 0]]) for idx in (known_idx, novel_idx)]
    result = {
        "model": args.model,
        "known_queries": len(known_sim),
        "novel_queries": len(novel_sim),
        "calibrated_threshold": round(threshold, 4),
        "genera_with_own_threshold": len(calibration["genus_thresholds"]),
        "calibration": {k: v for k, v in calibration.items() if k != "genus_thresholds"},
        "global_threshold": flag_scores(known_sim[:, 0] - threshold, novel_sim[:, 0] - threshold),
        "per_genus_thresholds": flag_scores(known_sim[:, 0] - per_genus[0], novel_sim[:, 0] - per_genus[1]),
        "best_balanced_accuracy_any_single_threshold": round(_best_split(known_sim[:, 0], novel_sim[:, 0])[1], 4),
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(args.output) as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
