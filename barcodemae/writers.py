"""Identification outputs: the TSV (every rank with its confidence, the committed rank, the neighbours as evidence),
vsearch's SINTAX tabbed format, and the one-screen summary of outcomes per order.

**TSV** (:func:`tsv_columns`): ``query_id``, ``assigned_rank`` (the deepest rank the answer commits to: species,
genus, family, order or empty), ``outcome`` (:data:`barcodemae.assign.OUTCOMES`), then ``predicted_<rank>`` and
``<rank>_confidence`` for order, family, genus, species (and ``bin`` where the reference has BINs), the best
neighbour's ``cosine_similarity`` (and ``alignment_identity`` with ``--rerank align``), ``novel_species`` (true when
the answer stops above species), then for each of the ``top_k`` neighbours its id, labels and similarities.

**SINTAX** (``--format sintax``), as ``vsearch --sintax --tabbedout`` writes it: the query id; the answer at every
rank the reference has, as ``k:…(0.98),p:…,c:…,o:…,f:…,g:…,s:…`` with each confidence in parentheses (two decimals,
underscores for spaces); the strand (``+``: embeddings do not depend on it); the same answer cut at the confidence
cut-off, without confidences.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from barcodemae.assign import OUTCOMES, LabelColumn, cutoffs
from barcodemae.formats import SINTAX_LETTERS, sintax_name

OUTPUT_FORMATS = ("tsv", "sintax")
RANK_COLUMNS = ("order", "family", "genus", "species", "dna_bin")  # the TSV's predicted_* and neighbour ranks


def column_name(rank: str) -> str:
    return "bin" if rank == "dna_bin" else rank


@dataclass
class Answers:
    """One chunk's answers: per rank the labels and confidences, the committed rank, the neighbours and their
    similarity columns (``scores``: name -> ``(n, top_k)``)."""

    ids: list[str]
    labels: dict[str, list[str]]
    confidences: dict[str, np.ndarray]
    assigned: list[str]
    neighbors: np.ndarray
    scores: dict[str, np.ndarray]


@dataclass
class Layout:
    """Which ranks the reference has (so which columns are written) and how many neighbours."""

    ranks: tuple[str, ...]
    top_k: int
    score_names: tuple[str, ...]

    def tsv_columns(self) -> list[str]:
        columns = ["query_id", "assigned_rank", "outcome"]
        for rank in self.answer_ranks:
            columns += [f"predicted_{column_name(rank)}", f"{column_name(rank)}_confidence"]
        columns += [*self.score_names, "novel_species"]
        for position in range(1, self.top_k + 1):
            names = ["id", *map(column_name, self.neighbor_ranks), *self.score_names]
            columns += [f"neighbor_{position}_{name}" for name in names]
        return columns

    @property
    def answer_ranks(self) -> list[str]:
        """order..species always, the BIN where the reference has one."""
        return [rank for rank in RANK_COLUMNS if rank != "dna_bin" or rank in self.ranks]

    @property
    def neighbor_ranks(self) -> list[str]:
        """The ranks the reference has."""
        return [rank for rank in RANK_COLUMNS if rank in self.ranks]


class TsvWriter:
    def __init__(self, handle: TextIO, layout: Layout, reference_ids: list[str], reference_labels: dict) -> None:
        self.reference_ids, self.score_names = reference_ids, layout.score_names
        self.answer_ranks = layout.answer_ranks
        self.neighbor_labels = [LabelColumn.encode(reference_labels[rank]) for rank in layout.neighbor_ranks]
        self.writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        self.writer.writerow(layout.tsv_columns())

    def write(self, answers: Answers) -> None:
        # Python lists and strings per chunk: formatting a float is the same, indexing a list is faster
        answer_columns = [
            (answers.labels[rank], [f"{c:.4f}" for c in answers.confidences[rank].tolist()])
            for rank in self.answer_ranks
        ]
        scores = [[[f"{v:.6f}" for v in row] for row in answers.scores[name].tolist()] for name in self.score_names]
        neighbor_labels = [column.take(answers.neighbors).tolist() for column in self.neighbor_labels]
        for row, (query_id, neighbors) in enumerate(zip(answers.ids, answers.neighbors.tolist())):
            assigned = answers.assigned[row]
            line = [query_id, assigned, OUTCOMES[assigned]]
            for labels, confidences in answer_columns:
                line += [labels[row], confidences[row]]
            line += [name_scores[row][0] for name_scores in scores]
            line.append("false" if assigned == "species" else "true")
            for position, neighbor in enumerate(neighbors):
                line.append(self.reference_ids[neighbor])
                line += [labels[row][position] for labels in neighbor_labels]
                line += [name_scores[row][position] for name_scores in scores]
            self.writer.writerow(line)


class SintaxWriter:
    def __init__(self, handle: TextIO, layout: Layout, min_confidence: float | dict[str, float] | None) -> None:
        self.handle, self.cut = handle, cutoffs(min_confidence)
        self.ranks = [rank for rank in SINTAX_LETTERS if rank in layout.ranks]

    def write(self, answers: Answers) -> None:
        for row, query_id in enumerate(answers.ids):
            full, kept = [], []
            for rank in self.ranks:
                name = answers.labels[rank][row]
                if not name:
                    break
                taxon = f"{SINTAX_LETTERS[rank]}:{sintax_name(name)}"
                confidence = answers.confidences[rank][row]
                full.append(f"{taxon}({confidence:.2f})")
                if confidence >= self.cut.get(rank, self.cut["order"]):
                    kept.append(taxon)
            self.handle.write(f"{query_id}\t{','.join(full)}\t+\t{','.join(kept)}\n")


@dataclass
class OutcomeSummary:
    """Queries per outcome and predicted order (``(none)``: unassigned or no order), for the one-screen summary."""

    per_order: dict[str, Counter] = field(default_factory=dict)

    def add(self, answers: Answers) -> None:
        orders = answers.labels.get("order", [""] * len(answers.ids))
        for order, assigned in zip(orders, answers.assigned):
            self.per_order.setdefault((assigned and order) or "(none)", Counter())[OUTCOMES[assigned]] += 1

    def format(self, max_orders: int = 12) -> str:
        """A table: one row per predicted order (the largest first, the rest pooled), one column per outcome."""
        ordered = sorted(self.per_order.items(), key=lambda item: -item[1].total())
        if len(ordered) > max_orders:
            rest = sum((counter for _, counter in ordered[max_orders - 1 :]), Counter())
            ordered = [*ordered[: max_orders - 1], (f"({len(ordered) - max_orders + 1} other orders)", rest)]
        rows = [*ordered, ("all queries", sum((counter for _, counter in ordered), Counter()))]
        outcomes = list(OUTCOMES.values())
        width = max(len(name) for name, _ in rows)
        lines = [f"{'order':<{width}}  " + "  ".join(f"{name:>13}" for name in outcomes)]
        lines += [f"{name:<{width}}  " + "  ".join(f"{counter[o]:>13}" for o in outcomes) for name, counter in rows]
        return "\n".join(lines)


__all__ = ["Answers", "Layout", "OUTPUT_FORMATS", "OutcomeSummary", "SintaxWriter", "TsvWriter"]
