"""The open-set protocol, its IDTAXA-style scoring, the SINTAX / BOLD-cut baselines and the reader of identify's
open-set columns (simulated data and hand-written fixtures only)."""

from __future__ import annotations

import json
import shutil

import pytest

from barcodemae import baselines
from barcodemae.baselines import (
    ToolNotFound,
    bold_rank,
    lineage_down_to,
    parse_sintax_line,
    sintax_header,
    vsearch_sintax,
    vsearch_top_hits,
)
from barcodemae.data import read_barcodes
from barcodemae.openset import (
    GROUPS,
    Query,
    build_openset,
    depth_diagnosis,
    outcome,
    per_species_correct,
    read_ranked_predictions,
    score_answers,
    sweep_cutoffs,
    write_openset,
)
from barcodemae.simulate import BIOSCAN_COLUMNS, write_tsv

needs_vsearch = pytest.mark.skipif(
    shutil.which("vsearch") is None, reason="vsearch not installed (apt-get install vsearch)"
)
LINE = (
    "q1\tk:Animalia(1.00),p:Arthropoda(1.00),o:Diptera(0.98),f:Culicidae(0.91),g:Aedes(0.55),s:Aedes_vexans(0.40)"
    "\t+\tk:Animalia,p:Arthropoda,o:Diptera,f:Culicidae"
)


# ------------------------------------------------------------------------------------------- protocol
def test_protocol_holds_out_half_the_unseen_genera_and_groups_queries(records):
    split = build_openset(records, seed=0)
    unseen = [r for r in records if r["split"] == "val_unseen"]
    unseen_genera = {r["genus"] for r in unseen}
    held = set(split.held_out_genera)
    assert held < unseen_genera and len(held) == len(unseen_genera) // 2
    train = [r for r in records if r["split"] == "train"]
    kept = [r for r in train if r["genus"] not in held]
    assert build_openset(records, seed=0, deduplicate=False).reference == kept  # every other train row, as it was
    assert all(r in kept for r in split.reference)  # de-duplicated: repeated barcode + lineage kept once
    assert len(kept) - len(split.reference) == split.counts.get("train_duplicates_removed", 0)
    assert len({(r["dna_barcode"], r["species"]) for r in kept}) == len(split.reference)
    reference_species = {r["species"] for r in split.reference}
    record_of = {r["processid"]: r for r in records}
    groups = {group: [record_of[q.query_id] for q in split.queries if q.group == group] for group in GROUPS}
    assert groups["novel_genus"] and groups["novel_species"] and groups["known_species"]
    assert {r["split"] for r in groups["novel_genus"] + groups["novel_species"]} == {"val_unseen"}
    assert {r["genus"] for r in groups["novel_genus"]} == held
    assert {r["genus"] for r in groups["novel_species"]} == unseen_genera - held
    assert {r["split"] for r in groups["known_species"]} == {"val"}
    assert {r["species"] for r in groups["known_species"]} <= reference_species
    left_out = [r for r in records if r["split"] == "val" and r["genus"] in held]
    assert left_out and split.counts["val_rows_of_held_out_genera"] == len(left_out)
    assert not {r["processid"] for r in left_out} & {q.query_id for q in split.queries}
    assert all(q.excluded is None for q in split.queries)  # every held-out genus has a sister genus in its family


def test_protocol_uses_no_val_unseen_label_in_the_reference(records):
    split = build_openset(records, seed=0)
    unseen = [r for r in records if r["split"] == "val_unseen"]
    assert not {r["species"] for r in unseen} & {r["species"] for r in split.reference}
    assert not {r["processid"] for r in unseen} & {r["processid"] for r in split.reference}
    relabelled = [
        {**r, "species": f"Renamed {i}", "family": "Renamedidae", "order": "Renamedoptera"}
        if r["split"] == "val_unseen"
        else r
        for i, r in enumerate(records)
    ]
    assert build_openset(relabelled, seed=0).reference == split.reference


