"""Write the small simulated example files used by the README quickstart (examples/).

    python scripts/make_examples.py

reference.tsv: a BIOSCAN-style table of simulated barcodes (taxonomy + dna_barcode); queries.fasta: new specimens
of reference species plus specimens of two species held out of the reference (they should be flagged novel), with
a few real-world defects (lower case, gaps, an N run, an empty record).
"""

from pathlib import Path

import numpy as np

from barcodemae.simulate import BarcodeNoise, apply_noise, simulate_barcodes, write_fasta, write_tsv

OUT = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    records = simulate_barcodes(
        n_orders=2,
        families_per_order=2,
        genera_per_family=3,
        species_per_genus=3,
        specimens_per_species=6,
        seed=42,
        end_variation=4,
    )
    held_out = {records[0]["species"], records[-1]["species"]}
    by_species: dict[str, list[dict]] = {}
    for record in records:
        by_species.setdefault(record["species"], []).append(record)
    reference, queries = [], []
    for species, rows in by_species.items():
        if species in held_out:
            queries += rows[:2]
        else:
            reference += rows[:-1]
            queries.append(rows[-1])
    rng = np.random.default_rng(0)
    noisy = BarcodeNoise(lowercase=0.3, gaps=0.3, inner_n=0.2)
    queries = [{**q, "dna_barcode": apply_noise(q["dna_barcode"], noisy, rng)} for q in queries[::3]]
    queries.append({"processid": "EMPTY001", "dna_barcode": ""})
    OUT.mkdir(exist_ok=True)
    write_tsv(reference, OUT / "reference.tsv", split_column=False)
    write_fasta(queries, OUT / "queries.fasta")
    print(f"{len(reference)} reference barcodes, {len(queries)} queries -> {OUT}")


if __name__ == "__main__":
    main()
