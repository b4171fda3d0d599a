"""The trusted val protocol for every modelling choice: genus 1-NN of all unique `val_unseen` barcodes against all
unique `train` barcodes, per species and micro with bootstrap 95% intervals, for encoders and the model-free
baselines on the same rows. Embeddings are cached per (model weights, sequences); results merge into --output.

python scripts/val_protocol.py --data ../shared/data/barcodes.tsv.gz --kmer 6 7 8 --vsearch \
    --model pretrained/barcodemae-small --output results/val/identification.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from barcodemae.baselines import kmer_nearest, vsearch_genus_1nn
from barcodemae.embedding import Embedder, cached_embeddings
from barcodemae.evaluation.metrics import identification_score
from barcodemae.evaluation.paired import paired_difference
from barcodemae.evaluation.protocol import Partition, load_records, prepare_protocol
from barcodemae.io import atomic_text
from barcodemae.search import nearest_neighbors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", nargs="*", default=[], help="encoder folders (their config's readout)")
    parser.add_argument("--kmer", nargs="*", type=int, default=[], help="overlapping k-mer count baselines")
    parser.add_argument("--vsearch", action="store_true", help="vsearch top hit (--id 0.5, 2 threads)")
    parser.add_argument("--readout", nargs="*", help="readouts to score (mean, kmer_bag, mean+kmer_bag)")
    parser.add_argument("--embedding-frames", type=int, help="override the models' reading frames")
    parser.add_argument("--random-init", action="store_true", help="also each model's untrained twin (seed 0)")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="embed under bf16 autocast (rows named so)"
    )
    parser.add_argument(
        "--paired-with", nargs="*", default=["vsearch top hit", "k-mer 8 counts"], help="rows to difference against"
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="difference two rows scored before (row A minus row B, from their stored predictions; embeds nothing)",
    )
    parser.add_argument("--unseen-split", default="val_unseen")
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    parser.add_argument("--output", default="results/val/identification.json")
    args = parser.parse_args()

    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split=args.unseen_split)
    refs, queries = protocol.train, protocol.unseen
    ref_genus = np.asarray(refs.genus, dtype=object)
    print(f"{len(queries)} {args.unseen_split} queries against {len(refs)} train references", flush=True)

    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {}

    predictions_dir = predictions_folder(args.cache_dir, args.unseen_split)
    predictions_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_text(output) as handle:
            handle.write(json.dumps(results, indent=2) + "\n")

    def record(name: str, predicted, started: float) -> None:
        score = identification_score(predicted, queries.genus, queries.species)
        seconds = time.perf_counter() - started
        print(f"{name:40s} {score}  ({seconds:.0f} s)", flush=True)
        results[name] = {**score.as_dict(), "seconds": round(seconds, 1), "protocol": protocol.description}
        store_predictions(predictions_dir, name, predicted, queries)
        for baseline in args.paired_with:
            if prediction_file(predictions_dir, baseline).exists() and baseline != name:
                difference = paired_difference(
                    predicted, stored_predictions(predictions_dir, baseline, queries), queries.genus, queries.species
                )
                results[name][f"minus {baseline}"] = difference
                print(f"{'':40s} minus {baseline}: {difference}", flush=True)
        save()

    for a, b in args.pair:
        predicted = {row: stored_predictions(predictions_dir, row, queries) for row in (a, b)}
        for row in (a, b):
            if row not in results:
                score = identification_score(predicted[row], queries.genus, queries.species)
                results[row] = {**score.as_dict(), "protocol": protocol.description, "from": "stored predictions"}
        difference = paired_difference(predicted[a], predicted[b], queries.genus, queries.species)
        results[a][f"minus {b}"] = difference
        print(f"{a:40s} {results[a]['per_species']}\n{'':40s} minus {b}: {difference}", flush=True)
    if args.pair:
        save()
    for k in args.kmer:
        started = time.perf_counter()
        record(f"k-mer {k} counts", ref_genus[kmer_nearest(queries.sequences, refs.sequences, k)], started)
    if args.vsearch:
        started = time.perf_counter()
        record("vsearch top hit", vsearch_genus_1nn(queries.sequences, refs.sequences, list(ref_genus)), started)
    suffix = ", bf16" if args.precision == "bf16" else ""
    for name, embedder in encoders(args.model, args.random_init, args.precision):
        if args.embedding_frames is not None:
            embedder.model.config.embedding_frames = args.embedding_frames
        for readout in args.readout or [embedder.model.config.readout]:
            started = time.perf_counter()
            ref_emb, query_emb = (
                readout_embeddings(embedder, readout, p.sequences, args.cache_dir) for p in (refs, queries)
            )
            nearest, _ = nearest_neighbors(query_emb, ref_emb)
            frames = embedder.model.config.embedding_frames
            row = f"{name} ({readout}, {frames} frame{'s' if frames > 1 else ''}{suffix})"
            record(row, ref_genus[nearest[:, 0]], started)


def encoders(paths: list[str], random_init: bool, precision: str = "fp32") -> list[tuple[str, Embedder]]:
    """Each model folder's embedder; with ``random_init`` also its untrained twin (same config,
    ``torch.manual_seed(0)``: `barcodemae evaluate`'s random-init row)."""
    out = []
    for path in paths:
        embedder = Embedder.from_pretrained(path, precision=precision)
        out.append((path, embedder))
        if random_init:
            torch.manual_seed(0)
            twin = type(embedder.model)(embedder.model.config).to(embedder.model.device).eval()
            out.append((f"{path} random init", Embedder(twin, embedder.tokenizer, precision=precision)))
    return out


