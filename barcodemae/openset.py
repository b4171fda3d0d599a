"""Open-set identification on the ``val`` partitions: answer at the deepest rank the reference supports.

A biodiversity lab wants the species for a barcode of a known species, the genus (and no species) for a species
absent from the reference, and the family (and no genus) for a genus absent from the reference. This module builds
that test from BIOSCAN-style records and scores any method's answers with IDTAXA's measures (Murali et al. 2018).

**Protocol** (:func:`build_openset`, seeded, default seed 0), on ``train``, ``val`` and ``val_unseen`` only:

* held-out genera: a seeded random half (rounded down) of the genera that occur in ``val_unseen``;
* reference: every ``train`` row except those of held-out genera (with ``deduplicate``, rows repeating an earlier
  row's barcode and whole lineage are kept once);
* queries, each partition de-duplicated on the barcode (first occurrence kept, with ``deduplicate``):
  ``val_unseen`` rows whose genus is in the reference → ``novel_species``; the others (held-out genera, or a genus
  absent from ``train``) → ``novel_genus``; ``val`` rows whose species is in the reference → ``known_species``.
  ``val`` rows of held-out genera are left out (their species are absent from the reference, so they would be
  novel species drawn from other genera than ``val_unseen``'s), as are ``val`` rows of species absent from the
  reference and rows without the labels their group is defined by; all are counted.

The labels of ``val_unseen`` rows serve only as the scoring truth: the reference holds ``train`` rows only, and the
one use beyond scoring is the choice of which genera to withhold (the genus names occurring in ``val_unseen``).
:func:`write_openset` writes the reference as a BIOSCAN-style TSV, the queries as a FASTA (ids = ``processid``,
no labels) and the truth as a TSV.

**Scoring** (:func:`outcome`, :func:`score_answers`). An answer is a dict of committed ranks (rank → taxon) from
``order`` down to its deepest committed rank; ``{}`` commits to nothing. The target rank is ``species`` for a known
species, ``genus`` for a novel species and ``family`` for a novel genus. Each query gets exactly one outcome:

* ``misclassification``: a committed rank at or above the target differs from the truth (ranks the truth has no
  label for are not checked);
* ``over_classification``: otherwise, it commits deeper than the target (a species for a novel species, a genus
  for a novel genus: a taxon the reference cannot hold);
* ``correct``: otherwise, it commits exactly to the target;
* ``under_classification``: otherwise (right as far as it goes, stopping above the target).

Each outcome's rate is reported per species (the mean over the query species, each weighing the same: the
headline, as one mosquito species is a third of ``val_unseen``) and micro, in percent with bootstrap 95% intervals
(:func:`barcodemae.evaluation.metrics.identification_score`: species resampled, queries resampled), per group; plus the
three-group mean of the per-species correct rates. A query whose truth lacks its target rank (or its species,
needed for per-species averaging), or whose target taxon is absent from the reference (a held-out genus that was
its family's only genus in ``train``: no family can be right), is excluded and counted by reason.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from barcodemae.assign import COMMIT_RANKS, cutoffs
from barcodemae.baselines import lineage_down_to, write_fasta_sequences
from barcodemae.evaluation.metrics import identification_score
from barcodemae.evaluation.paired import species_differences
from barcodemae.evaluation.protocol import label
from barcodemae.io import atomic_paths, atomic_text

GROUPS = ("known_species", "novel_species", "novel_genus")
TARGET_RANK = {"known_species": "species", "novel_species": "genus", "novel_genus": "family"}
OUTCOMES = ("correct", "over_classification", "misclassification", "under_classification")
TRUTH_COLUMNS = ("query_id", "group", *COMMIT_RANKS, "excluded")
CONFIDENCE_COLUMNS = tuple(f"{rank}_confidence" for rank in COMMIT_RANKS)
PREDICTED_COLUMNS = tuple(f"predicted_{rank}" for rank in COMMIT_RANKS)
RANKED_COLUMNS = ("query_id", "assigned_rank", *PREDICTED_COLUMNS, *CONFIDENCE_COLUMNS)
DEFAULT_CUTOFFS = tuple(round(value, 2) for value in np.arange(0.0, 1.0001, 0.05))
# per-rank cut-offs tried for identify's defaults (order fixed at its default)
RANK_CUTOFF_GRID = tuple(
    {"order": 0.05, "family": family, "genus": genus, "species": species}
    for species in (0.3, 0.5, 0.7)
    for genus in (0.1, 0.2, 0.3, 0.5)
    for family in (0.05, 0.1, 0.2, 0.3)
)
Answer = Mapping[str, str]


# ------------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Query:
    """One query: its id (the record's ``processid``), group, barcode, true lineage (order..species, None where
    unlabelled) and why it is left out of scoring (None when it is scored)."""

    query_id: str
    group: str
    sequence: str
    truth: dict[str, str | None]
    excluded: str | None = None


@dataclass
class OpenSetSplit:
    """The reference records, the queries, the held-out genera and what was counted while building them."""

    reference: list[dict]
    queries: list[Query]
    held_out_genera: list[str]
    seed: int
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts for reports: references, held-out genera, queries and query species per group (scored ones), and
        excluded queries by reason."""
        scored = [q for q in self.queries if q.excluded is None]
        return {
            "seed": self.seed,
            "references": len(self.reference),
            "reference_genera": len({label(r.get("genus")) for r in self.reference} - {None}),
            "reference_species": len({label(r.get("species")) for r in self.reference} - {None}),
            "held_out_genera": len(self.held_out_genera),
            "queries": dict(Counter(q.group for q in self.queries)),
            "scored_queries": {g: sum(q.group == g for q in scored) for g in GROUPS},
            "scored_species": {g: len({q.truth["species"] for q in scored if q.group == g}) for g in GROUPS},
            "excluded": dict(Counter(f"{q.group}: {q.excluded}" for q in self.queries if q.excluded)),
            **self.counts,
        }


