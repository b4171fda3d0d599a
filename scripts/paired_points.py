"""Paired differences between any two points that scripts/flop_curve.py scored (say one run's last point and the
same recipe's at half the budget), from the hits both stored: genus 1-NN per species and micro, paired bootstrap
95% intervals, the checkpoints long gone. Prints a markdown table, one row per pair and readout.

python scripts/paired_points.py --data ../shared/data/barcodes.tsv.gz --readout mean mean_whitened \
    --pair eqflop-1-paper-mae:352 eqflop-0.5-paper-mae:176 --pair eqflop-1-paper-mae:352 eqflop-1-paper-mae-vis:352
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from flop_curve import paired_cell, unpack_hits

from barcodemae.evaluation.paired import paired_hit_difference
from barcodemae.evaluation.protocol import Partition, load_records, prepare_protocol


def point_hits(results: dict, point: str, readout: str, queries: Partition) -> np.ndarray:
    """The stored hits of ``RUN:STEP`` under ``readout``; a clear error naming the point when it has none."""
    run, _, step = point.partition(":")
    scored = results.get(run, {}).get(step, {}).get(readout, {})
    if "hits" not in scored:
        raise SystemExit(f"{point}: no stored hits for readout {readout!r} (score it with scripts/flop_curve.py)")
    return unpack_hits(scored["hits"], len(queries))


def difference_rows(results: dict, pairs: list[tuple[str, str]], readouts: list[str], queries: Partition) -> str:
    """A markdown table of ``A − B`` for each pair of points and each readout."""
    lines = ["| A − B | readout | per species [95%] | micro [95%] |", "|---|---|---:|---:|"]
    for a, b in pairs:
        for readout in readouts:
            ours, theirs = (point_hits(results, point, readout, queries) for point in (a, b))
            d = paired_hit_difference(ours, theirs, queries.species)
            lines.append(f"| `{a}` − `{b}` | {readout} | {paired_cell(d)} | {paired_cell(d, 'micro')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"), help="RUN:STEP twice")
    parser.add_argument("--readout", nargs="+", default=["mean"])
    parser.add_argument("--results", type=Path, default=Path("results/equal-flops.json"))
    args = parser.parse_args()

    queries = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen").unseen
    results = json.loads(args.results.read_text())
    if results.get("queries_sha256") != queries.sha256():
        raise SystemExit(f"{args.results} was scored on other val_unseen queries than these {len(queries)}")
    print(difference_rows(results, [tuple(pair) for pair in args.pair], args.readout, queries))


if __name__ == "__main__":
    main()
