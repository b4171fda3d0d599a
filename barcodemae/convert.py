"""The authors' weights → an encoder Hub folder of this package (``barcodemae convert SOURCE OUT``).

Sources:

* a checkpoint of the authors' code (bioscan-ml/BarcodeMAE and BarcodeBERT, ``barcodebert/pretraining.py``): a
  ``torch.save``'d dict with ``"model"`` (arch ``"maelm"``: the encoder, a transformers ``BertModel``; arch
  ``"transformer"``, the MLM baseline: a ``BertForTokenClassification`` with the encoder under ``bert.``; keys may
  carry ``module.``), ``"bert_config"`` (``BertConfig.to_dict()``) and ``"config"`` (the run's
  ``argparse.Namespace``). It is read with ``torch.load(weights_only=True)``, ``argparse.Namespace`` being the one
  class allowed beyond tensors and plain values: nothing else is unpickled.
* a transformers folder of a ``BertModel`` / ``BertForMaskedLM`` / ``BertForTokenClassification`` (``config.json``
  plus ``model.safetensors`` or ``pytorch_model.bin``) on a k-mer vocabulary: one listed by ``tokenizer.json`` (a
  WordLevel model), ``vocab.json`` or ``vocab.txt`` holding every ACGT k-mer, or, without such a file, the
  authors' own (``[MASK]``, ``[UNK]``, then the k-mers in ``itertools.product("ACGT")`` order), recognised by its
  size ``4**k + 2``.

The result is a `BarcodeMAEModel` in BERT's design (``norm_position="post"``): the token-type row 0 (the only one
used) is added to the position rows, query/key/value are concatenated, the vocabulary rows are re-ordered to this
package's tokenizer and the position rows cut to ``max_length // k``. Its ``pooler_output`` is the authors' barcode
embedding (``readout="mean"``, one frame): the mean of the last hidden states over the barcode's k-mer tokens, for
the first ``max_length`` bases read in non-overlapping k-mers from the first base.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from itertools import product
from pathlib import Path
from typing import Any

from barcodemae.io import atomic_folder

NUCLEOTIDES = "ACGT"
AUTHORS_SPECIALS = ("[MASK]", "[UNK]")  # the authors' vocabulary: these, then the k-mers in product order
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
IGNORED_PREFIXES = ("pooler.", "classifier.", "cls.")  # heads of the authors' and transformers' BERT classes
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
LAYER_WEIGHTS = {  # BERT layer parameter → ours (BarcodeMAELayer), besides the fused query/key/value
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "mlp.0",
    "output.dense": "mlp.2",
    "output.LayerNorm": "mlp_norm",
}


def authors_vocabulary(k_mer: int) -> dict[str, int]:
    """The authors' k-mer vocabulary: ``[MASK]=0``, ``[UNK]=1``, then every ACGT k-mer in product order."""
    tokens = [*AUTHORS_SPECIALS, *("".join(kmer) for kmer in product(NUCLEOTIDES, repeat=k_mer))]
    return {token: index for index, token in enumerate(tokens)}


# ------------------------------------------------------------------------------------------- reading
def read_authors_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without executing code; a ``ValueError`` for anything else."""
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ImportError) as error:
        raise ValueError(
            f"{path}: not a checkpoint of the BarcodeMAE/BarcodeBERT authors' code readable without running its "
            f"pickled code (torch.load with weights_only=True: {_unpickling_reason(error)})"
        ) from None
    if not isinstance(checkpoint, dict) or not {"model", "bert_config", "config"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path}: not a checkpoint of the BarcodeMAE/BarcodeBERT authors' code (it needs the entries model, "
            f"bert_config and config; found {found})"
        )
    return checkpoint


def _unpickling_reason(error: Exception) -> str:
    """The one line of torch's long weights-only message that says what was refused."""
    message = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if refused:
        return f"it holds `{refused.group(1)}`, which only running code could rebuild"
    detail = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
    lines = message.strip().splitlines()
    return detail.group(1) if detail else (lines[0] if lines else type(error).__name__)


def run_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The run's arguments (``checkpoint["config"]``) as a dict."""
    config = checkpoint["config"]
    return dict(vars(config)) if isinstance(config, argparse.Namespace) else dict(config)


