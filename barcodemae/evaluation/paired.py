"""Differences between two methods scored on the same queries: paired bootstrap and seed-pooled intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from barcodemae.evaluation.metrics import correct_predictions


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
