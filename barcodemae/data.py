"""Reading and cleaning DNA barcodes from BIOSCAN-5M / BOLD tables and FASTA files.

Input formats: the suffix (optionally followed by ``.gz``) says table or FASTA; the header row, or each FASTA
header, says the dialect (:mod:`barcodemae.formats`). Labels go to the canonical keys ``kingdom phylum class order
family subfamily genus species dna_bin`` and ``marker``; a label is stripped, and the placeholders ``None NA nan
null "not classified" not_classified`` (any case) read as empty (unknown).

* tables ``.tsv`` / ``.txt`` (tab-separated) and ``.csv`` (comma-separated), with a header row. The sequence
  column names the dialect: ``dna_barcode`` BIOSCAN-5M (``phylum .. species, dna_bin, split``, and ``kingdom``,
  ``marker`` if present), ``nucleotides`` BOLD v4 (``phylum_name .. species_name``, ``bin_uri``, ``markercode``),
  ``nuc`` BOLD v5 BCDM (``kingdom .. species``, ``bin_uri``, ``marker_code``). ``processid`` gives the record id
  (``row<N>``, the 1-based data row, when the column is missing or the cell empty); other columns are ignored.
  Fields may be quoted (``"``) and then hold the delimiter or newlines. Every row must have exactly as many fields
  as the header (blank lines are ignored).
* FASTA ``.fasta .fa .fas .fna .ffn``, each header read on its own; the header text after the id is kept as
  ``description``; sequences may span several lines; blank lines are ignored.

  - SINTAX (the header holds ``;tax=``): ``>id;tax=d:Animalia,p:Arthropoda,..,s:Aedes_vexans;``: the id is the
    text before the first ``;``, ranks ``d k p c o f g s`` (``d``/``k`` give ``kingdom``, ``k`` wins; ``t``,
    strain, is ignored), underscores read as spaces; other ``;key=value`` fields are ignored.
  - BOLD (``|`` right after the first word): ``>processid|taxon|marker|accession``, fields after the taxon
    optional. The taxon is the identification at its lowest rank: one word is a ``family`` if it ends in ``idae``,
    a ``subfamily`` if in ``inae``, else a ``genus``; several words ("Aedes vexans", "Aedes sp. X") are the
    ``species`` label and their first word the genus (ranked by the one-word rule). The third field is the
    ``marker``, or the ``dna_bin`` when it is a BIN (``BOLD:...``).
  - plain: the id is the first word, up to whitespace or ``|``.

  A taxonomy file (``taxonomy=``, from :func:`barcodemae.formats.read_taxonomy`) labels FASTA records by id: a
  record it lists takes all rank and BIN labels from it (not from its header); a record it lacks keeps its header's
  labels and is counted (``missing_taxonomy``). Taxonomy files are tab-separated, either with a header row (an id
  column ``id``, ``processid``, ``seqid``, ``sequence_id`` or else the first; rank and BIN columns under any table
  dialect's names) or headerless ``id<TAB>taxonomy`` lines in SINTAX (``d:..,s:..``) or QIIME form (``k__Animalia;
  ..; s__Aedes_vexans``; an empty ``g__`` is unknown; a lower-case one-word species, Greengenes' bare epithet, is
  prefixed with the genus). An id listed twice is read once if its labels agree, else it is an error, as are a
  line with the wrong number of fields and an unknown rank letter.

Cleaning rules (:func:`clean_sequence`), in this order; the first that applies decides:

1. normalise with :func:`tokenization_barcodemae.normalize_barcode`: whitespace (also newlines) and the gap
   characters ``-`` ``.`` are removed, letters are upper-cased, ``U`` becomes ``T``, a trailing run of ``N`` is
   stripped (leading and inner ``N`` are kept);
2. nothing left → skipped, reason ``empty``;
3. any character other than the IUPAC nucleotide codes ``ACGTRYSWKMBDHVN`` → skipped, ``invalid_characters``;
4. fewer than ``k_mer`` bases (no complete k-mer) → skipped, ``too_short``;
5. longer than ``max_length`` → cut to the first ``max_length`` bases (and a trailing ``N`` run of the cut
   sequence stripped); the record is kept and counted as ``truncated``;
6. no non-overlapping k-mer made only of ``ACGT`` (the tokenizer would see nothing but ``[UNK]``) → skipped,
   ``no_valid_kmer``.

IUPAC ambiguity codes and inner ``N`` are kept (the tokenizer maps the k-mers holding them to ``[UNK]``).
Duplicate record ids are kept and counted (``duplicate_ids``). Malformed files stop the run with a
:class:`DataError` naming the file, line and record: FASTA sequence data before the first header, a FASTA header
without an id, a SINTAX rank with an unknown letter or no name, a table without a sequence column, a table row with
the wrong number of fields, text that is not UTF-8, a taxonomy given for a table. With ``on_invalid="raise"`` a
record that would be skipped for its sequence raises :class:`DataError` as well.

Every record read ends up either kept or in :attr:`CleaningReport.skipped` under exactly one reason, so
``n_records == n_kept + sum(skipped.values())``. Besides the cleaning reasons above, three reasons count rows left
out that are not errors: ``other_marker`` (the file names a marker other than ``COI-5P``, compared
case-insensitively; an empty marker is unknown and kept) and ``excluded_split`` (``splits=`` given and the row's
split is not among them), both checked before cleaning, and ``duplicate_sequence`` (``deduplicate=True`` and the
cleaned barcode was seen in an earlier row).

Tables are parsed with Python's :mod:`csv` module, not pandas (``datasets.load_dataset("csv")``): pandas silently
shifts the columns of a row with one field too many and fills missing fields with empty strings. For the same
reason, and for speed, :func:`load_barcode_dataset` streams :func:`iter_barcodes` into an Arrow file rather than
going through ``Dataset.from_generator`` + ``Dataset.map`` (about 4x slower on 139k rows).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from barcodemae.formats import (
    BARCODE_MARKER,
    LABEL_KEYS,
    DataError,
    clean_label,
    open_text,
    parse_fasta_header,
    table_dialect,
)
from barcodemae.kmers import normalize_barcode  # the tokenizer's rules, without importing transformers

if TYPE_CHECKING:
    import datasets

TAXONOMY_COLUMNS = ("phylum", "class", "order", "family", "subfamily", "genus", "species")
METADATA_COLUMNS = (*TAXONOMY_COLUMNS, "dna_bin", "split")
OUTPUT_COLUMNS = ("kingdom", *METADATA_COLUMNS, "marker", "description")  # load_barcode_dataset's order
ID_COLUMN = "processid"
SEQUENCE_COLUMN = "dna_barcode"
# BIOSCAN-5M's partitions (its metadata ``split`` column), which this package's data and simulations also use:
# pretrain (no species label), train/val/test (seen species), key_unseen/val_unseen/test_unseen (unseen species
# of seen genera; key_unseen holds the retrieval keys for them), other_heldout (placeholder species of genera
# without a scientific name; the authors pretrain on pretrain + other_heldout).
SPLIT_NAMES = ("pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout")
IUPAC_CODES = "ACGTRYSWKMBDHVN"

TABLE_SUFFIXES = {".tsv": "\t", ".txt": "\t", ".csv": ","}
FASTA_SUFFIXES = (".fasta", ".fa", ".fas", ".fna", ".ffn")

REASONS = {
    "empty": "empty after cleaning",
    "invalid_characters": f"characters other than the IUPAC codes {IUPAC_CODES}",
    "too_short": "fewer bases than one k-mer",
    "no_valid_kmer": "no k-mer made only of ACGT (all [UNK])",
    "excluded_split": "split not requested (not an error)",
    "duplicate_sequence": "same cleaned barcode as an earlier row (deduplicate=True; not an error)",
    "other_marker": f"marker other than {BARCODE_MARKER} (not an error)",
}
N_EXAMPLES = 3
_BATCH_ROWS = 10_000

_INVALID = re.compile(f"[^{IUPAC_CODES}]")
_PLAIN = re.compile(f"[{IUPAC_CODES}]*")
_ACGT_ONLY = re.compile("[ACGT]+")


@dataclass
class BarcodeRecord:
    """One barcode: its id, the cleaned sequence, the 1-based line where it starts, and its metadata."""

    record_id: str
    sequence: str
    line: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class CleaningReport:
    """What happened to every record read: kept, or skipped with a reason (see :data:`REASONS`).

    Attributes:
        n_records: records read; ``n_records == n_kept + n_skipped``.
        n_kept: records delivered (cleaned, possibly truncated).
        skipped: records left out, by reason.
        truncated: kept records cut to ``max_length`` bases.
        duplicate_ids: records whose id was already seen (they are kept).
        missing_taxonomy: FASTA records whose id the taxonomy file lacks (kept without its labels).
        examples: the first few ``"id (line N)"`` per reason, ``truncated``, ``duplicate_id`` and ``missing_taxonomy``
            (``"id (file line N)"`` once the report covers several files).
        files: the files read.
        split_values: records read per value of the ``split`` column (files that have one).
    """

    n_records: int = 0
    n_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    duplicate_ids: int = 0
    missing_taxonomy: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    max_length: int = 660
    split_values: Counter = field(default_factory=Counter)
    _seen_ids: set[str] = field(default_factory=set, repr=False, compare=False)
    _seen_sequences: set[bytes] = field(default_factory=set, repr=False, compare=False)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_example(self, key: str, example: str) -> None:
        found = self.examples.setdefault(key, [])
        if len(found) < N_EXAMPLES:
            found.append(example)

    def count_skip(self, reason: str, example: str, count: int = 1) -> None:
        self.skipped[reason] += count
        self.add_example(reason, example)

    def count_record(self, record: BarcodeRecord, example: str) -> None:
        """Count a record read, its ``split`` value, and its id if seen before (in any file of this report)."""
        self.n_records += 1
        if "split" in record.metadata:
            self.split_values[record.metadata["split"]] += 1
        if record.record_id in self._seen_ids:
            self.duplicate_ids += 1
            self.add_example("duplicate_id", example)
        else:
            self._seen_ids.add(record.record_id)

    def seen_sequence(self, sequence: str) -> bool:
        """Whether this cleaned barcode was seen before (remembered as a 16-byte digest)."""
        digest = hashlib.blake2b(sequence.encode(), digest_size=16).digest()
        if digest in self._seen_sequences:
            return True
        self._seen_sequences.add(digest)
        return False

    def summary(self) -> str:
        """Human-readable summary: totals, then one line per skip reason, truncation and duplicate ids."""
        files = f" from {len(self.files)} file(s)" if self.files else ""
        lines = [f"read {self.n_records} records{files}: kept {self.n_kept}, skipped {self.n_skipped}"]
        for reason, count in sorted(self.skipped.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  skipped {reason}: {count} [{REASONS.get(reason, reason)}]{self._examples(reason)}")
        if self.truncated:
            examples = self._examples("truncated")
            lines.append(f"  truncated to {self.max_length} bases (kept): {self.truncated}{examples}")
        if self.duplicate_ids:
            lines.append(f"  duplicate ids (kept): {self.duplicate_ids}{self._examples('duplicate_id')}")
        if self.missing_taxonomy:
            examples = self._examples("missing_taxonomy")
            lines.append(f"  ids not in the taxonomy (kept without its labels): {self.missing_taxonomy}{examples}")
        return "\n".join(lines)

    def _examples(self, key: str) -> str:
        found = self.examples.get(key)
        return f", e.g. {', '.join(found)}" if found else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_records": self.n_records,
            "n_kept": self.n_kept,
            "n_skipped": self.n_skipped,
            "skipped": dict(sorted(self.skipped.items())),
            "truncated": self.truncated,
            "duplicate_ids": self.duplicate_ids,
            "missing_taxonomy": self.missing_taxonomy,
            "examples": {key: list(values) for key, values in sorted(self.examples.items())},
            "files": list(self.files),
            "max_length": self.max_length,
            "split_values": dict(sorted(self.split_values.items())),
        }


# --------------------------------------------------------------------------- cleaning


def _clean(raw: str, max_length: int, k_mer: int) -> tuple[str | None, str | None, bool]:
    """(cleaned, None, truncated) or (None, reason, False); see the module docstring for the rules."""
    # Fast path: a plain upper-case IUPAC string without a trailing N is left unchanged by normalize_barcode.
    sequence = raw if _PLAIN.fullmatch(raw) and not raw.endswith("N") else normalize_barcode(raw)
    if not sequence:
        return None, "empty", False
    if _INVALID.search(sequence):
        return None, "invalid_characters", False
    if len(sequence) < k_mer:
        return None, "too_short", False
    truncated = len(sequence) > max_length
    if truncated:
        sequence = sequence[:max_length].rstrip("N")
    if not _has_valid_kmer(sequence, k_mer):
        return None, "no_valid_kmer", False
    return sequence, None, truncated


def _has_valid_kmer(sequence: str, k_mer: int) -> bool:
    return any(
        _ACGT_ONLY.fullmatch(sequence, start, start + k_mer) for start in range(0, len(sequence) - k_mer + 1, k_mer)
    )


def clean_sequence(raw: str, max_length: int = 660, k_mer: int = 6) -> tuple[str | None, str | None]:
    """Clean one barcode: ``(cleaned, None)`` if kept (possibly truncated), ``(None, reason)`` if skipped."""
    cleaned, reason, _ = _clean(raw, max_length, k_mer)
    return cleaned, reason


# --------------------------------------------------------------------------- raw readers


def detect_format(path: str | os.PathLike) -> tuple[str, str | None]:
    """``("table", delimiter)`` or ``("fasta", None)`` from the file suffix (``.gz`` allowed after it)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in TABLE_SUFFIXES:
        return "table", TABLE_SUFFIXES[suffix]
    if suffix in FASTA_SUFFIXES:
        return "fasta", None
    known = ", ".join([*TABLE_SUFFIXES, *FASTA_SUFFIXES])
    raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; expected one of {known} (optionally .gz)")


