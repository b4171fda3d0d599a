"""scripts/novelty_protocol.py: the scores of the novel-species flag, overall and by query length."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from novelty_protocol import acgt_bases, by_length, flag_scores  # noqa: E402


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