def test_protocol_is_seeded(records):
    assert build_openset(records, seed=0).held_out_genera == build_openset(records, seed=0).held_out_genera
    assert any(
        build_openset(records, seed=s).held_out_genera != build_openset(records).held_out_genera for s in (1, 2, 3)
    )


def test_protocol_excludes_queries_whose_target_cannot_be_scored(records):
    held = build_openset(records, seed=0).held_out_genera
    family_of = {r["genus"]: r["family"] for r in records}
    unlabelled = [
        {**r, "family": ""} if r["split"] == "val_unseen" and r["genus"] == held[0] else r for r in records
    ]  # a held-out genus without family labels: its queries lack their target rank
    alone = [
        {**r, "family": "Lonelyidae"} if r["genus"] == held[1] else r for r in unlabelled
    ]  # a held-out genus alone in its family: no family can be right
    split = build_openset(alone, seed=0)
    excluded = {q.query_id: q.excluded for q in split.queries if q.excluded}
    expected_ids = {r["processid"] for r in records if r["split"] == "val_unseen" and r["genus"] in held[:2]}
    assert set(excluded) == expected_ids
    assert set(excluded.values()) == {"truth lacks its family", "its family is absent from the reference"}
    assert family_of[held[0]]  # the fixture had the label
    assert split.summary()["scored_queries"]["novel_genus"] == sum(
        r["split"] == "val_unseen" and r["genus"] in held[2:] for r in records
    )


def test_protocol_files(tmp_path, records):
    split = build_openset(records, seed=0)
    paths = write_openset(split, tmp_path / "work")
    header = paths["reference"].read_text().splitlines()[0].split("\t")
    assert header == list(BIOSCAN_COLUMNS)
    reference, _ = read_barcodes(paths["reference"])
    assert [r.record_id for r in reference] == [r["processid"] for r in split.reference]
    assert reference[0].metadata["genus"] == split.reference[0]["genus"]
    fasta = paths["queries"].read_text().splitlines()
    assert fasta[0::2] == [f">{q.query_id}" for q in split.queries]  # ids only: no label in the headers
    assert fasta[1::2] == [q.sequence for q in split.queries]
    truth = [line.split("\t") for line in paths["truth"].read_text().splitlines()]
    assert truth[0] == ["query_id", "group", "order", "family", "genus", "species", "excluded"]
    assert [row[:2] for row in truth[1:]] == [[q.query_id, q.group] for q in split.queries]


def test_protocol_refuses_query_ids_a_fasta_cannot_carry(records):
    for index, record in enumerate(records):
        if record["split"] == "val_unseen":
            records[index] = {**record, "processid": "bad id"}
            break
    with pytest.raises(ValueError, match="'bad id'"):
        build_openset(records)


# ------------------------------------------------------------------------------------------- scoring
TRUTH = {"order": "Diptera", "family": "Culicidae", "genus": "Aedes", "species": "Aedes vexans"}
ORDER, FAMILY, GENUS = (dict(list(TRUTH.items())[:n]) for n in (1, 2, 3))


@pytest.mark.parametrize(
    ("target", "answer", "expected"),
    [
        ("species", TRUTH, "correct"),
        ("species", {**GENUS, "species": "Aedes cinereus"}, "misclassification"),
        ("species", {**ORDER, "family": "Chironomidae"}, "misclassification"),
        ("species", GENUS, "under_classification"),
        ("species", {}, "under_classification"),
        ("genus", GENUS, "correct"),
        ("genus", TRUTH, "over_classification"),
        ("genus", {**GENUS, "species": "Aedes cinereus"}, "over_classification"),  # any species is over
        ("genus", {**FAMILY, "genus": "Culex", "species": "Culex pipiens"}, "misclassification"),
        ("genus", FAMILY, "under_classification"),
        ("family", FAMILY, "correct"),
        ("family", GENUS, "over_classification"),
        ("family", TRUTH, "over_classification"),
        ("family", {**ORDER, "family": "Chironomidae", "genus": "Diamesa"}, "misclassification"),
        ("family", {"order": "Lepidoptera"}, "misclassification"),
        ("family", ORDER, "under_classification"),
        ("family", {"family": "Culicidae"}, "correct"),  # a reference without orders: the family alone
    ],
)
def test_outcome(target, answer, expected):
    assert outcome(answer, TRUTH, target) == expected