def iter_raw_records(
    path: str | os.PathLike, taxonomy: Mapping[str, dict[str, str]] | None = None
) -> Iterator[BarcodeRecord]:
    """Stream the records of a table or FASTA file with their raw (uncleaned) sequences.

    ``taxonomy`` (:func:`barcodemae.formats.read_taxonomy`, FASTA only): a record whose id it lists takes its
    labels from it, not from the header.
    """
    kind, delimiter = detect_format(path)
    if taxonomy is not None and kind == "table":
        raise DataError(f"{path}: a taxonomy file labels FASTA records; a table carries its own label columns")
    with open_text(path) as handle:
        position = _LinePosition()
        try:
            if kind == "table":
                yield from _iter_table(handle, path, delimiter, position)
            else:
                yield from _iter_fasta(handle, path, position, taxonomy)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}, line {position.line + 1}: not UTF-8 text ({error.reason})") from error
        except (OSError, EOFError) as error:  # e.g. a corrupt or truncated .gz
            raise DataError(f"{path}, line {position.line + 1}: cannot read the file ({error})") from error


@dataclass
class _LinePosition:
    line: int = 0  # last line fully read, for error messages


def table_columns(path: str | os.PathLike) -> list[str]:
    """The header of a table file (stripped column names)."""
    kind, delimiter = detect_format(path)
    if kind != "table":
        raise DataError(f"{path}: not a table file")
    with open_text(path) as handle:
        return _read_header(csv.reader(handle, delimiter=delimiter), path)


