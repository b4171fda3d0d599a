"""Neighbours → an answer at every rank, each with a calibrated confidence, and the deepest rank to commit to.

**Votes.** A query's :data:`VOTE_NEIGHBORS` nearest references vote, rank by rank from the top down
(:data:`LEVELS`), with weights ``exp((s - s_best) / VOTE_TEMPERATURE)`` of their cosine similarity ``s``. At each
rank only references that agree with the answers already given above it vote (a reference without a label at a rank
agrees with anything there), so the answers form one lineage; the rank's answer is the label with the largest
summed weight (ties: the one whose best reference is nearest). A rank where no voting reference has a label gets no
answer (confidence 0), and neither do the ranks below it.

**Confidence.** Each rank's confidence is a logistic function of three features of its vote — the similarity of
the nearest reference carrying the answer, the answer's share of the vote, and that similarity's margin over the
nearest reference carrying another label (for species also the margin over the novel-species threshold of
:func:`barcodemae.identify.calibrate_threshold`) — fitted on the reference itself by leave-out
(:func:`fit_confidence`): up to :data:`CALIBRATION_QUERIES` reference barcodes (at most two a species, seeded) are
searched against the reference in five scenarios, each weighted equally: only the barcode left out (a known
species), its species left out (a novel species), its genus, its family, its order left out. The answer at a rank
is right when it equals the left-out barcode's label. So a confidence estimates the chance that the answer at
that rank is right for a query that is, with equal chance, of a known species or of a species, genus, family or
order absent from the reference. Confidences never grow with depth (each is at most the nearest one above it that
has an answer: references often lack an order or family label, and a missing label does not stop the ranks below).

**Commitment.** ``assigned_rank`` is the deepest of order, family, genus and species whose confidence reaches its
cut-off (per rank, :data:`DEFAULT_MIN_CONFIDENCE`, chosen on the `val` open-set protocol, ``benchmarks/openset.py``;
``--min-confidence`` sets one for every rank); the
deeper ``predicted_*`` stay filled as the best guess. The outcome names what the answer means: ``known_species``
(species), ``novel_species`` (a genus, no species), ``novel_genus`` (a family, no genus), ``novel_family`` (an
order only) or ``unassigned``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species", "dna_bin")  # from the top down
COMMIT_RANKS = ("order", "family", "genus", "species")  # ranks an answer may commit to
OUTCOMES = {
    "species": "known_species",
    "genus": "novel_species",
    "family": "novel_genus",
    "order": "novel_family",
    "": "unassigned",
}
LEAVE_OUT = (None, "species", "genus", "family", "order")  # calibration scenarios (None: only the barcode itself)
VOTE_NEIGHBORS = 10
VOTE_TEMPERATURE = 0.005  # chosen on val: keeps the genus of unseen species per species at the top hit's level
CALIBRATION_QUERIES = 3000
PER_SPECIES = 2
# per rank, chosen on the val open-set protocol (benchmarks/openset.py reports them beside single cut-offs): the
# three groups' mean changes little for species 0.3-0.7 and genus 0.3-0.5, and is highest with family near 0.05
DEFAULT_MIN_CONFIDENCE = {"order": 0.05, "family": 0.05, "genus": 0.3, "species": 0.5}
FEATURES = ("best_similarity", "vote_share", "margin")
BLOCK_SIMILARITIES = 1 << 23  # per block of calibration rows: 32 MiB of float32 similarities


@dataclass
class Votes:
    """Per-rank answers of a batch: label codes ``(n,)`` (-1: no answer) and features ``(n, len(FEATURES))``, for
    the ranks the reference has."""

    codes: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


class LabelColumn(Sequence[str]):
    """One rank's label of every reference row, held as ``names`` (sorted, distinct, non-empty) and ``codes``
    (``(R,)`` integers, -1: no label), as a reference index stores them; reads as a sequence of strings."""

    def __init__(self, names: Sequence[str], codes: np.ndarray) -> None:
        self.names, self.codes = np.asarray(names, dtype=str), codes
        self._decoded = np.append(self.names, "").astype(object)

    @classmethod
    def encode(cls, labels: Sequence[str]) -> LabelColumn:
        if isinstance(labels, LabelColumn):
            return labels
        names, codes = np.unique(np.asarray(list(labels), dtype=object).astype(str), return_inverse=True)
        codes = codes.astype(np.int32).reshape(-1)
        if len(names) and names[0] == "":  # the empty label sorts first
            names, codes = names[1:], codes - 1
        return cls(names, codes)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return self._decoded[self.codes[row]].tolist()
        return self._decoded[self.codes[row]]

    def __iter__(self):
        return iter(self._decoded[self.codes].tolist())

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The labels of ``rows`` (an integer array of any shape), as an object array of that shape."""
        return self._decoded[self.codes[rows]]

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same labels, as a list is."""
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # mutable-sequence semantics, as a list


class Taxonomy:
    """The reference's labels as integer codes per rank (-1: no label), with the names to decode them."""

    def __init__(self, labels: Mapping[str, Sequence[str]], size: int) -> None:
        self.names: dict[str, np.ndarray] = {}
        self.codes: dict[str, np.ndarray] = {}
        for level in LEVELS:
            column = LabelColumn.encode(labels.get(level, [""] * size))
            self.names[level], self.codes[level] = column.names, np.asarray(column.codes, dtype=np.int64)

    def decode(self, level: str, codes: np.ndarray) -> list[str]:
        """The label of each code at ``level`` (``""`` for -1)."""
        return np.append(self.names[level], "")[codes].tolist()


