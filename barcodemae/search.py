"""Nearest-neighbour search over embeddings by cosine similarity. Used by `barcodemae identify` (the reference
index), by the evaluation protocols and by the fine-tuning probe.

One interface, :class:`Searcher` (``len(s)``, ``s.search(queries, k) -> (indices, similarities)``), three kinds:

* :class:`FlatIndex`: exact, faiss ``IndexFlatIP`` over the unit vectors (BLAS matmul and a heap per query): the
  exact kernel of `identify` where faiss is installed (``pip install 'barcodemae[ann]'``), no torch needed;
* :class:`CosineIndex`: exact, in bounded memory (torch matmul over reference chunks, a bf16 first pass where the
  CPU has bf16 matmul in hardware): the evaluation protocols' search, and `identify`'s without faiss;
* :class:`AnnIndex`: approximate, an inverted-file index over the unit vectors (faiss k-means lists, built with
  faiss, searched in numpy a list at a time for a whole batch).

:class:`GroupedSearcher` searches distinct barcodes and answers with the reference rows they stand for (a reference
index stores each distinct barcode once). :func:`resolve_method` picks exact or approximate by ``method``:
``"exact"``, ``"ann"`` or ``"auto"`` (approximate from :data:`ANN_MIN_REFERENCES` distinct references on, when faiss
is installed). The libraries, the kernel and the threshold were chosen by measurement (``benchmarks/search.py``,
benchmarks/RESULTS.md): of faiss HNSW and IVF, hnswlib and usearch, only an IVF index kept recall@1 >= 0.99 of
exact search on the real embeddings (whose species form tight clusters that HNSW graphs miss); on subsets of the
real `train` embeddings (``benchmarks/search.py --sizes``, 10 neighbours) it overtakes the exact kernel at about
15,000 references with 48 probes (2.7x faster at 46,029) at recall@1 >= 0.99.
torch is imported only by the functions that use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np

from barcodemae.io import map_safetensors, safetensors_header

if TYPE_CHECKING:
    import torch

SEARCH_METHODS = ("exact", "ann", "auto")
ANN_MIN_REFERENCES = 15_000  # distinct references; where IVF overtakes exact search on real embeddings (RESULTS.md)
ANN_MIN_PROBES = 48  # keeps recall@1 >= 0.99 on every real subset measured (32 fell to 0.989)
BF16_MIN_REFERENCES = 4096  # below, one float32 pass is already quick
BF16_CANDIDATES = 32  # 94% of real k=5 rows and 99% of k=1 rows are vouched for (benchmarks/RESULTS.md)
_threads: int | None = None  # set_threads()


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 CPU tensor of ``x``; a read-only array (e.g. a memory-mapped index) is copied."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (cosine 0 to everything)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def l2_normalize_array(x: np.ndarray) -> np.ndarray:
    """:func:`l2_normalize` for numpy: contiguous float32 rows of unit norm (all-zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class CosineIndex:
    """Exact cosine k-NN over a fixed reference set, normalised once (float32).

    Where the CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX: :func:`bf16_matmul_native`) and
    there are at least :data:`BF16_MIN_REFERENCES` references, a bf16 first pass picks each query's
    :data:`BF16_CANDIDATES` best references (or ``4 k``), which are then scored in float32. A row is kept only
    when its k-th float32 score beats the best any other reference could reach (the candidates' lowest bf16 score
    plus a bound on bf16's rounding, :meth:`_bf16_error`); other rows are searched again in float32 alone. So the
    result is the float32 search's, ~1.8-2x faster (benchmarks/RESULTS.md). ``precision="fp32"`` turns it off.

    Memory: the references (R×D float32, and R×D bf16 for the first pass) plus one ``query_chunk ×
    reference_chunk`` similarity block, so a 1M-reference set is searched without an R-wide matrix. Ties: for
    ``k == 1`` the lowest reference index wins; for ``k > 1`` so it does among a row's rescored candidates, while
    ties inside a chunk of the float32 pass follow ``torch.topk``.
    """

    def __init__(
        self, references: np.ndarray | torch.Tensor, reference_chunk: int = 16384, precision: str = "auto"
    ) -> None:
        refs = as_tensor(references)
        if refs.ndim != 2 or refs.shape[0] == 0:
            raise ValueError(f"references must be a non-empty (R, D) array, got shape {tuple(refs.shape)}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
        self.references = l2_normalize(refs)
        self.reference_chunk = reference_chunk
        self.bf16 = precision == "bf16" or (
            precision == "auto" and len(self) >= BF16_MIN_REFERENCES and bf16_matmul_native()
        )
        if self.bf16:
            self.references_bf16 = self.references.bfloat16()
            rounded = self.references_bf16.float()
            self._reference_rounding = float((rounded - self.references).norm(dim=1).max())
            self._reference_norm = float(rounded.norm(dim=1).max())

    def __len__(self) -> int:
        return self.references.shape[0]

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1, chunk_size: int = 4096):
        """Return ``(indices (Q,k) int64, similarities (Q,k) float32)`` of the k most cosine-similar references."""
        import torch

        with torch.inference_mode():
            return self._search(queries, k, chunk_size)

    def _search(self, queries: np.ndarray | torch.Tensor, k: int, chunk_size: int):
        import torch

        q = as_tensor(queries)
        if q.ndim != 2 or q.shape[1] != self.references.shape[1]:
            raise ValueError(f"queries must be (Q, {self.references.shape[1]}), got shape {tuple(q.shape)}")
        k = min(k, len(self))
        candidates = min(len(self), max(BF16_CANDIDATES, 4 * k))
        search_block = (
            partial(self._search_block_bf16, candidates=candidates)
            if self.bf16 and candidates < len(self)
            else self._search_block
        )
        indices = torch.empty((q.shape[0], k), dtype=torch.int64)
        sims = torch.empty((q.shape[0], k), dtype=torch.float32)
        for start in range(0, q.shape[0], chunk_size):
            block = l2_normalize(q[start : start + chunk_size])
            indices[start : start + len(block)], sims[start : start + len(block)] = search_block(block, k)
        return indices.numpy(), sims.numpy()

    def _search_block(self, block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        best_sim = torch.full((block.shape[0], k), -math.inf)
        best_idx = torch.zeros((block.shape[0], k), dtype=torch.int64)
        for offset in range(0, len(self), self.reference_chunk):
            sim = block @ self.references[offset : offset + self.reference_chunk].T
            if k == 1:
                chunk_sim, chunk_idx = sim.max(dim=1, keepdim=True)  # first maximal index on ties
            else:
                chunk_sim, chunk_idx = sim.topk(min(k, sim.shape[1]), dim=1)
            best_sim, best_idx = _merge(best_sim, best_idx, chunk_sim, chunk_idx + offset, k)
        return best_idx, best_sim

    def _search_block_bf16(self, block: torch.Tensor, k: int, candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The bf16 first pass, float32 scores of its candidates, and the float32 pass for rows it cannot vouch for."""
        import torch

        first_sim = torch.full((block.shape[0], candidates), -math.inf)
        first_idx = torch.zeros((block.shape[0], candidates), dtype=torch.int64)
        query = block.bfloat16()
        for offset in range(0, len(self), self.reference_chunk):
            sim = query @ self.references_bf16[offset : offset + self.reference_chunk].T
            chunk_sim, chunk_idx = sim.topk(min(candidates, sim.shape[1]), dim=1)
            first_sim, first_idx = _merge(first_sim, first_idx, chunk_sim.float(), chunk_idx + offset, candidates)
        first_idx = first_idx.sort(dim=1).values  # by index, so the stable sort below lets the lowest win ties
        sims = torch.einsum("qcd,qd->qc", self.references[first_idx], block)
        order = sims.argsort(dim=1, descending=True, stable=True)[:, :k]
        best_sim, best_idx = sims.gather(1, order), first_idx.gather(1, order)
        # any reference left out scored <= the last candidate's bf16 score, so its float32 score is at most that
        # plus the rounding bound; rows whose k-th score does not beat it are searched again in float32
        unsure = best_sim[:, -1] <= first_sim[:, -1] + self._bf16_error(block)
        if unsure.any():
            best_idx[unsure], best_sim[unsure] = self._search_block(block[unsure], k)
        return best_idx, best_sim

    def _bf16_error(self, block: torch.Tensor) -> torch.Tensor:
        """Per query, a bound on |bf16 score - float32 score| for every reference: with q~, r~ the rounded unit
        vectors, |q~.r~ - q.r| <= |q~ - q| |r| + |q~| |r~ - r|; the products are summed in float32 (<= D 2^-24
        |q~| |r~|, doubled for safety) and the sum is rounded to bf16 (<= 2^-8 |q~| |r~|)."""
        rounded = block.bfloat16().float()
        query_rounding, query_norm = (rounded - block).norm(dim=1), rounded.norm(dim=1)
        summing = (2.0**-8 + block.shape[1] * 2.0**-23) * query_norm * self._reference_norm
        return query_rounding + query_norm * self._reference_rounding + summing


def _merge(
    best_sim: torch.Tensor, best_idx: torch.Tensor, chunk_sim: torch.Tensor, chunk_idx: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of a running best list and a chunk's best; on ties the running list (earlier chunks) wins."""
    import torch

    all_sim, all_idx = torch.cat([best_sim, chunk_sim], dim=1), torch.cat([best_idx, chunk_idx], dim=1)
    order = all_sim.argsort(dim=1, descending=True, stable=True)[:, :k]
    return all_sim.gather(1, order), all_idx.gather(1, order)


def bf16_matmul_native() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (oneDNN with AVX-512 BF16 or AMX), where a bf16
    matmul is ~3x a float32 one; elsewhere bf16 is emulated and slower."""
    import torch

    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Searcher(Protocol):
    """What `identify` and the evaluation protocols need of a nearest-neighbour index."""

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[np.ndarray, np.ndarray]: ...


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "approximate search needs faiss: pip install 'barcodemae[ann]' (or faiss-cpu), or use --search exact"
        ) from error
    return faiss


def unit_queries(queries: np.ndarray | torch.Tensor, dimension: int) -> np.ndarray:
    """``queries`` as contiguous float32 rows of unit norm; ValueError unless ``(Q, dimension)``."""
    q = l2_normalize_array(np.asarray(queries))
    if q.ndim != 2 or q.shape[1] != dimension:
        raise ValueError(f"queries must be (Q, {dimension}), got shape {q.shape}")
    return q


class AnnIndex:
    """Approximate cosine k-NN: an inverted-file (IVF) index over the L2-normalised references, scanned a list at a
    time for a whole batch of queries.

    **Build** (needs faiss): the references are split into ``lists`` clusters by faiss's k-means (inner product,
    10 iterations; default ``4·√R`` lists, at most ``R/39``, trained on a random sample of at most 64 references a
    list) and each is stored in the list of its most similar centroid, the vectors in list order.

    **Search** (numpy only): a query is compared with the references of its ``probes`` most similar centroids
    (default :data:`ANN_MIN_PROBES`, or a 30th of the lists when that is more: 134 at 1M). The batch is turned
    around: every probed list is read once and scored against all the queries that probe it in one matrix product,
    each of those queries keeping its ``k`` best of the list; then each query keeps its ``k`` best over its lists.
    faiss's ``IndexIVFFlat`` reads a list once per query that probes it, which makes a large index memory-bound;
    here the same lists and probes give the same neighbours (ties aside), level with it on the 46,029 real `train`
    barcodes and 4x its speed at 1M simulated references (benchmarks/RESULTS.md). The lists are shared out
    between :func:`set_threads` threads.

    Recall@1 against exact search (10 neighbours): 0.990-1.000 on subsets of 2,000-46,029 real `train`
    embeddings (where 32 probes fell to 0.989 at 30,000), 0.995-0.999 at 1M simulated ones (where 32 probes gave
    0.975; benchmarks/RESULTS.md). Results are sorted by similarity; a query whose probed lists hold fewer than ``k``
    references is searched again over all lists, so ``k`` neighbours always come back. Ties fall either way.
    """

    ADD_CHUNK = 65536

    def __init__(
        self, centroids: np.ndarray, offsets: np.ndarray, ids: np.ndarray, vectors: np.ndarray, probes: int
    ) -> None:
        self.centroids, self.offsets, self.ids, self.vectors = centroids, offsets, ids, vectors
        self.probes = min(probes, len(centroids))

    @classmethod
    def build(cls, references: np.ndarray, lists: int | None = None, probes: int | None = None) -> AnnIndex:
        faiss = _faiss()
        if references.ndim != 2 or references.shape[0] == 0:
            raise ValueError(f"references must be a non-empty (R, D) array, got shape {references.shape}")
        n, dim = references.shape
        lists = min(lists or max(1, min(round(4 * math.sqrt(n)), n // 39)), n)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter, ivf.cp.seed = 10, 0
        sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, 64 * lists), replace=False))
        ivf.train(l2_normalize_array(references[sample]))
        nearest = np.empty(n, dtype=np.int64)
        for start in range(0, n, cls.ADD_CHUNK):  # normalised a chunk at a time: no second copy of the references
            chunk = l2_normalize_array(references[start : start + cls.ADD_CHUNK])
            nearest[start : start + len(chunk)] = ivf.quantizer.search(chunk, 1)[1][:, 0]
        ids = np.argsort(nearest, kind="stable")
        vectors = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, cls.ADD_CHUNK):
            vectors[start : start + cls.ADD_CHUNK] = l2_normalize_array(references[ids[start : start + cls.ADD_CHUNK]])
        offsets = np.concatenate([[0], np.cumsum(np.bincount(nearest, minlength=lists))]).astype(np.int64)
        centroids = ivf.quantizer.reconstruct_n(0, lists)
        return cls(centroids, offsets, ids, vectors, probes or max(ANN_MIN_PROBES, math.ceil(lists / 30)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnnIndex:
        """Open a saved index memory-mapped and read-only (a list is read from disk when first searched)."""
        probes = safetensors_header(path)[1].get("__metadata__", {}).get("probes", "")
        arrays = {name: map_safetensors(path, name, *kind) for name, kind in ANN_TENSORS.items()}
        lists, total = len(arrays["centroids"]), len(arrays["vectors"])
        offsets = arrays["offsets"]
        if not probes.isdigit() or offsets.shape != (lists + 1,) or offsets[-1] != total or len(arrays["ids"]) != total:
            raise ValueError(f"{path}: not a complete inverted-file index; rebuild the index")
        return cls(**arrays, probes=int(probes))

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in ANN_TENSORS}
        save_file(arrays, str(path), metadata={"probes": str(self.probes)})

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices (Q,k) int64, similarities (Q,k) float32)`` of (about) the k most similar references."""
        q = unit_queries(queries, self.vectors.shape[1])
        k = min(k, len(self))
        indices, similarities = self._search(q, k, self.probes)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):
            indices[short], similarities[short] = self._search(q[short], k, len(self.centroids))
        return indices, similarities

    def _search(self, q: np.ndarray, k: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each query's ``probes`` lists (-1 / -inf where they hold fewer than k references)."""
        probes = min(probes, len(self.centroids))
        probed = self._probe(q, probes).ravel()
        sortable = probed.astype(np.int16 if len(self.centroids) <= 2**15 else np.int32)  # int16: a radix sort
        pairs = np.argsort(sortable, kind="stable")  # pair p = (query p // probes, a probed list), grouped by list
        bounds = np.searchsorted(probed[pairs], np.arange(len(self.centroids) + 1))
        best_sim = np.full((probed.size, k), -np.inf, dtype=np.float32)
        best_idx = np.full((probed.size, k), -1, dtype=np.int32 if len(self) < 2**31 else np.int64)

        def scan(lists: np.ndarray) -> None:
            for lst in lists:
                pair = pairs[bounds[lst] : bounds[lst + 1]]
                low, high = self.offsets[lst], self.offsets[lst + 1]
                if high == low:
                    continue
                sims = q[pair // probes] @ self.vectors[low:high].T
                if high - low > k:
                    top = top_columns(sims, k)
                    best_sim[pair] = np.take_along_axis(sims, top, 1)
                    best_idx[pair] = self.ids[low + top]
                else:
                    best_sim[pair, : high - low] = sims
                    best_idx[pair, : high - low] = self.ids[low:high]

        queries_per_list = np.diff(bounds)
        probed_lists = np.flatnonzero(queries_per_list)
        cost = queries_per_list[probed_lists] * np.diff(self.offsets)[probed_lists] + 512  # + a list's fixed cost
        _run_split(scan, probed_lists, cost)
        best_sim, best_idx = best_sim.reshape(len(q), probes * k), best_idx.reshape(len(q), probes * k)
        if best_sim.shape[1] > k:
            top = np.argpartition(best_sim, best_sim.shape[1] - k, axis=1)[:, -k:]
            best_sim, best_idx = np.take_along_axis(best_sim, top, 1), np.take_along_axis(best_idx, top, 1)
        order = np.argsort(-best_sim, axis=1, kind="stable")
        return np.take_along_axis(best_idx, order, 1).astype(np.int64), np.take_along_axis(best_sim, order, 1)

    def _probe(self, q: np.ndarray, probes: int, block: int = 1024) -> np.ndarray:
        """``(Q, probes)``: each query's most similar centroids (in blocks of queries: bounded memory)."""
        lists = len(self.centroids)
        if probes >= lists:
            return np.tile(np.arange(lists), (len(q), 1))
        probed = np.empty((len(q), probes), dtype=np.int64)
        for start in range(0, len(q), block):
            coarse = q[start : start + block] @ self.centroids.T
            probed[start : start + block] = np.argpartition(-coarse, probes - 1, axis=1)[:, :probes]
        return probed


def top_columns(values: np.ndarray, k: int, block: int = 16) -> np.ndarray:
    """``(rows, k)`` column indices of each row's k largest values (in no order; ties either way). A wide row
    (over ``50 k`` columns) is cut into blocks of ``block`` columns: each of its k largest values lies in one of the
    k blocks with the largest maxima (a block holding one has a maximum at least the k-th value, and at most k
    blocks do), so only those ``k·block`` columns are partitioned."""
    rows, columns = values.shape
    if columns <= 50 * k:
        return np.argpartition(values, columns - k, axis=1)[:, -k:]
    maxima = np.maximum.reduceat(values, np.arange(0, columns, block), axis=1)
    blocks = np.argpartition(maxima, maxima.shape[1] - k, axis=1)[:, -k:]
    candidates = (blocks[:, :, None] * block + np.arange(block)).reshape(rows, -1)
    inside = candidates < columns  # the last block may be short
    candidates = np.minimum(candidates, columns - 1)
    scores = np.where(inside, np.take_along_axis(values, candidates, 1), -np.inf)
    return np.take_along_axis(candidates, np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:], 1)


ANN_TENSORS = {  # name -> safetensors dtype, ndim
    "centroids": ("F32", 2),
    "offsets": ("I64", 1),
    "ids": ("I64", 1),
    "vectors": ("F32", 2),
}


class FlatIndex:
    """Exact cosine k-NN by faiss ``IndexFlatIP`` over the L2-normalised references: one BLAS matmul per block of
    queries and a heap per query (faiss's own threads, :func:`set_threads`). On the real `train` embeddings it is as
    fast as :class:`CosineIndex`'s bf16 first pass or faster, at float32's result, and needs no torch
    (benchmarks/RESULTS.md). Ties between equal similarities fall either way."""

    def __init__(self, references: np.ndarray) -> None:
        if references.ndim != 2 or references.shape[0] == 0:
            raise ValueError(f"references must be a non-empty (R, D) array, got shape {references.shape}")
        self.index = _faiss().IndexFlatIP(references.shape[1])
        for start in range(0, len(references), AnnIndex.ADD_CHUNK):
            self.index.add(l2_normalize_array(references[start : start + AnnIndex.ADD_CHUNK]))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices (Q,k) int64, similarities (Q,k) float32)`` of the k most cosine-similar references."""
        similarities, indices = self.index.search(unit_queries(queries, self.index.d), min(k, len(self)))
        return indices.astype(np.int64), similarities.astype(np.float32)


def exact_searcher(references: np.ndarray) -> Searcher:
    """The exact kernel chosen by measurement: :class:`FlatIndex` where faiss is installed, else
    :class:`CosineIndex`."""
    return FlatIndex(references) if ann_available() else CosineIndex(references)


class GroupedSearcher:
    """A search over distinct barcodes that answers with reference rows: ``groups[row]`` is the distinct barcode of
    each row. Every hit stands for all its rows, lowest row first, so the k nearest rows are those a search over
    every row would give (identical barcodes have identical embeddings, so equal similarities), with ties between
    the copies of one barcode broken by row. ``len`` is the number of rows."""

    def __init__(self, distinct: Searcher, groups: np.ndarray) -> None:
        self.distinct, self.groups = distinct, np.asarray(groups, dtype=np.int64)
        order = np.argsort(self.groups, kind="stable")  # the rows of each barcode, in row order
        self.sizes = np.bincount(self.groups, minlength=len(distinct))
        self.members, self.starts = order, np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def __len__(self) -> int:
        return len(self.groups)

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        hits, sims = self.distinct.search(queries, min(k, len(self.distinct)))
        # (Q, hits, k) candidate rows: the first k copies of each hit (-1 past a hit's copies), then the first k valid
        copy = np.arange(k)
        valid = copy[None, None, :] < self.sizes[hits][:, :, None]
        rows = self.members[np.minimum(self.starts[hits][:, :, None] + copy, len(self.members) - 1)]
        valid, rows = valid.reshape(len(hits), -1), rows.reshape(len(hits), -1)
        first = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        similarity = np.repeat(sims, k, axis=1)
        return np.take_along_axis(rows, first, 1), np.take_along_axis(similarity, first, 1)


def ann_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def resolve_method(method: str, n_references: int) -> str:
    """``"exact"`` or ``"ann"`` for ``method`` (one of :data:`SEARCH_METHODS`) and a reference set's size:
    ``auto`` is approximate from :data:`ANN_MIN_REFERENCES` references on when faiss is installed, exact otherwise."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"search method must be one of {', '.join(SEARCH_METHODS)}, not {method!r}")
    if method == "auto":
        return "ann" if n_references >= ANN_MIN_REFERENCES and ann_available() else "exact"
    if method == "ann":
        _faiss()  # refused now when missing, not after a long embedding
    return method


def set_threads(threads: int) -> None:
    """Threads for search and embedding: :class:`AnnIndex`'s scan, faiss's OpenMP pool, numpy's BLAS
    (threadpoolctl, where installed) and torch's (now if it is imported, else through ``OMP_NUM_THREADS`` when it
    is)."""
    import sys

    global _threads
    _threads = max(1, threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(threads)


def search_threads() -> int:
    """Threads of :class:`AnnIndex`'s scan: :func:`set_threads`'s, else ``OMP_NUM_THREADS``, else the usable CPUs."""
    if _threads is None:
        with contextlib.suppress(ValueError):
            return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return _threads


def _run_split(work: Callable[[np.ndarray], None], items: np.ndarray, costs: np.ndarray) -> None:
    """``work`` over ``items`` in :func:`search_threads` contiguous parts of about equal total cost, one thread
    each (the parts must write to disjoint places), with BLAS held to one thread inside each."""
    threads = min(search_threads(), len(items))
    with _one_blas_thread():
        if threads <= 1:
            work(items)
            return
        cumulative = np.cumsum(costs, dtype=np.float64)
        cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, threads) / threads)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, np.split(items, cuts)))


