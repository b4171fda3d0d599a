"""Input dialects mapped onto canonical metadata keys: table column names, FASTA headers, taxonomy files.

Canonical keys: the ranks :data:`RANKS` (``kingdom`` .. ``species``), ``dna_bin`` (BOLD BIN) and ``marker``.
:mod:`barcodemae.data` reads and cleans the records and documents every format; this module only says where each
dialect keeps a record's id and labels. Labels are cleaned with :func:`clean_label`.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

RANKS = ("kingdom", "phylum", "class", "order", "family", "subfamily", "genus", "species")
LABEL_KEYS = (*RANKS, "dna_bin")
BARCODE_MARKER = "COI-5P"
# Cell values that BOLD / BIOSCAN exports use for "no label" (compared lower-cased, after stripping whitespace).
NO_LABEL = frozenset({"", "none", "na", "nan", "null", "not classified", "not_classified"})
# SINTAX / QIIME rank letters; t (strain) is read and ignored, k wins over d.
RANK_LETTERS = {
    "d": "kingdom",
    "k": "kingdom",
    "p": "phylum",
    "c": "class",
    "o": "order",
    "f": "family",
    "g": "genus",
    "s": "species",
    "t": "",
}
SINTAX_LETTERS = {
    "kingdom": "k",
    "phylum": "p",
    "class": "c",
    "order": "o",
    "family": "f",
    "genus": "g",
    "species": "s",
}
TAXONOMY_ID_COLUMNS = ("id", "processid", "seqid", "sequence_id")

_PLAIN_ID = re.compile(r"[\s|]")
_BOLD_HEADER = re.compile(r"[^\s|]+\|")
_QIIME = re.compile(r"\s*[a-z]__")
_TAXONOMY_STRING = re.compile(r"\s*(tax=)?[a-z](:|__)")
_SINTAX_FORBIDDEN = re.compile(r"[\s,;]+")


class DataError(ValueError):
    """Malformed input that stops the run; the message names the file, line and record."""


@dataclass(frozen=True)
class TableDialect:
    """A table dialect: its name, sequence column, id column and the column of each canonical key it has."""

    name: str
    sequence: str
    columns: dict[str, str]
    id: str = "processid"

    def fields(self, header: Sequence[str]) -> list[tuple[str, int]]:
        """``(canonical key, column index)`` of the dialect's columns present in ``header``."""
        return [(key, header.index(column)) for key, column in self.columns.items() if column in header]


TABLE_DIALECTS = (
    TableDialect("BIOSCAN-5M", "dna_barcode", {key: key for key in (*LABEL_KEYS, "marker", "split")}),
    TableDialect(
        "BOLD v4",
        "nucleotides",
        {**{rank: f"{rank}_name" for rank in RANKS[1:]}, "dna_bin": "bin_uri", "marker": "markercode"},
    ),
    TableDialect(
        "BOLD v5 BCDM", "nuc", {**{rank: rank for rank in RANKS}, "dna_bin": "bin_uri", "marker": "marker_code"}
    ),
)


def clean_label(value: str) -> str:
    """A label with surrounding whitespace stripped; a :data:`NO_LABEL` placeholder becomes ``""`` (unknown)."""
    value = value.strip()
    return "" if value.lower() in NO_LABEL else value


def open_text(path: str | os.PathLike) -> TextIO:
    """A UTF-8 text file (``.gz`` decompressed), a leading byte-order mark dropped, newlines left as they are."""
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


# --------------------------------------------------------------------------- tables


def table_dialect(header: Sequence[str], where: str) -> TableDialect:
    """The dialect of a table header: the first of :data:`TABLE_DIALECTS` whose sequence column it has."""
    for dialect in TABLE_DIALECTS:
        if dialect.sequence in header:
            return dialect
    expected = ", ".join(f"{dialect.sequence!r} ({dialect.name})" for dialect in TABLE_DIALECTS)
    raise DataError(
        f"{where}: no 'dna_barcode' column; columns found: {', '.join(header)}; "
        f"a table needs one sequence column: {expected}"
    )


# --------------------------------------------------------------------------- FASTA headers


