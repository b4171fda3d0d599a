"""Non-neural baselines: overlapping k-mer count vectors (cosine 1-NN / linear probe), vsearch top hit, and the
open-set identifiers of the field (`barcodemae.openset`): ``vsearch --sintax`` and a vsearch top hit with BOLD-style
identity cuts.

Use with :func:`barcodemae.evaluation.tasks.evaluate_features` (``lambda seqs: kmer_count_features(seqs, 5)``) and
:func:`barcodemae.evaluation.tasks.evaluate_predictor` (``vsearch_genus_1nn``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barcodemae.assign import COMMIT_RANKS
from barcodemae.formats import RANK_LETTERS, SINTAX_LETTERS, sintax_name

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


def write_fasta_sequences(path: Path, sequences: Sequence[str], ids: Sequence[str] | None = None) -> None:
    """A FASTA file of ``sequences`` (one line each), headed by ``ids`` or by their index (0, 1, ...)."""
    with path.open("w", encoding="utf-8") as handle:
        for index, sequence in enumerate(sequences):
            handle.write(f">{index if ids is None else ids[index]}\n{sequence}\n")


def vsearch_executable() -> str:
    """The path of ``vsearch``; raises :class:`ToolNotFound` when it is not on PATH."""
    executable = shutil.which("vsearch")
    if executable is None:
        raise ToolNotFound("vsearch not installed (apt-get install vsearch)")
    return executable


def run_vsearch(arguments: Sequence[str]) -> None:
    """Run ``vsearch ARGUMENTS --quiet`` (C locale); raises RuntimeError with the end of its stderr on failure."""
    command = [vsearch_executable(), *arguments, "--quiet"]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if completed.returncode != 0:
        raise RuntimeError(f"vsearch failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")


def vsearch_top_hits(
    query_seqs: Sequence[str],
    ref_seqs: Sequence[str],
    threads: int = 2,
    min_id: float = 0.5,
    max_accepts: int = 1,
    max_rejects: int = 32,
) -> list[tuple[int, float] | None]:
    """``(reference index, percent identity)`` of each query's top ``vsearch --usearch_global`` hit (``--id min_id``;
    of the ``max_accepts`` hits accepted in vsearch's k-mer pre-ranking, the one of highest identity, ``--maxhits
    1``; identity as ``--id`` defines it: edit distance excluding terminal gaps). None where no hit reaches
    ``min_id``. Raises :class:`ToolNotFound` when ``vsearch`` is not on PATH."""
    vsearch_executable()
    if len(query_seqs) == 0:
        return []
    with tempfile.TemporaryDirectory(prefix="barcodemae-vsearch-") as tmp:
        queries, refs, hits = Path(tmp, "queries.fasta"), Path(tmp, "refs.fasta"), Path(tmp, "hits.tsv")
        write_fasta_sequences(queries, query_seqs)
        write_fasta_sequences(refs, ref_seqs)
        run_vsearch(
            [
                *("--usearch_global", str(queries), "--db", str(refs), "--id", str(min_id)),
                *("--maxaccepts", str(max_accepts), "--maxrejects", str(max_rejects), "--maxhits", "1"),
                *("--threads", str(threads), "--userout", str(hits), "--userfields", "query+target+id"),
            ]
        )
        top: list[tuple[int, float] | None] = [None] * len(query_seqs)
        for line in hits.read_text().splitlines():
            query, target, identity = line.split("\t")
            top[int(query)] = (int(target), float(identity))
    return top


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
    hits = vsearch_top_hits(query_seqs, ref_seqs, threads=threads, min_id=min_id)
    return [None if hit is None else ref_labels[hit[0]] for hit in hits]


# ------------------------------------------------------------------------------------------- open-set baselines
BOLD_IDENTITY_CUTS = (("species", 97.0), ("genus", 95.0), ("family", 90.0), ("order", 85.0))
_SINTAX_ITEM = re.compile(r"^([a-z]):(.+)\(([0-9.]+)\)$")


def bold_rank(identity: float | None) -> str | None:
    """The deepest rank a top hit of ``identity`` percent commits to under BOLD-style cuts (:data:`BOLD_IDENTITY_CUTS`:
    species at 97%, genus 95%, family 90%, order 85%), None below 85% or without a hit."""
    if identity is None:
        return None
    return next((rank for rank, cut in BOLD_IDENTITY_CUTS if identity >= cut), None)


def lineage_down_to(lineage: Mapping[str, str | None], rank: str | None) -> dict[str, str]:
    """The labelled ranks of ``lineage`` from order down to ``rank`` (none for None): a committed answer."""
    if rank is None:
        return {}
    ranks = COMMIT_RANKS[: COMMIT_RANKS.index(rank) + 1]
    return {name: str(lineage[name]) for name in ranks if lineage.get(name)}


def sintax_header(identifier: str, lineage: Mapping[str, str | None]) -> str:
    """``ID;tax=k:...,p:...,c:...,o:...,f:...,g:...,s:Genus_species;`` from the lineage's labelled ranks (empty
    ranks omitted; names through :func:`barcodemae.formats.sintax_name`)."""
    labelled = [(letter, lineage[name]) for name, letter in SINTAX_LETTERS.items() if lineage.get(name)]
    items = [f"{letter}:{sintax_name(str(name))}" for letter, name in labelled]
    return f"{identifier};tax={','.join(items)};"


@dataclass(frozen=True)
class SintaxPrediction:
    """One line of ``vsearch --sintax --tabbedout``: the query's label, its prediction at each rank given (rank name
    → ``(taxon, bootstrap confidence in [0, 1])``, top down; taxon names as written in the database), the strand,
    and the ranks vsearch reported at its own ``--sintax_cutoff`` (rank name → taxon; empty without a cut-off)."""

    query: str
    ranks: dict[str, tuple[str, float]]
    strand: str
    above_cutoff: dict[str, str]

    def committed(self, cutoff: float) -> dict[str, str]:
        """The answer at ``cutoff``: order..species predictions whose confidence reaches it, from order down to the
        deepest such rank (SINTAX confidences never grow with depth)."""
        deepest = [rank for rank in COMMIT_RANKS if rank in self.ranks and self.ranks[rank][1] >= cutoff]
        return {} if not deepest else lineage_down_to({r: t for r, (t, _) in self.ranks.items()}, deepest[-1])


def _sintax_taxa(text: str, with_confidence: bool) -> dict:
    taxa: dict = {}
    for item in filter(None, text.strip().split(",")):
        if with_confidence:
            match = _SINTAX_ITEM.match(item)
            if match is None:
                raise ValueError(f"unreadable SINTAX prediction {item!r}")
            letter, name, confidence = match.groups()
            taxa[RANK_LETTERS.get(letter) or letter] = (name, float(confidence))
        else:
            letter, _, name = item.partition(":")
            taxa[RANK_LETTERS.get(letter) or letter] = name
    return taxa


def parse_sintax_line(line: str) -> SintaxPrediction:
    """Read one ``--tabbedout`` line: query, ``k:Name(0.99),p:...`` (empty when nothing was predicted), strand, and
    (with ``--sintax_cutoff``) the names at or above the cut-off."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) < 2:
        raise ValueError(f"SINTAX output line without a prediction column: {line!r}")
    fields += [""] * (4 - len(fields))
    return SintaxPrediction(
        query=fields[0],
        ranks=_sintax_taxa(fields[1], with_confidence=True),
        strand=fields[2],
        above_cutoff=_sintax_taxa(fields[3], with_confidence=False),
    )


