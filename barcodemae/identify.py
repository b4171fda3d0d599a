"""Identify query barcodes against a labelled reference: the pipeline read → embed → search → assign → write.

Queries are read and embedded in chunks by :func:`barcodemae.embedding.embed_chunks` (the cleaning rules and
errors of :mod:`barcodemae.data`, so inputs larger than memory work), searched against a
:class:`barcodemae.reference.ReferenceIndex` (exact, or approximate from
:data:`barcodemae.search.ANN_MIN_REFERENCES` distinct references on: :mod:`barcodemae.search`; identical query
barcodes of a chunk are embedded and searched once), answered at every rank with a confidence and committed to
the deepest rank the confidence allows (:mod:`barcodemae.assign`), and written as a TSV or in SINTAX's tabbed format
(:mod:`barcodemae.writers`), atomically. With ``rerank="align"`` the ``candidates`` nearest references by cosine
are re-ordered by alignment identity to the query (:func:`barcodemae.search.rerank_by_alignment`) for the listed
neighbours and ``alignment_identity`` columns are added; the answer comes from the cosine neighbours.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from typing import TextIO

import numpy as np

from barcodemae.assign import LEVELS, VOTE_NEIGHBORS, assigned_ranks, cutoffs, vote
from barcodemae.data import BarcodeRecord, CleaningReport
from barcodemae.embedding import DEFAULT_CHUNK, Embedder, KmerBagEmbedder, embed_chunks, iter_records
from barcodemae.io import atomic_text
from barcodemae.reference import ReferenceIndex
from barcodemae.search import Searcher, rerank_by_alignment
from barcodemae.writers import OUTPUT_FORMATS, Answers, Layout, OutcomeSummary, SintaxWriter, TsvWriter

RERANK_METHODS = ("none", "align")


def layout(index: ReferenceIndex, top_k: int, rerank: str = "none") -> Layout:
    """The output's columns for this index: its ranks, ``top_k`` neighbours, the similarity columns."""
    scores = ("cosine_similarity", "alignment_identity") if rerank == "align" else ("cosine_similarity",)
    return Layout(tuple(index.labels), min(top_k, len(index.ids)), scores)


def check_model(index: ReferenceIndex, embedder: Embedder | KmerBagEmbedder) -> None:
    """Refuse an embedder other than the one that embedded ``index`` (width, and what decides the embeddings:
    ``embedder.fingerprint()``)."""
    if index.embeddings.shape[1] != embedder.hidden_size:
        raise ValueError(
            f"the index holds {index.embeddings.shape[1]}-dimensional embeddings but the model gives "
            f"{embedder.hidden_size}; rebuild the index with this model"
        )
    if index.model_fingerprint and index.model_fingerprint != embedder.fingerprint():
        raise ValueError(
            f"the index was embedded by a model with other weights or config (fingerprint {index.model_fingerprint}) "
            f"than {index.model}'s now ({embedder.fingerprint()}); rebuild the index with this model"
        )