def test_outcome_skips_ranks_the_truth_lacks():
    assert outcome(GENUS, {**TRUTH, "order": None}, "genus") == "correct"
    assert outcome({**GENUS, "order": "Anything"}, {**TRUTH, "order": None}, "genus") == "correct"


def _query(query_id: str, group: str, species: str, excluded: str | None = None) -> Query:
    genus = species.split()[0]
    truth = {"order": "Diptera", "family": "Culicidae", "genus": genus, "species": species}
    return Query(query_id, group, "ACGT", truth, excluded)


def test_scores_average_over_species_then_groups():
    queries = [_query(f"a{i}", "novel_species", "Aedes vexans") for i in range(3)]
    queries += [_query("b0", "novel_species", "Culex pipiens")]
    queries += [_query("k0", "known_species", "Aedes cinereus"), _query("k1", "known_species", "Culex torrentium")]
    queries += [_query("g0", "novel_genus", "Culiseta annulata")]
    queries += [_query("x0", "novel_genus", "Anopheles claviger", excluded="truth lacks its family")]
    answers = {f"a{i}": {k: v for k, v in TRUTH.items() if k != "species"} for i in range(3)}  # right: genus only
    answers["b0"] = {"order": "Diptera", "family": "Culicidae", "genus": "Culex", "species": "Culex restuans"}  # over
    answers["k0"] = {"order": "Diptera", "family": "Culicidae", "genus": "Aedes", "species": "Aedes cinereus"}
    answers["g0"] = {"order": "Diptera", "family": "Culicidae"}  # k1 has no answer: under-classified
    result = score_answers(answers, queries, seed=0)
    novel = result["groups"]["novel_species"]
    assert novel["correct"]["per_species"] == 50.0 and novel["correct"]["micro"] == 75.0
    assert novel["over_classification"]["per_species"] == 50.0 and novel["over_classification"]["micro"] == 25.0
    assert novel["correct"]["n_species"] == 2 and novel["correct"]["n_queries"] == 4
    low, high = novel["correct"]["per_species_interval"]
    assert 0.0 <= low <= 50.0 <= high <= 100.0
    known = result["groups"]["known_species"]
    assert known["correct"]["per_species"] == 50.0 and known["under_classification"]["per_species"] == 50.0
    assert known["without_answer"] == 1
    genus = result["groups"]["novel_genus"]
    assert genus["correct"]["per_species"] == 100.0 and genus["correct"]["n_queries"] == 1
    assert genus["excluded"] == {"truth lacks its family": 1}
    assert result["mean_per_species_correct"] == pytest.approx((50 + 50 + 100) / 3, abs=0.01)
    for group in GROUPS:  # the four outcomes partition each group
        assert sum(
            result["groups"][group][name]["micro"]
            for name in ("correct", "over_classification", "misclassification", "under_classification")
        ) == pytest.approx(100.0)
    assert per_species_correct(answers, queries) == {
        "known_species": 50.0,
        "novel_species": 50.0,
        "novel_genus": 100.0,
        "mean": pytest.approx(66.67, abs=0.01),
    }


def test_mean_is_none_when_a_group_is_empty():
    queries = [_query("a0", "novel_species", "Aedes vexans")]
    result = score_answers({"a0": GENUS}, queries)
    assert result["mean_per_species_correct"] is None
    assert "correct" not in result["groups"]["known_species"]