def write_sintax_reference(
    path: Path, sequences: Sequence[str], lineages: Sequence[Mapping[str, str | None]]
) -> dict[tuple[str, str], str]:
    """The SINTAX database (headers :func:`sintax_header`, ids ``r0, r1, ...``); returns (rank, SINTAX name) →
    the name as given, to translate predictions back."""
    names: dict[tuple[str, str], str] = {}
    with path.open("w", encoding="utf-8") as handle:
        for index, (sequence, lineage) in enumerate(zip(sequences, lineages)):
            handle.write(f">{sintax_header(f'r{index}', lineage)}\n{sequence}\n")
            for rank in SINTAX_LETTERS:
                if lineage.get(rank):
                    names.setdefault((rank, sintax_name(str(lineage[rank]))), str(lineage[rank]).strip())
    return names


def vsearch_sintax(
    query_seqs: Sequence[str],
    ref_seqs: Sequence[str],
    ref_lineages: Sequence[Mapping[str, str | None]],
    cutoff: float = 0.8,
    threads: int = 2,
    seed: int = 1,
) -> list[SintaxPrediction | None]:
    """``vsearch --sintax`` of each query against references labelled by ``ref_lineages`` (rank name → taxon; the
    ranks of :data:`barcodemae.formats.SINTAX_LETTERS`, empty ones omitted), ``--sintax_cutoff cutoff --randseed
    seed``. Taxon names in the predictions are translated back to the names given. None for a query vsearch wrote
    no line for. Every cut-off can be applied afterwards with :meth:`SintaxPrediction.committed`. Raises
    :class:`ToolNotFound` when ``vsearch`` is not on PATH."""
    vsearch_executable()
    if len(query_seqs) == 0:
        return []
    with tempfile.TemporaryDirectory(prefix="barcodemae-sintax-") as tmp:
        queries, refs, out = Path(tmp, "queries.fasta"), Path(tmp, "refs.fasta"), Path(tmp, "sintax.tsv")
        write_fasta_sequences(queries, query_seqs)
        names = write_sintax_reference(refs, ref_seqs, ref_lineages)
        run_vsearch(
            [
                *("--sintax", str(queries), "--db", str(refs), "--tabbedout", str(out)),
                *("--sintax_cutoff", str(cutoff), "--randseed", str(seed), "--threads", str(threads)),
            ]
        )
        predictions: list[SintaxPrediction | None] = [None] * len(query_seqs)
        for line in out.read_text(encoding="utf-8").splitlines():
            parsed = parse_sintax_line(line)
            predictions[int(parsed.query)] = SintaxPrediction(
                query=parsed.query,
                ranks={r: (names.get((r, t), t), c) for r, (t, c) in parsed.ranks.items()},
                strand=parsed.strand,
                above_cutoff={r: names.get((r, t), t) for r, t in parsed.above_cutoff.items()},
            )
    return predictions
