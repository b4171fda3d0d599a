"""Model-agnostic evaluation: the BarcodeMAE/BarcodeBERT protocol on numpy embeddings.

Protocol (paper + BIOSCAN-5M benchmark), as implemented by :func:`prepare_protocol` and :func:`evaluate_embedder`:

* Partitions: ``train`` (seen species; the reference set and the probe's training set), ``test`` (seen species,
  tuning: ``val``) and ``test_unseen`` (unseen species of seen genera, tuning: ``val_unseen``).
* De-duplication (the authors' rule): within each partition, identical barcodes (as given, i.e. already cleaned)
  are kept once, the first occurrence in input order; the same barcode may appear in two partitions.
* Closed world: species **linear probe** on frozen embeddings (features standardised on train), evaluated on
  ``test`` rows whose species occurs in ``train``; accuracy and macro-F1 in percent.
* Open world: **genus 1-NN**, cosine, of each ``test_unseen`` barcode against the ``train`` barcodes; micro and
  per-species accuracy in percent. Summary: harmonic mean of probe accuracy and genus 1-NN micro accuracy.
* Also: species 1-NN on ``test``, BIOSCAN-5M's zero-shot clustering AMI vs species and BIN
  (:func:`zero_shot_clustering`: UMAP then Ward, on every record of ``test`` + ``test_unseen``), representation
  health (effective rank, mean pairwise cosine) and robustness of genus 1-NN to masking/deletion at inference.
* Every accuracy comes with a bootstrap 95% interval (``<key>_interval``, :func:`identification_score`).

Rows lacking the label a task needs are excluded from that task and counted in ``result["counts"]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barcodemae.io import atomic_text
from barcodemae.search import as_tensor, l2_normalize, nearest_neighbors

METRICS_DIR = Path(__file__).resolve().parent.parent / "metrics"
DEFAULT_ROBUSTNESS_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
RESULT_KEYS = (
    "species_linear_probe_accuracy",
    "species_linear_probe_macro_f1",
    "genus_1nn_unseen_accuracy",
    "genus_1nn_unseen_per_species",
    "species_1nn_test_accuracy",
    "harmonic_mean",
    "bin_ami",
    "species_ami",
    "effective_rank",
    "mean_pairwise_cosine",
    "n_train",
    "n_test",
    "n_unseen",
)
EmbedFn = Callable[..., np.ndarray]
Stage = Callable[[str], None]  # told the name of each protocol stage as it starts (progress and timing)


def no_stage(name: str) -> None:
    """The default :data:`Stage` callback: nothing shown, nothing timed."""


# ----------------------------------------------------------------------------------------------- metrics
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


def paired_difference(
    predicted_a: Sequence,
    predicted_b: Sequence,
    truth: Sequence,
    species: Sequence,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same queries, per species and micro (percentage points), with
    paired bootstrap 95% intervals (the same resampled species / queries for both): much tighter than comparing
    two separate intervals."""
    a, b = correct_predictions(predicted_a, truth), correct_predictions(predicted_b, truth)
    return paired_hit_difference(a, b, species, resamples, seed)


def species_differences(a: np.ndarray, b: np.ndarray, species: Sequence) -> np.ndarray:
    """Each species' mean of A's 0/1 hits minus B's (fractions), species in sorted order."""
    _, group = np.unique(np.asarray(species, dtype=object).astype(str), return_inverse=True)
    return (np.bincount(group, weights=a) - np.bincount(group, weights=b)) / np.bincount(group)


