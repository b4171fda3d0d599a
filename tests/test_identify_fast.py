"""`identify`'s fast paths: the bag readout without the model, identical barcodes searched once, a quiet start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run
from tiny_models import tiny_config

from barcodemae.data import BarcodeRecord
from barcodemae.embedding import Embedder, KmerBagEmbedder, load_embedder, load_encoder
from barcodemae.identify import answer, read_predictions
from barcodemae.kmers import normalize_barcode
from barcodemae.reference import ReferenceIndex, build_index
from barcodemae.search import FlatIndex, GroupedSearcher
from barcodemae.simulate import simulate_barcodes, write_fasta, write_tsv
from modeling_barcodemae import BarcodeMAEForPreTraining
from tokenization_barcodemae import BarcodeMAETokenizer
from tokenization_barcodemae import normalize_barcode as tokenizer_normalize

ROOT = Path(__file__).resolve().parents[1]
MESSY = [
    "acgtNNacgtacgtacgtnnACGTU-ACG.TTTTGCA",  # lower case, N, U, gaps
    "ACGT",  # one token
    "ACG",  # none
    "NNNNACGTACGTACGTNNNN",  # leading and trailing N
    "ACGTACGTRYACGTACGTACGGTA",  # IUPAC codes: [UNK] tokens, and the k-mers across them dropped
    "A" * 150 + "C" * 80,  # longer than the model reads
    "ACGTAC GTACGT\nACGTAA",
]


def export_bag_encoder(folder: Path, readout: str = "kmer_bag") -> Path:
    torch.manual_seed(0)
    BarcodeMAEForPreTraining(tiny_config(readout=readout)).save_encoder(
        folder, BarcodeMAETokenizer(k_mer=4, model_max_length=50)
    )
    return folder


@pytest.fixture(scope="module")
def bag_encoder(tmp_path_factory) -> Path:
    return export_bag_encoder(tmp_path_factory.mktemp("bag") / "bag-encoder")


def simulated(count: int = 400) -> list[str]:
    records = simulate_barcodes(1, 2, 2, 4, 5, length=220, seed=3, end_variation=3)
    return [r["dna_barcode"] for r in records][:count]


def test_normalize_is_the_tokenizers():
    for sequence in [*MESSY, "acgu", "ACGTN", "NNN", "", " a-c.g\tt u "]:
        assert normalize_barcode(sequence) == tokenizer_normalize(sequence)


def test_bag_embedder_equals_automodel_pooler_output(bag_encoder):
    model, tokenizer = load_encoder(bag_encoder, "cpu")
    sequences = [*MESSY, *simulated(60)]
    with torch.no_grad():
        batch = tokenizer(sequences, padding=True, truncation=True, return_tensors="pt")
        expected = model(**batch).pooler_output.numpy()
    light = load_embedder(bag_encoder)
    assert isinstance(light, KmerBagEmbedder)
    np.testing.assert_allclose(light(sequences), expected, rtol=1e-5, atol=1e-6)
    full = Embedder(model, tokenizer)
    assert light.fingerprint() == full.fingerprint() and light.limits == full.limits == (200, 4)
    model.get_input_embeddings().weight.data[7] += 1e-3  # another table: another fingerprint
    assert Embedder(model, tokenizer).fingerprint() != light.fingerprint()


def test_other_readouts_load_the_whole_model(tmp_path):
    assert isinstance(load_embedder(export_bag_encoder(tmp_path / "mean", readout="mean")), Embedder)
    assert isinstance(load_embedder(export_bag_encoder(tmp_path / "bag"), precision="bf16"), Embedder)


def brute_force(rows: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar rows, lowest row first among equal similarities."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


class BruteForce:
    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, queries, k: int = 1):
        return brute_force(self.rows, np.asarray(queries, dtype=np.float64), k)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_grouped_search_equals_a_search_over_every_row(k):
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(30, 8)).astype(np.float32)
    groups = np.concatenate([np.arange(30), rng.integers(0, 30, size=25), [4] * 12])  # copies, one barcode 14 times
    rng.shuffle(groups)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    found, sims = GroupedSearcher(FlatIndex(distinct), groups).search(queries, k)
    expected, expected_sims = brute_force(distinct[groups].astype(np.float64), queries.astype(np.float64), k)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_deduplicated_index_answers_as_the_index_of_every_row(tmp_path, bag_encoder):
    """Copies of reference barcodes, some under other species labels: the index stores each barcode once and
    answers, votes and calibrates as an index of every row searched exactly."""
    records = simulate_barcodes(1, 2, 3, 4, 6, length=200, seed=2, end_variation=3)
    reference = [r for i, r in enumerate(records) if i % 6 != 5]
    queries = [r for i, r in enumerate(records) if i % 6 == 5]
    species = sorted({r["species"] for r in reference})
    copies = [
        {**r, "processid": f"COPY{i}", "species": species[i % len(species)] if i % 3 == 0 else r["species"]}
        for i, r in enumerate(reference[::4])
    ]
    reference_file = write_tsv(reference + copies, tmp_path / "reference.tsv")
    embedder = load_embedder(bag_encoder)
    index, _ = build_index(reference_file, embedder, str(bag_encoder), search="exact", progress=False)
    assert index.groups is not None and len(index.embeddings) < len(index.ids) == len(reference) + len(copies)

    rows = ReferenceIndex(index.row_embeddings, index.ids, index.labels, index.model, 0.0)
    rows.calibrate()
    assert (rows.threshold, rows.calibration) == (index.threshold, index.calibration)
    assert rows.confidence.weights == index.confidence.weights

    chunk = [BarcodeRecord(r["processid"], r["dna_barcode"], {}, 0) for r in queries + reference[:5]]
    embeddings = embedder([record.sequence for record in chunk])
    ours = answer(index.searcher(), embeddings, chunk, index, 5, "none", 10, None)
    every_row = answer(BruteForce(rows.embeddings), embeddings, chunk, rows, 5, "none", 10, None)
    # the same neighbours up to the order of near-ties (simulated barcodes differ by few k-mers)
    np.testing.assert_allclose(ours.scores["cosine_similarity"], every_row.scores["cosine_similarity"], atol=1e-5)
    assert ours.labels == every_row.labels and ours.assigned == every_row.assigned
    for rank in ours.confidences:
        np.testing.assert_allclose(ours.confidences[rank], every_row.confidences[rank], atol=1e-4)  # float32

    index.save(tmp_path / "index")
    loaded = ReferenceIndex.load(tmp_path / "index", with_sequences=True)
    np.testing.assert_array_equal(loaded.groups, index.groups)
    assert loaded.sequences == index.sequences and loaded.ids == index.ids
    again = answer(loaded.searcher(), embeddings, chunk, loaded, 5, "none", 10, None)
    np.testing.assert_array_equal(again.neighbors, ours.neighbors)


def test_quiet_identify_with_repeated_queries(tmp_path, capsys, bag_encoder):
    """Identical queries get identical answers; --quiet prints no progress bar and no summary (the tiny encoder
    with a mean readout goes through transformers, whose "Loading weights" bar is the one to silence)."""
    model = export_bag_encoder(tmp_path / "mean", readout="mean")
    records = simulate_barcodes(1, 1, 2, 3, 4, length=200, seed=4)
    reference = write_tsv(records[::2], tmp_path / "reference.tsv")
    queries = [*records[1::2], *({**r, "processid": f"again-{r['processid']}"} for r in records[1::2])]
    out = tmp_path / "out.tsv"
    capsys.readouterr()  # the export's own output
    for folder in (model, bag_encoder):
        code, stdout, err = run(
            capsys, "identify", write_fasta(queries, tmp_path / "q.fasta"), "--reference", reference, "-o", out,
            "--model", folder, "--quiet", "--novel-threshold", "0.9",
        )  # fmt: skip
        assert code == 0 and stdout == "" and err == "", err
        rows = {row["query_id"]: row for row in read_predictions(out)}
        assert len(rows) == len(queries)
        for record in records[1::2]:
            first, again = rows[record["processid"]], rows[f"again-{record['processid']}"]
            assert {**first, "query_id": ""} == {**again, "query_id": ""}


def test_identify_with_a_bag_model_imports_neither_torch_nor_transformers(tmp_path, bag_encoder):
    records = simulate_barcodes(1, 1, 2, 3, 4, length=200, seed=5)
    reference = write_tsv(records[::2], tmp_path / "reference.tsv")
    queries = write_fasta(records[1::2], tmp_path / "q.fasta")
    index = tmp_path / "index"
    script = (
        "import sys; from barcodemae.cli import main\n"
        f"assert main(['identify', '--reference', {str(reference)!r}, '--save-index', {str(index)!r}, "
        f"'--model', {str(bag_encoder)!r}, '--quiet', '--novel-threshold', '0.9']) == 0\n"
        f"assert main(['identify', {str(queries)!r}, '--index', {str(index)!r}, '-o', "
        f"{str(tmp_path / 'out.tsv')!r}, '--quiet']) == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(read_predictions(tmp_path / "out.tsv")) == len(records[1::2])