def _one_blas_thread():
    """numpy's BLAS held to one thread (a small matrix product is slower on two); a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def nearest_neighbors(
    queries: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    k: int = 1,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN: ``(indices (Q,k), similarities (Q,k))``; see :class:`CosineIndex` for memory and ties."""
    return CosineIndex(references).search(queries, k=k, chunk_size=chunk_size)


# ------------------------------------------------------------------------------------------- alignment re-ranking
def _edlib():
    try:
        import edlib
    except ImportError as error:
        raise ImportError("--rerank align needs edlib: pip install 'barcodemae[align]' (or edlib)") from error
    return edlib


def alignment_identity(a: str, b: str) -> float:
    """``1 - edit distance / length`` of the shorter sequence aligned inside the longer (edlib ``HW`` mode: the
    longer one's overhanging ends are free, as barcodes start and stop at slightly different places); 0 for an
    empty sequence. Chosen over parasail's semi-global alignment: 17x faster, as accurate (benchmarks/RESULTS.md)."""
    query, target = (a, b) if len(a) <= len(b) else (b, a)
    if not query:
        return 0.0
    distance = _edlib().align(query, target, mode="HW", task="distance")["editDistance"]
    return 1.0 - distance / len(query)


def candidate_identities(queries: list[str], references: list[str], indices: np.ndarray) -> np.ndarray:
    """(Q, k) alignment identity of each query to each of its candidate references ``indices`` (Q, k)."""
    return np.array(
        [[alignment_identity(q, references[j]) for j in row] for q, row in zip(queries, indices)], dtype=np.float32
    ).reshape(indices.shape)


def rerank_by_alignment(
    queries: list[str], references: list[str], indices: np.ndarray, similarities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's candidates re-ordered by alignment identity to the query (cosine similarity breaks ties):
    ``(indices, cosine similarities, identities)``, all (Q, k)."""
    identity = candidate_identities(queries, references, indices)
    order = np.lexsort((-similarities, -identity), axis=1)
    take = np.take_along_axis
    return take(indices, order, 1), take(similarities, order, 1), take(identity, order, 1)
