"""Genus 1-NN (val_unseen vs train) and health of mean-pooled embeddings from every layer of encoders.

python scripts/layer_readout.py --data ../shared/data/barcodes.tsv.gz --model runs/x/checkpoint-300 [--random]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from transformers import AutoModel

from barcodemae.data import read_barcodes
from barcodemae.evaluation.clustering import effective_rank
from barcodemae.evaluation.metrics import genus_1nn_accuracy
from tokenization_barcodemae import BarcodeMAETokenizer


def sample(records, split, n, seed):
    rows = [r for r in records if r.metadata.get("split") == split and r.metadata.get("genus")]
    unique = list({r.sequence: r for r in rows}.values())
    order = np.random.default_rng(seed).permutation(len(unique))[:n]
    return [unique[i].sequence for i in order], [unique[i].metadata["genus"] for i in order]


@torch.inference_mode()
def layer_embeddings(model, tokenizer, sequences, batch_size=128):
    layers = None
    for start in range(0, len(sequences), batch_size):
        batch = tokenizer(sequences[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch, output_hidden_states=True).hidden_states
        weights = batch["attention_mask"].unsqueeze(-1).float()
        pooled = [((h * weights).sum(1) / weights.sum(1)).numpy() for h in hidden]
        layers = pooled if layers is None else [np.concatenate([a, b]) for a, b in zip(layers, pooled)]
    return layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--random", action="store_true", help="also a random-init encoder of the first model's size")
    parser.add_argument("--references", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    records, _ = read_barcodes(args.data)
    ref_seqs, ref_genus = sample(records, "train", args.references, 0)
    query_seqs, query_genus = sample(records, "val_unseen", args.queries, 1)
    models = {path: AutoModel.from_pretrained(path, trust_remote_code=True).eval() for path in args.model}
    if args.random:
        torch.manual_seed(0)
        first = next(iter(models.values()))
        models["random-init"] = type(first)(first.config).eval()
    results = {}
    for name, model in models.items():
        tokenizer = BarcodeMAETokenizer(k_mer=model.config.k_mer)
        refs = layer_embeddings(model, tokenizer, ref_seqs)
        queries = layer_embeddings(model, tokenizer, query_seqs)
        results[name] = [
            {
                "layer": index,
                "genus_1nn": round(genus_1nn_accuracy(q, query_genus, r, ref_genus), 2),
                "genus_1nn_centred": round(genus_1nn_accuracy(q - r.mean(0), query_genus, r - r.mean(0), ref_genus), 2),
                "effective_rank": round(effective_rank(q), 1),
            }
            for index, (r, q) in enumerate(zip(refs, queries))
        ]
        print(name, json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
