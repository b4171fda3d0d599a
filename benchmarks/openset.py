"""Open-set identification on real data: ``barcodemae identify`` against the field's tools, scored with IDTAXA's
measures on the `barcodemae.openset` protocol (``val`` partitions: known species, novel species of known genera,
novel genera of known families).

Methods (``--methods``, comma-separated), each timed as one whole run (wall seconds, and CPU seconds of its processes):

* ``ours``: ``barcodemae identify --reference reference.tsv queries.fasta -o OUT.tsv --quiet --threads N`` (a
  subprocess: Python start, model loading, reference embedding and calibration, queries), once per ``--model``
  (default: the command's own default model). Scored at the command's own commitment (``assigned_rank``) and at the
  cut-off, swept over its confidence columns, with the best three-group mean on val;
* ``sintax``: ``vsearch --sintax --sintax_cutoff 0.8 --randseed 1`` (`barcodemae.baselines.vsearch_sintax`, its
  SINTAX database written from the reference lineages), scored at cut-off 0.8 and at the best cut-off on val;
* ``bold``: the top ``vsearch --usearch_global --id 0.5`` hit (the best identity among ``--max-accepts`` accepted
  hits) committing as BOLD's identity cuts allow: species ≥ 97%, genus ≥ 95%, family ≥ 90%, order ≥ 85%;
* ``tophit``: the same top hit, always committing to its species (the same vsearch run as ``bold``, timed once).

A method that fails (a tool missing, an identify without the open-set columns) is reported with its error and
skipped. The best cut-offs are chosen on the queries they are scored on, so those rows are optimistic; the fixed
rows (ours at its own cut-off, SINTAX at 0.8, BOLD cuts) are not.

Writes ``OUT/openset.json`` (every number, the protocol's counts, the held-out genera, the command) and
``OUT/openset.md`` (the report). The protocol's files (reference TSV, query FASTA, truth TSV, ours' outputs) go to
``--work`` when given, else to a temporary folder removed at the end: they hold real data, never commit them.

Run: ``python -m benchmarks.openset --data ../shared/data/barcodes.tsv.gz --out results/openset --threads 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from barcodemae.assign import COMMIT_RANKS
from barcodemae.baselines import (
    BOLD_IDENTITY_CUTS,
    bold_rank,
    lineage_down_to,
    vsearch_sintax,
    vsearch_top_hits,
)
from barcodemae.embedding import default_model_path
from barcodemae.evaluation.protocol import load_records
from barcodemae.io import atomic_text
from barcodemae.openset import (
    GROUPS,
    RANK_CUTOFF_GRID,
    OpenSetSplit,
    build_openset,
    depth_diagnosis,
    read_ranked_predictions,
    score_answers,
    sweep_cutoffs,
    write_openset,
)
from benchmarks.common import format_table, machine_info, write_json

METHODS = ("ours", "sintax", "bold", "tophit")
SINTAX_CUTOFF = 0.8
LINEAGE_RANKS = ("phylum", "class", *COMMIT_RANKS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="BIOSCAN-style table with a split column")
    parser.add_argument("--out", type=Path, required=True, help="folder for openset.json and openset.md")
    parser.add_argument("--model", nargs="+", action="extend", help="encoder folders for ours (default: identify's)")
    parser.add_argument("--seed", type=int, default=0, help="held-out genera and bootstrap seed")
    parser.add_argument("--work", type=Path, help="keep the protocol's files here (default: a temporary folder)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=1, help="threads of vsearch and of identify (torch)")
    parser.add_argument("--min-confidence", type=float, help="passed to identify (default: its own)")
    parser.add_argument("--max-accepts", type=int, default=10, help="vsearch --maxaccepts of the top-hit search")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {unknown}, choose from {', '.join(METHODS)}")
    return args


def _timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """``fn()`` and its wall seconds and the CPU seconds (user + system) of the child processes it waited for
    (vsearch, identify): on a shared machine the CPU seconds vary less than the wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result, {"wall_s": wall, "child_cpu_s": cpu}


def _lineages(split: OpenSetSplit) -> list[dict[str, str]]:
    return [{rank: str(r.get(rank) or "").strip() for rank in LINEAGE_RANKS} for r in split.reference]


def _by_id(split: OpenSetSplit, values: list) -> dict[str, Any]:
    return {q.query_id: value for q, value in zip(split.queries, values)}


