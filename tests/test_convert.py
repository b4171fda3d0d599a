"""`barcodemae convert`: the authors' checkpoints (both archs) and BERT k-mer folders become encoder Hub folders whose
embedding is the authors' pipeline's (mean of ``hidden_states[-1]`` over attended tokens)."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run
from test_paper_preset import SMALL_SIZES, authors_tokens, barcodes_with_edge_cases, random_bert
from transformers import AutoModel, AutoTokenizer, BertForMaskedLM, BertForTokenClassification

from barcodemae.convert import authors_vocabulary, convert

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REMOTE_CODE = ("configuration_barcodemae.py", "modeling_barcodemae.py", "tokenization_barcodemae.py")


def run_arguments(arch: str, k_mer: int = 6) -> argparse.Namespace:
    """A subset of the authors' `pretraining.py` arguments."""
    return argparse.Namespace(
        arch=arch,
        k_mer=k_mer,
        stride=k_mer,
        max_len=660,
        tokenizer="kmer",
        n_layers=2,
        n_heads=4,
        decoder_n_layers=2,
        decoder_n_heads=4,
        decoder_embed_dim=48,
        lr=1e-4,
        weight_decay=1e-5,
        scheduler="OneCycle",
        epochs=45,
        tokenize_n_nucleotide=False,
        predict_n_nucleotide=False,
        mask_ratios=[0.5] * 45,
    )


def save_authors_checkpoint(path: Path, arch: str, seed: int = 0) -> torch.nn.Module:
    """A checkpoint as the authors' `safe_save_model` writes it (DDP ``module.`` prefix included); returns the model
    whose ``hidden_states[-1]`` is their embedding's input."""
    bert = random_bert(seed=seed)
    if arch == "maelm":
        model, state = bert, {f"module.{name}": value for name, value in bert.state_dict().items()}
    else:
        model = BertForTokenClassification(bert.config).eval()
        model.bert.load_state_dict(bert.state_dict(), strict=False)  # no pooler
        state = model.state_dict()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save(
        {
            "model": state,
            "optimizer": optimizer.state_dict(),
            "config": run_arguments(arch),
            "epoch": 7,
            "bert_config": bert.config.to_dict(),
        },
        path,
    )
    return model


