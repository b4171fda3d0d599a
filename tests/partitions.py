"""Hand-written partitions shared by the tests of the val protocol's scripts."""

import numpy as np

from barcodemae.evaluation.protocol import Partition


def unseen_queries(sequences: list[str]) -> Partition:
    """A four-query partition: two species of genus A, one (two barcodes) of genus B."""
    return Partition(
        name="val_unseen",
        processids=[f"P{i}" for i in range(len(sequences))],
        sequences=sequences,
        genus=["A", "A", "B", "B"],
        species=["a1", "a2", "b1", "b1"],
        bin=[None] * 4,
        occurrence=np.arange(4),
        record_species=["a1", "a2", "b1", "b1"],
        record_bin=[None] * 4,
    )
