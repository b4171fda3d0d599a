"""`barcodemae embed` end to end on simulated files, the console entry point, and the `evaluate` wiring."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import export_tiny_encoder, reference_embeddings, run

from barcodemae import evaluation
from barcodemae.io import read_embeddings
from barcodemae.simulate import simulate_barcodes, write_fasta, write_tsv


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return export_tiny_encoder(tmp_path_factory.mktemp("model") / "tiny-encoder")


@pytest.fixture(scope="module")
def small_records() -> list[dict]:
    """24 simulated records of 200 bases (what the tiny model reads in full)."""
    return simulate_barcodes(1, 1, 2, 3, 4, length=200, seed=3)


def test_embed_npy_streams_in_chunks_in_input_order(tmp_path, capsys, tiny_encoder, small_records):
    source = write_tsv(small_records, tmp_path / "barcodes.tsv")
    out = tmp_path / "emb.npy"
    args = ["embed", source, "-o", out, "--model", tiny_encoder, "--chunk-size", 7, "--batch-size", 3, "--threads", 1]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    ids = (tmp_path / "emb.ids.txt").read_text().splitlines()
    assert ids == [record["processid"] for record in small_records]
    embeddings = np.load(out)
    assert embeddings.dtype == np.float32 and embeddings.shape == (24, 32)
    expected = reference_embeddings(tiny_encoder, [record["dna_barcode"] for record in small_records])
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    assert "read 24 records" in err and "kept 24, skipped 0" in err
    assert sorted(os.listdir(tmp_path)) == ["barcodes.tsv", "emb.ids.txt", "emb.npy"]


def test_embed_formats_agree(tmp_path, capsys, tiny_encoder, small_records):
    source = write_fasta(small_records, tmp_path / "barcodes.fasta")
    results = {}
    for suffix in (".npy", ".parquet", ".safetensors"):
        out = tmp_path / f"emb{suffix}"
        code, _, err = run(capsys, "embed", source, "-o", out, "--model", tiny_encoder, "--quiet", "--chunk-size", 10)
        assert code == 0, err
        results[suffix] = read_embeddings(out)
    ids, npy = results[".npy"]
    assert ids == [record["processid"] for record in small_records]
    for suffix in (".parquet", ".safetensors"):
        assert results[suffix][0] == ids
        np.testing.assert_array_equal(results[suffix][1], npy)


def test_console_entry_point_reports_errors_without_traceback(tmp_path):
    """The installed-style entry point (`python -m barcodemae.cli`): exit 2 and one error line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    missing = tmp_path / "missing.fasta"
    completed = subprocess.run(
        [sys.executable, "-m", "barcodemae.cli", "embed", str(missing), "-o", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [f"barcodemae: error: {missing}: input file not found"]
    assert os.listdir(tmp_path) == []


def test_evaluate_calls_run_evaluation(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluation, "run_evaluation", lambda **kwargs: calls.append(kwargs), raising=False)
    args = ["evaluate", "--model", "a", "--model", "b", "--data", "d.tsv", "--output", tmp_path, "--no-plots"]
    code, _, err = run(capsys, *args, "--baselines", "kmer, random")
    assert code == 0, err
    assert calls == [
        {
            "models": ["a", "b"],
            "data": "d.tsv",
            "output": str(tmp_path),
            "plots": False,
            "baselines": ["kmer", "random"],
            "unseen_split": "test_unseen",
            "seen_split": "test",
            "max_seen_rows": None,
            "max_unseen_rows": None,
            "robustness_queries": 2000,
            "cache_dir": ".cache/embeddings",
            "workers": 1,
        }
    ]


def test_help_does_not_import_torch():
    """``barcodemae --help`` and usage errors answer without loading torch or transformers (seconds on a CPU)."""
    code = "import sys; from barcodemae import cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_chunk_size_default_is_the_library_default():
    """The CLI spells the default out (its imports stay light for --help); it must be the library's."""
    from barcodemae.cli import build_parser
    from barcodemae.embedding import DEFAULT_CHUNK

    for command in (["embed"], ["identify", "--index", "index"]):
        args = build_parser().parse_args([*command, "in.fasta", "-o", "out.tsv"])
        assert args.chunk_size == DEFAULT_CHUNK, command
