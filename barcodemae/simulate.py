"""Simulated COI-like DNA barcodes on a random taxonomy, for tests and demos (no real data).

A root sequence (AT-rich base composition ``A .30 C .15 G .15 T .40``) evolves down a tree
phylum → class → order → family → genus → species → specimen. At each level every site is re-drawn from the base
composition with a per-level probability (:data:`DIVERGENCE`: order .12, family .08, genus .06, species .04,
specimen .004; about 70% of re-draws change the base), so specimens of one species differ at ~0.5% of sites,
species of one genus at ~6%, genera of one family at ~15%. Everything is deterministic given ``seed``.

Records carry the BIOSCAN-5M column names: ``processid`` (``SIM000001`` ...), ``phylum`` (``Arthropoda``),
``class`` (``Insecta``), ``order``, ``family``, ``subfamily`` (empty), ``genus``, ``species`` (``"Genus epithet"``),
``dna_bin`` (one per species, ``BOLD:SIM0001`` ...), ``dna_barcode``. :class:`BarcodeNoise` adds the artefacts
found in real files (lower case, ``U``, IUPAC codes, ``N`` runs, gaps, whitespace, short and over-long reads).

Files: :func:`write_tsv` (``.tsv``/``.txt`` tab-separated, ``.csv`` comma-separated, ``.gz`` compressed) and
:func:`write_fasta` (header ``>processid|species``, or ``>processid`` without a species; 60 bases a line).
Both write atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TextIO

import numpy as np

from barcodemae.data import assign_bioscan_splits, detect_format

BASES = "ACGT"
COMPOSITION = (0.30, 0.15, 0.15, 0.40)
DIVERGENCE = {"order": 0.12, "family": 0.08, "genus": 0.06, "species": 0.04, "specimen": 0.004}
BIOSCAN_COLUMNS = (
    "processid",
    "phylum",
    "class",
    "order",
    "family",
    "subfamily",
    "genus",
    "species",
    "dna_bin",
    "dna_barcode",
)
AMBIGUITY_CODES = "RYSWKMBDHV"
INVALID_CHARACTERS = "*?XJ0"
_SYLLABLES = ("ba", "ce", "di", "fo", "gu", "ka", "le", "mi", "no", "pu", "ra", "se", "ti", "vo", "xa", "zu")


@dataclass
class BarcodeNoise:
    """Probability, per sequence, of each artefact (applied independently, in the order of the fields).

    Attributes:
        truncation: the read is cut to 40-90% of its length (a short read).
        overlong: random bases are appended up to 661-760 bases (longer than the 660 the model reads).
        iupac: 1-3 bases become IUPAC ambiguity codes (``RYSWKMBDHV``).
        inner_n: a run of 1-20 ``N`` replaces bases inside the read.
        trailing_n: a run of 1-30 ``N`` is appended.
        invalid: a character that is no IUPAC code (``* ? X J 0``) is inserted inside the read.
        uracil: every ``T`` is written ``U``.
        lowercase: the whole read is lower case.
        gaps: 1-3 runs of 1-3 alignment gaps ``-`` are inserted inside the read.
        whitespace: 1-3 spaces or newlines are inserted inside the read.

    ``lowercase``, ``uracil``, ``trailing_n``, ``gaps`` and ``whitespace`` are undone exactly by
    ``normalize_barcode``; the others change the bases or the length.
    """

    truncation: float = 0.0
    overlong: float = 0.0
    iupac: float = 0.0
    inner_n: float = 0.0
    trailing_n: float = 0.0
    invalid: float = 0.0
    uracil: float = 0.0
    lowercase: float = 0.0
    gaps: float = 0.0
    whitespace: float = 0.0

    @classmethod
    def only(cls, name: str, probability: float = 1.0) -> BarcodeNoise:
        """Noise with a single artefact (for tests and demos)."""
        return cls(**{name: probability})


def apply_noise(sequence: str, noise: BarcodeNoise, rng: np.random.Generator) -> str:
    """Return ``sequence`` with the artefacts of ``noise`` drawn with ``rng``."""
    for artefact in fields(noise):
        if rng.random() < getattr(noise, artefact.name):
            sequence = _ARTEFACTS[artefact.name](sequence, rng)
    return sequence


def _truncate(sequence: str, rng: np.random.Generator) -> str:
    return sequence[: max(1, int(len(sequence) * rng.uniform(0.4, 0.9)))]


def _extend(sequence: str, rng: np.random.Generator) -> str:
    extra = max(0, int(rng.integers(661, 761)) - len(sequence))
    return sequence + "".join(rng.choice(list(BASES), size=extra, p=COMPOSITION))


def _replace(sequence: str, positions: np.ndarray, characters: Sequence[str]) -> str:
    letters = list(sequence)
    for position, character in zip(positions, characters):
        letters[position] = character
    return "".join(letters)


def _insert(sequence: str, pieces: Sequence[str], rng: np.random.Generator) -> str:
    """Insert ``pieces`` strictly inside ``sequence`` (never before the first or after the last character)."""
    if len(sequence) < 2:
        return sequence
    positions = np.sort(rng.integers(1, len(sequence), size=len(pieces)))
    out, start = [], 0
    for position, piece in zip(positions, pieces):
        out += [sequence[start:position], piece]
        start = position
    return "".join(out) + sequence[start:]


def _iupac(sequence: str, rng: np.random.Generator) -> str:
    positions = rng.choice(len(sequence), size=min(len(sequence), int(rng.integers(1, 4))), replace=False)
    return _replace(sequence, positions, rng.choice(list(AMBIGUITY_CODES), size=len(positions)))


def _inner_n(sequence: str, rng: np.random.Generator) -> str:
    if len(sequence) < 3:
        return sequence
    run = min(int(rng.integers(1, 21)), len(sequence) - 2)
    start = int(rng.integers(1, len(sequence) - run))
    return sequence[:start] + "N" * run + sequence[start + run :]


def _trailing_n(sequence: str, rng: np.random.Generator) -> str:
    return sequence + "N" * int(rng.integers(1, 31))


def _invalid(sequence: str, rng: np.random.Generator) -> str:
    return _insert(sequence, [str(rng.choice(list(INVALID_CHARACTERS)))], rng)


def _gaps(sequence: str, rng: np.random.Generator) -> str:
    return _insert(sequence, ["-" * int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 4)))], rng)


def _whitespace(sequence: str, rng: np.random.Generator) -> str:
    return _insert(sequence, [str(rng.choice([" ", "\n"])) for _ in range(int(rng.integers(1, 4)))], rng)


_ARTEFACTS = {
    "truncation": _truncate,
    "overlong": _extend,
    "iupac": _iupac,
    "inner_n": _inner_n,
    "trailing_n": _trailing_n,
    "invalid": _invalid,
    "uracil": lambda sequence, rng: sequence.replace("T", "U").replace("t", "u"),
    "lowercase": lambda sequence, rng: sequence.lower(),
    "gaps": _gaps,
    "whitespace": _whitespace,
}


# --------------------------------------------------------------------------- simulation


def _mutate(parent: np.ndarray, rate: float, rng: np.random.Generator, copies: int = 1) -> np.ndarray:
    """``copies`` children of ``parent`` (base indices), each site re-drawn from the composition with ``rate``."""
    children = np.tile(parent, (copies, 1))
    redraw = rng.random(children.shape) < rate
    children[redraw] = rng.choice(4, size=int(redraw.sum()), p=COMPOSITION)
    return children


def _name(index: int, suffix: str, capital: bool = True) -> str:
    digits = []
    while True:
        index, digit = divmod(index, len(_SYLLABLES))
        digits.append(_SYLLABLES[digit])
        if index == 0 and len(digits) >= 2:
            break
    stem = "".join(reversed(digits)) + suffix
    return stem.capitalize() if capital else stem


def _iter_tree(
    n_orders: int, families_per_order: int, genera_per_family: int, species_per_genus: int, length: int, rng
) -> Iterator[tuple[dict[str, str], np.ndarray]]:
    """(taxonomy, species sequence) for every species, in a fixed order."""
    root = rng.choice(4, size=length, p=COMPOSITION)
    family_index = genus_index = 0
    for order_index in range(n_orders):
        order = _mutate(root, DIVERGENCE["order"], rng)[0]
        for _ in range(families_per_order):
            family = _mutate(order, DIVERGENCE["family"], rng)[0]
            for _ in range(genera_per_family):
                genus = _mutate(family, DIVERGENCE["genus"], rng)[0]
                genus_name = _name(genus_index, "us")
                for species_index, species in enumerate(_mutate(genus, DIVERGENCE["species"], rng, species_per_genus)):
                    taxonomy = {
                        "phylum": "Arthropoda",
                        "class": "Insecta",
                        "order": _name(order_index, "ptera"),
                        "family": _name(family_index, "idae"),
                        "subfamily": "",
                        "genus": genus_name,
                        "species": f"{genus_name} {_name(species_index, 'ensis', capital=False)}",
                    }
                    yield taxonomy, species
                genus_index += 1
            family_index += 1


def simulate_barcodes(
    n_orders: int = 2,
    families_per_order: int = 2,
    genera_per_family: int = 3,
    species_per_genus: int = 4,
    specimens_per_species: int = 5,
    length: int = 658,
    seed: int = 0,
    noise: BarcodeNoise | None = None,
    end_variation: int = 0,
) -> list[dict[str, str]]:
    """Simulated barcode records (BIOSCAN-5M columns), ``n_orders * ... * specimens_per_species`` of them.

    ``end_variation``: each specimen loses 0..end_variation bases at its start and at its end (reads that start
    and stop at slightly different places). ``noise`` artefacts are drawn from a separate random stream, so the
    clean barcodes are the same with and without noise.
    """
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])
    letters = np.frombuffer(BASES.encode(), dtype=np.uint8)
    records = []
    tree = _iter_tree(n_orders, families_per_order, genera_per_family, species_per_genus, length, rng)
    for bin_index, (taxonomy, species) in enumerate(tree, start=1):
        for specimen in _mutate(species, DIVERGENCE["specimen"], rng, specimens_per_species):
            sequence = letters[specimen].tobytes().decode()
            if end_variation:
                start, cut = rng.integers(0, end_variation + 1, size=2)
                sequence = sequence[start : len(sequence) - cut]
            if noise is not None:
                sequence = apply_noise(sequence, noise, noise_rng)
            records.append(
                {
                    "processid": f"SIM{len(records) + 1:06d}",
                    **taxonomy,
                    "dna_bin": f"BOLD:SIM{bin_index:04d}",
                    "dna_barcode": sequence,
                }
            )
    return records


def with_splits(records: Sequence[dict], seed: int = 0) -> list[dict]:
    """Copies of ``records`` with a ``split`` column from :func:`barcodemae.data.assign_bioscan_splits`."""
    return [{**record, "split": split} for record, split in zip(records, assign_bioscan_splits(records, seed=seed))]


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def _atomic_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """Write text to a temporary file next to ``path`` (gzip if ``path`` ends in .gz), then rename it."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    os.chmod(temporary, 0o644)
    try:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(temporary, "wt", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_tsv(records: Sequence[dict], path: str | os.PathLike, split_column: bool = True) -> Path:
    """Write a BIOSCAN-5M-style table: ``.tsv``/``.txt`` tab-separated, ``.csv`` comma-separated, ``.gz`` allowed.

    Columns: :data:`BIOSCAN_COLUMNS`, then ``split`` when ``split_column`` (records without one get
    :func:`assign_bioscan_splits` with seed 0), then any other keys of the records. Missing values are written
    empty; fields holding the delimiter, quotes or newlines are quoted.
    """
    kind, delimiter = detect_format(path)
    if kind != "table":
        raise ValueError(f"write_tsv writes tables (.tsv, .txt, .csv, optionally .gz), not {path}")
    columns = list(BIOSCAN_COLUMNS) + (["split"] if split_column else [])
    extras = dict.fromkeys(key for record in records for key in record if key not in columns and key != "split")
    columns += list(extras)
    if split_column and any("split" not in record for record in records):
        assigned = assign_bioscan_splits(records)
        records = [{"split": split, **record} for record, split in zip(records, assigned)]
    with _atomic_text(path) as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([record.get(column, "") for column in columns] for record in records)
    return Path(path)


def write_fasta(records: Sequence[dict], path: str | os.PathLike, line_width: int = 60) -> Path:
    """Write FASTA: header ``>processid|species`` (``>processid`` without a species), ``line_width`` bases a line.

    ``line_width=0`` writes each sequence on one line. ``.gz`` compresses.
    """
    if detect_format(path)[0] != "fasta":
        raise ValueError(f"write_fasta writes .fasta/.fa/.fas/.fna/.ffn files (optionally .gz), not {path}")
    with _atomic_text(path) as handle:
        for record in records:
            species = record.get("species") or ""
            handle.write(f">{record['processid']}|{species}\n" if species else f">{record['processid']}\n")
            sequence = record["dna_barcode"]
            width = line_width or max(1, len(sequence))
            for start in range(0, len(sequence), width):
                handle.write(sequence[start : start + width] + "\n")
    return Path(path)


__all__ = [
    "BIOSCAN_COLUMNS",
    "BarcodeNoise",
    "DIVERGENCE",
    "apply_noise",
    "simulate_barcodes",
    "with_splits",
    "write_fasta",
    "write_tsv",
]