def _rows(records: Sequence[dict], split: str) -> list[dict]:
    return [r for r in records if label(r.get("split")) == split]


def _lineage(record: Mapping[str, Any]) -> dict[str, str | None]:
    return {rank: label(record.get(rank)) for rank in COMMIT_RANKS}


def _held_out(unseen: Sequence[dict], seed: int) -> list[str]:
    genera = sorted({g for g in (label(r.get("genus")) for r in unseen) if g})
    chosen = np.random.default_rng(seed).choice(len(genera), size=len(genera) // 2, replace=False)
    return sorted(genera[i] for i in chosen)


def _reference(train: Sequence[dict], held: set[str], deduplicate: bool, counts: Counter) -> list[dict]:
    reference, seen = [], set()
    for record in train:
        if label(record.get("genus")) in held:
            counts["train_rows_of_held_out_genera"] += 1
            continue
        key = (record["dna_barcode"], *(label(record.get(c)) for c in ("phylum", "class", *COMMIT_RANKS)))
        if deduplicate and key in seen:
            counts["train_duplicates_removed"] += 1
            continue
        seen.add(key)
        reference.append(record)
    return reference


def _exclusion(group: str, truth: Mapping[str, str | None], known: Mapping[str, set]) -> str | None:
    target = TARGET_RANK[group]
    if truth[target] is None:
        return f"truth lacks its {target}"
    if truth["species"] is None:
        return "truth lacks its species (per-species averaging)"
    if truth[target] not in known[target]:
        return f"its {target} is absent from the reference"
    return None


def _unseen_group(record: dict, known: Mapping[str, set], counts: Counter) -> str | None:
    genus, species = label(record.get("genus")), label(record.get("species"))
    if genus is None:
        counts["val_unseen_without_genus"] += 1
        return None
    if species is not None and species in known["species"]:
        counts["val_unseen_species_in_reference"] += 1
        return None
    return "novel_species" if genus in known["genus"] else "novel_genus"


def _seen_group(record: dict, held: set[str], known: Mapping[str, set], counts: Counter) -> str | None:
    if label(record.get("genus")) in held:
        counts["val_rows_of_held_out_genera"] += 1
        return None
    if label(record.get("species")) not in known["species"]:
        counts["val_species_not_in_reference"] += 1
        return None
    return "known_species"


def build_openset(records: Sequence[dict], seed: int = 0, deduplicate: bool = True) -> OpenSetSplit:
    """The open-set protocol of the module docstring from records with ``processid``, the taxonomy columns,
    ``dna_barcode`` and ``split``. Raises ValueError when ``val_unseen`` or ``train`` is empty or a query id is
    unusable (empty, repeated, or holding whitespace or ``|``, which a FASTA header cannot carry)."""
    train, val, unseen = (_rows(records, split) for split in ("train", "val", "val_unseen"))
    if not train or not unseen:
        raise ValueError(f"need train and val_unseen rows, found {len(train)} and {len(unseen)}")
    counts: Counter = Counter()
    held = _held_out(unseen, seed)
    reference = _reference(train, set(held), deduplicate, counts)
    known = {rank: {label(r.get(rank)) for r in reference} - {None} for rank in COMMIT_RANKS}
    candidates = [(r, _unseen_group(r, known, counts)) for r in unseen]
    candidates += [(r, _seen_group(r, set(held), known, counts)) for r in val]
    queries, seen = [], set()
    for record, group in candidates:
        if group is None:
            continue
        if deduplicate and (group, record["dna_barcode"]) in seen:
            counts[f"{group}_duplicates_removed"] += 1
            continue
        seen.add((group, record["dna_barcode"]))
        truth = _lineage(record)
        queries.append(
            Query(str(record["processid"]), group, record["dna_barcode"], truth, _exclusion(group, truth, known))
        )
    _check_ids(queries)
    return OpenSetSplit(reference, queries, held, seed, dict(sorted(counts.items())))


def _check_ids(queries: Sequence[Query]) -> None:
    repeated = [query_id for query_id, n in Counter(q.query_id for q in queries).items() if n > 1]
    if repeated:
        raise ValueError(f"query ids must be unique; repeated: {', '.join(repeated[:5])}")
    for query in queries:
        if not query.query_id or any(c.isspace() or c == "|" for c in query.query_id):
            raise ValueError(f"query id {query.query_id!r} cannot head a FASTA record (empty, whitespace or '|')")


def write_openset(split: OpenSetSplit, folder: str | os.PathLike) -> dict[str, Path]:
    """Write ``reference.tsv`` (BIOSCAN columns ``processid phylum class order family subfamily genus species
    dna_bin dna_barcode``), ``queries.fasta`` (ids only) and ``truth.tsv`` (:data:`TRUTH_COLUMNS`) into ``folder``
    (created), each atomically; returns their paths by name."""
    from barcodemae.simulate import BIOSCAN_COLUMNS, write_tsv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / file for name, file in (("reference", "reference.tsv"), ("queries", "queries.fasta"))}
    paths["truth"] = folder / "truth.tsv"
    write_tsv([{c: r.get(c) or "" for c in BIOSCAN_COLUMNS} for r in split.reference], paths["reference"], False)
    with atomic_paths(paths["queries"]) as (temporary,):
        write_fasta_sequences(temporary, [q.sequence for q in split.queries], [q.query_id for q in split.queries])
    with atomic_text(paths["truth"]) as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        for q in split.queries:
            writer.writerow([q.query_id, q.group, *(q.truth[r] or "" for r in COMMIT_RANKS), q.excluded or ""])
    return paths


