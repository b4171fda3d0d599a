"""Helpers for the command-line tests: a tiny exported encoder and running ``barcodemae.cli.main`` in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tiny_models import tiny_config

from barcodemae.cli import main
from barcodemae.embedding import load_encoder
from modeling_barcodemae import BarcodeMAEForPreTraining
from tokenization_barcodemae import BarcodeMAETokenizer

MAX_BASES = 200  # the tiny tokenizer reads 50 tokens of 4-mers


def tiny_pretraining_model(seed: int = 0) -> tuple[BarcodeMAEForPreTraining, BarcodeMAETokenizer]:
    torch.manual_seed(seed)
    return BarcodeMAEForPreTraining(tiny_config()).eval(), BarcodeMAETokenizer(k_mer=4, model_max_length=50)


def export_tiny_encoder(folder: Path) -> Path:
    """An untrained tiny encoder exported as a Hub folder (its mean-pooled embeddings behave like k-mer counts)."""
    model, tokenizer = tiny_pretraining_model()
    model.save_encoder(folder, tokenizer)
    return folder


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``barcodemae ARGS`` run in-process."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference_embeddings(model_dir: Path, sequences: list[str]) -> np.ndarray:
    """Mean-pooled embeddings computed directly with the model (no CLI), for comparison."""
    model, tokenizer = load_encoder(model_dir, "cpu")
    with torch.no_grad():
        batch = tokenizer(sequences, padding=True, truncation=True, return_tensors="pt")
        return model(**batch).pooler_output.numpy()


def files_in(folder: Path) -> list[str]:
    """All names in ``folder``, hidden temporary files included."""
    return sorted(path.name for path in folder.iterdir())
