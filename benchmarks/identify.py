"""Identification throughput: the library behind ``barcodemae identify`` vs ``vsearch --usearch_global``.

Data (`barcodemae.simulate`, no real data): a tree of 5 orders x 5 families x 5 genera x 5 species x 10 specimens
(658 bp, 0-3 bases lost at each end). The reference is every specimen of species 1-4 of each genus (5,000 barcodes,
genus and species labels); the queries are 500 specimens drawn from the held-out fifth species of each genus, so the
task is genus identification of unseen species (the paper's protocol).

* ours: `barcodemae.identify.build_index` on the reference TSV (embedding + novel-species calibration), timed once;
  then `identify_file` on the query FASTA (query embedding + cosine search + writing the TSV, ``--top-k 5``), timed
  ``--repeats`` times. The model is ``--model``, else ``pretrained/barcodemae-small`` if it exists, else a
  random-init ``configs/small.json`` encoder exported to a temporary folder (the JSON says which).
* vsearch: `barcodemae.baselines.vsearch_genus_1nn` (``--usearch_global --id 0.5``, defaults otherwise, ``--threads``
  as given), timed ``--repeats`` times, interleaved with ours. vsearch has no persistent index: every run indexes
  the 5,000 references itself, so the end-to-end comparison (ours with its index build amortised over one query
  file) is reported too.
* agreement: share of queries whose genus call is the same for both; accuracy of each against the true genus.

Run: ``python -m benchmarks.identify --threads 2``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barcodemae.baselines import vsearch_genus_1nn
from barcodemae.embedding import DEFAULT_MODEL, Embedder, load_encoder
from barcodemae.identify import build_index, identify_file, read_predictions
from barcodemae.simulate import simulate_barcodes, write_fasta, write_tsv
from benchmarks.common import (
    base_parser,
    format_table,
    load_preset,
    machine_info,
    report,
    setup,
    summarize,
    time_interleaved,
)
from modeling_barcodemae import BarcodeMAEForPreTraining
from tokenization_barcodemae import BarcodeMAETokenizer


def split_data(tree: tuple[int, int, int], specimens: int, queries: int, seed: int = 0) -> tuple[list, list]:
    """``(reference records, query records)``: the last species of every genus is held out for the queries."""
    orders, families, genera = tree
    records = simulate_barcodes(orders, families, genera, 5, specimens, length=658, seed=seed, end_variation=3)
    held_out = {record["species"] for record in records[specimens * 4 :: specimens * 5]}
    reference = [record for record in records if record["species"] not in held_out]
    candidates = [record for record in records if record["species"] in held_out]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=min(queries, len(candidates)), replace=False)
    return reference, [candidates[i] for i in sorted(chosen)]


def model_folder(args, scratch: Path) -> tuple[Path, str]:
    """The encoder to benchmark and a description of it."""
    if args.model is not None:
        return args.model, f"given: {args.model}"
    if DEFAULT_MODEL.is_dir() and not args.tiny:
        return DEFAULT_MODEL, f"shipped: {DEFAULT_MODEL.relative_to(DEFAULT_MODEL.parents[1])}"
    preset = "tiny" if args.tiny else "small"
    torch.manual_seed(0)
    folder = scratch / f"random-{preset}"
    BarcodeMAEForPreTraining(load_preset(preset)).save_encoder(folder, BarcodeMAETokenizer(k_mer=6))
    return folder, f"random-init configs/{preset}.json encoder, exported to a temporary folder"


def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0], "identify")
    parser.add_argument("--model", type=Path, default=None, help="encoder folder (default: see module docstring)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--queries", type=int, default=500)
    parser.set_defaults(repeats=3)
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup(args)
    machine = machine_info(device)
    if shutil.which("vsearch") is None:
        raise SystemExit("vsearch is not installed (apt-get install vsearch)")
    tree, specimens = ((1, 2, 2), 3) if args.tiny else ((5, 5, 5), 10)
    reference, queries = split_data(tree, specimens, 8 if args.tiny else args.queries)
    with tempfile.TemporaryDirectory(prefix="barcodemae-bench-") as tmp:
        scratch = Path(tmp)
        model_path, model_description = model_folder(args, scratch)
        embedder = Embedder(
            *load_encoder(model_path, args.device), batch_size=args.batch_size, precision=args.precision
        )
        reference_file = write_tsv(reference, scratch / "reference.tsv")
        query_file = write_fasta(queries, scratch / "queries.fasta")
        start = time.perf_counter()
        index, _ = build_index(reference_file, embedder, str(model_path), progress=False)
        index_s = time.perf_counter() - start
        output = scratch / "predictions.tsv"
        reference_seqs = [r["dna_barcode"] for r in reference]
        reference_genus = [r["genus"] for r in reference]
        query_seqs = [r["dna_barcode"] for r in queries]
        vsearch_calls: list = []
        cases = {
            "barcodemae identify (query embedding + search)": lambda: identify_file(
                query_file, output, index, embedder, progress=False
            ),
            "vsearch --usearch_global": lambda: vsearch_calls.append(
                vsearch_genus_1nn(query_seqs, reference_seqs, reference_genus, threads=args.threads)
            ),
        }
        times = time_interleaved(cases, args.repeats, args.warmup, device)
        ours_calls = {row["query_id"]: row["predicted_genus"] for row in read_predictions(output)}
    ours_genus = [ours_calls.get(r["processid"]) for r in queries]
    vsearch_genus = vsearch_calls[-1]
    truth = [r["genus"] for r in queries]
    results = {name: summarize(values, len(queries)) for name, values in times.items()}
    ours, vsearch = results.values()
    end_to_end = len(queries) / (index_s + ours["median_s"])
    payload = {
        "model": model_description,
        "data": {"references": len(reference), "queries": len(queries), "genera": len(set(reference_genus))},
        "reference_index": {"seconds": index_s, "references_per_s": len(reference) / index_s},
        "cases": results,
        "ours_end_to_end_queries_per_s": end_to_end,
        "ratios": {
            "ours query-only / vsearch": ours["per_s"] / vsearch["per_s"],
            "ours end-to-end (index build + queries) / vsearch": end_to_end / vsearch["per_s"],
        },
        "genus_calls": {
            "agreement_ours_vs_vsearch": float(np.mean([a == b for a, b in zip(ours_genus, vsearch_genus)])),
            "accuracy_ours": float(np.mean([a == b for a, b in zip(ours_genus, truth)])),
            "accuracy_vsearch": float(np.mean([a == b for a, b in zip(vsearch_genus, truth)])),
            "vsearch_no_hit": sum(call is None for call in vsearch_genus),
        },
    }
    rows = [{"method": name, "queries/s": r["per_s"], "median s": r["median_s"]} for name, r in results.items()]
    rows.append({"method": "barcodemae reference index build (once)", "queries/s": None, "median s": index_s})
    rows.append({"method": "barcodemae end-to-end (index build + queries)", "queries/s": end_to_end})
    tables = {
        f"identification, {len(reference)} references, {len(queries)} queries ({model_description})": format_table(
            rows, ["method", "queries/s", "median s"]
        ),
        "ratios and genus calls": format_table(
            [{"measure": k, "value": v} for k, v in {**payload["ratios"], **payload["genus_calls"]}.items()],
            ["measure", "value"],
        ),
    }
    return report(args, machine, payload, tables)


if __name__ == "__main__":
    main()