def vote(neighbors: np.ndarray, similarities: np.ndarray, taxonomy: Taxonomy) -> Votes:
    """Top-down weighted votes of each row's neighbours (``(n, k)`` reference rows and cosine similarities)."""
    weights = np.exp((similarities - similarities[:, :1]) / VOTE_TEMPERATURE)
    agrees = np.ones(neighbors.shape, dtype=bool)
    codes_out: dict[str, np.ndarray] = {}
    features: dict[str, np.ndarray] = {}
    rows = np.arange(len(neighbors))
    for level in LEVELS:
        if not len(taxonomy.names[level]):  # a rank the reference does not have
            continue
        labels = taxonomy.codes[level][neighbors]
        voting = agrees & (labels >= 0)
        same = (labels[:, :, None] == labels[:, None, :]) & voting[:, None, :]
        score = np.where(voting, (same * weights[:, None, :]).sum(axis=2), -1.0)
        winner = score.argmax(axis=1)  # first maximum: the tie's nearest reference
        answered = voting[rows, winner]
        code = np.where(answered, labels[rows, winner], -1)
        carries = voting & (labels == code[:, None])
        others = voting & ~carries
        best = np.where(carries, similarities, -np.inf).max(axis=1)
        rival = np.where(others.any(axis=1), np.where(others, similarities, -np.inf).max(axis=1), similarities[:, -1])
        total = np.where(voting, weights, 0.0).sum(axis=1)
        share = np.where(answered, score[rows, winner] / np.maximum(total, 1e-12), 0.0)
        best = np.where(answered, best, 0.0)
        codes_out[level] = code
        features[level] = np.stack([best, share, np.where(answered, best - rival, 0.0)], axis=1)
        agrees &= (labels < 0) | (labels == code[:, None]) | (code[:, None] < 0)
    return Votes(codes_out, features)


@dataclass
class ConfidenceModel:
    """Per rank, a logistic function of the vote's features (:data:`FEATURES`, plus the novel-species margin for
    species): ``weights`` per rank (features, then the intercept last)."""

    weights: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def confidences(self, votes: Votes, species_margin: np.ndarray) -> dict[str, np.ndarray]:
        """Confidence per rank, each at most the one above it that has an answer; 0 where a rank has no answer; a
        rank the calibration had no labels for takes the confidence of the rank above."""
        out: dict[str, np.ndarray] = {}
        above = np.ones(len(species_margin))
        for level in (level for level in LEVELS if level in votes.codes):
            p = above
            if level in self.weights:
                w = np.asarray(self.weights[level])
                x = _design(votes.features[level], species_margin, level)
                p = np.minimum(1.0 / (1.0 + np.exp(-(x @ w[:-1] + w[-1]))), above)
            answered = votes.codes[level] >= 0
            out[level] = np.where(answered, p, 0.0)
            above = np.where(answered, p, above)  # a rank without an answer (no label among the voters) is passed
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "details": self.details}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfidenceModel:
        return cls(dict(data["weights"]), dict(data.get("details", {})))


