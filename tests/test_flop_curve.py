"""scripts/flop_curve.py: which checkpoints are scored, the FLOPs each had, and the curve plot."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from partitions import unseen_queries

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from flop_curve import checkpoints, readouts_to_score, training_tflop  # noqa: E402

from barcodemae.plots import (  # noqa: E402
    EqualFlopsRun,
    flop_curve_legend,
    flop_curve_size,
    flop_curve_styles,
    plot_flop_curves,
)


def make_run(tmp_path: Path, steps: list[int], batch: int = 128) -> Path:
    run = tmp_path / "eqflop-0.25-mlm"
    for step in steps:
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    budget = {"recipe": "mlm", "tflop_per_step_at_batch_64": 0.156, "batch": batch}
    (run / "budget.json").write_text(json.dumps(budget))
    return run


def test_every_nth_checkpoint_in_step_order_and_always_the_last(tmp_path):
    run = make_run(tmp_path, [100, 200, 300, 400, 1000, 1100, 1200])
    assert [path.name for path in checkpoints(run, 3)] == ["checkpoint-300", "checkpoint-1100", "checkpoint-1200"]


def test_checkpoints_nearest_given_training_flops(tmp_path):
    run = make_run(tmp_path, [100, 200, 300, 400], batch=64)  # 15.6 TFLOP a checkpoint
    assert [path.name for path in checkpoints(run, 1, [30.0, 60.0, 61.0])] == ["checkpoint-200", "checkpoint-400"]


def test_training_flops_scale_with_steps_and_batch(tmp_path):
    run = make_run(tmp_path, [250], batch=128)
    assert abs(training_tflop(run / "checkpoint-250") - 250 * 0.156 * 2) < 1e-9


def test_flop_curve_plot(tmp_path):
    point = {"per_species": 60.0, "per_species_interval": [55.0, 65.0], "effective_rank": 90.0}
    runs = {
        "eqflop-0.25-mlm": {"100": {"training_tflop": 15.6, "mean": point}, "200": {"training_tflop": 31.2}},
        "eqflop-0.25-mlm-seed1": {"100": {"training_tflop": 15.6, "mean": point}},
    }
    path = plot_flop_curves(runs, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flop_curve_styles_follow_recipe_budget_and_seed():
    runs = ["eqflop-0.25-mlm", "eqflop-0.25-mlm-seed2", "eqflop-0.5-mlm", "eqflop-0.25-mae-light-vis", "twin"]
    styles = flop_curve_styles(runs)
    assert styles["eqflop-0.25-mlm"] == ("C0", "--", "o")  # the larger budget, 0.5, draws solid
    assert styles["eqflop-0.25-mlm-seed2"] == ("C0", "--", "s")
    assert styles["eqflop-0.5-mlm"] == ("C0", "-", "o")
    assert styles["eqflop-0.25-mae-light-vis"] == ("C1", "--", "o")
    assert styles["twin"] == ("C2", "-", "o")


def test_flop_curve_rows_and_legend():
    """The paper's size is drawn in a row of its own; the legend names each recipe, budget and marker once."""
    runs = ["eqflop-0.25-mlm", "eqflop-0.25-mlm-seed2", "eqflop-1-mlm", "eqflop-1-paper-mae-vis"]
    assert [flop_curve_size(run) for run in runs] == ["small size"] * 3 + ["paper's size"]
    labels = [handle.get_label() for handle in flop_curve_legend(runs, flop_curve_styles(runs))]
    assert labels == ["mlm", "paper-mae-vis", "0.25 PFLOP", "1 PFLOP", "seed 0", "other seeds"]


def test_equal_flops_run_names():
    assert EqualFlopsRun.parse("eqflop-0.25-mae-light-vis-seed12") == EqualFlopsRun("0.25", "mae-light-vis", 12)
    assert EqualFlopsRun.parse("eqflop-1-paper-mlm") == EqualFlopsRun("1", "paper-mlm", 0)
    assert EqualFlopsRun.parse("paper-size-random-init") is None