# ------------------------------------------------------------------------------------------- scoring
def outcome(answer: Answer, truth: Mapping[str, str | None], target: str) -> str:
    """One of :data:`OUTCOMES` for ``answer`` (committed rank → taxon) against ``truth`` with the target rank
    ``target`` (see the module docstring)."""
    depth = COMMIT_RANKS.index(target) + 1
    for rank in COMMIT_RANKS[:depth]:
        if rank in answer and truth.get(rank) is not None and answer[rank] != truth[rank]:
            return "misclassification"
    if any(rank in answer for rank in COMMIT_RANKS[depth:]):
        return "over_classification"
    return "correct" if target in answer else "under_classification"


def _scored(queries: Sequence[Query], group: str) -> list[Query]:
    return [q for q in queries if q.group == group and q.excluded is None]


def group_outcomes(answers: Mapping[str, Answer], queries: Sequence[Query], group: str) -> list[str]:
    """The outcome of each scored query of ``group`` (in order; a query without an answer commits to nothing)."""
    return [outcome(answers.get(q.query_id, {}), q.truth, TARGET_RANK[group]) for q in _scored(queries, group)]


def score_answers(
    answers: Mapping[str, Answer], queries: Sequence[Query], seed: int = 0, resamples: int = 2000
) -> dict[str, Any]:
    """Per group, each outcome's rate (``identification_score(...).as_dict()``: per species and micro, percent,
    bootstrap 95% intervals), the queries without an answer and the excluded queries by reason; and
    ``mean_per_species_correct``, the mean of the groups' per-species correct rates (None where a group has no
    scored query)."""
    groups: dict[str, Any] = {}
    for group in GROUPS:
        scored = _scored(queries, group)
        excluded = Counter(q.excluded for q in queries if q.group == group and q.excluded)
        entry: dict[str, Any] = {"excluded": dict(excluded), "without_answer": 0}
        if scored:
            outcomes = group_outcomes(answers, queries, group)
            species = [q.truth["species"] for q in scored]
            for name in OUTCOMES:
                entry[name] = identification_score(outcomes, [name] * len(outcomes), species, resamples, seed).as_dict()
            entry["without_answer"] = sum(q.query_id not in answers for q in scored)
        groups[group] = entry
    correct = [groups[g]["correct"]["per_species"] for g in GROUPS if "correct" in groups[g]]
    mean = round(float(np.mean(correct)), 2) if len(correct) == len(GROUPS) else None
    return {"groups": groups, "mean_per_species_correct": mean}


