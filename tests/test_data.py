"""Reading and cleaning barcodes: formats, every bad-input case, the report, the Dataset loader, partitions."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict

import pytest

from barcodemae.data import (
    SPLIT_NAMES,
    TAXONOMY_COLUMNS,
    CleaningReport,
    DataError,
    assign_bioscan_splits,
    clean_sequence,
    detect_format,
    iter_barcodes,
    load_barcode_dataset,
    read_barcodes,
)
from barcodemae.simulate import INVALID_CHARACTERS, BarcodeNoise, simulate_barcodes, write_fasta, write_tsv
from tokenization_barcodemae import normalize_barcode

BARCODE = simulate_barcodes(n_orders=1, families_per_order=1, genera_per_family=1, species_per_genus=1)[0][
    "dna_barcode"
]
LONG = BARCODE + BARCODE[:100]

# (case, raw barcode, cleaned barcode or skip reason) -- the documented outcome of each kind of bad input
CASES = [
    ("lowercase", BARCODE.lower(), BARCODE),
    ("uracil", BARCODE.replace("T", "U"), BARCODE),
    ("lowercase_uracil", BARCODE.replace("T", "u").lower(), BARCODE),
    ("iupac_codes_kept", BARCODE[:10] + "RYSWKMBDHV" + BARCODE[20:], BARCODE[:10] + "RYSWKMBDHV" + BARCODE[20:]),
    ("inner_n_kept", BARCODE[:100] + "NNNNN" + BARCODE[105:], BARCODE[:100] + "NNNNN" + BARCODE[105:]),
    ("leading_n_kept", "NNN" + BARCODE[:600], "NNN" + BARCODE[:600]),
    ("trailing_n_stripped", BARCODE + "NNNNNNNN", BARCODE),
    ("gaps_removed", "--" + BARCODE[:50] + "---" + BARCODE[50:] + ".", BARCODE),
    ("whitespace_removed", BARCODE[:60] + "\n" + BARCODE[60:120] + " \t " + BARCODE[120:], BARCODE),
    ("overlong_truncated", LONG, LONG[:660]),
    ("overlong_cut_in_n_run", BARCODE[:655] + "N" * 10 + "ACGT" * 10, BARCODE[:655]),
    ("empty", "", "empty"),
    ("only_gaps_and_n", "--NNNN-- ", "empty"),
    ("too_short", "ACGTA", "too_short"),
    ("no_valid_kmer", "ACGTAN" * 30, "no_valid_kmer"),
    ("invalid_star", BARCODE[:30] + "*" + BARCODE[30:], "invalid_characters"),
    ("invalid_letter", BARCODE[:30] + "X" + BARCODE[30:], "invalid_characters"),
    ("invalid_digit", BARCODE[:30] + "7" + BARCODE[30:], "invalid_characters"),
]
REASONS = {"empty", "too_short", "no_valid_kmer", "invalid_characters"}


@pytest.mark.parametrize(("case", "raw", "expected"), CASES, ids=[case[0] for case in CASES])
def test_clean_sequence(case, raw, expected):
    if expected in REASONS:
        assert clean_sequence(raw) == (None, expected)
    else:
        assert clean_sequence(raw) == (expected, None)
        assert normalize_barcode(expected) == expected  # what we keep is what the tokenizer sees


@pytest.mark.parametrize(("case", "raw", "expected"), CASES, ids=[case[0] for case in CASES])
def test_each_bad_input_read_from_a_file(tmp_path, case, raw, expected):
    good = {"processid": "good", "dna_barcode": BARCODE}
    path = write_tsv([good, {"processid": case, "dna_barcode": raw}, good], tmp_path / "x.tsv", split_column=False)
    records, report = read_barcodes(path)
    assert report.n_records == 3 and report.duplicate_ids == 1
    if expected in REASONS:
        assert [r.record_id for r in records] == ["good", "good"]
        assert report.skipped == Counter({expected: 1})
        assert report.examples[expected] == [f"{case} (line 3)"]
        assert expected in report.summary()
    else:
        assert [r.sequence for r in records] == [BARCODE, expected, BARCODE]
        assert report.n_kept == 3 and not report.skipped
        assert report.truncated == int(case.startswith("overlong"))


def test_invalid_record_raises_with_id_and_line_on_request(tmp_path):
    rows = [{"processid": "A1", "dna_barcode": BARCODE}, {"processid": "B2", "dna_barcode": "ACGT*ACGTACGT"}]
    path = write_tsv(rows, tmp_path / "x.tsv", split_column=False)
    with pytest.raises(DataError, match=r"x\.tsv, line 3, record 'B2': invalid_characters"):
        read_barcodes(path, on_invalid="raise")
    with pytest.raises(ValueError, match="on_invalid"):
        read_barcodes(path, on_invalid="ignore")


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("name", ["x.tsv", "x.csv", "x.txt", "x.tsv.gz", "x.csv.gz", "X.TSV"])
def test_tables_round_trip(tmp_path, simulated_records, name):
    path = write_tsv(simulated_records, tmp_path / name)
    records, report = read_barcodes(path)
    assert report.n_records == report.n_kept == len(simulated_records) and not report.skipped
    assert [r.record_id for r in records] == [r["processid"] for r in simulated_records]
    assert [r.sequence for r in records] == [r["dna_barcode"] for r in simulated_records]
    assert [r.line for r in records] == list(range(2, len(records) + 2))
    first = records[0].metadata
    assert {column: first[column] for column in TAXONOMY_COLUMNS} == {
        column: simulated_records[0][column] for column in TAXONOMY_COLUMNS
    }
    assert first["dna_bin"] == simulated_records[0]["dna_bin"] and first["split"] == simulated_records[0]["split"]


def test_fasta_round_trip_multiline(fasta_file, simulated_records):
    records, report = read_barcodes(fasta_file)
    assert report.n_kept == len(simulated_records) and not report.skipped
    assert [r.record_id for r in records] == [r["processid"] for r in simulated_records]
    assert [r.sequence for r in records] == [r["dna_barcode"] for r in simulated_records]
    first = simulated_records[0]  # ">processid|species" is a BOLD header: the species label and its genus
    assert records[0].metadata == {
        "description": first["species"],
        "genus": first["genus"],
        "species": first["species"],
    }
    assert records[1].line == 1 + 12  # header + 11 lines of 60 bases for 658 bases


def test_fasta_headers_blank_lines_crlf_and_gz(tmp_path):
    text = (
        "\n>SIM1|Genus species|BOLD:X\r\n" + BARCODE[:60] + "\r\n" + BARCODE[60:] + "\r\n\r\n"
        ">SIM2 a free description\n" + BARCODE.lower().replace("t", "u") + "\n"
        ">  SIM3\n"
        ">SIM4\n" + BARCODE + "NNN\n"
    )
    for name, opener in (("x.fasta", open), ("x.fa.gz", gzip.open)):
        with opener(tmp_path / name, "wt", encoding="utf-8", newline="") as handle:
            handle.write(text)
        records, report = read_barcodes(tmp_path / name)
        assert [(r.record_id, r.line) for r in records] == [("SIM1", 2), ("SIM2", 6), ("SIM4", 9)]
        assert [r.metadata["description"] for r in records] == ["Genus species|BOLD:X", "a free description", ""]
        assert all(r.sequence == BARCODE for r in records)
        assert report.skipped == Counter({"empty": 1}) and report.examples["empty"] == ["SIM3 (line 8)"]


@pytest.mark.parametrize("suffix", [".fasta", ".fa", ".fas", ".fna", ".ffn", ".fasta.gz"])
def test_fasta_suffixes(suffix):
    assert detect_format(f"data/x{suffix}") == ("fasta", None)


def test_unknown_suffix_is_a_clear_error(write_text):
    path = write_text("barcodes.parquet", "")
    with pytest.raises(DataError, match=r"unknown file type '\.parquet'.*\.tsv.*\.fasta"):
        read_barcodes(path)


def test_table_without_processid_uses_row_numbers_and_ignores_extra_columns(write_text):
    path = write_text("x.tsv", f"dna_barcode\tnotes\n{BARCODE}\tfirst\n\n{BARCODE}\tsecond\n")
    records, report = read_barcodes(path)
    assert [(r.record_id, r.line) for r in records] == [("row1", 2), ("row2", 4)]
    assert records[0].metadata == {} and report.n_kept == 2


def test_quoted_multiline_field_keeps_line_numbers(tmp_path):
    rows = [
        {"processid": "A", "dna_barcode": BARCODE[:300] + "\n\n" + BARCODE[300:]},
        {"processid": "B", "dna_barcode": BARCODE},
    ]
    records, _ = read_barcodes(write_tsv(rows, tmp_path / "x.tsv"))
    assert [(r.record_id, r.line, r.sequence) for r in records] == [("A", 2, BARCODE), ("B", 5, BARCODE)]


# ------------------------------------------------------------------------------------ malformed input


def test_fasta_data_before_first_header(write_text):
    path = write_text("x.fasta", f"\n{BARCODE}\n>SIM1\n{BARCODE}\n")
    with pytest.raises(DataError, match=r"x\.fasta, line 2: sequence data before the first FASTA header"):
        read_barcodes(path)


@pytest.mark.parametrize("header", [">", ">   ", ">|Genus species"])
def test_fasta_header_without_id(write_text, header):
    path = write_text("x.fasta", f">SIM1\n{BARCODE}\n{header}\n{BARCODE}\n")
    with pytest.raises(DataError, match=r"x\.fasta, line 3: FASTA header without an id"):
        read_barcodes(path)


def test_table_without_dna_barcode_column_lists_columns(write_text):
    path = write_text("x.csv", "processid,sequence,species\nA,ACGTACGT,Genus species\n")
    with pytest.raises(DataError, match=r"x\.csv, line 1: no 'dna_barcode' column; columns found: processid, sequence"):
        read_barcodes(path)


@pytest.mark.parametrize("row", ["B\tACGTACGTAC\ttrain\textra", "B\tACGTACGTAC"])
def test_row_with_wrong_field_count(write_text, row):
    path = write_text("x.tsv", f"processid\tdna_barcode\tsplit\nA\t{BARCODE}\ttrain\n{row}\nC\t{BARCODE}\ttrain\n")
    with pytest.raises(DataError, match=r"x\.tsv, line 3, record 'B': \d fields, the header has 3"):
        read_barcodes(path)


def test_errors_surface_while_streaming(write_text):
    path = write_text("x.tsv", f"processid\tdna_barcode\nA\t{BARCODE}\nB\t{BARCODE}\textra\n")
    stream = iter_barcodes(path)
    assert next(stream).record_id == "A"  # records before the problem are delivered first
    with pytest.raises(DataError, match="line 3"):
        next(stream)


def test_empty_and_non_utf8_files(tmp_path, write_text):
    with pytest.raises(DataError, match="empty file"):
        read_barcodes(write_text("x.tsv", ""))
    path = tmp_path / "latin1.tsv"
    path.write_bytes(f"processid\tdna_barcode\tspecies\nA\t{BARCODE}\tG\xe9nus\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.tsv, line \d+: not UTF-8"):
        read_barcodes(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.tsv.gz"
    path.write_bytes(b"processid\tdna_barcode\nA\tACGT\n")  # not gzip-compressed
    with pytest.raises(DataError, match=r"x\.tsv\.gz, line 1: cannot read the file"):
        read_barcodes(path)


# ------------------------------------------------------------------------------------------- report


def test_report_counts_every_record_once(tmp_path):
    noise = BarcodeNoise(invalid=0.1, overlong=0.1, trailing_n=0.3, whitespace=0.3, lowercase=0.2, iupac=0.2)
    records = simulate_barcodes(seed=4, noise=noise)
    records[5]["dna_barcode"] = ""
    records[6]["processid"] = records[7]["processid"]
    valid = [r["dna_barcode"] for r in records if not set(r["dna_barcode"]) & set(INVALID_CHARACTERS)]
    from_table = read_barcodes(write_tsv(records, tmp_path / "x.tsv.gz"))
    from_fasta = read_barcodes(write_fasta(records, tmp_path / "x.fasta"))
    for kept, report in (from_table, from_fasta):
        assert report.n_records == len(records) == report.n_kept + sum(report.skipped.values())
        assert report.skipped["invalid_characters"] == len(records) - len(valid) > 0
        assert report.skipped["empty"] == 1 and report.duplicate_ids == 1
        assert report.truncated == sum(len(normalize_barcode(barcode)) > 660 for barcode in valid) > 0
        assert len(kept) == report.n_kept
        summary = report.summary().splitlines()
        assert summary[0].startswith(f"read {len(records)} records from 1 file(s): kept {report.n_kept}")
        assert len(summary) == 1 + len(report.skipped) + 2  # one line per reason, truncation, duplicate ids
        assert json.loads(json.dumps(report.to_dict()))["skipped"] == dict(report.skipped)
    assert [r.sequence for r in from_table[0]] == [r.sequence for r in from_fasta[0]]


def test_one_report_across_files_names_the_files(tmp_path):
    path = write_tsv([{"processid": "A", "dna_barcode": "AC*GT"}], tmp_path / "a.tsv")
    other = write_fasta([{"processid": "A", "dna_barcode": "??"}], tmp_path / "b.fasta")
    report = CleaningReport()
    assert list(iter_barcodes(path, report=report)) == [] and list(iter_barcodes(other, report=report)) == []
    assert report.files == [str(path), str(other)] and report.duplicate_ids == 1
    assert report.examples["invalid_characters"] == ["A (line 2)", "A (b.fasta line 1)"]


def test_iter_barcodes_split_filter_and_deduplication(tsv_file, simulated_records):
    report = CleaningReport()
    kept = list(iter_barcodes(tsv_file, report=report, splits={"train"}, deduplicate=True))
    assert {r.metadata["split"] for r in kept} == {"train"}
    n_train = sum(r["split"] == "train" for r in simulated_records)
    assert report.skipped["excluded_split"] == len(simulated_records) - n_train
    assert len(kept) + report.skipped["duplicate_sequence"] == n_train


# ------------------------------------------------------------------------------------ Dataset loader


def test_load_dataset_split_filter(tmp_path, tsv_file, simulated_records):
    dataset, report = load_barcode_dataset([tsv_file], splits=["train", "val"], cache_dir=tmp_path / "cache")
    wanted = [r for r in simulated_records if r["split"] in ("train", "val")]
    assert dataset["processid"] == [r["processid"] for r in wanted]
    assert dataset["dna_barcode"] == [r["dna_barcode"] for r in wanted]
    assert set(dataset["split"]) == {"train", "val"}
    assert set(dataset.column_names) == {"processid", "dna_barcode", *TAXONOMY_COLUMNS, "dna_bin", "split"}
    assert report.skipped == Counter({"excluded_split": len(simulated_records) - len(wanted)})
    assert report.n_kept == len(dataset) and report.split_values == Counter(r["split"] for r in simulated_records)


def test_load_dataset_deduplicates_cleaned_barcodes(tmp_path, records):
    copies = [
        dict(r, processid=f"COPY{i}", dna_barcode=r["dna_barcode"].lower() + "NN") for i, r in enumerate(records[:10])
    ]
    bad = [dict(records[0], processid="BAD", dna_barcode="ACGT?")]
    path = write_tsv(records + copies + bad, tmp_path / "x.csv")
    dataset, report = load_barcode_dataset(path, deduplicate=True, cache_dir=tmp_path / "cache")
    first = {}  # simulated specimens of one species sometimes share a haplotype, as real ones do
    for record in records:
        first.setdefault(record["dna_barcode"], record["processid"])
    assert dataset["processid"] == list(first.values())
    n_shared = len(records) - len(first)
    assert report.skipped == Counter({"duplicate_sequence": 10 + n_shared, "invalid_characters": 1})
    rows, seen = records + copies, set()
    repeats = []
    for line, row in enumerate(rows, start=2):
        barcode = normalize_barcode(row["dna_barcode"])
        if barcode in seen:
            repeats.append(f"{row['processid']} (line {line})")
        seen.add(barcode)
    assert report.examples["duplicate_sequence"] == repeats[:3]
    kept_all, _ = load_barcode_dataset(path, deduplicate=False, cache_dir=tmp_path / "cache")
    assert len(kept_all) == len(records) + 10


def test_load_dataset_several_formats_and_columns(tmp_path, tsv_file, fasta_file):
    dataset, report = load_barcode_dataset([tsv_file, fasta_file], cache_dir=tmp_path / "cache")
    assert len(dataset) == 2 * 240 and report.duplicate_ids == 240
    assert dataset.column_names[:2] == ["processid", "dna_barcode"] and "description" in dataset.column_names
    assert dataset[0]["description"] == "" and dataset[240]["split"] == "" and dataset[240]["description"] != ""
    assert report.examples["duplicate_id"][0] == "SIM000001 (barcodes.fasta line 1)"


def test_load_dataset_errors(tmp_path, tsv_file, fasta_file, write_text):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"requested splits \['trian'\] occur in no row.*'train'"):
        load_barcode_dataset(tsv_file, splits=["train", "trian"], cache_dir=cache)
    with pytest.raises(DataError, match="no file has a 'split' column"):
        load_barcode_dataset(fasta_file, splits=["train"], cache_dir=cache)
    with pytest.raises(DataError, match=r"bad\.tsv, line 2, record 'A'"):
        load_barcode_dataset(write_text("bad.tsv", "processid\tdna_barcode\nA\tACGT\tX\n"), cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp")) == []  # no partial file left


def test_load_dataset_sees_a_changed_file(tmp_path, records):
    path = write_tsv(records[:5], tmp_path / "x.tsv")
    first, _ = load_barcode_dataset(path, cache_dir=tmp_path / "cache")
    write_tsv(records[:7], path)
    second, _ = load_barcode_dataset(path, cache_dir=tmp_path / "cache")
    assert (len(first), len(second)) == (5, 7)


# ---------------------------------------------------------------------------------------- partitions


def _varied_records() -> list[dict]:
    """Genera of 1, 2, 3, 4 and 6 species; some species with fewer than 5 rows; shared barcodes; unlabelled rows."""
    records = simulate_barcodes(
        n_orders=1, families_per_order=2, genera_per_family=5, species_per_genus=6, specimens_per_species=8, seed=1
    )
    keep_species = [1, 2, 3, 4, 6]
    by_genus = defaultdict(list)
    for record in records:
        if record["species"] not in by_genus[record["genus"]]:
            by_genus[record["genus"]].append(record["species"])
    kept = []
    for index, (genus, species) in enumerate(sorted(by_genus.items())):
        allowed = species[: keep_species[index % len(keep_species)]]
        kept += [r for r in records if r["genus"] == genus and r["species"] in allowed]
    for index, record in enumerate(kept):
        if index % 16 in (1, 2):  # identical barcodes (after normalisation) within species
            record["dna_barcode"] = kept[index - 1 if index % 16 == 1 else index - 2]["dna_barcode"].lower()
        if index % 40 == 39:
            record["species"] = ""  # unlabelled -> pretrain
    small = kept[0]["species"]
    return [r for r in kept if r["species"] != small or r["processid"] <= kept[2]["processid"]]


def test_partition_invariants():
    records = _varied_records()
    splits = assign_bioscan_splits(records, seed=0)
    assert len(splits) == len(records) and set(splits) <= set(SPLIT_NAMES)
    by_species = defaultdict(set)
    for record, split in zip(records, splits):
        labelled = bool(record["genus"] and record["species"])
        assert (split == "pretrain") == (not labelled)
        if labelled:
            by_species[(record["genus"], record["species"])].add(split)
    unseen = {key for key, names in by_species.items() if names & {"val_unseen", "test_unseen"}}
    assert unseen and all(len(by_species[key]) == 1 for key in unseen)  # an unseen species is never also seen
    assert {s for key in unseen for s in by_species[key]} == {"val_unseen", "test_unseen"}
    seen_in_train = {genus for (genus, _), names in by_species.items() if "train" in names}
    assert all(genus in seen_in_train for genus, _ in unseen)
    species_per_genus = Counter(genus for genus, _ in by_species)
    unseen_per_genus = Counter(genus for genus, _ in unseen)
    for genus, n in species_per_genus.items():
        expected = min(max(1, round(n / 4)), n - 2) if n >= 3 else 0
        assert unseen_per_genus[genus] == expected
    groups = defaultdict(set)
    for record, split in zip(records, splits):
        if split in ("train", "val", "test"):
            groups[normalize_barcode(record["dna_barcode"])].add(split)
    assert all(len(names) == 1 for names in groups.values())  # identical barcodes stay together
    rows_per_species = Counter((r["genus"], r["species"]) for r in records if r["species"])
    assert all(by_species[key] == {"train"} for key, n in rows_per_species.items() if n < 5 and key not in unseen)
    seen = Counter(s for s in splits if s in ("train", "val", "test"))
    assert seen["test"] > 0 and seen["val"] > 0 and seen["train"] > seen["test"] + seen["val"]


def test_partition_is_deterministic_and_seeded():
    records = _varied_records()
    assert assign_bioscan_splits(records, seed=0) == assign_bioscan_splits([dict(r) for r in records], seed=0)
    assert assign_bioscan_splits(records, seed=0) != assign_bioscan_splits(records, seed=1)


def test_partition_of_rows_without_labels():
    rows = [{"dna_barcode": "ACGT"}, {"genus": "Apis", "species": "", "dna_barcode": "ACGT"}, {"genus": " "}]
    assert assign_bioscan_splits(rows) == ["pretrain"] * 3
