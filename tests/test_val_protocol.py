"""scripts/val_protocol.py: the encoders it scores, including the untrained twin of --random-init."""

import json
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import tiny_pretraining_model
from partitions import unseen_queries

from barcodemae.evaluation.protocol import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import val_protocol  # noqa: E402
from val_protocol import encoders, store_predictions, stored_predictions  # noqa: E402


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


def test_stored_rows_are_read_back_only_for_the_queries_they_answer(tmp_path):
    queries = unseen_queries(["ACGT", "ACGA", "TTGA", "TTGC"])
    store_predictions(tmp_path, "model", ["A", "A", "B", "B"], queries)
    store_predictions(tmp_path, "twin", ["A", "B", None, "A"], queries)
    assert stored_predictions(tmp_path, "model", queries) == ["A", "A", "B", "B"]
    assert stored_predictions(tmp_path, "twin", queries) == ["A", "B", None, "A"]  # no genus named: None, not "None"
    with pytest.raises(FileNotFoundError, match="'gone'"):
        stored_predictions(tmp_path, "gone", queries)
    reordered = unseen_queries(["ACGA", "ACGT", "TTGA", "TTGC"])  # same count, other queries
    with pytest.raises(ValueError, match="'model' was scored on other queries than these 4"):
        stored_predictions(tmp_path, "model", reordered)


def test_pair_differences_two_stored_rows_and_scores_a_row_missing_from_the_output(tmp_path, monkeypatch):
    queries = unseen_queries(["ACGT", "ACGA", "TTGA", "TTGC"])
    protocol = Protocol(train=queries, test=queries, unseen=queries, description="four queries")
    monkeypatch.setattr(val_protocol, "load_records", lambda path: ([], []))
    monkeypatch.setattr(val_protocol, "prepare_protocol", lambda records, **splits: protocol)
    predictions = tmp_path / "predictions" / "val_unseen"
    predictions.mkdir(parents=True)
    store_predictions(predictions, "model", ["A", "A", "B", "B"], queries)
    store_predictions(predictions, "twin", ["A", "B", "B", "A"], queries)
    output = tmp_path / "identification.json"
    output.write_text(json.dumps({"model": {"per_species": 100.0}}))
    argv = ["val_protocol.py", "--data", "-", "--pair", "model", "twin", "--cache-dir", str(tmp_path / "embeddings")]
    monkeypatch.setattr(sys, "argv", [*argv, "--output", str(output)])
    val_protocol.main()
    results = json.loads(output.read_text())
    difference = results["model"]["minus twin"]
    assert difference["micro"] == 50.0  # 4 of 4 against 2 of 4
    assert difference["per_species"] == pytest.approx(100 * (0 + 1 + 0.5) / 3, abs=0.01)
    assert results["twin"]["from"] == "stored predictions"
    assert results["twin"]["micro"] == 50.0
