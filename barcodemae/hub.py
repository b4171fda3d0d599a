"""Hub release: export a pretraining checkpoint as an encoder-only folder, write its model card, push it.

* :func:`export_checkpoint`: a pretraining checkpoint folder (``config.json`` of ``BarcodeMAEForPreTraining`` +
  ``model.safetensors`` + tokenizer files), or a run folder holding only ``checkpoint-N`` sub-folders (the highest
  ``N`` is used), → the encoder-only folder of ``BarcodeMAEForPreTraining.save_encoder`` plus ``README.md``. The
  folder is built next to the destination and renamed onto it when complete. Without tokenizer files in the
  checkpoint the tokenizer is rebuilt from the config (``k_mer``, ``max_length // k_mer`` tokens).
* :func:`write_model_card`: ``README.md`` from ``model_card/template.md`` (Jinja, via ``ModelCard.from_template``),
  with ``model-index`` metadata from an evaluation results JSON when one is given (see :func:`load_results`).
* :func:`push_folder`: checks that the folder loads offline with ``AutoModel``/``AutoTokenizer``
  (``trust_remote_code=True``, ``local_files_only=True``), then ``create_repo(exist_ok=True)`` + ``upload_folder``;
  the token comes from ``--token`` or the usual Hugging Face places (``HF_TOKEN``, ``hf auth login``).
  :func:`upload_plan` lists exactly the files ``upload_folder`` would send (same ignore rules).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barcodemae.io import atomic_folder, atomic_text

TEMPLATE = Path(__file__).resolve().parent.parent / "model_card" / "template.md"
# Added to huggingface_hub's own defaults (.git, .cache/huggingface): never upload Python caches or temp files.
IGNORE_PATTERNS = ["__pycache__", "__pycache__/*", "*/__pycache__/*", "*.pyc", ".*.tmp", "*/.*.tmp"]
RESULT_METRICS = {
    "species_finetune_accuracy": (
        "Species accuracy of the fine-tuned classifier (seen species, test)",
        "accuracy",
        "test",
    ),
    "species_linear_probe_accuracy": ("Species linear probe accuracy (seen species, test)", "accuracy", "test"),
    "species_linear_probe_macro_f1": ("Species linear probe macro-F1 (seen species, test)", "f1", "test"),
    "genus_1nn_unseen_accuracy": ("Genus 1-NN accuracy (unseen species, test_unseen)", "accuracy", "test_unseen"),
    "genus_1nn_unseen_per_species": (
        "Genus 1-NN accuracy, mean over species (unseen species, test_unseen)",
        "accuracy",
        "test_unseen",
    ),
    "species_1nn_test_accuracy": ("Species 1-NN accuracy (seen species, test)", "accuracy", "test"),
    "harmonic_mean": ("Harmonic mean of probe and genus 1-NN accuracy", "harmonic_mean", "test"),
    "bin_ami": ("Zero-shot clustering AMI vs BIN", "ami", "test"),
    "species_ami": ("Zero-shot clustering AMI vs species", "ami", "test"),
}
REQUIRED_FILES = ("config.json", "model.safetensors")


# ------------------------------------------------------------------------------------------- export
def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself if it holds a model, else its highest ``checkpoint-N`` sub-folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder not found")
    if all((path / name).is_file() for name in REQUIRED_FILES):
        return path
    steps = sorted(
        (int(match.group(1)), child)
        for child in path.iterdir()
        if (match := re.fullmatch(r"checkpoint-(\d+)", child.name)) and (child / "config.json").is_file()
    )
    if not steps:
        raise FileNotFoundError(f"{path}: no {' + '.join(REQUIRED_FILES)} and no checkpoint-N sub-folder")
    return steps[-1][1]


def _architectures(checkpoint: Path) -> list[str]:
    return json.loads((checkpoint / "config.json").read_text(encoding="utf-8")).get("architectures") or []


def _load_encoder(folder: Path):
    """An encoder-only folder (e.g. ``train.py``'s ``OUTPUT_DIR/encoder``), re-exported with this code."""
    from modeling_barcodemae import BarcodeMAEModel

    return BarcodeMAEModel.from_pretrained(folder, local_files_only=True).eval()


def _load_classifier_encoder(checkpoint: Path):
    """The encoder of a fine-tuned classifier checkpoint, its config naming the labels that trained it."""
    from modeling_barcodemae import ENCODER_AUTO_MAP, BarcodeMAEForSequenceClassification

    encoder = BarcodeMAEForSequenceClassification.from_pretrained(checkpoint, local_files_only=True).barcodemae.eval()
    config = encoder.config
    config.trained_labels = config.trained_labels or (
        f"{config.num_labels} labels of a `barcodemae finetune` classifier ({checkpoint.name}); see its run_info.json"
    )
    config.auto_map = dict(ENCODER_AUTO_MAP)
    return encoder


def _load_pretraining(checkpoint: Path):
    from modeling_barcodemae import BarcodeMAEForPreTraining

    architectures = _architectures(checkpoint)
    if "BarcodeMAEForPreTraining" not in architectures:
        found = ", ".join(architectures) or "none"
        raise ValueError(
            f"{checkpoint}: config.json is not a BarcodeMAEForPreTraining checkpoint (architectures: {found})"
        )
    if not (checkpoint / "model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint}: model.safetensors not found")
    return BarcodeMAEForPreTraining.from_pretrained(checkpoint, local_files_only=True).eval()


def _load_tokenizer(checkpoint: Path, config):
    from tokenization_barcodemae import BarcodeMAETokenizer

    if (checkpoint / "tokenizer_config.json").is_file():
        return BarcodeMAETokenizer.from_pretrained(checkpoint, local_files_only=True)
    return BarcodeMAETokenizer(k_mer=config.k_mer, model_max_length=config.max_length // config.k_mer)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    results_key: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    embedding_frames: int | None = None,
    readout: str | None = None,
) -> Path:
    """Write the encoder-only Hub folder of ``checkpoint`` (a pretraining checkpoint, or an encoder-only folder)
    plus ``README.md`` to ``out_dir``; returns it. ``embedding_frames`` and ``readout`` set the exported readout (see
    `BarcodeMAEConfig`)."""
    source = find_checkpoint(checkpoint)
    if _architectures(source) == ["BarcodeMAEModel"]:
        model = _load_encoder(source)
        save_encoder = model.save_pretrained
    elif _architectures(source) == ["BarcodeMAEForSequenceClassification"]:  # a `barcodemae finetune` checkpoint
        model = _load_classifier_encoder(source)
        save_encoder = model.save_pretrained
    else:
        model = _load_pretraining(source)
        save_encoder = model.save_encoder
    tokenizer = _load_tokenizer(source, model.config)
    if embedding_frames is not None:
        model.config.embedding_frames = embedding_frames
    if readout is not None:
        model.config.readout = readout
    model.config._check_consistency()  # the config's own range check and message
    out_dir = Path(out_dir)
    with atomic_folder(out_dir, replace=lambda old: overwrite) as folder:
        save_encoder(folder)
        tokenizer.save_pretrained(folder)
        write_model_card(
            folder,
            results=results,
            results_key=results_key,
            model_name=model_name or out_dir.name,
            repo_id=repo_id,
            source=_describe_source(source),
        )
    return out_dir


def _describe_source(checkpoint: Path) -> str:
    state = checkpoint / "trainer_state.json"
    if state.is_file():
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
        return f"`{checkpoint.name}` (step {step})"
    run_info = checkpoint.parent / "run_info.json"  # train.py's OUTPUT_DIR/encoder: exported from the best step
    if checkpoint.name == "encoder" and run_info.is_file():
        best = json.loads(run_info.read_text(encoding="utf-8")).get("best_checkpoint") or "the last step"
        return f"`{checkpoint.parent.name}/encoder` (exported from {Path(best).name})"
    return f"`{checkpoint.name}`"


# ------------------------------------------------------------------------------------------- model card
def load_results(path: str | os.PathLike, key: str | None = None, model_name: str | None = None) -> dict[str, Any]:
    """The metrics of one model from an evaluation results JSON.

    Accepted layouts: ``barcodemae evaluate``'s ``results.json`` (its ``results`` object), ``{model: {metric:
    value}}`` (the entry ``key``; else the only entry; else the one named ``model_name``) or a flat
    ``{metric: value}``.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if isinstance(data.get("results"), dict) and "protocol" in data:  # barcodemae evaluate's results.json
        data = data["results"]
    if any(name in data for name in RESULT_METRICS):
        return data
    entries = {name: value for name, value in data.items() if isinstance(value, dict)}
    chosen = key or (next(iter(entries)) if len(entries) == 1 else model_name)
    if chosen not in entries:
        raise ValueError(f"{path}: pick the model with --results-key; entries: {', '.join(entries) or 'none'}")
    return entries[chosen]


def _bounds(metrics: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The bootstrap 95% interval ``barcodemae evaluate`` stores beside ``key`` (``<key>_interval``), if any."""
    value = metrics.get(f"{key}_interval")
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(bound) for bound in value):
        return float(value[0]), float(value[1])
    return None


