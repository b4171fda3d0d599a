"""Taxonomy-aware fine-tuning: class-balanced batches, offsets, losses, the leak guard, objectives over several ranks,
partitions held out of tables without any, `barcodemae finetune`."""

import json
import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_config

from barcodemae import simulate
from barcodemae.cli import main as cli_main
from barcodemae.evaluation.metrics import identification_score
from barcodemae.evaluation.protocol import hold_out
from barcodemae.training import (
    IGNORE_INDEX,
    ClassBalancedBatchSampler,
    FinetuneArguments,
    Objective,
    TaxonomyCollator,
    check_arguments,
    coarser_rank_losses,
    probe_sets,
    regroup_learning_rate,
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


def _simulated_tree() -> list[dict]:
    """16 genera of 4 species, 4 genera a family. Species as far apart as 10% of sites (genera 6%): k-mer similarity
    alone names the genus of an unseen species poorly, genus-diagnostic k-mers can be learned."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(simulate.DIVERGENCE, "species", 0.10)
        return simulate.simulate_barcodes(genera_per_family=4, species_per_genus=4, specimens_per_species=6)


@pytest.fixture(scope="module")
def finetune_inputs(tmp_path_factory):
    """The simulated table with BIOSCAN-5M partitions, and a tiny encoder."""
    folder = tmp_path_factory.mktemp("finetune")
    records = simulate.with_splits(_simulated_tree(), seed=0)
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


def test_objectives_name_ranks_from_coarse_to_fine_ending_in_genus_or_species():
    assert Objective.parse("genus") == Objective(("genus",), classify=True, supcon=False)
    assert Objective.parse("supcon") == Objective(("genus",), classify=False, supcon=True)
    assert Objective.parse("genus+supcon") == Objective(("genus",), classify=True, supcon=True)
    assert Objective.parse("order+family+genus").ranks == ("order", "family", "genus")
    for wrong in ("order", "genus+family", "family+family+genus", "supcon+genus", "family+genus+tribe", ""):
        with pytest.raises(ValueError, match="objective"):
            Objective.parse(wrong)


def test_coarser_rank_losses_leave_out_rows_without_that_rank():
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.dropout = torch.nn.Identity()
    model.rank_classifiers = torch.nn.ModuleDict({"order": torch.nn.Linear(4, 2), "family": torch.nn.Linear(4, 3)})
    embeddings = torch.randn(5, 4)
    labels = torch.tensor([[0, 2], [1, IGNORE_INDEX], [1, 0], [0, IGNORE_INDEX], [1, 1]])
    order, family = coarser_rank_losses(model, embeddings, labels)
    labelled = labels[:, 1] != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(
        model.rank_classifiers["family"](embeddings[labelled]), labels[labelled, 1]
    )
    torch.testing.assert_close(family, expected)
    assert order > 0
    labels[:, 0] = IGNORE_INDEX
    assert len(coarser_rank_losses(model, embeddings, labels)) == 1  # no row of the batch has an order: no term


def test_holding_out_species_and_genera_is_seeded_and_keeps_every_genus_and_family_seen():
    records = _simulated_tree()
    held, holdout = hold_out(records, genus_fraction=0.1, seed=3)
    assert hold_out(records, 0.1, seed=3)[1] == holdout and hold_out(records, 0.1, seed=4)[1] != holdout
    assert len(holdout["novel_genera"]) == 2  # round(10% of 16)
    for split in ("val_unseen", "test_unseen"):
        assert holdout[f"{split}_species"] == sorted({r["species"] for r in held if r["split"] == split})
    seen = [r for r in held if r["split"] == "train"]
    assert not {r["species"] for r in seen} & {*holdout["val_unseen_species"], *holdout["test_unseen_species"]}
    assert not {r["genus"] for r in seen} & set(holdout["novel_genera"])
    families = {r["family"] for r in records}
    assert {r["family"] for r in seen} == families and len({r["genus"] for r in seen}) == 14
    assert {r["split"] for r in held if r["genus"] in holdout["novel_genera"]} == {"novel_genus"}


@pytest.fixture(scope="module")
def unpartitioned_table(tmp_path_factory):
    """The simulated table without a split column, family labels blank on one genus's rows."""
    records = [{**r, "family": "" if r["genus"] == "Babaus" else r["family"]} for r in _simulated_tree()]
    return simulate.write_tsv(records, tmp_path_factory.mktemp("lab") / "library.tsv", split_column=False)


def test_finetune_on_a_table_without_partitions_holds_out_species_and_genera(
    tmp_path, finetune_inputs, unpartitioned_table
):
    from transformers import AutoConfig

    _, model = finetune_inputs
    info = _finetune(unpartitioned_table, model, tmp_path / "run", "--max_steps", "2", "--objective", "species")
    holdout = info["holdout"]
    assert holdout["seed"] == 42 and len(holdout["novel_genera"]) == 2 and holdout["val_unseen_species"]
    trained = set(AutoConfig.from_pretrained(tmp_path / "run", trust_remote_code=True).id2label.values())
    held_out = {*holdout["val_unseen_species"], *holdout["test_unseen_species"]}
    assert trained and not trained & held_out
    assert not {species.split()[0] for species in trained} & set(holdout["novel_genera"])
    assert len(trained) + len(held_out) + 4 * len(holdout["novel_genera"]) == 64  # every other species trains
    assert "eval_novel_genus_family_1nn_per_genus" in info["final_eval"]
    record = (tmp_path / "run" / "encoder" / "TRAINING.md").read_text()
    assert f"{len(holdout['val_unseen_species'])} species as `val_unseen`" in record
    assert "2 genera whole as `novel_genus`" in record


def test_finetune_refuses_a_table_lacking_a_partition_it_needs(tmp_path, finetune_inputs, capsys):
    _, model = finetune_inputs
    records = [
        {**r, "split": "test_unseen" if r["split"] == "val_unseen" else r["split"]}
        for r in simulate.with_splits(_simulated_tree())
    ]
    data = simulate.write_tsv(records, tmp_path / "no-val-unseen.tsv")
    argv = ["finetune", "--data", str(data), "--model", str(model), "--output_dir", str(tmp_path / "x")]
    assert cli_main([*argv, "--use_cpu", "true"]) == 2
    error = capsys.readouterr().err
    assert "no `val_unseen` rows" in error and "Without split values" in error and not (tmp_path / "x").exists()


def test_family_and_genus_objective_trains_a_head_per_rank(tmp_path, finetune_inputs, unpartitioned_table):
    from safetensors.torch import load_file
    from transformers import AutoModel

    _, model = finetune_inputs
    info = _finetune(unpartitioned_table, model, tmp_path / "run", "--max_steps", "2", "--objective", "family+genus")
    assert info["labels"] == "4 family labels and 14 genus labels" and math.isfinite(info["train_loss"])
    genus = _finetune(unpartitioned_table, model, tmp_path / "genus", "--max_steps", "2", "--objective", "genus")
    assert info["train_loss"] > genus["train_loss"] + 0.5  # the family head's cross-entropy adds to the genus one
    encoder = AutoModel.from_pretrained(tmp_path / "run" / "encoder", trust_remote_code=True)
    assert type(encoder).__name__ == "BarcodeMAEModel" and len(encoder.config.rank_labels["family"]) == 4
    assert "Babaus" in encoder.config.id2label.values()  # its rows lack a family: they train the genus head only
    assert "4 family labels and 14 genus labels" in (tmp_path / "run" / "encoder" / "TRAINING.md").read_text()
    assert "4 family labels and 14 genus labels" in (tmp_path / "run" / "encoder" / "README.md").read_text()
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert weights["rank_classifiers.family.weight"].shape[0] == 4 and weights["classifier.weight"].shape[0] == 14
    assert not any(
        name.startswith("rank_classifiers") for name in load_file(tmp_path / "run" / "encoder" / "model.safetensors")
    )


def test_probe_references_take_their_family_from_train_rows_only():
    records = simulate.with_splits(_simulated_tree(), seed=0)
    unseen_genera = {r["genus"] for r in records if r["split"] == "val_unseen"}
    for record in records:  # the genera of unseen species lose their family in train: only val_unseen still has it
        if record["split"] != "val_unseen" and record["genus"] in unseen_genera:
            record["family"] = ""
    args = FinetuneArguments(data=["x.tsv"], probe_references=10_000)
    references, _, _ = probe_sets(records, args, seed=0)
    families = dict(zip(references["genus"], references["family"]))
    assert unseen_genera <= set(families)
    assert all(families[genus] in ("", None) for genus in unseen_genera)


def test_regrouping_gives_the_chosen_parameters_their_own_learning_rate():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    decay = [model[0].weight, model[1].weight]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0}],
        lr=1e-3,
    )
    regroup_learning_rate(optimizer, {id(p) for p in model[0].parameters()}, 1e-5)
    groups = [(g["lr"], g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in optimizer.param_groups]
    assert groups == [
        (1e-5, 0.1, [(3, 3)]),
        (1e-3, 0.1, [(2, 3)]),
        (1e-5, 0.0, [(3,)]),
        (1e-3, 0.0, [(2,)]),
    ]


def test_final_evaluation_reuses_the_last_steps_probe(tmp_path, finetune_inputs):
    data, model = finetune_inputs
    extra = ["--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "4", "--encoder_learning_rate", "1e-5"]
    info = _finetune(data, model, tmp_path / "run", *extra)
    assert [entry["step"] for entry in info["eval_history"]] == [4]  # evaluated once, not again at the end
    assert info["final_eval"]["eval_genus_1nn_per_species"] == info["eval_history"][0]["eval_genus_1nn_per_species"]
