"""How well the best cosine similarity tells a novel species from a novel genus, on the reference and on val.

On the reference (leave-out, the calibration rows of ``barcodemae.assign``): each row's nearest reference with its
species left out against with its genus left out. On the open-set queries (``benchmarks/openset.py``'s work
folder): novel-species against novel-genus queries, by their best similarity and by that similarity minus a
per-family offset (the midpoint of the family's median leave-species-out and leave-genus-out similarities on the
reference; the global midpoint for families with fewer than 4 calibration rows). ROC AUC each.

    barcodemae identify --reference runs/openset-work/reference.tsv --save-index runs/openset-index
    python scripts/depth_signal.py --index runs/openset-index --work runs/openset-work
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from barcodemae.assign import calibration_rows, leave_out_neighbors
from barcodemae.reference import ReferenceIndex

MIN_FAMILY_ROWS = 4


def auc(positive: list[float] | np.ndarray, negative: list[float] | np.ndarray) -> float:
    labels = [1] * len(positive) + [0] * len(negative)
    return round(float(roc_auc_score(labels, np.r_[positive, negative])), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, help="index folder of the open-set reference")
    parser.add_argument("--work", required=True, help="benchmarks/openset.py --work folder (truth.tsv, ours-0.tsv)")
    parser.add_argument("--predictions", default="ours-0.tsv", help="identify's TSV in --work")
    args = parser.parse_args()

    index = ReferenceIndex.load(args.index)
    taxonomy, embeddings = index.taxonomy, np.asarray(index.row_embeddings, dtype=np.float32)
    rows = calibration_rows(taxonomy)
    species_out = leave_out_neighbors(embeddings, taxonomy, rows, "species", 1)[1][:, 0]
    genus_out = leave_out_neighbors(embeddings, taxonomy, rows, "genus", 1)[1][:, 0]
    family = taxonomy.codes["family"][rows]
    midpoint = 0.5 * (np.median(species_out) + np.median(genus_out))
    offsets = {
        code: 0.5 * (np.median(species_out[family == code]) + np.median(genus_out[family == code]))
        for code in np.unique(family[family >= 0])
        if (family == code).sum() >= MIN_FAMILY_ROWS
    }
    family_code = {name: code for code, name in enumerate(taxonomy.names["family"])}

    work = Path(args.work)
    with (work / "truth.tsv").open() as handle:
        truth = {row["query_id"]: row for row in csv.DictReader(handle, delimiter="\t")}
    similarity: dict[str, list[float]] = {"novel_species": [], "novel_genus": []}
    shifted: dict[str, list[float]] = {"novel_species": [], "novel_genus": []}
    with (work / args.predictions).open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            query = truth[row["query_id"]]
            if query["excluded"] or query["group"] not in similarity:
                continue
            best = float(row["cosine_similarity"])
            offset = offsets.get(family_code.get(row["predicted_family"], -1), midpoint)
            similarity[query["group"]].append(best)
            shifted[query["group"]].append(best - offset)
    print(f"reference, leave species out vs leave genus out: AUC {auc(species_out, genus_out)}")
    print(f"val, novel species vs novel genus, best similarity: AUC {auc(*similarity.values())}")
    print(f"val, novel species vs novel genus, minus the family offset: AUC {auc(*shifted.values())}")


if __name__ == "__main__":
    main()
