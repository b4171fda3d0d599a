"""Pretrain a BarcodeMAE encoder (or the BarcodeBERT-style MLM baseline) with the Hugging Face Trainer.

    python train.py --data_file barcodes.tsv --preset small --objective mae --output_dir runs/mae --max_steps 2000
    accelerate launch train.py ... --bf16          # one or many GPUs (DDP)
    torchrun --nproc_per_node 2 train.py ...       # several CPU processes (gloo)
    python train.py run.yaml                       # every argument from a JSON/YAML file

Model sizes come from ``configs/<preset>.json`` (tiny / small / paper), overridable per field
(``--hidden_size 512``); its ``"training"`` object, if any, sets training arguments not given on the command line
(``paper``: the authors' optimisation: ``--lr_scheduler one_cycle``, 1e-4 per 64 barcodes, weight decay 1e-5 on
every parameter, no clipping). Any ``TrainingArguments`` flag works, plus ``--max_train_minutes`` (a wall-clock
budget), ``--lr_scheduler``, ``--learning_rate_per_64`` and ``--decay_all_parameters``. At the end ``OUTPUT_DIR``
holds the pretraining model, ``OUTPUT_DIR/encoder/`` the encoder-only Hub folder, ``loss_curve.png``,
``data_report.json`` and ``run_info.json``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from barcodemae.data import detect_format, load_barcode_dataset, table_columns
from barcodemae.training import LABEL_SPLITS, IdentificationProbe, TimeBudgetCallback, already_trained
from configuration_barcodemae import BarcodeMAEConfig
from modeling_barcodemae import IGNORE_INDEX, BarcodeMAEForPreTraining
from tokenization_barcodemae import BarcodeMAETokenizer

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
logger = logging.getLogger("barcodemae.train")


@dataclass
class ModelArguments:
    preset: str = field(default="small", metadata={"help": "tiny | small | paper, or a path to a JSON config."})
    objective: str = field(default="mae", metadata={"help": "mae (BarcodeMAE) or mlm (BarcodeBERT baseline)."})
    k_mer: int | None = None
    max_length: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    decoder_hidden_size: int | None = None
    decoder_num_hidden_layers: int | None = None
    decoder_num_attention_heads: int | None = None
    decoder_intermediate_size: int | None = None
    mask_ratio: float | None = None
    visible_loss_weight: float | None = None
    genus_loss_weight: float | None = None
    position_embedding_type: str | None = None
    embedding_frames: int | None = None
    hidden_dropout_prob: float | None = None
    attention_probs_dropout_prob: float | None = None

    def preset_settings(self) -> dict:
        """The preset file's settings: model fields, and training arguments under ``"training"``."""
        preset = Path(self.preset)
        path = preset if preset.suffix == ".json" else PRESETS_DIR / f"{self.preset}.json"
        if not path.is_file():
            raise FileNotFoundError(f"Unknown preset {self.preset!r}: no file {path}")
        return json.loads(path.read_text())

    def build_config(self) -> BarcodeMAEConfig:
        settings = self.preset_settings()
        settings.pop("training", None)
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "preset"}
        settings.update({name: value for name, value in overrides.items() if value is not None})
        settings.pop("genus_loss_weight", None)  # switched on by `add_genus_labels` once the labels are known
        return BarcodeMAEConfig(**settings)


@dataclass
class DataArguments:
    data_file: list[str] = field(metadata={"help": "BIOSCAN-5M-style TSV/CSV or FASTA files (repeatable)."})
    pretrain_splits: list[str] = field(
        default_factory=lambda: ["pretrain", "other_heldout", "train"],
        metadata={
            "help": "Values of the `split` column to pretrain on, those present in the data (BIOSCAN-5M's "
            "`other_heldout` is part of the authors' pretraining set; ignored for files without a split column)."
        },
    )
    validation_split: str = field(default="val", metadata={"help": "Split for validation masked-token metrics."})
    validation_fraction: float = field(default=0.02, metadata={"help": "Held-out fraction when no such split."})
    max_eval_samples: int = 2000
    genus_label_splits: list[str] = field(
        default_factory=lambda: ["train"],
        metadata={"help": f"Splits whose genus labels feed --genus_loss_weight (seen species only: {LABEL_SPLITS})."},
    )
    deduplicate: bool = field(default=True, metadata={"help": "Drop repeated identical barcodes."})
    random_offset: bool = field(default=True, metadata={"help": "Random start offset 0..k-1 per barcode (paper)."})
    embedding_probe: bool = field(
        default=True,
        metadata={"help": "At each evaluation, genus 1-NN of `val_unseen` queries against `train` references."},
    )
    probe_queries: int = 1000
    probe_references: int = 5000
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenisation (`Dataset.map(num_proc=...)`)."}
    )


