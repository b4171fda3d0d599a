"""Tokenizer: normalisation rules, k-mer ids, truncation, padding, decoding, Auto-class round trip."""

import itertools
import random

import pytest
import torch
from transformers import AutoTokenizer

from tokenization_barcodemae import BarcodeMAETokenizer, kmer_vocabulary, normalize_barcode


@pytest.fixture(scope="module")
def tokenizer():
    return BarcodeMAETokenizer(k_mer=6)


def kmers(tokenizer, sequence):
    return tokenizer.convert_ids_to_tokens(tokenizer(sequence)["input_ids"])


def test_vocabulary_order_is_specials_then_lexicographic_kmers():
    vocab = kmer_vocabulary(3)
    assert list(vocab)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert list(vocab)[5:] == ["".join(p) for p in itertools.product("ACGT", repeat=3)]
    assert vocab["AAA"] == 5 and vocab["TTT"] == 5 + 63


def test_special_token_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id) == (0, 1, 2)
    assert (tokenizer.sep_token_id, tokenizer.mask_token_id) == (3, 4)
    assert len(tokenizer) == 5 + 4**6
    assert tokenizer.model_max_length == 110


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acgtac", ["ACGTAC"]),  # lower case
        ("ACGUAC", ["ACGTAC"]),  # U -> T
        ("acguac", ["ACGTAC"]),
        ("ACG TAC\nGGG\tCCC", ["ACGTAC", "GGGCCC"]),  # whitespace removed
        ("ACG-TA.CGGGCCC", ["ACGTAC", "GGGCCC"]),  # gaps removed
        ("ACGTACNNNNNN", ["ACGTAC"]),  # trailing N stripped
        ("NNNNNNACGTAC", ["[UNK]", "ACGTAC"]),  # leading N kept, becomes [UNK]
        ("ACGTRCACGTAC", ["[UNK]", "ACGTAC"]),  # IUPAC code -> [UNK] k-mer
        ("ACGTACGTA", ["ACGTAC"]),  # trailing partial k-mer dropped
        ("ACG", []),
        ("", []),
    ],
)
def test_normalisation_and_kmers(tokenizer, raw, expected):
    assert kmers(tokenizer, raw) == expected


@pytest.mark.parametrize("raw", ["acgu-ta cgNN", "NNacgt..ACGTnnn", "A C G T\n", "uuuuNNNNRY-"])
def test_python_normaliser_matches_backend(tokenizer, raw):
    assert tokenizer.backend_tokenizer.normalizer.normalize_str(raw) == normalize_barcode(raw)


def test_truncation_to_model_max_length(tokenizer):
    ids = tokenizer("ACGTAC" * 200, truncation=True)["input_ids"]
    assert len(ids) == 110


def test_batch_padding_and_attention_mask(tokenizer):
    batch = tokenizer(["ACGTAC" * 3, "ACGTAC"], padding=True)
    assert batch["input_ids"][1] == [438, 0, 0]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 0, 0]]


def test_decode_round_trip(tokenizer):
    sequence = "ACGTACGGATTACAGGGCCCTTTAAA"[:24]
    ids = tokenizer(sequence)["input_ids"]
    assert tokenizer.decode_barcode(ids) == sequence
    assert tokenizer.decode(ids) == sequence
    assert tokenizer.decode_barcode(tokenizer("ACGTACNRYNNNGGGCCC", padding="max_length")["input_ids"]) == (
        "ACGTAC" + "N" * 6 + "GGGCCC"
    )


def test_other_k_and_length():
    tokenizer = BarcodeMAETokenizer(k_mer=4, model_max_length=3)
    assert len(tokenizer) == 5 + 256
    assert kmers(tokenizer, "ACGT" * 4) == ["ACGT"] * 4
    assert len(tokenizer("ACGT" * 4, truncation=True)["input_ids"]) == 3


def test_overlapping_stride_is_refused():
    with pytest.raises(ValueError, match="non-overlapping"):
        BarcodeMAETokenizer(k_mer=6, stride=3)


def test_save_and_load_through_auto_tokenizer(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenization_barcodemae.py").exists()
    loaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "BarcodeMAETokenizer"
    sequences = ["acgtacNNNggatta", "ACGT" * 200]
    assert loaded(sequences, truncation=True)["input_ids"] == tokenizer(sequences, truncation=True)["input_ids"]
    assert loaded.model_max_length == 110 and loaded.k_mer == 6


@pytest.mark.parametrize("k_mer", [4, 6])
def test_overlapping_kmer_ids_give_every_frame_of_the_backend(k_mer):
    tokenizer = BarcodeMAETokenizer(k_mer=k_mer, model_max_length=20)
    rng = random.Random(k_mer)
    messy = "ACGT" * 10 + "acgtNRYU-. \n"
    sequences = ["".join(rng.choice(messy) for _ in range(rng.randint(0, 130))) for _ in range(200)]
    sequences += ["", "ACG", "NNNNNN", "ACGTAC"]
    for sequence, ids in zip(sequences, tokenizer.overlapping_kmer_ids(sequences), strict=True):
        normalised = normalize_barcode(sequence)
        assert len(ids) == max(len(normalised) - k_mer + 1, 0)
        for frame in range(k_mer):
            expected = tokenizer(normalised[frame:], truncation=True)["input_ids"]
            assert ids[frame::k_mer][:20].tolist() == expected


def test_encode_barcodes_equals_the_padded_batch_call(tokenizer):
    rng = random.Random(1)
    messy = "ACGT" * 10 + "acgtNRYU-. \n"
    sequences = ["".join(rng.choice(messy) for _ in range(rng.randint(0, 800))) for _ in range(50)] + ["", "ACG"]
    expected = tokenizer(sequences, padding=True, truncation=True, return_tensors="pt")
    encoded = tokenizer.encode_barcodes(sequences)
    assert set(encoded) == {"input_ids", "attention_mask"}
    for name in encoded:
        assert torch.equal(encoded[name], expected[name])
    assert tokenizer.encode_barcodes(["", "ACG"])["input_ids"].shape == (2, 0)
