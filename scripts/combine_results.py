"""Merge several `barcodemae evaluate` outputs into one table and one robustness plot.

python scripts/combine_results.py results/test-*/results.json --output results/combined
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from barcodemae.evaluation import results_to_markdown
from barcodemae.plots import plot_robustness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    merged: dict[str, dict] = {}
    for path in args.results:
        summary = json.loads(path.read_text())
        for name, row in summary["results"].items():
            merged.setdefault(name, row)  # the first file that holds a row wins (e.g. one set of baselines)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
    (args.output / "results.md").write_text(results_to_markdown(merged) + "\n")
    curves = {name: row["robustness"] for name, row in merged.items() if row.get("robustness")}
    if curves:
        plot_robustness(curves, args.output / "robustness.png")
    print(results_to_markdown(merged))


if __name__ == "__main__":
    main()