def identify_file(
    query_path: str | os.PathLike,
    output_path: str | os.PathLike,
    index: ReferenceIndex,
    embedder: Embedder | KmerBagEmbedder,
    *,
    top_k: int = 5,
    rerank: str = "none",
    candidates: int = 10,
    min_confidence: float | dict[str, float] | None = None,
    output_format: str = "tsv",
    strict: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[CleaningReport, OutcomeSummary]:
    """Write one answer per kept query (TSV: :meth:`barcodemae.writers.Layout.tsv_columns`, or SINTAX), atomically;
    return the cleaning report and the outcome counts. ``on_chunk`` hears how many answers each chunk wrote."""
    _check_options(index, top_k, rerank, candidates, min_confidence, output_format)
    check_model(index, embedder)
    columns = layout(index, top_k, rerank)
    search = index.searcher()
    report, summary = CleaningReport(), OutcomeSummary()
    with atomic_text(output_path) as handle:
        if output_format == "sintax":
            writer = SintaxWriter(handle, columns, min_confidence)
        else:
            writer = TsvWriter(handle, columns, index.ids, index.labels)
        records = iter_records(query_path, embedder, report, strict)
        for chunk, (embeddings, copies) in embed_chunks(records, _Once(embedder), chunk_size, progress):
            answers = answer(
                search, embeddings, chunk, index, columns.top_k, rerank, candidates, min_confidence, copies
            )
            summary.add(answers)
            writer.write(answers)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return report, summary


class _Once:
    """An embedder that embeds each distinct barcode of a call once: returns ``(distinct embeddings, row of each
    input in them)``."""

    def __init__(self, embedder: Embedder | KmerBagEmbedder) -> None:
        self.embedder = embedder

    def __call__(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows: dict[str, int] = {}
        copies = np.fromiter((rows.setdefault(s, len(rows)) for s in sequences), dtype=np.int64, count=len(sequences))
        return self.embedder(list(rows)), copies


def _check_options(
    index: ReferenceIndex,
    top_k: int,
    rerank: str,
    candidates: int,
    min_confidence: float | dict[str, float] | None,
    output_format: str,
) -> None:
    if top_k < 1 or candidates < 1:
        raise ValueError(f"--top-k and --candidates must be at least 1, not {top_k} and {candidates}")
    if rerank not in RERANK_METHODS:
        raise ValueError(f"--rerank must be one of {', '.join(RERANK_METHODS)}, not {rerank!r}")
    if rerank == "align" and index.sequences is None:
        raise ValueError("--rerank align needs the reference barcodes: load the index with its sequences")
    if not all(0.0 <= value <= 1.0 for value in cutoffs(min_confidence).values()):
        raise ValueError(f"--min-confidence must be in [0, 1], not {min_confidence}")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")


def answer(
    search: Searcher,
    embeddings: np.ndarray,
    chunk: list[BarcodeRecord],
    index: ReferenceIndex,
    top_k: int,
    rerank: str,
    candidates: int,
    min_confidence: float | dict[str, float] | None,
    copies: np.ndarray | None = None,
) -> Answers:
    """One chunk's answers: neighbours, per-rank votes and confidences, the committed rank. With ``copies`` the
    ``embeddings`` are those of the chunk's distinct barcodes and ``copies[i]`` is record ``i``'s row in them."""
    wanted = max(top_k, min(VOTE_NEIGHBORS, len(index.ids)), candidates if rerank == "align" else 0)
    neighbors, cosine = search.search(embeddings, k=wanted)
    if copies is not None:
        neighbors, cosine = neighbors[copies], cosine[copies]
    voters = min(VOTE_NEIGHBORS, neighbors.shape[1])
    votes = vote(neighbors[:, :voters], cosine[:, :voters], index.taxonomy)
    margin = cosine[:, 0] - index.species_thresholds(index.taxonomy.codes["genus"][neighbors[:, 0]])
    confidences = index.confidence.confidences(votes, margin)
    scores = {"cosine_similarity": cosine}
    if rerank == "align":
        sequences = [record.sequence for record in chunk]
        neighbors, cosine, identity = rerank_by_alignment(sequences, index.sequences, neighbors, cosine)
        scores = {"cosine_similarity": cosine, "alignment_identity": identity}
    taxonomy, empty = index.taxonomy, np.full(len(chunk), -1)
    labels = {rank: taxonomy.decode(rank, votes.codes.get(rank, empty)) for rank in LEVELS}
    confidences = {rank: confidences.get(rank, np.zeros(len(chunk))) for rank in LEVELS}
    return Answers(
        ids=[record.record_id for record in chunk],
        labels=labels,
        confidences=confidences,
        assigned=assigned_ranks(confidences, min_confidence),
        neighbors=neighbors[:, :top_k],
        scores={name: values[:, :top_k] for name, values in scores.items()},
    )


def read_predictions(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an identification TSV as dicts (for tests and scripts)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def print_report(name: str, report: CleaningReport, stream: TextIO) -> None:
    print(f"{name}: {report.summary()}", file=stream)


__all__ = ["answer", "check_model", "identify_file", "layout", "read_predictions"]
