"""The barcode simulator: determinism, sizes, taxonomy-shaped distances, noise artefacts, file writers."""

from __future__ import annotations

import gzip
import itertools
import re

import numpy as np
import pytest

from barcodemae.data import SPLIT_NAMES
from barcodemae.simulate import (
    AMBIGUITY_CODES,
    BIOSCAN_COLUMNS,
    INVALID_CHARACTERS,
    BarcodeNoise,
    apply_noise,
    simulate_barcodes,
    with_splits,
    write_fasta,
    write_tsv,
)
from tokenization_barcodemae import normalize_barcode

CLEAN_BASE = np.random.default_rng(0).choice(list("ACGT"), size=658, p=[0.3, 0.15, 0.15, 0.4])
CLEAN = "".join(CLEAN_BASE)


def test_deterministic_given_seed():
    assert simulate_barcodes(seed=7) == simulate_barcodes(seed=7)
    first, other = simulate_barcodes(seed=7), simulate_barcodes(seed=8)
    assert [r["dna_barcode"] for r in first] != [r["dna_barcode"] for r in other]


def test_sizes_ids_and_columns():
    records = simulate_barcodes(
        n_orders=1, families_per_order=2, genera_per_family=2, species_per_genus=3, specimens_per_species=2
    )
    assert len(records) == 1 * 2 * 2 * 3 * 2
    assert all(set(record) == set(BIOSCAN_COLUMNS) for record in records)
    assert len({record["processid"] for record in records}) == len(records)
    assert all(re.fullmatch(r"SIM\d{6}", record["processid"]) for record in records)
    assert len({record["species"] for record in records}) == 12
    assert len({record["genus"] for record in records}) == 4
    for record in records:
        genus, epithet = record["species"].split(" ")
        assert genus == record["genus"] and epithet.islower()
        assert record["subfamily"] == "" and record["phylum"] == "Arthropoda"
    bins = {(record["species"], record["dna_bin"]) for record in records}
    assert len(bins) == 12 and len({b for _, b in bins}) == 12  # one BIN per species
    assert all(re.fullmatch(r"BOLD:SIM\d{4}", b) for _, b in bins)


def test_large_simulation_is_fast_and_unique():
    records = simulate_barcodes(n_orders=3, families_per_order=3, genera_per_family=4, species_per_genus=5)
    assert len(records) == 3 * 3 * 4 * 5 * 5
    assert len({record["family"] for record in records}) == 9
    assert len({record["genus"] for record in records}) == 36


def test_length_and_at_rich_composition():
    records = simulate_barcodes()
    assert {len(record["dna_barcode"]) for record in records} == {658}
    text = "".join(record["dna_barcode"] for record in records)
    assert set(text) == set("ACGT")
    assert (text.count("A") + text.count("T")) / len(text) > 0.6


def test_end_variation_gives_ragged_ends():
    lengths = {len(r["dna_barcode"]) for r in simulate_barcodes(length=300, end_variation=4)}
    assert len(lengths) > 1 and min(lengths) >= 300 - 8 and max(lengths) <= 300


def _codes(record: dict) -> np.ndarray:
    return np.frombuffer(record["dna_barcode"].encode(), np.uint8)


def _mean_distance(records, same: str, differ: str | None) -> float:
    """Mean Hamming fraction over pairs sharing ``same`` but (if given) differing in ``differ``."""
    distances = []
    for a, b in itertools.combinations(records, 2):
        if a[same] == b[same] and (differ is None or a[differ] != b[differ]):
            distances.append(np.mean(_codes(a) != _codes(b)))
    return float(np.mean(distances))


def test_distances_follow_the_taxonomy():
    records = simulate_barcodes(specimens_per_species=3)
    within_species = _mean_distance(records, "species", None)
    within_genus = _mean_distance(records, "genus", "species")
    within_family = _mean_distance(records, "family", "genus")
    within_order = _mean_distance(records, "order", "family")
    assert within_species < 0.01
    assert 3 * within_species < within_genus < within_family < within_order
    assert within_genus < 0.5 * within_family