# ------------------------------------------------------------------------------------------- methods
def run_ours(
    args: argparse.Namespace, split: OpenSetSplit, paths: Mapping[str, Path], model: str | None, index: int
) -> dict:
    output = paths["queries"].parent / f"ours-{index}.tsv"
    command = [sys.executable, "-m", "barcodemae.cli", "identify", "--reference", str(paths["reference"])]
    command += [str(paths["queries"]), "-o", str(output), "--quiet", "--threads", str(args.threads)]
    command += ["--model", model] if model else []
    command += ["--min-confidence", str(args.min_confidence)] if args.min_confidence is not None else []
    completed, timing = _timed(lambda: subprocess.run(command, capture_output=True, text=True))
    if completed.returncode != 0:
        raise RuntimeError(f"identify exited {completed.returncode}: {completed.stderr.strip()[-2000:]}")
    ranked = read_ranked_predictions(output)

    def answers_at(cutoff: Any) -> dict[str, dict[str, str]]:
        return {query: answer.at_cutoff(cutoff) for query, answer in ranked.items()}

    sweep = sweep_cutoffs(answers_at, split.queries)
    best = sweep["best_cutoff"]
    own = f"--min-confidence {args.min_confidence}" if args.min_confidence is not None else "its own cut-off"
    name = f"ours ({model or Path(default_model_path()).name})"
    return {
        **timing,
        "how": shlex.join(["barcodemae", *command[3:]]),
        "sweep": sweep,
        "rank_sweep": sweep_cutoffs(answers_at, split.queries, RANK_CUTOFF_GRID),
        "depth": depth_diagnosis(ranked, split.queries),
        "rows": {
            f"{name}, {own}": score_answers({q: a.committed() for q, a in ranked.items()}, split.queries, args.seed),
            f"{name}, best cut-off on val ({best})": score_answers(
                {q: a.at_cutoff(best) for q, a in ranked.items()}, split.queries, args.seed
            ),
        },
    }


def run_sintax(args: argparse.Namespace, split: OpenSetSplit) -> dict:
    predictions, timing = _timed(
        lambda: vsearch_sintax(
            [q.sequence for q in split.queries],
            [r["dna_barcode"] for r in split.reference],
            _lineages(split),
            cutoff=SINTAX_CUTOFF,
            threads=args.threads,
        )
    )
    by_id = _by_id(split, predictions)

    def answers(cutoff: float) -> dict[str, dict[str, str]]:
        return {q: {} if p is None else p.committed(cutoff) for q, p in by_id.items()}

    sweep = sweep_cutoffs(answers, split.queries)
    best = sweep["best_cutoff"]
    return {
        **timing,
        "how": f"vsearch --sintax queries --db reference --sintax_cutoff {SINTAX_CUTOFF} --randseed 1 "
        f"--threads {args.threads}",
        "sweep": sweep,
        "rows": {
            f"SINTAX, cut-off {SINTAX_CUTOFF}": score_answers(answers(SINTAX_CUTOFF), split.queries, args.seed),
            f"SINTAX, best cut-off on val ({best})": score_answers(answers(best), split.queries, args.seed),
        },
    }


def run_top_hit(args: argparse.Namespace, split: OpenSetSplit, methods: list[str]) -> dict[str, dict]:
    hits, timing = _timed(
        lambda: vsearch_top_hits(
            [q.sequence for q in split.queries],
            [r["dna_barcode"] for r in split.reference],
            threads=args.threads,
            max_accepts=args.max_accepts,
        )
    )
    lineages = _lineages(split)
    by_id = _by_id(split, hits)
    how = (
        f"vsearch --usearch_global queries --db reference --id 0.5 --maxaccepts {args.max_accepts} --maxrejects 32 "
        f"--maxhits 1 --threads {args.threads}"
    )
    cuts = "/".join(f"{cut:g}" for _, cut in BOLD_IDENTITY_CUTS)
    rules = {
        "bold": (
            f"vsearch top hit + BOLD cuts ({cuts}%)",
            lambda hit: lineage_down_to(lineages[hit[0]], bold_rank(hit[1])),
        ),
        "tophit": ("vsearch top hit, always species", lambda hit: lineage_down_to(lineages[hit[0]], "species")),
    }
    results = {}
    for method in methods:
        name, rule = rules[method]
        answers = {q: {} if hit is None else rule(hit) for q, hit in by_id.items()}
        shared = " (one vsearch run shared by bold and tophit)" if len(methods) > 1 else ""
        results[method] = {
            **timing,
            "how": how + shared,
            "rows": {name: score_answers(answers, split.queries, args.seed)},
        }
    return results


