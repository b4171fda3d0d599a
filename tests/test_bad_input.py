"""Bad input through `barcodemae embed`: each case is cleaned, or skipped and reported, or refused with one
error line (exit 2) naming the record and line; nothing half-written is left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import MAX_BASES, export_tiny_encoder, files_in, reference_embeddings, run

from barcodemae.simulate import simulate_barcodes


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return export_tiny_encoder(tmp_path_factory.mktemp("model") / "tiny-encoder")


CLEAN = [record["dna_barcode"] for record in simulate_barcodes(1, 1, 1, 2, 2, length=180, seed=5)]


def fasta(path, records: list[tuple[str, str]]):
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in records))
    return path


def embed(capsys, tmp_path, model, text_or_records, name="in.fasta", *extra):
    source = tmp_path / name
    if isinstance(text_or_records, str):
        source.write_text(text_or_records)
    else:
        fasta(source, text_or_records)
    out = tmp_path / "out.npy"
    code, _, err = run(capsys, "embed", source, "-o", out, "--model", model, "--quiet", *extra)
    ids = (tmp_path / "out.ids.txt").read_text().splitlines() if code == 0 else None
    return code, err, ids, (np.load(out) if code == 0 else None)


def assert_cleaned_to(capsys, tmp_path, model, variant: str, clean: str):
    """The variant is kept and embeds exactly like the clean barcode."""
    code, err, ids, embeddings = embed(capsys, tmp_path, model, [("clean", clean), ("variant", variant)])
    assert code == 0, err
    assert ids == ["clean", "variant"] and "skipped 0" in err
    np.testing.assert_allclose(embeddings[1], embeddings[0], atol=1e-6)


def assert_refused(err: str, tmp_path, *expected: str, inputs=("in.fasta",)):
    lines = err.strip().splitlines()
    assert lines[-1].startswith("barcodemae: error: ") and "Traceback" not in err
    for text in expected:
        assert text in lines[-1]
    assert files_in(tmp_path) == sorted(inputs)  # no output, no temporary file


def test_lowercase_is_cleaned(tmp_path, capsys, tiny_encoder):
    assert_cleaned_to(capsys, tmp_path, tiny_encoder, CLEAN[0].lower(), CLEAN[0])


def test_uracil_is_read_as_thymine(tmp_path, capsys, tiny_encoder):
    assert_cleaned_to(capsys, tmp_path, tiny_encoder, CLEAN[0].replace("T", "U"), CLEAN[0])


def test_gaps_and_whitespace_are_removed(tmp_path, capsys, tiny_encoder):
    gapped = f"{CLEAN[0][:30]}--{CLEAN[0][30:90]}.{CLEAN[0][90:]}"
    assert_cleaned_to(capsys, tmp_path, tiny_encoder, gapped, CLEAN[0])


def test_trailing_n_run_is_stripped_and_inner_n_kept(tmp_path, capsys, tiny_encoder):
    assert_cleaned_to(capsys, tmp_path, tiny_encoder, CLEAN[0] + "N" * 25, CLEAN[0])
    inner = CLEAN[0][:40] + "NNNNNNNN" + CLEAN[0][48:]
    code, err, ids, embeddings = embed(capsys, tmp_path, tiny_encoder, [("inner", inner)])
    assert code == 0 and ids == ["inner"]
    np.testing.assert_allclose(embeddings, reference_embeddings(tiny_encoder, [inner]), atol=1e-5)  # N k-mers: [UNK]


def test_iupac_codes_are_kept_as_unknown_kmers(tmp_path, capsys, tiny_encoder):
    ambiguous = CLEAN[0][:10] + "RYK" + CLEAN[0][13:]
    code, err, ids, embeddings = embed(capsys, tmp_path, tiny_encoder, [("clean", CLEAN[0]), ("iupac", ambiguous)])
    assert code == 0 and ids == ["clean", "iupac"] and "skipped 0" in err
    np.testing.assert_allclose(embeddings[1], reference_embeddings(tiny_encoder, [ambiguous])[0], atol=1e-5)
    assert not np.allclose(embeddings[1], embeddings[0])


def test_empty_records_are_skipped_and_reported(tmp_path, capsys, tiny_encoder):
    records = [("a", CLEAN[0]), ("empty", ""), ("only_n", "NNNNNN"), ("b", CLEAN[1])]
    code, err, ids, embeddings = embed(capsys, tmp_path, tiny_encoder, records)
    assert code == 0 and ids == ["a", "b"] and embeddings.shape == (2, 32)
    assert "read 4 records" in err and "skipped empty: 2" in err and "empty (line 3)" in err


def test_empty_record_with_strict_is_an_error(tmp_path, capsys, tiny_encoder):
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, [("a", CLEAN[0]), ("empty", "")], "in.fasta", "--strict")
    assert code == 2
    assert_refused(err, tmp_path, "line 3", "'empty'", "empty")


def test_duplicate_ids_are_kept_and_counted(tmp_path, capsys, tiny_encoder):
    code, err, ids, _ = embed(capsys, tmp_path, tiny_encoder, [("x", CLEAN[0]), ("x", CLEAN[1])])
    assert code == 0 and ids == ["x", "x"]
    assert "duplicate ids (kept): 1" in err


def test_malformed_fasta_is_refused(tmp_path, capsys, tiny_encoder):
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, f"{CLEAN[0]}\n>a\n{CLEAN[1]}\n")
    assert code == 2
    assert_refused(err, tmp_path, "line 1", "before the first FASTA header")


def test_fasta_header_without_id_is_refused(tmp_path, capsys, tiny_encoder):
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, f">a\n{CLEAN[0]}\n> \n{CLEAN[1]}\n")
    assert code == 2
    assert_refused(err, tmp_path, "line 3", "without an id")


def test_missing_dna_barcode_column_is_refused(tmp_path, capsys, tiny_encoder):
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, f"processid\tsequence\nA1\t{CLEAN[0]}\n", "in.tsv")
    assert code == 2
    assert_refused(err, tmp_path, "line 1", "no 'dna_barcode' column", inputs=("in.tsv",))


def test_overlong_barcode_is_truncated_and_counted(tmp_path, capsys, tiny_encoder):
    long = CLEAN[0] + CLEAN[1]  # 360 bases; the tiny model reads 200
    code, err, ids, embeddings = embed(capsys, tmp_path, tiny_encoder, [("long", long), ("cut", long[:MAX_BASES])])
    assert code == 0 and ids == ["long", "cut"]
    assert f"truncated to {MAX_BASES} bases (kept): 1" in err and "long (line 1)" in err
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-6)


def test_invalid_characters_are_skipped_and_reported(tmp_path, capsys, tiny_encoder):
    records = [("ok", CLEAN[0]), ("bad", CLEAN[1][:50] + "*X?" + CLEAN[1][50:])]
    code, err, ids, _ = embed(capsys, tmp_path, tiny_encoder, records)
    assert code == 0 and ids == ["ok"]
    assert "skipped invalid_characters: 1" in err and "bad (line 3)" in err


def test_invalid_characters_with_strict_are_an_error(tmp_path, capsys, tiny_encoder):
    records = [("ok", CLEAN[0]), ("bad", CLEAN[1][:50] + "*" + CLEAN[1][50:])]
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, records, "in.fasta", "--strict")
    assert code == 2
    assert_refused(err, tmp_path, "line 3", "'bad'", "invalid_characters")


def test_wrong_field_count_in_table_is_refused(tmp_path, capsys, tiny_encoder):
    text = f"processid\tdna_barcode\nA1\t{CLEAN[0]}\nA2\t{CLEAN[1]}\textra\n"
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, text, "in.tsv")
    assert code == 2
    assert_refused(err, tmp_path, "line 3", "'A2'", "3 fields", inputs=("in.tsv",))


def test_missing_input_file_is_refused(tmp_path, capsys, tiny_encoder):
    code, _, err = run(capsys, "embed", tmp_path / "nope.fasta", "-o", tmp_path / "out.npy", "--model", tiny_encoder)
    assert code == 2
    assert_refused(err, tmp_path, "nope.fasta: input file not found", inputs=())


def test_unknown_input_suffix_is_refused(tmp_path, capsys, tiny_encoder):
    (tmp_path / "in.doc").write_text(">a\nACGT\n")
    code, _, err = run(capsys, "embed", tmp_path / "in.doc", "-o", tmp_path / "out.npy", "--model", tiny_encoder)
    assert code == 2
    assert_refused(err, tmp_path, "unknown file type '.doc'", inputs=("in.doc",))


@pytest.mark.parametrize("output", ["out.csv", "out", "missing_folder/out.npy"])
def test_unknown_or_unwritable_output_is_refused(tmp_path, capsys, tiny_encoder, output):
    source = fasta(tmp_path / "in.fasta", [("a", CLEAN[0])])
    code, _, err = run(capsys, "embed", source, "-o", tmp_path / output, "--model", tiny_encoder)
    assert code == 2
    assert_refused(err, tmp_path, "out")
    assert ("unknown output type" in err) != ("does not exist" in err)


def test_error_midway_leaves_no_partial_output(tmp_path, capsys, tiny_encoder):
    """A refusal after chunks were already written (strict, record 30 of 30) removes everything."""
    records = [(f"r{i}", CLEAN[i % 2]) for i in range(29)] + [("bad", "ACGT*ACGT")]
    code, err, _, _ = embed(capsys, tmp_path, tiny_encoder, records, "in.fasta", "--strict", "--chunk-size", "4")
    assert code == 2
    assert_refused(err, tmp_path, "line 59", "'bad'")


def test_bad_query_in_identify_leaves_no_output(tmp_path, capsys, tiny_encoder):
    reference = tmp_path / "ref.tsv"
    reference.write_text("processid\tgenus\tspecies\tdna_barcode\nR1\tG\tG a\t" + CLEAN[0] + "\n")
    query = tmp_path / "q.fasta"
    query.write_text(f"{CLEAN[1]}\n")
    args = ["identify", query, "--reference", reference, "-o", tmp_path / "p.tsv", "--novel-threshold", 0.9]
    code, _, err = run(capsys, *args, "--model", tiny_encoder, "--quiet")
    assert code == 2
    assert_refused(err, tmp_path, "q.fasta, line 1", inputs=("q.fasta", "ref.tsv"))
