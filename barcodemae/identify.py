"""Identify query barcodes against a labelled reference (files are read and embedded by
:func:`barcodemae.embedding.embed_chunks`: the same cleaning rules and errors, in chunks, so inputs larger than
memory work).

**Identification** (:func:`identify_file`): each query's ``top_k`` nearest reference barcodes by cosine
similarity of the embeddings (exact search, or approximate from 100,000 references on: ``search`` is
``"exact"``, ``"ann"`` or ``"auto"``, see :mod:`barcodemae.search`). The predicted genus and species are those of
the first neighbour (``neighbor_1``; empty when that reference has no such label), ``cosine_similarity`` is its
cosine similarity. With ``rerank="align"`` the ``candidates`` nearest references by cosine are re-ordered by
alignment identity to the query (:func:`barcodemae.search.alignment_identity`) and the ``alignment_identity``
columns are added. ``novel_species`` is true when the best cosine similarity is below the threshold of the genus
of that best neighbour (the global threshold for genera without their own): the query is probably from a species
absent from the reference. ``novel_threshold`` is that threshold, so the margin to it can be read (a short read's
best similarity is lower than a full barcode's: see the README).

**Novel-species threshold** (:func:`calibrate_threshold`), unless given explicitly: calibrated on the reference
itself by leave-one-out. For up to ``max_queries`` reference barcodes (random, seed 0) whose species has at least
two reference barcodes, ``known`` = similarity of the nearest *other* reference barcode of the same species (what
a query of a known species sees) and ``novel`` = similarity of the nearest reference barcode of a *different*
species (what it would see had its species been left out of the reference). The threshold is the value that best
separates the two, i.e. maximises the balanced accuracy ``(P(novel < t) + P(known >= t)) / 2``; among equally good
values the lowest midpoint between two observed similarities is taken. Genera with at least
:data:`GENUS_MIN_QUERIES` calibration barcodes get their own threshold by the same rule on their barcodes
(balanced accuracy on the real `val`/`val_unseen` split 0.939 vs 0.926 with one threshold; scripts/novelty_protocol.py).
A calibration on fewer than :data:`MIN_CALIBRATION_SPECIES` species is weak: ``details["warning"]`` says so. References
without a species label take no part in the calibration (they are still searched).

A reference **index** (:class:`ReferenceIndex`) is a folder with ``embeddings.safetensors`` (tensor
``"embeddings"``, ``(R, hidden)`` float32), ``index.json`` (format, model path and fingerprint, reference file,
search method, ids, genus and species per row, the thresholds and how they were calibrated), ``sequences.txt``
(the cleaned reference barcodes, one a line, for ``--rerank align``) and, for approximate search, ``ann.faiss``
(the faiss index), so a large reference is embedded and indexed once. Loading maps the embeddings and the faiss
index into memory read-only instead of reading them (:func:`map_embeddings`): a 1M-reference folder opens in a
fraction of a second and only the parts a search touches are read from disk.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from barcodemae.data import BarcodeRecord, CleaningReport
from barcodemae.embedding import DEFAULT_CHUNK, Embedder, embed_chunks, iter_records, model_fingerprint
from barcodemae.io import atomic_folder, atomic_text
from barcodemae.search import AnnIndex, CosineIndex, Searcher, rerank_by_alignment, resolve_method

INDEX_FORMAT = "barcodemae-reference-index"
INDEX_FILE = "index.json"
INDEX_EMBEDDINGS = "embeddings.safetensors"
INDEX_SEQUENCES = "sequences.txt"
INDEX_ANN = "ann.faiss"
RERANK_METHODS = ("none", "align")
GENUS_MIN_QUERIES = 10
MIN_CALIBRATION_SPECIES = 100


# ------------------------------------------------------------------------------------------- threshold
def calibrate_threshold(
    embeddings: np.ndarray,
    species: list[str],
    genus: list[str] | None = None,
    max_queries: int = 2000,
    seed: int = 0,
    reference_chunk: int = 8192,
) -> tuple[float, dict[str, Any]]:
    """Leave-one-out novel-species thresholds on a labelled reference (rule in the module docstring): the global
    threshold, and details (``genus_thresholds`` when ``genus`` is given, ``warning`` for a small reference)."""
    labelled = np.array([i for i, name in enumerate(species) if name], dtype=np.int64)
    names, codes = np.unique(np.asarray(species, dtype=object)[labelled].astype(str), return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    eligible = np.flatnonzero(counts[codes] >= 2)
    if len(names) < 2 or len(eligible) == 0:
        raise ValueError(
            "cannot calibrate the novel-species threshold: the reference needs at least two species and one species "
            "with two or more barcodes; pass --novel-threshold"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=min(max_queries, len(eligible)), replace=False))
    known, novel = _same_and_other_species(embeddings, labelled, codes, chosen, reference_chunk)
    threshold, balanced = _best_split(known, novel)
    details: dict[str, Any] = {
        "rule": "leave-one-out on the reference: maximise balanced accuracy between same-species and "
        "other-species nearest-neighbour similarities",
        "n_queries": len(chosen),
        "n_species": len(names),
        "balanced_accuracy": balanced,
        "known_median": float(np.median(known)),
        "novel_median": float(np.median(novel)),
    }
    if genus is not None:
        chosen_genus = np.asarray(genus, dtype=object)[labelled][chosen]
        details["genus_thresholds"] = _genus_thresholds(known, novel, chosen_genus)
    if len(names) < MIN_CALIBRATION_SPECIES:
        details["warning"] = (
            f"the novel-species threshold was calibrated on a small reference ({len(names)} species, {len(chosen)} "
            f"barcodes; {MIN_CALIBRATION_SPECIES}+ species make it trustworthy): give --novel-threshold or a larger "
            "reference"
        )
    return threshold, details


def _genus_thresholds(known: np.ndarray, novel: np.ndarray, genus: np.ndarray) -> dict[str, float]:
    """The balanced-accuracy threshold of every genus with at least :data:`GENUS_MIN_QUERIES` calibration barcodes."""
    out: dict[str, float] = {}
    for name in sorted({g for g in genus if g}):
        rows = genus == name
        if rows.sum() >= GENUS_MIN_QUERIES:
            out[str(name)] = _best_split(known[rows], novel[rows])[0]
    return out


def _same_and_other_species(
    embeddings: np.ndarray, labelled: np.ndarray, codes: np.ndarray, chosen: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each ``chosen`` labelled row, the cosine similarity of its nearest other labelled row of the same species
    and of a different species (``codes``: species of the ``labelled`` rows of ``embeddings``). The references are
    normalised a chunk at a time, so a large index is never copied whole."""

    def normalised(rows: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings[rows], dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    queries = normalised(labelled[chosen])
    same = np.full(len(chosen), -np.inf, dtype=np.float32)
    other = np.full(len(chosen), -np.inf, dtype=np.float32)
    for start in range(0, len(labelled), chunk):
        sims = queries @ normalised(labelled[start : start + chunk]).T
        columns = np.arange(start, start + sims.shape[1])
        sims[columns[None, :] == chosen[:, None]] = -np.inf  # leave the query itself out
        is_same = codes[chosen][:, None] == codes[start : start + chunk][None, :]
        same = np.maximum(same, np.where(is_same, sims, -np.inf).max(axis=1))
        other = np.maximum(other, np.where(is_same, -np.inf, sims).max(axis=1))
    return same, other


def _best_split(known: np.ndarray, novel: np.ndarray) -> tuple[float, float]:
    """The threshold ``t`` maximising ``(P(novel < t) + P(known >= t)) / 2``, and that balanced accuracy."""
    values = np.unique(np.concatenate([known, novel]).astype(np.float64))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    novel_below = np.searchsorted(np.sort(novel), candidates, side="left") / len(novel)
    known_above = 1.0 - np.searchsorted(np.sort(known), candidates, side="left") / len(known)
    balanced = (novel_below + known_above) / 2
    best = int(np.argmax(balanced))
    return float(candidates[best]), float(balanced[best])


# ------------------------------------------------------------------------------------------- index
@dataclass
class ReferenceIndex:
    """Reference embeddings with their ids, labels, barcodes, search method and novel-species thresholds."""

    embeddings: np.ndarray
    ids: list[str]
    genus: list[str]
    species: list[str]
    model: str
    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)
    reference_file: str = ""
    model_fingerprint: str = ""  # `barcodemae.embedding.model_fingerprint` of the model that embedded it
    sequences: list[str] | None = None  # the cleaned barcodes (needed by --rerank align)
    search: str = "exact"  # "exact" or "ann"
    ann: AnnIndex | None = None

    def use_search(self, method: str) -> None:
        """Search by ``method`` (``exact``, ``ann``, ``auto``); an approximate index is built when missing."""
        self.search = resolve_method(method, len(self.ids))
        if self.search == "ann" and self.ann is None:
            self.ann = AnnIndex.build(self.embeddings)

    def searcher(self) -> Searcher:
        return self.ann if self.search == "ann" and self.ann is not None else CosineIndex(self.embeddings)

    def threshold_for(self, genus: str) -> float:
        """The novel-species threshold of a best neighbour of this genus."""
        return self.calibration.get("genus_thresholds", {}).get(genus, self.threshold)

    def set_threshold(self, threshold: float) -> None:
        """A given threshold, for every genus."""
        self.threshold, self.calibration = threshold, {"rule": "given"}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder atomically (an existing index folder at ``path`` is replaced)."""
        from safetensors.numpy import save_file

        meta = {
            "format": INDEX_FORMAT,
            "version": 2,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "reference_file": self.reference_file,
            "hidden_size": int(self.embeddings.shape[1]),
            "search": self.search,
            "novel_threshold": self.threshold,
            "calibration": self.calibration,
            "ids": self.ids,
            "genus": self.genus,
            "species": self.species,
        }
        with atomic_folder(path, replace=lambda old: (old / INDEX_FILE).is_file()) as folder:
            save_file({"embeddings": np.ascontiguousarray(self.embeddings, np.float32)}, str(folder / INDEX_EMBEDDINGS))
            if self.sequences is not None:
                (folder / INDEX_SEQUENCES).write_text("".join(f"{s}\n" for s in self.sequences), encoding="ascii")
            if self.search == "ann" and self.ann is not None:
                self.ann.save(folder / INDEX_ANN)
            (folder / INDEX_FILE).write_text(json.dumps(meta), encoding="utf-8")
        return Path(path)

    @staticmethod
    def check_target(path: str | os.PathLike) -> None:
        """Refuse early a ``--save-index`` path that is something other than an earlier index folder."""
        path = Path(path)
        if path.exists() and not (path / INDEX_FILE).is_file():
            raise FileExistsError(f"{path} already exists and is not a reference index folder")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path}: folder {str(path.parent)!r} does not exist")

    @classmethod
    def load(cls, path: str | os.PathLike, with_sequences: bool = False) -> ReferenceIndex:
        """Open an index folder (embeddings and faiss index memory-mapped); the barcodes only ``with_sequences`` (an
        index of version 1 has none)."""
        path = Path(path)
        if not (path / INDEX_FILE).is_file() or not (path / INDEX_EMBEDDINGS).is_file():
            raise FileNotFoundError(f"{path}: not a reference index folder (needs {INDEX_FILE} and {INDEX_EMBEDDINGS})")
        meta = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path / INDEX_FILE}: not a {INDEX_FORMAT} file")
        search = meta.get("search", "exact")
        if with_sequences and not (path / INDEX_SEQUENCES).is_file():
            raise FileNotFoundError(
                f"{path}: the index holds no {INDEX_SEQUENCES} (built by an older version); rebuild it"
            )
        return cls(
            embeddings=map_embeddings(path / INDEX_EMBEDDINGS),
            ids=meta["ids"],
            genus=meta["genus"],
            species=meta["species"],
            model=meta["model"],
            threshold=float(meta["novel_threshold"]),
            calibration=meta.get("calibration", {}),
            reference_file=meta.get("reference_file", ""),
            model_fingerprint=meta.get("model_fingerprint", ""),
            sequences=(path / INDEX_SEQUENCES).read_text(encoding="ascii").splitlines() if with_sequences else None,
            search=search,
            ann=AnnIndex.load(path / INDEX_ANN) if search == "ann" else None,
        )


def map_embeddings(path: Path) -> np.ndarray:
    """The ``"embeddings"`` tensor of a safetensors file as a read-only memory map (the format: an 8-byte
    little-endian header length, a JSON header with each tensor's dtype, shape and byte range, then the data)."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        entry = json.loads(file.read(length)).get("embeddings", {})
    shape = tuple(entry.get("shape", ()))
    start, end = entry.get("data_offsets", (0, 0))
    if entry.get("dtype") != "F32" or len(shape) != 2 or end - start != 4 * math.prod(shape) or not shape[0]:
        raise ValueError(f"{path}: expected a non-empty (R, hidden) float32 tensor 'embeddings', found {entry}")
    return np.memmap(path, dtype="<f4", mode="r", offset=8 + length + start, shape=shape)


def build_index(
    reference_path: str | os.PathLike,
    embedder: Embedder,
    model_path: str,
    *,
    threshold: float | None = None,
    search: str = "auto",
    strict: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> tuple[ReferenceIndex, CleaningReport]:
    """Embed a labelled reference table (or FASTA), calibrate the thresholds unless one is given, and build the
    approximate index when ``search`` asks for it."""
    resolve_method(search, 0)  # a bad method, or "ann" without faiss, is refused before the reference is embedded
    report = CleaningReport()
    ids: list[str] = []
    genus: list[str] = []
    species: list[str] = []
    sequences: list[str] = []
    parts: list[np.ndarray] = []
    records = iter_records(reference_path, embedder, report, strict)
    for chunk, embeddings in embed_chunks(records, embedder, chunk_size, progress):
        ids += [record.record_id for record in chunk]
        genus += [record.metadata.get("genus", "") for record in chunk]
        species += [record.metadata.get("species", "") for record in chunk]
        sequences += [record.sequence for record in chunk]
        parts.append(embeddings)
    if not parts:
        raise ValueError(f"{reference_path}: no usable reference barcode\n{report.summary()}")
    embeddings = np.concatenate(parts)
    parts.clear()  # one copy of the embeddings from here on (1 GiB at 1M references)
    calibration: dict[str, Any] = {"rule": "given"}
    if threshold is None:
        threshold, calibration = calibrate_threshold(embeddings, species, genus)
    index = ReferenceIndex(embeddings, ids, genus, species, str(model_path), float(threshold), calibration)
    index.reference_file = str(reference_path)
    index.model_fingerprint = model_fingerprint(embedder.model)
    index.sequences = sequences
    index.use_search(search)
    return index, report


# ------------------------------------------------------------------------------------------- identify
def prediction_columns(top_k: int, rerank: str = "none") -> list[str]:
    """The TSV header: which similarity each column is, by its name (cosine of embeddings, alignment identity)."""
    scores = ["cosine_similarity", "alignment_identity"] if rerank == "align" else ["cosine_similarity"]
    columns = ["query_id", "predicted_genus", "predicted_species", *scores, "novel_species", "novel_threshold"]
    for rank in range(1, top_k + 1):
        columns += [f"neighbor_{rank}_{name}" for name in ("id", "species", "genus", *scores)]
    return columns


def check_model(index: ReferenceIndex, embedder: Embedder) -> None:
    """Refuse an embedder other than the one that embedded ``index`` (width, weights, config)."""
    if index.embeddings.shape[1] != embedder.hidden_size:
        raise ValueError(
            f"the index holds {index.embeddings.shape[1]}-dimensional embeddings but the model gives "
            f"{embedder.hidden_size}; rebuild the index with this model"
        )
    if index.model_fingerprint and index.model_fingerprint != model_fingerprint(embedder.model):
        raise ValueError(
            f"the index was embedded by a model with other weights or config (fingerprint {index.model_fingerprint}) "
            f"than {index.model}'s now ({model_fingerprint(embedder.model)}); rebuild the index with this model"
        )


def identify_file(
    query_path: str | os.PathLike,
    output_path: str | os.PathLike,
    index: ReferenceIndex,
    embedder: Embedder,
    *,
    top_k: int = 5,
    rerank: str = "none",
    candidates: int = 10,
    strict: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> CleaningReport:
    """Write one TSV row per kept query (columns: :func:`prediction_columns`), atomically."""
    if top_k < 1 or candidates < 1:
        raise ValueError(f"--top-k and --candidates must be at least 1, not {top_k} and {candidates}")
    if rerank not in RERANK_METHODS:
        raise ValueError(f"--rerank must be one of {', '.join(RERANK_METHODS)}, not {rerank!r}")
    if rerank == "align" and index.sequences is None:
        raise ValueError("--rerank align needs the reference barcodes: load the index with its sequences")
    check_model(index, embedder)
    top_k = min(top_k, len(index.ids))
    search = index.searcher()
    report = CleaningReport()
    with atomic_text(output_path) as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(prediction_columns(top_k, rerank))
        records = iter_records(query_path, embedder, report, strict)
        for chunk, embeddings in embed_chunks(records, embedder, chunk_size, progress):
            ranked = _rank(search, embeddings, chunk, index, top_k, rerank, candidates)
            _write_predictions(writer, chunk, *ranked, index)
    return report


def _rank(
    search: Searcher,
    embeddings: np.ndarray,
    chunk: list[BarcodeRecord],
    index: ReferenceIndex,
    top_k: int,
    rerank: str,
    candidates: int,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """``(neighbours (n, top_k), score columns, novel flags, thresholds)`` of one chunk: novelty from the best cosine
    and the threshold of that neighbour's genus, before any re-ranking."""
    neighbours, cosine = search.search(embeddings, k=max(top_k, candidates) if rerank == "align" else top_k)
    thresholds = np.array([index.threshold_for(index.genus[int(best)]) for best in neighbours[:, 0]])
    novel = cosine[:, 0] < thresholds
    scores = [cosine]
    if rerank == "align":
        neighbours, cosine, identity = rerank_by_alignment(
            [r.sequence for r in chunk], index.sequences, neighbours, cosine
        )
        scores = [cosine, identity]
    return neighbours[:, :top_k], [score[:, :top_k] for score in scores], novel, thresholds


def _write_predictions(
    writer,
    chunk: list[BarcodeRecord],
    neighbours: np.ndarray,
    scores: list[np.ndarray],
    novel: np.ndarray,
    thresholds: np.ndarray,
    index: ReferenceIndex,
) -> None:
    for row_index, (record, row_neighbours) in enumerate(zip(chunk, neighbours)):
        best = int(row_neighbours[0])
        row = [record.record_id, index.genus[best], index.species[best]]
        row += [f"{score[row_index, 0]:.6f}" for score in scores]
        row += ["true" if novel[row_index] else "false", f"{thresholds[row_index]:.6f}"]
        for rank, neighbour in enumerate(row_neighbours):
            neighbour = int(neighbour)
            row += [index.ids[neighbour], index.species[neighbour], index.genus[neighbour]]
            row += [f"{score[row_index, rank]:.6f}" for score in scores]
        writer.writerow(row)


def read_predictions(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an identification TSV as dicts (for tests and scripts)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def print_report(name: str, report: CleaningReport, stream: TextIO) -> None:
    print(f"{name}: {report.summary()}", file=stream)


__all__ = [
    "ReferenceIndex",
    "build_index",
    "calibrate_threshold",
    "check_model",
    "identify_file",
    "prediction_columns",
    "read_predictions",
]