def per_species_correct(answers: Mapping[str, Answer], queries: Sequence[Query]) -> dict[str, float | None]:
    """Per-species correct rate (percent) of each group and their mean, without intervals (for cut-off sweeps)."""
    rates: dict[str, float | None] = {}
    for group in GROUPS:
        scored = _scored(queries, group)
        hits = np.array([o == "correct" for o in group_outcomes(answers, queries, group)], dtype=np.float64)
        species = [q.truth["species"] for q in scored]
        rates[group] = round(float(species_differences(hits, 0 * hits, species).mean()) * 100, 2) if scored else None
    values = [v for v in rates.values() if v is not None]
    rates["mean"] = round(float(np.mean(values)), 2) if len(values) == len(GROUPS) else None
    return rates


def sweep_cutoffs(
    answers_at: Callable[[Any], Mapping[str, Answer]],
    queries: Sequence[Query],
    candidates: Sequence[float | Mapping[str, float]] = DEFAULT_CUTOFFS,
) -> dict[str, Any]:
    """:func:`per_species_correct` at each candidate cut-off (one for every rank, or rank → cut-off, recorded with
    the defaults of the ranks it leaves out; ``answers_at(cutoff)`` gives the answers) and the cut-off of the
    highest three-group mean (the first on ties). Chosen on the queries it is scored on: optimistic."""
    points = [
        {"cutoff": cutoffs(c) if isinstance(c, Mapping) else float(c), **per_species_correct(answers_at(c), queries)}
        for c in candidates
    ]
    best = max(points, key=lambda point: -1.0 if point["mean"] is None else point["mean"])
    return {"points": points, "best_cutoff": best["cutoff"]}


