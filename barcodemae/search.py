"""Nearest-neighbour search over embeddings: exact cosine k-NN in bounded memory. Used by `barcodemae identify`
(the reference index), by the evaluation protocols and by the fine-tuning probe."""

from __future__ import annotations

import math

import numpy as np
import torch


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (cosine 0 to everything)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class CosineIndex:
    """Exact cosine k-NN over a fixed reference set, normalised once (float32).

    Memory: the references (R×D float32) plus one ``query_chunk × reference_chunk`` similarity block, so a
    1M-reference set is searched without an R-wide matrix. Ties: for ``k == 1`` the lowest reference index wins;
    for ``k > 1`` ties between reference chunks keep the lower index, ties inside a chunk follow ``torch.topk``.
    """

    def __init__(self, references: np.ndarray | torch.Tensor, reference_chunk: int = 16384) -> None:
        refs = as_tensor(references)
        if refs.ndim != 2 or refs.shape[0] == 0:
            raise ValueError(f"references must be a non-empty (R, D) array, got shape {tuple(refs.shape)}")
        self.references = l2_normalize(refs)
        self.reference_chunk = reference_chunk

    def __len__(self) -> int:
        return self.references.shape[0]

    @torch.inference_mode()
    def search(self, queries: np.ndarray | torch.Tensor, k: int = 1, chunk_size: int = 4096):
        """Return ``(indices (Q,k) int64, similarities (Q,k) float32)`` of the k most cosine-similar references."""
        q = as_tensor(queries)
        if q.ndim != 2 or q.shape[1] != self.references.shape[1]:
            raise ValueError(f"queries must be (Q, {self.references.shape[1]}), got shape {tuple(q.shape)}")
        k = min(k, len(self))
        indices = torch.empty((q.shape[0], k), dtype=torch.int64)
        sims = torch.empty((q.shape[0], k), dtype=torch.float32)
        for start in range(0, q.shape[0], chunk_size):
            block = l2_normalize(q[start : start + chunk_size])
            indices[start : start + len(block)], sims[start : start + len(block)] = self._search_block(block, k)
        return indices.numpy(), sims.numpy()

    def _search_block(self, block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        best_sim = torch.full((block.shape[0], k), -math.inf)
        best_idx = torch.zeros((block.shape[0], k), dtype=torch.int64)
        for offset in range(0, len(self), self.reference_chunk):
            sim = block @ self.references[offset : offset + self.reference_chunk].T
            if k == 1:
                chunk_sim, chunk_idx = sim.max(dim=1, keepdim=True)  # first maximal index on ties
            else:
                chunk_sim, chunk_idx = sim.topk(min(k, sim.shape[1]), dim=1)
            all_sim = torch.cat([best_sim, chunk_sim], dim=1)
            all_idx = torch.cat([best_idx, chunk_idx + offset], dim=1)
            order = all_sim.argsort(dim=1, descending=True, stable=True)[:, :k]  # earlier chunk wins ties
            best_sim, best_idx = all_sim.gather(1, order), all_idx.gather(1, order)
        return best_idx, best_sim


def nearest_neighbors(
    queries: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    k: int = 1,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN: ``(indices (Q,k), similarities (Q,k))``; see :class:`CosineIndex` for memory and ties."""
    return CosineIndex(references).search(queries, k=k, chunk_size=chunk_size)
