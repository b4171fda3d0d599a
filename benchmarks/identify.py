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

**Scale** (``--scale N [N ...]``): for each reference size N, N simulated references (9 species of 20 specimens
a genus, `benchmarks.search.simulated_split`) and ``--queries`` held-out specimens (half of reference species,
half of species absent from the reference), the shipped model:

* ours: `build_index` (``--search auto``: exact below 100,000 references, the faiss index from there; embedding,
  calibration and the approximate index included), its seconds and peak extra memory, then the saved folder is
  loaded and `identify_file` run on the query FASTA (query embedding + search + TSV; ``--top-k 5``);
* vsearch: ``--usearch_global --id 0.5 --threads`` (the whole command; it indexes the references every run), its
  seconds and the peak resident memory of the vsearch process (sampled every 20 ms);
* search only, on the same embeddings: exact `CosineIndex` vs `AnnIndex` queries/s and the recall@1 of the
  approximate index against exact search (ties count as found).

Run: ``python -m benchmarks.identify --threads 2 --scale 10000 100000 1000000 --queries 1000 --repeats 1``
(writes ``results/identify_scale.json`` unless ``--output``, and the plot ``--plot``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barcodemae.baselines import vsearch_genus_1nn
from barcodemae.embedding import DEFAULT_MODEL, Embedder, load_encoder
from barcodemae.identify import ReferenceIndex, build_index, identify_file, read_predictions
from barcodemae.search import AnnIndex, CosineIndex
from barcodemae.simulate import simulate_barcodes, write_fasta, write_tsv
from benchmarks.common import (
    RESULTS_DIR,
    base_parser,
    format_table,
    load_preset,
    machine_info,
    peak_memory_mb,
    report,
    setup,
    summarize,
    time_interleaved,
)
from benchmarks.search import recall_at_1, simulated_split
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
    parser.add_argument("--scale", type=int, nargs="+", help="reference sizes for the scale benchmark")
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "identify_scale.png")
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    if args.scale and args.output == RESULTS_DIR / "identify.json":
        args.output = RESULTS_DIR / "identify_scale.json"
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.scale:
        return scale_main(args)
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


# ------------------------------------------------------------------------------------------- scale
def children_rss_mb(name: str = "vsearch") -> float:
    """Resident MiB of this process's child processes running ``name`` now (a child still being forked, sharing
    this process's memory, is not counted)."""
    total = 0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() != name:
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
                total += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


def vsearch_run(queries: list[str], reference: list[str], labels: list[str], threads: int) -> tuple[float, float]:
    """Seconds of one whole vsearch command and its peak resident MiB (sampled every 20 ms)."""
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], children_rss_mb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        vsearch_genus_1nn(queries, reference, labels, threads=threads)
    finally:
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
    return seconds, peak[0]


def search_only(index: ReferenceIndex, queries: np.ndarray, repeats: int, device) -> dict[str, float]:
    """Exact vs approximate search on the same embeddings: queries/s of each and the recall@1 of the latter."""
    exact = CosineIndex(index.embeddings)
    ann = index.ann if index.ann is not None else AnnIndex.build(index.embeddings)
    exact_idx, exact_sim = exact.search(queries, k=5)
    ann_idx, ann_sim = ann.search(queries, k=5)
    cases = {"exact": lambda: exact.search(queries, k=5), "ann": lambda: ann.search(queries, k=5)}
    times = time_interleaved(cases, repeats, 1, device)
    exact_s, ann_s = (summarize(times[name], len(queries))["per_s"] for name in ("exact", "ann"))
    recall = recall_at_1(ann_idx, ann_sim, exact_idx, exact_sim)
    return {"exact_queries_per_s": exact_s, "ann_queries_per_s": ann_s, "ann_recall_at_1": recall}


