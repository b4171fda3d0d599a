"""The reference index: a labelled reference library embedded once, with every rank of its taxonomy, the
novel-species thresholds and the per-rank confidence model calibrated on it (build, save, load).

**Novel-species threshold** (:func:`calibrate_threshold`), unless given explicitly: calibrated on the reference
itself by leave-one-out. For up to ``max_queries`` reference barcodes (random, seed 0) whose species has at least
two reference barcodes, ``known`` = similarity of the nearest *other* reference barcode of the same species (what
a query of a known species sees) and ``novel`` = similarity of the nearest reference barcode of a *different*
species (what it would see had its species been left out of the reference). The threshold is the value that best
separates the two, i.e. maximises the balanced accuracy ``(P(novel < t) + P(known >= t)) / 2``; among equally good
values the lowest midpoint between two observed similarities is taken. Genera with at least
:data:`GENUS_MIN_QUERIES` calibration barcodes get their own threshold by the same rule on their barcodes. A
calibration on fewer than :data:`MIN_CALIBRATION_SPECIES` species is weak: ``details["warning"]`` says so.
References without a species label take no part in the calibration (they are still searched). The margin of a
query's best similarity over its threshold is one input of the species confidence (:mod:`barcodemae.assign`),
whose model is fitted on the reference at build time too.

**Identical barcodes are stored, embedded and searched once.** A reference of R rows (ids, labels of every rank)
holds D <= R distinct cleaned barcodes (``groups[row]``: the distinct barcode of each row, numbered in order of
first appearance); a search finds the nearest distinct barcodes and answers with all their rows
(:class:`barcodemae.search.GroupedSearcher`), so the neighbours, votes and confidences are those of a search over
every row, and the calibration runs on every row as before (the `train` partition: 89,407 rows, 46,029 distinct).

A reference **index** (:class:`ReferenceIndex`) is a folder with ``embeddings.safetensors`` (tensor
``"embeddings"``, ``(D, hidden)`` float32, one row per distinct barcode, ``"groups"``, ``(R,)`` int64, and for
every rank and BIN of :data:`barcodemae.formats.LABEL_KEYS` the reference has, ``"labels.<rank>"``, ``(R,)`` int32
codes into that rank's names, -1 for no label), ``index.json`` (format, model path and embedding fingerprint,
reference file, search method, ids, each rank's names (``label_names``: sorted, distinct), the thresholds, the
confidence model and how they were calibrated), ``sequences.txt`` (the D distinct cleaned barcodes, one a line,
for ``--rerank align``) and, for approximate search, ``ann.safetensors`` (:class:`barcodemae.search.AnnIndex`'s
centroids and inverted lists over the distinct barcodes), so a large reference is embedded and indexed once.
Loading maps the embeddings, label codes and inverted lists into memory read-only instead of reading them
(:func:`map_embeddings`): a 1M-reference folder opens in a fraction of a second and only the parts a search touches
are read from disk; a saved approximate index is searched without faiss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from barcodemae.assign import ConfidenceModel, LabelColumn, Taxonomy, fit_confidence
from barcodemae.data import CleaningReport
from barcodemae.embedding import DEFAULT_CHUNK, Embedder, embed_chunks, iter_records
from barcodemae.formats import LABEL_KEYS
from barcodemae.io import atomic_folder, map_safetensors
from barcodemae.search import AnnIndex, GroupedSearcher, Searcher, exact_searcher, resolve_method

INDEX_FORMAT = "barcodemae-reference-index"
INDEX_VERSION = 5
INDEX_FILE = "index.json"
INDEX_EMBEDDINGS = "embeddings.safetensors"
INDEX_SEQUENCES = "sequences.txt"
INDEX_ANN = "ann.safetensors"
GENUS_MIN_QUERIES = 10
MIN_CALIBRATION_SPECIES = 100


# ------------------------------------------------------------------------------------------- thresholds
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
    """Reference embeddings with their ids, labels of every rank, barcodes, search method, novel-species
    thresholds and confidence model. ``embeddings`` has one row per distinct barcode, ``groups`` the distinct barcode
    of each reference row (None: every row is its own); ids, labels and sequences are per row."""

    embeddings: np.ndarray
    ids: list[str]
    labels: dict[str, Sequence[str]]  # rank (of LABEL_KEYS) -> one label per reference ("" unknown)
    model: str
    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)
    confidence: ConfidenceModel = field(default_factory=ConfidenceModel)
    reference_file: str = ""
    model_fingerprint: str = ""  # the `fingerprint()` of the embedder that embedded it
    sequences: list[str] | None = None  # the cleaned barcodes, per row (needed by --rerank align)
    search: str = "exact"  # "exact" or "ann"
    ann: AnnIndex | None = None  # over the distinct barcodes
    groups: np.ndarray | None = None  # (R,) row -> distinct barcode (row of ``embeddings``)
    _taxonomy: Taxonomy | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def genus(self) -> list[str]:
        return self.labels.get("genus", [""] * len(self.ids))

    @property
    def species(self) -> list[str]:
        return self.labels.get("species", [""] * len(self.ids))

    @property
    def taxonomy(self) -> Taxonomy:
        """The labels as integer codes per rank (built once)."""
        if self._taxonomy is None:
            self._taxonomy = Taxonomy(self.labels, len(self.ids))
        return self._taxonomy

    @property
    def row_embeddings(self) -> np.ndarray:
        """``(R, hidden)``: the embedding of every reference row (a copy when rows share barcodes)."""
        return self.embeddings if self.groups is None else np.asarray(self.embeddings)[self.groups]

    def use_search(self, method: str) -> None:
        """Search by ``method`` (``exact``, ``ann``, ``auto`` by the number of distinct barcodes); an approximate
        index is built when missing."""
        self.search = resolve_method(method, len(self.embeddings))
        if self.search == "ann" and self.ann is None:
            self.ann = AnnIndex.build(self.embeddings)

    def searcher(self) -> Searcher:
        """Nearest reference rows: the distinct barcodes searched (approximately or exactly), each hit expanded to
        its rows."""
        distinct = self.ann if self.search == "ann" and self.ann is not None else exact_searcher(self.embeddings)
        return distinct if self.groups is None else GroupedSearcher(distinct, self.groups)

    def threshold_for(self, genus: str) -> float:
        """The novel-species threshold of a best neighbour of this genus."""
        return self.calibration.get("genus_thresholds", {}).get(genus, self.threshold)

    def species_thresholds(self, genus_codes: np.ndarray) -> np.ndarray:
        """:meth:`threshold_for` of each genus code of :attr:`taxonomy` (-1: no genus, the global threshold)."""
        names = self.taxonomy.names["genus"]
        table = np.array([*(self.threshold_for(str(name)) for name in names), self.threshold])
        return table[np.where(genus_codes >= 0, genus_codes, len(names))]

    def set_threshold(self, threshold: float) -> None:
        """A given threshold, for every genus."""
        self.threshold, self.calibration = threshold, {"rule": "given"}

    def calibrate(self, threshold: float | None = None) -> None:
        """The novel-species thresholds (calibrated unless given) and the per-rank confidence model."""
        embeddings = self.row_embeddings
        if threshold is None:
            self.threshold, self.calibration = calibrate_threshold(embeddings, self.species, self.genus)
        else:
            self.set_threshold(threshold)
        self.confidence = fit_confidence(embeddings, self.taxonomy, self.species_thresholds)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder atomically (an existing index folder at ``path`` is replaced)."""
        from safetensors.numpy import save_file

        meta = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "reference_file": self.reference_file,
            "hidden_size": int(self.embeddings.shape[1]),
            "search": self.search,
            "novel_threshold": self.threshold,
            "calibration": self.calibration,
            "confidence": self.confidence.to_dict(),
            "ids": self.ids,
        }
        groups = np.arange(len(self.ids)) if self.groups is None else self.groups
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings, np.float32), "groups": groups.astype(np.int64)}
        columns = {key: LabelColumn.encode(labels) for key, labels in self.labels.items()}
        meta["label_names"] = {key: column.names.tolist() for key, column in columns.items()}
        tensors.update({f"labels.{key}": np.asarray(column.codes, np.int32) for key, column in columns.items()})
        with atomic_folder(path, replace=lambda old: (old / INDEX_FILE).is_file()) as folder:
            save_file(tensors, str(folder / INDEX_EMBEDDINGS))
            if self.sequences is not None:
                distinct = [""] * len(self.embeddings)
                for row, group in enumerate(groups.tolist()):
                    distinct[group] = distinct[group] or self.sequences[row]
                (folder / INDEX_SEQUENCES).write_text("".join(f"{s}\n" for s in distinct), encoding="ascii")
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
        """Open an index folder (embeddings and inverted lists memory-mapped); the barcodes only ``with_sequences``."""
        path = Path(path)
        if not (path / INDEX_FILE).is_file() or not (path / INDEX_EMBEDDINGS).is_file():
            raise FileNotFoundError(f"{path}: not a reference index folder (needs {INDEX_FILE} and {INDEX_EMBEDDINGS})")
        meta = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path / INDEX_FILE}: not a {INDEX_FORMAT} file")
        if meta.get("version") != INDEX_VERSION:
            raise ValueError(
                f"{path}: an index of version {meta.get('version')} (this version reads {INDEX_VERSION}: each distinct "
                "barcode stored once, the approximate index in ann.safetensors); rebuild it with --reference ... "
                "--save-index"
            )
        if with_sequences and not (path / INDEX_SEQUENCES).is_file():
            raise FileNotFoundError(f"{path}: the index holds no {INDEX_SEQUENCES}; rebuild it")
        search = meta.get("search", "exact")
        embeddings, groups = map_embeddings(path / INDEX_EMBEDDINGS), map_tensor(path / INDEX_EMBEDDINGS, "groups")
        if groups.shape != (len(meta["ids"]),) or groups.min() < 0 or groups.max() >= len(embeddings):
            raise ValueError(
                f"{path / INDEX_EMBEDDINGS}: 'groups' does not map the {len(meta['ids'])} rows; rebuild it"
            )
        sequences = None
        if with_sequences:
            distinct = (path / INDEX_SEQUENCES).read_text(encoding="ascii").splitlines()
            sequences = [distinct[group] for group in groups.tolist()]
        return cls(
            embeddings=embeddings,
            ids=meta["ids"],
            labels=load_labels(path / INDEX_EMBEDDINGS, meta.get("label_names", {}), len(meta["ids"])),
            model=meta["model"],
            threshold=float(meta["novel_threshold"]),
            calibration=meta.get("calibration", {}),
            confidence=ConfidenceModel.from_dict(meta["confidence"]),
            reference_file=meta.get("reference_file", ""),
            model_fingerprint=meta.get("model_fingerprint", ""),
            sequences=sequences,
            search=search,
            ann=AnnIndex.load(path / INDEX_ANN) if search == "ann" else None,
            groups=None
            if len(embeddings) == len(groups) and bool((groups == np.arange(len(groups))).all())
            else groups,
        )


