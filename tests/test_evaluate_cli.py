"""`barcodemae evaluate` end to end on a small simulated BIOSCAN-style file: JSON, Markdown table, both PNGs."""

import json

import pytest
from cli_helpers import export_tiny_encoder

from barcodemae.cli import main
from barcodemae.simulate import simulate_barcodes, with_splits, write_tsv


def test_evaluate_writes_results_table_and_plots(tmp_path, monkeypatch, capsys):
    """No --model: the default encoder ($BARCODEMAE_MODEL here); every partition whole, intervals, the time."""
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    monkeypatch.setenv("BARCODEMAE_MODEL", str(export_tiny_encoder(tmp_path / "tiny-encoder")))
    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(data), "--output", str(out), "--baselines", "kmer", "--no-cache"])
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
    caps = ["--max-seen-rows", "20", "--max-unseen-rows", "15", "--robustness-queries", "0", "--no-plots", "--no-cache"]
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
    options = ["--robustness-queries", "10", "--no-plots", "--no-cache"]
    assert main(["evaluate", "--model", str(folder), "--data", str(data), "--output", str(out), *options]) == 0
    row = json.loads((out / "results.json").read_text())["results"]["bert-encoder"]
    assert 0 <= row["genus_1nn_unseen_per_species"] <= 100 and 0 <= row["species_linear_probe_accuracy"] <= 100
    assert row["genus_1nn_unseen_per_species_interval"][0] <= row["genus_1nn_unseen_per_species"]


SMALL = ["--max-seen-rows", "40", "--max-unseen-rows", "20", "--robustness-queries", "8", "--no-plots"]


def test_evaluate_caches_embeddings_so_a_rerun_with_other_baselines_embeds_nothing(tmp_path, monkeypatch):
    from barcodemae.embedding import Embedder

    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    model, cache = export_tiny_encoder(tmp_path / "tiny-encoder"), tmp_path / "cache"
    argv = ["evaluate", "--model", str(model), "--data", str(data), "--cache-dir", str(cache), *SMALL]
    assert main([*argv, "--output", str(tmp_path / "first")]) == 0
    # train, test, unseen, and each corrupted query set: 5 rates of masking and 5 of deletion
    assert len(list(cache.glob("*.npy"))) == 3 + 10
    monkeypatch.setattr(Embedder, "__call__", lambda *a, **k: pytest.fail("re-embedded a cached set"))
    assert main([*argv, "--output", str(tmp_path / "again"), "--baselines", "kmer"]) == 0
    first, again = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("first", "again"))
    for key in ("genus_1nn_unseen_accuracy", "species_linear_probe_accuracy", "species_ami", "robustness"):
        assert again["results"]["tiny-encoder"][key] == first["results"]["tiny-encoder"][key]
    assert "k-mer 4 counts" in again["results"] and again["embedding_cache"] == str(cache)
    with pytest.raises(pytest.fail.Exception, match="re-embedded"):
        main([*argv, "--output", str(tmp_path / "fresh"), "--no-cache"])


def test_evaluate_scores_a_finetuned_species_classifier_beside_the_linear_probe(tmp_path):
    """A `barcodemae finetune --objective species` folder as --model: its encoder runs the protocol and its own
    predictions give the fine-tune column, on the rows the probe scores (test rows of train species)."""
    import numpy as np
    import torch
    from tiny_models import tiny_config
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from barcodemae.evaluation.protocol import load_records, prepare_protocol
    from modeling_barcodemae import BarcodeMAEModel
    from tokenization_barcodemae import BarcodeMAETokenizer

    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=4, species_per_genus=4, seed=2))
    data = write_tsv(records, tmp_path / "sim.tsv")
    torch.manual_seed(0)
    config = tiny_config(max_length=660)
    BarcodeMAEModel(config).save_pretrained(tmp_path / "encoder")
    BarcodeMAETokenizer(k_mer=4, model_max_length=config.max_position_embeddings).save_pretrained(tmp_path / "encoder")
    finetune = ["finetune", "--data", str(data), "--model", str(tmp_path / "encoder"), "--objective", "species"]
    finetune += ["--output_dir", str(tmp_path / "species-ft"), "--max_steps", "20", "--learning_rate", "0.05"]
    finetune += ["--classes_per_batch", "8", "--samples_per_class", "2", "--use_cpu", "true", "--report_to", "none"]
    assert main(finetune) == 0
    run = ["evaluate", "--data", str(data), "--output", str(tmp_path / "eval"), "--no-cache", *SMALL]
    assert main([*run, "--model", str(tmp_path / "species-ft"), "--model", str(tmp_path / "encoder")]) == 0
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())
    row, plain = summary["results"]["species-ft"], summary["results"]["encoder"]
    protocol = prepare_protocol(load_records(data)[0], seed=0)
    protocol.train, protocol.test = protocol.train.subsample(40, 0), protocol.test.subsample(40, 0)
    seen = [i for i, s in enumerate(protocol.test.species) if s in set(protocol.train.species) - {None}]
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "species-ft", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "species-ft", trust_remote_code=True)
    batch = tokenizer([protocol.test.sequences[i] for i in seen], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        predicted = classifier(**batch).logits.argmax(-1).tolist()
    names = [classifier.config.id2label[i] for i in predicted]
    expected = 100 * np.mean([name == protocol.test.species[i] for name, i in zip(names, seen)])
    assert row["species_finetune_accuracy"] == pytest.approx(expected, abs=0.01)
    low, high = row["species_finetune_accuracy_interval"]
    assert low <= row["species_finetune_accuracy"] <= high
    assert row["species_linear_probe_accuracy"] is not None and "species_finetune_accuracy" not in plain
    assert f"| species-ft | {row['species_finetune_accuracy']:.2f} [" in (tmp_path / "eval" / "results.md").read_text()