def read_bert_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """``(bert config, state dict, vocabulary)`` of a transformers BERT folder on a k-mer vocabulary."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert":
        raise ValueError(f"{folder}: config.json is not a BERT model's (model_type {config.get('model_type')!r})")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        import torch

        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(f"{weights}: not a plain state dict ({str(error).splitlines()[0]})") from None
    return config, state, folder_vocabulary(folder, config["vocab_size"])


def folder_vocabulary(folder: Path, vocab_size: int) -> dict[str, int]:
    """The token → id map of the folder's tokenizer files, or the authors' when none lists tokens and
    ``vocab_size`` is ``4**k + 2``."""
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        model = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("model", {})
        if model.get("type") != "WordLevel":
            raise ValueError(f"{tokenizer_json}: a {model.get('type')} tokenizer, not a k-mer (WordLevel) one")
        return model["vocab"]
    if (folder / "vocab.json").is_file():
        return json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        return {token.strip(): index for index, token in enumerate(lines)}
    for k_mer in range(1, 9):
        if vocab_size == 4**k_mer + len(AUTHORS_SPECIALS):
            return authors_vocabulary(k_mer)
    raise ValueError(
        f"{folder}: no tokenizer.json, vocab.json or vocab.txt, and vocab_size {vocab_size} is not 4**k + 2 (the "
        "authors' k-mer vocabulary)"
    )


def vocabulary_k_mer(vocabulary: dict[str, int], where: Path) -> int:
    """k of a vocabulary holding every ACGT k-mer; a ``ValueError`` otherwise."""
    lengths = {len(token) for token in vocabulary if re.fullmatch(f"[{NUCLEOTIDES}]+", token)}
    for k_mer in sorted(lengths, reverse=True):
        if all("".join(kmer) in vocabulary for kmer in product(NUCLEOTIDES, repeat=k_mer)):
            return k_mer
    raise ValueError(f"{where}: the vocabulary does not hold every ACGT k-mer of any length")


# ------------------------------------------------------------------------------------------- mapping
def special_token_ids(vocabulary: dict[str, int]) -> dict[str, int]:
    """Their ids of the special tokens, by name whatever the brackets: ``{"UNK": 1, "MASK": 0, ...}``."""
    specials = {}
    for token, index in vocabulary.items():
        name = re.sub(r"[^A-Z]", "", token.upper())
        if not re.fullmatch(f"[{NUCLEOTIDES}N]+", token) and name in {"PAD", "UNK", "CLS", "SEP", "MASK"}:
            specials.setdefault(name, index)
    return specials


def vocabulary_rows(vocabulary: dict[str, int], k_mer: int) -> list[int]:
    """For each of our token ids, the row of their embedding matrix: the same k-mer, or the same special token
    (``[UNK]`` for one they lack: our ``[PAD]``, ``[CLS]``, ``[SEP]`` never reach an attended position)."""
    from tokenization_barcodemae import SPECIAL_TOKENS, kmer_vocabulary

    specials = special_token_ids(vocabulary)
    if "UNK" not in specials:
        raise ValueError("the vocabulary has no unknown-k-mer token ([UNK])")
    rows = []
    for token in kmer_vocabulary(k_mer):
        if token in SPECIAL_TOKENS:
            rows.append(specials.get(token.strip("[]"), specials["UNK"]))
        else:
            rows.append(vocabulary[token])
    return rows


def encoder_state(bert_state: dict[str, Any], num_layers: int, rows: list[int], positions: int) -> dict[str, Any]:
    """Our `BarcodeMAEModel` state dict from a ``BertModel`` one (prefixes already removed)."""
    import torch

    embeddings = "embeddings."
    state = {
        "token_embeddings.weight": bert_state[embeddings + "word_embeddings.weight"][torch.tensor(rows)],
        "position_embeddings.weight": bert_state[embeddings + "position_embeddings.weight"][:positions]
        + bert_state[embeddings + "token_type_embeddings.weight"][0],
        "embedding_norm.weight": bert_state[embeddings + "LayerNorm.weight"],
        "embedding_norm.bias": bert_state[embeddings + "LayerNorm.bias"],
    }
    for layer in range(num_layers):
        theirs, ours = f"encoder.layer.{layer}.", f"encoder.layers.{layer}."
        for kind in ("weight", "bias"):
            qkv = [bert_state[f"{theirs}attention.self.{part}.{kind}"] for part in ("query", "key", "value")]
            state[f"{ours}attention.qkv.{kind}"] = torch.cat(qkv)
            for their_name, our_name in LAYER_WEIGHTS.items():
                state[f"{ours}{our_name}.{kind}"] = bert_state[f"{theirs}{their_name}.{kind}"]
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def bert_encoder_weights(state: dict[str, Any], where: Path) -> dict[str, Any]:
    """The encoder's weights with ``module.`` and ``bert.`` prefixes removed and the heads left out."""
    stripped = {}
    for name, tensor in state.items():
        name = name.removeprefix("module.").removeprefix("bert.")
        if not name.startswith(IGNORED_PREFIXES) and name not in IGNORED_BUFFERS:
            stripped[name] = tensor
    if "embeddings.word_embeddings.weight" not in stripped:
        raise ValueError(f"{where}: no BERT encoder weights (embeddings.word_embeddings.weight is missing)")
    return stripped


