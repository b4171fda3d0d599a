"""Baselines: k-mer count features and the vsearch top-hit classifier."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from barcodemae import baselines
from barcodemae.baselines import ToolNotFound, kmer_count_features, kmer_count_vector, vsearch_genus_1nn
from barcodemae.simulate import simulate_barcodes


def test_kmer_counts_known_values():
    counts = kmer_count_vector("ACGTAC", 2)  # AC CG GT TA AC
    index = {"AC": 1, "CG": 6, "GT": 11, "TA": 12}
    assert counts.shape == (16,) and counts.sum() == 5
    assert {i: counts[i] for i in index.values()} == {1: 2, 6: 1, 11: 1, 12: 1}
    # windows touching a non-ACGT character are skipped; lower case counts
    assert kmer_count_vector("acNgt", 2).sum() == 2 and kmer_count_vector("A", 4).sum() == 0


def test_kmer_features_normalised():
    features = kmer_count_features(["ACGTACGT", "AAAA", "NN"], 4)
    assert features.shape == (3, 256) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), [1, 1, 0], atol=1e-6)
    assert features[1, 0] == pytest.approx(1.0)  # AAAA only


def test_vsearch_missing_raises(monkeypatch):
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    with pytest.raises(ToolNotFound, match="apt-get install vsearch"):
        vsearch_genus_1nn(["ACGT"], ["ACGT"], ["G"])


@pytest.mark.skipif(shutil.which("vsearch") is None, reason="vsearch not installed (apt-get install vsearch)")
def test_vsearch_top_hit_genus():
    records = simulate_barcodes(n_orders=1, families_per_order=2, genera_per_family=2, specimens_per_species=3)
    refs = [r for i, r in enumerate(records) if i % 3]
    queries = [r for i, r in enumerate(records) if i % 3 == 0]
    predicted = vsearch_genus_1nn(
        [q["dna_barcode"] for q in queries] + ["ACGT" * 5],
        [r["dna_barcode"] for r in refs],
        [r["genus"] for r in refs],
        threads=1,
    )
    assert predicted[-1] is None  # no hit at --id 0.5
    assert predicted[:-1] == [q["genus"] for q in queries]


def test_sparse_kmer_matrix_and_nearest_match_the_dense_counts():
    sequences = [r["dna_barcode"] for r in simulate_barcodes(seed=3)][:60] + ["NNNN"]
    dense = kmer_count_features(sequences, 5)
    sparse = baselines.kmer_count_matrix(sequences, 5)
    np.testing.assert_allclose(sparse.toarray(), dense, atol=1e-6)
    queries, references = sequences[::3], sequences[1::3]
    expected = (kmer_count_features(queries, 5) @ kmer_count_features(references, 5).T).argmax(1)
    np.testing.assert_array_equal(baselines.kmer_nearest(queries, references, 5, chunk_size=7), expected)
    assert baselines.kmer_count_matrix(sequences[:2], 8).shape == (2, 4**8)