def map_embeddings(path: Path) -> np.ndarray:
    """The ``"embeddings"`` tensor of a safetensors file as a read-only memory map."""
    return map_tensor(path, "embeddings")


_TENSORS = {  # name -> safetensors dtype, ndim, description
    "embeddings": ("F32", 2, "(R, hidden) float32"),
    "groups": ("I64", 1, "(R,) int64"),
    **{f"labels.{key}": ("I32", 1, "(R,) int32") for key in LABEL_KEYS},
}


def load_labels(path: Path, names: dict[str, list[str]], rows: int) -> dict[str, LabelColumn]:
    """Each rank's labels of an index: its names (index.json) and its codes (memory-mapped, checked)."""
    labels = {}
    for key, key_names in names.items():
        codes = map_tensor(path, f"labels.{key}")
        if codes.shape != (rows,) or (rows and (codes.min() < -1 or codes.max() >= len(key_names))):
            raise ValueError(f"{path}: the {key} labels do not match the {rows} rows; rebuild it")
        labels[key] = LabelColumn(key_names, codes)
    return labels


def map_tensor(path: Path, name: str) -> np.ndarray:
    """The tensor ``name`` of :data:`_TENSORS` of an index's safetensors file as a read-only memory map."""
    dtype, ndim, description = _TENSORS[name]
    try:
        return map_safetensors(path, name, dtype, ndim)
    except ValueError as error:
        raise ValueError(f"{path}: expected a non-empty {description} tensor {name!r}; rebuild it") from error


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
    taxonomy: dict[str, dict[str, str]] | None = None,
) -> tuple[ReferenceIndex, CleaningReport]:
    """Embed a labelled reference (any format :mod:`barcodemae.data` reads; ``taxonomy``: labels by id for a plain
    FASTA), calibrate the thresholds (unless one is given) and the confidences, and build the approximate index
    when ``search`` asks for it."""
    resolve_method(search, 0)  # a bad method, or "ann" without faiss, is refused before the reference is embedded
    report = CleaningReport()
    ids: list[str] = []
    labels: dict[str, list[str]] = {rank: [] for rank in LABEL_KEYS}
    sequences: list[str] = []
    groups: list[int] = []
    distinct: dict[str, int] = {}  # cleaned barcode -> its row in the embeddings

    def first_copies(records):
        """Every record into the row lists; only a barcode's first record goes on to be embedded."""
        for record in records:
            ids.append(record.record_id)
            for rank, values in labels.items():
                values.append(record.metadata.get(rank, ""))
            sequences.append(record.sequence)
            new = record.sequence not in distinct
            groups.append(distinct.setdefault(record.sequence, len(distinct)))
            if new:
                yield record

    parts: list[np.ndarray] = []
    records = iter_records(reference_path, embedder, report, strict, taxonomy=taxonomy)
    for _, embeddings in embed_chunks(first_copies(records), embedder, chunk_size, progress):
        parts.append(embeddings)
    if not parts:
        raise ValueError(f"{reference_path}: no usable reference barcode\n{report.summary()}")
    embeddings = np.concatenate(parts)
    parts.clear()  # one copy of the embeddings from here on (1 GiB at 1M references)
    labels = {rank: LabelColumn.encode(values) for rank, values in labels.items() if any(values)}
    rows = np.asarray(groups, dtype=np.int64)
    unique = len(embeddings) == len(rows)
    index = ReferenceIndex(embeddings, ids, labels, str(model_path), 0.0, groups=None if unique else rows)
    index.calibrate(threshold)
    index.reference_file = str(reference_path)
    index.model_fingerprint = embedder.fingerprint()
    index.sequences = sequences
    index.use_search(search)
    return index, report