def parse_fasta_header(header: str, where: str) -> tuple[str, dict[str, str]]:
    """``(id, metadata)`` of a FASTA header (without ``>``), SINTAX, BOLD or plain; ``description`` is the rest."""
    header = header.strip()
    if ";tax=" in header:
        record_id, _, rest = header.partition(";")
        labels = _sintax_fields(rest, where)
    elif _BOLD_HEADER.match(header):
        record_id, _, rest = header.partition("|")
        labels = _bold_fields(rest.split("|"))
    else:
        parts = _PLAIN_ID.split(header, maxsplit=1)
        record_id, rest, labels = parts[0], parts[1] if len(parts) > 1 else "", {}
    record_id = record_id.strip()
    if not record_id:
        raise DataError(f"{where}: FASTA header without an id: {'>' + header!r}")
    return record_id, {"description": rest.strip(), **labels}


def _sintax_fields(rest: str, where: str) -> dict[str, str]:
    for field in rest.split(";"):
        key, _, value = field.partition("=")
        if key.strip() == "tax":
            return parse_sintax(value, where)
    return {}


def _bold_fields(fields: list[str]) -> dict[str, str]:
    labels = taxon_ranks(fields[0])
    if len(fields) > 1:
        value = clean_label(fields[1])
        labels["dna_bin" if value.upper().startswith("BOLD:") else "marker"] = value
    return labels


def taxon_ranks(taxon: str) -> dict[str, str]:
    """Ranks of a BOLD identification at its lowest rank.

    One word: ``family`` if it ends in ``idae``, ``subfamily`` if in ``inae``, otherwise ``genus``. Several words
    ("Aedes vexans", "Aedes sp. X"): the whole label (whitespace runs made single spaces) is the ``species`` and
    its first word is ranked by the one-word rule (usually the genus).
    """
    words = clean_label(taxon).split()
    if not words:
        return {}
    first = words[0]
    rank = "family" if first.endswith("idae") else "subfamily" if first.endswith("inae") else "genus"
    return {rank: first, "species": " ".join(words)} if len(words) > 1 else {rank: first}


# --------------------------------------------------------------------------- taxonomy strings


def parse_sintax(text: str, where: str) -> dict[str, str]:
    """Ranks of a SINTAX taxonomy ``d:Animalia,p:Arthropoda,..,s:Aedes_vexans`` (underscores read as spaces)."""
    names: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.strip().rstrip(";").split(","))):
        letter, colon, name = (part.strip() for part in item.partition(":"))
        if not colon or letter not in RANK_LETTERS or not name or letter in names:
            raise DataError(
                f"{where}: cannot read SINTAX rank {item!r}: expected r:name with r one of "
                f"{' '.join(RANK_LETTERS)}, each rank once"
            )
        names[letter] = name
    return _ranks_of_letters(names)


def parse_qiime(text: str, where: str) -> dict[str, str]:
    """Ranks of a QIIME / Greengenes taxonomy ``k__Animalia; p__Arthropoda; ..; s__Aedes_vexans``.

    Underscores in names read as spaces; an empty name (``g__``) is unknown; a one-word lower-case species
    (Greengenes writes the epithet alone, ``s__vexans``) is prefixed with the genus.
    """
    names: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        letter, underscores, name = item.partition("__")
        if not underscores or letter not in RANK_LETTERS or letter in names:
            raise DataError(
                f"{where}: cannot read QIIME rank {item!r}: expected r__name with r one of "
                f"{' '.join(RANK_LETTERS)}, each rank once"
            )
        names[letter] = name
    ranks = _ranks_of_letters(names)
    species, genus = ranks.get("species", ""), ranks.get("genus", "")
    if genus and species.islower() and " " not in species:
        ranks["species"] = f"{genus} {species}"
    return ranks


def parse_taxonomy_string(text: str, where: str) -> dict[str, str]:
    """Ranks of a SINTAX (``d:..,s:..``, optionally after ``tax=``) or QIIME (``k__..; s__..``) taxonomy string."""
    if _QIIME.match(text):
        return parse_qiime(text, where)
    text = text.strip()
    return parse_sintax(text[4:] if text.startswith("tax=") else text, where)


def sintax_name(name: str) -> str:
    """A taxon name as a SINTAX taxonomy string allows it: runs of whitespace, commas and semicolons become ``_``."""
    return _SINTAX_FORBIDDEN.sub("_", name.strip())