def eval_results(metrics: dict[str, Any], dataset_name: str = "BIOSCAN-5M") -> list:
    """One model-index entry per metric present; its bootstrap 95% interval, where there is one, goes in the
    entry's ``args`` as ``bootstrap_interval_95: [low, high]``."""
    from huggingface_hub import EvalResult

    found = []
    for key, (label, metric_type, split) in RESULT_METRICS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and value == value:  # skip missing and NaN
            found.append(
                EvalResult(
                    task_type="feature-extraction",
                    task_name="DNA barcode classification",
                    dataset_type="bioscan-5m",
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=label,
                    metric_value=round(float(value), 4),
                    metric_args=_interval_args(metrics, key),
                )
            )
    return found


def _interval_args(metrics: dict[str, Any], key: str) -> dict[str, list[float]] | None:
    bounds = _bounds(metrics, key)
    return None if bounds is None else {"bootstrap_interval_95": [round(bound, 4) for bound in bounds]}


def _results_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "No evaluation results were attached to this export (`barcodemae card FOLDER --results results.json`)."
    rows = [
        f"| {label} | {metrics[key]:.2f} | {_interval_text(metrics, key)} |"
        for key, (label, _, _) in RESULT_METRICS.items()
        if _number(metrics.get(key))
    ]
    return "\n".join(["| Metric | Value | Bootstrap 95% interval |", "|---|---|---|", *rows])