def test_paired_difference_against_the_mlm_at_matching_flops(tmp_path):
    """Each MAE point is compared with the same budget's MLM point nearest in FLOPs (within 10%), on the same
    queries, from the hits both stored (no checkpoint is read: here none exists): the MAE is right on one query
    more than the MLM."""
    import flop_curve

    mlm, mae = tmp_path / "eqflop-0.25-mlm", tmp_path / "eqflop-0.25-mae-light"
    for run, recipe in [(mlm, "mlm"), (mae, "mae-light")]:
        run.mkdir()
        (run / "budget.json").write_text(json.dumps({"recipe": recipe, "budget_pflop": 0.25}))
    species = ["s1", "s1", "s2", "s3"]
    mlm_hits, mae_hits = flop_curve.pack_hits([1, 0, 1, 0]), flop_curve.pack_hits([1, 1, 1, 0])
    results = {
        mlm.name: {
            "100": {"training_tflop": 15.6, "mean": {"hits": flop_curve.pack_hits([0, 0, 0, 0])}},
            "200": {"training_tflop": 31.2, "mean": {"hits": mlm_hits}},
        }
    }
    points = {
        "330": {"training_tflop": 31.3, "mean": {"hits": mae_hits}},
        "900": {"training_tflop": 90.0, "mean": {"hits": mae_hits}},
        "950": {"training_tflop": 31.0, "mean": {"per_species": 50.0}},  # scored before hits were kept
    }
    protocol = type("Protocol", (), {"unseen": type("Partition", (), {"species": species})})()
    flop_curve.paired_against_mlm(mae, points, results, "mean", protocol)
    assert points["330"]["mean"]["minus_mlm"]["mlm_step"] == 200
    assert points["330"]["mean"]["minus_mlm"]["micro"] == 25.0
    assert points["330"]["mean"]["minus_mlm"]["per_species"] == round(100 * 0.5 / 3, 2)
    assert "minus_mlm" not in points["900"]["mean"]  # no MLM point within 10% of its FLOPs
    assert "minus_mlm" not in points["950"]["mean"]


def test_hits_survive_packing_for_any_number_of_queries():
    from flop_curve import pack_hits, unpack_hits

    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 6078):
        correct = rng.integers(0, 2, n)
        assert np.array_equal(unpack_hits(pack_hits(correct), n), correct)


def test_query_fingerprint_follows_sequences_and_their_order():

    def sha256(sequences):
        return unseen_queries(sequences).sha256()

    assert sha256(["AC", "GT", "T", "A"]) == sha256(["AC", "GT", "T", "A"])
    assert sha256(["AC", "GT", "T", "A"]) != sha256(["GT", "AC", "T", "A"])
    assert sha256(["AC", "GT", "T", "A"]) != sha256(["ACG", "T", "T", "A"])


def test_each_run_is_paired_with_the_mlm_of_its_size_budget_and_seed_by_name_alone(tmp_path):
    """No folder is needed: a run whose folder is gone (trained and scored earlier) still finds its baseline."""
    from flop_curve import baseline_run

    for run, baseline in [
        ("eqflop-0.5-paper-mae", "eqflop-0.5-paper-mlm"),
        ("eqflop-0.5-paper-mae-vis", "eqflop-0.5-paper-mlm"),
        ("eqflop-0.5-mae-light-vis", "eqflop-0.5-mlm"),
        ("eqflop-0.25-mae-light-vis-seed1", "eqflop-0.25-mlm-seed1"),
        ("eqflop-0.0625-mlm-seed2", "eqflop-0.0625-mlm-seed2"),
    ]:
        assert baseline_run(tmp_path / run) == tmp_path / baseline
    with pytest.raises(ValueError, match="not a run"):
        baseline_run(tmp_path / "my-run")


def test_a_run_whose_checkpoints_are_gone_pairs_every_point_it_stored(tmp_path):
    from flop_curve import points_to_pair

    stored = {"100": {"training_tflop": 15.6}, "200": {"training_tflop": 31.2}, "300": {"training_tflop": 46.8}}
    assert points_to_pair(tmp_path / "eqflop-0.25-mlm", stored, 1000, None) == stored
    run = make_run(tmp_path, [100, 200, 300])
    assert list(points_to_pair(run, stored, 1000, None)) == ["300"]  # on disk: the checkpoints chosen
    assert list(points_to_pair(run, stored, 1, [15.0])) == ["100"]


def test_whitened_readout_uses_reference_statistics_only(monkeypatch):
    """``mean_whitened``: the references come out centred with identity covariance; the queries are mapped by the
    same transform (not whitened on their own statistics)."""
    import flop_curve

    rng = np.random.default_rng(0)
    refs = rng.normal(size=(500, 4)) @ np.diag([10.0, 1.0, 0.1, 3.0]) + 5.0
    queries = refs[:50] + 1.0
    parts = [type("Part", (), {"sequences": name}) for name in ("refs", "queries")]
    table = {"refs": refs, "queries": queries}
    monkeypatch.setattr(flop_curve, "readout_embeddings", lambda embedder, readout, sequences, cache: table[sequences])
    white_refs, white_queries = flop_curve.frozen_embeddings(None, "mean_whitened", parts, "unused")
    assert np.allclose(white_refs.mean(0), 0, atol=1e-4)
    assert np.allclose(np.cov(white_refs.T, bias=True), np.eye(4), atol=1e-3)
    assert np.allclose(white_queries, white_refs[:50] + (white_queries[0] - white_refs[0]), atol=1e-3)


