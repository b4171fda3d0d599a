"""Evaluation core: metrics on hand-computed cases, nearest neighbours, protocol invariants, plots."""

from __future__ import annotations

import math
import os
from functools import partial

import numpy as np
import pytest
import torch
from tiny_models import tiny_config

from barcodemae import search
from barcodemae.baselines import kmer_count_features
from barcodemae.embedding import Embedder, corrupt_tokens
from barcodemae.evaluation import tasks
from barcodemae.evaluation.clustering import (
    ZERO_SHOT_UMAP,
    effective_rank,
    mean_pairwise_cosine,
    zero_shot_clustering,
    zscore,
)
from barcodemae.evaluation.metrics import (
    accuracy,
    accuracy_with_interval,
    adjusted_mutual_info,
    genus_1nn_accuracy,
    harmonic_mean,
    macro_f1,
    one_nn_accuracy,
)
from barcodemae.evaluation.paired import seed_pooled_difference, seeds_needed
from barcodemae.evaluation.probe import ProbeConfig, linear_probe
from barcodemae.evaluation.protocol import _partition, first_occurrence_indices, load_records, prepare_protocol
from barcodemae.evaluation.report import results_to_markdown
from barcodemae.evaluation.runner import BASELINES, Progress, _Job, _row_jobs, _run_rows, format_seconds, model_names
from barcodemae.evaluation.tasks import (
    RESULT_KEYS,
    Stage,
    _clustering,
    evaluate_embedder,
    evaluate_features,
    evaluate_predictor,
)
from barcodemae.plots import plot_robustness, plot_training_curves, plot_tsne, underrepresented_genera
from barcodemae.simulate import simulate_barcodes
from modeling_barcodemae import BarcodeMAEModel
from tokenization_barcodemae import BarcodeMAETokenizer

QUICK_PROBE = ProbeConfig(lr=1e-2, min_steps=200)  # enough for the (near-)separable simulated features


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def records():
    return simulate_barcodes(specimens_per_species=6, length=240, seed=3)


@pytest.fixture(scope="module")
def protocol(records):
    return prepare_protocol(records)  # no split column: assign_bioscan_splits


# ------------------------------------------------------------------------------------------- metrics
def test_accuracy_and_macro_f1_hand_computed():
    assert accuracy([1, 2, 3], [1, 2, 2]) == pytest.approx(200 / 3)
    assert accuracy(["a", "b"], ["a", "a"]) == pytest.approx(50.0)
    # F1 per class: 1 -> 1, 2 -> P 1 R 1/2 = 2/3, 3 -> 0 (predicted, never true)
    assert macro_f1([1, 2, 3], [1, 2, 2]) == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert math.isnan(accuracy([], []))


def test_ami_and_harmonic_mean():
    assert adjusted_mutual_info([5, 5, 7, 7, 9, 9], ["x", "x", "y", "y", "z", "z"]) == pytest.approx(1.0)
    assert adjusted_mutual_info([0, 0, 0, 0], ["x", "x", "y", "y"]) == pytest.approx(0.0)
    assert harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(None, 50.0) is None
    assert harmonic_mean(float("nan"), 50.0) is None


def test_effective_rank_and_mean_cosine():
    assert effective_rank(np.eye(8)) == pytest.approx(8.0)
    rank_one = np.outer(np.arange(1, 11), np.ones(6))
    assert effective_rank(rank_one) == pytest.approx(1.0)
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert mean_pairwise_cosine(x) == pytest.approx((0 + 2 * 2**-0.5) / 3)
    assert mean_pairwise_cosine(np.ones((5, 3))) == pytest.approx(1.0)


def test_zscore_per_dimension():
    x = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 0.0]])
    z = zscore(x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, 0], [-(1.5**0.5), 0.0, 1.5**0.5])
    assert (z[:, 1] == 0).all()  # a constant dimension carries nothing


