"""The `paper` preset is the authors' model: a transformers `BertModel` encoder (post-norm, embedding LayerNorm,
token type, learned positions), their MAE decoder, Bernoulli masking and loss mixing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from barcodemae.convert import authors_vocabulary, encoder_state, vocabulary_rows
from barcodemae.simulate import simulate_barcodes, with_splits, write_tsv
from configuration_barcodemae import BarcodeMAEConfig
from modeling_barcodemae import BarcodeMAEForPreTraining, BarcodeMAEModel, random_masking
from tokenization_barcodemae import BarcodeMAETokenizer

ROOT = Path(__file__).resolve().parents[1]
SMALL_SIZES = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


def paper_config(**overrides) -> BarcodeMAEConfig:
    settings = json.loads((ROOT / "configs" / "paper.json").read_text())
    settings.pop("training")
    return BarcodeMAEConfig(**{**settings, **overrides})


def random_bert(k_mer: int = 6, seed: int = 0) -> BertModel:
    """The authors' encoder (their `BertConfig`, smaller), every weight random (LayerNorms and token type too)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=4**k_mer + 2, max_position_embeddings=512, output_hidden_states=True, num_labels=4**k_mer
    )
    for name, value in SMALL_SIZES.items():
        setattr(config, name, value)
    model = BertModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.3 if "LayerNorm" in name else 0.05
            parameter.add_(scale * torch.randn_like(parameter))
    return model


