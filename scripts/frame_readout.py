"""Genus 1-NN (val_unseen vs train) of an encoder read from each start offset 0..k-1, and of averages of them.

Each barcode is re-tokenised from ``s[j:]`` for every offset j (one-frame embeddings, whatever the folder's
``embedding_frames``); 600 `val_unseen` queries against 2,000 `train` references, de-duplicated on the barcode.

python scripts/frame_readout.py --data ../shared/data/barcodes.tsv.gz --model pretrained/barcodemae-small
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from barcodemae.embedding import Embedder, load_encoder
from barcodemae.evaluation.metrics import genus_1nn_accuracy

FRAME_SETS = ([0], [0, 1], [0, 3], [0, 1, 2], [0, 2, 4], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5])


def pooled_accuracy(frames, chosen: list[int], references, queries) -> float:
    """Genus 1-NN when references and queries are both the mean of their ``chosen`` frames' embeddings."""
    pooled_refs = np.mean([frames[j][0] for j in chosen], 0)
    pooled_queries = np.mean([frames[j][1] for j in chosen], 0)
    return genus_1nn_accuracy(pooled_queries, list(queries.genus), pooled_refs, list(references.genus))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, action="append")
    args = parser.parse_args()
    table = pd.read_csv(args.data, sep="\t", usecols=["dna_barcode", "genus", "split"])
    table = table[table.genus.notna() & (table.genus != "")].drop_duplicates("dna_barcode")
    references = table[table.split == "train"].sample(2000, random_state=0)
    queries = table[table.split == "val_unseen"].sample(600, random_state=1)
    for path in args.model:
        model, tokenizer = load_encoder(path, "cpu")
        model.config.embedding_frames = 1
        embed = Embedder(model, tokenizer, batch_size=128, precision="fp32")
        frames = [
            (embed([s[j:] for s in references.dna_barcode]), embed([s[j:] for s in queries.dna_barcode]))
            for j in range(model.config.k_mer)
        ]

        singles = ", ".join(
            f"{j}: {pooled_accuracy(frames, [j], references, queries):.1f}" for j in range(model.config.k_mer)
        )
        pooled = ", ".join(
            f"{{{','.join(map(str, s))}}}: {pooled_accuracy(frames, s, references, queries):.1f}" for s in FRAME_SETS
        )
        print(f"{path}\n  single frames  {singles}\n  averaged       {pooled}", flush=True)


if __name__ == "__main__":
    main()
