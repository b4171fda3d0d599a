"""Shared fixtures: a small simulated barcode data set (240 records) and the files it is written to."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

from barcodemae.simulate import simulate_barcodes, with_splits, write_fasta, write_tsv

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@cache
def _simulated_records() -> list[dict]:
    return with_splits(simulate_barcodes(seed=0), seed=0)


@pytest.fixture
def simulated_records() -> list[dict]:
    """240 clean simulated records (2 orders, 4 families, 12 genera, 48 species, 5 specimens each) with splits, built
    once per test run and shared: copy them (the ``records`` fixture) before changing them."""
    return _simulated_records()


@pytest.fixture
def records(simulated_records) -> list[dict]:
    """A fresh copy of the simulated records, safe to modify in a test."""
    return [dict(record) for record in simulated_records]


@pytest.fixture
def tsv_file(tmp_path, simulated_records) -> Path:
    """The simulated records as a BIOSCAN-5M-style TSV (with a split column)."""
    return write_tsv(simulated_records, tmp_path / "barcodes.tsv")


@pytest.fixture
def fasta_file(tmp_path, simulated_records) -> Path:
    """The simulated records as FASTA (``>processid|species``, 60 bases a line)."""
    return write_fasta(simulated_records, tmp_path / "barcodes.fasta")


@pytest.fixture
def write_text(tmp_path):
    """Write a hand-made file into tmp_path: ``write_text("name.tsv", text)`` -> path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8", newline="")
        return path

    return write
