"""The k-mer rules of `tokenization_barcodemae` and the ``kmer_bag`` readout of `modeling_barcodemae`, in numpy
alone, for the paths that must start quickly (`barcodemae identify` with a bag model imports neither torch nor
transformers).

* :func:`normalize_barcode`: the tokenizer's normalisation (whitespace and gaps removed, upper case, ``U`` → ``T``,
  trailing ``N`` stripped), the same function as `tokenization_barcodemae.normalize_barcode` (tested equal).
* :func:`kmer_bag_counts`: per barcode, how often each vocabulary id occurs among the overlapping k-mers the bag
  readout averages: the barcode is cut into ``n = min(max_tokens, len // k)`` non-overlapping k-mers; the k-mer
  starting at base ``k i + s`` counts when token ``i`` is an ACGT k-mer and, for ``s > 0``, token ``i + 1`` exists and
  is one too (the rule of `modeling_barcodemae.shift_frame`). The bag embedding is ``counts @ weight / counts.sum()``
  (zeros when nothing counts): `BarcodeMAEModel.kmer_bag` without a deletion (tested equal to ``pooler_output``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WHITESPACE_OR_GAP = re.compile(r"[\s\-.]+")
_TRAILING_N = re.compile(r"N+$")
_NORMALISED = re.compile(r"[A-TV-Z]*")  # upper case, no U, no whitespace or gap


def normalize_barcode(sequence: str) -> str:
    """The barcode as the tokenizer sees it: no whitespace or gaps, upper case, U→T, no trailing N."""
    if _NORMALISED.fullmatch(sequence) and not sequence.endswith("N"):
        return sequence
    cleaned = _WHITESPACE_OR_GAP.sub("", sequence).upper().replace("U", "T")
    return _TRAILING_N.sub("", cleaned)


def _base_codes() -> np.ndarray:
    codes = np.full(256, 4, dtype=np.uint8)  # 0..3 for A C G T, 4 for any other byte
    for code, base in enumerate(b"ACGT"):
        codes[base] = code
    return codes


_BASE_CODES = _base_codes()


def kmer_bag_counts(
    sequences: Sequence[str], k_mer: int, max_tokens: int, first_kmer_id: int, vocab_size: int
) -> np.ndarray:
    """``(len(sequences), vocab_size)`` float32 counts of the k-mers the bag readout averages (module docstring)."""
    normalised = [normalize_barcode(s) for s in sequences]
    tokens = np.array([min(max_tokens, len(s) // k_mer) for s in normalised], dtype=np.int64)
    spans = tokens * k_mer
    total = int(spans.sum())
    if total == 0:
        return np.zeros((len(sequences), vocab_size), dtype=np.float32)
    text = "".join(s[:span] for s, span in zip(normalised, spans.tolist()))
    codes = _BASE_CODES[np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8)]
    windows = total - k_mer + 1  # k-mer starts inside the joined text (a span is a multiple of k, so >= k)
    ids = np.zeros(total, dtype=np.int64)
    bases = (codes & 3).astype(np.int64)
    for offset in range(k_mer):
        ids[:windows] += bases[offset : offset + windows] << (2 * (k_mer - 1 - offset))
    bad = np.concatenate([[0], np.cumsum(codes == 4, dtype=np.int64)])
    clean = np.zeros(total + k_mer, dtype=bool)  # clean[g]: the k bases from g on are all ACGT (False past the end)
    clean[:windows] = bad[k_mer : k_mer + windows] == bad[:windows]
    row = np.repeat(np.arange(len(sequences)), spans)
    local = np.arange(total) - np.repeat(np.cumsum(spans) - spans, spans)
    shift = local % k_mer
    token_start = np.arange(total) - shift
    has_next = local // k_mer + 1 < tokens[row]
    valid = clean[token_start] & ((shift == 0) | (has_next & clean[token_start + k_mer]))
    flat = np.bincount(row[valid] * vocab_size + ids[valid] + first_kmer_id, minlength=len(sequences) * vocab_size)
    return flat.reshape(len(sequences), vocab_size).astype(np.float32)


def kmer_bag(counts: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The bag embeddings ``counts @ weight`` divided by each row's count (at least 1)."""
    summed = counts @ weight
    return summed / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


__all__ = ["kmer_bag", "kmer_bag_counts", "normalize_barcode"]