# ------------------------------------------------------------------------------------------- baselines
def test_sintax_line_parser():
    prediction = parse_sintax_line(LINE)
    assert prediction.query == "q1" and prediction.strand == "+"
    assert prediction.ranks["genus"] == ("Aedes", 0.55) and prediction.ranks["species"] == ("Aedes_vexans", 0.40)
    assert prediction.ranks["kingdom"] == ("Animalia", 1.0) and "class" not in prediction.ranks
    assert prediction.above_cutoff == {
        "kingdom": "Animalia",
        "phylum": "Arthropoda",
        "order": "Diptera",
        "family": "Culicidae",
    }
    assert prediction.committed(0.8) == {"order": "Diptera", "family": "Culicidae"}
    assert prediction.committed(0.55) == {"order": "Diptera", "family": "Culicidae", "genus": "Aedes"}
    assert prediction.committed(0.4)["species"] == "Aedes_vexans"
    assert prediction.committed(0.99) == {}
    empty = parse_sintax_line("q2\t\t\t")
    assert empty.ranks == {} and empty.committed(0.0) == {}
    with pytest.raises(ValueError, match="unreadable"):
        parse_sintax_line("q3\to:Diptera\t+\t")


def test_sintax_header():
    lineage = {
        "phylum": "Arthropoda",
        "class": "",
        "order": "Diptera",
        "family": None,
        "genus": "Aedes",
        "species": "Aedes sp. BOLD,A;B",
    }
    assert sintax_header("r0", lineage) == "r0;tax=p:Arthropoda,o:Diptera,g:Aedes,s:Aedes_sp._BOLD_A_B;"


@pytest.mark.parametrize(
    ("identity", "rank"),
    [
        (100.0, "species"),
        (97.0, "species"),
        (96.9, "genus"),
        (95.0, "genus"),
        (94.99, "family"),
        (90.0, "family"),
        (89.9, "order"),
        (85.0, "order"),
        (84.9, None),
        (None, None),
    ],
)
def test_bold_cuts(identity, rank):
    assert bold_rank(identity) == rank


def test_lineage_down_to():
    lineage = {"phylum": "Arthropoda", "order": "", "family": "Culicidae", "genus": "Aedes", "species": "Aedes vexans"}
    assert lineage_down_to(lineage, "genus") == {"family": "Culicidae", "genus": "Aedes"}
    assert lineage_down_to(lineage, None) == {}


def test_open_set_baselines_need_vsearch(monkeypatch):
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    with pytest.raises(ToolNotFound):
        vsearch_sintax(["ACGT"], ["ACGT"], [{"genus": "A"}])
    with pytest.raises(ToolNotFound):
        vsearch_top_hits(["ACGT"], ["ACGT"])


@needs_vsearch
def test_sintax_and_top_hit_end_to_end(records):
    split = build_openset(records, seed=0)
    lineages = [
        {rank: r[rank] for rank in ("phylum", "class", "order", "family", "genus", "species")} for r in split.reference
    ]
    sequences = [q.sequence for q in split.queries]
    predictions = vsearch_sintax(sequences, [r["dna_barcode"] for r in split.reference], lineages, threads=1)
    assert len(predictions) == len(split.queries) and all(p is not None for p in predictions)
    reference_species = {r["species"] for r in split.reference}
    for query, prediction in zip(split.queries, predictions):
        if not prediction.ranks:  # SINTAX predicts nothing for a query too far from every reference
            assert query.group == "novel_genus" and prediction.committed(0.0) == {}
            continue
        confidences = [prediction.ranks[rank][1] for rank in ("order", "family", "genus", "species")]
        assert confidences == sorted(confidences, reverse=True) and 0 <= confidences[-1] <= 1
        assert prediction.ranks["species"][0] in reference_species  # names translated back ("Genus epithet")
        if query.group == "known_species":
            assert prediction.committed(0.0)["species"] == query.truth["species"]
        if query.group == "novel_species":
            assert prediction.ranks["genus"][0] == query.truth["genus"]
    hits = vsearch_top_hits(sequences, [r["dna_barcode"] for r in split.reference], threads=1, max_accepts=10)
    for query, (target, identity) in zip(split.queries, hits):
        if query.group == "known_species":
            assert split.reference[target]["species"] == query.truth["species"] and bold_rank(identity) == "species"


