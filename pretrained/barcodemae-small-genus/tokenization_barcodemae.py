"""K-mer tokenizer for DNA barcodes, backed by the `tokenizers` library.

Normalisation (applied by the fast backend and mirrored by :func:`normalize_barcode`):

* whitespace anywhere is removed, letters are upper-cased, ``U`` becomes ``T``;
* alignment gaps ``-`` and ``.`` are removed (a gap is an alignment artefact, not a base);
* a trailing run of ``N`` is stripped (as the BarcodeMAE authors do); leading and inner ``N`` are kept.

Tokenisation: the normalised barcode is cut into non-overlapping k-mers from its first base. A k-mer
made only of ``A C G T`` maps to its vocabulary id; a k-mer holding any other character (``N``, an IUPAC
ambiguity code, or any other symbol) becomes ``[UNK]``. A trailing piece shorter than k is dropped.
Sequences are truncated to ``model_max_length`` tokens (``max_length // k`` by default, i.e. the first
660 bases with the paper's settings). No ``[CLS]``/``[SEP]`` are added: the barcode embedding is the mean
of the k-mer token states.

Frames at numpy speed (:meth:`BarcodeMAETokenizer.overlapping_kmer_ids`): the id of the k-mer starting at every
base of the normalised barcode, by the same rules; the tokens of ``barcode[f:]`` are ``ids[f::k]`` (then truncated),
so one pass gives all k reading frames (random start offsets in pretraining) without k tokenizer calls.

Vocabulary: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``, then all ``4**k`` k-mers in lexicographic order
over ``ACGT`` (``AAAAAA=5, AAAAAC=6, ..., TTTTTT=4100`` for k=6).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import BatchEncoding, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
NUCLEOTIDES = "ACGT"
GAP_CHARACTERS = "-."
_WHITESPACE_OR_GAP = re.compile(r"[\s\-.]+")
_TRAILING_N = re.compile(r"N+$")
_NORMALISED = re.compile(r"[A-TV-Z]*")  # upper case, no U, no whitespace or gap


def normalize_barcode(sequence: str) -> str:
    """Return the barcode as the tokenizer sees it: no whitespace or gaps, upper case, U→T, no trailing N."""
    if _NORMALISED.fullmatch(sequence) and not sequence.endswith("N"):
        return sequence
    cleaned = _WHITESPACE_OR_GAP.sub("", sequence).upper().replace("U", "T")
    return _TRAILING_N.sub("", cleaned)


def _base_codes() -> np.ndarray:
    """Byte -> 0..3 for ``A C G T``, 4 for every other byte."""
    codes = np.full(256, 4, dtype=np.uint8)
    for code, base in enumerate(NUCLEOTIDES.encode()):
        codes[base] = code
    return codes


_BASE_CODES = _base_codes()


def overlapping_kmer_ids(sequences: list[str], k_mer: int, first_kmer_id: int, unk_token_id: int) -> list[np.ndarray]:
    """Vocabulary id of the k-mer at every start position ``0..len-k`` of each (already normalised) barcode, as
    int32 views of one buffer: ``[UNK]`` where the k-mer holds a non-ACGT character."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    codes = _BASE_CODES[np.frombuffer("".join(sequences).encode("ascii", "replace"), dtype=np.uint8)]
    if len(codes) < k_mer:
        return [np.zeros(0, dtype=np.int32) for _ in sequences]
    count = len(codes) - k_mer + 1
    bases = (codes & 3).astype(np.int32)
    ids = np.full(count, first_kmer_id, dtype=np.int32)
    for offset in range(k_mer):  # k vectorised passes: ids += base[i + offset] * 4**(k-1-offset)
        ids += bases[offset : offset + count] << (2 * (k_mer - 1 - offset))
    invalid = np.concatenate([[0], np.cumsum(codes == 4, dtype=np.int32)])
    ids[invalid[k_mer:] != invalid[:-k_mer]] = unk_token_id
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [ids[start : start + max(n - k_mer + 1, 0)] for start, n in zip(starts.tolist(), lengths.tolist())]


def kmer_vocabulary(k_mer: int) -> dict[str, int]:
    """Special tokens followed by every ACGT k-mer in lexicographic order."""
    tokens = list(SPECIAL_TOKENS) + ["".join(p) for p in itertools.product(NUCLEOTIDES, repeat=k_mer)]
    return {token: index for index, token in enumerate(tokens)}


