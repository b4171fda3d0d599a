"""How well the novel-species flag of `barcodemae identify` works on real barcodes: unique `val` barcodes of species
in the reference (known) and unique `val_unseen` barcodes (novel) against all unique `train` barcodes, with the
thresholds that `identify` calibrates on the reference itself (leave-one-out, reference labels only: no
`val_unseen` label is used). Reports, for the global threshold and for the per-genus thresholds (genus of the best
neighbour), the balanced accuracy, the share of known queries cleared and of novel ones flagged, and the AUROC of
the score (best cosine similarity, minus the threshold in use); plus the best balanced accuracy any single
threshold reaches; and, for the per-genus rule, the shares cleared and flagged by the query's length in A/C/G/T
bases (short reads are flagged more often). Writes the JSON to --output.

Two measurements show how far the labels let a similarity rule go (`barcode_gap`, `learned_rule`): the alignment
identity of each query to its best of the 20 nearest references (known queries below 99%, novel ones at 99% or
above, the best balanced accuracy of any identity threshold), and a gradient-boosted classifier fit on the val
labels themselves to 12 neighbour features, scored by 5-fold cross-validation grouped by species (so it is
scored on species it never saw, as the flag is).

python scripts/novelty_protocol.py --data ../shared/data/barcodes.tsv.gz --model pretrained/barcodemae-small-genus
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from barcodemae.embedding import Embedder, cached_embeddings, default_model_path
from barcodemae.evaluation.protocol import load_records, prepare_protocol
from barcodemae.io import atomic_text
from barcodemae.reference import ReferenceIndex, _best_split, _same_and_other_species, calibrate_threshold
from barcodemae.search import candidate_identities, nearest_neighbors

CANDIDATES = 20


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


def barcode_gap(known_identity: np.ndarray, novel_identity: np.ndarray) -> dict[str, float]:
    """How far the labels let identity to the reference separate known from novel queries (best of the candidates):
    the known queries 1% or more from every candidate, the novel ones within 1% of one (of another species, as the
    species is new), and the best balanced accuracy any identity threshold reaches on the val labels."""
    known, novel = known_identity.max(axis=1), novel_identity.max(axis=1)
    return {
        "candidates": known_identity.shape[1],
        "known_below_99_percent": round(float((known < 0.99).mean()), 4),
        "novel_at_or_above_99_percent": round(float((novel >= 0.99).mean()), 4),
        "best_balanced_accuracy_any_identity_threshold": round(_best_split(known, novel)[1], 4),
    }


def reference_neighbors(refs: np.ndarray, species: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per reference barcode: its nearest same-species and other-species cosine similarity (leave-one-out; -1 when
    it has no same-species neighbour) and its species' size."""
    names = np.asarray(species, dtype=object)
    labelled = np.flatnonzero(names != "")
    _, codes = np.unique(names[labelled].astype(str), return_inverse=True)
    same, other = _same_and_other_species(refs, labelled, codes, np.arange(len(labelled)), 8192)
    out = np.full((3, len(names)), -1.0)
    out[0, labelled], out[1, labelled] = np.maximum(same, -1), other
    out[2, labelled] = np.bincount(codes)[codes]
    return out[0], out[1], out[2]


def neighbor_features(
    sims: np.ndarray,
    idx: np.ndarray,
    identity: np.ndarray,
    margin: np.ndarray,
    species: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """12 features of a query's neighbourhood: cosine similarities (best, second, best minus fifth), identities
    (best, second), the per-genus margin, the best hit's leave-one-out same/other-species similarities and species
    size, the share of the 10 nearest in the best hit's species, the best hit's identity and its gap to the best
    identity (the best hit is the nearest by cosine)."""
    top = idx[:, 0]
    same, other, size = (r[top] for r in reference)
    ranked = np.sort(identity, axis=1)
    in_species = (species[idx[:, :10]] == species[top][:, None]).mean(axis=1)
    return np.c_[
        sims[:, 0], sims[:, 1], sims[:, 0] - sims[:, 4], ranked[:, -1], ranked[:, -2], margin,
        same, other, size, in_species, identity[:, 0], ranked[:, -1] - identity[:, 0],
    ]  # fmt: skip


def learned_rule(known: np.ndarray, novel: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Balanced accuracy of a classifier fit on the val labels to the neighbour features, scored out of fold with
    folds grouped by species: at probability 0.5 and at the best cut (chosen on the labels, so optimistic)."""
    features, labels = np.r_[known, novel], np.r_[np.zeros(len(known)), np.ones(len(novel))]
    weights = np.where(labels == 1, len(labels) / (2 * len(novel)), len(labels) / (2 * len(known)))
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
    novel_probability = cross_val_predict(
        model, features, labels, groups=groups, cv=GroupKFold(5), method="predict_proba",
        params={"sample_weight": weights},
    )[:, 1]  # fmt: skip
    at_half = ((novel_probability[labels == 0] < 0.5).mean() + (novel_probability[labels == 1] >= 0.5).mean()) / 2
    best = _best_split(-novel_probability[labels == 0], -novel_probability[labels == 1])[1]
    return {
        "features": features.shape[1],
        "folds": "5, grouped by species",
        "balanced_accuracy_at_half": round(float(at_half), 4),
        "balanced_accuracy_best_cut": round(best, 4),
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
    known_rows = [i for i, name in enumerate(protocol.test.species) if name in reference_species]
    known = [protocol.test.sequences[i] for i in known_rows]
    embedder = Embedder.from_pretrained(args.model)
    refs, known_emb, novel_emb = (
        cached_embeddings(embedder, sequences, args.cache_dir)
        for sequences in (train.sequences, known, protocol.unseen.sequences)
    )
    species, genus = [s or "" for s in train.species], [g or "" for g in train.genus]
    threshold, calibration = calibrate_threshold(refs, species, genus)
    index = ReferenceIndex(
        refs, [""] * len(refs), {"genus": genus, "species": species}, args.model, threshold, calibration
    )
    (known_idx, known_sim), (novel_idx, novel_sim) = (
        nearest_neighbors(q, refs, k=CANDIDATES) for q in (known_emb, novel_emb)
    )
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
    known_identity = candidate_identities(known, train.sequences, known_idx)
    novel_identity = candidate_identities(protocol.unseen.sequences, train.sequences, novel_idx)
    result["barcode_gap"] = barcode_gap(known_identity, novel_identity)
    reference = reference_neighbors(refs, species)
    species_array = np.asarray(species, dtype=object)
    result["learned_rule_on_val_labels"] = learned_rule(
        neighbor_features(known_sim, known_idx, known_identity, known_margin, species_array, reference),
        neighbor_features(novel_sim, novel_idx, novel_identity, novel_margin, species_array, reference),
        np.r_[[protocol.test.species[i] for i in known_rows], protocol.unseen.species],
    )
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(args.output) as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