@dataclass
class PretrainingArguments(TrainingArguments):
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Wall-clock budget: stop (evaluating and saving) at the first step after this many minutes of "
            "training. The schedule still runs to max_steps, so the learning rate is not annealed at the stop."
        },
    )
    lr_scheduler: str = field(
        default="trainer",
        metadata={
            "help": "trainer: the Trainer's (--lr_scheduler_type, --warmup_steps); one_cycle: torch's OneCycleLR with "
            "its defaults, the BarcodeMAE authors' (30%% of the steps warming up from lr/25, cosine annealing to "
            "lr/1e4, Adam's beta1 cycled 0.95 -> 0.85 -> 0.95). Giving --lr_scheduler_type alone means trainer.",
            "choices": ["trainer", "one_cycle"],
        },
    )
    learning_rate_per_64: float | None = field(
        default=None,
        metadata={
            "help": "The authors' scaling: learning rate = this x total batch / 64 (per-device batch x processes x "
            "accumulation steps). Ignored when --learning_rate is given."
        },
    )
    decay_all_parameters: bool = field(
        default=False,
        metadata={"help": "Weight decay on biases and LayerNorm weights too (the authors' AdamW on every parameter)."},
    )


@dataclass
class BarcodeCollator:
    """Pick one reading frame per barcode (a random start offset 0..k-1; offset 0 without ``random_offset``) from
    its ``kmer_ids``, then pad (MAE) or pad and mask with `DataCollatorForLanguageModeling` (MLM).

    All randomness of a training step is seeded from the batch itself (``seed`` and the dataset rows it holds):
    the frames and MLM masks here, and the model's MAE masks and dropout through ``batch_seed``, with which
    `PretrainingTrainer` seeds torch right before the forward pass. The data loader prefetches batches, so RNG
    state saved in a checkpoint does not line up with the next batch; per-batch seeds make a resumed run continue
    exactly as an uninterrupted one."""

    tokenizer: BarcodeMAETokenizer
    objective: str
    mask_ratio: float
    seed: int
    random_offset: bool = True

    def __post_init__(self):
        if self.objective == "mlm":
            self.inner = DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=self.mask_ratio)
        else:
            self.inner = DataCollatorWithPadding(self.tokenizer)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch_seed = hash((self.seed, *(feature["row"] for feature in features))) % 2**63  # ints hash stably
        generator = torch.Generator().manual_seed(batch_seed)
        k_mer, max_tokens = self.tokenizer.k_mer, self.tokenizer.model_max_length
        chosen = []
        for feature in features:
            offset = int(torch.randint(k_mer, (), generator=generator)) if self.random_offset else 0
            chosen.append({"input_ids": feature["kmer_ids"][offset::k_mer][:max_tokens]})
        torch.manual_seed(batch_seed)
        batch = {**self.inner(chosen), "batch_seed": torch.tensor(batch_seed)}
        if "genus_label" in features[0]:
            batch["genus_labels"] = torch.tensor([feature["genus_label"] for feature in features])
        return batch


def tokenize_kmers(dataset, tokenizer: BarcodeMAETokenizer, num_proc: int | None = None):
    """Columns ``kmer_ids`` (the id of the k-mer at every base: frame ``f`` is ``kmer_ids[f::k]``, see
    `BarcodeMAETokenizer.overlapping_kmer_ids`) and ``row`` (the barcode's index), computed in one vectorised pass
    per batch with ``Dataset.map`` and cached by datasets."""

    def encode(batch, rows):
        return {"kmer_ids": tokenizer.overlapping_kmer_ids(batch["dna_barcode"]), "row": rows}

    kept = [name for name in ("genus_label",) if name in dataset.column_names]
    return dataset.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=[name for name in dataset.column_names if name not in kept],
        num_proc=num_proc,
        desc="Tokenizing",
    )


class EmbeddingProbe(IdentificationProbe):
    """Embedding quality during pretraining: genus 1-NN of unseen-species queries against seen references, per
    species (the one to select on: a few species hold much of an unseen partition) and micro, plus representation
    health of the query embeddings (effective rank, mean pairwise cosine)."""

    def __call__(self, encoder) -> dict[str, float]:
        from barcodemae.evaluation.clustering import effective_rank, mean_pairwise_cosine

        reference_embeddings, query_embeddings = self.embeddings(encoder)
        score = self.score(reference_embeddings, query_embeddings)
        return {
            "genus_1nn_unseen": score.micro,
            "genus_1nn_unseen_per_species": score.per_species,
            "effective_rank": effective_rank(query_embeddings),
            "mean_pairwise_cosine": mean_pairwise_cosine(query_embeddings),
        }


