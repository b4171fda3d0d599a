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

* ours: `build_index` (``--search auto``: exact below 15,000 distinct references, the IVF index from there; embedding,
  calibration and the approximate index included), its seconds and peak extra memory, then the saved folder is
  loaded and `identify_file` run on the query FASTA (query embedding + search + TSV; ``--top-k 5``), after
  ``--warmup`` untimed runs (the process's first run also pays one-time imports);
* vsearch: ``--usearch_global --id 0.5 --threads`` (the whole command; it indexes the references every run), its
  seconds and the peak resident memory of the vsearch process (sampled every 20 ms);
* search only, on the same embeddings: exact (`barcodemae.search.exact_searcher`) vs `AnnIndex` queries/s and the
  recall@1 of the approximate index against exact search (ties count as found).

Run: ``python -m benchmarks.identify --threads 2 --scale 10000 100000 1000000 --queries 1000 --repeats 1``
(writes ``results/identify_scale.json`` unless ``--output``, and the plot ``--plot``).

**Real data** (``--data BARCODES.tsv.gz``, issue 42's set restricted to the rows we have): every ``train`` row as it
comes (duplicates included; the index stores each distinct barcode once) is the reference, a TSV with every rank;
every ``test``, ``val``, ``val_unseen`` and ``test_unseen`` row is a query (one FASTA, duplicates included). Whole
commands, each a subprocess, timed in interleaved rounds (``--warmup`` untimed, ``--repeats`` timed, the per-round
ratio's median reported), each with its peak resident memory (``ru_maxrss``):

* ours: ``barcodemae identify --reference train.tsv --save-index INDEX`` once (reported apart), then ``barcodemae
  identify queries.fasta --index INDEX -o OUT.tsv --threads N --quiet`` (Python start, model and index loading,
  reading and cleaning, embedding, search, answers, the TSV);
* vsearch: ``vsearch --usearch_global queries.fasta --db distinct.fasta --id 0.5 --threads N --blast6out OUT`` against
  the de-duplicated reference (the first row of each distinct barcode; it indexes the database on every run).

Besides: ``identify_file`` in a warm process (model and index loaded once: the steady-state queries/s without
start-up), and the start-up alone: the 14 example queries (``examples/``) with a saved index of the example
reference against a bare ``python -c "import torch"``, interleaved, at least 5 rounds. Accuracy of the last round's
calls (`identification_score`, bootstrap 95% intervals): genus of the ``val_unseen`` + ``test_unseen`` queries (unseen
species) per species and micro, species of the ``test`` queries; ours is the TSV's ``predicted_genus`` /
``predicted_species``, vsearch's the labels of its top hit.

Run: ``python -m benchmarks.identify --data ../shared/data/barcodes.tsv.gz --threads 2`` (writes
``results/identify_real.json`` unless ``--output``).

**Stages** (``--data ... --stages``): where one identify's time goes, on the same rows, in one process: Python
start and imports (a subprocess importing `barcodemae.identify`), loading the model, loading the saved index,
embedding the queries, exact cosine search (top 5), approximate search (top 5, faiss installed; its index built
beforehand), and the whole `identify_file` (read, clean, embed, search, flag, write the TSV); seconds and ms a
query, medians of interleaved rounds. The reference index is built once in process (its seconds reported apart).

Run: ``python -m benchmarks.identify --data ../shared/data/barcodes.tsv.gz --stages --threads 2`` (writes
``results/identify_stages.json`` unless ``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barcodemae.baselines import vsearch_genus_1nn
from barcodemae.embedding import DEFAULT_MODEL, load_embedder
from barcodemae.evaluation.metrics import identification_score
from barcodemae.evaluation.protocol import Partition, load_records, prepare_protocol
from barcodemae.identify import identify_file, read_predictions
from barcodemae.reference import INDEX_EMBEDDINGS, INDEX_FILE, ReferenceIndex, build_index, map_embeddings
from barcodemae.search import AnnIndex, ann_available, exact_searcher
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
    speed_ratio,
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
    parser.add_argument("--data", type=Path, help="real barcodes (table with a split column): the real-data mode")
    parser.add_argument("--stages", action="store_true", help="with --data: time each stage of identify in process")
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    if args.scale and args.data:
        parser.error("--scale and --data are separate modes")
    if args.stages and not args.data:
        parser.error("--stages needs --data")
    if args.output == RESULTS_DIR / "identify.json":
        name = "scale" if args.scale else "stages" if args.stages else "real" if args.data else None
        args.output = RESULTS_DIR / (f"identify_{name}.json" if name else "identify.json")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.scale:
        return scale_main(args)
    if args.stages:
        return stages_main(args)
    if args.data:
        return data_main(args)
    device = setup(args)
    machine = machine_info(device)
    if shutil.which("vsearch") is None:
        raise SystemExit("vsearch is not installed (apt-get install vsearch)")
    tree, specimens = ((1, 2, 2), 3) if args.tiny else ((5, 5, 5), 10)
    reference, queries = split_data(tree, specimens, 8 if args.tiny else args.queries)
    with tempfile.TemporaryDirectory(prefix="barcodemae-bench-") as tmp:
        scratch = Path(tmp)
        model_path, model_description = model_folder(args, scratch)
        embedder = load_embedder(model_path, args.device, batch_size=args.batch_size, precision=args.precision)
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
    exact = exact_searcher(index.embeddings)
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

    for _ in range(args.warmup):
        identify_once()
    ours.clear()
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
    left.plot(sizes, [p["ann_queries_per_s"] for p in points], "--", label="IVF search only")
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
    embedder = load_embedder(DEFAULT_MODEL, args.device, precision=args.precision)
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


# ------------------------------------------------------------------------------------------- real data
OURS = "barcodemae identify --index (whole command)"
VSEARCH = "vsearch --usearch_global --id 0.5 (whole command)"
QUERY_SPLITS = ("test", "val", "val_unseen", "test_unseen")
UNSEEN_SPLITS = ("val_unseen", "test_unseen")
LABEL_COLUMNS = ("phylum", "class", "order", "family", "subfamily", "genus", "species", "dna_bin")
Calls = dict[str, tuple[str | None, str | None]]  # query id -> (predicted genus, predicted species)


def partition_records(partition: Partition) -> list[dict[str, Any]]:
    """One record per unique barcode of ``partition`` (the val protocol's rows, for ``--stages``)."""
    rows = zip(partition.sequences, partition.genus, partition.species)
    return [
        {"processid": f"{partition.name}-{row}", "dna_barcode": sequence, "genus": genus, "species": species}
        for row, (sequence, genus, species) in enumerate(rows)
    ]


def real_split(data: Path) -> tuple[list[dict], dict[str, list[dict]], str]:
    """The val protocol's unique barcodes (``--stages``): ``(train references, {"val_unseen", "val"} queries, ...)``."""
    protocol = prepare_protocol(load_records(data)[0], seen_split="val", unseen_split="val_unseen")
    queries = {"val_unseen": partition_records(protocol.unseen), "val": partition_records(protocol.test)}
    return partition_records(protocol.train), queries, protocol.description


def write_split(reference: list[dict], queries: list[dict], scratch: Path) -> tuple[Path, Path]:
    """The reference as a labelled TSV and the queries as an unlabelled FASTA, in ``scratch``."""
    reference_file = write_tsv(reference, scratch / "train.tsv", split_column=False)
    query_records = [{"processid": r["processid"], "dna_barcode": r["dna_barcode"]} for r in queries]
    return reference_file, write_fasta(query_records, scratch / "queries.fasta")


def issue_split(data: Path) -> tuple[list[dict], list[dict]]:
    """``(every train row, every row of QUERY_SPLITS)``, cleaned by `barcodemae.data`'s rules, duplicates kept."""
    records, _ = load_records(data)
    reference = [
        {k: r.get(k) for k in ("processid", "dna_barcode", *LABEL_COLUMNS)} for r in records if r["split"] == "train"
    ]
    queries = [r for r in records if r["split"] in QUERY_SPLITS]
    return reference, queries


def distinct_reference(reference: list[dict], path: Path) -> tuple[Path, dict[str, dict]]:
    """vsearch's database: the first row of each distinct barcode, as FASTA; its labels by id."""
    first: dict[str, dict] = {}
    for record in reference:
        first.setdefault(record["dna_barcode"], record)
    rows = list(first.values())
    return write_fasta([{"processid": r["processid"], "dna_barcode": r["dna_barcode"]} for r in rows], path), {
        r["processid"]: r for r in rows
    }


def identify_command(*arguments: str, threads: int) -> list[str]:
    """A ``barcodemae identify`` command line, run by this Python."""
    return [sys.executable, "-m", "barcodemae.cli", "identify", *arguments, "--threads", str(threads), "--quiet"]


def run_command(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")


def measured(command: list[str]) -> tuple[float, float]:
    """Seconds of a whole command and its peak resident MiB (GNU time's ``%M``, the kernel's ``ru_maxrss`` of the
    command's own process; without /usr/bin/time, ``os.wait4``'s, which can include this process's at the fork)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as usage:
        timed = ["/usr/bin/time", "-f", "%M", "-o", usage.name, *command] if Path("/usr/bin/time").exists() else command
        start = time.perf_counter()
        process = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, rusage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        error = process.stderr.read().decode(errors="replace")
        process.stderr.close()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {error.strip()[-2000:]}")
        kib = usage.read().split()[-1] if timed is not command else str(rusage.ru_maxrss)
    return seconds, int(kib) / 1024


def build_saved_index(args, reference_file: Path, model_path: Path, folder: Path) -> dict[str, Any]:
    """Build and save the reference index with the whole command, once: its seconds, search method and size."""
    command = ["--reference", str(reference_file), "--save-index", str(folder), "--model", str(model_path)]
    seconds, peak = measured(identify_command(*command, threads=args.threads))
    meta = json.loads((folder / INDEX_FILE).read_text())
    return {
        "seconds": seconds,
        "peak_rss_mb": peak,
        "search": meta["search"],
        "rows": len(meta["ids"]),
        "distinct_barcodes": int(map_embeddings(folder / INDEX_EMBEDDINGS).shape[0]),
        "folder_mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20,
    }


def whole_commands(args, commands: dict[str, list[str]]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Interleaved rounds (``--warmup`` untimed, ``--repeats`` timed) of each whole command: seconds per round and
    the peak resident MiB of each."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    peaks = dict.fromkeys(commands, 0.0)
    for round_ in range(args.warmup + args.repeats):
        for name, command in commands.items():
            seconds, peak = measured(command)
            peaks[name] = max(peaks[name], peak)
            if round_ >= args.warmup:
                times[name].append(seconds)
    return times, peaks


def steady_state(args, model_path: Path, index_folder: Path, query_file: Path, n: int) -> dict[str, Any]:
    """identify_file's queries/s in a warm process (model and index loaded once, no Python start): what a command
    with a large query file approaches."""
    embedder = load_embedder(model_path)
    index = ReferenceIndex.load(index_folder)
    output = index_folder.parent / "steady.tsv"
    times = time_interleaved(
        {"identify_file": lambda: identify_file(query_file, output, index, embedder, progress=False)},
        args.repeats,
        1,
        torch.device("cpu"),
    )
    return summarize(times["identify_file"], n) | {"embedder": type(embedder).__name__}


def startup(args, scratch: Path) -> dict[str, Any]:
    """The 14 example queries against a saved index of the example reference, whole command, vs a bare
    ``python -c "import torch"``: interleaved rounds, at least 5."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    index = scratch / "examples-index"
    run_command(identify_command("--reference", str(examples / "reference.tsv"), "--save-index", str(index), threads=1))
    ours = identify_command(
        str(examples / "queries.fasta"), "--index", str(index), "-o", str(scratch / "ex.tsv"), threads=args.threads
    )
    commands = {
        "identify (14 example queries, saved index)": ours,
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
    }
    rounds = argparse.Namespace(warmup=1, repeats=args.repeats if args.tiny else max(5, args.repeats))
    times, peaks = whole_commands(rounds, commands)
    (name, torch_name) = commands
    return {
        "cases": {key: summarize(values, 1) | {"peak_rss_mb": peaks[key]} for key, values in times.items()},
        "ratio_to_import_torch": statistics.median(times[name]) / statistics.median(times[torch_name]),
        "paired": speed_ratio(times, torch_name, name),
    }


def ours_calls(path: Path) -> Calls:
    return {row["query_id"]: (row["predicted_genus"], row["predicted_species"]) for row in read_predictions(path)}


def vsearch_calls(blast6: Path, labels: dict[str, dict]) -> Calls:
    """vsearch's top hit per query (``--blast6out``; ``--maxaccepts 1``: one line per query with a hit)."""
    calls: Calls = {}
    for line in blast6.read_text().splitlines():
        query, target = line.split("\t")[:2]
        calls.setdefault(query, (labels[target]["genus"], labels[target]["species"]))
    return calls


def scored(calls: Calls, queries: list[dict]) -> dict[str, Any]:
    """Genus of the unseen-species queries (per species) and species of the ``test`` queries (per species)."""
    unseen = [r for r in queries if r["split"] in UNSEEN_SPLITS and r["genus"] and r["species"]]
    seen = [r for r in queries if r["split"] == "test" and r["species"]]
    genus = identification_score(
        [calls.get(r["processid"], (None, None))[0] for r in unseen],
        [r["genus"] for r in unseen],
        [r["species"] for r in unseen],
    )
    species = identification_score(
        [calls.get(r["processid"], (None, None))[1] for r in seen],
        [r["species"] for r in seen],
        [r["species"] for r in seen],
    )
    return {
        "unseen_genus": genus.as_dict(),
        "test_species": species.as_dict(),
        "scored": {"unseen_genus": len(unseen), "test_species": len(seen)},
        "queries_without_an_answer": sum(r["processid"] not in calls for r in queries),
    }


def interval_cell(score: dict[str, Any], key: str) -> str:
    low, high = score[f"{key}_interval"]
    return f"{score[key]:.2f} [{low:.1f}, {high:.1f}]"


def data_tables(payload: dict[str, Any]) -> dict[str, str]:
    n = payload["data"]["queries"]
    speed = [
        {
            "method": name,
            "queries/s": case["per_s"],
            "median s": case["median_s"],
            "peak MiB": payload["peak_rss_mb"][name],
            "x vsearch": payload["ratio"]["paired_median"] if name == OURS else 1.0,
        }
        for name, case in payload["cases"].items()
    ]
    steady = payload["steady_state"]
    speed.append(
        {
            "method": f"identify_file in a warm process ({steady['embedder']}, no start-up)",
            "queries/s": steady["per_s"],
            "median s": steady["median_s"],
        }
    )
    build = payload["reference_index"]
    speed.append(
        {
            "method": f"identify --save-index (once; {build['search']} search)",
            "median s": build["seconds"],
            "peak MiB": build["peak_rss_mb"],
        }
    )
    start = payload["startup"]
    starts = [
        {"command": name, "median s": case["median_s"], "peak MiB": case["peak_rss_mb"]}
        for name, case in start["cases"].items()
    ]
    starts.append({"command": "identify / import torch", "median s": start["ratio_to_import_torch"]})
    accuracy = [
        {
            "method": name,
            "unseen species: genus per species": interval_cell(score["unseen_genus"], "per_species"),
            "micro": interval_cell(score["unseen_genus"], "micro"),
            "test: species per species": interval_cell(score["test_species"], "per_species"),
            "test micro": interval_cell(score["test_species"], "micro"),
        }
        for name, score in payload["accuracy"].items()
    ]
    columns = ["method", "unseen species: genus per species", "micro", "test: species per species", "test micro"]
    return {
        f"whole commands, {payload['data']['references']} train rows, {n} queries": format_table(
            speed, ["method", "queries/s", "median s", "peak MiB", "x vsearch"]
        ),
        "start-up": format_table(starts, ["command", "median s", "peak MiB"]),
        "accuracy (bootstrap 95% intervals)": format_table(accuracy, columns),
        "targets (issue 42)": format_table(
            [{"target": k, "value": v} for k, v in payload["targets"].items()], ["target", "value"]
        ),
    }


def data_main(args: argparse.Namespace) -> dict[str, Any]:
    """The issue-42 set: every `train` row as the reference, every test / val / val_unseen / test_unseen row as a query
    (module docstring)."""
    device = setup(args)
    machine = machine_info(device)
    if shutil.which("vsearch") is None:
        raise SystemExit("vsearch is not installed (apt-get install vsearch)")
    reference, queries = issue_split(args.data)
    with tempfile.TemporaryDirectory(prefix="barcodemae-real-") as tmp:
        scratch = Path(tmp)
        model_path, model_description = model_folder(args, scratch)
        reference_file, query_file = write_split(reference, queries, scratch)
        database, labels = distinct_reference(reference, scratch / "distinct.fasta")
        build = build_saved_index(args, reference_file, model_path, scratch / "index")
        blast6 = scratch / "vsearch.b6"
        commands = {
            OURS: identify_command(
                str(query_file),
                "--index",
                str(scratch / "index"),
                "-o",
                str(scratch / "ours.tsv"),
                threads=args.threads,
            ),
            VSEARCH: [
                "vsearch",
                "--usearch_global",
                str(query_file),
                "--db",
                str(database),
                "--id",
                "0.5",
                "--threads",
                str(args.threads),
                "--blast6out",
                str(blast6),
                "--quiet",
            ],
        }
        times, peaks = whole_commands(args, commands)
        calls = {OURS: ours_calls(scratch / "ours.tsv"), VSEARCH: vsearch_calls(blast6, labels)}
        steady = steady_state(args, model_path, scratch / "index", query_file, len(queries))
        start = startup(args, scratch)
    accuracy = {name: scored(case_calls, queries) for name, case_calls in calls.items()}
    ratio = speed_ratio(times, OURS, VSEARCH)
    genus = {name: accuracy[name]["unseen_genus"]["per_species"] for name in calls}
    species = {name: accuracy[name]["test_species"]["per_species"] for name in calls}
    payload = {
        "model": model_description,
        "data": {
            "source": str(args.data),
            "references": len(reference),
            "distinct_references": len(labels),
            "queries": len(queries),
            "distinct_queries": len({r["dna_barcode"] for r in queries}),
            "queries_by_split": {split: sum(r["split"] == split for r in queries) for split in QUERY_SPLITS},
        },
        "reference_index": build,
        "cases": {name: summarize(values, len(queries)) for name, values in times.items()},
        "peak_rss_mb": peaks,
        "ratio": ratio,
        "steady_state": steady,
        "startup": start,
        "accuracy": accuracy,
        "targets": {
            "whole command x vsearch (paired median; >= 10)": ratio["paired_median"],
            "example queries / import torch (<= 2)": start["ratio_to_import_torch"],
            "unseen genus per species, ours - vsearch (>= +3)": genus[OURS] - genus[VSEARCH],
            "test species per species, ours - vsearch (>= -1)": species[OURS] - species[VSEARCH],
        },
    }
    return report(args, machine, payload, data_tables(payload))


# ------------------------------------------------------------------------------------------- stages
def import_identify() -> None:
    """A fresh Python importing the identify room (torch, transformers, barcodemae): a command's fixed start."""
    subprocess.run([sys.executable, "-c", "import barcodemae.identify"], check=True)


def stage_cases(
    args, model_path: Path, index_folder: Path, query_file: Path, query_seqs: list[str], scratch: Path
) -> tuple[dict, dict]:
    """``(fixed-cost stages, per-query stages)``, each a callable on the same saved index, model and queries
    (``query_seqs``: the barcodes of ``query_file``)."""
    embedder = load_embedder(model_path, args.device, batch_size=args.batch_size, precision=args.precision)
    index = ReferenceIndex.load(index_folder)
    embeddings = embedder(query_seqs)
    exact = exact_searcher(index.embeddings)
    fixed = {
        "Python start and imports (a subprocess)": import_identify,
        "loading the model": lambda: load_embedder(model_path, args.device),
        "loading the saved index (memory-mapped)": lambda: ReferenceIndex.load(index_folder),
    }
    per_query = {
        "embedding the queries": lambda: embedder(query_seqs),
        "exact cosine search, top 5": lambda: exact.search(embeddings, 5),
    }
    if ann_available():
        ann = AnnIndex.build(np.asarray(index.embeddings))
        per_query["approximate search (IVF, built beforehand), top 5"] = lambda: ann.search(embeddings, 5)
    output = scratch / "predictions.tsv"
    per_query["identify_file (read, clean, embed, search, flag, write the TSV)"] = lambda: identify_file(
        query_file, output, index, embedder, progress=False
    )
    return fixed, per_query


def stages_main(args: argparse.Namespace) -> dict[str, Any]:
    device = setup(args)
    machine = machine_info(device)
    reference, queries, description = real_split(args.data)
    every_query = [record for part in queries.values() for record in part]
    with tempfile.TemporaryDirectory(prefix="barcodemae-stages-") as tmp:
        scratch = Path(tmp)
        model_path, model_description = model_folder(args, scratch)
        reference_file, query_file = write_split(reference, every_query, scratch)
        embedder = load_embedder(model_path, args.device, batch_size=args.batch_size)
        start = time.perf_counter()
        index, _ = build_index(reference_file, embedder, str(model_path), progress=False)  # search as auto picks
        build_s = time.perf_counter() - start
        index.save(scratch / "index")
        fixed, per_query = stage_cases(
            args, model_path, scratch / "index", query_file, [r["dna_barcode"] for r in every_query], scratch
        )
        times = time_interleaved(fixed | per_query, args.repeats, args.warmup, device)
    n = len(every_query)
    stages = {name: summarize(values, n) for name, values in times.items()}
    for name in per_query:
        stages[name]["ms_per_query"] = 1000 * stages[name]["median_s"] / n
    payload = {
        "model": model_description,
        "data": {"source": str(args.data), "references": len(reference), "queries": n, "protocol": description},
        "reference_index_build_s": build_s,
        "stages": stages,
    }
    rows = [
        {"stage": name, "median s": s["median_s"], "ms a query": s.get("ms_per_query")} for name, s in stages.items()
    ]
    rows.append({"stage": f"building the reference index (once; {index.search} search)", "median s": build_s})
    title = f"identify stages: {len(reference)} train references, {n} queries ({model_description})"
    return report(args, machine, payload, {title: format_table(rows, ["stage", "median s", "ms a query"])})


if __name__ == "__main__":
    main()