def test_zero_shot_clustering_separates_clusters_and_skips_missing_labels():
    rng = np.random.default_rng(0)
    species = np.repeat(["a", "b", "c", "d"], 10)
    centres = {"a": [10, 0, 0], "b": [0, 10, 0], "c": [0, 0, 10], "d": [-10, -10, -10]}
    emb = np.array([centres[label] for label in species]) + rng.normal(scale=0.1, size=(40, 3))
    bins = [None if i % 10 == 0 else f"BOLD:{s}" for i, s in enumerate(species)]
    # two partitions, z-scored separately: the second is shifted and scaled, which z-scoring undoes
    parts = [emb[:20], 3 * emb[20:] + 100]
    result = zero_shot_clustering(parts, {"species": list(species), "bin": bins, "one": ["x"] * 40})
    assert result["species"] == pytest.approx(1.0) and result["bin"] == pytest.approx(1.0)
    assert math.isnan(result["one"])  # a single label cannot be scored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # numba's OpenMP layer must not widen torch's thread pool (OMP_NUM_THREADS=1 stays 1)
        noise = zero_shot_clustering([rng.normal(size=(40, 3))], {"species": list(species)})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert noise["species"] < 0.5
    assert ZERO_SHOT_UMAP == {"n_components": 50, "n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}


def test_accuracy_with_interval_resamples_queries():
    score, (low, high) = accuracy_with_interval(list("aaab"), list("aaaa"))
    assert score == 75.0 and low <= 75.0 <= high and (low, high) != (75.0, 75.0)
    assert accuracy_with_interval(list("ab"), list("ab")) == (100.0, (100.0, 100.0))
    assert accuracy_with_interval([], []) == (pytest.approx(float("nan"), nan_ok=True), None)


def test_seed_pooled_difference_of_identical_seeds_is_one_seeds_interval_over_species():
    rng = np.random.default_rng(0)
    species = np.repeat(np.arange(40), 5)
    base = (rng.random(200) < 0.5).astype(float)
    ahead = base.copy()
    ahead[species < 8] = 1.0  # A gets 8 more species right, whatever the seed
    steady = seed_pooled_difference([ahead, ahead], [base, base], species)
    per_species = 100 * (ahead - base).reshape(40, 5).mean(1)
    assert steady["seeds"] == 2
    assert steady["per_species"] == pytest.approx(per_species.mean(), abs=0.01)
    half = 1.96 * per_species.std(ddof=1) / np.sqrt(40)  # identical seeds: one seed's interval over species
    assert steady["per_species_interval"] == pytest.approx(
        (per_species.mean() - half, per_species.mean() + half), abs=0.01
    )
    assert steady["standard_errors"] > 2 and steady["variance_components"]["noise"] == 0
    same = seed_pooled_difference([base, base], [base, base], species)
    assert same["per_species_interval"] == (0, 0) and same["standard_errors"] is None
    with pytest.raises(ValueError, match="two or more seeds"):
        seed_pooled_difference([ahead], [base], species)


def test_seed_pooled_interval_narrows_with_seeds_when_the_noise_is_each_species_own():
    rng = np.random.default_rng(1)
    species = np.repeat(np.arange(100), 4)
    base = np.zeros(400)
    seeds = [(rng.random(400) < 0.3).astype(float) for _ in range(8)]  # A's hits: fresh noise every seed
    two, eight = (seed_pooled_difference(seeds[:n], [base] * n, species) for n in (2, 8))
    width = {n: r["per_species_interval"][1] - r["per_species_interval"][0] for n, r in ((2, two), (8, eight))}
    assert width[8] < 0.6 * width[2]
    assert eight["variance_components"]["species"] < eight["variance_components"]["noise"] / 5


def test_seed_pooled_interval_counts_a_seed_that_is_better_everywhere():
    species = np.repeat(np.arange(50), 2)
    base = np.zeros(100)
    steady = np.tile([1.0, 0.0], 50)
    lucky = np.ones(100)  # one seed of A gets every query right: its gain is the seed's, not the species'
    result = seed_pooled_difference([steady, steady, lucky], [base] * 3, species)
    alike = seed_pooled_difference([steady] * 3, [base] * 3, species)
    assert result["variance_components"]["seed"] > 0 and alike["variance_components"]["seed"] == 0
    assert result["per_species_interval"][0] < 50 and result["per_species_interval"][1] > 95


def test_seeds_needed_for_two_standard_errors():
    components = {"species": 64.0, "seed": 0.0, "noise": 871.0}  # 0.5 PFLOP's, in points²
    assert seeds_needed(components, 242, 1.59) == 10
    assert seeds_needed(components, 242, 10.0) == 1
    assert seeds_needed(components, 242, 1.0) is None  # the choice of species alone keeps it under 2 SE
    assert seeds_needed(components, 242, 0.0) is None
    with_seed_luck = {**components, "seed": 1.0}
    assert seeds_needed(with_seed_luck, 242, 1.59) > 10


@pytest.mark.parametrize(
    ("spread", "n_seeds"),
    [((0.2, 0.8), 3), ((0.48, 0.52), 6)],  # species that differ a lot; species alike, each seed's noise all there is
)
def test_seed_pooled_interval_covers_the_true_difference_about_95_percent_of_the_time(spread, n_seeds):
    rng = np.random.default_rng(2)
    species = np.repeat(np.arange(60), 5)
    covered = 0
    for _ in range(400):  # 60 species from a population whose mean A − B is 50 points
        p = np.repeat(rng.uniform(*spread, 60), 5)
        seeds = [(rng.random(300) < p).astype(float) for _ in range(n_seeds)]
        low, high = seed_pooled_difference(seeds, [np.zeros(300)] * n_seeds, species)["per_species_interval"]
        covered += low <= 50 <= high
    assert 0.91 <= covered / 400 <= 0.985


# ------------------------------------------------------------------------------------ nearest neighbours
@pytest.mark.parametrize("k", [1, 3])
def test_nearest_neighbors_chunked_equals_brute_force(k):
    rng = np.random.default_rng(1)
    queries, refs = rng.normal(size=(50, 8)), rng.normal(size=(301, 8))
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        refs / np.linalg.norm(refs, axis=1, keepdims=True)
    ).T
    expected = np.argsort(-sims, axis=1)[:, :k]
    index = search.CosineIndex(refs, reference_chunk=13)
    got, got_sims = index.search(queries, k=k, chunk_size=7)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got_sims, np.take_along_axis(sims, expected, axis=1), atol=1e-5)
    default, _ = search.nearest_neighbors(queries, refs, k=k)
    np.testing.assert_array_equal(default, expected)


