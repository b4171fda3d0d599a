"""The evaluation partitions: records read and cleaned, split, de-duplicated and counted."""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from barcodemae.data import assign_bioscan_splits

logger = logging.getLogger(__name__)


def load_records(data: str | Path) -> tuple[list[dict], dict[str, Any]]:
    """Cleaned records (``barcodemae.data`` rules: 660 nt, trailing N stripped...) and the cleaning summary."""
    from barcodemae.data import TAXONOMY_COLUMNS, read_barcodes

    raw, report = read_barcodes(data)
    columns = (*TAXONOMY_COLUMNS, "dna_bin", "split")
    records = [
        {"processid": r.record_id, "dna_barcode": r.sequence, **{c: r.metadata.get(c) for c in columns}} for r in raw
    ]
    return records, {"n_records": report.n_records, "n_kept": report.n_kept, "skipped": dict(report.skipped)}


def first_occurrence_indices(sequences: Sequence[str]) -> np.ndarray:
    """Indices of the first occurrence of each distinct sequence, in input order."""
    seen: set[str] = set()
    keep = []
    for index, sequence in enumerate(sequences):
        if sequence not in seen:
            seen.add(sequence)
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


def label(value: Any) -> str | None:
    """A usable label or None (missing: None, NaN, empty, 'nan', 'None')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text in ("", "nan", "None", "NaN") else text


@dataclass
class Partition:
    """One de-duplicated partition; missing labels are None. ``occurrence`` maps every record of the split (input
    order, duplicated barcodes included) to its de-duplicated row, and ``record_species`` / ``record_bin`` are each
    record's own labels: zero-shot clustering uses every record, as BIOSCAN-5M does."""

    name: str
    processids: list[str]
    sequences: list[str]
    genus: list[str | None]
    species: list[str | None]
    bin: list[str | None]
    occurrence: np.ndarray
    record_species: list[str | None]
    record_bin: list[str | None]

    def __len__(self) -> int:
        return len(self.sequences)

    def sha256(self) -> str:
        """Fingerprint of the rows' sequences in their order: results stored per row are only comparable under the
        same one."""
        return hashlib.sha256("\n".join(self.sequences).encode()).hexdigest()

    def has(self, column: str) -> np.ndarray:
        """Boolean mask of rows that have a label in ``column`` (genus / species / bin)."""
        return np.array([value is not None for value in getattr(self, column)], dtype=bool)

    def labels(self, column: str, mask: np.ndarray) -> np.ndarray:
        return np.array([value for value, keep in zip(getattr(self, column), mask) if keep], dtype=object)

    def subsample(self, max_rows: int, seed: int) -> Partition:
        """At most ``max_rows`` rows drawn uniformly without replacement (deterministic; input order kept), with
        the records of those rows."""
        if len(self) <= max_rows:
            return self
        rows = np.sort(np.random.default_rng(seed).permutation(len(self))[:max_rows])
        renumber = np.full(len(self), -1, dtype=np.int64)
        renumber[rows] = np.arange(len(rows))
        kept = renumber[self.occurrence] >= 0
        columns = ("processids", "sequences", "genus", "species", "bin")
        return Partition(
            self.name,
            *([getattr(self, c)[i] for i in rows] for c in columns),
            occurrence=renumber[self.occurrence][kept],
            record_species=[s for s, keep in zip(self.record_species, kept) if keep],
            record_bin=[b for b, keep in zip(self.record_bin, kept) if keep],
        )


@dataclass
class Protocol:
    """The three evaluation partitions plus what was done to build them."""

    train: Partition
    test: Partition
    unseen: Partition
    description: str
    counts: dict[str, int] = field(default_factory=dict)


def _partition(records: list[dict], name: str) -> tuple[Partition, int]:
    rows = [r for r in records if r.get("split") == name]
    sequences = [str(r["dna_barcode"]) for r in rows]
    keep = first_occurrence_indices(sequences)
    kept = [rows[i] for i in keep]
    row_of = {sequences[i]: row for row, i in enumerate(keep)}
    partition = Partition(
        name=name,
        processids=[str(r.get("processid", "")) for r in kept],
        sequences=[sequences[i] for i in keep],
        genus=[label(r.get("genus")) for r in kept],
        species=[label(r.get("species")) for r in kept],
        bin=[label(r.get("dna_bin")) for r in kept],
        occurrence=np.array([row_of[s] for s in sequences], dtype=np.int64),
        record_species=[label(r.get("species")) for r in rows],
        record_bin=[label(r.get("dna_bin")) for r in rows],
    )
    return partition, len(rows) - len(kept)


def _ensure_splits(records: list[dict], seed: int) -> tuple[list[dict], bool]:
    if any(label(r.get("split")) for r in records):
        return records, False
    splits = assign_bioscan_splits(records, seed=seed)  # one split name per record
    return [{**record, "split": split} for record, split in zip(records, splits)], True