def test_markdown_table_lists_every_point_with_its_paired_difference():
    from flop_curve import markdown_table

    score = {"per_species": 61.0, "per_species_interval": [55.0, 66.0], "micro": 50.0, "effective_rank": 90.0}
    paired = {"mlm_step": 1600, "per_species": -6.21, "per_species_interval": [-9.5, -3.0], "micro": -3.0}
    results = {
        "protocol": "val",
        "eqflop-0.25-mae-light": {"2640": {"training_tflop": 250.0, "kmer_bag": {**score, "minus_mlm": paired}}},
    }
    table = markdown_table(results).splitlines()
    assert len(table) == 3
    assert table[2].startswith("| 0.25-mae-light | 2640 | 250 | kmer_bag | 61.00 [55.0, 66.0] | 50.00 | 90.0 | – |")
    assert table[2].endswith("| -6.21 [-9.5, -3.0] |")
    results["eqflop-0.25-mae-light"]["2640"]["kmer_bag"]["precision"] = "bf16"
    assert "| 250 | kmer_bag (bf16) | 61.00" in markdown_table(results)


def test_only_readouts_not_yet_scored_are_scored_again():
    point = {
        "training_tflop": 1.0,
        "mean": {"per_species": 40.0, "hits": "AA=="},
        "kmer_bag": {"species_probe_val": {}, "hits": "AA=="},
    }
    assert readouts_to_score(point, ["mean", "kmer_bag", "mean_whitened"], False) == ["mean_whitened"]
    assert readouts_to_score(point, ["mean", "kmer_bag"], True) == ["mean"]
    assert readouts_to_score(point, ["kmer_bag"], True) == []
    del point["mean"]["hits"]  # scored before hits were kept: scored again, so that it can be paired
    assert readouts_to_score(point, ["mean", "kmer_bag"], False) == ["mean"]


def test_seed_table_pairs_each_seed_with_its_own_mlm_and_reports_the_spread_over_seeds():
    from flop_curve import seed_table

    def final(per_species, minus=None):
        point = {"per_species": per_species}
        if minus is not None:
            point["minus_mlm"] = {"per_species": minus, "per_species_interval": [minus - 4, minus + 4]}
        return {"900": {"training_tflop": 250.0, "mean": point}}

    results = {
        "queries_sha256": "x",
        "eqflop-0.25-mlm": final(40.0),
        "eqflop-0.25-mlm-seed1": final(42.0),
        "eqflop-0.25-mae-light-vis": final(45.0, 5.0),
        "eqflop-0.25-mae-light-vis-seed1": final(43.0, 1.0),
        "eqflop-0.5-mae-light-vis": final(47.0, 2.0),  # one seed: no spread to report
        "eqflop-0.0625-mlm": final(26.0),
        "eqflop-0.0625-mlm-seed1": final(30.0),
        "eqflop-0.0625-mae-light-vis": final(44.0),  # scored before pairing: the difference, no interval
        "eqflop-0.0625-mae-light-vis-seed1": final(45.0, 15.0),
    }
    results["eqflop-0.0625-mae-light-vis-seed1"]["900"]["mean"]["precision"] = "bf16"
    rows = seed_table(results, "mean").splitlines()[2:]
    assert rows[0] == "| 0.25 | mae-light-vis | 0 | 45.00 | 40.00 | +5.00 [+1.0, +9.0] |"
    assert rows[1] == "| 0.25 | mae-light-vis | 1 | 43.00 | 42.00 | +1.00 [-3.0, +5.0] |"
    assert rows[2] == "| 0.25 | mae-light-vis | mean ± SD of 2 | 44.00 ± 1.41 | 41.00 ± 1.41 | +3.00 ± 2.83 |"
    assert rows[3] == "| 0.0625 | mae-light-vis | 0 | 44.00 | 26.00 | +18.00 |"
    assert rows[4] == "| 0.0625 | mae-light-vis | 1 (bf16) | 45.00 | 30.00 | +15.00 [+11.0, +19.0] |"
    assert len(rows) == 6
    assert seed_table(results, "kmer_bag") == ""


def test_seed_table_pools_the_seeds_whose_points_stored_hits():
    from flop_curve import pack_hits, seed_table

    species = np.repeat(np.arange(20), 3)
    mlm = np.zeros(60)
    mae = np.zeros(60)
    mae[:30] = 1  # the first ten species right with every seed

    def final(hits):
        return {"900": {"training_tflop": 250.0, "mean": {"per_species": 100 * hits.mean(), "hits": pack_hits(hits)}}}

    results = {
        f"eqflop-0.25-{recipe}{suffix}": final(hits)
        for suffix in ("", "-seed1", "-seed2")
        for recipe, hits in (("mlm", mlm), ("mae-light-vis", mae))
    }
    del results["eqflop-0.25-mae-light-vis"]["900"]["mean"]["hits"]  # seed 0 scored before hits were kept
    rows = seed_table(results, "mean", species).splitlines()[2:]
    assert rows[3] == "| 0.25 | mae-light-vis | mean ± SD of 3 | 50.00 ± 0.00 | 0.00 ± 0.00 | +50.00 ± 0.00 |"
    assert rows[4].startswith("| 0.25 | mae-light-vis | pooled over seeds 1, 2 (seeds × species) | | | +50.00 [")
    assert rows[4].endswith(" SE |") and len(rows) == 5
    assert len(seed_table(results, "mean").splitlines()) == 6  # no species: no pooled row


