"""Reference-library dialects: one reference written as BIOSCAN-5M, BOLD v4 / v5 tables, SINTAX, BOLD and plain
FASTA (with taxonomy files) reads the same; markers, placeholders, taxonomy files and every malformed case."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from barcodemae.data import DataError, iter_raw_records, load_barcode_dataset, read_barcodes
from barcodemae.formats import LABEL_KEYS, parse_fasta_header, read_taxonomy, taxon_ranks
from tokenization_barcodemae import normalize_barcode

HIGHER = {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta", "order": "Diptera"}
SPECIES = [  # family, subfamily, genus, species, BIN
    ("Culicidae", "Culicinae", "Aedes", "Aedes vexans", "BOLD:AAA1111"),
    ("Culicidae", "Culicinae", "Aedes", "Aedes albopictus", "BOLD:AAB2222"),
    ("Chironomidae", "Chironominae", "Chironomus", "Chironomus riparius", "BOLD:ACD3333"),
]
QUIRKS = [str.lower, lambda s: s[:20] + "--" + s[20:], lambda s: s + "NNN", str, str.lower, str]
REFERENCE = [
    {
        "id": f"TST{index + 1:03d}-24",
        "raw": QUIRKS[index]("".join(random.Random(index).choices("ACGT", k=90))),
        **HIGHER,
        **dict(zip(("family", "subfamily", "genus", "species", "dna_bin"), SPECIES[index // 2])),
    }
    for index in range(6)
]
BIOSCAN_KEYS = ("phylum", "class", "order", "family", "subfamily", "genus", "species", "dna_bin")
SINTAX_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def write(path, lines: list[str]):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def tsv(path, header: list[str], rows: list[list[str]]):
    return write(path, ["\t".join(header)] + ["\t".join(row) for row in rows])


def sintax(record: dict) -> str:
    ranks = {"d": "Eukaryota", **{key[0]: record[key] for key in SINTAX_KEYS}}
    return ",".join(f"{letter}:{name.replace(' ', '_')}" for letter, name in ranks.items())


def qiime(record: dict) -> str:
    return "; ".join(f"{key[0]}__{record[key].replace(' ', '_')}" for key in SINTAX_KEYS)


def bioscan_tsv(tmp_path):
    header = ["processid", "sampleid", "taxon", *BIOSCAN_KEYS, "dna_barcode", "split"]
    rows = [[r["id"], "S1", r["species"], *(r[k] for k in BIOSCAN_KEYS), r["raw"], "train"] for r in REFERENCE]
    return tsv(tmp_path / "bioscan.tsv", header, rows), None


def bold_v4_tsv(tmp_path):
    ranks = [f"{key}_name" for key in BIOSCAN_KEYS[:-1]]
    header = ["processid", "sampleid", "recordID", "bin_uri", "phylum_taxID", *ranks]
    header += ["markercode", "genbank_accession", "nucleotides", "country"]
    rows = [
        [r["id"], "S1", "42", r["dna_bin"], "20", *(r[k] for k in BIOSCAN_KEYS[:-1]), "COI-5P", "", r["raw"], "Canada"]
        for r in REFERENCE
    ]
    return tsv(tmp_path / "bold_v4.tsv", header, rows), None


def bold_v5_tsv(tmp_path):
    keys = ("kingdom", *BIOSCAN_KEYS[:-1])
    header = ["processid", "sampleid", *keys, "identification", "bin_uri", "marker_code", "nuc", "nuc_basecount"]
    rows = [
        [r["id"], "S1", *(r[k] for k in keys), r["species"], r["dna_bin"], "COI-5P", r["raw"], "90"] for r in REFERENCE
    ]
    return tsv(tmp_path / "bold_v5.tsv", header, rows), None


def sintax_fasta(tmp_path):
    lines = [line for r in REFERENCE for line in (f">{r['id']};size=12;tax={sintax(r)};", r["raw"][:50], r["raw"][50:])]
    return write(tmp_path / "sintax.fasta", lines), None


def bold_fasta(tmp_path):
    lines = [line for i, r in enumerate(REFERENCE) for line in (f">{r['id']}|{r['species']}|COI-5P|MN00{i}", r["raw"])]
    return write(tmp_path / "bold.fas", lines), None


def plain_fasta(tmp_path):
    return write(tmp_path / "plain.fa", [line for r in REFERENCE for line in (f">{r['id']} a specimen", r["raw"])])


def plain_with_taxonomy_columns(tmp_path):
    columns = {"kingdom": "kingdom", "phylum": "phylum_name", "class": "class", "order": "order_name"}
    columns |= {"family": "family", "subfamily": "subfamily_name", "genus": "genus", "species": "species"}
    columns["dna_bin"] = "bin_uri"
    rows = [[r["id"], "x", *(r[key] for key in columns)] for r in REFERENCE]
    taxonomy = tsv(tmp_path / "taxonomy.tsv", ["seqid", "notes", *columns.values()], rows)
    return plain_fasta(tmp_path), read_taxonomy(taxonomy)


def plain_with_sintax_strings(tmp_path):
    taxonomy = write(tmp_path / "taxonomy.txt", [f"{r['id']}\t{sintax(r)}" for r in REFERENCE])
    return plain_fasta(tmp_path), read_taxonomy(taxonomy)


def plain_with_qiime_strings(tmp_path):
    taxonomy = write(tmp_path / "taxonomy.tsv", [f"{r['id']}\t{qiime(r)}" for r in REFERENCE])
    return plain_fasta(tmp_path), read_taxonomy(taxonomy)


# writer, label keys the form carries
FORMS = {
    "bioscan_tsv": (bioscan_tsv, BIOSCAN_KEYS),
    "bold_v4_tsv": (bold_v4_tsv, BIOSCAN_KEYS),
    "bold_v5_tsv": (bold_v5_tsv, ("kingdom", *BIOSCAN_KEYS)),
    "sintax_fasta": (sintax_fasta, SINTAX_KEYS),
    "bold_fasta": (bold_fasta, ("genus", "species")),
    "plain_fasta_taxonomy_columns": (plain_with_taxonomy_columns, LABEL_KEYS),
    "plain_fasta_taxonomy_sintax": (plain_with_sintax_strings, SINTAX_KEYS),
    "plain_fasta_taxonomy_qiime": (plain_with_qiime_strings, SINTAX_KEYS),
}


@pytest.mark.parametrize("form", FORMS)
def test_one_reference_reads_the_same_in_every_form(tmp_path, form):
    writer, carried = FORMS[form]
    path, taxonomy = writer(tmp_path)
    records, report = read_barcodes(path, taxonomy=taxonomy)
    expected = [(r["id"], normalize_barcode(r["raw"]), r["genus"], r["species"]) for r in REFERENCE]
    assert [(r.record_id, r.sequence, r.metadata["genus"], r.metadata["species"]) for r in records] == expected
    assert report.n_kept == 6 and not report.skipped and report.missing_taxonomy == 0
    for record, row in zip(records, REFERENCE):
        assert {key: value for key, value in record.metadata.items() if key in LABEL_KEYS} == {
            key: row[key] for key in carried
        }


def test_bold_fasta_keeps_marker_and_description(tmp_path):
    records, _ = read_barcodes(bold_fasta(tmp_path)[0])
    assert records[0].metadata == {
        "description": "Aedes vexans|COI-5P|MN000",
        "genus": "Aedes",
        "species": "Aedes vexans",
        "marker": "COI-5P",
    }


# ------------------------------------------------------------------------------------------- FASTA headers


@pytest.mark.parametrize(
    ("taxon", "ranks"),
    [
        ("Culicidae", {"family": "Culicidae"}),
        ("Culicinae", {"subfamily": "Culicinae"}),
        ("Aedes", {"genus": "Aedes"}),
        ("Aedes  vexans ", {"genus": "Aedes", "species": "Aedes vexans"}),
        ("Aedes sp. BOLD:AAA1111", {"genus": "Aedes", "species": "Aedes sp. BOLD:AAA1111"}),
        ("Aedes vexans nipponii", {"genus": "Aedes", "species": "Aedes vexans nipponii"}),
        ("Chironomidae sp. 4", {"family": "Chironomidae", "species": "Chironomidae sp. 4"}),
        ("None", {}),
        ("", {}),
    ],
)
def test_bold_taxon_rule(taxon, ranks):
    assert taxon_ranks(taxon) == ranks


@pytest.mark.parametrize(
    ("header", "record_id", "metadata"),
    [
        (
            "A1;tax=d:Eukaryota,g:Aedes,s:Aedes_vexans;",
            "A1",
            {"description": "tax=d:Eukaryota,g:Aedes,s:Aedes_vexans;", "kingdom": "Eukaryota"}
            | {"genus": "Aedes", "species": "Aedes vexans"},
        ),
        (
            "A1;tax=k:Animalia,d:Eukaryota, o:Diptera",
            "A1",
            {"description": "tax=k:Animalia,d:Eukaryota, o:Diptera", "kingdom": "Animalia", "order": "Diptera"},
        ),
        (
            " A1;size=3;tax=f:Culicidae,t:strain_1;sample=x",
            "A1",
            {"description": "size=3;tax=f:Culicidae,t:strain_1;sample=x", "family": "Culicidae"},
        ),
        (
            "A1|Culicidae|COI-5P|MN1",
            "A1",
            {"description": "Culicidae|COI-5P|MN1", "family": "Culicidae"} | {"marker": "COI-5P"},
        ),
        (
            "A1|Aedes|BOLD:AAA1111",
            "A1",
            {"description": "Aedes|BOLD:AAA1111", "genus": "Aedes", "dna_bin": "BOLD:AAA1111"},
        ),
        ("A1||COI-5P", "A1", {"description": "|COI-5P", "marker": "COI-5P"}),
        ("A1 Aedes vexans|COI-5P", "A1", {"description": "Aedes vexans|COI-5P"}),
        ("A1", "A1", {"description": ""}),
    ],
)
def test_fasta_header_dialects(header, record_id, metadata):
    assert parse_fasta_header(header, "x.fasta, line 1") == (record_id, metadata)


def test_a_fasta_file_may_mix_dialects(tmp_path):
    raw = REFERENCE[3]["raw"]
    lines = [">P1 free text", raw, ">S1;tax=g:Aedes,s:Aedes_vexans", raw, ">B1|Chironomus riparius", raw]
    records, report = read_barcodes(write(tmp_path / "mixed.fasta", lines))
    assert [(r.record_id, r.metadata.get("genus"), r.metadata.get("species")) for r in records] == [
        ("P1", None, None),
        ("S1", "Aedes", "Aedes vexans"),
        ("B1", "Chironomus", "Chironomus riparius"),
    ]
    assert records[0].metadata == {"description": "free text"} and report.n_kept == 3


@pytest.mark.parametrize(
    ("header", "item"),
    [
        (">B2;tax=x:Foo,g:Aedes", "x:Foo"),
        (">B2;tax=p:Arthropoda,g:", "g:"),
        (">B2;tax=g:Aedes,g:Culex", "g:Culex"),
        (">B2;tax=Aedes", "Aedes"),
    ],
)
def test_unreadable_sintax_header_names_file_and_line(tmp_path, header, item):
    path = write(tmp_path / "x.fasta", [">B1;tax=g:Aedes", "ACGTACGTAC", "", header, "ACGTACGTAC"])
    with pytest.raises(DataError, match=rf"x\.fasta, line 4: cannot read SINTAX rank {item!r}"):
        read_barcodes(path)


# -------------------------------------------------------------------------------------- tables, markers


def test_table_without_a_sequence_column_names_the_ones_it_looks_for(tmp_path):
    path = tsv(tmp_path / "x.tsv", ["processid", "species_name", "sequence"], [["A", "Aedes vexans", "ACGT"]])
    with pytest.raises(DataError, match=r"x\.tsv, line 1: .*'dna_barcode'.*'nucleotides'.*'nuc'"):
        read_barcodes(path)


def test_other_markers_are_skipped_and_counted(tmp_path):
    raw = REFERENCE[0]["raw"]
    markers = ["COI-5P", "ITS2", "", "coi-5p", "None", "matK"]
    header = ["processid", "markercode", "nucleotides"]
    records, report = read_barcodes(
        tsv(tmp_path / "v4.tsv", header, [[f"R{i}", m, raw] for i, m in enumerate(markers)])
    )
    assert [r.record_id for r in records] == ["R0", "R2", "R3", "R4"]
    assert [r.metadata["marker"] for r in records] == ["COI-5P", "", "coi-5p", ""]
    assert report.skipped == Counter({"other_marker": 2}) and report.examples["other_marker"] == [
        "R1 (line 3)",
        "R5 (line 7)",
    ]
    assert "skipped other_marker: 2 [marker other than COI-5P" in report.summary()
    fasta = write(tmp_path / "bold.fasta", [">F1|Aedes vexans|COI-3P|MN1", raw, ">F2|Aedes vexans|COI-5P", raw])
    records, report = read_barcodes(fasta, on_invalid="raise")  # a marker skip is never an error
    assert [r.record_id for r in records] == ["F2"] and report.skipped == Counter({"other_marker": 1})


def test_placeholder_labels_read_as_unknown(tmp_path):
    header = ["processid", "kingdom", "family", "genus", "species", "bin_uri", "marker_code", "nuc"]
    row = ["A", "None", " NA ", "nan", "not classified", "", " COI-5P ", REFERENCE[0]["raw"]]
    (record,), _ = read_barcodes(tsv(tmp_path / "v5.tsv", header, [row]))
    assert record.metadata == dict.fromkeys(("kingdom", "family", "genus", "species", "dna_bin"), "") | {
        "marker": "COI-5P"
    }


# ------------------------------------------------------------------------------------------ taxonomy files


def test_qiime_strings_greengenes_epithet_and_empty_ranks(tmp_path):
    path = write(tmp_path / "t.tsv", ["A\tk__Animalia; f__; g__Aedes; s__vexans", "B\ttax=g:Aedes,s:Aedes_vexans"])
    assert read_taxonomy(path) == {
        "A": {"kingdom": "Animalia", "family": "", "genus": "Aedes", "species": "Aedes vexans"},
        "B": {"genus": "Aedes", "species": "Aedes vexans"},
    }


def test_taxonomy_id_twice(tmp_path):
    same = write(tmp_path / "same.tsv", ["id\tgenus\tspecies", "A\tAedes\tAedes vexans", "", "A\tAedes\tAedes vexans"])
    assert read_taxonomy(same) == {"A": {"genus": "Aedes", "species": "Aedes vexans"}}
    other = write(tmp_path / "other.tsv", ["A\tg:Aedes,s:Aedes_vexans", "B\tg:Aedes", "A\tg:Aedes,s:Aedes_cinereus"])
    with pytest.raises(DataError, match=r"other\.tsv, line 3: id 'A' already on line 1 with other labels"):
        read_taxonomy(other)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["id\tgenus", "A\tAedes", "B\tAedes\textra"], r"line 3: 3 fields, the header has 2"),
        (["A\tg:Aedes", "B"], r"line 2: 1 fields, expected 2"),
        (["A\tg:Aedes", "B\tg:Aedes\tx"], r"line 2: 3 fields, expected 2"),
        (["A\tk__Animalia; q__Foo"], r"line 1: cannot read QIIME rank 'q__Foo'"),
        (["A\tg:Aedes", "\tg:Aedes"], r"line 2: empty id"),
        (["seqid\tnotes", "A\tfree"], r"line 1: neither a header row with rank columns"),
        ([], r"line 1: empty taxonomy file"),
    ],
)
def test_malformed_taxonomy_names_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=rf"bad\.tsv, {message}"):
        read_taxonomy(write(tmp_path / "bad.tsv", lines))


def test_taxonomy_wins_over_headers_and_missing_ids_are_counted(tmp_path):
    raw = REFERENCE[0]["raw"]
    lines = [">A|Culex pipiens|COI-5P", raw, ">B|Culex pipiens|COI-5P", raw, ">C", raw]
    fasta = write(tmp_path / "x.fasta", lines)
    taxonomy = read_taxonomy(write(tmp_path / "t.tsv", ["A\tf:Culicidae,g:Aedes"]))
    records, report = read_barcodes(fasta, taxonomy=taxonomy)
    assert [r.metadata for r in records] == [
        {"description": "Culex pipiens|COI-5P", "marker": "COI-5P", "family": "Culicidae", "genus": "Aedes"},
        {"description": "Culex pipiens|COI-5P", "genus": "Culex", "species": "Culex pipiens", "marker": "COI-5P"},
        {"description": ""},
    ]
    assert report.n_kept == 3 and report.missing_taxonomy == 2
    assert report.examples["missing_taxonomy"] == ["B (line 3)", "C (line 5)"]
    assert "ids not in the taxonomy (kept without its labels): 2, e.g. B (line 3), C (line 5)" in report.summary()
    assert report.to_dict()["missing_taxonomy"] == 2


def test_taxonomy_for_a_table_is_refused(tmp_path):
    path, _ = bioscan_tsv(tmp_path)
    with pytest.raises(DataError, match=r"bioscan\.tsv: a taxonomy file labels FASTA records"):
        next(iter_raw_records(path, taxonomy={}))


# ----------------------------------------------------------------------------------- Dataset, embedding


def test_load_dataset_columns_follow_what_the_records_hold(tmp_path):
    plain, taxonomy = plain_with_sintax_strings(tmp_path)
    dataset, report = load_barcode_dataset(plain, cache_dir=tmp_path / "cache")
    assert dataset.column_names == ["processid", "dna_barcode", "description"]
    dataset, report = load_barcode_dataset(plain, cache_dir=tmp_path / "cache", taxonomy=taxonomy)
    assert dataset.column_names == ["processid", "dna_barcode", *SINTAX_KEYS, "description"]
    assert dataset["species"] == [r["species"] for r in REFERENCE] and report.missing_taxonomy == 0
    table, _ = bold_v4_tsv(tmp_path)
    dataset, _ = load_barcode_dataset([table, plain], cache_dir=tmp_path / "cache", taxonomy=None)
    assert dataset.column_names == ["processid", "dna_barcode", *BIOSCAN_KEYS, "marker", "description"]
    assert dataset["marker"] == ["COI-5P"] * 6 + [""] * 6


def test_embedding_iter_records_takes_a_taxonomy(tmp_path):
    from barcodemae.data import CleaningReport
    from barcodemae.embedding import iter_records

    embedder = SimpleNamespace(limits=(660, 6))  # (bases, k) the model reads
    plain, taxonomy = plain_with_qiime_strings(tmp_path)
    report = CleaningReport()
    records = list(iter_records(plain, embedder, report, taxonomy=taxonomy))
    assert [r.metadata["species"] for r in records] == [r["species"] for r in REFERENCE]