def _read_header(reader, path) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}, line 1: empty file, expected a header row with a {SEQUENCE_COLUMN!r} column")
    return [name.strip() for name in header]


def _iter_table(handle: TextIO, path, delimiter: str, position: _LinePosition) -> Iterator[BarcodeRecord]:
    reader = csv.reader(handle, delimiter=delimiter)
    header = _read_header(reader, path)
    dialect = table_dialect(header, f"{path}, line 1")
    sequence_index = header.index(dialect.sequence)
    id_index = header.index(dialect.id) if dialect.id in header else None
    fields = dialect.fields(header)
    position.line, row_number = reader.line_num, 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}, line {position.line + 1}: malformed table row ({error})") from error
        start, position.line = position.line + 1, reader.line_num
        if not row:
            continue
        row_number += 1
        has_id = id_index is not None and id_index < len(row)
        record_id = (row[id_index].strip() if has_id else "") or f"row{row_number}"
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {start}, record {record_id!r}: {len(row)} fields, the header has {len(header)}"
            )
        metadata = {key: row[index].strip() if key == "split" else clean_label(row[index]) for key, index in fields}
        yield BarcodeRecord(record_id, row[sequence_index], start, metadata)


def _iter_fasta(handle: TextIO, path, position: _LinePosition, taxonomy) -> Iterator[BarcodeRecord]:
    record: BarcodeRecord | None = None
    pieces: list[str] = []
    for number, line in enumerate(handle, start=1):
        line = line.rstrip("\r\n")
        if line.startswith(">"):
            if record is not None:
                record.sequence = "".join(pieces)
                yield record
            record_id, metadata = parse_fasta_header(line[1:], f"{path}, line {number}")
            if taxonomy is not None and record_id in taxonomy:
                metadata = {key: value for key, value in metadata.items() if key not in LABEL_KEYS}
                metadata.update(taxonomy[record_id])
            record, pieces = BarcodeRecord(record_id, "", number, metadata), []
        elif line.strip():
            if record is None:
                raise DataError(f"{path}, line {number}: sequence data before the first FASTA header ('>id')")
            pieces.append(line)
        position.line = number
    if record is not None:
        record.sequence = "".join(pieces)
        yield record