def test_nearest_neighbor_ties_pick_lowest_index_across_chunks():
    refs = np.ones((10, 3))
    indices, _ = search.CosineIndex(refs, reference_chunk=3).search(np.ones((4, 3)), k=1)
    assert (indices == 0).all()


def test_one_nn_perfect_and_constant_embeddings():
    ref_genus = np.array(["A", "A", "B", "C", "C"])
    query_genus = np.array(["C", "A", "B", "C"])
    table = dict(zip("ABC", np.eye(3)))
    as_emb = lambda labels: np.stack([table[g] for g in labels])  # noqa: E731
    assert genus_1nn_accuracy(as_emb(query_genus), query_genus, as_emb(ref_genus), ref_genus) == 100.0
    # constant embeddings: every query ties with every reference and gets reference 0's genus ("A")
    constant = one_nn_accuracy(np.ones((4, 3)), query_genus, np.ones((5, 3)), ref_genus)
    assert constant == pytest.approx(100 * np.mean(query_genus == "A"))


def test_linear_probe_separable_and_exclusions():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5, size=(4, 6))
    y_train, y_test = np.repeat(list("abcd"), 20), np.array(list("abcd" * 3) + ["e", "e"])
    x_train = centres[np.searchsorted(list("abcd"), y_train)] + rng.normal(size=(80, 6))
    x_test = np.concatenate([centres[np.arange(12) % 4] + rng.normal(size=(12, 6)), rng.normal(size=(2, 6))])
    result = linear_probe(x_train, y_train, x_test, y_test)
    assert result["accuracy"] == 100.0 and result["macro_f1"] == 100.0
    assert result["accuracy_interval"] == (100.0, 100.0)
    assert (result["n_test"], result["n_test_excluded"], result["n_classes"]) == (12, 2, 4)


# -------------------------------------------------------------------------------------------- protocol
def test_first_occurrence_indices_keep_the_first_of_each_barcode():
    assert first_occurrence_indices(["AC", "GT", "AC", "TT", "GT"]).tolist() == [0, 1, 3]


def test_protocol_split_invariants(protocol):
    train_species = {s for s in protocol.train.species if s}
    train_genera = {g for g in protocol.train.genus if g}
    unseen_species = {s for s in protocol.unseen.species if s}
    assert unseen_species and not unseen_species & train_species
    assert {g for g in protocol.unseen.genus if g} <= train_genera
    assert {s for s in protocol.test.species if s} <= train_species
    for partition in (protocol.train, protocol.test, protocol.unseen):
        assert len(set(partition.sequences)) == len(partition)
    assert "assign_bioscan_splits" in protocol.description


