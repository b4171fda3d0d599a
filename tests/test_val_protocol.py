"""scripts/val_protocol.py: the encoders it scores, including the untrained twin of --random-init."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import tiny_pretraining_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from val_protocol import encoders, prediction_file, stored_difference  # noqa: E402


def test_random_init_twin_is_seeded_and_untrained(tmp_path):
    model, tokenizer = tiny_pretraining_model(seed=1)  # "trained": not the weights of seed 0
    model.save_encoder(tmp_path / "encoder", tokenizer)
    folder = str(tmp_path / "encoder")
    (name, trained), (twin_name, twin) = encoders([folder], random_init=True)
    assert (name, twin_name) == (folder, f"{folder} random init")
    assert twin.model.config.to_dict() == trained.model.config.to_dict()
    weights, twin_weights = trained.model.state_dict(), twin.model.state_dict()
    assert any(not torch.equal(weights[key], twin_weights[key]) for key in weights)
    _, (_, again) = encoders([folder], random_init=True)
    assert all(torch.equal(twin_weights[key], value) for key, value in again.model.state_dict().items())
    assert len(encoders([folder], random_init=False)) == 1


def test_precision_reaches_the_trained_model_and_its_twin(tmp_path):
    model, tokenizer = tiny_pretraining_model(seed=1)
    model.save_encoder(tmp_path / "encoder", tokenizer)
    embedders = [embedder for _, embedder in encoders([str(tmp_path / "encoder")], True, precision="bf16")]
    assert [embedder.autocast_dtype for embedder in embedders] == [torch.bfloat16, torch.bfloat16]
    assert encoders([str(tmp_path / "encoder")], False)[0][1].autocast_dtype is None


def test_stored_rows_are_differenced_paired_and_a_missing_row_is_named(tmp_path):
    queries = SimpleNamespace(genus=["A", "A", "B", "B"], species=["a1", "a2", "b1", "b1"])
    prediction_file(tmp_path, "model").write_text('["A", "A", "B", "B"]')
    prediction_file(tmp_path, "twin").write_text('["A", "B", "B", "A"]')
    difference = stored_difference(tmp_path, "model", "twin", queries)
    assert difference["micro"] == 50.0  # 4 of 4 against 2 of 4
    assert difference["per_species"] == pytest.approx(100 * (0 + 1 + 0.5) / 3, abs=0.01)
    assert stored_difference(tmp_path, "twin", "model", queries)["micro"] == -50.0
    with pytest.raises(FileNotFoundError, match="'gone'"):
        stored_difference(tmp_path, "model", "gone", queries)
    prediction_file(tmp_path, "other queries").write_text('["A"]')
    with pytest.raises(ValueError, match="not both scored on these 4 queries"):
        stored_difference(tmp_path, "model", "other queries", queries)