def _design(features: np.ndarray, species_margin: np.ndarray, level: str) -> np.ndarray:
    return np.column_stack([features, species_margin]) if level == "species" else features


def cutoffs(min_confidence: float | Mapping[str, float] | None) -> dict[str, float]:
    """Per-rank cut-offs: the defaults, or one value for every rank, or the ranks given (others default)."""
    if min_confidence is None:
        return dict(DEFAULT_MIN_CONFIDENCE)
    if isinstance(min_confidence, Mapping):
        return {**DEFAULT_MIN_CONFIDENCE, **min_confidence}
    return dict.fromkeys(COMMIT_RANKS, float(min_confidence))


def assigned_ranks(
    confidences: Mapping[str, np.ndarray], min_confidence: float | Mapping[str, float] | None
) -> list[str]:
    """The deepest of :data:`COMMIT_RANKS` whose confidence reaches its cut-off (:func:`cutoffs`; "" where none
    does)."""
    cut = cutoffs(min_confidence)
    n = len(next(iter(confidences.values())))
    assigned = np.full(n, "", dtype=object)
    for level in COMMIT_RANKS:
        assigned = np.where(confidences[level] >= cut[level], level, assigned)
    return [str(value) for value in assigned]


# ------------------------------------------------------------------------------------------- calibration
SearchFn = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