def prepare_protocol(
    records: list[dict],
    *,
    seen_split: str = "test",
    unseen_split: str = "test_unseen",
    train_split: str = "train",
    seed: int = 0,
) -> Protocol:
    """Build the train / seen-test / unseen partitions from BIOSCAN-style records.

    Records need ``dna_barcode`` (already cleaned), ``genus``, ``species``, ``dna_bin`` and ``split``; tune with
    ``seen_split="val", unseen_split="val_unseen"``. Without any ``split`` value, splits are assigned by
    ``barcodemae.data.assign_bioscan_splits(records, seed=seed)`` (noted in the description). Each partition is
    de-duplicated on the barcode (first occurrence kept). ``counts`` records duplicates removed and rows lacking
    the labels of each task. BIOSCAN-5M's files work as they ship: its ``train`` / ``test`` / ``test_unseen`` are
    the defaults (genus 1-NN of ``test_unseen`` against ``train``, as its DNA benchmark does), and the description
    names the partitions left unused (``key_unseen``, the retrieval keys of unseen species, is not a reference
    here; ``pretrain``, ``other_heldout``, ``val``, ``val_unseen``) and any split value BIOSCAN-5M does not define.
    """
    records, assigned = _ensure_splits(list(records), seed)
    present = Counter(label(r.get("split")) or "(none)" for r in records)
    train, dup_train = _partition(records, train_split)
    test, dup_test = _partition(records, seen_split)
    unseen, dup_unseen = _partition(records, unseen_split)
    for partition in (train, test, unseen):
        if len(partition) == 0:
            found = ", ".join(f"{name!r} ({n})" for name, n in sorted(present.items()))
            raise ValueError(
                f"partition {partition.name!r} is empty: no record has split={partition.name!r}; split values: {found}"
            )
    counts = {
        f"{train_split}_duplicates_removed": dup_train,
        f"{seen_split}_duplicates_removed": dup_test,
        f"{unseen_split}_duplicates_removed": dup_unseen,
        f"{train_split}_without_genus": int((~train.has("genus")).sum()),
        f"{train_split}_without_species": int((~train.has("species")).sum()),
        f"{seen_split}_without_species": int((~test.has("species")).sum()),
        f"{unseen_split}_without_genus": int((~unseen.has("genus")).sum()),
    }
    origin = "splits assigned by barcodemae.data.assign_bioscan_splits" if assigned else "splits from the data"
    description = (
        f"reference/probe-train={train_split} ({len(train)}), seen queries={seen_split} ({len(test)}), "
        f"unseen queries={unseen_split} ({len(unseen)}); {origin}; each partition de-duplicated on the cleaned "
        f"barcode (first occurrence kept); rows lacking a task's label excluded from that task and counted; "
        f"zero-shot clustering of every record of {seen_split} + {unseen_split} (BIOSCAN-5M: z-score, UMAP to 50 "
        f"dimensions, Ward).{_unused_splits(present, (train_split, seen_split, unseen_split))}"
    )
    return Protocol(train=train, test=test, unseen=unseen, description=description, counts=counts)


def _unused_splits(present: Counter, used: Sequence[str]) -> str:
    """`` Unused partitions: key_unseen (n), ...`` and `` Split values BIOSCAN-5M does not define: ...``."""
    from barcodemae.data import SPLIT_NAMES

    unused = [(name, n) for name, n in sorted(present.items()) if name not in used]
    parts = [
        (" Unused partitions: ", [(name, n) for name, n in unused if name in SPLIT_NAMES]),
        (" Split values BIOSCAN-5M does not define: ", [(name, n) for name, n in unused if name not in SPLIT_NAMES]),
    ]
    return "".join(f"{title}{', '.join(f'{name} ({n:,})' for name, n in rows)}." for title, rows in parts if rows)


# ------------------------------------------------------------------------------------------- held-out partitions
NOVEL_GENUS = "novel_genus"  # the split of genera held out whole (tables without partitions)


def label_text(value: Any) -> str:
    """:func:`label`, with ``""`` for a missing one."""
    return label(value) or ""


def novel_genera(records: list[dict], fraction: float, seed: int) -> list[str]:
    """``round(fraction x n)`` of the n genera of families with >= 2 genera, drawn with ``seed``, skipping a genus
    whose family would be left without a seen genus."""
    genera_of: dict[str, set[str]] = {}
    for record in records:
        family, genus = label_text(record.get("family")), label_text(record.get("genus"))
        if family and genus:
            genera_of.setdefault(family, set()).add(genus)
    candidates = sorted((family, genus) for family, genera in genera_of.items() if len(genera) >= 2 for genus in genera)
    seen = {family: len(genera) for family, genera in genera_of.items()}
    wanted, chosen = round(fraction * len(candidates)), set()
    for index in np.random.default_rng([seed, 2]).permutation(len(candidates)):  # a stream apart from the species'
        family, genus = candidates[index]
        if len(chosen) < wanted and seen[family] > 1 and genus not in chosen:
            chosen.add(genus)
            seen[family] -= 1
    return sorted(chosen)


def hold_out(records: list[dict], genus_fraction: float, seed: int) -> tuple[list[dict], dict]:
    """Partitions for a table without any: `barcodemae.data.assign_bioscan_splits` (``seed``) holds out species as
    ``val_unseen`` / ``test_unseen``, then every row of the :func:`novel_genera` becomes ``novel_genus``. Returns
    the records with their ``split`` and what was held out."""
    genera = novel_genera(records, genus_fraction, seed)
    novel = set(genera)
    splits = assign_bioscan_splits(records, seed=seed)
    records = [
        {**record, "split": NOVEL_GENUS if label_text(record.get("genus")) in novel else split}
        for record, split in zip(records, splits)
    ]
    species = {
        split: sorted({label_text(r.get("species")) for r in records if r["split"] == split})
        for split in ("val_unseen", "test_unseen")
    }
    holdout = {
        "seed": seed,
        "genus_fraction": genus_fraction,
        "rows": dict(sorted(Counter(r["split"] for r in records).items())),
        "novel_genera": genera,
        "val_unseen_species": species["val_unseen"],
        "test_unseen_species": species["test_unseen"],
    }
    logger.info(
        "No split values: held out (seed %d) %d species as val_unseen (probe queries), %d as test_unseen and %d "
        "genera whole as %s: %s; the lists go to run_info.json",
        seed,
        len(species["val_unseen"]),
        len(species["test_unseen"]),
        len(genera),
        NOVEL_GENUS,
        ", ".join(genera) or "none",
    )
    return records, holdout
