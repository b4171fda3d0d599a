"""`barcodemae evaluate` end to end on a small simulated BIOSCAN-style file: JSON, Markdown table, both PNGs."""

import json

from cli_helpers import export_tiny_encoder

from barcodemae.cli import main
from barcodemae.simulate import simulate_barcodes, with_splits, write_tsv


def test_evaluate_writes_results_table_and_plots(tmp_path):
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    model = export_tiny_encoder(tmp_path / "tiny-encoder")
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(model), "--data", str(data), "--output", str(out), "--baselines", "kmer"])
    assert code == 0
    summary = json.loads((out / "results.json").read_text())
    row = summary["results"]["tiny-encoder"]
    for key in ("species_linear_probe_accuracy", "species_linear_probe_macro_f1", "genus_1nn_unseen_accuracy"):
        assert 0 <= row[key] <= 100
    assert row["harmonic_mean"] <= max(row["species_linear_probe_accuracy"], row["genus_1nn_unseen_accuracy"])
    assert -1 <= row["bin_ami"] <= 1 and -1 <= row["species_ami"] <= 1
    assert set(row["robustness"]) == {"masking", "deletion"}
    assert {"k-mer 4 counts", "k-mer 5 counts", "k-mer 6 counts"} <= set(summary["results"])
    table = (out / "results.md").read_text()
    assert "tiny-encoder" in table and "genus" in table.lower()
    assert (out / "robustness.png").stat().st_size > 0 and (out / "tsne.png").stat().st_size > 0


def test_evaluate_caps_partitions_for_a_compute_budget(tmp_path):
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    model = export_tiny_encoder(tmp_path / "tiny-encoder")
    out = tmp_path / "eval"
    caps = ["--max-seen-rows", "20", "--max-unseen-rows", "15", "--robustness-queries", "0", "--no-plots"]
    code = main(["evaluate", "--model", str(model), "--data", str(data), "--output", str(out), *caps])
    assert code == 0
    row = json.loads((out / "results.json").read_text())["results"]["tiny-encoder"]
    assert (row["n_train"], row["n_test"], row["n_unseen"]) == (20, 20, 15)
