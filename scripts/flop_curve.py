"""Issue 13's curves: the val protocol's genus 1-NN (per species and micro, bootstrap intervals) and the effective
rank of the frozen encoder along equal-FLOP pretraining runs (scripts/equal_flops.sh), one point per checkpoint, with
the training FLOPs it had. Embeddings are cached as in scripts/val_protocol.py and points already in --output are
kept, so re-running adds only new ones. Each scored readout keeps which queries it got right (``hits``: packed
bits, base64, in the protocol's query order, fingerprinted by ``Partition.sha256``), so ``--paired`` computes each MAE
point's difference from the same budget's MLM at matching FLOPs (paired bootstrap) from the results file alone: the
two runs may be trained and scored at different times, their checkpoints long gone.
``--minus-row READOUT ROW`` pairs the same points with a row scripts/val_protocol.py scored and stored (the
random-init twin, say).

python scripts/flop_curve.py --data ../shared/data/barcodes.tsv.gz --runs runs/eqflop-0.25-mlm \
    runs/eqflop-0.25-mae-light --every 4 --readout mean kmer_bag --output results/equal-flops.json
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from val_protocol import predictions_folder, readout_embeddings, stored_predictions

from barcodemae.embedding import Embedder
from barcodemae.evaluation.clustering import effective_rank
from barcodemae.evaluation.metrics import correct_predictions, harmonic_mean, identification_score
from barcodemae.evaluation.paired import paired_hit_difference, seed_pooled_difference
from barcodemae.evaluation.probe import linear_probe
from barcodemae.evaluation.protocol import Protocol, load_records, prepare_protocol
from barcodemae.io import atomic_text
from barcodemae.plots import EqualFlopsRun, plot_flop_curves
from barcodemae.search import nearest_neighbors

METADATA = ("protocol", "queries_sha256")  # the results file's keys that are not runs


def scored_runs(results: dict) -> dict:
    """The results file's runs (run name -> step -> point), without its metadata."""
    return {name: points for name, points in results.items() if name not in METADATA}