# --------------------------------------------------------------------------- cleaned streaming


def iter_barcodes(
    path: str | os.PathLike,
    max_length: int = 660,
    k_mer: int = 6,
    report: CleaningReport | None = None,
    on_invalid: str = "skip",
    splits: Collection[str] | None = None,
    deduplicate: bool = False,
    taxonomy: Mapping[str, dict[str, str]] | None = None,
) -> Iterator[BarcodeRecord]:
    """Stream cleaned records; skipped ones are counted into ``report`` (or raise with ``on_invalid="raise"``).

    Records of a marker other than COI-5P are skipped (``other_marker``, never an error).
    ``splits``: keep only records whose ``split`` is listed (others: ``excluded_split``, never an error).
    ``deduplicate``: keep the first record of each cleaned barcode (others: ``duplicate_sequence``); the
    barcodes seen are remembered in ``report``, so de-duplication spans every file read into the same report.
    ``taxonomy``: labels of FASTA records by id (see :func:`iter_raw_records`); ids it lacks are counted as
    ``missing_taxonomy``.
    Memory use is constant apart from the ids (and, with ``deduplicate``, barcode digests) seen.
    """
    if on_invalid not in ("skip", "raise"):
        raise ValueError(f"on_invalid must be 'skip' or 'raise', not {on_invalid!r}")
    report = CleaningReport(max_length=max_length) if report is None else report
    report.max_length = max_length
    if str(path) not in report.files:
        report.files.append(str(path))
    where = f"{Path(path).name} line" if len(report.files) > 1 else "line"
    for record in iter_raw_records(path, taxonomy):
        example = f"{record.record_id} ({where} {record.line})"
        report.count_record(record, example)
        if taxonomy is not None and record.record_id not in taxonomy:
            report.missing_taxonomy += 1
            report.add_example("missing_taxonomy", example)
        if record.metadata.get("marker", "").upper() not in ("", BARCODE_MARKER):
            report.count_skip("other_marker", example)
            continue
        if splits is not None and record.metadata.get("split", "") not in splits:
            report.count_skip("excluded_split", example)
            continue
        cleaned, reason, truncated = _clean(record.sequence, max_length, k_mer)
        if reason is not None and on_invalid == "raise":
            raise DataError(f"{path}, line {record.line}, record {record.record_id!r}: {reason} ({REASONS[reason]})")
        if reason is None and deduplicate and report.seen_sequence(cleaned):
            reason = "duplicate_sequence"
        if reason is not None:
            report.count_skip(reason, example)
            continue
        report.n_kept += 1
        if truncated:
            report.truncated += 1
            report.add_example("truncated", example)
        record.sequence = cleaned
        yield record