def test_points_are_paired_with_a_stored_val_protocol_row(tmp_path):
    from flop_curve import pack_hits, paired_against_row
    from val_protocol import predictions_folder, store_predictions

    from barcodemae.evaluation.protocol import Protocol

    queries = unseen_queries(["ACGT", "ACGA", "TTGA", "TTGC"])  # genera A, A, B, B
    protocol = Protocol(train=queries, test=queries, unseen=queries, description="four queries")
    cache_dir = str(tmp_path / "embeddings")
    folder = predictions_folder(cache_dir, "val_unseen")
    folder.mkdir(parents=True)
    store_predictions(folder, "twin", ["A", "B", "B", "A"], queries)  # right on queries 0 and 2
    points = {"8": {"mean": {"hits": pack_hits([1, 1, 1, 1])}}, "4": {"kmer_bag": {"hits": pack_hits([0] * 4)}}}
    paired_against_row(tmp_path / "eqflop-1-mlm", points, "mean", "twin", protocol, cache_dir)
    difference = points["8"]["mean"]["minus_rows"]["twin"]
    assert difference["micro"] == 50.0
    assert difference["per_species"] == pytest.approx(100 * (0 + 1 + 0.5) / 3, abs=0.01)
    assert "minus_rows" not in points["4"]["kmer_bag"]  # another readout: left alone
    with pytest.raises(FileNotFoundError, match="'gone'"):
        paired_against_row(tmp_path / "eqflop-1-mlm", points, "mean", "gone", protocol, cache_dir)


def test_the_table_file_lists_seeds_for_every_scored_readout_whatever_this_call_scored():
    from flop_curve import scored_readouts

    results = {
        "queries_sha256": "x",
        "eqflop-0.25-mlm": {"1600": {"training_tflop": 250.0, "kmer_bag": {}, "mean_whitened": {}}},
        "eqflop-0.25-mae-light-vis": {"2352": {"training_tflop": 249.0, "mean": {}}},
    }
    assert scored_readouts(results) == ["mean", "kmer_bag", "mean_whitened"]


def test_the_table_file_lists_every_pairing_with_a_stored_row():
    from flop_curve import row_table

    twin = {"per_species": -5.08, "per_species_interval": [-8.6, -1.6], "micro": 1.5, "micro_interval": [0.4, 2.6]}
    results = {
        "queries_sha256": "x",
        "eqflop-1-paper-mlm": {"528": {"training_tflop": 1014.0, "mean": {"minus_rows": {"twin row": twin}}}},
        "eqflop-1-mlm": {"6400": {"training_tflop": 998.0, "mean": {}}},
    }
    rows = row_table(results).splitlines()
    assert rows[3:] == ["| 1-paper-mlm | 528 | 1014 | mean | `twin row` | -5.08 [-8.6, -1.6] | +1.50 [+0.4, +2.6] |"]
    del results["eqflop-1-paper-mlm"]
    assert row_table(results) == ""


def test_any_two_stored_points_are_paired_by_name():
    from flop_curve import pack_hits
    from paired_points import difference_rows

    queries = unseen_queries(["ACGT", "ACGA", "TTGA", "TTGC"])  # species a1, a2, b1, b1
    results = {
        "eqflop-1-mlm": {"8": {"mean": {"hits": pack_hits([1, 1, 1, 1])}}},
        "eqflop-0.5-mlm": {"4": {"mean": {"hits": pack_hits([1, 0, 1, 0])}}},
    }
    table = difference_rows(results, [("eqflop-1-mlm:8", "eqflop-0.5-mlm:4")], ["mean"], queries).splitlines()
    pair, readout, per_species, micro = (cell.strip() for cell in table[2].strip("|").split("|"))
    assert (pair, readout) == ("`eqflop-1-mlm:8` − `eqflop-0.5-mlm:4`", "mean")
    assert per_species.startswith("+50.00 [")  # species a1, a2, b1: (0 + 1 + 0.5) / 3
    assert micro.startswith("+50.00 [")  # 4 of 4 against 2 of 4
    with pytest.raises(SystemExit, match="eqflop-1-mlm:9: no stored hits for readout 'mean'"):
        difference_rows(results, [("eqflop-1-mlm:9", "eqflop-0.5-mlm:4")], ["mean"], queries)
