"""Model core: masking invariants, padding invariance, objectives, heads, dtypes."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_config

import modeling_barcodemae
from configuration_barcodemae import BarcodeMAEConfig
from modeling_barcodemae import (
    BarcodeMAEForPreTraining,
    BarcodeMAEForSequenceClassification,
    BarcodeMAEModel,
    linear_cross_entropy,
    overlapping_kmers,
    random_masking,
    shift_frame,
)
from tokenization_barcodemae import BarcodeMAETokenizer

SEQUENCES = [
    "ACGTTGCAAGCTAGCTAGGATCCATGCAAGTCGATCGATCGGATCAGTTAGCATCGATTACGGATCGATTTACGGC" * 2,
    "TTGACCAGTAGGCATCAGNNNNAGTCAGCATCGATGCATGCAAGTC",
    "GGCATCGATCGATCGARYTAGCTAGCATCGATCGATTTAGCGATCGACTAGCATCAGCAGCA",
]


@pytest.fixture(scope="module")
def tokenizer():
    return BarcodeMAETokenizer(k_mer=4, model_max_length=50)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(SEQUENCES, padding=True, truncation=True, return_tensors="pt")


def test_config_rejects_inconsistent_values():
    for bad in [
        dict(objective="bert"),
        dict(hidden_size=30, num_attention_heads=4),
        dict(decoder_hidden_size=30, decoder_num_attention_heads=4),
        dict(mask_ratio=0.0),
        dict(mask_ratio=1.0),
        dict(stride=3),
        dict(position_embedding_type="alibi"),
        dict(max_length=2),
        dict(readout="cls"),
        dict(classifier_type="mlp"),
        dict(classifier_scale=0),
    ]:
        with pytest.raises(ValueError, match="Invalid BarcodeMAEConfig"):
            tiny_config(**bad)


def test_config_derived_sizes_and_paper_defaults():
    config = BarcodeMAEConfig()
    assert (config.k_mer, config.stride, config.max_length, config.max_position_embeddings) == (6, 6, 660, 110)
    assert config.vocab_size == 4101 and config.mask_ratio == 0.5 and config.objective == "mae"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 6, 6)


def test_random_masking_keeps_exact_fraction_and_never_masks_specials_or_padding(batch):
    torch.manual_seed(0)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    masking = random_masking(input_ids, attention_mask, 0.5, first_kmer_id=5)
    maskable = attention_mask.bool() & (input_ids >= 5)
    assert torch.equal(masking.mask.sum(1), (maskable.sum(1) * 0.5).floor().long())  # no row is near the cap
    assert not (masking.mask & ~maskable).any()  # never [UNK], never padding
    assert torch.equal(masking.num_kept, attention_mask.sum(1) - masking.mask.sum(1))
    assert masking.kept_length == input_ids.shape[1] - input_ids.shape[1] // 2 >= int(masking.num_kept.max())
    assert torch.equal(
        torch.gather(masking.ids_shuffle, 1, masking.ids_restore), torch.arange(input_ids.shape[1]).expand(3, -1)
    )


def test_random_masking_caps_kept_tokens_of_unk_rows_at_the_static_length():
    input_ids = torch.tensor([[1, 1, 1, 1, 1, 1, 7, 8, 9, 10], [1, 1, 1, 1, 1, 1, 1, 1, 7, 8], [5] * 10])
    masking = random_masking(input_ids, torch.ones_like(input_ids), 0.5, first_kmer_id=5)
    assert masking.kept_length == masking.masked_length == 5
    assert masking.num_masked.tolist() == [4, 2, 5]  # rows 0 and 1 mask all their k-mers (not half)...
    assert masking.num_kept.tolist() == [6, 8, 5]  # ...and still keep more than 5: the extra stay out of the encoder
    assert torch.equal(masking.mask.sum(1), masking.num_masked)
    output = BarcodeMAEForPreTraining(tiny_config(visible_loss_weight=1.0)).eval()(input_ids=input_ids)
    assert torch.isfinite(output.loss) and output.logits.shape[1] == 5


def test_same_seed_same_mask(batch):
    torch.manual_seed(7)
    first = random_masking(batch["input_ids"], batch["attention_mask"], 0.5, 5).mask
    torch.manual_seed(7)
    second = random_masking(batch["input_ids"], batch["attention_mask"], 0.5, 5).mask
    assert torch.equal(first, second)


def test_mae_encoder_sees_only_kept_tokens(batch, monkeypatch):
    model = BarcodeMAEForPreTraining(tiny_config()).eval()
    seen = {}
    original_forward = model.barcodemae.forward

    def spy(input_ids, attention_mask=None, position_ids=None, **kwargs):
        seen.update(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return original_forward(input_ids, attention_mask, position_ids, **kwargs)

    monkeypatch.setattr(model.barcodemae, "forward", spy)
    torch.manual_seed(1)
    output = model(**batch)
    mask = output.mask.bool()
    kept_count = batch["attention_mask"].sum(1) - mask.sum(1)
    assert torch.equal(seen["attention_mask"].sum(1), kept_count)
    assert seen["input_ids"].shape[1] == int(kept_count.max())  # the longest row fixes the static kept length
    assert not (seen["input_ids"] == model.config.mask_token_id).any()
    for row in range(len(SEQUENCES)):
        real = seen["attention_mask"][row].bool()
        positions = seen["position_ids"][row][real]
        assert not mask[row, positions].any()  # never a masked position
        assert torch.equal(seen["input_ids"][row][real], batch["input_ids"][row, positions])  # original positions
        assert (seen["input_ids"][row][~real] == 0).all()


def test_mae_loss_is_cross_entropy_on_masked_positions_only(batch):
    model = BarcodeMAEForPreTraining(tiny_config()).eval()
    torch.manual_seed(3)
    output = model(**batch)
    scored = output.labels != -100
    length = batch["input_ids"].shape[1]
    assert output.logits.shape == (3, length // 2, model.config.vocab_size)  # one slot per possible masked token
    assert torch.equal(scored.sum(1), output.mask.sum(1))
    for row in range(3):
        positions = output.masked_positions[row][scored[row]]
        assert sorted(positions.tolist()) == output.mask[row].nonzero().flatten().tolist()
        assert torch.equal(output.labels[row][scored[row]], batch["input_ids"][row, positions])
    expected = torch.nn.functional.cross_entropy(output.logits[scored], output.labels[scored])
    torch.testing.assert_close(output.loss, expected)
    predicted, targets = output.scored()
    assert torch.equal(targets, output.labels[scored]) and predicted.shape == targets.shape


def test_linear_cross_entropy_equals_cross_entropy_of_the_linear_layer_in_value_and_gradients():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 11)
    hidden = torch.randn(4, 5, 8, requires_grad=True)
    labels = torch.randint(0, 11, (4, 5))
    labels[0, :3] = labels[3, 4] = -100
    expected_logits = linear(hidden)
    expected = torch.nn.functional.cross_entropy(expected_logits.flatten(0, 1), labels.flatten())
    expected_grads = torch.autograd.grad(expected, [hidden, linear.weight, linear.bias])
    loss, logits = linear_cross_entropy(hidden, linear, labels, chunk_rows=3)  # 20 rows: 7 chunks, the last short
    grads = torch.autograd.grad(loss, [hidden, linear.weight, linear.bias])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, expected_logits.detach())
    assert not logits.requires_grad
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products, float32 softmax, grads in the params' dtype
        loss, logits = linear_cross_entropy(hidden, linear, labels, chunk_rows=3)
        grads = torch.autograd.grad(loss, [hidden, linear.weight, linear.bias])
    assert logits.dtype == torch.bfloat16 and [g.dtype for g in grads] == [torch.float32] * 3
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, linear, labels)[0], expected)


@pytest.mark.parametrize("objective", ["mae", "mlm"])
def test_pretraining_gradients_equal_those_of_a_plain_cross_entropy(batch, objective, monkeypatch):
    """The chunked head loss trains exactly as the vocabulary layer followed by F.cross_entropy."""
    torch.manual_seed(0)
    model = BarcodeMAEForPreTraining(tiny_config(objective=objective, visible_loss_weight=0.5)).train()

    def plain(hidden, linear, labels, chunk_rows=512):
        logits = linear(hidden)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), labels.flatten())
        return loss, logits.detach()

    gradients = {}
    for name, loss_function in (("fused", linear_cross_entropy), ("plain", plain)):
        monkeypatch.setattr(modeling_barcodemae, "linear_cross_entropy", loss_function)
        model.zero_grad()
        torch.manual_seed(5)
        model(**batch).loss.backward()
        gradients[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert gradients["fused"].keys() == gradients["plain"].keys()
    for name, grad in gradients["plain"].items():
        torch.testing.assert_close(gradients["fused"][name], grad, msg=name)


@pytest.mark.parametrize(("position_embedding_type", "visible_loss_weight"), [("absolute", 0.0), ("rotary", 1.0)])
def test_mae_training_step_compiles_without_graph_breaks(batch, position_embedding_type, visible_loss_weight):
    config = tiny_config(position_embedding_type=position_embedding_type, visible_loss_weight=visible_loss_weight)
    model = BarcodeMAEForPreTraining(config).train()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    torch.manual_seed(2)
    compiled_loss = compiled(**batch).loss
    compiled_loss.backward()
    torch.manual_seed(2)
    torch.testing.assert_close(compiled_loss, model(**batch).loss)


def test_mlm_objective_uses_mask_tokens_and_scores_masked_positions(batch):
    model = BarcodeMAEForPreTraining(tiny_config(objective="mlm")).eval()
    assert not hasattr(model, "decoder") and hasattr(model, "lm_head")
    torch.manual_seed(0)
    corrupted, labels = model.mask_for_mlm(batch["input_ids"], batch["attention_mask"])
    scored = labels != -100
    assert (corrupted[scored] == 4).float().mean() > 0.6
    assert torch.equal(corrupted[~scored], batch["input_ids"][~scored])
    assert not (scored & (batch["input_ids"] < 5)).any()
    output = model(input_ids=corrupted, attention_mask=batch["attention_mask"], labels=labels)
    assert output.logits.shape[0] == int(scored.sum()) and output.loss > 0


def test_mae_refuses_labels(batch):
    model = BarcodeMAEForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="masks internally"):
        model(**batch, labels=batch["input_ids"])


@pytest.mark.parametrize("position_embedding_type", ["absolute", "rotary"])
def test_padding_never_changes_the_embedding(tokenizer, position_embedding_type):
    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config(position_embedding_type=position_embedding_type)).eval()
    short, long = SEQUENCES[1], SEQUENCES[0]
    alone = model(**tokenizer([short], return_tensors="pt"))
    padded = model(**tokenizer([short, long], padding=True, truncation=True, return_tensors="pt"))
    n_tokens = alone.last_hidden_state.shape[1]
    torch.testing.assert_close(padded.pooler_output[0], alone.pooler_output[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.last_hidden_state[0, :n_tokens], alone.last_hidden_state[0], atol=1e-5, rtol=0)


def test_encoder_outputs_hidden_states_and_tuple(batch):
    model = BarcodeMAEModel(tiny_config()).eval()
    output = model(**batch, output_hidden_states=True)
    assert len(output.hidden_states) == 3
    torch.testing.assert_close(output.hidden_states[-1], output.last_hidden_state)
    as_tuple = model(**batch, return_dict=False)
    torch.testing.assert_close(as_tuple[1], output.pooler_output)


def test_too_long_input_gives_a_clear_error():
    model = BarcodeMAEModel(tiny_config())
    with pytest.raises(ValueError, match="truncation=True"):
        model(torch.full((1, 51), 7))


def test_bf16_forward_matches_fp32(batch):
    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config()).eval()
    reference = model(**batch).pooler_output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(**batch).pooler_output
    cosine = torch.nn.functional.cosine_similarity(reference, low.float())
    assert (cosine > 0.99).all()
    pretraining = BarcodeMAEForPreTraining(tiny_config()).to(torch.bfloat16)
    assert torch.isfinite(pretraining(**batch).loss)


def test_sequence_classification_and_frozen_encoder(batch):
    model = BarcodeMAEForSequenceClassification(tiny_config(num_labels=3, freeze_encoder=True)).train()
    assert not model.barcodemae.training
    output = model(**batch, labels=torch.tensor([0, 1, 2]))
    output.loss.backward()
    assert model.classifier.weight.grad is not None
    assert all(p.grad is None for p in model.barcodemae.parameters())
    assert output.logits.shape == (3, 3)


def test_gradient_checkpointing_runs(batch):
    model = BarcodeMAEForPreTraining(tiny_config()).train()
    model.activation_checkpointing_enable()
    model(**batch).loss.backward()
    assert model.barcodemae.token_embeddings.weight.grad is not None


def test_visible_loss_adds_a_weighted_reconstruction_term(batch):
    torch.manual_seed(0)
    state = BarcodeMAEForPreTraining(tiny_config()).state_dict()
    outputs = {}
    for weight in (0.0, 0.5, 1.0):
        model = BarcodeMAEForPreTraining(tiny_config(visible_loss_weight=weight)).eval()
        model.load_state_dict(state)
        torch.manual_seed(4)
        outputs[weight] = model(**batch)
    assert torch.equal(outputs[1.0].mask, outputs[0.0].mask)
    torch.testing.assert_close(outputs[1.0].logits, outputs[0.0].logits)  # logits/labels: masked positions only
    visible_term = outputs[1.0].loss - outputs[0.0].loss
    assert visible_term > 1.0  # an untrained model cannot reconstruct the visible k-mers either
    torch.testing.assert_close(outputs[0.5].loss - outputs[0.0].loss, 0.5 * visible_term)


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_shift_frame_matches_tokenizing_the_shifted_barcode(tokenizer, batch, shift):
    ids, mask = shift_frame(batch["input_ids"], batch["attention_mask"], shift, tiny_config())
    for row, sequence in enumerate(SEQUENCES):
        direct = tokenizer(sequence[shift:], truncation=True)["input_ids"]
        derived = ids[row][mask[row].bool()].tolist()
        assert len(derived) in (len(direct), len(direct) - 1)  # the trailing bases of frame 0 were not tokenised
        unk = tokenizer.unk_token_id  # a shifted k-mer touching an [UNK] of frame 0 is [UNK]: its bases are lost
        assert [d for d, t in zip(derived, direct) if d != unk] == [t for d, t in zip(derived, direct) if d != unk]
        assert sum(d == unk for d in derived) >= sum(t == unk for t in direct[: len(derived)])
        if "N" not in sequence and "R" not in sequence:
            assert derived == direct[: len(derived)]


def test_frame_pooling_averages_the_shifted_frames_and_ignores_padding(tokenizer, batch):
    torch.manual_seed(0)
    single = BarcodeMAEModel(tiny_config()).eval()
    pooled = BarcodeMAEModel(tiny_config(embedding_frames=4)).eval()
    pooled.load_state_dict(single.state_dict())
    with torch.no_grad():
        frames = [single(**batch).pooler_output]
        for shift in (1, 2, 3):
            ids, mask = shift_frame(batch["input_ids"], batch["attention_mask"], shift, single.config)
            frames.append(single(ids, mask).pooler_output)
        output = pooled(**batch)
        alone = pooled(**tokenizer(SEQUENCES[1:2], return_tensors="pt"))
    torch.testing.assert_close(output.pooler_output, torch.stack(frames).mean(0))
    torch.testing.assert_close(output.last_hidden_state, single(**batch).last_hidden_state)
    torch.testing.assert_close(output.pooler_output[1], alone.pooler_output[0], atol=1e-5, rtol=0)
    assert not torch.allclose(output.pooler_output, frames[0])


@pytest.mark.parametrize("objective", ["mae", "mlm"])
def test_frame_pooling_is_not_used_in_pretraining(batch, objective, monkeypatch):
    losses = []
    for frames in (1, 4):
        torch.manual_seed(0)
        model = BarcodeMAEForPreTraining(tiny_config(embedding_frames=frames, objective=objective))
        torch.manual_seed(1)
        losses.append(model(**batch).loss)
    torch.testing.assert_close(losses[0], losses[1])

    def refuse(*args, **kwargs):
        raise AssertionError("pretraining encoded shifted frames")

    monkeypatch.setattr(BarcodeMAEModel, "_pool_frames", refuse)  # the extra passes must not even run
    model(**batch)


def test_embedding_frames_must_fit_k():
    for bad in (0, 5):
        with pytest.raises(ValueError, match="embedding_frames"):
            tiny_config(embedding_frames=bad)


def test_overlapping_kmers_are_every_acgt_kmer_of_the_tokenised_bases(tokenizer, batch):
    ids, mask = overlapping_kmers(batch["input_ids"], batch["attention_mask"], tiny_config())
    vocab = tokenizer.get_vocab()
    for row, sequence in enumerate(SEQUENCES):
        tokenised = sequence[: 4 * int(batch["attention_mask"][row].sum())]
        windows = [tokenised[i : i + 4] for i in range(len(tokenised) - 3)]
        expected = Counter(vocab[w] for w in windows if set(w) <= set("ACGT"))
        derived = Counter(ids[row][mask[row].bool()].tolist())
        if set(sequence) <= set("ACGT"):
            assert derived == expected
        else:  # a window that shares a token with an N or IUPAC code is lost even where it is all ACGT
            assert derived <= expected and derived.total() > 0.5 * expected.total()


def test_kmer_bag_readout_is_the_mean_token_embedding_and_ignores_padding(tokenizer, batch):
    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config(readout="kmer_bag")).eval()
    with torch.no_grad():
        output = model(**batch)
        ids, mask = overlapping_kmers(batch["input_ids"], batch["attention_mask"], model.config)
        for row in range(len(SEQUENCES)):
            expected = model.token_embeddings(ids[row][mask[row].bool()]).mean(0)
            torch.testing.assert_close(output.pooler_output[row], expected)
        alone = model(**tokenizer(SEQUENCES[1:2], return_tensors="pt")).pooler_output[0]
    torch.testing.assert_close(output.pooler_output[1], alone, atol=1e-6, rtol=0)
    assert output.last_hidden_state.shape[:2] == batch["input_ids"].shape


def test_kmer_bag_after_a_deletion_has_no_kmer_across_the_gap(tokenizer):
    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config(readout="kmer_bag")).eval()
    ids = tokenizer(SEQUENCES[0], return_tensors="pt")["input_ids"][:, :8]
    kept = [0, 1, 2, 5, 6, 7]  # tokens 3 and 4 deleted
    with torch.no_grad():
        deleted = model.kmer_bag(ids[:, kept], torch.ones(1, 6), torch.tensor([kept]))
        pieces = [model.kmer_bag(ids[:, part], torch.ones(1, 3)) for part in ([0, 1, 2], [5, 6, 7])]
    torch.testing.assert_close(deleted, (pieces[0] + pieces[1]) / 2)  # each piece holds 3 + 3 * 2 k-mers


def test_mean_plus_kmer_bag_concatenates_two_unit_vectors(batch):
    torch.manual_seed(0)
    mean = BarcodeMAEModel(tiny_config()).eval()
    both = BarcodeMAEModel(tiny_config(readout="mean+kmer_bag")).eval()
    both.load_state_dict(mean.state_dict())
    assert both.config.embedding_size == 2 * both.config.hidden_size
    with torch.no_grad():
        pooled = both(**batch).pooler_output
        first, second = pooled.split(both.config.hidden_size, dim=1)
        torch.testing.assert_close(first, torch.nn.functional.normalize(mean(**batch).pooler_output, dim=1))
        bag = both.kmer_bag(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(second, torch.nn.functional.normalize(bag, dim=1))


@pytest.mark.parametrize("readout", ["kmer_bag", "mean+kmer_bag"])
def test_pretraining_ignores_the_readout(batch, readout):
    losses = []
    for choice in ("mean", readout):
        torch.manual_seed(0)
        model = BarcodeMAEForPreTraining(tiny_config(readout=choice))
        torch.manual_seed(1)
        losses.append(model(**batch).loss)
    torch.testing.assert_close(losses[0], losses[1])


@pytest.mark.parametrize("readout", ["mean", "kmer_bag", "mean+kmer_bag"])
def test_cosine_classifier_scores_scaled_cosines_of_the_embedding(batch, readout):
    torch.manual_seed(0)
    config = tiny_config(readout=readout, classifier_type="cosine", classifier_scale=10.0, num_labels=3)
    model = BarcodeMAEForSequenceClassification(config).eval()
    with torch.no_grad():
        output = model(**batch, labels=torch.tensor([0, 1, 2]))
        embeddings = model.barcodemae(**batch).pooler_output
    torch.testing.assert_close(output.embeddings, embeddings)
    unit = torch.nn.functional.normalize
    expected = 10.0 * unit(embeddings, dim=1) @ unit(model.classifier.weight, dim=1).T
    torch.testing.assert_close(output.logits, expected)
    assert output.logits.abs().max() <= 10.0 + 1e-5
    assert output.loss > 0


def test_embedder_kmer_bag_fast_path_equals_the_model_pooler_output(batch):
    from barcodemae.embedding import Embedder

    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config(readout="kmer_bag")).eval()
    embedder = Embedder(model, BarcodeMAETokenizer(k_mer=4, model_max_length=50), batch_size=2)
    with torch.no_grad():
        expected = model(**batch).pooler_output.numpy()
    np.testing.assert_allclose(embedder(SEQUENCES), expected, atol=1e-6)


def test_cached_embeddings_are_keyed_by_weights_code_and_sequences(tmp_path, monkeypatch):
    from barcodemae.embedding import Embedder, cached_embeddings, code_fingerprint

    torch.manual_seed(0)
    model = BarcodeMAEModel(tiny_config()).eval()
    embedder = Embedder(model, BarcodeMAETokenizer(k_mer=4, model_max_length=50))
    first = cached_embeddings(embedder, SEQUENCES, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    monkeypatch.setattr(Embedder, "__call__", lambda *a, **k: pytest.fail("re-embedded a cached set"))
    np.testing.assert_array_equal(cached_embeddings(embedder, SEQUENCES, tmp_path), first)
    monkeypatch.undo()
    with torch.no_grad():
        model.token_embeddings.weight.add_(0.1)  # other weights: a new entry, not the stale one
    assert not np.allclose(cached_embeddings(embedder, SEQUENCES, tmp_path), first)
    cached_embeddings(embedder, SEQUENCES[:2], tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    code = hashlib.sha256(Path(modeling_barcodemae.__file__).read_bytes()).hexdigest()[:8]
    assert code_fingerprint(model) == code and all(code in path.name for path in tmp_path.glob("*.npy"))


@pytest.mark.parametrize("objective", ["mae", "mlm"])
def test_auxiliary_genus_loss_is_weighted_and_skips_unlabelled_rows(batch, objective):
    config = tiny_config(objective=objective, genus_loss_weight=0.5, num_genus_labels=3)
    torch.manual_seed(0)
    model = BarcodeMAEForPreTraining(config)
    outputs = {}
    for name, labels in {
        "none": None,
        "some": torch.tensor([2, -100, 0]),
        "unlabelled": torch.full((3,), -100),
    }.items():
        torch.manual_seed(1)
        outputs[name] = model(**batch, genus_labels=labels)
    assert outputs["none"].genus_loss is None and outputs["unlabelled"].genus_loss == 0
    torch.testing.assert_close(outputs["unlabelled"].loss, outputs["none"].loss)
    assert outputs["some"].genus_loss > 0.5  # an untrained cosine classifier over 3 genera: about ln 3
    torch.testing.assert_close(outputs["some"].loss, outputs["none"].loss + 0.5 * outputs["some"].genus_loss)
    outputs["some"].loss.backward()
    assert model.genus_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_genus_labels"):
        tiny_config(genus_loss_weight=1.0)