def calibration_rows(taxonomy: Taxonomy, max_queries: int = CALIBRATION_QUERIES, seed: int = 0) -> np.ndarray:
    """Reference rows to leave out: species-labelled, at most :data:`PER_SPECIES` a species, seeded."""
    species = taxonomy.codes["species"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(species))
    order = order[species[order] >= 0]
    taken = np.zeros(len(taxonomy.names["species"]), dtype=np.int64)
    chosen = []
    for row in order:
        if taken[species[row]] < PER_SPECIES:
            taken[species[row]] += 1
            chosen.append(row)
            if len(chosen) == max_queries:
                break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def leave_out_neighbors(
    embeddings: np.ndarray, taxonomy: Taxonomy, rows: np.ndarray, leave_out: str | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest references of each of ``rows`` with the row itself, or every reference sharing its
    ``leave_out`` label, removed (exact cosine similarity; ``embeddings`` is not copied; blocks of rows hold at most
    :data:`BLOCK_SIMILARITIES` similarities, so memory stays flat as the reference grows)."""
    inverse_norms = 1.0 / np.maximum(np.linalg.norm(embeddings, axis=1), 1e-12).astype(np.float32)
    neighbors = np.zeros((len(rows), k), dtype=np.int64)
    similarities = np.zeros((len(rows), k), dtype=np.float32)
    chunk = max(1, min(256, BLOCK_SIMILARITIES // max(len(embeddings), 1)))
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        queries = np.asarray(embeddings[block], dtype=np.float32) * inverse_norms[block, None]
        sims = (queries @ np.asarray(embeddings, dtype=np.float32).T) * inverse_norms[None, :]
        sims[np.arange(len(block)), block] = -np.inf
        if leave_out is not None:
            codes = taxonomy.codes[leave_out]
            sims[codes[block][:, None] == codes[None, :]] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        neighbors[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
        similarities[start : start + len(block)] = np.maximum(np.take_along_axis(top_sims, order, axis=1), -1.0)
    return neighbors, similarities


def fit_confidence(
    embeddings: np.ndarray,
    taxonomy: Taxonomy,
    species_threshold: Callable[[np.ndarray], np.ndarray],
    max_queries: int = CALIBRATION_QUERIES,
    seed: int = 0,
) -> ConfidenceModel:
    """Fit the per-rank confidences on the reference by leave-out (module docstring);
    ``species_threshold(genus codes)``: the novel-species threshold for best neighbours of those genera."""
    rows = calibration_rows(taxonomy, max_queries, seed)
    k = min(VOTE_NEIGHBORS, len(embeddings) - 1)
    if len(rows) < 2 or k < 1:
        return ConfidenceModel(details={"rule": "none: too few species-labelled references (every confidence 1)"})
    design: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
    targets: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
    weights: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
    scenarios: dict[str, int] = {}
    for leave_out in LEAVE_OUT:
        kept = rows[_scenario_rows(taxonomy, rows, leave_out)]
        scenarios[leave_out or "barcode"] = len(kept)
        if len(kept) == 0:
            continue
        neighbors, sims = leave_out_neighbors(embeddings, taxonomy, kept, leave_out, k)
        votes = vote(neighbors, sims, taxonomy)
        margin = sims[:, 0] - species_threshold(taxonomy.codes["genus"][neighbors[:, 0]])
        for level in votes.codes:
            if not _calibrates(leave_out, level):
                continue
            truth = taxonomy.codes[level][kept]
            known = truth >= 0
            design[level].append(_design(votes.features[level], margin, level)[known])
            targets[level].append((votes.codes[level] == truth)[known])
            weights[level].append(np.full(known.sum(), 1.0 / max(len(kept), 1)))
    model = ConfidenceModel(details={"rule": "leave-out logistic calibration", "queries": scenarios})
    for level in LEVELS:
        if design[level]:
            model.weights[level] = _logistic(
                np.concatenate(design[level]), np.concatenate(targets[level]), np.concatenate(weights[level])
            )
    return model


def _scenario_rows(taxonomy: Taxonomy, rows: np.ndarray, leave_out: str | None) -> np.ndarray:
    """Which ``rows`` a scenario can use: with nothing left out, a species with another barcode; with a rank
    left out, a label at that rank whose parent taxon keeps another one (so the parent is still there)."""
    if leave_out is None:
        counts = np.bincount(taxonomy.codes["species"], minlength=len(taxonomy.names["species"]))
        return counts[taxonomy.codes["species"][rows]] >= 2
    parent_level = LEVELS[LEVELS.index(leave_out) - 1]
    child, parent = taxonomy.codes[leave_out], taxonomy.codes[parent_level]
    labelled = (child >= 0) & (parent >= 0)
    if not labelled.any():
        return np.zeros(len(rows), dtype=bool)
    pairs = np.unique(np.stack([parent[labelled], child[labelled]]), axis=1)
    siblings = np.bincount(pairs[0], minlength=len(taxonomy.names[parent_level]))
    return labelled[rows] & (siblings[np.maximum(parent[rows], 0)] >= 2)


def _calibrates(leave_out: str | None, level: str) -> bool:
    """Whether a scenario takes part in a rank's calibration: leaving out nothing, the species or the genus
    calibrates every rank; leaving out a family or an order only that rank and those above it."""
    return leave_out in (None, "species", "genus") or LEVELS.index(level) <= LEVELS.index(leave_out)


def _logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> list[float]:
    """Weighted logistic regression (features then intercept); a constant where ``y`` has one class only."""
    if y.all() or not y.any():
        rate = float(np.clip(y.mean() if len(y) else 0.0, 1e-3, 1 - 1e-3))
        return [0.0] * x.shape[1] + [float(np.log(rate / (1 - rate)))]
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)  # fitted on standardised features
    fitted = LogisticRegression(C=10.0, max_iter=1000).fit((x - mean) / scale, y, sample_weight=weight / weight.mean())
    coef = fitted.coef_[0] / scale
    return [*map(float, coef), float(fitted.intercept_[0] - coef @ mean)]


__all__ = [
    "COMMIT_RANKS",
    "ConfidenceModel",
    "DEFAULT_MIN_CONFIDENCE",
    "LEVELS",
    "OUTCOMES",
    "Taxonomy",
    "Votes",
    "assigned_ranks",
    "fit_confidence",
    "leave_out_neighbors",
    "vote",
]