def read_barcodes(
    path: str | os.PathLike,
    max_length: int = 660,
    k_mer: int = 6,
    on_invalid: str = "skip",
    taxonomy: Mapping[str, dict[str, str]] | None = None,
) -> tuple[list[BarcodeRecord], CleaningReport]:
    """All cleaned records of one file, and the report."""
    report = CleaningReport(max_length=max_length)
    records = list(iter_barcodes(path, max_length, k_mer, report, on_invalid, taxonomy=taxonomy))
    return records, report


# --------------------------------------------------------------------------- datasets.Dataset


def _output_columns(paths: Sequence[str]) -> tuple[list[str], set[str]]:
    """The dataset's columns, and those among them that only FASTA records may fill (dropped if none does)."""
    in_tables, in_fasta = set(), set()
    for path in paths:
        if detect_format(path)[0] == "table":
            header = table_columns(path)
            in_tables.update(key for key, _ in table_dialect(header, f"{path}, line 1").fields(header))
        else:
            in_fasta.update(("description", *LABEL_KEYS, "marker"))
    present = in_tables | in_fasta
    columns = [ID_COLUMN, SEQUENCE_COLUMN, *(name for name in OUTPUT_COLUMNS if name in present)]
    return columns, in_fasta - in_tables


def _cache_file(cache_dir: str | os.PathLike | None, key: dict) -> Path:
    if cache_dir is None:
        from datasets import config

        cache_dir = Path(config.HF_DATASETS_CACHE) / "barcodemae"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return Path(cache_dir) / f"barcodes-{digest}.arrow"


