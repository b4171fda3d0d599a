"""Encoder-only export: loads offline in a fresh process through the Auto classes, without decoder weights."""

import json
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors import safe_open
from tiny_models import tiny_config
from transformers import AutoModel

from modeling_barcodemae import BarcodeMAEForPreTraining
from tokenization_barcodemae import BarcodeMAETokenizer

SEQUENCES = ["ACGTTGCAAGCTAGCTAGGATCCATGCAAGTCGATCGATCGGATCA", "ttgaccagtaggcatcagNNNNagtcagcatcgatgcatgc"]

LOAD_SCRIPT = """
import sys, numpy as np, torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
batch = tokenizer(sys.argv[3:], padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    np.save(sys.argv[2], model(**batch).pooler_output.numpy())
print(type(model).__name__, type(tokenizer).__name__)
"""


def test_export_loads_offline_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = BarcodeMAEForPreTraining(tiny_config()).eval()
    tokenizer = BarcodeMAETokenizer(k_mer=4, model_max_length=50)
    out_dir = tmp_path / "encoder"
    model.save_encoder(out_dir, tokenizer)

    names = set(os.listdir(out_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"configuration_barcodemae.py", "modeling_barcodemae.py", "tokenization_barcodemae.py"} <= names
    config = json.loads((out_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_barcodemae.BarcodeMAEModel"
    assert "AutoModelForPreTraining" not in config["auto_map"]
    with safe_open(out_dir / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and not any(key.startswith(("decoder", "lm_head", "barcodemae.")) for key in keys)

    expected = model.barcodemae(**tokenizer(SEQUENCES, padding=True, return_tensors="pt")).pooler_output
    result = tmp_path / "embeddings.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(out_dir), str(result), *SEQUENCES],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "BarcodeMAEModel BarcodeMAETokenizer" in completed.stdout
    np.testing.assert_allclose(np.load(result), expected.detach().numpy(), atol=1e-6)
    assert model.config.auto_map.get("AutoModelForPreTraining")  # the pretraining config is left as it was


def test_rotary_model_reloads_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = BarcodeMAEForPreTraining(tiny_config(position_embedding_type="rotary")).eval()
    tokenizer = BarcodeMAETokenizer(k_mer=4, model_max_length=50)
    model.save_encoder(tmp_path, tokenizer)
    batch = tokenizer(SEQUENCES, padding=True, return_tensors="pt")
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).pooler_output, model.barcodemae(**batch).pooler_output)