def test_protocol_respects_split_column_dedup_and_missing_labels():
    columns = ("processid", "dna_barcode", "genus", "species", "dna_bin", "split")
    rows = [
        dict(zip(columns, values))
        for values in [
            ("p1", "ACGT", "G", "G a", "B1", "train"),
            ("p2", "ACGT", "G", "G a", "B1", "train"),
            ("p3", "ACGA", "", "", "", "train"),
            ("p4", "ACGT", "G", "G a", "B1", "val"),
            ("p5", "TTTT", "G", "G b", "B2", "val_unseen"),
            ("p6", "TTTA", None, "G c", None, "val_unseen"),
        ]
    ]
    protocol = prepare_protocol(rows, seen_split="val", unseen_split="val_unseen")
    assert protocol.train.processids == ["p1", "p3"] and protocol.test.processids == ["p4"]
    assert protocol.counts["train_duplicates_removed"] == 1
    assert protocol.counts["train_without_genus"] == 1 and protocol.counts["val_unseen_without_genus"] == 1
    assert protocol.unseen.bin == ["B2", None]
    assert protocol.train.occurrence.tolist() == [0, 0, 1]  # every record, duplicates included, for clustering
    assert protocol.train.record_species == ["G a", "G a", None]
    assert "Unused partitions: test (0)" not in protocol.description
    with pytest.raises(ValueError, match=r"is empty.*split values: 'train' \(3\), 'val' \(1\)"):
        prepare_protocol(rows)


def test_subsample_keeps_the_records_of_the_kept_rows():
    rows = [
        {"processid": f"p{i}", "dna_barcode": seq, "genus": "G", "species": f"G {seq}", "split": "train"}
        for i, seq in enumerate(["AAAA", "CCCC", "AAAA", "GGGG", "CCCC", "TTTT"])
    ]
    partition, _ = _partition(rows, "train")
    assert partition.occurrence.tolist() == [0, 1, 0, 2, 1, 3]
    small = partition.subsample(2, seed=0)
    assert len(small) == 2
    kept = [small.sequences[i] for i in small.occurrence]
    assert kept == [seq for seq in (r["dna_barcode"] for r in rows) if seq in small.sequences]
    assert small.record_species == [f"G {seq}" for seq in kept]


BIOSCAN_5M_HEADER = (
    "processid,sampleid,taxon,phylum,class,order,family,subfamily,genus,species,dna_bin,dna_barcode,country,"
    "province_state,coord-lat,coord-lon,image_measurement_value,area_fraction,scale_factor,inferred_ranks,split,"
    "index_bioscan_1M_insect,chunk"
)
BIOSCAN_5M_ROWS = [  # processid, genus, species, dna_bin, barcode, split
    ("P01", "", "", "", "ACGTACGTAAGGCC", "pretrain"),
    ("P02", "Aedes", "Aedes vexans", "BOLD:AAA0001", "AACCGGTTAACCGG", "train"),
    ("P03", "Aedes", "Aedes cinereus", "BOLD:AAA0002", "AACCGGTTTTCCGG", "train"),
    ("P04", "Culex", "Culex pipiens", "BOLD:AAA0003", "TTGGCCAATTGGCC", "train"),
    ("P05", "Aedes", "Aedes vexans", "BOLD:AAA0001", "AACCGGTTAACCGA", "test"),
    ("P06", "Culex", "Culex pipiens", "BOLD:AAA0003", "TTGGCCAATTGGCA", "val"),
    ("P07", "Aedes", "Aedes sp. 1", "BOLD:AAA0004", "AACCTTTTAACCGG", "key_unseen"),
    ("P08", "Aedes", "Aedes sp. 1", "BOLD:AAA0004", "AACCTTTTAACCGT", "test_unseen"),
    ("P09", "Culex", "Culex sp. 2", "BOLD:AAA0005", "TTGGCCAAAAGGCC", "test_unseen"),
    ("P10", "Culex", "Culex sp. 3", "BOLD:AAA0006", "TTGGCCAAAAGGTT", "val_unseen"),
    ("P11", "Gen1", "Gen1 sp. 4", "BOLD:AAA0007", "GGGGCCAAAAGGCC", "other_heldout"),
]


