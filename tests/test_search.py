"""`barcodemae.search`: exact and approximate cosine k-NN behind one interface, alignment re-ranking."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from barcodemae import search
from barcodemae.search import (
    ANN_MIN_REFERENCES,
    AnnIndex,
    CosineIndex,
    alignment_identity,
    l2_normalize_array,
    rerank_by_alignment,
    resolve_method,
    top_columns,
)


def clustered(n_clusters: int, per_cluster: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Tight clusters (like the specimens of species), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    return (np.repeat(centres, per_cluster, axis=0) + 0.1 * rng.normal(size=(n_clusters * per_cluster, dim))).astype(
        np.float32
    )


def test_ann_finds_the_exact_nearest_neighbour_of_clustered_queries():
    refs = clustered(100, 20)
    queries = clustered(100, 20, seed=1)[::7] * 3.0  # other points of the same clusters, not unit length
    exact_idx, exact_sim = CosineIndex(refs).search(queries, k=5)
    ann_idx, ann_sim = AnnIndex.build(refs).search(queries, k=5)
    assert ann_idx.shape == (len(queries), 5) and ann_idx.dtype == np.int64 and ann_sim.dtype == np.float32
    assert np.mean(ann_idx[:, 0] == exact_idx[:, 0]) >= 0.99
    np.testing.assert_allclose(ann_sim[:, 0], exact_sim[:, 0], atol=1e-5)
    assert (np.diff(ann_sim, axis=1) <= 1e-6).all()  # sorted by similarity


def test_ann_always_returns_k_neighbours_and_survives_a_round_trip(tmp_path):
    refs = clustered(50, 4)
    index = AnnIndex.build(refs, lists=50, probes=1)  # one probed cluster holds ~4 references: fewer than k
    indices, _ = index.search(refs[:10], k=12)
    assert (indices >= 0).all() and all(len(set(row)) == 12 for row in indices)
    index.save(tmp_path / "ann.safetensors")
    again = AnnIndex.load(tmp_path / "ann.safetensors")
    assert len(again) == len(refs)
    np.testing.assert_array_equal(again.search(refs[:10], k=3)[0], index.search(refs[:10], k=3)[0])
    with pytest.raises(ValueError, match=r"queries must be \(Q, 32\)"):
        index.search(refs[:2, :8])


def test_search_method_choice():
    assert resolve_method("auto", ANN_MIN_REFERENCES - 1) == "exact"
    assert resolve_method("auto", ANN_MIN_REFERENCES) == "ann"
    assert resolve_method("exact", 10**7) == "exact" and resolve_method("ann", 3) == "ann"
    with pytest.raises(ValueError, match="exact, ann, auto"):
        resolve_method("hnsw", 10)


def test_missing_optional_libraries_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setitem(sys.modules, "edlib", None)
    with pytest.raises(ImportError, match=r"barcodemae\[ann\]"):
        AnnIndex.build(clustered(5, 4))
    with pytest.raises(ImportError, match=r"barcodemae\[ann\]"):
        resolve_method("ann", 10)  # refused before anything is embedded
    assert resolve_method("auto", ANN_MIN_REFERENCES) == "exact"  # auto falls back to exact search
    with pytest.raises(ImportError, match=r"barcodemae\[align\]"):
        alignment_identity("ACGT", "ACGT")


def test_alignment_identity_frees_overhanging_ends_only():
    barcode = "ACGTTGCAAGTCCATGGATC"
    assert alignment_identity(barcode, "TT" + barcode + "G") == 1.0  # shorter inside the longer: ends free
    assert alignment_identity(barcode[:10] + "A" + barcode[11:], barcode) == pytest.approx(19 / 20)
    assert alignment_identity(barcode[:10] + barcode[11:], barcode) == pytest.approx(1 - 1 / 19)  # an inner gap
    assert alignment_identity("", barcode) == 0.0


def test_rerank_orders_candidates_by_identity_then_cosine():
    query = "ACGTTGCAAGTCCATGGATC"
    references = ["TTTTTTTTTTTTTTTTTTTT", query[:-1] + "A", query, query]
    indices = np.array([[0, 1, 2, 3]])
    cosine = np.array([[0.9, 0.8, 0.6, 0.7]], dtype=np.float32)
    order, similarities, identity = rerank_by_alignment([query], references, indices, cosine)
    assert order.tolist() == [[3, 2, 1, 0]]  # equal identity: the higher cosine first
    np.testing.assert_allclose(similarities, [[0.7, 0.6, 0.8, 0.9]])
    np.testing.assert_allclose(identity[0, :3], [1.0, 1.0, 0.95])


def test_ann_probes_grow_with_the_lists():
    """48 probes, or a 30th of the lists when that is more (recall@1 at 1M references fell to 0.975 with 32)."""
    refs = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    assert AnnIndex.build(refs, lists=60).probes == 48
    assert AnnIndex.build(refs, lists=1500, probes=None).probes == 50
    assert AnnIndex.build(np.tile(refs, (2, 1)), lists=2400).probes == 80
    assert AnnIndex.build(refs, lists=20).probes == 20  # never more probes than lists


def test_bf16_first_pass_returns_the_float32_search(monkeypatch):
    # half the queries sit among near-duplicates (spread 1e-4, below bf16's rounding) that the first pass cannot
    # tell apart, so those rows must be searched again in float32; the others are clear of their neighbours
    rng = np.random.default_rng(3)
    loose = clustered(60, 50, seed=4)
    tight = np.repeat(rng.normal(size=(20, 32)), 50, axis=0) + 1e-4 * rng.normal(size=(1000, 32))
    refs = np.concatenate([loose, tight]).astype(np.float32)
    queries = np.concatenate([clustered(60, 50, seed=5)[::25], tight[::25] + 1e-4 * rng.normal(size=(40, 32))])
    exact, fast = (CosineIndex(refs, precision=p, reference_chunk=1000) for p in ("fp32", "bf16"))  # same chunks: the
    # float32 pass rounds near-ties the same way
    assert fast.bf16 and not exact.bf16
    again = []
    float32_pass = fast._search_block
    monkeypatch.setattr(fast, "_search_block", lambda block, k: again.append(len(block)) or float32_pass(block, k))
    for k in (1, 5):
        (want_idx, want_sim), (got_idx, got_sim) = exact.search(queries, k=k), fast.search(queries, k=k, chunk_size=64)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_allclose(got_sim, want_sim, atol=1e-6)
    assert 0 < sum(again) < 2 * len(queries)  # both kinds of rows occurred


def test_bf16_first_pass_ties_and_choice():
    refs = np.ones((300, 4), dtype=np.float32)
    indices, sims = CosineIndex(refs, precision="bf16", reference_chunk=64).search(np.ones((3, 4)), k=1)
    assert (indices == 0).all() and np.allclose(sims, 1.0)
    assert not CosineIndex(refs).bf16  # below BF16_MIN_REFERENCES one float32 pass is used
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        CosineIndex(refs, precision="fp16")


def test_ann_scan_equals_faiss_ivf_over_the_same_lists_at_any_batch_size():
    """The batch-wide list-major scan returns what faiss's IndexIVFFlat returns with the same lists and probes."""
    faiss = pytest.importorskip("faiss")
    refs = clustered(60, 30)
    ann = AnnIndex.build(refs, lists=40, probes=5)
    quantizer = faiss.IndexFlatIP(refs.shape[1])
    quantizer.add(np.ascontiguousarray(ann.centroids))
    ivf = faiss.IndexIVFFlat(quantizer, refs.shape[1], 40, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained, ivf.nprobe = True, 5
    ivf.add(l2_normalize_array(refs))
    queries = clustered(60, 30, seed=2)[::3]
    for batch in (queries[:1], queries[:7], queries):
        indices, similarities = ann.search(batch, k=4)
        expected_sims, expected = ivf.search(l2_normalize_array(batch), 4)
        np.testing.assert_allclose(similarities, expected_sims, atol=1e-5)
        assert np.mean(indices == expected) > 0.99  # equal but for ties


def test_ann_scan_is_the_same_on_one_thread_or_several_and_load_checks_the_lists(tmp_path, monkeypatch):
    refs = clustered(80, 10)
    ann = AnnIndex.build(refs, lists=20, probes=4)
    queries = clustered(80, 10, seed=3)
    monkeypatch.setattr(search, "_threads", 1)
    one = ann.search(queries, k=3)
    monkeypatch.setattr(search, "_threads", 3)
    several = ann.search(queries, k=3)
    np.testing.assert_array_equal(one[0], several[0])
    np.testing.assert_array_equal(one[1], several[1])
    ann.save(tmp_path / "ann.safetensors")
    monkeypatch.setitem(sys.modules, "faiss", None)  # a saved index is searched without faiss
    again = AnnIndex.load(tmp_path / "ann.safetensors")
    assert isinstance(again.vectors, np.memmap) and again.probes == 4
    np.testing.assert_array_equal(again.search(queries, k=3)[0], one[0])
    nothing = ann.search(np.zeros((0, 32), dtype=np.float32), k=3)
    assert nothing[0].shape == nothing[1].shape == (0, 3)
    ann.probes = 50  # more probes than lists: every list, so exact
    np.testing.assert_allclose(ann.search(queries, k=3)[1], CosineIndex(refs).search(queries, k=3)[1], atol=1e-5)
    ann.offsets = ann.offsets[:-1]
    ann.save(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="broken.safetensors: not a complete inverted-file index"):
        AnnIndex.load(tmp_path / "broken.safetensors")


@pytest.mark.parametrize("columns", [7, 40, 499, 501, 1013, 2048])
def test_top_columns_finds_each_rows_largest_values_in_narrow_and_blocked_rows(columns):
    values = np.random.default_rng(columns).normal(size=(6, columns)).astype(np.float32)
    values[0] = 0.5  # all tied: any k columns will do
    k = min(10, columns)
    top = top_columns(values, k)
    assert top.shape == (6, k) and all(len(set(row)) == k for row in top.tolist())
    expected = -np.sort(-values, axis=1)[:, :k]
    np.testing.assert_array_equal(-np.sort(-np.take_along_axis(values, top, 1), axis=1), expected)