# ------------------------------------------------------------------------------------------- identify's columns
RANKED = (
    "query_id\tassigned_rank\tpredicted_order\tpredicted_family\tpredicted_genus\tpredicted_species\t"
    "order_confidence\tfamily_confidence\tgenus_confidence\tspecies_confidence\tnovel_species\n"
    "q1\tgenus\tDiptera\tCulicidae\tAedes\tAedes vexans\t0.99\t0.9\t0.6\t0.3\ttrue\n"
    "q2\t\tDiptera\tCulicidae\tAedes\tAedes vexans\t0.2\t0.1\t0.1\t0.05\ttrue\n"
    "q3\tspecies\tDiptera\tCulicidae\tCulex\tCulex pipiens\t1\t1\t0.97\t0.97\tfalse\n"
    "q4\torder\tDiptera\t\t\t\t0.7\t0\t0\t0\ttrue\n"
)


def test_ranked_predictions_reader(write_text):
    ranked = read_ranked_predictions(write_text("ours.tsv", RANKED))
    assert ranked["q1"].committed() == {"order": "Diptera", "family": "Culicidae", "genus": "Aedes"}
    assert ranked["q2"].committed() == {}
    assert ranked["q3"].committed()["species"] == "Culex pipiens"
    assert ranked["q4"].committed() == {"order": "Diptera"}
    assert ranked["q1"].at_cutoff(0.3)["species"] == "Aedes vexans"
    assert ranked["q1"].at_cutoff(0.95) == {"order": "Diptera"}
    assert ranked["q2"].at_cutoff(0.0)["species"] == "Aedes vexans"
    assert ranked["q4"].at_cutoff(0.0) == {"order": "Diptera"}  # no guess below the order: nothing deeper
    assert ranked["q3"].at_cutoff(1.01) == {}
    per_rank = {"order": 0.05, "family": 0.05, "genus": 0.3, "species": 0.5}
    assert ranked["q1"].at_cutoff(per_rank) == ranked["q1"].committed()
    assert ranked["q1"].at_cutoff({**per_rank, "species": 0.3})["species"] == "Aedes vexans"


def test_ranked_predictions_reader_refuses_bad_files(write_text):
    with pytest.raises(ValueError, match="no open-set columns assigned_rank"):
        read_ranked_predictions(write_text("old.tsv", "query_id\tpredicted_genus\nq1\tAedes\n"))
    header = RANKED.splitlines()[0]
    with pytest.raises(ValueError, match="line 2, query 'q1'.*in \\[0, 1\\]"):
        read_ranked_predictions(write_text("bad.tsv", f"{header}\nq1\tgenus\tD\tC\tA\tA v\t1.2\t0.9\t0.6\t0.3\tx\n"))
    with pytest.raises(ValueError, match="assigned_rank 'kingdom'"):
        read_ranked_predictions(write_text("bad2.tsv", f"{header}\nq1\tkingdom\tD\tC\tA\tA v\t1\t0.9\t0.6\t0.3\tx\n"))


def _ranked_queries() -> list[Query]:
    """The truth of RANKED's q1 (novel species), q3 (known species) and q4 (novel genus)."""
    return [
        Query(
            "q1",
            "novel_species",
            "ACGT",
            {"order": "Diptera", "family": "Culicidae", "genus": "Aedes", "species": "Aedes rempeli"},
        ),
        Query(
            "q3",
            "known_species",
            "ACGT",
            {"order": "Diptera", "family": "Culicidae", "genus": "Culex", "species": "Culex pipiens"},
        ),
        Query(
            "q4",
            "novel_genus",
            "ACGT",
            {"order": "Diptera", "family": "Psychodidae", "genus": "Psychoda", "species": "Psychoda alternata"},
        ),
    ]


