"""How well the novel-species flag of `barcodemae identify` works on real barcodes: unique `val` barcodes of species
in the reference (known) and unique `val_unseen` barcodes (novel) against all unique `train` barcodes, with the
thresholds that `identify` calibrates on the reference itself (leave-one-out, reference labels only: no
`val_unseen` label is used). Reports, for the global threshold and for the per-genus thresholds (genus of the best
neighbour), the balanced accuracy, the share of known queries cleared and of novel ones flagged, and the AUROC of
the score (best cosine similarity, minus the threshold in use); plus the best balanced accuracy any single
threshold reaches; and, for the per-genus rule, the shares cleared and flagged by the query's length in A/C/G/T
bases (short reads are flagged more often). Writes the JSON to --output.

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


def share_cleared(margins: np.ndarray) -> float:
    return float((margins >= 0).mean())


def share_flagged(margins: np.ndarray) -> float:
    return float((margins < 0).mean())


def flag_scores(known: np.ndarray, novel: np.ndarray) -> dict[str, float]:
    """Scores of a margin ``similarity - threshold`` (a query is flagged novel when it is negative)."""
    labels = np.r_[np.zeros(len(known)), np.ones(len(novel))]
    cleared, flagged = share_cleared(known), share_flagged(novel)
    return {
        "balanced_accuracy": round((cleared + flagged) / 2, 4),
        "known_cleared": round(cleared, 4),
        "novel_flagged": round(flagged, 4),
        "auroc_novel_vs_known": round(float(roc_auc_score(labels, -np.r_[known, novel])), 4),
    }


LENGTH_BINS = (0, 300, 400, 500, 600, 10_000)


def by_length(known: np.ndarray, novel: np.ndarray, known_bases: np.ndarray, novel_bases: np.ndarray) -> list[dict]:
    """Known queries cleared and novel ones flagged (margins as in :func:`flag_scores`) per query length bin."""
    rows = []
    for low, high in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        k, n = known[(known_bases >= low) & (known_bases < high)], novel[(novel_bases >= low) & (novel_bases < high)]
        rows.append(
            {
                "bases": f"{low}-{high - 1}" if high < LENGTH_BINS[-1] else f"{low}+",
                "known_queries": len(k),
                "known_cleared": round(share_cleared(k), 4) if len(k) else None,
                "novel_queries": len(n),
                "novel_flagged": round(share_flagged(n), 4) if len(n) else None,
            }
        )
    return rows


def acgt_bases(sequences: list[str]) -> np.ndarray:
    return np.array([sum(map(s.count, "ACGT")) for s in sequences])


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
    known_margin, novel_margin = known_sim[:, 0] - per_genus[0], novel_sim[:, 0] - per_genus[1]
    result = {
        "model": args.model,
        "known_queries": len(known_sim),
        "novel_queries": len(novel_sim),
        "calibrated_threshold": round(threshold, 4),
        "genera_with_own_threshold": len(calibration["genus_thresholds"]),
        "calibration": {k: v for k, v in calibration.items() if k != "genus_thresholds"},
        "global_threshold": flag_scores(known_sim[:, 0] - threshold, novel_sim[:, 0] - threshold),
        "per_genus_thresholds": flag_scores(known_margin, novel_margin),
        "best_balanced_accuracy_any_single_threshold": round(_best_split(known_sim[:, 0], novel_sim[:, 0])[1], 4),
        "per_genus_by_length": by_length(
            known_margin, novel_margin, acgt_bases(known), acgt_bases(protocol.unseen.sequences)
        ),
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(args.output) as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
