"""Smoke runs of the benchmark scripts at tiny sizes: they run and write JSON with the expected keys.

No timing is asserted (speed is measured by the scripts themselves, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import allocator, data_path, embed, identify, pretrain_step

COMMON = ["--tiny", "--threads", "1", "--repeats", "1", "--warmup", "1"]


def run(module, tmp_path, *extra: str) -> dict:
    output = tmp_path / "result.json"
    returned = module.main([*COMMON, "--output", str(output), *extra])
    written = json.loads(output.read_text())
    assert written.keys() == returned.keys()
    assert {"settings", "machine"} <= written.keys()
    assert {"cpu", "torch", "torch_threads", "load_average_at_start", "load_average_at_end"} <= written[
        "machine"
    ].keys()
    assert written["machine"]["torch_threads"] == 1
    return written


def test_pretrain_step(tmp_path):
    result = run(pretrain_step, tmp_path, "--profile", "--profile-top", "3")
    small = result["small"]
    cases = {"mae@0.5", "mlm@0.5", "mae@0.75", "mlm@0.75", "preset-mae@0.5", "big-decoder-mae@0.5"}
    assert set(small["cases"]) == cases
    for case in [*small["cases"].values(), *result["paper"]["cases"].values()]:
        assert {"per_s", "median_s", "peak_step_mb", "params_and_adam_state_mb", "achieved_tflops"} <= case.keys()
        assert case["per_s"] > 0 and case["achieved_tflops"] > 0 and case["mfu"] is None  # no MFU on CPU
    assert set(small["ratios"]) == {"mae/mlm@0.5", "mae/mlm@0.75", "preset-mae/mlm@0.5", "big-decoder-mae/mlm@0.5"}
    assert set(small["flop_ratios"]) == set(small["ratios"])
    assert small["flop_ratios"]["mae/mlm@0.75"] > small["flop_ratios"]["mae/mlm@0.5"] > 0  # fewer encoder tokens
    assert set(result["paper"]["ratios"]) == {"ours_mae/reference_mae", "ours_mae/ours_mlm"}
    assert small["padding"]["mae@0.5"]["encoder_input_shape"][1] < small["padding"]["mae@0.5"]["batch_full_length"]
    for profile in result["profile"].values():
        assert len(profile["top_ops"]) == 3
        assert set(profile["phases_ms"]) == {"forward", "backward", "optimizer"}


def test_pretrain_step_precision_ratio(tmp_path):
    small = run(pretrain_step, tmp_path, "--skip-paper", "--precision-ratio")["small"]
    assert {"mlm@0.5 bf16", "preset-mae@0.5 bf16"} <= small["cases"].keys()
    assert {"mlm@0.5 bf16/fp32", "preset-mae@0.5 bf16/fp32"} <= small["ratios"].keys()


def test_data_path(tmp_path):
    result = run(data_path, tmp_path, "--num-proc", "1")
    assert result["rows"] == 3000 and result["cleaning"]["n_kept"] == 3000
    assert all(stage["seconds"] > 0 for stage in result["stages"].values())
    assert result["kmer_ids_arrow_mb"] > 0 and result["ratio"]["ratio_of_medians"] > 0


def test_embed(tmp_path):
    result = run(embed, tmp_path)
    assert {"inputs", "cases", "ratios", "tokenizer", "padding_invariance_checks"} <= result.keys()
    batchings = {(case["model"], case["batching"]) for case in result["cases"].values()}
    assert {("BertModel", "input order"), ("BertModel", "length-sorted")} <= batchings
    assert all(value < 1e-4 for value in result["padding_invariance_checks"].values())
    assert any("frame readout" in name for name in result["ratios"])
    assert result["tokenizer"]["ratio_fast/plain"] > 0 and result["tokenizer"]["ratio_encode_barcodes/batch_call"] > 0
    assert result["ratios"]


def split_table(tmp_path) -> Path:
    """A tiny table with a split column: 2 genera x 3 species x 4 specimens; species 3 of each genus unseen, one
    specimen of the others in val."""
    from barcodemae.simulate import simulate_barcodes, write_tsv

    records = simulate_barcodes(1, 1, 2, 3, 4, seed=1)
    for i, record in enumerate(records):
        record["split"] = "val_unseen" if i % 12 >= 8 else "val" if i % 4 == 3 else "train"
    return write_tsv(records, tmp_path / "barcodes.tsv")


@pytest.mark.skipif(shutil.which("vsearch") is None, reason="vsearch not installed")
def test_identify(tmp_path):
    result = run(identify, tmp_path)
    assert {"model", "data", "reference_index", "cases", "ratios", "genus_calls"} <= result.keys()
    assert result["data"]["queries"] > 0
    assert 0.0 <= result["genus_calls"]["agreement_ours_vs_vsearch"] <= 1.0


def test_search(tmp_path):
    from benchmarks import search

    result = run(search, tmp_path, "--ef", "8", "--ann-probes", "2")
    assert result["cases"]["exact (CosineIndex)"]["recall@1"] == 1.0
    assert result["cases"]["exact, float32 pass only"]["recall@1"] == 1.0  # the bf16 first pass changes nothing
    assert {"faiss HNSWFlat ef=8", "faiss IVFFlat nprobe=8", "AnnIndex probes=2"} <= result["cases"].keys()
    only = run(search, tmp_path, "--libraries", "AnnIndex", "--ann-probes", "2")
    exact = {"exact (CosineIndex)", "exact, float32 pass only", "exact (FlatIndex: faiss IndexFlatIP)"}
    assert set(only["cases"]) == exact | {"barcodemae AnnIndex (defaults)", "AnnIndex probes=2"}
    assert all(0.0 <= case["recall@1"] <= 1.0 and case["queries_per_s"] > 0 for case in result["cases"].values())


def test_search_sizes(tmp_path):
    from benchmarks import search

    result = run(search, tmp_path, "--sizes", "1", "--k", "3", "--ann-probes", "2")
    assert [point["references"] for point in result["points"]] == [300, 1000]
    for point in result["points"]:
        assert point["exact queries/s"] > 0 and 0 <= point["ann probes=2 recall@1"] <= 1
    assert "suggested_ann_min_references" in result


@pytest.mark.skipif(shutil.which("vsearch") is None, reason="vsearch not installed")
def test_identify_scale(tmp_path):
    result = run(identify, tmp_path, "--scale", "1", "--plot", str(tmp_path / "scale.png"))
    assert [point["references"] for point in result["points"]] == [300, 600]
    assert all(point["ours/vsearch"] > 0 and 0 <= point["ann_recall_at_1"] <= 1 for point in result["points"])
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("vsearch") is None, reason="vsearch not installed")
def test_identify_real_data_mode(tmp_path):
    from barcodemae.simulate import simulate_barcodes, write_tsv

    records = simulate_barcodes(1, 1, 2, 3, 4, seed=1)
    for i, record in enumerate(records):
        record["split"] = "test_unseen" if i % 12 >= 8 else "test" if i % 4 == 3 else "train"
    records.append({**records[0], "processid": "COPY"})  # a train barcode twice
    result = run(identify, tmp_path, "--data", str(write_tsv(records, tmp_path / "barcodes.tsv")), "--warmup", "0")
    distinct = result["data"]["distinct_references"]
    assert result["data"]["references"] == 13 and distinct < 13 and result["data"]["queries"] == 12
    assert result["reference_index"]["distinct_barcodes"] == distinct and result["reference_index"]["rows"] == 13
    assert set(result["cases"]) == {identify.OURS, identify.VSEARCH}
    for score in result["accuracy"].values():
        assert score["queries_without_an_answer"] == 0
        assert score["scored"] == {"unseen_genus": 8, "test_species": 4}
    assert result["accuracy"][identify.VSEARCH]["test_species"]["micro"] == 100.0  # near-identical specimens
    assert result["steady_state"]["per_s"] > 0 and result["startup"]["ratio_to_import_torch"] > 0
    assert all(peak > 0 for peak in result["peak_rss_mb"].values())
    assert len(result["targets"]) == 4


def test_identify_stages_mode(tmp_path):
    data = split_table(tmp_path)
    result = run(identify, tmp_path, "--data", str(data), "--stages")
    assert result["data"]["queries"] == 12 and result["reference_index_build_s"] > 0
    stages = result["stages"]
    per_query = [name for name, stage in stages.items() if "ms_per_query" in stage]
    assert len(stages) - len(per_query) == 3  # imports, model, index: fixed costs, no per-query figure
    assert {"embedding the queries", "exact cosine search, top 5"} < set(per_query)
    assert all(stage["median_s"] > 0 for stage in stages.values())
    assert stages["Python start and imports (a subprocess)"]["median_s"] > stages["embedding the queries"]["median_s"]


def test_allocator(tmp_path):
    result = run(allocator, tmp_path)
    cases = result["cases"]
    assert "glibc malloc" in cases and set(cases) | set(result["skipped"]) == {"glibc malloc", *allocator.LIBRARIES}
    assert cases["glibc malloc"]["speed_vs_glibc"] == 1.0 and cases["glibc malloc"]["rss_vs_glibc"] == 1.0
    for case in cases.values():
        assert case["median_step_s"] > 0 and 0 < case["rss_mb"] <= case["peak_mb"]