def _interval_text(metrics: dict[str, Any], key: str) -> str:
    bounds = _bounds(metrics, key)
    return "–" if bounds is None else f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value


def render_model_card(
    folder: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    source: str = "not recorded",
) -> str:
    """The README.md text for the exported folder ``folder`` (reads its ``config.json``)."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    name = model_name or folder.name
    card_data = ModelCardData(
        model_name=name,
        license="mit",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=["biology", "dna", "dna-barcoding", "coi", "bioscan", "barcodemae", "custom_code"],
        eval_results=eval_results(metrics) if metrics else None,
    )
    weights = folder / "model.safetensors"
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=name,
        repo_id=repo_id or name,
        hidden_size=config.get("hidden_size"),
        num_hidden_layers=config.get("num_hidden_layers"),
        num_attention_heads=config.get("num_attention_heads"),
        k_mer=config.get("k_mer"),
        embedding_size=2 * config["hidden_size"] if config.get("readout") == "mean+kmer_bag" else config["hidden_size"],
        readout_text=readout_text(config),
        trained_labels=config.get("trained_labels") or "none (self-supervised pretraining only)",
        trained_by_labels=bool(config.get("trained_labels")),
        readout=config.get("readout", "mean"),
        vocab_size=4 ** int(config.get("k_mer", 6)) + 5,
        max_length=config.get("max_length"),
        objective={"mae": "masked autoencoder (BarcodeMAE)", "mlm": "masked language modelling"}.get(
            config.get("objective"), config.get("objective")
        ),
        mask_ratio=config.get("mask_ratio"),
        parameters=_parameter_count(weights),
        source=source,
        results_text=_results_text(metrics),
    )
    return str(card)


def readout_text(config: dict[str, Any]) -> str:
    """How the folder's ``pooler_output`` is computed, in words."""
    frames = int(config.get("embedding_frames", 1))
    mean = "mean of the last hidden states over the real (non-padding) k-mer tokens"
    if frames > 1:
        mean += f", averaged over {frames} reading frames ({frames} encoder passes)"
    bag = "mean of the learned token embeddings over every overlapping k-mer (all reading frames, no extra pass)"
    return {"kmer_bag": bag, "mean+kmer_bag": f"[{mean} ; {bag}], each half L2-normalised"}.get(
        config.get("readout", "mean"), mean
    )


def _parameter_count(weights: Path) -> str:
    from safetensors import safe_open

    if not weights.is_file():
        return "unknown"
    with safe_open(str(weights), "np") as handle:
        total = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118
    return f"{total / 1e6:.2f}M"


def write_model_card(
    folder: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    results_key: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    source: str = "not recorded",
) -> Path:
    """(Re)write ``folder/README.md`` atomically; returns its path."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; not an exported model folder")
    metrics = load_results(results, results_key, model_name or folder.name) if results else None
    text = render_model_card(folder, metrics=metrics, model_name=model_name, repo_id=repo_id, source=source)
    with atomic_text(folder / "README.md") as handle:
        handle.write(text)
    return folder / "README.md"


# ------------------------------------------------------------------------------------------- push
def check_loadable(folder: str | os.PathLike) -> str:
    """Load the folder offline with the Auto classes (remote code); returns ``"ModelClass + TokenizerClass"``."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    missing = [name for name in (*REQUIRED_FILES, "tokenizer_config.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not an exported model folder, missing {', '.join(missing)}")
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    return f"{type(model).__name__} + {type(tokenizer).__name__}"


@dataclass
class PlannedFile:
    path_in_repo: str
    size: int


def upload_plan(folder: str | os.PathLike) -> list[PlannedFile]:
    """The files ``upload_folder`` sends for ``folder`` (huggingface_hub's ignore rules plus ours), sorted."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = Path(folder).resolve()
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(files, ignore_patterns=[*IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS])
    return [PlannedFile(name, files[name].stat().st_size) for name in kept]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload BarcodeMAE encoder",
) -> str:
    """Create the repo if needed and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=list(IGNORE_PATTERNS),
    )
    return str(info.commit_url)


__all__ = [
    "PlannedFile",
    "check_loadable",
    "eval_results",
    "export_checkpoint",
    "find_checkpoint",
    "load_results",
    "push_folder",
    "render_model_card",
    "upload_plan",
    "write_model_card",
]