def _bioscan_5m_csv(path, rows=BIOSCAN_5M_ROWS):
    """BIOSCAN-5M's metadata CSV as it ships (all 23 columns; a quoted field holding the delimiter)."""
    lines = [BIOSCAN_5M_HEADER]
    for i, (pid, genus, species, bin_uri, barcode, split) in enumerate(rows):
        taxonomy = f"Arthropoda,Insecta,Diptera,Culicidae,Culicinae,{genus},{species}"
        lines.append(
            f'{pid},S{i},{species or "Diptera"},{taxonomy},{bin_uri},{barcode},Canada,"Ontario, ON",43.5,-80.2,'
            f"12000,0.4,1.2,0,{split},{i},part1"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bioscan_5m_metadata_csv_is_recognised_without_flags(tmp_path):
    records, _ = load_records(_bioscan_5m_csv(tmp_path / "BIOSCAN_5M_Insect_Dataset_metadata.csv"))
    protocol = prepare_protocol(records)
    assert protocol.train.processids == ["P02", "P03", "P04"]  # key_unseen is not a reference for genus 1-NN
    assert protocol.test.processids == ["P05"] and protocol.unseen.processids == ["P08", "P09"]
    assert protocol.unseen.genus == ["Aedes", "Culex"] and protocol.unseen.bin == ["BOLD:AAA0004", "BOLD:AAA0005"]
    assert (
        "Unused partitions: key_unseen (1), other_heldout (1), pretrain (1), val (1), val_unseen (1)."
        in protocol.description
    )
    assert "does not define" not in protocol.description
    renamed = [(*row[:5], "unseen" if row[5] == "key_unseen" else row[5]) for row in BIOSCAN_5M_ROWS]
    records, _ = load_records(_bioscan_5m_csv(tmp_path / "renamed.csv", renamed))
    assert "Split values BIOSCAN-5M does not define: unseen (1)." in prepare_protocol(records).description


# -------------------------------------------------------------------------------------------- end to end
def _label_embedder(protocol, column):
    """Embeds each barcode as the one-hot of its label (looked up by sequence): a perfect embedding."""
    partitions = (protocol.train, protocol.test, protocol.unseen)
    lookup = {s: lab for p in partitions for s, lab in zip(p.sequences, getattr(p, column))}
    names = sorted({lab for lab in lookup.values() if lab})
    calls = []

    def embed(sequences, *, masking_rate=0.0, deletion_rate=0.0, seed=0):
        calls.append((masking_rate, deletion_rate))
        out = np.zeros((len(sequences), len(names) + 1), dtype=np.float32)
        for row, seq in enumerate(sequences):
            out[row, names.index(lookup[seq]) if lookup[seq] else len(names)] = 1.0
        return out

    return embed, calls


def test_perfect_genus_embedding_scores_100(protocol):
    embed, calls = _label_embedder(protocol, "genus")
    result = evaluate_embedder(embed, protocol, robustness_rates=(0.0, 0.5), probe=QUICK_PROBE)
    assert set(RESULT_KEYS) <= set(result)
    assert result["genus_1nn_unseen_accuracy"] == 100.0
    assert result["genus_1nn_unseen_accuracy_interval"] == (100.0, 100.0)
    assert result["robustness"] == {"masking": {0.0: 100.0, 0.5: 100.0}, "deletion": {0.0: 100.0, 0.5: 100.0}}
    assert result["robustness_interval"]["deletion"] == {0.0: (100.0, 100.0), 0.5: (100.0, 100.0)}
    assert (0.5, 0.0) in calls and (0.0, 0.5) in calls and len(calls) == 5
    assert result["n_unseen"] == len(protocol.unseen)


def test_perfect_species_embedding_scores_100_probe(protocol):
    embed, _ = _label_embedder(protocol, "species")
    result = evaluate_embedder(embed, protocol, robustness_rates=None, probe=QUICK_PROBE)
    assert result["species_linear_probe_accuracy"] == 100.0
    assert result["species_1nn_test_accuracy"] == 100.0
    assert result["species_linear_probe_accuracy_interval"] == result["species_1nn_test_accuracy_interval"]
    assert -1 <= result["species_ami"] <= 1 and -1 <= result["bin_ami"] <= 1  # UMAP scores singletons poorly
    assert "robustness" not in result


def test_clustering_uses_every_record_of_both_test_partitions(protocol, monkeypatch):
    seen = {}
    monkeypatch.setattr(tasks, "zero_shot_clustering", lambda parts, targets, seed: seen.update(parts=parts, **targets))
    test_emb = np.arange(len(protocol.test), dtype=np.float32)[:, None]
    unseen_emb = -np.arange(len(protocol.unseen), dtype=np.float32)[:, None]
    _clustering(protocol, test_emb, unseen_emb, seed=0)
    test_part, unseen_part = seen["parts"]
    assert test_part[:, 0].tolist() == protocol.test.occurrence.tolist()
    assert unseen_part[:, 0].tolist() == (-protocol.unseen.occurrence).tolist()
    assert seen["species_ami"] == protocol.test.record_species + protocol.unseen.record_species
    assert seen["bin_ami"] == protocol.test.record_bin + protocol.unseen.record_bin


def test_constant_embedding_scores_chance(protocol):
    result = evaluate_features(lambda seqs: np.ones((len(seqs), 4), dtype=np.float32), protocol, probe=QUICK_PROBE)
    first_genus = next(g for g in protocol.train.genus if g)
    unseen = [g for g in protocol.unseen.genus if g]
    assert result["genus_1nn_unseen_accuracy"] == pytest.approx(100 * np.mean(np.array(unseen) == first_genus))
    assert result["effective_rank"] == pytest.approx(1.0)
    assert result["mean_pairwise_cosine"] == pytest.approx(1.0)


def test_kmer_features_and_predictor_rows(protocol):
    kmer = evaluate_features(lambda seqs: kmer_count_features(seqs, 4), protocol, probe=QUICK_PROBE)
    assert kmer["genus_1nn_unseen_accuracy"] > 50 and kmer["species_1nn_test_accuracy"] > 90
    lookup = {}
    for p in (protocol.train, protocol.test, protocol.unseen):
        lookup.update(zip(p.sequences, zip(p.genus, p.species)))

    def oracle(queries, refs, ref_labels):
        column = 0 if ref_labels[0] in {g for g, _ in lookup.values()} else 1
        return [lookup[q][column] for q in queries]

    direct = evaluate_predictor(oracle, protocol)
    assert direct["genus_1nn_unseen_accuracy"] == 100.0 and direct["species_1nn_test_accuracy"] == 100.0
    assert direct["species_linear_probe_accuracy"] is None and direct["harmonic_mean"] is None
    table = results_to_markdown(
        {"k-mer 4": kmer, "oracle": direct, "vsearch": {"skipped": "vsearch not installed (apt-get install vsearch)"}}
    )
    lines = table.splitlines()
    assert lines[0].startswith("| model |") and len(lines) == 5
    assert "| oracle | – | – | 100.00 [100.0, 100.0] |" in table and "skipped: vsearch not installed" in table
    low, high = kmer["species_linear_probe_accuracy_interval"]
    assert low <= kmer["species_linear_probe_accuracy"] <= high
    assert f"{kmer['species_linear_probe_accuracy']:.2f} [{low:.1f}, {high:.1f}]" in table


def test_markdown_robustness_table():
    row = dict.fromkeys(RESULT_KEYS)
    row["robustness"] = {"masking": {0.0: 50.0, 0.1: 40.0}, "deletion": {0.0: 50.0, 0.1: 30.0}}
    table = results_to_markdown({"m": row})
    assert "| m | masking | 50.00 | 40.00 |" in table and "| m | deletion | 50.00 | 30.00 |" in table
    row["robustness_interval"] = {"masking": {0.0: (45.0, 55.0), 0.1: (35.0, 45.0)}}
    assert "| m | masking | 50.00 [45.0, 55.0] | 40.00 [35.0, 45.0] |" in results_to_markdown({"m": row})


def test_progress_times_each_stage_of_each_row():
    progress = Progress(rows=2, enabled=False)
    for name in ("a", "b"):
        stage = progress.start(name)
        stage("one")
        stage("two")
        progress.finish()
    progress.close()
    assert set(progress.seconds) == {"a", "b"}
    assert set(progress.seconds["a"]) == {"one", "two", "total"}
    assert all(seconds >= 0 for seconds in progress.seconds["b"].values())
    assert format_seconds(42.04) == "42.0 s" and format_seconds(185) == "3 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"


# ------------------------------------------------------------------------------------------------ plots
def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path, records):
    curves = {
        "mae": {"masking": {0.0: 60, 0.5: 40}, "deletion": {0.0: 60, 0.5: 30}},
        "mlm": {"masking": {0.0: 50, 0.5: 45}, "deletion": {0.0: 50, 0.5: 35}},
    }
    assert _is_png(plot_robustness(curves, tmp_path / "robustness.png"))
    genus = [r["genus"] for r in records]
    emb = kmer_count_features([r["dna_barcode"] for r in records], 3)
    by_model = {"a": (emb, genus), "b": (emb[:, ::-1], genus)}
    assert _is_png(plot_tsne(by_model, tmp_path / "t.png", n_genera=3, max_iter=250))
    history = [{"loss": 5.0 - i, "step": 10 * i} for i in range(4)] + [
        {"eval_loss": 3.0, "eval_genus_1nn": 40.0, "eval_runtime": 1.0, "step": 20},
        {"train_runtime": 9.0, "step": 30},
    ]
    assert _is_png(plot_training_curves(history, tmp_path / "sub" / "curves.png"))


