"""What `barcodemae identify --rerank align` buys on real barcodes, in the val protocol's rows: genus of every
unique `val_unseen` barcode (species absent from the reference) and species of every unique `val` barcode of a
reference species, by the nearest of all unique `train` barcodes, embedding-only vs the ``--candidates`` nearest by
cosine re-ranked by alignment identity (`barcodemae.search.rerank_by_alignment`, edlib). Per species and micro with
bootstrap intervals, the paired difference, and the seconds the alignments took (one thread). Embeddings are
cached like scripts/val_protocol.py's.

python scripts/rerank_protocol.py --data ../shared/data/barcodes.tsv.gz --candidates 5 10 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from barcodemae.embedding import Embedder, cached_embeddings, default_model_path
from barcodemae.evaluation.metrics import identification_score
from barcodemae.evaluation.paired import paired_difference
from barcodemae.evaluation.protocol import load_records, prepare_protocol
from barcodemae.io import atomic_text
from barcodemae.search import nearest_neighbors, rerank_by_alignment


def score_rows(name: str, predicted: np.ndarray, baseline: np.ndarray | None, truth: list, species: list) -> dict:
    row = identification_score(list(predicted), truth, species).as_dict()
    if baseline is not None:
        row["minus embedding-only"] = paired_difference(list(predicted), list(baseline), truth, species)
    print(f"{name:45s} {row['per_species']:.2f} per species, {row['micro']:.2f} micro", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--candidates", nargs="+", type=int, default=[10])
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    parser.add_argument("--output", default="results/val/rerank.json")
    args = parser.parse_args()
    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen")
    train = protocol.train
    in_reference = set(train.species)
    seen = [i for i, name in enumerate(protocol.test.species) if name in in_reference]
    tasks = {  # task: (query sequences, reference labels, true labels, species of the queries)
        "val_unseen genus": (protocol.unseen.sequences, train.genus, protocol.unseen.genus, protocol.unseen.species),
        "val species": (
            [protocol.test.sequences[i] for i in seen],
            train.species,
            [protocol.test.species[i] for i in seen],
            [protocol.test.species[i] for i in seen],
        ),
    }
    embedder = Embedder.from_pretrained(args.model)
    refs = cached_embeddings(embedder, train.sequences, args.cache_dir)
    results: dict = {"model": args.model, "protocol": protocol.description}
    for task, (sequences, ref_labels, truth, species) in tasks.items():
        labels = np.asarray(ref_labels, dtype=object)
        indices, cosine = nearest_neighbors(
            cached_embeddings(embedder, sequences, args.cache_dir), refs, k=max(args.candidates)
        )
        baseline = labels[indices[:, 0]]
        rows = {"embedding only": score_rows(f"{task}: embedding only", baseline, None, truth, species)}
        for k in args.candidates:
            start = time.perf_counter()
            reranked = rerank_by_alignment(sequences, train.sequences, indices[:, :k], cosine[:, :k])[0]
            seconds = time.perf_counter() - start
            name = f"reranked, {k} candidates"
            rows[name] = score_rows(f"{task}: {name}", labels[reranked[:, 0]], baseline, truth, species)
            rows[name].update(alignment_seconds=round(seconds, 2), queries_per_s=round(len(sequences) / seconds, 1))
        results[task] = rows
    text = json.dumps(results, indent=2)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(args.output) as handle:
        handle.write(text + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