def scale_point(n: int, args, embedder, model_path: Path, scratch: Path, device) -> dict[str, Any]:
    """One reference size: ours (build, load, identify) and vsearch, as described in the module docstring."""
    reference, queries = simulated_split(n, args.queries)
    reference_file = write_tsv(reference, scratch / f"reference-{n}.tsv")
    query_file = write_fasta(queries, scratch / f"queries-{n}.fasta")
    built: list = []
    start = time.perf_counter()
    build_mb = peak_memory_mb(
        lambda: built.append(build_index(reference_file, embedder, str(model_path), progress=False)), device
    )
    build_s = time.perf_counter() - start
    index = built[0][0]
    index.save(scratch / f"index-{n}")
    built.clear()
    ours: list[float] = []
    vsearch: list[tuple[float, float]] = []
    seqs, labels = [r["dna_barcode"] for r in reference], [r["genus"] for r in reference]

    def identify_once() -> None:
        start = time.perf_counter()
        loaded = ReferenceIndex.load(scratch / f"index-{n}")
        identify_file(query_file, scratch / "predictions.tsv", loaded, embedder, progress=False)
        ours.append(time.perf_counter() - start)

    for _ in range(args.repeats):
        identify_once()
        vsearch.append(vsearch_run([r["dna_barcode"] for r in queries], seqs, labels, args.threads))
    ours_s = float(np.median(ours))
    vsearch_s = float(np.median([s for s, _ in vsearch]))
    query_emb = embedder([r["dna_barcode"] for r in queries])
    return {
        "references": len(reference),
        "queries": len(queries),
        "search": index.search,
        "ours_build_s": build_s,
        "ours_build_peak_mb": build_mb,
        "ours_index_folder_mb": sum(f.stat().st_size for f in (scratch / f"index-{n}").iterdir()) / 2**20,
        "ours_queries_per_s": len(queries) / ours_s,
        "vsearch_queries_per_s": len(queries) / vsearch_s,
        "vsearch_peak_rss_mb": max(mb for _, mb in vsearch),
        "ours/vsearch": vsearch_s / ours_s,
        **search_only(index, query_emb, max(args.repeats, 3), device),
    }


def plot_scale(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from barcodemae.io import atomic_paths

    sizes = [p["references"] for p in points]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [p["ours_queries_per_s"] for p in points], "o-", label="barcodemae identify (saved index)")
    left.plot(sizes, [p["vsearch_queries_per_s"] for p in points], "s-", label="vsearch --usearch_global")
    left.plot(sizes, [p["exact_queries_per_s"] for p in points], ":", label="exact cosine search only")
    left.plot(sizes, [p["ann_queries_per_s"] for p in points], "--", label="faiss IVF search only")
    left.set(xscale="log", yscale="log", xlabel="reference barcodes", ylabel="queries / s", title="identification")
    left.legend(fontsize=8)
    right.plot(sizes, [p["ours_build_s"] for p in points], "o-", label="index build (s)")
    right.plot(sizes, [p["ours_build_peak_mb"] for p in points], "^-", label="index build peak memory (MiB)")
    right.plot(sizes, [p["vsearch_peak_rss_mb"] for p in points], "s-", label="vsearch peak memory (MiB)")
    right.set(xscale="log", yscale="log", xlabel="reference barcodes", title="index build")
    right.legend(fontsize=8)
    figure.tight_layout()
    with atomic_paths(path) as (temporary,):
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)


def scale_main(args: argparse.Namespace) -> dict[str, Any]:
    device = setup(args)
    machine = machine_info(device)
    if shutil.which("vsearch") is None:
        raise SystemExit("vsearch is not installed (apt-get install vsearch)")
    sizes = [300, 600] if args.tiny else sorted(args.scale)
    if args.tiny:
        args.queries = 20
    embedder = Embedder(*load_encoder(DEFAULT_MODEL, args.device), precision=args.precision)
    with tempfile.TemporaryDirectory(prefix="barcodemae-scale-") as tmp:
        points = []
        for n in sizes:
            points.append(scale_point(n, args, embedder, DEFAULT_MODEL, Path(tmp), device))
            print(f"{n} references: {points[-1]}", flush=True)
    plot_scale(points, args.plot)
    columns = ["references", "search", "ours_build_s", "ours_build_peak_mb", "ours_queries_per_s"]
    columns += ["vsearch_queries_per_s", "ours/vsearch", "vsearch_peak_rss_mb", "exact_queries_per_s"]
    columns += ["ann_queries_per_s", "ann_recall_at_1"]
    tables = {f"identify at scale ({args.queries} queries, plot {args.plot.name})": format_table(points, columns)}
    return report(args, machine, {"points": points, "plot": str(args.plot)}, tables)


if __name__ == "__main__":
    main()