def encoder_config(bert_config: dict[str, Any], k_mer: int, max_length: int, **extra: Any):
    """The `BarcodeMAEConfig` of the BERT encoder: post-norm blocks, learned positions, the authors' readout."""
    from configuration_barcodemae import BarcodeMAEConfig

    position_type = bert_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"position_embedding_type {position_type!r} is not supported (only absolute)")
    if bert_config["max_position_embeddings"] < max_length // k_mer:
        raise ValueError(f"max_position_embeddings {bert_config['max_position_embeddings']} < {max_length // k_mer}")
    return BarcodeMAEConfig(
        k_mer=k_mer,
        max_length=max_length,
        hidden_size=bert_config["hidden_size"],
        num_hidden_layers=bert_config["num_hidden_layers"],
        num_attention_heads=bert_config["num_attention_heads"],
        intermediate_size=bert_config["intermediate_size"],
        hidden_act=bert_config.get("hidden_act", "gelu"),
        hidden_dropout_prob=bert_config.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=bert_config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=bert_config.get("layer_norm_eps", 1e-12),
        initializer_range=bert_config.get("initializer_range", 0.02),
        position_embedding_type="absolute",
        norm_position="post",
        mask_sampling="bernoulli",
        readout="mean",
        embedding_frames=1,
        **extra,
    )


# ------------------------------------------------------------------------------------------- convert
def convert(
    source: str | os.PathLike, out_dir: str | os.PathLike, *, max_length: int = 660, overwrite: bool = False
) -> Path:
    """Write the encoder Hub folder of ``source`` (an authors' checkpoint file or a BERT folder) to ``out_dir``.
    ``max_length`` (bases read) applies to a folder; a checkpoint carries its own (``max_len``)."""
    source = Path(source)
    if source.is_dir():
        bert_config, state, vocabulary = read_bert_folder(source)
        k_mer = vocabulary_k_mer(vocabulary, source)
        architecture = (bert_config.get("architectures") or ["BertModel"])[0]
        objective, settings = ("mlm" if architecture == "BertForMaskedLM" else "mae"), None
        origin = f"the transformers folder `{source.name}` ({architecture})"
    elif source.is_file():
        checkpoint = read_authors_checkpoint(source)
        settings = run_settings(checkpoint)
        bert_config, state = checkpoint["bert_config"], checkpoint["model"]
        check_run_settings(settings, source)
        k_mer, max_length = int(settings["k_mer"]), int(settings.get("max_len", max_length))
        vocabulary = authors_vocabulary(k_mer)
        objective = "mae" if settings["arch"] == "maelm" else "mlm"
        epoch = f", epoch {checkpoint['epoch']}" if "epoch" in checkpoint else ""
        origin = f"the checkpoint `{source.name}` of the authors' code (arch `{settings['arch']}`{epoch})"
    else:
        raise FileNotFoundError(f"{source}: no such checkpoint file or model folder")
    if max(vocabulary.values()) >= bert_config["vocab_size"]:
        raise ValueError(f"{source}: the vocabulary has ids beyond the model's vocab_size {bert_config['vocab_size']}")
    config = encoder_config(bert_config, k_mer, max_length, objective=objective, **decoder_settings(settings))
    weights = bert_encoder_weights(state, source)
    try:
        our_state = encoder_state(
            weights, config.num_hidden_layers, vocabulary_rows(vocabulary, k_mer), config.max_position_embeddings
        )
    except KeyError as error:
        raise ValueError(f"{source}: BERT weight {error.args[0]} is missing") from None
    return write_folder(config, our_state, Path(out_dir), origin, settings, overwrite)