def run_methods(args: argparse.Namespace, split: OpenSetSplit, paths: Mapping[str, Path]) -> dict[str, dict]:
    """Every requested method's result, or ``{"error": ...}`` for one that failed (printed, not raised)."""
    jobs: list[tuple[str, Callable[[], dict[str, dict]]]] = []
    if "ours" in args.methods:
        for index, model in enumerate(args.model or [None]):
            key = f"ours:{model}" if model else "ours"
            jobs.append(
                (key, lambda model=model, index=index, key=key: {key: run_ours(args, split, paths, model, index)})
            )
    if "sintax" in args.methods:
        jobs.append(("sintax", lambda: {"sintax": run_sintax(args, split)}))
    top = [m for m in ("bold", "tophit") if m in args.methods]
    if top:
        jobs.append(("+".join(top), lambda: run_top_hit(args, split, top)))
    results: dict[str, dict] = {}
    for key, job in jobs:
        print(f"running {key} ...", file=sys.stderr, flush=True)
        try:
            results.update(job())
        except Exception as error:  # noqa: BLE001 - a failing method is reported and skipped
            traceback.print_exc()
            print(f"{key}: skipped ({type(error).__name__}: {error})", file=sys.stderr, flush=True)
            results[key] = {"error": f"{type(error).__name__}: {error}"}
    return results


# ------------------------------------------------------------------------------------------- report
def _cell(score: Mapping[str, Any] | None, field: str = "per_species") -> str:
    if score is None:
        return "–"
    low, high = score[f"{field}_interval"]
    return f"{score[field]:.1f} [{low:.1f}, {high:.1f}]"


def _rate(row: Mapping[str, Any], group: str, outcome: str, field: str = "per_species") -> str:
    score = row["groups"][group].get(outcome)
    return "–" if score is None else f"{score[field]:.1f}"


def accuracy_table(results: Mapping[str, dict]) -> str:
    rows = []
    for method in results.values():
        for name, row in method.get("rows", {}).items():
            groups = row["groups"]
            rows.append(
                {
                    "method": name,
                    **{group.replace("_", " "): _cell(groups[group].get("correct")) for group in GROUPS},
                    "mean": "–"
                    if row["mean_per_species_correct"] is None
                    else f"{row['mean_per_species_correct']:.1f}",
                    "micro (known / novel sp. / novel gen.)": " / ".join(
                        _rate(row, group, "correct", "micro") for group in GROUPS
                    ),
                    "wall s (CPU s)": f"{method['wall_s']:.0f} ({method['child_cpu_s']:.0f})",
                }
            )
    columns = ["method", *(g.replace("_", " ") for g in GROUPS), "mean", "micro (known / novel sp. / novel gen.)"]
    return format_table(rows, [*columns, "wall s (CPU s)"])


def error_table(results: Mapping[str, dict]) -> str:
    rows = []
    for method in results.values():
        for name, row in method.get("rows", {}).items():
            cells = {
                group.replace("_", " "): " / ".join(
                    _rate(row, group, outcome)
                    for outcome in ("over_classification", "misclassification", "under_classification")
                )
                for group in GROUPS
            }
            rows.append({"method": name, **cells})
    return format_table(rows, ["method", *(g.replace("_", " ") for g in GROUPS)])


def sweep_table(results: Mapping[str, dict]) -> str:
    swept = {key: method["sweep"]["points"] for key, method in results.items() if "sweep" in method}
    if not swept:
        return ""
    rows = []
    for index, point in enumerate(next(iter(swept.values()))):
        rows.append({"cut-off": f"{point['cutoff']:.2f}", **{k: f"{p[index]['mean']:.1f}" for k, p in swept.items()}})
    return format_table(rows, ["cut-off", *swept])


def rank_sweep_table(results: Mapping[str, dict], best: int = 5) -> str:
    """The per-rank cut-offs of the highest three-group means, per model of ours."""
    rows = []
    for key, method in results.items():
        points = sorted(method.get("rank_sweep", {}).get("points", []), key=lambda p: -(p["mean"] or -1.0))
        for point in points[:best]:
            cut = point["cutoff"]
            rows.append(
                {
                    "run": key,
                    "species / genus / family": f"{cut['species']:g} / {cut['genus']:g} / {cut['family']:g}",
                    **{g.replace("_", " "): f"{point[g]:.1f}" for g in GROUPS},
                    "mean": f"{point['mean']:.1f}",
                }
            )
    columns = ["run", "species / genus / family", *(g.replace("_", " ") for g in GROUPS), "mean"]
    return format_table(rows, columns) if rows else ""


def depth_table(results: Mapping[str, dict]) -> str:
    """Per model of ours: the correct rates with a perfect depth decision, and how its confidences separate the
    groups (ROC AUC)."""
    rows = []
    for key, method in results.items():
        if "depth" not in method:
            continue
        ceiling, separation = method["depth"]["ceiling"], method["depth"]["separation"]
        rows.append(
            {
                "run": key,
                **{g.replace("_", " "): f"{ceiling[g]:.1f}" for g in GROUPS},
                "mean": f"{ceiling['mean']:.1f}",
                **{name: f"{value:.3f}" for name, value in separation.items()},
            }
        )
    if not rows:
        return ""
    return format_table(rows, list(rows[0]))


