"""Turn barcodes into embeddings with any encoder loadable by `AutoModel`.

The embedding is a BarcodeMAE encoder's ``pooler_output`` (the mean of its last hidden states over real tokens,
averaged over reading frames when ``config.embedding_frames > 1``); for any other encoder, the mean of its last
hidden states over real (non-padding) tokens. Batches are formed from length-sorted sequences (sort, embed,
restore the input order) so that little compute is spent on padding; long inputs are processed in chunks so
memory stays bounded. Files (FASTA or BIOSCAN / BOLD tables) are read with `barcodemae.data.iter_barcodes`, cleaned
to the model's own limits, and embedded in chunks (:func:`embed_chunks`, :func:`embed_file`); :func:`cached_embeddings`
keeps embeddings of fixed sets (evaluation protocols) on disk, keyed by the model's weights and the sequences.

**A bag readout without the model** (:class:`KmerBagEmbedder`, chosen by :func:`load_embedder` for a BarcodeMAE
folder with ``readout="kmer_bag"`` on the CPU): the embedding is the mean of the token embeddings of the barcode's
overlapping k-mers, so only the ``token_embeddings.weight`` tensor of ``model.safetensors`` is read and the
embedding is k-mer counts times that table (:mod:`barcodemae.kmers`, numpy): neither torch nor transformers is
imported, and the result equals `AutoModel`'s ``pooler_output`` (tested). torch, transformers and tqdm are imported
only by the functions that use them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from barcodemae.data import BarcodeRecord, CleaningReport, detect_format, iter_barcodes
from barcodemae.io import check_output_path, embedding_outputs, open_embeddings
from barcodemae.kmers import kmer_bag, kmer_bag_counts

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "pretrained" / "barcodemae-small-genus"


def default_model_path() -> str:
    """The shipped encoder, or the folder named by ``$BARCODEMAE_MODEL``."""
    return os.environ.get("BARCODEMAE_MODEL", str(DEFAULT_MODEL))


def pick_device(device: str | None = None) -> torch.device:
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_encoder(path: str | os.PathLike | None = None, device: str | None = None, progress: bool = True):
    """Load ``(model, tokenizer)`` from a local folder (offline-safe: ``local_files_only`` for folders); without
    ``progress`` no "Loading weights" bar is shown."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(path or default_model_path())
    if not Path(path).is_dir():
        raise FileNotFoundError(f"Model folder not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=True)
    bar = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(path, trust_remote_code=True, local_files_only=True)
    finally:
        if bar and not progress:
            hf_logging.enable_progress_bar()
    return model.to(pick_device(device)).eval(), tokenizer


def model_fingerprint(model) -> str:
    """16 hex digits of SHA-256 over a model's config and weights: two folders with the same fingerprint embed alike."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def code_fingerprint(model) -> str:
    """8 hex digits of SHA-256 over the source file of the model's class: the code that turns ids into vectors."""
    source = Path(inspect.getsourcefile(type(model)) or "")
    return hashlib.sha256(source.read_bytes() if source.is_file() else b"").hexdigest()[:8]


def sequences_fingerprint(sequences: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(sequence.encode() + b"\n")
    return digest.hexdigest()[:16]


def cached_embeddings(
    embedder: Embedder, sequences: Sequence[str], cache_dir: str | os.PathLike | None, **corruption: float
) -> np.ndarray:
    """``embedder(sequences, **corruption)``, read from / written to
    ``cache_dir/<model>-<code>-<sequences><settings>.npy`` when a cache is given: keyed by the model's weights and
    config, its modeling code (:func:`code_fingerprint`), the exact sequences and :func:`settings_key` (bf16, and
    the corruption of corrupted inputs)."""
    if cache_dir is None:
        return embedder(sequences, progress=True, **corruption)
    model = f"{model_fingerprint(embedder.model)}-{code_fingerprint(embedder.model)}"
    name = f"{model}-{sequences_fingerprint(sequences)}{settings_key(embedder, corruption)}"
    path = Path(cache_dir) / f"{name}.npy"
    if path.exists():
        return np.load(path)
    embeddings = embedder(sequences, progress=True, **corruption)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.npy")
    np.save(temporary, embeddings)
    temporary.replace(path)
    return embeddings


def settings_key(embedder: Embedder, corruption: dict[str, float]) -> str:
    """What else changes the embeddings: ``""`` for clean fp32 ones, ``-bf16`` under bf16 autocast, and for corrupted
    inputs e.g. ``-deletion_rate0.3-seed0-batch256-sorted`` (the batches draw the corruption)."""
    key = "-bf16" if embedder.autocast_dtype is not None else ""
    rates = [f"{name}{rate:g}" for name, rate in sorted(corruption.items()) if name != "seed" and rate]
    if rates:
        order = "sorted" if embedder.sort_by_length else "unsorted"
        key += "-" + "-".join([*rates, f"seed{corruption.get('seed', 0)}", f"batch{embedder.batch_size}", order])
    return key


def corrupt_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rate: float,
    mode: str,
    special_ids: Sequence[int],
    mask_token_id: int,
    pad_token_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inference-time corruption (the paper's Fig. 3): ``floor(rate * n)`` of each row's ``n`` non-special tokens are
    replaced by ``[MASK]`` (``mode="masking"``) or removed (``mode="deletion"``; the remaining tokens keep their
    original position ids). Returns ``(input_ids, attention_mask, position_ids or None)``."""
    import torch

    maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids)))
    noise = torch.rand(input_ids.shape, generator=generator)
    noise = torch.where(maskable, noise, 2.0)
    count = (maskable.sum(1) * rate).floor().long()
    rank = noise.argsort(1).argsort(1)
    chosen = rank < count[:, None]
    if mode == "masking":
        return input_ids.masked_fill(chosen, mask_token_id), attention_mask, None
    if mode != "deletion":
        raise ValueError(f"Unknown corruption mode {mode!r}")
    keep = attention_mask.bool() & ~chosen
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, original order
    length = int(keep.sum(1).max())
    kept_ids = torch.gather(input_ids, 1, order[:, :length])
    kept_mask = torch.gather(keep, 1, order[:, :length])
    return kept_ids.masked_fill(~kept_mask, pad_token_id), kept_mask.long(), order[:, :length]


class Embedder:
    """Callable ``embed(sequences) -> (N, hidden) float32`` array, in input order.

    Args:
        model, tokenizer: an encoder and its tokenizer (see `load_encoder`).
        batch_size: sequences per forward pass; default 32 on CPU (1.24x faster than 128 for the small model on a
            2-core CPU, see benchmarks/RESULTS.md) and 256 on a GPU or for a ``kmer_bag`` readout (no encoder pass).
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
        sort_by_length: batch length-sorted sequences to avoid padding waste.
    """

    def __init__(
        self, model, tokenizer, batch_size: int | None = None, precision: str = "auto", sort_by_length: bool = True
    ):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sort_by_length = sort_by_length
        self.device = next(model.parameters()).device
        bag = getattr(model.config, "readout", None) == "kmer_bag"  # lookups only: big batches pay (2.1x at 256 vs 32)
        self.batch_size = batch_size or (256 if bag or self.device.type != "cpu" else 32)
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.hidden_size = getattr(model.config, "embedding_size", model.config.hidden_size)
        self._fingerprint: str | None = None

    @property
    def limits(self) -> tuple[int, int]:
        """``(max_length in bases, k_mer)`` the model's tokenizer reads; records are cleaned to these."""
        tokenizer, config = self.tokenizer, self.model.config
        k_mer = int(getattr(tokenizer, "k_mer", None) or getattr(config, "k_mer", 1))
        max_length = int(tokenizer.model_max_length) * k_mer
        return min(max_length, int(getattr(config, "max_length", max_length))), k_mer

    def fingerprint(self) -> str:
        """What decides the embeddings, hashed (16 hex digits): for a BarcodeMAE bag readout the k-mer rules and the
        token embedding table (:func:`bag_fingerprint`, the same as :class:`KmerBagEmbedder`'s), otherwise
        :func:`model_fingerprint` (config and every weight)."""
        if self._fingerprint is None:
            config = self.model.config
            if getattr(config, "model_type", None) == "barcodemae" and getattr(config, "readout", None) == "kmer_bag":
                weight = self.model.get_input_embeddings().weight.detach().float().cpu().numpy()
                rules = bag_rules(
                    config.k_mer, self.tokenizer.model_max_length, config.max_length, config.first_kmer_id
                )
                self._fingerprint = bag_fingerprint(rules, weight)
            else:
                self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | None = None, **kwargs) -> Embedder:
        return cls(*load_encoder(path, device), **kwargs)

    def __call__(
        self,
        sequences: Sequence[str],
        *,
        masking_rate: float = 0.0,
        deletion_rate: float = 0.0,
        seed: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        if masking_rate and deletion_rate:
            raise ValueError("Use masking_rate or deletion_rate, not both.")
        order = np.argsort([-len(s) for s in sequences], kind="stable") if self.sort_by_length else None
        ordered = [sequences[i] for i in order] if order is not None else list(sequences)
        generator = torch.Generator().manual_seed(seed)
        output = np.empty((len(sequences), self.hidden_size), dtype=np.float32)
        starts = range(0, len(ordered), self.batch_size)
        for start in tqdm(starts, disable=not progress, desc="embedding", unit="batch", leave=False):
            batch = ordered[start : start + self.batch_size]
            rate, mode = (masking_rate, "masking") if masking_rate else (deletion_rate, "deletion")
            output[start : start + len(batch)] = self._embed_batch(batch, rate, mode, generator)
        if order is not None:
            restored = np.empty_like(output)
            restored[order] = output
            output = restored
        return output

    def _tokenize(self, batch: list[str]):
        """Padded ids and attention mask; BarcodeMAE tokenizers have a numpy path with the same result."""
        if hasattr(self.tokenizer, "encode_barcodes"):
            return self.tokenizer.encode_barcodes(batch)
        return self.tokenizer(batch, padding=True, truncation=True, return_tensors="pt")

    def _embed_batch(self, batch: list[str], rate: float, mode: str, generator: torch.Generator) -> np.ndarray:
        import torch

        with torch.inference_mode():
            encoded = self._tokenize(batch)
            input_ids, attention_mask, position_ids = encoded["input_ids"], encoded["attention_mask"], None
            if rate > 0:
                input_ids, attention_mask, position_ids = corrupt_tokens(
                    input_ids,
                    attention_mask,
                    rate,
                    mode,
                    special_ids=self.tokenizer.all_special_ids,
                    mask_token_id=self.tokenizer.mask_token_id,
                    pad_token_id=self.tokenizer.pad_token_id,
                    generator=generator,
                )
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if position_ids is not None:
                inputs["position_ids"] = position_ids
            inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                if getattr(self.model.config, "model_type", None) == "barcodemae":
                    return self._barcodemae_embedding(inputs).float().cpu().numpy()
                output = self.model(**inputs)
            weights = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (output.last_hidden_state.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return pooled.cpu().numpy()

    def _barcodemae_embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``pooler_output`` by ``barcode_embedding``, which skips the transformer layers where the readout does not
        need them (the ``kmer_bag`` readout, deleted tokens included: it drops k-mers across a deletion)."""
        return self.model.barcode_embedding(**inputs)


# ------------------------------------------------------------------------------------------- bag readout
BAG_WEIGHT = "token_embeddings.weight"
FIRST_KMER_ID = 5  # [PAD] [UNK] [CLS] [SEP] [MASK], then the k-mers (tokenization_barcodemae)


def bag_rules(k_mer: int, max_tokens: int, max_length: int, first_kmer_id: int) -> dict[str, int]:
    """The numbers that, with the token embedding table, decide a bag readout's embeddings."""
    return {"k_mer": int(k_mer), "max_tokens": int(max_tokens), "max_length": int(max_length), "first": first_kmer_id}


def bag_fingerprint(rules: Mapping[str, int], weight: np.ndarray) -> str:
    """16 hex digits of SHA-256 over a bag readout's rules and its float32 token embedding table."""
    digest = hashlib.sha256(json.dumps({"readout": "kmer_bag", **rules}, sort_keys=True).encode())
    digest.update(str(weight.shape).encode())
    digest.update(np.ascontiguousarray(weight, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


class KmerBagEmbedder:
    """``embed(sequences) -> (N, hidden)`` for a BarcodeMAE folder with ``readout="kmer_bag"``, from its config,
    tokenizer config and token embedding table alone (module docstring); :class:`Embedder`'s interface for
    `identify`, `embed` and the reference index (no corrupted inputs)."""

    BATCH = 512  # barcodes per counts matrix (512 x vocabulary float32: 8 MiB for k = 6)

    def __init__(self, weight: np.ndarray, k_mer: int, max_tokens: int, max_length: int, first_kmer_id: int):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.rules = bag_rules(k_mer, max_tokens, max_length, first_kmer_id)
        self.hidden_size = self.weight.shape[1]
        self.limits = (min(max_tokens * k_mer, max_length), k_mer)
        self._fingerprint: str | None = None

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> KmerBagEmbedder | None:
        """The bag embedder of a model folder, or None when the folder is not a BarcodeMAE bag readout with its
        k-mer tokenizer (then the whole model is needed: :func:`load_encoder`)."""
        folder = Path(path)
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            tokenizer = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        k_mer = config.get("k_mer")
        bag = config.get("model_type") == "barcodemae" and config.get("readout") == "kmer_bag"
        if not bag or tokenizer.get("tokenizer_class") != "BarcodeMAETokenizer" or tokenizer.get("k_mer") != k_mer:
            return None
        if not (folder / "model.safetensors").is_file() or config.get("unk_token_id", 1) != 1 or not k_mer:
            return None
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="np") as tensors:
            if BAG_WEIGHT not in set(tensors.keys()):
                return None
            weight = tensors.get_tensor(BAG_WEIGHT)
        if weight.ndim != 2 or len(weight) != FIRST_KMER_ID + 4**k_mer:
            return None
        max_tokens = int(tokenizer.get("model_max_length") or config.get("max_length", 660) // k_mer)
        return cls(weight, k_mer, max_tokens, int(config.get("max_length", max_tokens * k_mer)), FIRST_KMER_ID)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = bag_fingerprint(self.rules, self.weight)
        return self._fingerprint

    def __call__(self, sequences: Sequence[str], *, progress: bool = False) -> np.ndarray:
        rules = self.rules
        output = np.empty((len(sequences), self.hidden_size), dtype=np.float32)
        for start in range(0, len(sequences), self.BATCH):
            batch = sequences[start : start + self.BATCH]
            counts = kmer_bag_counts(batch, rules["k_mer"], rules["max_tokens"], rules["first"], len(self.weight))
            output[start : start + len(batch)] = kmer_bag(counts, self.weight)
        return output


def load_embedder(
    path: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    progress: bool = True,
) -> Embedder | KmerBagEmbedder:
    """The embedder of a model folder: :class:`KmerBagEmbedder` for a bag readout on the CPU (no torch, no
    transformers), else :class:`Embedder` over the whole model (:func:`load_encoder`; ``progress``: its loading
    bar)."""
    path = str(path or default_model_path())
    if not Path(path).is_dir():
        raise FileNotFoundError(f"Model folder not found: {path}")
    if device in (None, "cpu") and precision != "bf16":
        light = KmerBagEmbedder.from_folder(path)
        if light is not None and (device == "cpu" or not _cuda_possible()):
            return light
    return Embedder(*load_encoder(path, device, progress), batch_size=batch_size, precision=precision)


def _cuda_possible() -> bool:
    """Whether torch could find a GPU, asked only when an NVIDIA driver is there (so a CPU start skips torch)."""
    if not Path("/proc/driver/nvidia").exists():
        return False
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------- files
DEFAULT_CHUNK = 16384  # records a chunk; identify searches a chunk at once, and larger batches amortise the IVF scan


def check_input(path: str | os.PathLike) -> Path:
    """A readable barcode file with a known suffix (checked before the model is loaded)."""
    path = Path(path)
    detect_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    return path


def iter_records(
    path: str | os.PathLike,
    embedder: Embedder,
    report: CleaningReport,
    strict: bool = False,
    *,
    taxonomy: Mapping[str, dict[str, str]] | None = None,
) -> Iterator[BarcodeRecord]:
    """Cleaned records of ``path`` for ``embedder``'s model; with ``strict`` any skip for its sequence raises
    ``DataError``. ``taxonomy`` labels FASTA records by id (:func:`barcodemae.data.iter_barcodes`)."""
    max_length, k_mer = embedder.limits
    return iter_barcodes(path, max_length, k_mer, report, "raise" if strict else "skip", taxonomy=taxonomy)


def embed_chunks(
    records: Iterable[BarcodeRecord], embedder: Embedder, chunk_size: int = DEFAULT_CHUNK, progress: bool = True
) -> Iterator[tuple[list[BarcodeRecord], np.ndarray]]:
    """``(records, (n, hidden) embeddings)`` per chunk of at most ``chunk_size`` records, in input order."""
    bar = _Bar()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="embedding", unit=" barcodes", dynamic_ncols=True)
    chunk: list[BarcodeRecord] = []
    try:
        for record in records:
            chunk.append(record)
            if len(chunk) == chunk_size:
                yield chunk, embedder([r.sequence for r in chunk])
                bar.update(len(chunk))
                chunk = []
        if chunk:
            yield chunk, embedder([r.sequence for r in chunk])
            bar.update(len(chunk))
    finally:
        bar.close()


class _Bar:
    """No progress bar (tqdm not imported)."""

    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def embed_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    embedder: Embedder,
    *,
    strict: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> CleaningReport:
    """Embed every kept record of ``input_path`` into ``output_path`` (format by suffix, see ``barcodemae.io``)."""
    report = CleaningReport()
    with open_embeddings(output_path, embedder.hidden_size) as writer:
        for chunk, embeddings in embed_chunks(
            iter_records(input_path, embedder, report, strict), embedder, chunk_size, progress
        ):
            writer.write([record.record_id for record in chunk], embeddings)
    return report


def check_embedding_output(path: str | os.PathLike) -> None:
    for output in embedding_outputs(path):
        check_output_path(output)
