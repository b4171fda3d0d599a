"""The end-to-end run behind ``barcodemae evaluate``: models and baselines on a labelled table, one row each."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barcodemae.evaluation.classifier import finetuned_species_accuracy, is_classifier, load_classifier
from barcodemae.evaluation.protocol import Protocol, load_records, prepare_protocol
from barcodemae.evaluation.report import results_to_markdown
from barcodemae.evaluation.tasks import (
    DEFAULT_ROBUSTNESS_RATES,
    Stage,
    evaluate_embedder,
    evaluate_features,
    evaluate_predictor,
)
from barcodemae.io import atomic_text

BASELINES = ("random", "kmer", "vsearch")
KMER_SIZES = (4, 5, 6)


def model_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique row names: each folder's name, or ``parent/name`` (else the whole path) where names clash."""
    for depth in (1, 2):
        names = ["/".join(Path(path).parts[-depth:]) for path in paths]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


class Progress:
    """A bar on stderr over the rows of the results table (ETA from the rows done), its postfix naming the running
    stage; ``seconds`` holds each row's seconds per stage and in total, and a line reports each finished row."""

    def __init__(self, rows: int, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=rows, desc="evaluate", unit="row", disable=not enabled, dynamic_ncols=True)
        self.seconds: dict[str, dict[str, float]] = {}
        self._row, self._stage = "", ""
        self._since = self._row_start = time.perf_counter()

    def start(self, row: str) -> Stage:
        """Begin a row; returns the :data:`Stage` callback that times its stages."""
        self._row, self._stage, self.seconds[row] = row, "", {}
        self._since = self._row_start = time.perf_counter()
        return self._enter

    def _enter(self, stage: str) -> None:
        self._lap()
        self._stage = stage
        self.bar.set_postfix_str(f"{self._row}: {stage}")

    def _lap(self) -> None:
        now = time.perf_counter()
        if self._stage:
            self.seconds[self._row][self._stage] = round(now - self._since, 2)
        self._since = now

    def finish(self) -> None:
        self._lap()
        self._stage = ""
        self.seconds[self._row]["total"] = round(time.perf_counter() - self._row_start, 1)
        self.record(self._row, self.seconds[self._row])

    def record(self, row: str, seconds: dict[str, float]) -> None:
        """A finished row (timed here or in a worker process): its seconds, the bar and a line."""
        self.seconds[row] = seconds
        self.bar.update(1)
        if not self.bar.disable:
            self.bar.write(f"{row}: {format_seconds(seconds['total'])}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def format_seconds(seconds: float) -> str:
    """``42.0 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class _Job:
    """What every row of a run shares; embeddings are read from / written to ``cache_dir`` unless it is None."""

    protocol: Protocol
    seed: int
    rates: Sequence[float] | None
    robustness_queries: int | None
    tsne_sequences: list[str]
    cache_dir: str | Path | None = None
    tsne_inputs: dict[str, np.ndarray] = field(default_factory=dict)

    def encoder(self, name: str, embedder, stage: Stage) -> dict[str, Any]:
        from barcodemae.embedding import cached_embeddings

        def embed(sequences: Sequence[str], **corruption: float) -> np.ndarray:
            return cached_embeddings(embedder, sequences, self.cache_dir, **corruption)

        row = evaluate_embedder(
            embed,
            self.protocol,
            robustness_rates=self.rates,
            seed=self.seed,
            robustness_queries=self.robustness_queries,
            stage=stage,
        )
        if self.tsne_sequences:
            stage("t-SNE embeddings")
            self.tsne_inputs[name] = embed(self.tsne_sequences)
        return row

    def classifier(self, name: str, path: str, stage: Stage) -> dict[str, Any]:
        """A fine-tuned classifier's row: the protocol on its encoder, and its own species accuracy on ``test``."""
        from barcodemae.embedding import Embedder

        classifier, tokenizer = load_classifier(path)
        row = self.encoder(name, Embedder(classifier.base_model, tokenizer), stage)
        stage("fine-tuned species classifier")
        return {**finetuned_species_accuracy(classifier, tokenizer, self.protocol, self.seed), **row}


Row = Callable[[_Job, Stage], dict]  # one row of the results table, from what the rows share


def _model_row(path: str, name: str, job: _Job, stage: Stage) -> dict:
    from barcodemae.embedding import Embedder

    stage("loading the model")
    if is_classifier(path):
        return job.classifier(name, path, stage)
    return job.encoder(name, Embedder.from_pretrained(path), stage)


def _random_row(path: str, job: _Job, stage: Stage) -> dict:
    from barcodemae.embedding import Embedder, load_encoder

    stage("loading the model")
    model, tokenizer = load_encoder(path)
    torch.manual_seed(job.seed)
    random_model = type(model)(model.config).to(model.device).eval()
    return job.encoder("random init", Embedder(random_model, tokenizer), stage)


def _kmer_row(k: int, job: _Job, stage: Stage) -> dict:
    from barcodemae.baselines import kmer_count_features

    return evaluate_features(partial(kmer_count_features, k=k), job.protocol, seed=job.seed, stage=stage)


def _vsearch_row(job: _Job, stage: Stage) -> dict:
    from barcodemae.baselines import ToolNotFound, vsearch_genus_1nn

    try:
        return evaluate_predictor(vsearch_genus_1nn, job.protocol, stage=stage)
    except ToolNotFound as error:
        return {"skipped": str(error)}


def _row_jobs(models: Sequence[str], baselines: Sequence[str]) -> list[tuple[str, Row]]:
    """(row name, :data:`Row`) for each model, then each baseline; picklable, for worker processes."""
    rows: list[tuple[str, Row]] = [
        (name, partial(_model_row, path, name)) for path, name in zip(models, model_names(models))
    ]
    if "random" in baselines:
        rows.append(("random init", partial(_random_row, models[0])))
    if "kmer" in baselines:
        rows += [(f"k-mer {k} counts", partial(_kmer_row, k)) for k in KMER_SIZES]
    if "vsearch" in baselines:
        rows.append(("vsearch top hit", _vsearch_row))
    return rows


def _row_in_worker(row: Row, name: str, job: _Job, threads: int) -> tuple[dict, dict[str, float], np.ndarray | None]:
    """A row in a worker process on ``threads`` threads: the row, its seconds per stage, its t-SNE inputs."""
    torch.set_num_threads(threads)
    timer = Progress(1, enabled=False)
    result = row(job, timer.start(name))
    timer.finish()
    return result, timer.seconds[name], job.tsne_inputs.get(name)


def _run_rows(rows: list[tuple[str, Row]], job: _Job, bar: Progress, workers: int) -> dict[str, dict]:
    """Every row, one after another, or ``workers`` at a time in spawned processes that share the threads (UMAP
    is single-threaded when seeded, so on a 2-core CPU two rows cluster at once); results in row order."""
    if workers <= 1:
        results = {}
        for name, row in rows:
            results[name] = row(job, bar.start(name))
            bar.finish()
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // workers)
    bar.bar.set_postfix_str(f"{workers} rows at a time, {threads} thread(s) each")
    done: dict[str, tuple] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_row_in_worker, row, name, job, threads): name for name, row in rows}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            bar.record(futures[future], done[futures[future]][1])
    for name, _ in rows:
        if done[name][2] is not None:
            job.tsne_inputs[name] = done[name][2]
    return {name: done[name][0] for name, _ in rows}