def check_run_settings(settings: dict[str, Any], source: Path) -> None:
    """Refuse runs whose tokens this package cannot reproduce."""
    if settings.get("arch") not in ("maelm", "transformer"):
        raise ValueError(f"{source}: arch {settings.get('arch')!r} (supported: maelm, transformer)")
    if settings.get("tokenizer", "kmer") != "kmer":
        raise ValueError(f"{source}: tokenizer {settings['tokenizer']!r} (only k-mer runs can be converted)")
    k_mer, stride = settings.get("k_mer"), settings.get("stride") or settings.get("k_mer")
    if k_mer is None or stride != k_mer:
        raise ValueError(f"{source}: k_mer {k_mer}, stride {stride} (only non-overlapping k-mers are supported)")
    if settings.get("tokenize_n_nucleotide") or settings.get("predict_n_nucleotide"):
        raise ValueError(f"{source}: a vocabulary with N k-mers (tokenize_n_nucleotide) is not supported")


def decoder_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The run's MAE decoder shape, recorded in the config (the decoder itself is not converted)."""
    if not settings or settings.get("arch") != "maelm":
        return {}
    names = {"decoder_embed_dim": "decoder_hidden_size", "decoder_n_layers": "decoder_num_hidden_layers"}
    names["decoder_n_heads"] = "decoder_num_attention_heads"
    return {ours: int(settings[theirs]) for theirs, ours in names.items() if settings.get(theirs) is not None}


def write_folder(config, state, out_dir: Path, origin: str, settings: dict[str, Any] | None, overwrite: bool) -> Path:
    """The encoder (config with ``auto_map``, safetensors, remote code), our tokenizer and the model card."""
    from modeling_barcodemae import ENCODER_AUTO_MAP, BarcodeMAEModel
    from tokenization_barcodemae import BarcodeMAETokenizer

    config.auto_map = dict(ENCODER_AUTO_MAP)
    model = BarcodeMAEModel(config)
    model.load_state_dict(state, strict=True)
    tokenizer = BarcodeMAETokenizer(k_mer=config.k_mer, model_max_length=config.max_position_embeddings)
    with atomic_folder(out_dir, replace=lambda old: overwrite) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(model_card(out_dir.name, config, origin, settings), encoding="utf-8")
    return out_dir


def model_card(name: str, config, origin: str, settings: dict[str, Any] | None) -> str:
    """A short card: where the weights come from, what the embedding is, and the run's arguments."""
    shape = f"{config.num_hidden_layers} layers × {config.num_attention_heads} heads × width {config.hidden_size}"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [dna-barcodes, barcodemae, bert, feature-extraction]",
        "---",
        f"# {name}",
        "",
        f"Converted with `barcodemae convert` from {origin}: a BERT encoder ({shape}, post-norm, learned positions, "
        f"{config.k_mer}-mer vocabulary mapped to this package's tokenizer).",
        "",
        "`pooler_output` is the authors' barcode embedding: the mean of the last hidden states over the barcode's "
        f"non-overlapping {config.k_mer}-mers, read from the first base over the first {config.max_length} bases.",
        "",
        "```python",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)',
        f'model = AutoModel.from_pretrained("{name}", trust_remote_code=True).eval()',
        'batch = tokenizer(["ACTTTATATTTTATTTTTGGAGCATGATCAGGAATAGTAGG"], padding=True, return_tensors="pt")',
        "embeddings = model(**batch).pooler_output",
        "```",
    ]
    if settings:
        lines += ["", "## The run's arguments (`ckpt['config']`)", "", "| argument | value |", "|---|---|"]
        lines += [f"| `{key}` | `{value}` |" for key, value in sorted(settings.items()) if _plain(value)]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, int, float, str))
        or (isinstance(value, (list, tuple)) and all(isinstance(item, (bool, int, float, str)) for item in value))
    )


__all__ = ["authors_vocabulary", "convert", "encoder_state", "read_authors_checkpoint", "vocabulary_rows"]
