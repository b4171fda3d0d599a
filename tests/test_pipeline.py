"""`transformers.pipeline("feature-extraction")` on an exported folder gives the model's per-token features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import export_tiny_encoder
from transformers import AutoModel, AutoTokenizer, pipeline


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return export_tiny_encoder(tmp_path_factory.mktemp("model") / "tiny-encoder")


SEQUENCES = [
    "ACGTTGCAAGCTAGCTAGGATCCATGCAAGTCGATCGATCGGATCA",
    "ttgaccagtaggcatcagNNNNagtcagcatcgatgcatgcNNN",  # lower case and N: normalised by the tokenizer
    "ACGT" * 60,  # 240 bases: longer than the 200 the model reads
]


def test_feature_extraction_pipeline_matches_the_model(tiny_encoder):
    extractor = pipeline(
        "feature-extraction", model=str(tiny_encoder), trust_remote_code=True, tokenize_kwargs={"truncation": True}
    )
    model = AutoModel.from_pretrained(tiny_encoder, trust_remote_code=True, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder, trust_remote_code=True, local_files_only=True)
    for sequence in SEQUENCES:
        features = np.asarray(extractor(sequence))
        with torch.no_grad():
            output = model(**tokenizer([sequence], truncation=True, return_tensors="pt"))
        assert features.shape == tuple(output.last_hidden_state.shape)
        np.testing.assert_allclose(features, output.last_hidden_state.numpy(), atol=1e-6)
        np.testing.assert_allclose(features[0].mean(0), output.pooler_output[0].numpy(), atol=1e-5)
    assert np.asarray(extractor(SEQUENCES[2])).shape[1] == 50  # truncated to model_max_length tokens


def test_embedder_uses_the_models_frame_pooled_readout(tmp_path):
    from barcodemae.embedding import Embedder
    from barcodemae.hub import export_checkpoint

    encoder = export_tiny_encoder(tmp_path / "one-frame")
    pooled = export_checkpoint(encoder, tmp_path / "four-frames", embedding_frames=4)
    model = AutoModel.from_pretrained(pooled, trust_remote_code=True, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(pooled, trust_remote_code=True, local_files_only=True)
    with torch.no_grad():
        expected = model(**tokenizer(SEQUENCES, padding=True, truncation=True, return_tensors="pt")).pooler_output
    embedded = Embedder.from_pretrained(pooled, device="cpu", batch_size=2)(SEQUENCES)
    np.testing.assert_allclose(embedded, expected.numpy(), atol=1e-5)
    one_frame = Embedder.from_pretrained(encoder, device="cpu")(SEQUENCES)
    assert not np.allclose(embedded, one_frame, atol=1e-3)