def checkpoints(run: Path, every: int, at_tflop: list[float] | None = None) -> list[Path]:
    """Every ``every``-th checkpoint of a run, always including the last; with ``at_tflop``, instead the checkpoint
    nearest each of those training FLOPs (a point every recipe has, for an equal-FLOP comparison)."""
    found = sorted(run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    if at_tflop and found:
        return sorted({min(found, key=lambda path: abs(training_tflop(path) - target)) for target in at_tflop})
    return [path for i, path in enumerate(found, start=1) if i % every == 0 or i == len(found)]


def training_tflop(checkpoint: Path) -> float:
    """Training FLOPs (TFLOP) up to this checkpoint: steps × the FLOPs per step that scripts/equal_flops.sh recorded
    for the run's recipe and batch (``budget.json``)."""
    budget = json.loads((checkpoint.parent / "budget.json").read_text())
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    return step * budget["tflop_per_step_at_batch_64"] * budget["batch"] / 64


def frozen_embeddings(embedder: Embedder, readout: str, parts: list, cache_dir: str) -> list[np.ndarray]:
    """Embeddings of each partition under ``readout`` (cached); ``mean_whitened`` is an analysis readout: the mean
    readout PCA-whitened with the statistics of the first partition (the references; no labels)."""
    if readout != "mean_whitened":
        return [readout_embeddings(embedder, readout, part.sequences, cache_dir) for part in parts]
    embeddings = [readout_embeddings(embedder, "mean", part.sequences, cache_dir) for part in parts]
    center = embeddings[0].mean(0)
    _, singular, basis = np.linalg.svd(embeddings[0] - center, full_matrices=False)
    whitening = basis.T / (singular / np.sqrt(len(embeddings[0])) + 1e-6)
    return [((emb - center) @ whitening).astype(np.float32) for emb in embeddings]


def nearest_genus(ref_emb: np.ndarray, query_emb: np.ndarray, refs) -> list:
    """The genus of each query's nearest reference."""
    nearest, _ = nearest_neighbors(query_emb, ref_emb)
    return [refs.genus[i] for i in nearest[:, 0]]


def pack_hits(correct: np.ndarray) -> str:
    """Which queries were right, as packed bits in base64 (~1 KB for the val protocol's 6,078 queries)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_hits(packed: str, n_queries: int) -> np.ndarray:
    """The 0/1 correctness array :func:`pack_hits` packed."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))
    return bits[:n_queries].astype(np.float64)


def score(embedder: Embedder, readout: str, protocol: Protocol, cache_dir: str, species_probe: bool) -> dict:
    """Genus 1-NN of the unseen queries (per species, micro, intervals), the queries' effective rank and, with
    ``species_probe``, the species linear probe (train -> val) and the harmonic means with the genus numbers."""
    refs, queries, val = protocol.train, protocol.unseen, protocol.test
    parts = [refs, queries, val] if species_probe else [refs, queries]
    ref_emb, query_emb, *val_emb = frozen_embeddings(embedder, readout, parts, cache_dir)
    predicted = nearest_genus(ref_emb, query_emb, refs)
    genus = identification_score(predicted, queries.genus, queries.species)
    hits = pack_hits(correct_predictions(predicted, queries.genus))
    result = {**genus.as_dict(), "effective_rank": effective_rank(query_emb), "hits": hits}
    if species_probe:
        probe = linear_probe(ref_emb, refs.species, val_emb[0], val.species)
        result["species_probe_val"] = probe
        result["harmonic_mean_micro"] = harmonic_mean(probe["accuracy"], genus.micro)
        result["harmonic_mean_per_species"] = harmonic_mean(probe["accuracy"], genus.per_species)
    return result


def readouts_to_score(point: dict, readouts: list[str], species_probe: bool) -> list[str]:
    """The ``readouts`` a point still lacks (scored ones are kept), lacks the hits of (scored before hits were kept:
    scored again, so that it can be paired) or lacks the species probe of when asked."""
    return [
        r for r in readouts if "hits" not in point.get(r, {}) or (species_probe and "species_probe_val" not in point[r])
    ]


def baseline_run(run: Path) -> Path:
    """The MLM run of the same budget, size and seed (``eqflop-BUDGET-mlm[-seedN]``, ``-paper-mlm`` for the paper's
    size), the baseline of the paired differences; from the run's name alone, so a run whose folder is gone still
    pairs."""
    name = EqualFlopsRun.parse(run.name)
    if name is None:
        raise ValueError(f"{run.name}: not a run of scripts/equal_flops.sh (eqflop-BUDGET-RECIPE[-seedN])")
    size = "paper-" if name.recipe.startswith("paper-") else ""
    return run.parent / f"eqflop-{name.budget}-{size}mlm{f'-seed{name.seed}' if name.seed else ''}"


def points_to_pair(run: Path, stored: dict, every: int, at_tflop: list[float] | None) -> dict:
    """The stored points of ``run`` at the checkpoints ``every`` / ``at_tflop`` choose; all of them when its
    checkpoints are gone (a run trained and scored earlier)."""
    chosen = {path.name.split("-")[1] for path in checkpoints(run, every, at_tflop)}
    return {step: point for step, point in stored.items() if step in chosen or not chosen}


def paired_against_mlm(run: Path, points: dict, results: dict, readout: str, protocol: Protocol) -> None:
    """For each of ``points`` (steps of a non-MLM run), genus 1-NN minus the MLM's at the nearest scored training
    FLOPs (within 10%), per species and micro with paired bootstrap intervals, stored as ``minus_mlm``; computed
    from the stored ``hits`` of both points (points scored before hits were kept are left as they are)."""
    baseline = baseline_run(run)
    scored = {step: p for step, p in results.get(baseline.name, {}).items() if "hits" in p.get(readout, {})}
    if baseline == run or not scored:
        return
    n_queries, species = len(protocol.unseen.species), protocol.unseen.species
    for step, point in points.items():
        if "hits" not in point.get(readout, {}):
            continue
        tflop = point["training_tflop"]
        mlm_step = min(scored, key=lambda other: abs(scored[other]["training_tflop"] - tflop))
        if abs(scored[mlm_step]["training_tflop"] - tflop) > 0.1 * tflop:
            continue
        ours, theirs = (unpack_hits(p[readout]["hits"], n_queries) for p in (point, scored[mlm_step]))
        difference = paired_hit_difference(ours, theirs, species)
        point[readout]["minus_mlm"] = {"mlm_step": int(mlm_step), **difference}
        print(f"{run.name} step {step} {readout}: {difference['per_species']:+.2f} per species vs MLM", flush=True)


def paired_against_row(run: Path, points: dict, readout: str, row: str, protocol: Protocol, cache_dir: str) -> None:
    """For each of ``points``, genus 1-NN under ``readout`` minus that of a row scripts/val_protocol.py scored on the
    same queries (e.g. the random-init twin), from the point's stored hits and the row's stored predictions (paired
    bootstrap), stored under ``minus_rows``."""
    queries = protocol.unseen
    predicted = stored_predictions(predictions_folder(cache_dir, queries.name), row, queries)
    theirs = correct_predictions(predicted, queries.genus)
    for step, point in points.items():
        if "hits" not in point.get(readout, {}):
            continue
        difference = paired_hit_difference(unpack_hits(point[readout]["hits"], len(queries)), theirs, queries.species)
        point[readout].setdefault("minus_rows", {})[row] = difference
        print(f"{run.name} step {step} {readout}: {difference['per_species']:+.2f} per species vs {row}", flush=True)


def seed_table(results: dict, readout: str = "mean", species: Sequence | None = None) -> str:
    """Each recipe run with two or more seeds against the MLM of the same budget and seed, at the final points:
    genus 1-NN per species of both, their difference (with its paired 95% interval, queries resampled, where the
    point was paired), and over the seeds the mean and standard deviation of each (what training noise moves,
    which the bootstrap over queries does not see); a seed scored under bf16 says so. Given the queries'
    ``species``, also the difference pooled over the seeds whose points both stored hits, with its 95% interval
    from the seeds × species variance components and how many standard errors it is."""
    runs = scored_runs(results)
    families: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        name = EqualFlopsRun.parse(run)
        if name and not name.recipe.endswith("mlm"):
            families.setdefault((name.budget, name.recipe), []).append(run)
    lines = [
        f"| budget (PFLOP) | recipe | seed | {readout}: recipe per species | MLM per species | recipe − MLM [95%] |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for (budget, recipe), members in families.items():
        rows = []
        for run in sorted(members, key=lambda member: EqualFlopsRun.parse(member).seed):
            ours = final_point(runs[run]).get(readout, {})
            theirs = final_point(runs.get(baseline_run(Path(run)).name, {})).get(readout, {})
            if ours and theirs:
                seed = f"{EqualFlopsRun.parse(run).seed}" + (f" ({ours['precision']})" if "precision" in ours else "")
                hits = (ours["hits"], theirs["hits"]) if "hits" in ours and "hits" in theirs else None
                rows.append((seed, ours["per_species"], theirs["per_species"], ours.get("minus_mlm"), hits))
        if len(rows) < 2:
            continue
        for seed, ours, theirs, paired, _ in rows:
            interval = "" if paired is None else " [{:+.1f}, {:+.1f}]".format(*paired["per_species_interval"])
            lines.append(
                f"| {budget} | {recipe} | {seed} | {ours:.2f} | {theirs:.2f} | {ours - theirs:+.2f}{interval} |"
            )
        values = np.array([[ours, theirs, ours - theirs] for _, ours, theirs, _, _ in rows])
        mean, sd = values.mean(0), values.std(0, ddof=1)
        cells = [f"{mean[0]:.2f} ± {sd[0]:.2f}", f"{mean[1]:.2f} ± {sd[1]:.2f}", f"{mean[2]:+.2f} ± {sd[2]:.2f}"]
        lines.append(f"| {budget} | {recipe} | mean ± SD of {len(rows)} | {' | '.join(cells)} |")
        with_hits = [(seed, hits) for seed, *_, hits in rows if hits is not None]
        if species is not None and len(with_hits) >= 2:
            lines.append(f"| {budget} | {recipe} | {pooled_cell(with_hits, species)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def pooled_cell(with_hits: list[tuple[str, tuple[str, str]]], species: Sequence) -> str:
    """The seed-pooled difference of :func:`seed_table` as its row's last cells."""
    ours, theirs = ([unpack_hits(hits[i], len(species)) for _, hits in with_hits] for i in (0, 1))
    pooled = seed_pooled_difference(ours, theirs, species)
    seeds = ", ".join(seed.split(" ")[0] for seed, _ in with_hits)
    low, high = pooled["per_species_interval"]
    errors = "" if pooled["standard_errors"] is None else f", {pooled['standard_errors']:.1f} SE"
    if pooled["standard_errors"] is not None and abs(pooled["standard_errors"]) < 2:
        needed = pooled["seeds_for_2_se"]
        errors += " (2 SE: no number of seeds)" if needed is None else f" (2 SE at ~{needed} seeds)"
    difference = f"{pooled['per_species']:+.2f} [{low:+.1f}, {high:+.1f}]{errors}"
    return f"pooled over seeds {seeds} (seeds × species) | | | {difference}"


def final_point(points: dict) -> dict:
    """A run's last scored point ({} for none)."""
    return points[max(points, key=int)] if points else {}


def scored_readouts(results: dict) -> list[str]:
    """Every readout some point was scored with, ``mean`` (the paper's) first: the table file is a function of the
    results file alone, whichever readouts this call scored."""
    found = {readout for points in scored_runs(results).values() for point in points.values() for readout in point}
    return sorted(found - {"training_tflop"}, key=lambda readout: (readout != "mean", readout))


def scored_points(results: dict) -> Iterator[tuple[str, str, str, str, dict]]:
    """Every scored (run, step, TFLOP, readout, score) of the results file, runs in file order, steps ascending."""
    for run, points in scored_runs(results).items():
        for step in sorted(points, key=int):
            point = points[step]
            for readout in sorted(set(point) - {"training_tflop"}):
                yield run.removeprefix("eqflop-"), step, f"{point['training_tflop']:.0f}", readout, point[readout]


def markdown_table(results: dict) -> str:
    """Every scored point: genus 1-NN per species [95%] and micro, effective rank, species probe, harmonic mean (per
    species) and the paired difference from the same budget's MLM."""
    lines = [
        "| run | step | TFLOP | readout | per species [95%] | micro | eff. rank | species probe | harmonic mean"
        " | − MLM per species [95%] |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run, step, tflop, readout, r in scored_points(results):
        low, high = r["per_species_interval"]
        probe = r.get("species_probe_val", {}).get("accuracy")
        mean = r.get("harmonic_mean_per_species")
        diff = r.get("minus_mlm")
        cells = [
            run,
            step,
            tflop,
            readout if "precision" not in r else f"{readout} ({r['precision']})",
            f"{r['per_species']:.2f} [{low:.1f}, {high:.1f}]",
            f"{r['micro']:.2f}",
            f"{r['effective_rank']:.1f}",
            "–" if probe is None else f"{probe:.2f}",
            "–" if mean is None else f"{mean:.2f}",
            "–" if diff is None else paired_cell(diff),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_cell(difference: dict, key: str = "per_species") -> str:
    """A paired difference and its 95% interval as a table cell: ``+1.92 [-1.6, +5.8]``."""
    return "{:+.2f} [{:+.1f}, {:+.1f}]".format(difference[key], *difference[f"{key}_interval"])


def row_table(results: dict) -> str:
    """Every point paired with a stored val protocol row (``--minus-row``): genus 1-NN per species and micro minus
    the row's, with paired 95% intervals ("" when none was)."""
    lines = [
        "| run | step | TFLOP | readout | − row | per species [95%] | micro [95%] |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for run, step, tflop, readout, r in scored_points(results):
        for row, d in r.get("minus_rows", {}).items():
            cells = [run, step, tflop, readout, f"`{row}`", paired_cell(d), paired_cell(d, "micro")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_results(path: Path, results: dict) -> None:
    """The results file, written whole or not at all."""
    with atomic_text(path) as handle:
        handle.write(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        required=True,
        help="folders runs/eqflop-BUDGET-RECIPE[-seedN]; one that is gone: --paired pairs the points it stored",
    )
    parser.add_argument("--every", type=int, default=4, help="score every N-th checkpoint (and the last)")
    parser.add_argument("--at-tflop", nargs="+", type=float, help="score the checkpoints nearest these TFLOP instead")
    parser.add_argument("--readout", nargs="+", default=["mean", "kmer_bag"], help="also mean_whitened (analysis)")
    parser.add_argument("--species-probe", action="store_true", help="also the species probe at each run's last point")
    parser.add_argument("--paired", action="store_true", help="at those checkpoints, paired differences from the MLM")
    parser.add_argument(
        "--minus-row",
        nargs=2,
        action="append",
        default=[],
        metavar=("READOUT", "ROW"),
        help="at those checkpoints, paired differences of READOUT from a row of scripts/val_protocol.py (its stored "
        "predictions, e.g. the random-init twin)",
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="embed under bf16 autocast (recorded per point)"
    )
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    parser.add_argument("--output", type=Path, default=Path("results/equal-flops.json"))
    parser.add_argument("--plot", type=Path, default=Path("results/equal-flops.png"))
    parser.add_argument("--table", type=Path, default=Path("results/equal-flops-table.md"), help="every point")
    args = parser.parse_args()

    protocol = prepare_protocol(load_records(args.data)[0], seen_split="val", unseen_split="val_unseen")
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    if results.setdefault("queries_sha256", protocol.unseen.sha256()) != protocol.unseen.sha256():
        raise SystemExit(f"{args.output} holds other val_unseen queries (or another order): use another --output")
    for run in args.runs:
        chosen = checkpoints(run, args.every, args.at_tflop)
        points = results.setdefault(run.name, {}) if chosen else {}
        for checkpoint in chosen:
            step = checkpoint.name.split("-")[1]
            point = points.setdefault(step, {"training_tflop": training_tflop(checkpoint)})
            probe = args.species_probe and checkpoint == chosen[-1]
            todo = readouts_to_score(point, args.readout, probe)
            if not todo:
                continue
            embedder = Embedder.from_pretrained(checkpoint, precision=args.precision)
            for readout in todo:
                started = time.perf_counter()
                point[readout] = score(embedder, readout, protocol, args.cache_dir, probe)
                if args.precision != "fp32":
                    point[readout]["precision"] = args.precision
                print(
                    f"{run.name} step {step} {readout:9s} {point[readout]['per_species']:.2f} per species, "
                    f"{point[readout]['micro']:.2f} micro ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            results["protocol"] = protocol.description
            write_results(args.output, results)
    if args.paired or args.minus_row:  # at the checkpoints chosen above
        for run in args.runs:
            points = points_to_pair(run, results.get(run.name, {}), args.every, args.at_tflop)
            for readout in args.readout if args.paired else []:
                paired_against_mlm(run, points, results, readout, protocol)
            for readout, row in args.minus_row:
                paired_against_row(run, points, readout, row, protocol, args.cache_dir)
        write_results(args.output, results)
    plot_flop_curves(scored_runs(results), args.plot)
    tables = (seed_table(results, readout, protocol.unseen.species) for readout in scored_readouts(results))
    seeds = "".join(f"\n{table}" for table in tables if table)
    with atomic_text(args.table) as handle:
        handle.write(markdown_table(results) + seeds + row_table(results))


if __name__ == "__main__":
    main()
