"""`barcodemae evaluate` end to end on a small simulated BIOSCAN-style file: JSON, Markdown table, both PNGs."""

import json

from cli_helpers import export_tiny_encoder

from barcodemae.cli import main
from barcodemae.simulate import simulate_barcodes, with_splits, write_tsv


def test_evaluate_writes_results_table_and_plots(tmp_path, monkeypatch, capsys):
    """No --model: the default encoder ($BARCODEMAE_MODEL here); every partition whole, intervals, the time."""
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    monkeypatch.setenv("BARCODEMAE_MODEL", str(export_tiny_encoder(tmp_path / "tiny-encoder")))
    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(data), "--output", str(out), "--baselines", "kmer"])
    assert code == 0
    summary = json.loads((out / "results.json").read_text())
    row = summary["results"]["tiny-encoder"]
    for key in ("species_linear_probe_accuracy", "genus_1nn_unseen_accuracy", "species_1nn_test_accuracy"):
        low, high = row[f"{key}_interval"]
        assert 0 <= low <= row[key] <= high <= 100
    assert 0 <= row["species_linear_probe_macro_f1"] <= 100
    assert row["harmonic_mean"] <= max(row["species_linear_probe_accuracy"], row["genus_1nn_unseen_accuracy"])
    assert -1 <= row["bin_ami"] <= 1 and -1 <= row["species_ami"] <= 1
    assert set(row["robustness"]) == set(row["robustness_interval"]) == {"masking", "deletion"}
    assert {"k-mer 4 counts", "k-mer 5 counts", "k-mer 6 counts"} <= set(summary["results"])
    unique_train = len({r["dna_barcode"] for r in records if r["split"] == "train"})
    assert row["n_train"] == unique_train  # no subsampling by default
    assert set(summary["seconds"]["rows"]) == set(summary["results"]) and summary["seconds"]["total"] > 0
    assert "zero-shot clustering (UMAP, Ward)" in summary["seconds"]["rows"]["tiny-encoder"]
    table = (out / "results.md").read_text()
    assert "tiny-encoder" in table and "Time: " in table
    lo, hi = row["genus_1nn_unseen_accuracy_interval"]
    assert f"{row['genus_1nn_unseen_accuracy']:.2f} [{lo:.1f}, {hi:.1f}]" in table
    assert "tiny-encoder:" in capsys.readouterr().err  # a line per finished row beside the bar
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


def test_evaluate_takes_any_local_automodel_encoder_with_mean_pooling(tmp_path):
    """A random-init BertModel saved locally with a plain fast tokenizer (no remote code): the same harness."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from tokenization_barcodemae import BarcodeMAETokenizer

    k_mer = BarcodeMAETokenizer(k_mer=4, model_max_length=170)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=k_mer.backend_tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=170,
    )
    config = BertConfig(vocab_size=len(k_mer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    config.intermediate_size, config.max_position_embeddings = 64, 256
    torch.manual_seed(0)
    folder = tmp_path / "bert-encoder"
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    out = tmp_path / "eval"
    options = ["--robustness-queries", "10", "--no-plots"]
    assert main(["evaluate", "--model", str(folder), "--data", str(data), "--output", str(out), *options]) == 0
    row = json.loads((out / "results.json").read_text())["results"]["bert-encoder"]
    assert 0 <= row["genus_1nn_unseen_per_species"] <= 100 and 0 <= row["species_linear_probe_accuracy"] <= 100
    assert row["genus_1nn_unseen_per_species_interval"][0] <= row["genus_1nn_unseen_per_species"]
