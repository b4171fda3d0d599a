"""The pretraining data path at BIOSCAN-5M scale: simulated barcodes in a TSV → cleaned Arrow file
(`load_barcode_dataset`) → ``kmer_ids`` (`train.tokenize_kmers`, ``Dataset.map``, memory-mapped on disk) → batches
(`train.BarcodeCollator`), with the time and peak memory of each stage.

The tokenisation is also timed against the previous path (one tokenizer call per reading frame, k per barcode) on
the same rows, interleaved: that ratio is the number to read.

    python -m benchmarks.data_path --rows 2000000 --threads 2
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import torch

from barcodemae.data import load_barcode_dataset
from barcodemae.simulate import BIOSCAN_COLUMNS, simulate_barcodes
from benchmarks.common import (
    base_parser,
    format_table,
    machine_info,
    peak_memory_mb,
    report,
    setup,
    speed_ratio,
    summarize,
    time_interleaved,
)
from tokenization_barcodemae import BarcodeMAETokenizer
from train import BarcodeCollator, tokenize_kmers

CHUNK_SPECIES = 480  # species per simulated chunk (4 orders x 4 families x 6 genera x 5 species)


def write_simulated_tsv(path: Path, rows: int) -> None:
    """``rows`` simulated barcodes (chunks of 480 species from different seeds, 0-3 bp end variation)."""
    per_species = max(1, min(200, -(-rows // CHUNK_SPECIES)))
    written = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(BIOSCAN_COLUMNS)
        for seed in range(10**6):
            chunk = simulate_barcodes(4, 4, 6, 5, per_species, seed=seed, end_variation=3)
            for record in chunk[: rows - written]:
                writer.writerow(
                    [f"C{seed}-{record['processid']}" if c == "processid" else record[c] for c in BIOSCAN_COLUMNS]
                )
            written += min(len(chunk), rows - written)
            if written >= rows:
                return


def timed(stage, device) -> tuple[object, float, float]:
    """``(result, seconds, peak extra MiB)`` of one call of ``stage``."""
    box = {}

    def run():
        started = time.perf_counter()
        box["result"] = stage()
        box["seconds"] = time.perf_counter() - started

    memory = peak_memory_mb(run, device)
    return box["result"], box["seconds"], memory


def _stage(seconds: float, rows: int, peak_extra_mb: float | None = None) -> dict[str, float | None]:
    return {"seconds": seconds, "rows_per_s": rows / seconds, "peak_extra_mb": peak_extra_mb}


def per_frame_calls(tokenizer: BarcodeMAETokenizer, sequences: list[str]) -> list[list[list[int]]]:
    """The previous path: one tokenizer call per reading frame."""
    frames = [tokenizer([s[f:] for s in sequences], truncation=True)["input_ids"] for f in range(tokenizer.k_mer)]
    return [list(row) for row in zip(*frames)]


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], "data_path")
    parser.add_argument("--rows", type=int, default=2_000_000, help="simulated barcodes")
    parser.add_argument("--num-proc", type=int, default=2, help="processes for Dataset.map")
    parser.add_argument("--ratio-rows", type=int, default=5000, help="rows for the tokenisation ratio")
    parser.add_argument("--batches", type=int, default=200, help="collated batches of 64 timed")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.ratio_rows, args.batches, args.repeats = 3000, 300, 5, 1
    device = setup(args)
    machine = machine_info(device)
    tokenizer = BarcodeMAETokenizer(k_mer=6)
    with tempfile.TemporaryDirectory() as folder:
        tsv = Path(folder) / "barcodes.tsv"
        started = time.perf_counter()
        write_simulated_tsv(tsv, args.rows)
        simulate_s = time.perf_counter() - started
        (dataset, cleaning), clean_s, clean_mb = timed(lambda: load_barcode_dataset(tsv, cache_dir=folder), device)
        kmers, tokenize_s, tokenize_mb = timed(lambda: tokenize_kmers(dataset, tokenizer, args.num_proc), device)
        collator = BarcodeCollator(tokenizer, "mae", 0.5, seed=0)
        loader = torch.utils.data.DataLoader(kmers, batch_size=64, shuffle=True, collate_fn=collator)
        _, batches_s, _ = timed(lambda: [batch for _, batch in zip(range(args.batches), loader)], device)
        arrow_mb = sum(Path(f["filename"]).stat().st_size for f in kmers.cache_files) / 2**20
        sample = dataset.select(range(min(args.ratio_rows, len(dataset))))["dna_barcode"]
        times = time_interleaved(
            {
                "overlapping_kmer_ids (one pass)": lambda: tokenizer.overlapping_kmer_ids(sample),
                "tokenizer call per frame (previous)": lambda: per_frame_calls(tokenizer, sample),
            },
            args.repeats,
            args.warmup,
            device,
        )
    rows = len(dataset)
    stages = {
        "simulate + write TSV (setup)": _stage(simulate_s, rows),
        "clean to Arrow (load_barcode_dataset)": _stage(clean_s, rows, clean_mb),
        f"kmer_ids (tokenize_kmers, num_proc {args.num_proc})": _stage(tokenize_s, rows, tokenize_mb),
        f"{args.batches} collated MAE batches of 64": _stage(batches_s, args.batches * 64),
    }
    payload = {
        "rows": rows,
        "cleaning": cleaning.to_dict(),
        "kmer_ids_arrow_mb": arrow_mb,
        "stages": stages,
        "tokenisation": {name: summarize(t, len(sample)) for name, t in times.items()},
        "ratio": speed_ratio(times, "overlapping_kmer_ids (one pass)", "tokenizer call per frame (previous)"),
    }
    tables = {
        f"data path, {rows:,} barcodes": format_table(
            [{"stage": name, **values} for name, values in stages.items()],
            ["stage", "seconds", "rows_per_s", "peak_extra_mb"],
        ),
        "tokenisation of every reading frame": format_table(
            [{"case": name, **r} for name, r in payload["tokenisation"].items()], ["case", "per_s", "median_s"]
        )
        + f"\n\nratio (one pass / per frame): {payload['ratio']['ratio_of_medians']:.1f}x",
    }
    return report(args, machine, payload, tables)


if __name__ == "__main__":
    main()