def paired_hit_difference(
    a: np.ndarray, b: np.ndarray, species: Sequence, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """:func:`paired_difference` from each query's correctness under A and under B (0/1 arrays in query order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    per_group = species_differences(a, b, species)
    rng = np.random.default_rng(seed)
    species_draws = per_group[rng.integers(0, len(per_group), (resamples, len(per_group)))].mean(1) * 100
    micro_draws = (a - b)[rng.integers(0, len(a), (resamples, len(a)))].mean(1) * 100
    return {
        "per_species": round(float(per_group.mean()) * 100, 2),
        "per_species_interval": tuple(round(float(x), 2) for x in np.percentile(species_draws, [2.5, 97.5])),
        "micro": round(float((a - b).mean()) * 100, 2),
        "micro_interval": tuple(round(float(x), 2) for x in np.percentile(micro_draws, [2.5, 97.5])),
    }


def seed_pooled_difference(hits_a: Sequence[np.ndarray], hits_b: Sequence[np.ndarray], species: Sequence) -> dict:
    """A minus B per species (percentage points) averaged over training seeds, one pair of 0/1 hit arrays per seed
    on the same queries, with a normal 95% interval from the seeds × species variance components (two-way ANOVA,
    random effects): the choice of species (``species``, over the number of species), a seed's luck on every
    species at once (``seed``, over the number of seeds; 0 where the seeds' means differ no more than their
    species' noise explains) and each species' own training noise (``noise``, over both, so more seeds shrink it).
    ``standard_errors`` is the difference over its standard error (None where that is 0), ``seeds_for_2_se`` how
    many seeds would make it 2 standard errors were the difference and the components as measured (None where no
    number of seeds would)."""
    if len(hits_a) != len(hits_b) or len(hits_a) < 2:
        raise ValueError(f"need the same two or more seeds for A and B, got {len(hits_a)} and {len(hits_b)}")
    per_seed = 100 * np.stack([species_differences(a, b, species) for a, b in zip(hits_a, hits_b)])
    n_seeds, n_species = per_seed.shape
    seed_means, species_means = per_seed.mean(axis=1), per_seed.mean(axis=0)
    residual = per_seed - seed_means[:, None] - species_means[None, :] + per_seed.mean()
    mean_square_species = n_seeds * species_means.var(ddof=1)
    mean_square_seed = n_species * seed_means.var(ddof=1)
    noise = float((residual**2).sum()) / ((n_seeds - 1) * (n_species - 1))
    components = {
        "species": max(mean_square_species - noise, 0.0) / n_seeds,
        "seed": max(mean_square_seed - noise, 0.0) / n_species,
        "noise": noise,
    }
    # the unbiased variance of the mean, σ²_species / I + σ²_seed / S + σ²_noise / (I S), with σ²_seed kept ≥ 0
    variance = (mean_square_species + n_species * components["seed"]) / (n_seeds * n_species)
    difference, error = float(per_seed.mean()), float(np.sqrt(variance))
    return {
        "seeds": n_seeds,
        "per_species": round(difference, 2),
        "per_species_interval": (round(difference - 1.96 * error, 2), round(difference + 1.96 * error, 2)),
        "standard_errors": round(difference / error, 2) if error > 0 else None,
        "variance_components": {name: round(float(value), 2) for name, value in components.items()},
        "seeds_for_2_se": seeds_needed(components, n_species, difference),
    }


def seeds_needed(components: dict[str, float], n_species: int, difference: float, errors: float = 2.0) -> int | None:
    """Fewest seeds S with ``difference`` at ``errors`` standard errors, the variance of the pooled difference being
    σ²_species / I + (σ²_seed + σ²_noise / I) / S (:func:`seed_pooled_difference`); None where the species term
    alone is too large."""
    target, floor = (difference / errors) ** 2, components["species"] / n_species
    if target <= floor:
        return None
    return max(1, math.ceil((components["seed"] + components["noise"] / n_species) / (target - floor)))


# ---------------------------------------------------------------------------------------------- linear probe
@dataclass
class ProbeConfig:
    """Softmax regression trained with AdamW on mini-batches, cosine-decayed learning rate.

    Measured on the shared 2 CPU cores (45k train rows × 768 dims, 2,800 classes, synthetic Gaussian classes):
    ~4–7 s per epoch, 8–10 epochs reach the same test accuracy as longer runs (96.9%), i.e. ~0.5–1 min.
    Batch 256 costs twice as much per epoch as 512 for no gain.
    """

    epochs: int = 10
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    min_steps: int = 1000  # small training sets get more epochs: at least this many optimizer steps


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    train_t, test_t = as_tensor(train), as_tensor(test)
    mean = train_t.mean(dim=0)
    std = train_t.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train_t - mean) / std, (test_t - mean) / std


def _train_softmax_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int, cfg: ProbeConfig):
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(layer(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return layer


def linear_probe(
    train_emb: np.ndarray,
    train_labels: Sequence,
    test_emb: np.ndarray,
    test_labels: Sequence,
    seed: int = 0,
    config: ProbeConfig | None = None,
) -> dict[str, Any]:
    """Species linear probe: standardise (fit on train), softmax regression on train, score on test.

    Test rows whose label is absent from train are excluded and counted (``n_test_excluded``). Returns
    ``accuracy`` with its bootstrap 95% ``accuracy_interval`` (test rows resampled) and ``macro_f1`` (percent;
    macro over labels in test or predicted), ``n_train``, ``n_test``, ``n_test_excluded``, ``n_classes``.
    """
    cfg = config or ProbeConfig()
    classes, y_train = np.unique(np.asarray(train_labels).astype(str), return_inverse=True)
    test_labels = np.asarray(test_labels).astype(str)
    keep = np.isin(test_labels, classes)
    test_emb, test_labels = np.asarray(test_emb)[keep], test_labels[keep]
    result: dict[str, Any] = {
        "n_train": len(y_train),
        "n_test": int(keep.sum()),
        "n_test_excluded": int((~keep).sum()),
        "n_classes": len(classes),
    }
    if keep.sum() == 0:
        return {**result, "accuracy": float("nan"), "accuracy_interval": None, "macro_f1": float("nan")}
    x_train, x_test = _standardize(train_emb, test_emb)
    with torch.enable_grad():
        layer = _train_softmax_regression(x_train, torch.from_numpy(y_train), len(classes), seed, cfg)
    with torch.inference_mode():
        predicted = torch.cat([layer(chunk).argmax(dim=1) for chunk in x_test.split(8192)]).numpy()
    predictions = classes[predicted]
    score, interval = accuracy_with_interval(predictions, test_labels, seed=seed)
    return {**result, "accuracy": score, "accuracy_interval": interval, "macro_f1": macro_f1(predictions, test_labels)}


# ------------------------------------------------------------------------------ clustering and health
def _subsample(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Deterministic sorted subset of ``range(n)`` of size ``min(n, max_rows)``."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


ZERO_SHOT_UMAP = {"n_components": 50, "n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}


def zscore(x: np.ndarray) -> np.ndarray:
    """Each dimension standardised to zero mean and unit variance (zero-variance dimensions become 0)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    return np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)


def umap_reduce(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP with :data:`ZERO_SHOT_UMAP` (seeded, so single-threaded); on fewer rows than that needs, the
    components and neighbours are capped at ``n - 2`` and ``n - 1``."""
    import numba
    import umap  # numba-compiled: the first fit in a process costs seconds of JIT

    threads = torch.get_num_threads()  # numba's OpenMP layer would otherwise widen torch's shared pool to every core
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    n = len(x)
    params = {
        **ZERO_SHOT_UMAP,
        "n_components": min(ZERO_SHOT_UMAP["n_components"], n - 2),
        "n_neighbors": min(ZERO_SHOT_UMAP["n_neighbors"], n - 1),
    }
    with warnings.catch_warnings():  # duplicated rows (identical barcodes) make UMAP warn; they are legitimate
        warnings.simplefilter("ignore", category=UserWarning)
        try:
            return umap.UMAP(**params, random_state=seed, n_jobs=1).fit_transform(np.asarray(x, dtype=np.float32))
        finally:
            torch.set_num_threads(threads)


def ward_ami(reduced: np.ndarray, labels: Sequence) -> float:
    """Agglomerative clustering (Ward linkage, Euclidean) into as many clusters as ``labels`` has distinct values;
    AMI of the clusters against ``labels`` (fraction). NaN when fewer than 2 labels or one row per label.

    The tree is built by ``fastcluster.linkage_vector`` (O(n·d) memory) and cut at ``n_clusters``: the partition
    sklearn's ``AgglomerativeClustering(linkage="ward")`` gives, 2.8-3.3x faster on 23,544 rows of 50 dimensions
    (the size of the real test partitions) and without its 2.2 GB distance matrix."""
    import fastcluster
    from scipy.cluster.hierarchy import fcluster

    y = np.asarray(labels).astype(str)
    n_clusters = len(np.unique(y))
    if n_clusters < 2 or n_clusters >= len(y):
        return float("nan")
    tree = fastcluster.linkage_vector(np.asarray(reduced, dtype=np.float64), method="ward")
    return adjusted_mutual_info(fcluster(tree, t=n_clusters, criterion="maxclust"), y)


def zero_shot_clustering(parts: Sequence[np.ndarray], targets: dict[str, Sequence], seed: int = 0) -> dict[str, float]:
    """Zero-shot clustering AMI as the BIOSCAN-5M paper reports it (Gharaee et al. 2024, arXiv 2406.12723), following
    the authors' code: github.com/bioscan-ml/BIOSCAN-5M → scottclowe/zs-ssl-clustering, branch ``BIOSCAN-5M``
    (Lowe et al. 2024, *An Empirical Study into Clustering of Unseen Datasets with Self-Supervised Encoders*).

    1. each partition's embeddings (``parts``, one array per partition: BIOSCAN-5M clusters ``test`` and
       ``test_unseen``, every record, duplicated barcodes included) z-scored per dimension, separately;
    2. concatenated and reduced by UMAP to 50 dimensions (30 neighbours, ``min_dist=0``, Euclidean,
       ``random_state=seed``);
    3. per target (``targets``: name → one label per row, None where missing), the rows with a label clustered
       by Ward agglomerative clustering into as many clusters as there are distinct labels;
    4. AMI against those labels.

    One UMAP fit serves every target (the authors fit one per run, on identical inputs when no label is missing).
    Returns target → AMI.
    """
    x = np.concatenate([zscore(part) for part in parts])
    if len(x) < 3:  # UMAP needs three rows; nothing worth clustering
        return dict.fromkeys(targets, float("nan"))
    reduced = umap_reduce(x, seed)
    out = {}
    for name, labels in targets.items():
        labels = np.asarray(labels, dtype=object)
        keep = np.array([label is not None for label in labels], dtype=bool)
        out[name] = ward_ami(reduced[keep], labels[keep])
    return out


def effective_rank(embeddings: np.ndarray, max_rows: int = 10_000, seed: int = 0) -> float:
    """exp(entropy of the singular values normalised to sum 1), uncentred (Roy & Vetterli 2007).

    1.0 for rank-1 data, D for an isotropic D-dim cloud. Computed on at most ``max_rows`` rows.
    """
    x = np.asarray(embeddings, dtype=np.float64)[_subsample(len(embeddings), max_rows, seed)]
    s = np.linalg.svd(x, compute_uv=False)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over all pairs i ≠ j (exact, O(N·D)); 1.0 = all embeddings point one way."""
    x = l2_normalize(as_tensor(embeddings)).double()
    n = x.shape[0]
    if n < 2:
        return float("nan")
    total = x.sum(dim=0)
    self_sims = (x * x).sum()
    return float(((total @ total) - self_sims) / (n * (n - 1)))


# -------------------------------------------------------------------------------------------- protocol
def first_occurrence_indices(sequences: Sequence[str]) -> np.ndarray:
    """Indices of the first occurrence of each distinct sequence, in input order."""
    seen: set[str] = set()
    keep = []
    for index, sequence in enumerate(sequences):
        if sequence not in seen:
            seen.add(sequence)
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


def label(value: Any) -> str | None:
    """A usable label or None (missing: None, NaN, empty, 'nan', 'None')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text in ("", "nan", "None", "NaN") else text


@dataclass
class Partition:
    """One de-duplicated partition; missing labels are None. ``occurrence`` maps every record of the split (input
    order, duplicated barcodes included) to its de-duplicated row, and ``record_species`` / ``record_bin`` are each
    record's own labels: zero-shot clustering uses every record, as BIOSCAN-5M does."""

    name: str
    processids: list[str]
    sequences: list[str]
    genus: list[str | None]
    species: list[str | None]
    bin: list[str | None]
    occurrence: np.ndarray
    record_species: list[str | None]
    record_bin: list[str | None]

    def __len__(self) -> int:
        return len(self.sequences)

    def sha256(self) -> str:
        """Fingerprint of the rows' sequences in their order: results stored per row are only comparable under the
        same one."""
        return hashlib.sha256("\n".join(self.sequences).encode()).hexdigest()

    def has(self, column: str) -> np.ndarray:
        """Boolean mask of rows that have a label in ``column`` (genus / species / bin)."""
        return np.array([value is not None for value in getattr(self, column)], dtype=bool)

    def labels(self, column: str, mask: np.ndarray) -> np.ndarray:
        return np.array([value for value, keep in zip(getattr(self, column), mask) if keep], dtype=object)

    def subsample(self, max_rows: int, seed: int) -> Partition:
        """At most ``max_rows`` rows drawn uniformly without replacement (deterministic; input order kept), with
        the records of those rows."""
        if len(self) <= max_rows:
            return self
        rows = np.sort(np.random.default_rng(seed).permutation(len(self))[:max_rows])
        renumber = np.full(len(self), -1, dtype=np.int64)
        renumber[rows] = np.arange(len(rows))
        kept = renumber[self.occurrence] >= 0
        columns = ("processids", "sequences", "genus", "species", "bin")
        return Partition(
            self.name,
            *([getattr(self, c)[i] for i in rows] for c in columns),
            occurrence=renumber[self.occurrence][kept],
            record_species=[s for s, keep in zip(self.record_species, kept) if keep],
            record_bin=[b for b, keep in zip(self.record_bin, kept) if keep],
        )


@dataclass
class Protocol:
    """The three evaluation partitions plus what was done to build them."""

    train: Partition
    test: Partition
    unseen: Partition
    description: str
    counts: dict[str, int] = field(default_factory=dict)


def model_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique row names: each folder's name, or ``parent/name`` (else the whole path) where names clash."""
    for depth in (1, 2):
        names = ["/".join(Path(path).parts[-depth:]) for path in paths]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


def _partition(records: list[dict], name: str) -> tuple[Partition, int]:
    rows = [r for r in records if r.get("split") == name]
    sequences = [str(r["dna_barcode"]) for r in rows]
    keep = first_occurrence_indices(sequences)
    kept = [rows[i] for i in keep]
    row_of = {sequences[i]: row for row, i in enumerate(keep)}
    partition = Partition(
        name=name,
        processids=[str(r.get("processid", "")) for r in kept],
        sequences=[sequences[i] for i in keep],
        genus=[label(r.get("genus")) for r in kept],
        species=[label(r.get("species")) for r in kept],
        bin=[label(r.get("dna_bin")) for r in kept],
        occurrence=np.array([row_of[s] for s in sequences], dtype=np.int64),
        record_species=[label(r.get("species")) for r in rows],
        record_bin=[label(r.get("dna_bin")) for r in rows],
    )
    return partition, len(rows) - len(kept)


def _ensure_splits(records: list[dict], seed: int) -> tuple[list[dict], bool]:
    if any(label(r.get("split")) for r in records):
        return records, False
    from barcodemae.data import assign_bioscan_splits  # written alongside; imported only when needed

    splits = assign_bioscan_splits(records, seed=seed)  # one split name per record
    return [{**record, "split": split} for record, split in zip(records, splits)], True


def prepare_protocol(
    records: list[dict],
    *,
    seen_split: str = "test",
    unseen_split: str = "test_unseen",
    train_split: str = "train",
    seed: int = 0,
) -> Protocol:
    """Build the train / seen-test / unseen partitions from BIOSCAN-style records.

    Records need ``dna_barcode`` (already cleaned), ``genus``, ``species``, ``dna_bin`` and ``split``; tune with
    ``seen_split="val", unseen_split="val_unseen"``. Without any ``split`` value, splits are assigned by
    ``barcodemae.data.assign_bioscan_splits(records, seed=seed)`` (noted in the description). Each partition is
    de-duplicated on the barcode (first occurrence kept). ``counts`` records duplicates removed and rows lacking
    the labels of each task. BIOSCAN-5M's files work as they ship: its ``train`` / ``test`` / ``test_unseen`` are
    the defaults (genus 1-NN of ``test_unseen`` against ``train``, as its DNA benchmark does), and the description
    names the partitions left unused (``key_unseen``, the retrieval keys of unseen species, is not a reference
    here; ``pretrain``, ``other_heldout``, ``val``, ``val_unseen``) and any split value BIOSCAN-5M does not define.
    """
    records, assigned = _ensure_splits(list(records), seed)
    present = Counter(label(r.get("split")) or "(none)" for r in records)
    train, dup_train = _partition(records, train_split)
    test, dup_test = _partition(records, seen_split)
    unseen, dup_unseen = _partition(records, unseen_split)
    for partition in (train, test, unseen):
        if len(partition) == 0:
            found = ", ".join(f"{name!r} ({n})" for name, n in sorted(present.items()))
            raise ValueError(
                f"partition {partition.name!r} is empty: no record has split={partition.name!r}; split values: {found}"
            )
    counts = {
        f"{train_split}_duplicates_removed": dup_train,
        f"{seen_split}_duplicates_removed": dup_test,
        f"{unseen_split}_duplicates_removed": dup_unseen,
        f"{train_split}_without_genus": int((~train.has("genus")).sum()),
        f"{train_split}_without_species": int((~train.has("species")).sum()),
        f"{seen_split}_without_species": int((~test.has("species")).sum()),
        f"{unseen_split}_without_genus": int((~unseen.has("genus")).sum()),
    }
    origin = "splits assigned by barcodemae.data.assign_bioscan_splits" if assigned else "splits from the data"
    description = (
        f"reference/probe-train={train_split} ({len(train)}), seen queries={seen_split} ({len(test)}), "
        f"unseen queries={unseen_split} ({len(unseen)}); {origin}; each partition de-duplicated on the cleaned "
        f"barcode (first occurrence kept); rows lacking a task's label excluded from that task and counted; "
        f"zero-shot clustering of every record of {seen_split} + {unseen_split} (BIOSCAN-5M: z-score, UMAP to 50 "
        f"dimensions, Ward).{_unused_splits(present, (train_split, seen_split, unseen_split))}"
    )
    return Protocol(train=train, test=test, unseen=unseen, description=description, counts=counts)


def _unused_splits(present: Counter, used: Sequence[str]) -> str:
    """`` Unused partitions: key_unseen (n), ...`` and `` Split values BIOSCAN-5M does not define: ...``."""
    from barcodemae.data import SPLIT_NAMES

    unused = [(name, n) for name, n in sorted(present.items()) if name not in used]
    parts = [
        (" Unused partitions: ", [(name, n) for name, n in unused if name in SPLIT_NAMES]),
        (" Split values BIOSCAN-5M does not define: ", [(name, n) for name, n in unused if name not in SPLIT_NAMES]),
    ]
    return "".join(f"{title}{', '.join(f'{name} ({n:,})' for name, n in rows)}." for title, rows in parts if rows)


# ------------------------------------------------------------------------------------------- evaluation
def _embed(fn: EmbedFn, sequences: list[str], name: str, **kwargs) -> np.ndarray:
    emb = np.asarray(fn(sequences, **kwargs), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(sequences):
        raise ValueError(f"{name}: embedding function returned shape {emb.shape} for {len(sequences)} sequences")
    return emb


def _genus_unseen(protocol: Protocol, train_emb: np.ndarray, unseen_emb: np.ndarray) -> IdentificationScore:
    ref, query = protocol.train.has("genus"), protocol.unseen.has("genus")
    predicted = one_nn_predict(unseen_emb[query], train_emb[ref], protocol.train.labels("genus", ref))
    species = [s or g for s, g in zip(protocol.unseen.species, protocol.unseen.genus)]
    species = [name for name, keep in zip(species, query) if keep]
    return identification_score(predicted, protocol.unseen.labels("genus", query), species)


def _genus_metrics(score: IdentificationScore) -> dict[str, Any]:
    return {
        "genus_1nn_unseen_accuracy": score.micro,
        "genus_1nn_unseen_accuracy_interval": score.micro_interval,
        "genus_1nn_unseen_per_species": score.per_species,
        "genus_1nn_unseen_per_species_interval": score.per_species_interval,
    }


def _species_tasks(protocol: Protocol, train_emb, test_emb, seed: int, probe: ProbeConfig | None) -> dict[str, Any]:
    ref, query = protocol.train.has("species"), protocol.test.has("species")
    ref_labels, query_labels = protocol.train.labels("species", ref), protocol.test.labels("species", query)
    seen = np.isin(query_labels.astype(str), ref_labels.astype(str))
    probe = linear_probe(train_emb[ref], ref_labels, test_emb[query], query_labels, seed=seed, config=probe)
    nearest = one_nn_predict(test_emb[query][seen], train_emb[ref], ref_labels) if seen.any() else []
    species_1nn, species_1nn_interval = accuracy_with_interval(nearest, query_labels[seen], seed=seed)
    return {
        "species_linear_probe_accuracy": probe["accuracy"],
        "species_linear_probe_accuracy_interval": probe["accuracy_interval"],
        "species_linear_probe_macro_f1": probe["macro_f1"],
        "species_1nn_test_accuracy": species_1nn,
        "species_1nn_test_accuracy_interval": species_1nn_interval,
        "test_species_not_in_train": probe["n_test_excluded"],
    }


def _clustering(protocol: Protocol, test_emb: np.ndarray, unseen_emb: np.ndarray, seed: int) -> dict[str, float]:
    """:func:`zero_shot_clustering` of every record of the seen and unseen test partitions, vs BIN and species."""
    parts = (protocol.test, protocol.unseen)
    records = [emb[part.occurrence] for part, emb in zip(parts, (test_emb, unseen_emb))]
    targets = {
        "bin_ami": [label for part in parts for label in part.record_bin],
        "species_ami": [label for part in parts for label in part.record_species],
    }
    return zero_shot_clustering(records, targets, seed=seed)


def _embed_partitions(embed: EmbedFn, protocol: Protocol, stage: Stage) -> list[np.ndarray]:
    vectors = []
    for partition in (protocol.train, protocol.test, protocol.unseen):
        stage(f"embedding {partition.name} ({len(partition):,})")
        vectors.append(_embed(embed, partition.sequences, partition.name))
    return vectors


def _evaluate_vectors(
    protocol: Protocol, train_emb, test_emb, unseen_emb, seed: int, probe, stage: Stage = no_stage
) -> dict[str, Any]:
    """All embedding-based metrics from the three partitions' vectors (rows aligned with the partitions)."""
    stage("species linear probe and 1-NN")
    species = _species_tasks(protocol, train_emb, test_emb, seed, probe)
    stage("genus 1-NN")
    genus = _genus_unseen(protocol, train_emb, unseen_emb)
    stage("zero-shot clustering (UMAP, Ward)")
    clustering = _clustering(protocol, test_emb, unseen_emb, seed)
    eval_emb = np.concatenate([test_emb, unseen_emb])
    health_rows = _subsample(len(eval_emb), 10_000, seed)
    return {
        "species_linear_probe_accuracy": species["species_linear_probe_accuracy"],
        "species_linear_probe_accuracy_interval": species["species_linear_probe_accuracy_interval"],
        "species_linear_probe_macro_f1": species["species_linear_probe_macro_f1"],
        **_genus_metrics(genus),
        "species_1nn_test_accuracy": species["species_1nn_test_accuracy"],
        "species_1nn_test_accuracy_interval": species["species_1nn_test_accuracy_interval"],
        "harmonic_mean": harmonic_mean(species["species_linear_probe_accuracy"], genus.micro),
        **clustering,
        "effective_rank": effective_rank(eval_emb[health_rows]),
        "mean_pairwise_cosine": mean_pairwise_cosine(eval_emb[health_rows]),
        "n_train": len(protocol.train),
        "n_test": len(protocol.test),
        "n_unseen": len(protocol.unseen),
        "counts": {**protocol.counts, "test_species_not_in_train": species["test_species_not_in_train"]},
        "protocol": protocol.description,
    }


def _robustness(
    embed: EmbedFn,
    protocol: Protocol,
    train_emb: np.ndarray,
    unseen_emb: np.ndarray,
    rates: Iterable[float],
    seed: int,
    max_queries: int | None,
    stage: Stage = no_stage,
) -> tuple[dict[str, dict[float, float]], dict[str, dict[float, tuple | None]]]:
    """Genus 1-NN of (at most ``max_queries``, a fixed random subset of) unseen queries embedded under inference-time
    masking / token deletion, against clean references; rate 0 is the clean embedding of the same subset.
    Returns the curves ``{kind: {rate: accuracy}}`` and their bootstrap 95% intervals in the same shape."""
    ref, query = protocol.train.has("genus"), protocol.unseen.has("genus")
    rows = np.flatnonzero(query)
    if max_queries is not None and len(rows) > max_queries:
        rows = np.sort(np.random.default_rng(seed).permutation(rows)[:max_queries])
    selected = np.zeros(len(query), dtype=bool)
    selected[rows] = True
    labels, ref_labels = protocol.unseen.labels("genus", selected), protocol.train.labels("genus", ref)
    sequences = [protocol.unseen.sequences[i] for i in rows]

    def score(emb: np.ndarray) -> tuple[float, tuple | None]:
        return accuracy_with_interval(one_nn_predict(emb, train_emb[ref], ref_labels), labels, seed=seed)

    clean = score(unseen_emb[selected])
    curves: dict[str, dict[float, float]] = {"masking": {}, "deletion": {}}
    intervals: dict[str, dict[float, tuple | None]] = {"masking": {}, "deletion": {}}
    for kind, argument in (("masking", "masking_rate"), ("deletion", "deletion_rate")):
        for rate in rates:
            noisy = clean
            if rate != 0:
                stage(f"robustness: {kind} {rate:g}")
                noisy = score(_embed(embed, sequences, protocol.unseen.name, **{argument: rate, "seed": seed}))
            curves[kind][float(rate)], intervals[kind][float(rate)] = noisy
    return curves, intervals


def evaluate_embedder(
    embed: EmbedFn,
    protocol: Protocol,
    *,
    robustness_rates: Sequence[float] | None = DEFAULT_ROBUSTNESS_RATES,
    seed: int = 0,
    probe: ProbeConfig | None = None,
    robustness_queries: int | None = 2000,
    stage: Stage = no_stage,
) -> dict[str, Any]:
    """Full protocol for an embedding function ``embed(sequences, *, masking_rate, deletion_rate, seed)``.

    Returns the keys in :data:`RESULT_KEYS` (accuracies with ``<key>_interval``, bootstrap 95%) plus ``counts``
    (exclusions), ``protocol`` (description) and, when ``robustness_rates`` is given, ``robustness =
    {"masking": {rate: acc}, "deletion": {rate: acc}}`` (genus 1-NN on the unseen partition with queries embedded
    under masking/deletion; references always clean) and ``robustness_interval`` in the same shape.
    ``probe`` overrides the linear probe's :class:`ProbeConfig` (e.g. fewer epochs in a training callback).
    The robustness curves use a fixed random subset of at most ``robustness_queries`` unseen queries (None: all).
    ``stage`` is told each stage as it starts.
    """
    train_emb, test_emb, unseen_emb = _embed_partitions(embed, protocol, stage)
    result = _evaluate_vectors(protocol, train_emb, test_emb, unseen_emb, seed, probe, stage)
    if robustness_rates is not None:
        result["robustness"], result["robustness_interval"] = _robustness(
            embed, protocol, train_emb, unseen_emb, robustness_rates, seed, robustness_queries, stage
        )
    return result


def evaluate_features(
    features_fn: Callable[[list[str]], np.ndarray],
    protocol: Protocol,
    *,
    seed: int = 0,
    probe: ProbeConfig | None = None,
    stage: Stage = no_stage,
) -> dict[str, Any]:
    """The same metrics for a non-neural feature map (e.g. k-mer counts): no robustness curves."""
    return _evaluate_vectors(protocol, *_embed_partitions(features_fn, protocol, stage), seed, probe, stage)


def evaluate_predictor(
    predict: Callable[[list[str], list[str], list[str]], Sequence], protocol: Protocol, stage: Stage = no_stage
) -> dict[str, Any]:
    """Metrics for a method that predicts labels directly, ``predict(queries, refs, ref_labels) -> labels``
    (e.g. vsearch top hit): genus on unseen and species on test; embedding-only metrics are None."""
    stage("genus of unseen queries")
    ref, query = protocol.train.has("genus"), protocol.unseen.has("genus")
    refs = [s for s, keep in zip(protocol.train.sequences, ref) if keep]
    queries = [s for s, keep in zip(protocol.unseen.sequences, query) if keep]
    genus_pred = predict(queries, refs, list(protocol.train.labels("genus", ref)))
    species_of = [s or g for s, g, keep in zip(protocol.unseen.species, protocol.unseen.genus, query) if keep]
    genus = identification_score(genus_pred, protocol.unseen.labels("genus", query), species_of)
    stage("species of seen queries")
    ref, query = protocol.train.has("species"), protocol.test.has("species")
    ref_labels = protocol.train.labels("species", ref)
    seen = query & np.isin(np.asarray(protocol.test.species, dtype=object).astype(str), ref_labels.astype(str))
    refs = [s for s, keep in zip(protocol.train.sequences, ref) if keep]
    queries = [s for s, keep in zip(protocol.test.sequences, seen) if keep]
    species_pred = predict(queries, refs, list(ref_labels))
    species, species_interval = accuracy_with_interval(species_pred, protocol.test.labels("species", seen))
    result = dict.fromkeys(RESULT_KEYS)
    result.update(
        **_genus_metrics(genus),
        species_1nn_test_accuracy=species,
        species_1nn_test_accuracy_interval=species_interval,
        n_train=len(protocol.train),
        n_test=len(protocol.test),
        n_unseen=len(protocol.unseen),
        counts=dict(protocol.counts),
        protocol=protocol.description,
    )
    return result


def is_classifier(path: str | Path) -> bool:
    """Whether the folder holds a sequence classifier (e.g. ``barcodemae finetune``'s ``OUTPUT_DIR``)."""
    config = Path(path) / "config.json"
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") if config.is_file() else None
    return any(name.endswith("ForSequenceClassification") for name in architectures or ())


def load_classifier(path: str | Path):
    """``(classifier, tokenizer)`` of a local ``AutoModelForSequenceClassification`` folder (offline)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from barcodemae.embedding import pick_device

    options = {"trust_remote_code": True, "local_files_only": True}
    classifier = AutoModelForSequenceClassification.from_pretrained(str(path), **options)
    return classifier.to(pick_device()).eval(), AutoTokenizer.from_pretrained(str(path), **options)


@torch.inference_mode()
def classify(classifier, tokenizer, sequences: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """The label (``config.id2label``) each sequence's highest logit names."""
    device, names = next(classifier.parameters()).device, classifier.config.id2label
    predicted = []
    for start in range(0, len(sequences), batch_size):
        batch = tokenizer(
            list(sequences[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        )
        logits = classifier(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        predicted += logits.logits.argmax(-1).tolist()
    return np.array([names[i] for i in predicted], dtype=object)


def finetuned_species_accuracy(classifier, tokenizer, protocol: Protocol, seed: int = 0) -> dict[str, Any]:
    """BIOSCAN-5M's fine-tune column: species accuracy of a classifier fine-tuned on ``train`` species, on the rows
    the linear probe scores (``test`` rows whose species occurs in ``train``), with a bootstrap 95% interval. A
    classifier none of whose labels is a ``train`` species (e.g. a genus classifier) gets None and the reason."""
    ref_species = set(protocol.train.labels("species", protocol.train.has("species")))
    if not ref_species & {str(name) for name in classifier.config.id2label.values()}:
        return {"species_finetune_accuracy": None, "species_finetune_skipped": "its labels are not species of train"}
    rows = [i for i, species in enumerate(protocol.test.species) if species in ref_species]
    predicted = classify(classifier, tokenizer, [protocol.test.sequences[i] for i in rows])
    score, interval = accuracy_with_interval(predicted, [protocol.test.species[i] for i in rows], seed=seed)
    return {"species_finetune_accuracy": score, "species_finetune_accuracy_interval": interval}


# --------------------------------------------------------------------------------------------- reporting
_COLUMNS = (
    ("species_finetune_accuracy", "species fine-tune acc", 2),
    ("species_linear_probe_accuracy", "species probe acc", 2),
    ("species_linear_probe_macro_f1", "species probe macro-F1", 2),
    ("genus_1nn_unseen_accuracy", "genus 1-NN unseen", 2),
    ("genus_1nn_unseen_per_species", "genus 1-NN unseen per species", 2),
    ("species_1nn_test_accuracy", "species 1-NN test", 2),
    ("harmonic_mean", "harmonic mean", 2),
    ("bin_ami", "BIN AMI", 3),
    ("species_ami", "species AMI", 3),
    ("effective_rank", "eff. rank", 1),
    ("mean_pairwise_cosine", "mean cos", 3),
    ("n_train", "n train", 0),
    ("n_test", "n test", 0),
    ("n_unseen", "n unseen", 0),
)
_OPTIONAL = {"species_finetune_accuracy"}  # columns shown only when a row has a value


def _cell(value: Any, digits: int, interval: Sequence[float] | None = None) -> str:
    """The value ('–' if missing), with its interval as `` [low, high]`` (one decimal) when there is one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:,}" if digits == 0 else f"{value:.{digits}f}"
    return text if interval is None else f"{text} [{interval[0]:.1f}, {interval[1]:.1f}]"


def results_to_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One row per model/baseline; metrics that do not apply show '–' (the fine-tune column only appears when a row
    has it); a row ``{"skipped": reason}`` shows the reason. Accuracies show their bootstrap 95% interval in
    brackets. A second table lists robustness curves (genus 1-NN unseen vs rate, with intervals) for rows that have
    them."""
    columns = [c for c in _COLUMNS if c[0] not in _OPTIONAL or any(r.get(c[0]) is not None for r in results.values())]
    header = "| model | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [header, "|---|" + "---:|" * len(columns)]
    for name, row in results.items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |" + " |" * (len(columns) - 1))
            continue
        cells = (_cell(row.get(key), d, row.get(f"{key}_interval")) for key, _, d in columns)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = {name: row for name, row in results.items() if row.get("robustness")}
    if rows:
        lines += ["", _robustness_table(rows)]
    return "\n".join(lines) + "\n"


def _robustness_table(rows: dict[str, dict[str, Any]]) -> str:
    rates = sorted({rate for row in rows.values() for kind in row["robustness"].values() for rate in kind}, key=float)
    lines = [
        "| model | perturbation | " + " | ".join(f"{float(rate):g}" for rate in rates) + " |",
        "|---|---|" + "---:|" * len(rates),
    ]
    for name, row in rows.items():
        for kind, values in row["robustness"].items():
            intervals = row.get("robustness_interval", {}).get(kind, {})
            cells = (_cell(values.get(r), 2, intervals.get(r)) for r in rates)
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- end-to-end runner
BASELINES = ("random", "kmer", "vsearch")
KMER_SIZES = (4, 5, 6)


def load_records(data: str | Path) -> tuple[list[dict], dict[str, Any]]:
    """Cleaned records (``barcodemae.data`` rules: 660 nt, trailing N stripped...) and the cleaning summary."""
    from barcodemae.data import TAXONOMY_COLUMNS, read_barcodes

    raw, report = read_barcodes(data)
    columns = (*TAXONOMY_COLUMNS, "dna_bin", "split")
    records = [
        {"processid": r.record_id, "dna_barcode": r.sequence, **{c: r.metadata.get(c) for c in columns}} for r in raw
    ]
    return records, {"n_records": report.n_records, "n_kept": report.n_kept, "skipped": dict(report.skipped)}


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
