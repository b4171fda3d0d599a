"""`barcodemae identify`: per-rank answers and the committed rank, neighbours, thresholds, saved index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import export_tiny_encoder, files_in, run

from barcodemae.identify import read_predictions
from barcodemae.reference import (
    INDEX_ANN,
    INDEX_EMBEDDINGS,
    INDEX_SEQUENCES,
    ReferenceIndex,
    calibrate_threshold,
    map_embeddings,
)
from barcodemae.simulate import simulate_barcodes, write_fasta, write_tsv


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return export_tiny_encoder(tmp_path_factory.mktemp("model") / "tiny-encoder")


@pytest.fixture(scope="module")
def split_records() -> dict[str, list[dict]]:
    """Reference (4 specimens of 11 species), queries: one new specimen of each of those species, an exact copy
    of a reference barcode under a new id, and 5 specimens of a 12th species absent from the reference."""
    records = simulate_barcodes(1, 2, 2, 3, 5, length=200, seed=1)
    held_out = records[-1]["species"]
    reference = [r for i, r in enumerate(records) if r["species"] != held_out and i % 5 != 4]
    known = [r for i, r in enumerate(records) if r["species"] != held_out and i % 5 == 4]
    novel = [r for r in records if r["species"] == held_out]
    copy = {**reference[3], "processid": "COPY"}
    return {"reference": reference, "known": known, "novel": novel, "queries": [copy, *known, *novel]}


def test_identify_ranks_own_species_and_flags_novel(tmp_path, capsys, tiny_encoder, split_records):
    reference = write_tsv(split_records["reference"], tmp_path / "reference.tsv")
    queries = write_fasta(split_records["queries"], tmp_path / "queries.fasta")
    out, index_dir = tmp_path / "predictions.tsv", tmp_path / "index"
    args = ["identify", queries, "--reference", reference, "-o", out, "--model", tiny_encoder]
    code, _, err = run(capsys, *args, "--save-index", index_dir, "--top-k", 3)
    assert code == 0, err
    assert "novel-species threshold" in err and "leave-one-out" in err and "known_species" in err  # the summary
    rows = read_predictions(out)
    assert list(rows[0])[:5] == ["query_id", "assigned_rank", "outcome", "predicted_order", "order_confidence"]
    assert list(rows[0])[9:15] == [
        "predicted_species",
        "species_confidence",
        "predicted_bin",  # the reference has BINs
        "bin_confidence",
        "cosine_similarity",
        "novel_species",
    ]
    names = ("id", "order", "family", "genus", "species", "bin", "cosine_similarity")
    assert list(rows[0])[-7:] == [f"neighbor_3_{c}" for c in names]
    by_id = {row["query_id"]: row for row in rows}
    assert [row["query_id"] for row in rows] == [r["processid"] for r in split_records["queries"]]

    copy = by_id["COPY"]  # an exact copy of a reference barcode: that reference first, similarity 1
    assert copy["neighbor_1_id"] == split_records["reference"][3]["processid"]
    assert float(copy["cosine_similarity"]) > 0.9999 and copy["novel_species"] == "false"
    for record in split_records["known"]:  # a new specimen of a reference species: its species, committed
        row = by_id[record["processid"]]
        assert (row["predicted_species"], row["predicted_genus"]) == (record["species"], record["genus"])
        assert (row["assigned_rank"], row["outcome"], row["novel_species"]) == ("species", "known_species", "false")
    for record in split_records["novel"]:  # a species absent from the reference: no species committed
        row = by_id[record["processid"]]
        assert row["assigned_rank"] != "species" and row["novel_species"] == "true"
    for row in rows:  # confidences in [0, 1], never growing with depth
        values = [float(row[f"{rank}_confidence"]) for rank in ("order", "family", "genus", "species")]
        assert all(0 <= b <= a <= 1 for a, b in zip(values, values[1:]))

    index = ReferenceIndex.load(index_dir)
    assert index.ids == [r["processid"] for r in split_records["reference"]]
    assert index.species == [r["species"] for r in split_records["reference"]]
    assert index.labels["family"] == [r["family"] for r in split_records["reference"]]
    distinct = len({r["dna_barcode"] for r in split_records["reference"]})  # identical barcodes are stored once
    assert index.embeddings.shape == (distinct, 32) and index.row_embeddings.shape == (len(index.ids), 32)
    assert index.calibration["balanced_accuracy"] == 1.0
    assert set(index.confidence.weights) >= {"order", "family", "genus", "species"}

    reused = tmp_path / "again.tsv"  # the saved index gives the same predictions; a cut-off of 0 commits to species
    code, _, err = run(capsys, "identify", queries, "--index", index_dir, "-o", reused, "--quiet", "--top-k", 3)
    assert code == 0, err
    assert read_predictions(reused) == rows
    code, _, err = run(capsys, "identify", queries, "--index", index_dir, "-o", reused, "--min-confidence", 0)
    assert code == 0, err
    assert {row["assigned_rank"] for row in read_predictions(reused)} == {"species"}


def test_index_embeddings_are_memory_mapped_read_only_and_checked(tmp_path):
    from safetensors.numpy import save_file

    embeddings = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    save_file({"embeddings": embeddings}, str(tmp_path / "ok.safetensors"))
    mapped = map_embeddings(tmp_path / "ok.safetensors")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, embeddings)
    save_file({"embeddings": embeddings.astype(np.float64)}, str(tmp_path / "f64.safetensors"))
    save_file({"other": embeddings}, str(tmp_path / "other.safetensors"))
    for name in ("f64", "other"):
        with pytest.raises(ValueError, match=rf"{name}.safetensors: expected a non-empty \(R, hidden\) float32"):
            map_embeddings(tmp_path / f"{name}.safetensors")


def test_index_built_with_another_model_is_refused(tmp_path, capsys, tiny_encoder, split_records):
    reference = write_tsv(split_records["reference"][:8], tmp_path / "reference.tsv")
    index_dir = tmp_path / "index"
    args = ["identify", "--reference", reference, "--save-index", index_dir, "--model", tiny_encoder, "--quiet"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    queries = write_fasta(split_records["known"][:2], tmp_path / "q.fasta")
    code, _, err = run(capsys, "identify", queries, "--index", index_dir, "-o", tmp_path / "p.tsv", "--model", tmp_path)
    assert code == 2 and "was built with the model" in err
    code, _, err = run(capsys, "identify", "--reference", reference, "--save-index", queries, "--model", tiny_encoder)
    assert code == 2 and "is not a reference index folder" in err
    assert files_in(tmp_path) == ["index", "q.fasta", "reference.tsv"]


def test_calibrated_threshold_separates_same_and_other_species():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    embeddings = np.repeat(centres, 5, axis=0) + 0.05 * rng.normal(size=(20, 16))
    species = [f"s{i // 5}" for i in range(20)]
    threshold, details = calibrate_threshold(embeddings, species)
    assert details["balanced_accuracy"] == 1.0
    assert details["novel_median"] < threshold < details["known_median"]


def test_calibration_needs_two_species_and_a_repeated_one():
    with pytest.raises(ValueError, match="--novel-threshold"):
        calibrate_threshold(np.eye(3), ["a", "a", "a"])
    with pytest.raises(ValueError, match="--novel-threshold"):
        calibrate_threshold(np.eye(3), ["a", "b", "c"])


def test_index_is_refused_when_its_model_folder_now_holds_other_weights(tmp_path, capsys, split_records):
    import torch
    from transformers import AutoModel

    model = export_tiny_encoder(tmp_path / "encoder")
    reference = write_tsv(split_records["reference"][:8], tmp_path / "reference.tsv")
    index_dir = tmp_path / "index"
    code, _, err = run(capsys, "identify", "--reference", reference, "--save-index", index_dir, "--model", model)
    assert code == 0, err
    assert len(ReferenceIndex.load(index_dir).model_fingerprint) == 16
    queries = write_fasta(split_records["known"][:2], tmp_path / "q.fasta")
    assert run(capsys, "identify", queries, "--index", index_dir, "-o", tmp_path / "ok.tsv")[0] == 0
    retrained = AutoModel.from_pretrained(model, trust_remote_code=True)
    with torch.no_grad():
        retrained.token_embeddings.weight.mul_(1.5)
    retrained.save_pretrained(model)  # the same folder, re-shipped with new weights
    code, _, err = run(capsys, "identify", queries, "--index", index_dir, "-o", tmp_path / "stale.tsv")
    assert code == 2 and "other weights or config" in err and not (tmp_path / "stale.tsv").exists()


def test_approximate_search_is_saved_and_agrees_with_exact(tmp_path, capsys, tiny_encoder, split_records):
    reference = write_tsv(split_records["reference"], tmp_path / "reference.tsv")
    queries = write_fasta(split_records["queries"], tmp_path / "queries.fasta")
    common = ["--model", tiny_encoder, "--top-k", 2]
    code, _, err = run(capsys, "identify", queries, "--reference", reference, "-o", tmp_path / "exact.tsv", *common)
    assert code == 0 and "search: exact" in err  # auto: a small reference is searched exactly
    args = ["identify", queries, "--reference", reference, "-o", tmp_path / "ann.tsv", "--search", "ann"]
    code, _, err = run(capsys, *args, "--save-index", tmp_path / "index", *common)
    assert code == 0 and "search: ann" in err, err
    assert (tmp_path / "index" / INDEX_ANN).is_file() and ReferenceIndex.load(tmp_path / "index").search == "ann"
    exact, ann = read_predictions(tmp_path / "exact.tsv"), read_predictions(tmp_path / "ann.tsv")
    assert [r["query_id"] for r in ann] == [r["query_id"] for r in exact]
    for a, e in zip(ann, exact):  # the same best neighbour, or one exactly as similar
        assert float(a["cosine_similarity"]) == pytest.approx(float(e["cosine_similarity"]), abs=1e-5)
    loaded = ["identify", queries, "--index", tmp_path / "index", "--top-k", 2]
    code, _, err = run(capsys, *loaded, "-o", tmp_path / "again.tsv")
    assert code == 0 and "search: ann" in err  # a loaded index searches as it was saved, unless --search says
    assert read_predictions(tmp_path / "again.tsv") == ann
    code, _, err = run(capsys, *loaded, "-o", tmp_path / "x.tsv", "--search", "exact")
    assert code == 0 and "search: exact" in err


def test_rerank_align_adds_identity_columns(tmp_path, capsys, tiny_encoder, split_records):
    reference = write_tsv(split_records["reference"], tmp_path / "reference.tsv")
    queries = write_fasta(split_records["queries"], tmp_path / "queries.fasta")
    index_dir, out = tmp_path / "index", tmp_path / "reranked.tsv"
    assert run(capsys, "identify", "--reference", reference, "--save-index", index_dir, "--model", tiny_encoder)[0] == 0
    args = ["identify", queries, "--index", index_dir, "-o", out, "--quiet", "--top-k", 2, "--rerank", "align"]
    code, _, err = run(capsys, *args, "--candidates", 6)
    assert code == 0, err
    rows = read_predictions(out)
    assert list(rows[0])[13:16] == ["cosine_similarity", "alignment_identity", "novel_species"]
    names = ("id", "order", "family", "genus", "species", "bin", "cosine_similarity", "alignment_identity")
    assert list(rows[0])[-8:] == [f"neighbor_2_{c}" for c in names]
    by_id = {row["query_id"]: row for row in rows}
    assert float(by_id["COPY"]["alignment_identity"]) == 1.0
    for record in split_records["known"]:  # the own species still comes first, now by alignment
        row = by_id[record["processid"]]
        assert row["predicted_species"] == record["species"] and row["novel_species"] == "false"
        assert float(row["neighbor_1_alignment_identity"]) >= float(row["neighbor_2_alignment_identity"])
    (index_dir / INDEX_SEQUENCES).unlink()  # an index written before the barcodes were kept
    code, _, err = run(capsys, *args)
    assert code == 2 and "rebuild it" in err


def test_genus_thresholds_and_small_reference_warning():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    spread = np.repeat([0.05, 0.05, 0.05, 0.3, 0.3, 0.3], 12)[:, None]  # genus B's species are looser
    embeddings = np.repeat(centres, 12, axis=0) + spread * rng.normal(size=(72, 16))
    species = [f"s{i // 12}" for i in range(72)]
    genus = ["A" if i < 36 else "B" for i in range(72)]
    threshold, details = calibrate_threshold(embeddings, species, genus)
    assert set(details["genus_thresholds"]) == {"A", "B"}
    assert details["genus_thresholds"]["B"] < details["genus_thresholds"]["A"]
    assert "6 species" in details["warning"] and "--novel-threshold" in details["warning"]
    index = ReferenceIndex(embeddings, [""] * 72, {"genus": genus, "species": species}, "m", threshold, details)
    assert index.threshold_for("B") == details["genus_thresholds"]["B"] and index.threshold_for("C") == threshold
    index.set_threshold(0.5)
    assert index.threshold_for("B") == 0.5


def test_quick_start_flags_exactly_the_species_absent_from_the_reference(tmp_path, capsys):
    examples = Path(__file__).resolve().parents[1] / "examples"
    out = tmp_path / "identified.tsv"
    code, _, err = run(
        capsys, "identify", examples / "queries.fasta", "--reference", examples / "reference.tsv", "-o", out, "--quiet"
    )
    assert code == 0, err
    assert "warning: the novel-species threshold was calibrated on a small reference (34 species" in err
    reference_species = {line.split("\t")[7] for line in (examples / "reference.tsv").read_text().splitlines()[1:]}
    truth = {
        line[1:].split("|")[0]: line.split("|")[1] not in reference_species
        for line in (examples / "queries.fasta").read_text().splitlines()
        if line.startswith(">") and "|" in line
    }
    flagged = {row["query_id"]: row["assigned_rank"] != "species" for row in read_predictions(out)}
    assert flagged == truth and sum(truth.values()) == 2


def test_sintax_output_and_every_reference_format_give_the_same_answers(tmp_path, capsys, tiny_encoder, split_records):
    reference = split_records["reference"]
    bioscan = write_tsv(reference, tmp_path / "reference.tsv")
    sintax = tmp_path / "reference.fasta"
    sintax.write_text(
        "".join(
            f">{r['processid']};tax=k:Animalia,p:{r['phylum']},c:{r['class']},o:{r['order']},f:{r['family']},"
            f"g:{r['genus']},s:{r['species'].replace(' ', '_')};\n{r['dna_barcode']}\n"
            for r in reference
        )
    )
    queries = write_fasta(split_records["queries"], tmp_path / "queries.fasta")
    common = ["--model", tiny_encoder, "--quiet", "--top-k", 2]
    answers = {}
    for name, path in (("bioscan", bioscan), ("sintax", sintax)):
        out = tmp_path / f"{name}.tsv"
        code, _, err = run(capsys, "identify", queries, "--reference", path, "-o", out, *common)
        assert code == 0, err
        answers[name] = [(r["query_id"], r["predicted_genus"], r["predicted_species"]) for r in read_predictions(out)]
    assert answers["sintax"] == answers["bioscan"] and len(answers["bioscan"]) == len(split_records["queries"])

    out = tmp_path / "answers.sintax"
    code, _, err = run(capsys, "identify", queries, "--reference", sintax, "-o", out, "--format", "sintax", *common)
    assert code == 0, err
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert [line[0] for line in lines] == [r["processid"] for r in split_records["queries"]]
    known = dict(zip((r["processid"] for r in split_records["known"]), split_records["known"]))
    for query_id, full, strand, kept in lines:
        assert full.startswith("k:Animalia(") and strand == "+"
        assert [taxon.split("(")[0] for taxon in full.split(",")][: len(kept.split(","))] == kept.split(",")
        if query_id in known:  # a known species: its species in both columns
            species = "s:" + known[query_id]["species"].replace(" ", "_")
            assert f",{species}(" in full and kept.endswith(species)


def test_index_labels_are_stored_as_codes_and_read_back_as_the_labels(tmp_path):
    from safetensors.numpy import load_file, save_file

    from barcodemae.assign import LabelColumn, Taxonomy

    genus = ["Aedes", "", "Culex", "Aedes", "Zeus"]
    labels = {"genus": genus, "species": ["Aedes vexans", "", "Culex pipiens", "Aedes aegypti", ""]}
    embeddings = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    index = ReferenceIndex(embeddings, [f"r{i}" for i in range(5)], labels, model="m", threshold=0.5)
    index.save(tmp_path / "index")
    loaded = ReferenceIndex.load(tmp_path / "index")
    assert isinstance(loaded.labels["genus"], LabelColumn) and loaded.genus == genus and list(loaded.genus) == genus
    assert loaded.genus[2] == "Culex" and loaded.genus[1:3] == ["", "Culex"] and len(loaded.genus) == 5
    for level in ("genus", "species", "family"):
        np.testing.assert_array_equal(loaded.taxonomy.codes[level], Taxonomy(labels, 5).codes[level])
        assert loaded.taxonomy.names[level].tolist() == Taxonomy(labels, 5).names[level].tolist()
    tensors = load_file(str(tmp_path / "index" / INDEX_EMBEDDINGS))
    tensors["labels.genus"] = np.array([0, 1, 2, 3, 9], dtype=np.int32)  # 9: no such name
    save_file(tensors, str(tmp_path / "index" / INDEX_EMBEDDINGS))
    with pytest.raises(ValueError, match="the genus labels do not match the 5 rows; rebuild it"):
        ReferenceIndex.load(tmp_path / "index")
