"""Taxonomy-aware fine-tuning: class-balanced batches, offsets, losses, the leak guard, `barcodemae finetune`."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_config

from barcodemae import simulate
from barcodemae.cli import main as cli_main
from barcodemae.evaluation import identification_score
from barcodemae.training import (
    ClassBalancedBatchSampler,
    FinetuneArguments,
    TaxonomyCollator,
    check_arguments,
    supervised_contrastive_loss,
)
from modeling_barcodemae import BarcodeMAEModel
from tokenization_barcodemae import BarcodeMAETokenizer


def test_class_balanced_batches_hold_c_labels_times_p_rows():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 50])
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=4, samples_per_class=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 12
    for batch in batches:
        counts = np.unique(labels[batch], return_counts=True)[1]
        assert len(counts) == 4 and (counts == 3).all()
    again = ClassBalancedBatchSampler(labels, 4, 3, seed=0)
    assert list(again) == batches  # the same seed and epoch draw the same batches
    assert list(again) != batches  # the next pass draws new ones
    sampler.set_epoch(0)
    assert list(sampler) == batches
    with pytest.raises(ValueError, match="exceeds"):
        ClassBalancedBatchSampler(labels, classes_per_batch=11, samples_per_class=2)


def test_collator_reads_random_offsets_and_crops_seeded_by_rows():
    tokenizer = BarcodeMAETokenizer(k_mer=4, model_max_length=50)
    sequence = "ACGTTGCAAGCTAGCTAGGATCCATGCAAGTCGATCGATCGGATCAGTTAGCATCGATTACGGATCGATTTACGGC"
    frames = {tuple(tokenizer(sequence[offset:])["input_ids"]) for offset in range(4)}
    features = [{"dna_barcode": sequence, "labels": 1, "row": row} for row in range(12)]
    batch = TaxonomyCollator(tokenizer, seed=0)(features)
    seen = {tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])}
    assert seen <= frames and len(seen) > 1
    assert torch.equal(TaxonomyCollator(tokenizer, seed=0)(features)["input_ids"], batch["input_ids"])
    assert batch["labels"].tolist() == [1] * 12
    cropped = TaxonomyCollator(tokenizer, min_crop_fraction=0.5, seed=0)(features)
    lengths = cropped["attention_mask"].sum(1)
    assert lengths.min() >= len(sequence) // 2 // 4 - 1 and lengths.max() < batch["attention_mask"].sum(1).max()


def test_supervised_contrastive_loss_matches_its_definition_and_rewards_clusters():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    z = torch.nn.functional.normalize(embeddings, dim=1)
    similarity = z @ z.T / 0.5
    expected = []
    for i in range(4):
        others = [j for j in range(4) if j != i]
        log_denominator = torch.logsumexp(similarity[i, others], dim=0)
        positive = [j for j in others if labels[j] == labels[i]]
        expected.append(-(similarity[i, positive] - log_denominator).mean())
    loss = supervised_contrastive_loss(embeddings, labels, temperature=0.5)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert loss < supervised_contrastive_loss(embeddings, torch.tensor([0, 1, 0, 1]), temperature=0.5)


@pytest.mark.parametrize("splits", [["val_unseen"], ["train", "test_unseen"], ["pretrain"], ["test"]])
def test_labels_of_unseen_or_unlabelled_partitions_are_refused(splits):
    with pytest.raises(ValueError, match="refused"):
        check_arguments(FinetuneArguments(data=["x.tsv"], label_splits=splits))
    with pytest.raises(ValueError, match="objective"):
        check_arguments(FinetuneArguments(data=["x.tsv"], objective="order"))


def test_identification_score_per_species_and_micro():
    truth = ["G1"] * 8 + ["G2", "G3"]
    species = ["a"] * 8 + ["b", "c"]
    predicted = ["G1"] * 8 + ["G1", None]  # the big species right, both small ones wrong
    score = identification_score(predicted, truth, species, resamples=200)
    assert (score.micro, score.per_species) == (80.0, 33.33)
    assert (score.n_queries, score.n_species) == (10, 3)
    assert score.per_species_interval[0] <= 33.33 <= score.per_species_interval[1]
    assert score.micro_interval[0] <= 80.0 <= score.micro_interval[1]
    assert "per species 33.33" in str(score)


@pytest.fixture(scope="module")
def finetune_inputs(tmp_path_factory):
    """Species as far apart as 10% of sites (genera 6%): k-mer similarity alone names the genus of an unseen
    species poorly, genus-diagnostic k-mers can be learned."""
    folder = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(simulate.DIVERGENCE, "species", 0.10)
        tree = simulate.simulate_barcodes(genera_per_family=4, species_per_genus=4, specimens_per_species=6)
    records = simulate.with_splits(tree, seed=0)
    data = simulate.write_tsv(records, folder / "barcodes.tsv")
    torch.manual_seed(0)
    config = tiny_config(max_length=660)
    BarcodeMAEModel(config).save_pretrained(folder / "encoder")
    BarcodeMAETokenizer(k_mer=4, model_max_length=config.max_position_embeddings).save_pretrained(folder / "encoder")
    return data, folder / "encoder"


def _finetune(data, model, output_dir, *extra) -> dict:
    argv = ["finetune", "--data", str(data), "--model", str(model), "--output_dir", str(output_dir)]
    argv += ["--classes_per_batch", "8", "--samples_per_class", "2", "--use_cpu", "true", "--report_to", "none"]
    assert cli_main([*argv, *extra]) == 0
    return json.loads((output_dir / "run_info.json").read_text())


def test_finetune_end_to_end_writes_a_loadable_encoder_named_by_its_labels(tmp_path, finetune_inputs):
    from transformers import AutoModel, AutoModelForSequenceClassification

    data, model = finetune_inputs
    info = _finetune(data, model, tmp_path / "run", "--max_steps", "4", "--readout", "mean+kmer_bag")
    assert info["global_step"] == 4 and info["label_splits"] == ["train"]
    assert "genus_1nn_per_species" in " ".join(info["final_eval"])
    encoder = AutoModel.from_pretrained(tmp_path / "run" / "encoder", trust_remote_code=True)
    assert type(encoder).__name__ == "BarcodeMAEModel" and encoder.config.readout == "mean+kmer_bag"
    card = (tmp_path / "run" / "encoder" / "README.md").read_text()
    assert "genus labels" in card and "`train`" in card and "seen species only" in card
    assert "How this encoder was trained" in (tmp_path / "run" / "encoder" / "TRAINING.md").read_text()
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run", trust_remote_code=True)
    assert classifier.config.num_labels == len(classifier.config.id2label) > 8
    assert classifier.config.classifier_type == "cosine"


def test_finetune_refuses_unseen_labels_with_an_error_line(tmp_path, finetune_inputs, capsys):
    data, model = finetune_inputs
    argv = ["finetune", "--data", str(data), "--model", str(model), "--output_dir", str(tmp_path / "x")]
    assert cli_main([*argv, "--label_splits", "train", "val_unseen"]) == 2
    assert "refused" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_genus_finetuning_of_the_kmer_bag_lifts_unseen_species_genus_1nn(tmp_path, finetune_inputs):
    data, model = finetune_inputs
    common = ["--readout", "kmer_bag", "--seed", "0", "--disable_tqdm", "true"]
    before = _finetune(data, model, tmp_path / "before", "--max_steps", "1", "--learning_rate", "1e-9", *common)
    after = _finetune(data, model, tmp_path / "after", "--max_steps", "60", "--learning_rate", "0.05", *common)
    initial = before["final_eval"]["eval_genus_1nn_per_species"]
    assert initial < 60  # measured: 33.5 at initialisation, 87.5 after 60 steps
    assert after["final_eval"]["eval_genus_1nn_per_species"] >= initial + 25


def test_finetune_reports_a_missing_data_file_in_one_line(tmp_path, finetune_inputs, capsys):
    _, model = finetune_inputs
    argv = ["finetune", "--data", str(tmp_path / "absent.tsv"), "--model", str(model), "--output_dir", str(tmp_path)]
    assert cli_main([*argv, "--use_cpu", "true"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("barcodemae finetune: error:") and "absent.tsv" in error


def test_export_turns_a_finetune_checkpoint_into_an_encoder_folder(tmp_path, finetune_inputs):
    from transformers import AutoModel

    data, model = finetune_inputs
    info = _finetune(data, model, tmp_path / "run", "--max_steps", "2", "--save_steps", "2", "--readout", "kmer_bag")
    checkpoint = str(tmp_path / "run" / "checkpoint-2")
    again = _finetune(data, model, tmp_path / "run", "--max_steps", "2", "--resume_from_checkpoint", checkpoint)
    assert again == info and not (tmp_path / "run" / "checkpoint-3").exists()  # a finished run trains nothing more
    assert cli_main(["export", checkpoint, str(tmp_path / "exported")]) == 0
    encoder = AutoModel.from_pretrained(tmp_path / "exported", trust_remote_code=True)
    assert type(encoder).__name__ == "BarcodeMAEModel" and encoder.config.readout == "kmer_bag"
    assert "barcodemae finetune" in (tmp_path / "exported" / "README.md").read_text()