def load_barcode_dataset(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    splits: Collection[str] | None = None,
    deduplicate: bool = False,
    max_length: int = 660,
    k_mer: int = 6,
    cache_dir: str | os.PathLike | None = None,
    taxonomy: Mapping[str, dict[str, str]] | None = None,
) -> tuple[datasets.Dataset, CleaningReport]:
    """Cleaned barcodes of one or more files as a memory-mapped ``datasets.Dataset``, and the report.

    Columns (all strings): ``processid``, ``dna_barcode`` (cleaned), then those of :data:`OUTPUT_COLUMNS` that a
    table's header or some FASTA record has (``""`` where a file or record lacks them). Rows go through
    :func:`iter_barcodes` (same rules, same errors) and are streamed in batches into an Arrow file in
    ``cache_dir`` (default: the ``datasets`` cache, sub-folder ``barcodemae``), so inputs larger than memory work.
    The file is rebuilt on every call (its name depends on the inputs and options).

    ``splits``: keep only rows whose ``split`` is listed; others (also every row of a file without a ``split``
    column) are counted as ``excluded_split``. A requested split found in no row, or no ``split`` column in any
    file, raises :class:`DataError` (likely a typo).
    ``deduplicate``: keep the first row of each cleaned barcode, across all files; later ones are counted as
    ``duplicate_sequence``.
    ``taxonomy``: labels of FASTA records by id, as in :func:`iter_barcodes`.
    """
    import pyarrow as pa
    from datasets import Dataset

    paths = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(path) for path in paths]
    if not paths:
        raise ValueError("load_barcode_dataset needs at least one file")
    columns, optional = _output_columns(paths)
    if splits is not None and "split" not in columns:
        raise DataError(f"splits {sorted(splits)} requested but no file has a 'split' column: {', '.join(paths)}")
    key = {
        "files": [(str(Path(path).resolve()), os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths],
        "options": [None if splits is None else sorted(splits), deduplicate, max_length, k_mer],
        "taxonomy": taxonomy,
    }
    target = _cache_file(cache_dir, key)
    report = CleaningReport(max_length=max_length, files=list(paths))
    schema = pa.schema([(name, pa.string()) for name in columns])
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            batch: dict[str, list[str]] = {name: [] for name in columns}
            filled: set[str] = set()
            for path in paths:
                for record in iter_barcodes(path, max_length, k_mer, report, "skip", splits, deduplicate, taxonomy):
                    _append_row(batch, record)
                    filled.update(record.metadata)
                    if len(batch[ID_COLUMN]) >= _BATCH_ROWS:
                        writer.write_batch(pa.record_batch(batch, schema=schema))
                        batch = {name: [] for name in columns}
            writer.write_batch(pa.record_batch(batch, schema=schema))
        if splits is not None:
            _check_requested_splits(report, splits, paths)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    unfilled = sorted(optional - filled)
    dataset = Dataset.from_file(str(target))
    return (dataset.remove_columns(unfilled) if unfilled else dataset), report


def _append_row(batch: dict[str, list[str]], record: BarcodeRecord) -> None:
    for name, values in batch.items():
        if name == ID_COLUMN:
            values.append(record.record_id)
        elif name == SEQUENCE_COLUMN:
            values.append(record.sequence)
        else:
            values.append(record.metadata.get(name, ""))


def _check_requested_splits(report: CleaningReport, splits: Collection[str], paths: list[str]) -> None:
    missing = sorted(set(splits) - set(report.split_values))
    if missing:
        found = ", ".join(f"{name!r}" for name in sorted(report.split_values))
        raise DataError(f"requested splits {missing} occur in no row of {', '.join(paths)}; split values: {found}")


# --------------------------------------------------------------------------- partitions


def assign_bioscan_splits(records: Sequence[dict], seed: int = 0) -> list[str]:
    """A deterministic BIOSCAN-5M-style partition of ``records`` (dicts with genus, species, dna_barcode).

    * ``pretrain``: rows without both a genus and a species label;
    * unseen species: in each genus with at least 3 labelled species, ``max(1, round(n / 4))`` species (never
      leaving fewer than 2 seen) are unseen; all unseen species are shuffled and halved between ``val_unseen``
      and ``test_unseen`` (the odd one to ``test_unseen``);
    * seen species: rows with identical barcodes (normalised) form one group that goes to one partition, even
      across species; groups shared with a species of fewer than 5 rows go to ``train``; then, for each species
      with at least 5 rows, groups are taken in random order into ``test`` while they fit ``ceil(10%)`` of its
      rows, then into ``val`` while they fit ``ceil(5%)``, the rest into ``train``.

    Returns one split name per record, in order.
    """
    rng = np.random.default_rng(seed)
    genus_of = [_label(record, "genus") for record in records]
    species_of = [_label(record, "species") for record in records]
    labelled = [bool(genus and species) for genus, species in zip(genus_of, species_of)]
    splits = ["pretrain"] * len(records)
    unseen = _unseen_species(
        {(genus_of[i], species_of[i]) for i in range(len(records)) if labelled[i]},
        rng,
    )
    seen_rows = []
    for index in range(len(records)):
        if labelled[index]:
            key = (genus_of[index], species_of[index])
            if key in unseen:
                splits[index] = unseen[key]
            else:
                seen_rows.append(index)
    for index, split in _seen_splits(records, seen_rows, genus_of, species_of, rng).items():
        splits[index] = split
    return splits


def _label(record: dict, column: str) -> str:
    value = record.get(column)
    return value.strip() if isinstance(value, str) else ""


def _unseen_species(species: set[tuple[str, str]], rng: np.random.Generator) -> dict[tuple[str, str], str]:
    by_genus: dict[str, list[str]] = {}
    for genus, name in sorted(species):
        by_genus.setdefault(genus, []).append(name)
    chosen = []
    for genus, names in sorted(by_genus.items()):
        if len(names) >= 3:
            n_unseen = min(max(1, round(len(names) / 4)), len(names) - 2)
            chosen += [(genus, names[i]) for i in sorted(rng.choice(len(names), n_unseen, replace=False))]
    order = rng.permutation(len(chosen))
    n_val = len(chosen) // 2
    return {chosen[i]: ("val_unseen" if rank < n_val else "test_unseen") for rank, i in enumerate(order)}


def _seen_splits(records, rows: list[int], genus_of, species_of, rng: np.random.Generator) -> dict[int, str]:
    groups: dict[str, list[int]] = {}
    for index in rows:
        groups.setdefault(normalize_barcode(str(records[index].get(SEQUENCE_COLUMN) or "")), []).append(index)
    species_rows: dict[tuple[str, str], list[int]] = {}
    for index in rows:
        species_rows.setdefault((genus_of[index], species_of[index]), []).append(index)
    group_of = {index: key for key, members in groups.items() for index in members}
    group_split: dict[str, str] = {}
    for members in species_rows.values():
        if len(members) < 5:
            group_split.update(dict.fromkeys((group_of[i] for i in members), "train"))
    for key in sorted(species_rows):
        members = species_rows[key]
        if len(members) < 5:
            continue
        size: Counter = Counter(group_of[i] for i in members)
        quota = {"test": int(np.ceil(0.10 * len(members))), "val": int(np.ceil(0.05 * len(members)))}
        filled = Counter({"test": 0, "val": 0})
        for group in size:
            if group in group_split:
                filled[group_split[group]] += size[group]
        free = sorted(group for group in size if group not in group_split)
        for position in rng.permutation(len(free)):
            group = free[position]
            split = next((s for s in ("test", "val") if filled[s] + size[group] <= quota[s]), "train")
            group_split[group] = split
            filled[split] += size[group]
    return {index: group_split[group_of[index]] for index in rows}


__all__ = [
    "BarcodeRecord",
    "CleaningReport",
    "DataError",
    "IUPAC_CODES",
    "METADATA_COLUMNS",
    "OUTPUT_COLUMNS",
    "REASONS",
    "SPLIT_NAMES",
    "TAXONOMY_COLUMNS",
    "assign_bioscan_splits",
    "clean_sequence",
    "detect_format",
    "iter_barcodes",
    "iter_raw_records",
    "load_barcode_dataset",
    "read_barcodes",
    "table_columns",
]