def test_cutoff_sweep_finds_the_best_cutoff(write_text):
    ranked = read_ranked_predictions(write_text("ours.tsv", RANKED))
    queries = _ranked_queries()
    sweep = sweep_cutoffs(lambda c: {q: a.at_cutoff(c) for q, a in ranked.items()}, queries, [0.0, 0.5, 0.95])
    means = [point["mean"] for point in sweep["points"]]
    assert means == [
        pytest.approx(100 / 3, abs=0.01),
        pytest.approx(200 / 3, abs=0.01),
        pytest.approx(100 / 3, abs=0.01),
    ]
    assert sweep["best_cutoff"] == 0.5
    per_rank = [{"species": 0.2, "genus": 0.5}, {"species": 0.5, "genus": 0.5}, {"species": 0.5, "genus": 0.7}]
    sweep = sweep_cutoffs(lambda c: {q: a.at_cutoff(c) for q, a in ranked.items()}, queries, per_rank)
    assert [point["mean"] for point in sweep["points"]] == [
        pytest.approx(100 / 3, abs=0.01),  # q1 commits to a species: over-classified
        pytest.approx(200 / 3, abs=0.01),
        pytest.approx(100 / 3, abs=0.01),  # q1 stops at the family
    ]
    assert sweep["best_cutoff"] == {"order": 0.05, "family": 0.05, "genus": 0.5, "species": 0.5}


def test_depth_diagnosis(write_text):
    ranked = read_ranked_predictions(write_text("ours.tsv", RANKED))
    diagnosis = depth_diagnosis(ranked, _ranked_queries())
    # stopped at the target: q1's genus and q3's species are right; q4 predicts no family
    assert diagnosis["ceiling"] == {
        "known_species": 100.0,
        "novel_species": 100.0,
        "novel_genus": 0.0,
        "mean": pytest.approx(66.67, abs=0.01),
    }
    assert diagnosis["separation"] == {
        "species confidence: known vs novel species": 1.0,
        "genus confidence: novel species vs novel genus": 1.0,
    }


# ------------------------------------------------------------------------------------------- driver
@needs_vsearch
def test_driver_writes_the_report_and_skips_a_failing_method(tmp_path, records, monkeypatch):
    from benchmarks import openset as bench

    def fail(*args, **kwargs):
        raise RuntimeError("identify exited 2: no open-set columns")

    monkeypatch.setattr(bench, "run_ours", fail)
    data = write_tsv(records, tmp_path / "data.tsv")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--work", str(tmp_path / "work")]
    payload = bench.main([*argv, "--methods", "ours,sintax,bold,tophit"])
    written = json.loads((out / "openset.json").read_text())
    assert written["results"]["ours"] == {"error": "RuntimeError: identify exited 2: no open-set columns"}
    assert set(written["results"]) == {"ours", "sintax", "bold", "tophit"}
    rows = {name for method in payload["results"].values() for name in method.get("rows", {})}
    assert {
        "SINTAX, cut-off 0.8",
        "vsearch top hit + BOLD cuts (97/95/90/85%)",
        "vsearch top hit, always species",
    } <= rows
    assert written["protocol"]["held_out_genera"] == 3 and len(written["protocol"]["held_out_genus_names"]) == 3
    top_hit = written["results"]["tophit"]["rows"]["vsearch top hit, always species"]
    assert top_hit["groups"]["known_species"]["correct"]["per_species"] == 100.0
    assert top_hit["groups"]["novel_genus"]["over_classification"]["per_species"] == 100.0
    report = (out / "openset.md").read_text()
    assert "SINTAX, cut-off 0.8" in report and "identify exited 2" in report and written["command"] in report
    assert (tmp_path / "work" / "queries.fasta").exists()