def markdown(payload: Mapping[str, Any]) -> str:
    protocol, machine, results = payload["protocol"], payload["machine"], payload["results"]
    scored, species = protocol["scored_queries"], protocol["scored_species"]
    counts = ", ".join(f"{g.replace('_', ' ')} {scored[g]:,} queries of {species[g]:,} species" for g in GROUPS)
    errors = [f"- `{key}`: not run: {method['error']}" for key, method in results.items() if "error" in method]
    lines = [
        "# Open-set identification on val: ours against the field's tools",
        "",
        "What is measured: each method answers every query at the deepest rank it commits to; the answer is right "
        "when it gives the species of a known species, the genus and no species of a novel species (a `val_unseen` "
        "species of a genus in the reference), the family and no genus of a novel genus (a `val_unseen` species of "
        "a genus withheld from the reference). Outcomes as in IDTAXA (Murali et al. 2018): correct, "
        "over-classification (deeper than the reference allows), misclassification (a committed rank wrong), "
        "under-classification (right but stopping short). Rates in percent, averaged over the query species (each "
        "species weighs the same) with bootstrap 95% intervals over species; micro (each query weighs the same) "
        "beside. Protocol and rules: `barcodemae/openset.py`; methods: `benchmarks/openset.py`.",
        "",
        f"Data: `{payload['data']['source']}` ({payload['data']['cleaning']['n_kept']:,} records kept after cleaning). "
        f"Reference: {protocol['references']:,} `train` rows ({protocol['reference_genera']:,} genera, "
        f"{protocol['reference_species']:,} species) without the {protocol['held_out_genera']} held-out genera "
        f"(half of `val_unseen`'s, seed {protocol['seed']}). Scored: {counts}. Excluded: "
        f"{protocol['excluded'] or 'none'}.",
        "",
        f"Hardware: {machine['cpu']}, {machine['usable_cpus']} usable cores of {machine['logical_cpus']}, load "
        f"average {machine['load_average_at_start'][0]:.2f} at the start; {payload['threads']} thread(s) per method. "
        "Wall seconds are whole runs (ours: the whole command, reference embedding and calibration included); CPU "
        "seconds are those of the tool's processes (vsearch, identify), steadier than wall seconds on a shared "
        "machine.",
        "",
        "## Correct (per species, 95% interval), the three-group mean and micro",
        "",
        accuracy_table(results),
        "",
        "## Errors per group (per species): over-classification / misclassification / under-classification",
        "",
        error_table(results),
        "",
        "The best cut-offs (one for every rank) are chosen on the same queries: optimistic. Ours' own row uses "
        "identify's default cut-offs (per rank, or `--min-confidence`): where those were tuned on this protocol, it "
        "is as optimistic; SINTAX at 0.8 and the BOLD cuts are the field's fixed settings.",
    ]
    if sweep := sweep_table(results):
        lines += ["", "## Three-group mean of per-species correct against the cut-off", "", sweep]
    if ranked := rank_sweep_table(results):
        lines += [
            "",
            "## Per-rank cut-offs with the highest three-group means (order 0.05; how identify's defaults are chosen)",
            "",
            ranked,
        ]
    if depth := depth_table(results):
        lines += [
            "",
            "## Where ours loses: the depth decision",
            "",
            "Per-species correct had every answer stopped at its query's target rank (the same predictions, a "
            "perfect choice of depth), and how well the confidences tell the groups apart (ROC AUC, queries pooled).",
            "",
            depth,
        ]
    if errors:
        lines += ["", "## Methods not run", "", *errors]
    lines += ["", "## How each method ran", ""]
    lines += [f"- `{key}`: `{method['how']}`" for key, method in results.items() if "how" in method]
    lines += ["", "Reproduce:", "", f"```\n{payload['command']}\n```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    machine = machine_info(torch.device("cpu"))
    records, cleaning = load_records(args.data)
    split = build_openset(records, seed=args.seed)
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="barcodemae-openset-")))
        paths = write_openset(split, work)
        results = run_methods(args, split, paths)
    payload = {
        "command": shlex.join(["python", "-m", "benchmarks.openset", *argv]),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "threads": args.threads,
        "data": {"source": str(args.data), "cleaning": cleaning},
        "protocol": {**split.summary(), "held_out_genus_names": split.held_out_genera},
        "results": results,
    }
    write_json(args.out / "openset.json", payload)
    with atomic_text(args.out / "openset.md") as handle:
        handle.write(markdown(payload))
    print(markdown(payload))
    print(f"wrote {args.out / 'openset.json'} and {args.out / 'openset.md'}", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
