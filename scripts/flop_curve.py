"""Issue 13's curves: the val protocol's genus 1-NN (per species and micro, bootstrap intervals) and the effective
rank of the frozen encoder along equal-FLOP pretraining runs (scripts/equal_flops.sh), one point per checkpoint, with
the training FLOPs it had. Embeddings are cached as in scripts/val_protocol.py, so re-running adds only new points.

python scripts/flop_curve.py --data ../shared/data/barcodes.tsv.gz --runs runs/eqflop-0.25-mlm \
    runs/eqflop-0.25-mae-light --every 4 --readout mean kmer_bag --output results/equal-flops.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from val_protocol import readout_embeddings

from barcodemae.embedding import Embedder
from barcodemae.evaluation import effective_rank, identification_score, load_records, prepare_protocol
from barcodemae.io import atomic_text
from barcodemae.plots import plot_flop_curves
from barcodemae.search import nearest_neighbors

TFLOP_PER_STEP_AT_64 = {"mlm": 0.156, "mae-light": 0.0947, "mae-shipped": 0.243}  # see scripts/equal_flops.sh


def checkpoints(run: Path, every: int) -> list[Path]:
    """Every ``every``-th checkpoint of a run, always including the last."""
    found = sorted(run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return [path for i, path in enumerate(found, start=1) if i % every == 0 or i == len(found)]


def training_tflop(checkpoint: Path) -> float:
    """Training FLOPs (TFLOP) up to this checkpoint: steps × FLOPs per step of the run's recipe and batch."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    recipe = re.sub(r"^eqflop-[0-9.]+-", "", checkpoint.parent.name)
    return state["global_step"] * TFLOP_PER_STEP_AT_64[recipe] * state["train_batch_size"] / 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="folders runs/eqflop-BUDGET-RECIPE")
    parser.add_argument("--every", type=int, default=4, help="score every N-th checkpoint (and the last)")
    parser.add_argument("--readout", nargs="+", default=["mean", "kmer_bag"])
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    parser.add_argument("--output", type=Path, default=Path("results/equal-flops.json"))
    parser.add_argument("--plot", type=Path, default=Path("results/equal-flops.png"))
    args = parser.parse_args()

    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen")
    refs, queries = protocol.train, protocol.unseen
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    for run in args.runs:
        points = results.setdefault(run.name, {})
        for checkpoint in checkpoints(run, args.every):
            embedder = Embedder.from_pretrained(checkpoint)
            step = checkpoint.name.split("-")[1]
            for readout in args.readout:
                started = time.perf_counter()
                ref_emb, query_emb = (
                    readout_embeddings(embedder, readout, p.sequences, args.cache_dir) for p in (refs, queries)
                )
                nearest, _ = nearest_neighbors(query_emb, ref_emb)
                score = identification_score([refs.genus[i] for i in nearest[:, 0]], queries.genus, queries.species)
                points.setdefault(step, {"training_tflop": training_tflop(checkpoint)})[readout] = {
                    **score.as_dict(),
                    "effective_rank": effective_rank(query_emb),
                }
                print(
                    f"{run.name} step {step} {readout:9s} {score}  ({time.perf_counter() - started:.0f} s)", flush=True
                )
            results["protocol"] = protocol.description
            with atomic_text(args.output) as handle:
                handle.write(json.dumps(results, indent=2) + "\n")
    plot_flop_curves({name: points for name, points in results.items() if name != "protocol"}, args.plot)


if __name__ == "__main__":
    main()
