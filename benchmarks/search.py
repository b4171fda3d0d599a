"""Approximate nearest-neighbour libraries for the reference index, against exact cosine search (the baseline).

Data: ``--references`` simulated barcodes (`barcodemae.simulate`, 658 bp, 0-3 bases lost at each end; a tree of
genera with 10 species of 23 specimens) embedded by the shipped identification model (``kmer_bag`` readout, 256
dimensions); the queries are ``--queries`` held-out specimens: a new specimen of a reference species (3 of each
are held out) or a specimen of a species absent from the reference (the last species of every genus), half each.

Cases: exact (`barcodemae.search.CosineIndex`, torch matmul with its bf16 first pass where the CPU has bf16 matmul
in hardware; and with ``precision="fp32"``, one float32 pass), faiss ``IndexHNSWFlat`` and ``IndexIVFFlat`` (inner
product on unit vectors), hnswlib (``space="ip"``) and usearch (``metric="ip"``, float32), each with
``M=32, ef_construction=128``, searched at several ``ef`` (``nprobe`` for IVF). Measured: build seconds, peak extra
memory of the build (RSS rise, see benchmarks/common.py), queries/s (all queries in one call, ``--threads``
threads, medians of interleaved rounds) and recall@1 against exact search, where an approximate top-1 counts as
right when it is the exact top-1 or as similar (within 1e-5: exact duplicates of a barcode tie).

With ``--data BARCODES.tsv.gz`` the references are instead all unique real `train` barcodes and the queries all
unique `val_unseen` and `val` barcodes (the val protocol's rows; embeddings cached in ``--cache-dir``).
`barcodemae.search.AnnIndex` with its defaults (the index ``barcodemae identify --search ann`` builds) is one case.

``--ann-probes 32 64 128`` adds `AnnIndex` searched with other numbers of probes (the same index), ``--libraries
AnnIndex`` keeps only the cases whose name holds that (exact search is always the baseline). The exact kernels are
`CosineIndex` (bf16 first pass, and float32 only) and `FlatIndex` (faiss ``IndexFlatIP``); ``--k`` neighbours are
asked of every case (identify asks 10), recall@1 is scored on the first.

**Where approximate search pays** (``--sizes N [N ...]``, with ``--data``): for each N, a random N of the distinct
real references (seed 0), searched by `barcodemae.search.exact_searcher` (the exact kernel identify uses) and by
`AnnIndex` with its defaults (and ``--ann-probes``): queries/s (all queries in one call, interleaved rounds), recall@1
of each approximate case, and the smallest N from which the default approximate index is faster at recall@1 >= 0.99
(``suggested_ann_min_references``; `barcodemae.search.ANN_MIN_REFERENCES` is set from it).

Run: ``OMP_NUM_THREADS=2 python -m benchmarks.search --threads 2 --references 200000`` and
``OMP_NUM_THREADS=2 python -m benchmarks.search --threads 2 --data ../shared/data/barcodes.tsv.gz --output
benchmarks/results/search_real.json``; ``OMP_NUM_THREADS=2 python -m benchmarks.search --threads 2 --k 10 --data
../shared/data/barcodes.tsv.gz --sizes 1000 2000 5000 10000 15000 20000 30000 46029 --ann-probes 16 32 --output
benchmarks/results/search_sizes.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from barcodemae.embedding import DEFAULT_MODEL, Embedder, cached_embeddings
from barcodemae.search import AnnIndex, CosineIndex, FlatIndex, ann_available, exact_searcher, l2_normalize_array
from barcodemae.simulate import simulate_barcodes
from benchmarks.common import base_parser, format_table, machine_info, peak_memory_mb, report, setup, time_interleaved

M, EF_CONSTRUCTION = 32, 128


def simulated_split(references: int, queries: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(reference records, query records)`` as described in the module docstring: genera of 10 species of 23
    specimens; 20 specimens of species 1-9 are references, the other 3 and all of species 10 are query candidates."""
    species, specimens, kept = 10, 23, 20
    genera = max(1, -(-references // ((species - 1) * kept)))
    records = simulate_barcodes(1, 1, genera, species, specimens, length=658, seed=seed, end_variation=3)
    novel = {r["species"] for r in records[species * specimens - 1 :: species * specimens]}
    held = {i for i, r in enumerate(records) if r["species"] in novel or i % specimens >= kept}
    reference = [r for i, r in enumerate(records) if i not in held][:references]
    rng = np.random.default_rng(seed)
    known = sorted(i for i in held if records[i]["species"] not in novel)
    unseen = sorted(i for i in held if records[i]["species"] in novel)
    chosen = [
        *rng.choice(known, queries // 2, replace=False),
        *rng.choice(unseen, queries - queries // 2, replace=False),
    ]
    return reference, [records[i] for i in sorted(chosen)]


def recall_at_1(found: np.ndarray, found_sims: np.ndarray, exact: np.ndarray, exact_sims: np.ndarray) -> float:
    """Share of queries whose top-1 is the exact top-1 or ties with it (cosine within 1e-5)."""
    right = (found[:, 0] == exact[:, 0]) | (found_sims[:, 0] >= exact_sims[:, 0] - 1e-5)
    return float(np.mean(right))


def real_embeddings(data: str, embedder: Embedder, cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """``(train references, val_unseen + val queries)`` embeddings of the val protocol's unique barcodes."""
    from barcodemae.evaluation.protocol import load_records, prepare_protocol

    protocol = prepare_protocol(load_records(data)[0], seen_split="val", unseen_split="val_unseen")
    refs = cached_embeddings(embedder, protocol.train.sequences, cache_dir)
    queries = [cached_embeddings(embedder, part.sequences, cache_dir) for part in (protocol.unseen, protocol.test)]
    return refs, np.concatenate(queries)


def simulated_embeddings(embedder: Embedder, references: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    reference, query = simulated_split(references, queries)
    return embedder([r["dna_barcode"] for r in reference]), embedder([r["dna_barcode"] for r in query])


def builders(threads: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """Index builders by library (those installed)."""
    out: dict[str, Callable[[np.ndarray], Any]] = {"barcodemae AnnIndex (defaults)": AnnIndex.build}
    if importlib.util.find_spec("faiss"):
        import faiss

        faiss.omp_set_num_threads(threads)

        def faiss_hnsw(x: np.ndarray):
            index = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = EF_CONSTRUCTION
            index.add(x)
            return index

        def faiss_ivf(x: np.ndarray):
            lists = int(4 * np.sqrt(len(x)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.add(x)
            return index

        out["faiss HNSWFlat"], out["faiss IVFFlat"] = faiss_hnsw, faiss_ivf
    if importlib.util.find_spec("hnswlib"):
        import hnswlib

        def hnsw(x: np.ndarray):
            index = hnswlib.Index(space="ip", dim=x.shape[1])
            index.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
            index.add_items(x, num_threads=threads)
            return index

        out["hnswlib"] = hnsw
    if importlib.util.find_spec("usearch"):
        from usearch.index import Index

        def usearch(x: np.ndarray):
            index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=M, expansion_add=EF_CONSTRUCTION)
            index.add(np.arange(len(x)), x, threads=threads)
            return index

        out["usearch"] = usearch
    return out


def searcher(name: str, index: Any, ef: int, k: int, threads: int) -> Callable[[np.ndarray], tuple]:
    """A function ``queries -> (indices, similarities)`` for one library at search effort ``ef`` (set per call:
    the cases share one index)."""

    def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if name.startswith("barcodemae"):
            index.probes = ef
            return index.search(q, k)
        if name == "faiss HNSWFlat":
            index.hnsw.efSearch = ef
            return index.search(q, k)[::-1]
        if name == "faiss IVFFlat":
            index.nprobe = ef
            return index.search(q, k)[::-1]
        if name == "hnswlib":
            index.set_ef(ef)
            labels, distances = index.knn_query(q, k=k, num_threads=threads)
            return labels.astype(np.int64), 1 - distances
        index.expansion_search = ef
        matches = index.search(q, k, threads=threads)
        return matches.keys.astype(np.int64), 1 - matches.distances

    return search


def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0], "search")
    parser.add_argument("--references", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128], help="HNSW ef / IVF nprobe")
    parser.add_argument("--ann-probes", type=int, nargs="*", default=[], help="also AnnIndex with these probes")
    parser.add_argument("--libraries", nargs="*", help="only the cases whose name holds one of these (e.g. AnnIndex)")
    parser.add_argument("--data", help="real barcodes (BIOSCAN-style table with split column) instead of simulated")
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    parser.add_argument("--k", type=int, default=1, help="neighbours asked of every case (identify asks 10)")
    parser.add_argument("--sizes", type=int, nargs="+", help="reference sizes: where approximate search pays")
    parser.set_defaults(repeats=3)
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup(args)
    machine = machine_info(device)
    embedder = Embedder.from_pretrained(DEFAULT_MODEL, "cpu")
    if args.data:
        refs, query = real_embeddings(args.data, embedder, args.cache_dir)
    else:
        refs, query = simulated_embeddings(embedder, *((2000, 50) if args.tiny else (args.references, args.queries)))
    refs, query = l2_normalize_array(refs), l2_normalize_array(query)
    if args.sizes:
        return sizes_main(args, machine, device, refs, query)
    k = args.k
    exact, float32 = CosineIndex(refs), CosineIndex(refs, precision="fp32")
    exact_idx, exact_sims = exact.search(query, k=k)
    cases: dict[str, Callable[[], object]] = {
        "exact (CosineIndex)": lambda: exact.search(query, k=k),
        "exact, float32 pass only": lambda: float32.search(query, k=k),
    }
    rows: dict[str, dict[str, Any]] = {
        "exact (CosineIndex)": {"library": "exact", "bf16_first_pass": exact.bf16, "recall@1": 1.0},
        "exact, float32 pass only": {
            "library": "exact",
            "bf16_first_pass": False,
            "recall@1": recall_at_1(*float32.search(query, k=k), exact_idx, exact_sims),
        },
    }
    if ann_available():
        flat = FlatIndex(refs)
        cases["exact (FlatIndex: faiss IndexFlatIP)"] = lambda: flat.search(query, k=k)
        rows["exact (FlatIndex: faiss IndexFlatIP)"] = {
            "library": "exact",
            "recall@1": recall_at_1(*flat.search(query, k=k), exact_idx, exact_sims),
        }
    for name, build in builders(args.threads).items():
        if args.libraries and not any(part in name for part in args.libraries):
            continue
        built: list = []
        start = time.perf_counter()
        memory = peak_memory_mb(lambda build=build, built=built: built.append(build(refs)), device)
        seconds = time.perf_counter() - start
        ann = name.startswith("barcodemae")  # its defaults first, then --ann-probes
        for i, ef in enumerate([built[0].probes, *args.ann_probes] if ann else args.ef):
            search = searcher(name, built[0], ef, k, args.threads)
            found, sims = search(query)
            if ann:
                case = name if i == 0 else f"AnnIndex probes={ef}"
            else:
                case = f"{name} ef={ef}" if "IVF" not in name else f"{name} nprobe={ef}"
            cases[case] = lambda search=search: search(query)
            rows[case] = {
                "library": name,
                "build_s": seconds,
                "build_peak_mb": memory,
                "recall@1": recall_at_1(found, sims, exact_idx, exact_sims),
            }
    times = time_interleaved(cases, args.repeats, args.warmup, device)
    baseline = np.median(times["exact (CosineIndex)"])
    for case, values in times.items():
        rows[case].update(queries_per_s=len(query) / np.median(values), speed_vs_exact=baseline / np.median(values))
    payload = {
        "data": {
            "source": args.data or "simulated",
            "references": len(refs),
            "queries": len(query),
            "dimensions": refs.shape[1],
            "k": k,
        },
        "hnsw": {"M": M, "ef_construction": EF_CONSTRUCTION},
        "cases": rows,
    }
    columns = ["case", "build_s", "build_peak_mb", "queries_per_s", "speed_vs_exact", "recall@1"]
    table = format_table([{"case": case, **row} for case, row in rows.items()], columns)
    return report(args, machine, payload, {f"search, {len(refs)} references, {len(query)} queries": table})


def sizes_main(args, machine, device, refs: np.ndarray, query: np.ndarray) -> dict[str, Any]:
    """Exact (identify's kernel) vs `AnnIndex` at each of ``--sizes`` distinct references (module docstring)."""
    rng = np.random.default_rng(0)
    sizes = [300, 1000] if args.tiny else sorted(n for n in args.sizes if n <= len(refs))
    points = []
    for n in sizes:
        subset = refs[np.sort(rng.choice(len(refs), size=n, replace=False))]
        exact, ann = exact_searcher(subset), AnnIndex.build(subset)
        exact_idx, exact_sims = exact.search(query, k=args.k)
        cases: dict[str, Callable[[], object]] = {"exact": lambda exact=exact: exact.search(query, k=args.k)}
        default = ann.probes
        point: dict[str, Any] = {"references": n, "exact_kernel": type(exact).__name__, "lists": len(ann.centroids)}
        point["default_probes"] = default
        for probes in dict.fromkeys([default, *args.ann_probes]):
            name = f"ann probes={probes}"

            def search(ann=ann, probes=probes):
                ann.probes = probes
                return ann.search(query, k=args.k)

            cases[name] = search
            point[f"{name} recall@1"] = recall_at_1(*search(), exact_idx, exact_sims)
        times = time_interleaved(cases, args.repeats, args.warmup, device)
        for name, values in times.items():
            point[f"{name} queries/s"] = len(query) / float(np.median(values))
        points.append(point)
        print(point, flush=True)
    pays = [
        p["references"]
        for p in points
        if p[f"ann probes={p['default_probes']} recall@1"] >= 0.99
        and p[f"ann probes={p['default_probes']} queries/s"] > p["exact queries/s"]
    ]
    payload = {
        "data": {"source": args.data or "simulated", "queries": len(query), "k": args.k},
        "points": points,
        "suggested_ann_min_references": min(pays) if pays else None,
    }
    columns = list(dict.fromkeys(key for point in points for key in point))
    table = format_table(points, columns)
    return report(args, machine, payload, {f"exact vs approximate by reference size ({len(query)} queries)": table})


if __name__ == "__main__":
    main()