def _ranks_of_letters(names: dict[str, str]) -> dict[str, str]:
    ranks = {}
    for letter, key in RANK_LETTERS.items():  # d before k, so k wins
        if key and letter in names:
            ranks[key] = clean_label(names[letter].replace("_", " "))
    return ranks


# --------------------------------------------------------------------------- taxonomy files


def read_taxonomy(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """``id -> {canonical key: label}`` from a tab-separated taxonomy file (see :mod:`barcodemae.data`).

    Either a header row with an id column (:data:`TAXONOMY_ID_COLUMNS`, else the first column) and rank / BIN
    columns under any table dialect's names, or headerless ``id<TAB>taxonomy string`` lines (SINTAX or QIIME).
    An id listed twice with different labels is an error; listed twice with the same labels, it is read once.
    """
    taxonomy: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for line, record_id, labels in _taxonomy_rows(path):
        if record_id in taxonomy and taxonomy[record_id] != labels:
            raise DataError(
                f"{path}, line {line}: id {record_id!r} already on line {first_line[record_id]} with other labels"
            )
        taxonomy[record_id] = labels
        first_line.setdefault(record_id, line)
    return taxonomy


def _taxonomy_rows(path: str | os.PathLike) -> Iterator[tuple[int, str, dict[str, str]]]:
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            rows = ((reader.line_num, row) for row in reader if row)
            first = next(rows, None)
            if first is None:
                raise DataError(f"{path}, line 1: empty taxonomy file")
            if len(first[1]) == 2 and _TAXONOMY_STRING.match(first[1][1]):
                yield from _string_rows(path, itertools.chain([first], rows))
            else:
                yield from _column_rows(path, first[1], rows)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}, line {reader.line_num + 1}: not UTF-8 text ({error.reason})") from error
        except csv.Error as error:
            raise DataError(f"{path}, line {reader.line_num}: malformed line ({error})") from error


def _string_rows(path, rows) -> Iterator[tuple[int, str, dict[str, str]]]:
    for line, row in rows:
        where = f"{path}, line {line}"
        if len(row) != 2:
            raise DataError(f"{where}: {len(row)} fields, expected 2 (id, taxonomy string)")
        yield line, _taxonomy_id(row[0], where), parse_taxonomy_string(row[1], where)


def _column_rows(path, header: list[str], rows) -> Iterator[tuple[int, str, dict[str, str]]]:
    header = [name.strip() for name in header]
    id_index = next((header.index(name) for name in TAXONOMY_ID_COLUMNS if name in header), 0)
    fields = _label_fields(header)
    if not fields:
        names = ", ".join(sorted({column for dialect in TABLE_DIALECTS for column in dialect.columns.values()}))
        raise DataError(
            f"{path}, line 1: neither a header row with rank columns ({names}) nor an 'id<TAB>taxonomy string' line"
        )
    for line, row in rows:
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
        yield line, _taxonomy_id(row[id_index], where), {key: clean_label(row[index]) for key, index in fields}


def _label_fields(header: list[str]) -> list[tuple[str, int]]:
    """``(key, index)`` of the first column, in dialect order, that holds each of :data:`LABEL_KEYS`."""
    found: dict[str, int] = {}
    for dialect in TABLE_DIALECTS:
        for key, index in dialect.fields(header):
            if key in LABEL_KEYS:
                found.setdefault(key, index)
    return [(key, found[key]) for key in LABEL_KEYS if key in found]


def _taxonomy_id(value: str, where: str) -> str:
    record_id = value.strip()
    if not record_id:
        raise DataError(f"{where}: empty id")
    return record_id


__all__ = [
    "BARCODE_MARKER",
    "DataError",
    "LABEL_KEYS",
    "NO_LABEL",
    "RANKS",
    "SINTAX_LETTERS",
    "TABLE_DIALECTS",
    "TableDialect",
    "clean_label",
    "open_text",
    "parse_fasta_header",
    "parse_qiime",
    "parse_sintax",
    "parse_taxonomy_string",
    "read_taxonomy",
    "sintax_name",
    "table_dialect",
    "taxon_ranks",
]