def test_underrepresented_genera_lower_half():
    labels = ["big"] * 50 + ["mid"] * 20 + [f"g{i}" for i in range(6) for _ in range(5 + i)] + ["rare"] * 2
    chosen = underrepresented_genera(labels, n_genera=3, seed=0)
    assert len(chosen) == 3 and set(chosen) <= {f"g{i}" for i in range(6)}
    assert chosen == underrepresented_genera(labels, n_genera=3, seed=0)


def test_model_names_are_short_and_unique():
    assert model_names(["pretrained/a", "pretrained/b"]) == ["a", "b"]
    assert model_names(["runs/mae/encoder", "runs/mlm/encoder"]) == ["mae/encoder", "mlm/encoder"]
    assert model_names(["x/run/encoder", "y/run/encoder"]) == ["x/run/encoder", "y/run/encoder"]


# --------------------------------------------------------------------------------- corrupted embeddings
@pytest.mark.parametrize(("readout", "layer_calls"), [("kmer_bag", 0), ("mean", 1)])
def test_deleted_tokens_take_the_fast_path_only_where_the_readout_ignores_positions(records, readout, layer_calls):
    """Fig. 3 deletion: the k-mer bag reads the kept ids alone, so the Embedder skips the transformer layers and
    gets what the full forward pass (with the kept tokens' position ids) gives; a mean readout still runs them."""
    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config(readout=readout)).eval()
    tokenizer = BarcodeMAETokenizer(k_mer=4, model_max_length=50)
    sequences = [r["dna_barcode"] for r in records[:6]]
    encoded = tokenizer.encode_barcodes(sequences)
    special = dict(mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(0)
    ids, mask, positions = corrupt_tokens(
        encoded["input_ids"],
        encoded["attention_mask"],
        0.3,
        "deletion",
        tokenizer.all_special_ids,
        **special,
        generator=generator,
    )
    with torch.no_grad():
        slow = model(input_ids=ids, attention_mask=mask, position_ids=positions).pooler_output.numpy()
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    fast = Embedder(model, tokenizer, batch_size=len(sequences), sort_by_length=False)(sequences, deletion_rate=0.3)
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    assert len(calls) == layer_calls
    assert not np.allclose(fast, Embedder(model, tokenizer)(sequences))  # the deletion did happen


# ------------------------------------------------------------------------------------------ worker processes
def _row_in_a_process(value: int, job: _Job, stage: Stage) -> dict:
    stage("working")
    return {"value": value, "pid": os.getpid(), "threads": torch.get_num_threads(), "train": len(job.protocol.train)}


def test_rows_run_in_worker_processes_in_row_order_with_their_stage_times(protocol):
    import pickle

    pickle.dumps(_row_jobs(["model-a", "model-b"], BASELINES))  # the real rows travel to workers too
    job = _Job(protocol, 0, None, None, [])
    rows = [(f"row {i}", partial(_row_in_a_process, i)) for i in range(3)]
    bar = Progress(len(rows), enabled=False)
    threads = torch.get_num_threads()
    results = _run_rows(rows, job, bar, workers=2)
    assert list(results) == [name for name, _ in rows] and [r["value"] for r in results.values()] == [0, 1, 2]
    assert os.getpid() not in {r["pid"] for r in results.values()} and results["row 0"]["train"] == len(protocol.train)
    assert {r["threads"] for r in results.values()} == {max(1, threads // 2)} and torch.get_num_threads() == threads
    assert set(bar.seconds) == set(results) and set(bar.seconds["row 1"]) == {"working", "total"}
