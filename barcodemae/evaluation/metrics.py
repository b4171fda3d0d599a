"""Accuracy, macro-F1, AMI and 1-NN label transfer, and accuracies with bootstrap 95% intervals.

The scores are computed by the local `evaluate` modules under ``metrics/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from barcodemae.search import nearest_neighbors

METRICS_DIR = Path(__file__).resolve().parents[2] / "metrics"


@cache
def load_metric(name: str):
    """Load the local `evaluate` module ``metrics/<name>`` by absolute path (offline; cached per process)."""
    import evaluate  # slow import (~several seconds): only when a metric is needed

    return evaluate.load(str(METRICS_DIR / name))


def _encode_pair(predictions: Sequence, references: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Map two label sequences onto shared int64 codes (so metrics need one feature type)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.dtype.kind in "iu" and references.dtype.kind in "iu":
        return predictions.astype(np.int64), references.astype(np.int64)
    _, codes = np.unique(np.concatenate([predictions.astype(str), references.astype(str)]), return_inverse=True)
    codes = codes.astype(np.int64)
    return codes[: len(predictions)], codes[len(predictions) :]


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Micro accuracy in percent (NaN for no rows), via ``metrics/accuracy``."""
    if len(references) == 0:
        return float("nan")
    pred, ref = _encode_pair(predictions, references)
    return load_metric("accuracy").compute(predictions=pred, references=ref)["accuracy"]


def macro_f1(predictions: Sequence, references: Sequence) -> float:
    """Macro F1 in percent over the labels in references or predictions, via ``metrics/macro_f1``."""
    if len(references) == 0:
        return float("nan")
    pred, ref = _encode_pair(predictions, references)
    return load_metric("macro_f1").compute(predictions=pred, references=ref)["macro_f1"]


def adjusted_mutual_info(clusters: Sequence, labels: Sequence) -> float:
    """Adjusted mutual information (fraction, 1.0 = identical partitions), via ``metrics/ami``."""
    pred, ref = _encode_pair(clusters, labels)
    return load_metric("ami").compute(predictions=pred, references=ref)["ami"]


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """Harmonic mean of two non-negative scores; None if either is None/NaN, 0 if either is 0."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def one_nn_predict(query_emb: np.ndarray, ref_emb: np.ndarray, ref_labels: Sequence) -> np.ndarray:
    """Label of each query's cosine nearest reference."""
    indices, _ = nearest_neighbors(query_emb, ref_emb, k=1)
    return np.asarray(ref_labels)[indices[:, 0]]


def one_nn_accuracy(query_emb: np.ndarray, query_labels: Sequence, ref_emb: np.ndarray, ref_labels: Sequence) -> float:
    """Micro accuracy (percent) of cosine 1-NN label transfer; NaN when there are no queries."""
    if len(query_labels) == 0:
        return float("nan")
    return accuracy(one_nn_predict(query_emb, ref_emb, ref_labels), query_labels)


def genus_1nn_accuracy(query_emb: np.ndarray, query_genus: Sequence, ref_emb: np.ndarray, ref_genus: Sequence) -> float:
    """Genus 1-NN accuracy in percent (the paper's open-world metric)."""
    return one_nn_accuracy(query_emb, query_genus, ref_emb, ref_genus)


@dataclass
class IdentificationScore:
    """Accuracy of label predictions, per species (each query species weighs the same) and micro (each barcode
    weighs the same), both in percent with a bootstrap 95% interval: species resampled for the per-species mean,
    queries for micro. In BIOSCAN-style unseen partitions a few species hold a third of the barcodes, so the
    per-species number is the one to choose on."""

    per_species: float
    per_species_interval: tuple[float, float]
    micro: float
    micro_interval: tuple[float, float]
    n_queries: int
    n_species: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def __str__(self) -> str:
        (lo, hi), (mlo, mhi) = self.per_species_interval, self.micro_interval
        return (
            f"per species {self.per_species:.2f} [{lo:.2f}, {hi:.2f}], micro {self.micro:.2f} [{mlo:.2f}, {mhi:.2f}]"
            f" ({self.n_queries} queries, {self.n_species} species)"
        )


def correct_predictions(predicted: Sequence, truth: Sequence) -> np.ndarray:
    """1.0 where a prediction equals the truth (compared as strings), 0.0 elsewhere; ``None`` counts wrong."""
    return np.array([p is not None and str(p) == str(t) for p, t in zip(predicted, truth)], dtype=np.float64)


def identification_score(
    predicted: Sequence, truth: Sequence, species: Sequence, resamples: int = 2000, seed: int = 0
) -> IdentificationScore:
    """Score predicted labels (e.g. genus of the nearest reference; None counts wrong) against ``truth``, grouping
    queries by ``species`` for the per-species mean and its species-level bootstrap."""
    correct = correct_predictions(predicted, truth)
    if len(correct) == 0:
        raise ValueError("no queries to score")
    _, group = np.unique(np.asarray(species, dtype=object).astype(str), return_inverse=True)
    per_group = np.bincount(group, weights=correct) / np.bincount(group)
    rng = np.random.default_rng(seed)
    species_means = per_group[rng.integers(0, len(per_group), (resamples, len(per_group)))].mean(1)
    micro_means = correct[rng.integers(0, len(correct), (resamples, len(correct)))].mean(1)

    def interval(means: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(means, [2.5, 97.5]) * 100
        return round(float(low), 2), round(float(high), 2)

    return IdentificationScore(
        per_species=round(float(per_group.mean()) * 100, 2),
        per_species_interval=interval(species_means),
        micro=round(float(correct.mean()) * 100, 2),
        micro_interval=interval(micro_means),
        n_queries=len(correct),
        n_species=len(per_group),
    )


def accuracy_with_interval(predicted: Sequence, truth: Sequence, seed: int = 0) -> tuple[float, tuple | None]:
    """Micro accuracy in percent and its bootstrap 95% interval (queries resampled), by
    :func:`identification_score`; ``(nan, None)`` for no queries."""
    if len(truth) == 0:
        return float("nan"), None
    score = identification_score(predicted, truth, truth, seed=seed)
    return score.micro, score.micro_interval