def authors_embedding(model: torch.nn.Module, barcodes: list[str], k_mer: int = 6) -> np.ndarray:
    """The authors' `representations_from_df`: ``hidden_states[-1]``, mean over the attended tokens."""
    ids, mask = authors_tokens(barcodes, k_mer)
    with torch.no_grad():
        hidden = model(ids, mask, output_hidden_states=True).hidden_states[-1]
    return ((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()


def converted_embedding(folder: Path, barcodes: list[str]) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
    with torch.no_grad():
        return model(**tokenizer(barcodes, padding=True, truncation=True, return_tensors="pt")).pooler_output.numpy()


@pytest.mark.parametrize("arch", ["maelm", "transformer"])
def test_checkpoint_converts_to_the_authors_embedding(tmp_path, arch):
    model = save_authors_checkpoint(tmp_path / "checkpoint.pt", arch)
    folder = convert(tmp_path / "checkpoint.pt", tmp_path / "converted")
    barcodes = barcodes_with_edge_cases()
    difference = np.abs(converted_embedding(folder, barcodes) - authors_embedding(model, barcodes)).max()
    assert difference < 1e-4, difference
    config = json.loads((folder / "config.json").read_text())
    assert (config["readout"], config["embedding_frames"], config["norm_position"]) == ("mean", 1, "post")
    assert config["objective"] == ("mae" if arch == "maelm" else "mlm")
    assert all((folder / name).read_text() == (EXAMPLES.parent / name).read_text() for name in REMOTE_CODE)
    card = (folder / "README.md").read_text()
    assert f"arch `{arch}`, epoch 7" in card and "| `weight_decay` | `1e-05` |" in card


def test_bert_folders_with_the_authors_or_a_listed_vocabulary(tmp_path):
    """A `BertForMaskedLM` folder on the authors' vocabulary (known by its size), and the same weights behind a
    WordLevel tokenizer.json that orders its tokens differently, convert to the same embedding."""
    torch.manual_seed(0)
    bert = random_bert(k_mer=4)
    masked_lm = BertForMaskedLM(bert.config).eval()
    masked_lm.bert.load_state_dict(bert.state_dict(), strict=False)
    masked_lm.save_pretrained(tmp_path / "authors")
    barcodes = barcodes_with_edge_cases()
    expected = authors_embedding(bert, barcodes, k_mer=4)
    folder = convert(tmp_path / "authors", tmp_path / "authors-converted")
    assert np.abs(converted_embedding(folder, barcodes) - expected).max() < 1e-4

    authors = authors_vocabulary(4)
    tokens = sorted(authors, key=lambda token: token[::-1])  # another order, and another spelling of [MASK]
    order = {("<MASK>" if token == "[MASK]" else token): index for index, token in enumerate(tokens)}
    permutation = [authors[token] for token in tokens]
    with torch.no_grad():
        masked_lm.bert.embeddings.word_embeddings.weight.copy_(bert.embeddings.word_embeddings.weight[permutation])
    masked_lm.save_pretrained(tmp_path / "listed")
    tokenizer_json = {"model": {"type": "WordLevel", "vocab": order, "unk_token": "[UNK]"}}
    (tmp_path / "listed" / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    folder = convert(tmp_path / "listed", tmp_path / "listed-converted")
    assert np.abs(converted_embedding(folder, barcodes) - expected).max() < 1e-4


def test_cli_converts_and_the_folder_embeds_and_identifies(tmp_path, capsys):
    save_authors_checkpoint(tmp_path / "checkpoint.pt", "maelm")
    code, _, err = run(capsys, "convert", tmp_path / "checkpoint.pt", tmp_path / "model")
    assert code == 0 and "loads as BarcodeMAEModel + BarcodeMAETokenizer" in err, err
    code, _, err = run(
        capsys, "embed", EXAMPLES / "queries.fasta", "-o", tmp_path / "emb.npy", "--model", tmp_path / "model"
    )
    assert code == 0, err
    assert np.load(tmp_path / "emb.npy").shape[1] == SMALL_SIZES["hidden_size"]
    code, _, err = run(
        capsys,
        "identify",
        EXAMPLES / "queries.fasta",
        "--reference",
        EXAMPLES / "reference.tsv",
        "--model",
        tmp_path / "model",
        "-o",
        tmp_path / "predictions.tsv",
        "--quiet",
    )
    assert code == 0, err
    assert len((tmp_path / "predictions.tsv").read_text().splitlines()) > 1
    code, _, err = run(capsys, "convert", tmp_path / "checkpoint.pt", tmp_path / "model")
    assert code == 2 and "already exists" in err


class Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            lambda path: torch.save({"model": {}, "payload": Payload()}, path),
            "holds `print`, which only running code could rebuild",
        ),
        (lambda path: path.write_bytes(pickle.dumps(Payload())), "weights_only=True"),
        (lambda path: path.write_text("not a checkpoint"), "weights_only=True"),
        (lambda path: torch.save({"state_dict": {}}, path), "needs the entries model, bert_config and config"),
    ],
)
def test_anything_else_gets_one_clear_error(tmp_path, capsys, content, message):
    content(tmp_path / "file.pt")
    code, out, err = run(capsys, "convert", tmp_path / "file.pt", tmp_path / "model")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "unpickled code ran" not in out and not (tmp_path / "model").exists()


def test_unsupported_runs_are_refused(tmp_path, capsys):
    save_authors_checkpoint(tmp_path / "checkpoint.pt", "maelm")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    checkpoint["config"].tokenizer = "bpe"
    torch.save(checkpoint, tmp_path / "bpe.pt")
    code, _, err = run(capsys, "convert", tmp_path / "bpe.pt", tmp_path / "model")
    assert code == 2 and "only k-mer runs" in err