def _budget_protocol(protocol: Protocol, max_seen_rows: int | None, max_unseen_rows: int | None, seed: int) -> None:
    """Subsample the partitions in place for a compute budget (noted in the description); None keeps all."""
    if max_seen_rows is not None:
        protocol.train = protocol.train.subsample(max_seen_rows, seed)
        protocol.test = protocol.test.subsample(max_seen_rows, seed)
        protocol.description += (
            f" Seen partitions subsampled to at most {max_seen_rows} de-duplicated rows each (seed {seed})."
        )
    if max_unseen_rows is not None:
        protocol.unseen = protocol.unseen.subsample(max_unseen_rows, seed)
        protocol.description += f" Unseen queries subsampled to at most {max_unseen_rows} (seed {seed})."


def run_evaluation(
    models: Sequence[str],
    data: str | Path,
    output: str | Path,
    *,
    plots: bool = True,
    baselines: Sequence[str] = (),
    unseen_split: str = "test_unseen",
    seen_split: str = "test",
    robustness_rates: Sequence[float] | None = DEFAULT_ROBUSTNESS_RATES,
    seed: int = 0,
    max_seen_rows: int | None = None,
    max_unseen_rows: int | None = None,
    robustness_queries: int | None = 2000,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    workers: int = 1,
) -> dict[str, dict]:
    """Evaluate encoder folders (and baselines: ``random`` init of the first model, ``kmer`` 4/5/6, ``vsearch``)
    on a labelled table; writes ``results.json`` (with the seconds each row and stage took), ``results.md`` and,
    with ``plots``, ``robustness.png`` and ``tsne.png`` (under-represented genera of the unseen partition) into
    ``output``. By default every partition is used whole; ``max_seen_rows`` caps the reference (train) and
    seen-test partitions for a compute budget, ``max_unseen_rows`` the unseen queries. ``progress``: a bar with
    ETA on stderr. A model folder holding a fine-tuned classifier (``barcodemae finetune``'s ``OUTPUT_DIR``) is
    evaluated on its encoder and gets its own species accuracy (:func:`finetuned_species_accuracy`). With
    ``cache_dir``, embeddings are cached per (model weights, exact partition sequences, corruption) there
    (``barcodemae.embedding.cached_embeddings``), so a re-run with other baselines re-embeds nothing. ``workers``
    > 1 evaluates that many rows at a time in worker processes (:func:`_run_rows`). Returns the results."""
    from barcodemae.plots import plot_robustness, plot_tsne, underrepresented_genera

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    start = time.perf_counter()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    records, cleaning = load_records(data)
    protocol = prepare_protocol(records, seen_split=seen_split, unseen_split=unseen_split, seed=seed)
    _budget_protocol(protocol, max_seen_rows, max_unseen_rows, seed)
    genera = set(underrepresented_genera(protocol.unseen.genus, seed=seed)) if plots else set()
    tsne_rows = [i for i, g in enumerate(protocol.unseen.genus) if g in genera]
    tsne_sequences = [protocol.unseen.sequences[i] for i in tsne_rows]
    job = _Job(protocol, seed, robustness_rates, robustness_queries, tsne_sequences, cache_dir)
    rows = _row_jobs(models, baselines)
    bar = Progress(len(rows), enabled=progress)
    results = _run_rows(rows, job, bar, workers)
    bar.close()
    seconds = {"total": round(time.perf_counter() - start, 1), "rows": bar.seconds}
    summary = {"protocol": protocol.description, "counts": protocol.counts, "cleaning": cleaning}
    summary["embedding_cache"] = None if cache_dir is None else str(cache_dir)
    summary.update(seconds=seconds, results=results)
    with atomic_text(output / "results.json") as handle:
        handle.write(json.dumps(summary, indent=2, default=str) + "\n")
    device = "a CUDA GPU" if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    took = f"{format_seconds(seconds['total'])} ({device})"
    text = f"# Evaluation of {data}\n\nProtocol: {protocol.description}\n\nTime: {took}.\n\n"
    with atomic_text(output / "results.md") as handle:
        handle.write(text + results_to_markdown(results))
    if plots:
        curves = {name: row["robustness"] for name, row in results.items() if row.get("robustness")}
        if curves:
            plot_robustness(curves, output / "robustness.png")
        if job.tsne_inputs:
            tsne_labels = [protocol.unseen.genus[i] for i in tsne_rows]
            by_model = {name: (emb, tsne_labels) for name, emb in job.tsne_inputs.items()}
            plot_tsne(by_model, output / "tsne.png", n_genera=len(genera), seed=seed)
    return results