class PretrainingTrainer(Trainer):
    """Trainer that also reports masked-token accuracy (and the embedding probe) at every evaluation."""

    def __init__(self, *args, embedding_probe: EmbeddingProbe | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.embedding_probe = embedding_probe
        self._masked_counts = None

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's schedule, or torch's `OneCycleLR` with its defaults (``--lr_scheduler one_cycle``), peaking at
        the learning rate, stepped after every optimizer step."""
        if self.lr_scheduler is None and self.args.lr_scheduler == "one_cycle":
            optimizer = optimizer or self.optimizer
            peak = [group["lr"] for group in optimizer.param_groups]
            self.lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, peak, total_steps=num_training_steps)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def get_decay_parameter_names(self, model) -> list[str]:
        if self.args.decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch_seed = inputs.pop("batch_seed", None)
        if batch_seed is not None and model.training:
            torch.manual_seed(int(batch_seed))
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not model.training and self._masked_counts is not None:
            predicted, targets = outputs.scored()
            correct = (predicted == targets).sum()
            self._masked_counts += torch.stack([correct, torch.tensor(targets.numel(), device=correct.device)])
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, *args, metric_key_prefix: str = "eval", **kwargs):
        self._masked_counts = torch.zeros(2, dtype=torch.long, device=self.args.device)
        with torch.random.fork_rng(devices=[self.args.device] if self.args.device.type == "cuda" else []):
            torch.manual_seed(self.args.seed)  # the same masks at every evaluation; training RNG untouched
            output = super().evaluation_loop(dataloader, *args, metric_key_prefix=metric_key_prefix, **kwargs)
        correct, total = self.accelerator.reduce(self._masked_counts, reduction="sum").tolist()
        self._masked_counts = None
        output.metrics[f"{metric_key_prefix}_masked_accuracy"] = 100.0 * correct / max(total, 1)
        if self.embedding_probe is not None:
            encoder = self.accelerator.unwrap_model(self.model).barcodemae
            for name, value in self.embedding_probe(encoder).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        parse = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        model_args, data_args, training_args = parse(argv[0])
        import yaml

        given = set(yaml.safe_load(Path(argv[0]).read_text()))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
        given = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}
    if "report_to" not in given and importlib.util.find_spec("tensorboard") is not None:
        training_args.report_to = ["tensorboard"]
    apply_preset_training(model_args.preset_settings().get("training", {}), training_args, given)
    training_args.remove_unused_columns = False  # the collator needs the `kmer_ids` column
    training_args.label_names = ["labels"] if model_args.objective == "mlm" else []
    return model_args, data_args, training_args


def apply_preset_training(preset: dict, training_args: PretrainingArguments, given: set[str]) -> None:
    """The preset's training arguments where the command line gives none; explicit flags win (``--learning_rate``
    over ``learning_rate_per_64``, ``--lr_scheduler_type`` over ``lr_scheduler``); then the learning rate per 64
    barcodes becomes the learning rate of the total batch."""
    implied = {"learning_rate_per_64": "learning_rate", "lr_scheduler": "lr_scheduler_type"}
    for name, value in preset.items():
        if not hasattr(training_args, name):
            raise ValueError(f'Unknown training argument {name!r} in the preset\'s "training" object')
        if name not in given and implied.get(name) not in given:
            setattr(training_args, name, value)
    if "learning_rate" in given:
        training_args.learning_rate_per_64 = None
    if training_args.learning_rate_per_64 is not None:
        total_batch = (
            training_args.per_device_train_batch_size
            * training_args.world_size
            * training_args.gradient_accumulation_steps
        )
        training_args.learning_rate = training_args.learning_rate_per_64 * total_batch / 64


def has_split_column(paths: list[str]) -> bool:
    return all(detect_format(path)[0] == "table" and "split" in table_columns(path) for path in paths)


def load_datasets(data_args: DataArguments, config: BarcodeMAEConfig, seed: int):
    """Pretraining rows (with their cleaning report), validation rows and, when the file has labelled
    ``train``/``val_unseen`` rows, the embedding probe's references and queries."""
    files = data_args.data_file
    common = dict(max_length=config.max_length, k_mer=config.k_mer)
    everything = load_barcode_dataset(files, deduplicate=True, **common)[0] if has_split_column(files) else None
    available = set(everything.unique("split")) if everything is not None else set()
    pretrain_splits = [name for name in data_args.pretrain_splits if name in available] or data_args.pretrain_splits
    train, report = load_barcode_dataset(
        files, splits=pretrain_splits if available else None, deduplicate=data_args.deduplicate, **common
    )

    def partition(name: str):
        rows = everything.filter(lambda split, genus: split == name and bool(genus), input_columns=["split", "genus"])
        return rows.shuffle(seed=seed)

    if data_args.validation_split in available:
        validation = partition(data_args.validation_split)
    else:
        parts = train.train_test_split(test_size=data_args.validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    validation = validation.select(range(min(len(validation), data_args.max_eval_samples)))
    probe = None
    if data_args.embedding_probe and {"train", "val_unseen"} <= available:
        references, queries = partition("train"), partition("val_unseen")
        probe = (
            references.select(range(min(len(references), data_args.probe_references))),
            queries.select(range(min(len(queries), data_args.probe_queries))),
        )
    return train, validation, probe, report


def add_genus_labels(train, data_args: DataArguments, config: BarcodeMAEConfig, weight: float):
    """Column ``genus_label`` (an index into the sorted genera of ``--genus_label_splits`` rows, -100 for every
    other row) for the auxiliary genus loss, and the loss switched on in ``config``."""
    leaking = sorted(set(data_args.genus_label_splits) - set(LABEL_SPLITS))
    if leaking:
        raise ValueError(f"--genus_label_splits {leaking} refused: genus labels may only come from {LABEL_SPLITS}")

    def labelled(split: str, genus: str) -> bool:
        return split in data_args.genus_label_splits and bool(genus)

    genera = sorted({g for s, g in zip(train["split"], train["genus"]) if labelled(s, g)})
    if len(genera) < 2:
        raise ValueError(f"--genus_loss_weight needs rows of {data_args.genus_label_splits} with >= 2 genera")
    index = {name: i for i, name in enumerate(genera)}

    def encode(batch):
        pairs = zip(batch["split"], batch["genus"])
        return {"genus_label": [index[g] if labelled(s, g) else IGNORE_INDEX for s, g in pairs]}

    config.genus_loss_weight, config.num_genus_labels = weight, len(genera)
    config.trained_labels = (
        f"{len(genera)} genus labels of the `{'`, `'.join(data_args.genus_label_splits)}` rows as an auxiliary "
        f"pretraining loss (weight {weight:g}), seen species only"
    )
    config._check_consistency()
    return train.map(encode, batched=True, desc="Genus labels")


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if already_trained(training_args):
        return
    started = time.time()
    set_seed(training_args.seed)
    config = model_args.build_config()
    tokenizer = BarcodeMAETokenizer(k_mer=config.k_mer, model_max_length=config.max_position_embeddings)

    with training_args.main_process_first(desc="loading data"):
        train, validation, probe_rows, report = load_datasets(data_args, config, training_args.seed)
    logger.info("Data: %s", report.summary())
    if model_args.genus_loss_weight:
        train = add_genus_labels(train, data_args, config, model_args.genus_loss_weight)
        logger.info("Auxiliary genus loss: %d genera, weight %g", config.num_genus_labels, config.genus_loss_weight)
    train_kmers = tokenize_kmers(train, tokenizer, data_args.preprocessing_num_workers)
    validation_kmers = tokenize_kmers(validation, tokenizer)
    probe = EmbeddingProbe(*probe_rows, tokenizer) if probe_rows is not None else None

    model = BarcodeMAEForPreTraining(config)
    logger.info("%s model, %.1fM parameters", config.objective, model.num_parameters() / 1e6)
    trainer = PretrainingTrainer(
        model=model,
        args=training_args,
        data_collator=BarcodeCollator(
            tokenizer, config.objective, config.mask_ratio, training_args.seed, data_args.random_offset
        ),
        train_dataset=train_kmers,
        eval_dataset=validation_kmers,
        processing_class=tokenizer,
        embedding_probe=probe,
        callbacks=[TimeBudgetCallback(training_args.max_train_minutes)] if training_args.max_train_minutes else None,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_outputs(trainer, tokenizer, model_args, data_args, report, result, metrics, time.time() - started)


def write_outputs(trainer, tokenizer, model_args, data_args, report, result, metrics, wall_seconds) -> None:
    from barcodemae.plots import plot_training_curves

    output_dir = Path(trainer.args.output_dir)
    trainer.model.save_encoder(output_dir / "encoder", tokenizer)
    plot_training_curves(trainer.state.log_history, output_dir / "loss_curve.png")
    (output_dir / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    run_info = {
        "command": " ".join(["python", *sys.argv]),
        "objective": model_args.objective,
        "preset": model_args.preset,
        "data_files": data_args.data_file,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "final_eval": metrics,
        "wall_seconds": round(wall_seconds, 1),
        "device": str(trainer.args.device),
    }
    (output_dir / "run_info.json").write_text(json.dumps(run_info, indent=2) + "\n")


if __name__ == "__main__":
    main()