# ------------------------------------------------------------------------------------------- ranked predictions
@dataclass(frozen=True)
class RankedAnswer:
    """One row of ``barcodemae identify``'s open-set columns: the committed rank (``""``: none), the best guess at
    each rank (rank → taxon, labelled ranks only) and each rank's confidence in [0, 1]."""

    assigned_rank: str
    predicted: dict[str, str]
    confidence: dict[str, float]

    def committed(self) -> dict[str, str]:
        """The answer the command committed to: the predictions from order down to ``assigned_rank``."""
        return lineage_down_to(self.predicted, self.assigned_rank or None)

    def at_cutoff(self, cutoff: float | Mapping[str, float]) -> dict[str, str]:
        """The answer at another cut-off (one for every rank, or rank → cut-off as :func:`barcodemae.assign.cutoffs`
        reads it): down to the deepest predicted rank whose confidence reaches its cut-off."""
        limit = cutoffs(cutoff)
        reached = [r for r in COMMIT_RANKS if r in self.predicted and self.confidence[r] >= limit[r]]
        return lineage_down_to(self.predicted, reached[-1] if reached else None)


def _ranked_row(row: Mapping[str, str], line: int, path: Path) -> RankedAnswer:
    where = f"{path}, line {line}, query {row['query_id']!r}"
    assigned = (row["assigned_rank"] or "").strip()
    if assigned not in ("", *COMMIT_RANKS):
        raise ValueError(f"{where}: assigned_rank {assigned!r} is none of {', '.join(COMMIT_RANKS)} or empty")
    try:
        confidence = {rank: float(row[f"{rank}_confidence"] or 0.0) for rank in COMMIT_RANKS}
    except ValueError as error:
        raise ValueError(f"{where}: unreadable confidence ({error})") from None
    if not all(0.0 <= value <= 1.0 for value in confidence.values()):
        raise ValueError(f"{where}: confidences must lie in [0, 1], got {confidence}")
    predicted = {rank: text for rank in COMMIT_RANKS if (text := label(row[f"predicted_{rank}"]))}
    return RankedAnswer(assigned, predicted, confidence)


def read_ranked_predictions(path: str | os.PathLike) -> dict[str, RankedAnswer]:
    """``barcodemae identify``'s TSV → query id → :class:`RankedAnswer`. Raises ValueError naming the missing
    columns (an identify without the open-set columns) or the line of a bad value."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in RANKED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no open-set columns {', '.join(missing)} (this identify predates them?)")
        return {row["query_id"]: _ranked_row(row, line, path) for line, row in enumerate(reader, start=2)}


def depth_diagnosis(ranked: Mapping[str, RankedAnswer], queries: Sequence[Query]) -> dict[str, Any]:
    """Where a ranked method loses: ``ceiling``, the per-species correct rates had each answer stopped exactly at
    its query's target rank (the same predictions, a perfect depth decision); ``separation``, how well a confidence
    tells the groups apart (ROC AUC): the species confidence of known against novel species, the genus confidence
    of novel species against novel genera."""
    from sklearn.metrics import roc_auc_score

    truncated = {
        q.query_id: lineage_down_to(ranked[q.query_id].predicted, TARGET_RANK[q.group])
        for q in queries
        if q.query_id in ranked
    }
    separation = {}
    for name, rank, positive, negative in (
        ("species confidence: known vs novel species", "species", "known_species", "novel_species"),
        ("genus confidence: novel species vs novel genus", "genus", "novel_species", "novel_genus"),
    ):
        values = {
            g: [ranked[q.query_id].confidence[rank] for q in _scored(queries, g) if q.query_id in ranked]
            for g in (positive, negative)
        }
        if values[positive] and values[negative]:
            labels = [1] * len(values[positive]) + [0] * len(values[negative])
            separation[name] = round(float(roc_auc_score(labels, values[positive] + values[negative])), 3)
    return {"ceiling": per_species_correct(truncated, queries), "separation": separation}