ARTEFACT_CHECKS = {
    "lowercase": lambda s: s == CLEAN.lower(),
    "uracil": lambda s: "U" in s and "T" not in s,
    "iupac": lambda s: any(c in AMBIGUITY_CODES for c in s) and len(s) == len(CLEAN),
    "inner_n": lambda s: "N" in s and not s.endswith("N") and not s.startswith("N"),
    "trailing_n": lambda s: s.endswith("N") and s.rstrip("N") == CLEAN,
    "gaps": lambda s: "-" in s and s.replace("-", "") == CLEAN,
    "whitespace": lambda s: re.search(r"\s", s) is not None and re.sub(r"\s", "", s) == CLEAN,
    "truncation": lambda s: len(s) < len(CLEAN) and CLEAN.startswith(s),
    "overlong": lambda s: len(s) > 660 and s.startswith(CLEAN),
    "invalid": lambda s: any(c in INVALID_CHARACTERS for c in s),
}


@pytest.mark.parametrize("artefact", sorted(ARTEFACT_CHECKS))
def test_each_noise_option_produces_its_artefact(artefact):
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert ARTEFACT_CHECKS[artefact](apply_noise(CLEAN, BarcodeNoise.only(artefact), rng))


@pytest.mark.parametrize("artefact", ["lowercase", "uracil", "trailing_n", "gaps", "whitespace"])
def test_reversible_artefacts_are_undone_by_normalisation(artefact):
    noisy = apply_noise(CLEAN, BarcodeNoise.only(artefact), np.random.default_rng(2))
    assert noisy != CLEAN and normalize_barcode(noisy) == CLEAN


def test_no_noise_is_identity_and_noise_keeps_clean_barcodes():
    assert apply_noise(CLEAN, BarcodeNoise(), np.random.default_rng(0)) == CLEAN
    clean = simulate_barcodes(seed=3)
    noisy = simulate_barcodes(seed=3, noise=BarcodeNoise(lowercase=0.5, gaps=0.5, trailing_n=0.5))
    assert any(a["dna_barcode"] != b["dna_barcode"] for a, b in zip(clean, noisy))
    assert [normalize_barcode(r["dna_barcode"]) for r in noisy] == [r["dna_barcode"] for r in clean]


def test_with_splits_adds_a_split_per_record(simulated_records):
    assert {record["split"] for record in simulated_records} <= set(SPLIT_NAMES)
    records = simulate_barcodes(n_orders=1)
    split = with_splits(records, seed=1)
    assert [r["processid"] for r in split] == [r["processid"] for r in records]
    assert all(r["split"] in SPLIT_NAMES for r in split)
    assert "split" not in records[0]  # the input is not modified


@pytest.mark.parametrize("name", ["out.tsv", "out.csv", "out.tsv.gz", "out.txt"])
def test_write_tsv_header_delimiter_and_atomic(tmp_path, name):
    records = simulate_barcodes(n_orders=1, families_per_order=1)
    path = write_tsv(records, tmp_path / name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n")
    delimiter = "," if ".csv" in name else "\t"
    assert header.split(delimiter) == [*BIOSCAN_COLUMNS, "split"]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_write_tsv_without_split_and_with_extra_columns(tmp_path):
    records = [dict(r, source="sim") for r in simulate_barcodes(n_orders=1, families_per_order=1)]
    header = write_tsv(records, tmp_path / "x.tsv", split_column=False).read_text().splitlines()[0]
    assert header.split("\t") == [*BIOSCAN_COLUMNS, "source"]


def test_write_fasta_headers_and_wrapping(tmp_path):
    records = simulate_barcodes(n_orders=1, families_per_order=1, genera_per_family=1, species_per_genus=1)
    records[0]["species"] = ""
    lines = write_fasta(records, tmp_path / "x.fa", line_width=100).read_text().splitlines()
    assert lines[0] == f">{records[0]['processid']}"
    assert lines[8] == f">{records[1]['processid']}|{records[1]['species']}"
    assert [len(line) for line in lines[1:8]] == [100] * 6 + [58]


def test_writers_refuse_the_wrong_suffix(tmp_path):
    records = simulate_barcodes(n_orders=1, families_per_order=1)
    with pytest.raises(ValueError, match="tables"):
        write_tsv(records, tmp_path / "x.fasta")
    with pytest.raises(ValueError, match="fasta"):
        write_fasta(records, tmp_path / "x.tsv")
