"""The protocol's tasks on one method: an embedding function, a feature map or a label predictor."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from barcodemae.evaluation.clustering import (
    effective_rank,
    mean_pairwise_cosine,
    subsample_indices,
    zero_shot_clustering,
)
from barcodemae.evaluation.metrics import (
    IdentificationScore,
    accuracy_with_interval,
    harmonic_mean,
    identification_score,
    one_nn_predict,
)
from barcodemae.evaluation.probe import ProbeConfig, linear_probe
from barcodemae.evaluation.protocol import Protocol

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
    health_rows = subsample_indices(len(eval_emb), 10_000, seed)
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
