"""A tiny model pretrained for a few hundred steps learns: masked-token loss falls well below a uniform guess."""

import math

import pytest
import torch
from tiny_models import tiny_config

from barcodemae.simulate import simulate_barcodes
from modeling_barcodemae import BarcodeMAEForPreTraining
from tokenization_barcodemae import BarcodeMAETokenizer


@pytest.mark.parametrize("objective", ["mae", "mlm"])
def test_pretraining_drives_masked_loss_below_uniform_guess(objective):
    torch.manual_seed(0)
    records = simulate_barcodes(n_orders=1, families_per_order=1, genera_per_family=2, species_per_genus=2, seed=1)
    tokenizer = BarcodeMAETokenizer(k_mer=4, model_max_length=50)
    batch = tokenizer([r["dna_barcode"] for r in records], truncation=True, padding=True, return_tensors="pt")
    config = tiny_config(objective=objective, hidden_size=64, intermediate_size=128, decoder_hidden_size=32)
    model = BarcodeMAEForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    uniform_loss = math.log(config.vocab_size - config.first_kmer_id)
    for _ in range(250):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = torch.stack([model(**batch).loss for _ in range(5)]).mean()
    assert final < 0.5 * uniform_loss, (objective, float(final), uniform_loss)
