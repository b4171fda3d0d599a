"""Genus of each unseen-species query by the first neighbour or by a vote among its k nearest, in the val protocol's
rows: all unique `val_unseen` barcodes against all unique `train` barcodes, per species and micro with bootstrap
95% intervals, and each vote paired with the first neighbour. A vote counts each neighbour once, or weighs it by
``exp((s - s1) / T)`` (``s1`` the first neighbour's cosine similarity) with ``--temperature T``.

python scripts/neighbour_vote.py --data ../shared/data/barcodes.tsv.gz --model pretrained/barcodemae-small-genus
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from barcodemae.embedding import Embedder
from barcodemae.evaluation.metrics import identification_score
from barcodemae.evaluation.paired import paired_difference
from barcodemae.evaluation.protocol import load_records, prepare_protocol
from barcodemae.search import nearest_neighbors


def vote(labels: np.ndarray, index: np.ndarray, sims: np.ndarray, k: int, temperature: float | None) -> list:
    """The label with the most votes among each query's ``k`` nearest (ties: the nearer label)."""
    answers = []
    for row, sim in zip(index[:, :k], sims[:, :k]):
        score: dict[str, float] = defaultdict(float)
        for i, s in zip(row, sim):
            score[labels[i]] += 1.0 if temperature is None else float(np.exp((s - sim[0]) / temperature))
        answers.append(max(score, key=score.get))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--k", nargs="+", type=int, default=[3, 5, 10, 20])
    parser.add_argument("--temperature", nargs="*", type=float, default=[0.01], help="weighted votes at each k")
    args = parser.parse_args()
    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen")
    ref, query = protocol.train.has("genus"), protocol.unseen.has("genus")
    embed = Embedder.from_pretrained(args.model)
    refs = embed([s for s, keep in zip(protocol.train.sequences, ref) if keep])
    queries = embed([s for s, keep in zip(protocol.unseen.sequences, query) if keep])
    labels, truth = protocol.train.labels("genus", ref), protocol.unseen.labels("genus", query)
    species = [s or g for s, g, keep in zip(protocol.unseen.species, protocol.unseen.genus, query) if keep]
    index, sims = nearest_neighbors(queries, refs, k=max(args.k))
    first = vote(labels, index, sims, 1, None)
    print(f"first neighbour: {identification_score(first, truth, species)}")
    for temperature in (None, *args.temperature):
        for k in args.k:
            answers = vote(labels, index, sims, k, temperature)
            paired = paired_difference(answers, first, truth, species)
            low, high = paired["per_species_interval"]
            name = f"k={k}" + ("" if temperature is None else f", weighted T={temperature:g}")
            print(
                f"{name}: {identification_score(answers, truth, species)}; minus first per species "
                f"{paired['per_species']:+.2f} [{low:+.2f}, {high:+.2f}]"
            )


if __name__ == "__main__":
    main()