def build_backend(k_mer: int) -> Tokenizer:
    """The `tokenizers` pipeline: normalise, split into non-overlapping k-mers, look them up."""
    backend = Tokenizer(WordLevel(vocab=kmer_vocabulary(k_mer), unk_token="[UNK]"))
    upper_case = [normalizers.Replace(c, c.upper()) for c in "abcdefghijklmnopqrstuvwxyz"]
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(r"[\s\-.]+"), ""),
            *upper_case,
            normalizers.Replace("U", "T"),
            normalizers.Replace(Regex("N+$"), ""),
        ]
    )
    # The k-mers are the pattern's matches (invert=True); what lies between them, i.e. a trailing piece
    # shorter than k, is a delimiter and removed. One regex pass (a second Split per piece cost 40%).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(f".{{{k_mer}}}"), behavior="removed", invert=True)
    backend.decoder = decoders.Fuse()
    return backend


class BarcodeMAETokenizer(PreTrainedTokenizerFast):
    """Non-overlapping k-mer tokenizer; see the module docstring for the exact rules.

    Args:
        k_mer: k-mer length (the paper uses 6).
        stride: step between k-mer starts; only ``stride == k_mer`` (non-overlapping) is supported.
        model_max_length: maximum number of tokens; defaults to ``660 // k_mer``.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(self, k_mer: int = 6, stride: int | None = None, model_max_length: int | None = None, **kwargs):
        stride = k_mer if stride is None else stride
        if stride != k_mer:
            raise ValueError(f"Only non-overlapping k-mers are supported (stride={stride} != k_mer={k_mer}).")
        for rebuilt in ("tokenizer_file", "tokenizer_object", "vocab", "merges"):  # the backend is built from k_mer
            kwargs.pop(rebuilt, None)
        self.k_mer = k_mer
        self.stride = stride
        for name, token in zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS):
            kwargs.setdefault(name, token)
        super().__init__(
            tokenizer_object=build_backend(k_mer),
            model_max_length=model_max_length or 660 // k_mer,
            k_mer=k_mer,
            stride=stride,
            **kwargs,
        )

    @property
    def first_kmer_id(self) -> int:
        """Id of the first k-mer; every id at or above it is an ACGT k-mer."""
        return len(SPECIAL_TOKENS)

    def overlapping_kmer_ids(self, sequences: list[str]) -> list[np.ndarray]:
        """The id of the k-mer at every base of each normalised barcode (not truncated): reading frame ``f``, i.e.
        ``self(barcode[f:], truncation=True)["input_ids"]``, is ``ids[f::k][:model_max_length]``."""
        normalised = [normalize_barcode(sequence) for sequence in sequences]
        return overlapping_kmer_ids(normalised, self.k_mer, self.first_kmer_id, self.unk_token_id)

    def encode_barcodes(self, sequences: list[str]) -> BatchEncoding:
        """``self(sequences, padding=True, truncation=True, return_tensors="pt")`` (right-padded ``input_ids`` and
        ``attention_mask``), computed with `overlapping_kmer_ids` at numpy speed."""
        rows = [ids[:: self.k_mer][: self.model_max_length] for ids in self.overlapping_kmer_ids(sequences)]
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        attention_mask = np.arange(max(lengths, default=0))[None, :] < lengths[:, None]
        input_ids = np.full(attention_mask.shape, self.pad_token_id, dtype=np.int64)
        if rows:
            input_ids[attention_mask] = np.concatenate(rows)
        return BatchEncoding(
            {"input_ids": input_ids, "attention_mask": attention_mask.astype(np.int64)}, tensor_type="pt"
        )

    def decode_barcode(self, token_ids) -> str:
        """Concatenate k-mers back into a sequence; special tokens are skipped, ``[UNK]`` becomes ``N`` * k."""
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        pieces = []
        for token_id in token_ids:
            if token_id == self.unk_token_id:
                pieces.append("N" * self.k_mer)
            elif token_id >= self.first_kmer_id:
                pieces.append(self.convert_ids_to_tokens(token_id))
        return "".join(pieces)


BarcodeMAETokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["BarcodeMAETokenizer", "normalize_barcode", "kmer_vocabulary", "overlapping_kmer_ids"]
