"""Votes, confidences and the committed rank (barcodemae.assign)."""

from __future__ import annotations

import numpy as np

from barcodemae.assign import Taxonomy, assigned_ranks, cutoffs, fit_confidence, leave_out_neighbors, vote

LABELS = {
    "order": ["O1", "O1", "O1", "O1", "O2"],
    "family": ["F1", "F1", "F2", "F2", "F3"],
    "genus": ["G1", "G1", "G2", "", "G3"],
    "species": ["G1 a", "G1 b", "G2 a", "", "G3 a"],
}


def test_votes_form_one_lineage_weighted_by_similarity():
    taxonomy = Taxonomy(LABELS, 5)
    # query 0: two close F2 references outweigh one slightly closer F1 one; query 1: only its first neighbour
    neighbors = np.array([[0, 2, 3], [4, 0, 1]])
    sims = np.array([[0.900, 0.899, 0.899], [0.95, 0.40, 0.39]])
    votes = vote(neighbors, sims, taxonomy)
    assert taxonomy.decode("family", votes.codes["family"]) == ["F2", "F3"]
    assert taxonomy.decode("genus", votes.codes["genus"]) == ["G2", "G3"]  # reference 3 has no genus: no vote
    assert taxonomy.decode("species", votes.codes["species"]) == ["G2 a", "G3 a"]
    assert taxonomy.decode("kingdom", np.array([-1, -1])) == ["", ""]
    best, share, margin = votes.features["family"][0]
    assert best == np.float64(0.899) and 0.5 < share < 1 and margin == np.float64(0.899 - 0.900)
    assert "kingdom" not in votes.codes  # a rank the reference does not have: no answer


def test_committed_rank_is_the_deepest_whose_confidence_reaches_its_cutoff():
    confidences = {
        "order": np.array([0.9, 0.9, 0.9, 0.01]),
        "family": np.array([0.9, 0.9, 0.2, 0.0]),
        "genus": np.array([0.9, 0.4, 0.1, 0.0]),
        "species": np.array([0.8, 0.1, 0.0, 0.0]),
    }
    assert assigned_ranks(confidences, 0.3) == ["species", "genus", "order", ""]
    assert assigned_ranks(confidences, {"genus": 0.5}) == ["species", "family", "family", ""]
    assert cutoffs(0.7) == {"order": 0.7, "family": 0.7, "genus": 0.7, "species": 0.7}


def test_leave_out_removes_the_whole_taxon_and_confidences_follow_the_scenarios():
    rng = np.random.default_rng(0)
    genus_centres = rng.normal(size=(6, 24))
    labels: dict[str, list[str]] = {"order": [], "family": [], "genus": [], "species": []}
    rows = []
    for g, centre in enumerate(genus_centres):
        for s in range(3):
            species_centre = centre + 0.3 * rng.normal(size=24)
            for _ in range(4):
                rows.append(species_centre + 0.05 * rng.normal(size=24))
                labels["order"].append("O")
                labels["family"].append(f"F{g // 2}")
                labels["genus"].append(f"G{g}")
                labels["species"].append(f"G{g} s{s}")
    embeddings = np.asarray(rows, dtype=np.float32)
    taxonomy = Taxonomy(labels, len(rows))
    neighbors, _ = leave_out_neighbors(embeddings, taxonomy, np.array([0, 13]), "genus", 5)
    genus = taxonomy.codes["genus"]
    assert not np.isin(genus[neighbors[0]], genus[0]).any() and not np.isin(genus[neighbors[1]], genus[13]).any()

    model = fit_confidence(embeddings, taxonomy, lambda codes: np.full(len(codes), 0.9))
    assert {"order", "family", "genus", "species"} <= set(model.weights)
    known, _ = leave_out_neighbors(embeddings, taxonomy, np.arange(0, 72, 7), None, 10)
    novel, _ = leave_out_neighbors(embeddings, taxonomy, np.arange(0, 72, 7), "species", 10)
    for found in (known, novel):
        assert found.shape == (11, 10)
    votes = vote(*leave_out_neighbors(embeddings, taxonomy, np.arange(0, 72, 7), None, 10), taxonomy)
    margin = np.zeros(11)
    species_confidence = model.confidences(votes, margin + 0.1)["species"]
    votes_novel = vote(*leave_out_neighbors(embeddings, taxonomy, np.arange(0, 72, 7), "species", 10), taxonomy)
    novel_confidence = model.confidences(votes_novel, margin - 0.1)["species"]
    assert species_confidence.mean() > 0.8 > 0.2 > novel_confidence.mean()