def predictions_folder(cache_dir: str, unseen_split: str) -> Path:
    """Where the rows scored on ``unseen_split`` keep their predictions: beside the embedding cache."""
    return Path(cache_dir).parent / "predictions" / unseen_split


def prediction_file(folder: Path, name: str) -> Path:
    """Where one row's predicted genera are kept (outside the repository: they are derived from the data)."""
    return folder / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.json"


def store_predictions(folder: Path, row: str, predicted, queries: Partition) -> None:
    """Keep a row's predicted genera (None where it named none) with the fingerprint of the queries they answer."""
    stored = {"queries_sha256": queries.sha256(), "genera": [None if p is None else str(p) for p in predicted]}
    with atomic_text(prediction_file(folder, row)) as handle:
        handle.write(json.dumps(stored))


def stored_predictions(folder: Path, row: str, queries: Partition) -> list[str | None]:
    """The predicted genera a row stored when it was scored on these ``queries``; a clear error naming the row
    when it never was, or was scored on other queries."""
    file = prediction_file(folder, row)
    if not file.exists():
        raise FileNotFoundError(f"no stored predictions for row {row!r} in {folder} (score it first)")
    stored = json.loads(file.read_text())
    if stored["queries_sha256"] != queries.sha256():
        raise ValueError(f"row {row!r} was scored on other queries than these {len(queries)} (score it again)")
    return stored["genera"]


def readout_embeddings(embedder: Embedder, readout: str, sequences: list[str], cache_dir: str) -> np.ndarray:
    """The model's embedding under another ``readout``; ``mean+kmer_bag`` is assembled from the two cached halves
    exactly as the model does (each L2-normalised, concatenated)."""
    if readout == "mean+kmer_bag":
        halves = [readout_embeddings(embedder, half, sequences, cache_dir) for half in ("mean", "kmer_bag")]
        return np.concatenate([h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12) for h in halves], 1)
    config = embedder.model.config
    original = (config.readout, embedder.hidden_size)
    config.readout, embedder.hidden_size = readout, config.hidden_size
    try:
        return cached_embeddings(embedder, sequences, cache_dir)
    finally:
        config.readout, embedder.hidden_size = original


if __name__ == "__main__":
    main()
