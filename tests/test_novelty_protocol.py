"""scripts/novelty_protocol.py: the scores of the novel-species flag, overall and by query length, and the bounds
the labels set."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from novelty_protocol import (  # noqa: E402
    acgt_bases,
    barcode_gap,
    by_length,
    flag_scores,
    learned_rule,
    neighbor_features,
    reference_neighbors,
)


def test_flag_scores_count_margins_below_zero_as_flagged():
    scores = flag_scores(known=np.array([0.1, 0.0, -0.2, 0.3]), novel=np.array([-0.1, -0.3, 0.05]))
    assert scores["known_cleared"] == 0.75 and scores["novel_flagged"] == round(2 / 3, 4)
    assert scores["balanced_accuracy"] == round((0.75 + 2 / 3) / 2, 4)


def test_by_length_splits_queries_by_acgt_bases():
    known, novel = ["ACGT" * 80, "ACGTN" * 100, "ACGT" * 160], ["AC" * 100, "NNNN" + "ACGT" * 150]
    known_bases, novel_bases = acgt_bases(known), acgt_bases(novel)
    assert known_bases.tolist() == [320, 400, 640] and novel_bases.tolist() == [200, 600]
    rows = {
        row["bases"]: row
        for row in by_length(np.array([-0.1, 0.2, 0.1]), np.array([-0.5, 0.1]), known_bases, novel_bases)
    }
    assert rows["0-299"] == {
        "bases": "0-299",
        "known_queries": 0,
        "known_cleared": None,
        "novel_queries": 1,
        "novel_flagged": 1.0,
    }
    assert rows["300-399"]["known_cleared"] == 0.0 and rows["400-499"]["known_cleared"] == 1.0
    assert rows["600+"] == {
        "bases": "600+",
        "known_queries": 1,
        "known_cleared": 1.0,
        "novel_queries": 1,
        "novel_flagged": 0.0,
    }


def test_barcode_gap_counts_queries_on_the_wrong_side_of_99_percent():
    known = np.array([[1.0, 0.9], [0.985, 0.98], [0.99, 0.5]])  # best identities 1.0, 0.985, 0.99
    novel = np.array([[0.9, 0.995], [0.8, 0.7], [0.95, 0.94], [0.97, 0.2]])  # 0.995, 0.8, 0.95, 0.97
    gap = barcode_gap(known, novel)
    assert gap["candidates"] == 2
    assert gap["known_below_99_percent"] == round(1 / 3, 4) and gap["novel_at_or_above_99_percent"] == 0.25
    # best cut 0.98 < t <= 0.985: every known cleared, 3 of 4 novel flagged
    assert gap["best_balanced_accuracy_any_identity_threshold"] == 0.875


def test_learned_rule_scores_species_it_never_saw():
    """A feature that separates known from novel scores ~1; one that only names the species scores ~0.5, as the
    folds are grouped by species (a species never sits in both the fit and the scored fold)."""
    rng = np.random.default_rng(0)
    species = np.repeat(np.arange(40), 25)  # species 0-19 known, 20-39 novel
    novel = species >= 20
    separating = np.c_[novel + rng.normal(0, 0.1, len(species)), rng.normal(size=len(species))]
    bound = learned_rule(separating[~novel], separating[novel], species)
    assert bound["balanced_accuracy_at_half"] > 0.97
    species_code = rng.normal(size=(40, 2))[species]  # a per-species point: memorisable, not generalisable
    bound = learned_rule(species_code[~novel], species_code[novel], species)
    assert bound["balanced_accuracy_at_half"] < 0.75


def test_reference_neighbors_leave_each_barcode_out():
    refs = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    same, other, size = reference_neighbors(refs, ["a", "a", "b", ""])  # the unlabelled row takes no part
    np.testing.assert_allclose(same[:3], [0.8, 0.8, -1.0])  # b has no second barcode
    np.testing.assert_allclose(other[:3], [0.0, 0.6, 0.6])
    assert size.tolist()[:3] == [2, 2, 1] and (same[3], other[3], size[3]) == (-1, -1, -1)


def test_neighbor_features_read_the_best_hit_and_its_neighbourhood():
    sims = np.array([[0.99, 0.95, 0.9, 0.85, 0.8] + [0.7] * 5])
    idx = np.array([[2, 0, 1, 3, 4, 5, 6, 7, 8, 9]])
    identity = np.array([[0.97, 0.99] + [0.9] * 8])  # the best by identity is not the best by cosine
    species = np.array(["x", "x", "y", "y", "z", "y", "y", "y", "y", "y"], dtype=object)
    reference = (np.arange(10) / 10, np.arange(10) / 20, np.arange(10) + 1.0)
    row = neighbor_features(sims, idx, identity, np.array([-0.02]), species, reference)[0]
    np.testing.assert_allclose(row[:6], [0.99, 0.95, 0.99 - 0.8, 0.99, 0.97, -0.02])
    np.testing.assert_allclose(row[6:9], [0.2, 0.1, 3.0])  # the best hit is reference 2
    np.testing.assert_allclose(row[9:], [0.7, 0.97, 0.02], atol=1e-9)  # 7 of the 10 nearest are species y