def authors_tokens(barcodes: list[str], k_mer: int, max_len: int = 660) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' evaluation input: ``barcode[:max_len]`` padded with N, k-mers at stride k (``[UNK]`` for any
    with a non-ACGT base), attention 1 on the first ``len // k``."""
    vocabulary = authors_vocabulary(k_mer)
    ids, masks = [], []
    for barcode in barcodes:
        cut = barcode[:max_len]
        padded = cut + "N" * (max_len - len(cut))
        kmers = [padded[i : i + k_mer] for i in range(0, max_len - k_mer + 1, k_mer)]
        ids.append([vocabulary.get(kmer, vocabulary["[UNK]"]) for kmer in kmers])
        masks.append([int(i < len(cut) // k_mer) for i in range(len(kmers))])
    return torch.tensor(ids), torch.tensor(masks)


def barcodes_with_edge_cases(count: int = 6) -> list[str]:
    barcodes = [record["dna_barcode"] for record in simulate_barcodes(specimens_per_species=1, seed=3)[:count]]
    barcodes[0] = barcodes[0][:400] + "NNRYACGT" + barcodes[0][408:]  # inner ambiguity codes: [UNK] tokens
    barcodes[1] = barcodes[1][:301]  # short, a trailing piece shorter than k
    barcodes[2] = (barcodes[2] * 2)[:700]  # longer than 660 bases
    return barcodes


def test_paper_preset_is_the_authors_design():
    config = paper_config()
    assert (config.norm_position, config.mask_sampling, config.position_embedding_type) == (
        "post",
        "bernoulli",
        "absolute",
    )
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 6, 6)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        768,
        6,
        6,
    )
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    assert (config.masked_loss_weight, config.visible_loss_weight, config.readout) == (1.0, 0.0, "mean")


def test_paper_encoder_reproduces_bert_last_hidden_state():
    bert = random_bert()
    config = paper_config(**SMALL_SIZES)
    ours = BarcodeMAEModel(config).eval()
    state = encoder_state(
        dict(bert.state_dict()),
        config.num_hidden_layers,
        vocabulary_rows(authors_vocabulary(6), 6),
        config.max_position_embeddings,
    )
    ours.load_state_dict(state, strict=True)
    barcodes = barcodes_with_edge_cases()
    their_ids, their_mask = authors_tokens(barcodes, 6)
    batch = BarcodeMAETokenizer(k_mer=6).encode_barcodes(barcodes)
    with torch.no_grad():
        expected = bert(input_ids=their_ids, attention_mask=their_mask).last_hidden_state
        got = ours(**batch).last_hidden_state
    attended = batch["attention_mask"].bool()
    assert torch.equal(attended, their_mask[:, : attended.shape[1]].bool())
    difference = (got - expected[:, : got.shape[1]])[attended].abs().max()
    assert difference < 1e-5, difference


def test_paper_mae_step_masks_per_token_and_trains():
    torch.manual_seed(0)
    config = paper_config(**SMALL_SIZES, decoder_hidden_size=48, decoder_num_hidden_layers=1)
    model = BarcodeMAEForPreTraining(config).train()
    assert isinstance(model.decoder.projection, torch.nn.Linear)  # the authors always project
    assert isinstance(model.decoder.embedding_norm, torch.nn.LayerNorm)
    batch = BarcodeMAETokenizer(k_mer=6).encode_barcodes(barcodes_with_edge_cases(8))
    output = model(**batch)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(p.grad is not None for name, p in model.named_parameters() if not name.startswith("genus"))
    masked, scored = output.mask.bool(), output.labels != -100
    assert int(masked.sum()) == int(scored.sum())  # every masked k-mer scored once


def test_bernoulli_masking_is_per_token_with_static_slots_when_compiled(monkeypatch):
    torch.manual_seed(0)
    length, rows = 110, 4000
    input_ids = torch.randint(5, 4101, (rows, length))
    masking = random_masking(input_ids, torch.ones_like(input_ids), 0.5, 5, sampling="bernoulli")
    counts = masking.mask.sum(1).float()
    assert counts.mean() == pytest.approx(55, abs=0.3)
    assert counts.var() == pytest.approx(110 * 0.25, rel=0.1)  # binomial, not a fixed count
    assert masking.mask.float().mean(0).sub(0.5).abs().max() < 0.05  # every position equally likely
    # eager: as many slots as the batch fills; compiled: mean + 6 standard deviations, fixed by the length
    assert (masking.kept_length, masking.masked_length) == (int(masking.num_kept.max()), int(counts.max()))
    assert max(masking.kept_length, masking.masked_length) < 87
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    static = random_masking(torch.randint(5, 4101, (rows, length)), torch.ones_like(input_ids), 0.5, 5, "bernoulli")
    assert static.kept_length == static.masked_length == 87 and torch.equal(static.mask, masking.mask)
    fixed = random_masking(input_ids, torch.ones_like(input_ids), 0.5, 5)
    assert set(fixed.mask.sum(1).tolist()) == {55}


def test_masked_loss_weight_mixes_as_the_authors_do():
    config = paper_config(**SMALL_SIZES, decoder_hidden_size=48, decoder_num_hidden_layers=1, hidden_dropout_prob=0.0)
    batch = BarcodeMAETokenizer(k_mer=6).encode_barcodes(barcodes_with_edge_cases(4))
    losses = {}
    for masked, visible in [(1.0, 0.0), (0.0, 1.0), (0.3, 0.7)]:
        torch.manual_seed(0)
        model = BarcodeMAEForPreTraining(
            BarcodeMAEConfig(**{**config.to_dict(), "masked_loss_weight": masked, "visible_loss_weight": visible})
        ).eval()
        torch.manual_seed(1)
        losses[masked] = model(**batch).loss.item()
    assert losses[0.3] == pytest.approx(0.3 * losses[1.0] + 0.7 * losses[0.0], rel=1e-5)


def test_train_paper_preset_optimises_as_the_authors(tmp_path):
    """`train.py --preset paper` (sizes shrunk): OneCycleLR with torch's defaults peaking at 1e-4 x batch / 64, Adam's
    beta1 cycled, weight decay 1e-5 on every parameter, no gradient clipping."""
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=2, species_per_genus=3, seed=5))
    data_file = write_tsv(records, tmp_path / "barcodes.tsv")
    out, steps, batch = tmp_path / "run", 10, 8
    shrink = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    shrink |= {f"decoder_{name}": value for name, value in shrink.items()}
    arguments = ["--preset", "paper", "--data_file", data_file, "--output_dir", out, "--max_steps", steps]
    arguments += ["--per_device_train_batch_size", batch, "--save_steps", steps, "--logging_steps", 1]
    arguments += ["--eval_strategy", "no", "--embedding_probe", "false", "--use_cpu", "--report_to", "none"]
    arguments += ["--dataloader_num_workers", 0, "--disable_tqdm", "true"]
    arguments += [item for name, value in shrink.items() for item in (f"--{name}", value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "train.py"), *map(str, arguments)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]

    peak = 1e-4 * batch / 64
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, peak, total_steps=steps)
    expected_lr = []
    for _ in range(steps):  # the Trainer logs the rate each step ran with
        expected_lr.append(schedule.get_last_lr()[0])
        reference.step()
        schedule.step()
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in log if "loss" in entry]
    assert [entry["learning_rate"] for entry in logged] == pytest.approx(expected_lr, rel=1e-6)
    optimizer = torch.load(out / f"checkpoint-{steps}" / "optimizer.pt", weights_only=True)
    groups = [group for group in optimizer["param_groups"] if group["params"]]
    assert {group["weight_decay"] for group in groups} == {1e-5}
    assert len(optimizer["state"]) == sum(len(group["params"]) for group in optimizer["param_groups"])
    assert groups[0]["betas"][0] == pytest.approx(reference.param_groups[0]["betas"][0])
    assert 0.85 <= groups[0]["betas"][0] < 0.95


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], dict(lr_scheduler="one_cycle", learning_rate=1e-4 * 32 / 64, weight_decay=1e-5, max_grad_norm=0.0)),
        (["--gradient_accumulation_steps", "4"], dict(learning_rate=1e-4 * 128 / 64)),
        (["--learning_rate", "3e-4"], dict(lr_scheduler="one_cycle", learning_rate=3e-4, learning_rate_per_64=None)),
        (["--lr_scheduler_type", "cosine"], dict(lr_scheduler="trainer", weight_decay=1e-5)),
        (["--weight_decay", "0.01", "--max_grad_norm", "1"], dict(weight_decay=0.01, max_grad_norm=1.0)),
    ],
)
def test_the_presets_training_arguments_yield_to_explicit_flags(tmp_path, extra, expected):
    from train import parse_arguments

    argv = ["--preset", "paper", "--data_file", "x.tsv", "--output_dir", str(tmp_path), "--use_cpu"]
    _, _, training_args = parse_arguments([*argv, "--per_device_train_batch_size", "32", *extra])
    assert training_args.decay_all_parameters
    for name, value in expected.items():
        assert getattr(training_args, name) == (value if value is None else pytest.approx(value)), name


def test_eager_slots_give_the_loss_and_gradients_of_the_static_ones(monkeypatch):
    """Eager runs trim the empty kept and masked slots; the compiled graph's static slots give the same step."""
    torch.manual_seed(0)
    decoder = dict(decoder_hidden_size=48, decoder_num_hidden_layers=1, decoder_num_attention_heads=4)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # shapes would change its draws
    config = paper_config(**SMALL_SIZES, **decoder, **no_dropout, decoder_intermediate_size=96, visible_loss_weight=0.5)
    model = BarcodeMAEForPreTraining(config).train()
    input_ids = torch.randint(5, model.config.vocab_size, (4, 40))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 30:] = 0
    results = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda compiling=compiling: compiling)
        model.zero_grad()
        torch.manual_seed(1)
        output = model(input_ids=input_ids, attention_mask=attention_mask)
        output.loss.backward()
        results.append((output, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (eager, eager_grads), (static, static_grads) = results
    assert eager.logits.shape[1] < static.logits.shape[1]  # fewer slots
    torch.testing.assert_close(eager.loss, static.loss)
    for name, grad in static_grads.items():
        torch.testing.assert_close(eager_grads[name], grad, msg=name)
