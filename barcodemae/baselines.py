"""Non-neural baselines: overlapping k-mer count vectors (cosine 1-NN / linear probe) and vsearch top hit.

Use with :func:`barcodemae.evaluation.evaluate_features` (``lambda seqs: kmer_count_features(seqs, 5)``) and
:func:`barcodemae.evaluation.evaluate_predictor` (``vsearch_genus_1nn``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_CODE = np.full(256, -1, dtype=np.int64)
for _i, _base in enumerate("ACGT"):
    _CODE[ord(_base)] = _i
    _CODE[ord(_base.lower())] = _i


class ToolNotFound(RuntimeError):
    """An external program needed by a baseline is not installed; report the row as skipped."""


def kmer_count_vector(sequence: str, k: int) -> np.ndarray:
    """Counts of every overlapping ACGT k-mer (lexicographic order, 4**k entries); k-mers with other characters
    (N, IUPAC, gaps) are skipped. Not normalised."""
    codes = _CODE[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]
    n = len(codes) - k + 1
    if n <= 0:
        return np.zeros(4**k, dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(codes, k)
    windows = windows[(windows >= 0).all(axis=1)]
    ids = windows @ (4 ** np.arange(k - 1, -1, -1, dtype=np.int64))
    return np.bincount(ids, minlength=4**k).astype(np.float32)


def kmer_count_features(sequences: Sequence[str], k: int = 5) -> np.ndarray:
    """(N, 4**k) float32 overlapping k-mer counts, each row L2-normalised (all-zero rows stay zero)."""
    if not 1 <= k <= 8:
        raise ValueError(f"k must be in 1..8 for dense k-mer counts, got {k}")
    features = np.zeros((len(sequences), 4**k), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        features[row] = kmer_count_vector(sequence, k)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def kmer_count_matrix(sequences: Sequence[str], k: int):
    """Sparse (N, 4**k) CSR matrix of overlapping ACGT k-mer counts, rows L2-normalised: k up to 8 (65,536 columns)
    for a whole reference library without a dense N x 4**k array."""
    from scipy import sparse

    indptr, indices, values = [0], [], []
    for sequence in sequences:
        counts = kmer_count_vector(sequence, k)
        nonzero = np.flatnonzero(counts)
        indices.append(nonzero)
        values.append(counts[nonzero] / max(float(np.linalg.norm(counts)), 1e-12))
        indptr.append(indptr[-1] + len(nonzero))
    indices_, values_ = (np.concatenate(x) if x else np.zeros(0) for x in (indices, values))
    return sparse.csr_matrix((values_.astype(np.float32), indices_, indptr), shape=(len(sequences), 4**k))


def kmer_nearest(query_seqs: Sequence[str], ref_seqs: Sequence[str], k: int, chunk_size: int = 512) -> np.ndarray:
    """Index of each query's cosine-nearest reference by overlapping k-mer counts (first index on ties)."""
    queries, refs_t = kmer_count_matrix(query_seqs, k), kmer_count_matrix(ref_seqs, k).T.tocsr()
    nearest = np.empty(len(query_seqs), dtype=np.int64)
    for start in range(0, len(query_seqs), chunk_size):
        nearest[start : start + chunk_size] = (
            np.asarray((queries[start : start + chunk_size] @ refs_t).todense()).argmax(1).ravel()
        )
    return nearest


def _write_fasta(path: Path, sequences: Sequence[str]) -> None:
    with path.open("w") as handle:
        for index, sequence in enumerate(sequences):
            handle.write(f">{index}\n{sequence}\n")


def vsearch_genus_1nn(
    query_seqs: Sequence[str],
    ref_seqs: Sequence[str],
    ref_labels: Sequence[str],
    threads: int = 2,
    min_id: float = 0.5,
) -> list[str | None]:
    """Label of each query's top ``vsearch --usearch_global`` hit (``--id min_id``, default settings otherwise, i.e.
    ``--maxaccepts 1 --maxrejects 32``: the first accepted hit in vsearch's k-mer pre-ranking).

    Works for any label (genus, species). Queries without a hit at ``min_id`` get None (counted wrong).
    Raises :class:`ToolNotFound` when ``vsearch`` is not on PATH.
    """
    executable = shutil.which("vsearch")
    if executable is None:
        raise ToolNotFound("vsearch not installed (apt-get install vsearch)")
    if len(query_seqs) == 0:
        return []
    with tempfile.TemporaryDirectory(prefix="barcodemae-vsearch-") as tmp:
        queries, refs, hits = Path(tmp, "queries.fasta"), Path(tmp, "refs.fasta"), Path(tmp, "hits.tsv")
        _write_fasta(queries, query_seqs)
        _write_fasta(refs, ref_seqs)
        command = [
            executable,
            "--usearch_global",
            str(queries),
            "--db",
            str(refs),
            "--id",
            str(min_id),
            "--threads",
            str(threads),
            "--userout",
            str(hits),
            "--userfields",
            "query+target",
            "--quiet",
        ]
        completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        if completed.returncode != 0:
            raise RuntimeError(f"vsearch failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
        predictions: list[str | None] = [None] * len(query_seqs)
        for line in hits.read_text().splitlines():
            query, target = line.split("\t")
            predictions[int(query)] = ref_labels[int(target)]
    return predictions
