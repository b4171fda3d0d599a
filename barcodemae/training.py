"""Taxonomy-aware training of a pretrained encoder with the Hugging Face Trainer (`barcodemae finetune`).

The encoder gets a classification head over genera (or species) of the *seen* partitions only, trained on
class-balanced batches (``classes_per_batch`` labels x ``samples_per_class`` barcodes, as in BarcodeMAE+), each
barcode read from a random start offset (and optionally a random crop) so that one reading frame suffices at
inference. Objectives: ``genus`` / ``species`` (cross-entropy, by default through a cosine classifier that trains
the embedding for cosine search), ``supcon`` (supervised contrastive over the batch, genus positives) and
``genus+supcon``. Every evaluation scores genus 1-NN of all unique unseen-species queries (``val_unseen``) against a
fixed set of unique ``train`` references, per species and micro. ``OUTPUT_DIR`` ends with the classifier
(`AutoModelForSequenceClassification`, labels in ``id2label``) and ``OUTPUT_DIR/encoder/``, the encoder-only Hub
folder with a model card naming the labels that trained it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

from barcodemae.embedding import Embedder, default_model_path
from barcodemae.evaluation import IdentificationScore, identification_score, load_records, prepare_protocol
from barcodemae.search import nearest_neighbors

logger = logging.getLogger("barcodemae.training")

TAXONOMY_OBJECTIVES = ("genus", "species", "supcon", "genus+supcon")
LABEL_SPLITS = ("train", "val")  # seen species only: labels of unseen-species rows would leak into the evaluation


class TimeBudgetCallback(TrainerCallback):
    """Stop training, with a final evaluation and checkpoint, once ``max_minutes`` of training have passed."""

    def __init__(self, max_minutes: float):
        self.max_seconds = 60.0 * max_minutes
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.started >= self.max_seconds:
            logger.info("Time budget of %.1f min reached at step %d", self.max_seconds / 60, state.global_step)
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` distinct labels x ``samples_per_class`` rows of each (drawn without
    replacement when a label has enough rows, with replacement otherwise). Deterministic per (seed, epoch);
    ``len`` is one pass over the rows."""

    def __init__(self, labels: Sequence[int], classes_per_batch: int, samples_per_class: int, seed: int = 0):
        labels = np.asarray(labels)
        self.rows_of = [np.flatnonzero(labels == label) for label in np.unique(labels)]
        if classes_per_batch > len(self.rows_of):
            raise ValueError(f"classes_per_batch={classes_per_batch} exceeds the {len(self.rows_of)} labels")
        self.classes_per_batch, self.samples_per_class, self.seed = classes_per_batch, samples_per_class, seed
        self.num_batches = max(1, len(labels) // (classes_per_batch * samples_per_class))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1  # a new draw next pass even if the caller never calls set_epoch
        for _ in range(self.num_batches):
            batch = []
            for label in rng.choice(len(self.rows_of), self.classes_per_batch, replace=False):
                rows = self.rows_of[label]
                replace = len(rows) < self.samples_per_class
                batch.extend(rng.choice(rows, self.samples_per_class, replace=replace).tolist())
            yield batch


@dataclass
class TaxonomyCollator:
    """Read each barcode from a random start offset ``0..k-1`` (and, with ``min_crop_fraction < 1``, keep a
    random window of that fraction or more of its bases), tokenize and pad. The randomness is seeded from the
    batch's rows, so a resumed run draws what an uninterrupted one would."""

    tokenizer: object
    random_offset: bool = True
    min_crop_fraction: float = 1.0
    seed: int = 0

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, *(int(feature["row"]) for feature in features)])
        k = self.tokenizer.k_mer
        sequences = []
        for feature in features:
            sequence = feature["dna_barcode"]
            if self.min_crop_fraction < 1.0:
                keep = max(k, int(len(sequence) * rng.uniform(self.min_crop_fraction, 1.0)))
                start = int(rng.integers(0, len(sequence) - keep + 1))
                sequence = sequence[start : start + keep]
            if self.random_offset and len(sequence) >= 2 * k:
                sequence = sequence[int(rng.integers(0, k)) :]
            sequences.append(sequence)
        batch = self.tokenizer(sequences, padding=True, truncation=True, return_tensors="pt")
        labels = torch.tensor([int(feature["labels"]) for feature in features])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) over one batch: each row's positives are the other rows with its label."""
    z = F.normalize(embeddings.float(), dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, -math.inf)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    has_positive = positives.any(1)
    mean_positive = log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp(min=1)
    return -mean_positive[has_positive].mean()


class IdentificationProbe:
    """Genus 1-NN of unseen-species queries against fixed seen-species references, per species and micro.
    ``references`` / ``queries``: columns ``dna_barcode``, ``genus`` (and ``species`` for the queries)."""

    def __init__(self, references, queries, tokenizer):
        self.references, self.queries, self.tokenizer = references, queries, tokenizer

    def embeddings(self, encoder) -> tuple[np.ndarray, np.ndarray]:
        """``(reference, query)`` embeddings, the encoder's train/eval mode left as it was."""
        was_training = encoder.training
        embed = Embedder(encoder, self.tokenizer, batch_size=256, precision="fp32")
        embeddings = embed(self.references["dna_barcode"]), embed(self.queries["dna_barcode"])
        encoder.train(was_training)
        return embeddings

    def score(self, reference_embeddings: np.ndarray, query_embeddings: np.ndarray) -> IdentificationScore:
        nearest, _ = nearest_neighbors(query_embeddings, reference_embeddings)
        predicted = np.asarray(self.references["genus"], dtype=object)[nearest[:, 0]]
        species = [s or g for s, g in zip(self.queries["species"], self.queries["genus"])]
        return identification_score(predicted, self.queries["genus"], species, resamples=1)

    def __call__(self, encoder) -> dict[str, float]:
        score = self.score(*self.embeddings(encoder))
        return {"genus_1nn_per_species": score.per_species, "genus_1nn_micro": score.micro}


class TaxonomyTrainer(Trainer):
    """Trainer with class-balanced training batches, the taxonomy objectives and the identification probe as its
    evaluation (``eval_dataset`` is the probe's query set)."""

    def __init__(
        self,
        *args,
        sampler: ClassBalancedBatchSampler,
        probe: IdentificationProbe,
        objective: str,
        supcon_temperature: float,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.sampler, self.probe = sampler, probe
        self.objective, self.supcon_temperature = objective, supcon_temperature

    def get_train_dataloader(self) -> DataLoader:
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**inputs)
        losses = []
        if self.objective in ("genus", "species", "genus+supcon"):
            losses.append(outputs.loss)
        if "supcon" in self.objective:
            losses.append(supervised_contrastive_loss(outputs.embeddings, labels, self.supcon_temperature))
        loss = sum(losses)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        encoder = self.accelerator.unwrap_model(self.model).barcodemae
        started = time.monotonic()
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in self.probe(encoder).items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.monotonic() - started, 2)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


@dataclass
class FinetuneArguments:
    data: list[str] = field(metadata={"help": "BIOSCAN-5M-style table(s) with split, genus, species columns."})
    model: str = field(default_factory=default_model_path, metadata={"help": "BarcodeMAE encoder folder."})
    objective: str = field(default="genus", metadata={"help": f"one of {', '.join(TAXONOMY_OBJECTIVES)}"})
    label_splits: list[str] = field(
        default_factory=lambda: ["train"], metadata={"help": f"splits whose labels train (of {LABEL_SPLITS})"}
    )
    readout: str | None = field(default=None, metadata={"help": "mean | kmer_bag | mean+kmer_bag (default: keep)"})
    embedding_frames: int = field(default=1, metadata={"help": "reading frames pooled (1: one encoder pass)"})
    classifier_type: str = field(default="cosine", metadata={"help": "cosine or linear head"})
    classifier_scale: float = 16.0
    classes_per_batch: int = 16
    samples_per_class: int = 4
    random_offset: bool = True
    min_crop_fraction: float = field(default=1.0, metadata={"help": "random crop keeps at least this fraction"})
    supcon_temperature: float = 0.1
    freeze_encoder_layers: bool = field(
        default=False, metadata={"help": "train only token embeddings and head (the transformer stays as loaded)"}
    )
    probe_split: str = "val_unseen"
    probe_references: int = field(default=20000, metadata={"help": "unique train references of the probe"})


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    max_train_minutes: float | None = field(default=None, metadata={"help": "wall-clock budget (minutes)"})


def check_arguments(args: FinetuneArguments) -> None:
    if args.objective not in TAXONOMY_OBJECTIVES:
        raise ValueError(f"--objective must be one of {TAXONOMY_OBJECTIVES} (got {args.objective!r})")
    leaking = sorted(set(args.label_splits) - set(LABEL_SPLITS))
    if leaking:
        raise ValueError(
            f"--label_splits {leaking} refused: labels may only come from seen-species partitions {LABEL_SPLITS}"
            " (unseen-species or pretraining rows would leak into the open-world evaluation)"
        )


def labelled_rows(records: list[dict], splits: Sequence[str], level: str) -> tuple[list[str], list[str]]:
    """Unique (barcode, label) pairs of the given splits that have a ``level`` label, in input order."""
    seen, sequences, labels = set(), [], []
    for record in records:
        label = record.get(level)
        if record.get("split") in splits and label and (record["dna_barcode"], label) not in seen:
            seen.add((record["dna_barcode"], label))
            sequences.append(record["dna_barcode"])
            labels.append(str(label))
    if not sequences:
        raise ValueError(f"no rows with a {level} label in splits {list(splits)}")
    return sequences, labels


def build_datasets(records: list[dict], args: FinetuneArguments, seed: int):
    """Training rows (with integer labels and their names) and the probe's references and queries."""
    import datasets

    level = "species" if args.objective == "species" else "genus"
    sequences, labels = labelled_rows(records, args.label_splits, level)
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    train = datasets.Dataset.from_dict(
        {"dna_barcode": sequences, "labels": [index[n] for n in labels], "row": list(range(len(sequences)))}
    )
    protocol = prepare_protocol(records, seen_split="val", unseen_split=args.probe_split)
    references = protocol.train.subsample(args.probe_references, seed)
    probe_refs = {"dna_barcode": references.sequences, "genus": references.genus}
    probe_queries = {name: getattr(protocol.unseen, name) for name in ("sequences", "genus", "species")}
    probe_queries["dna_barcode"] = probe_queries.pop("sequences")
    return train, names, probe_refs, probe_queries


def load_classifier(args: FinetuneArguments, label_names: list[str]):
    from modeling_barcodemae import BarcodeMAEForSequenceClassification

    overrides = dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        classifier_type=args.classifier_type,
        classifier_scale=args.classifier_scale,
        embedding_frames=args.embedding_frames,
        freeze_encoder=False,
    )
    if args.readout:
        overrides["readout"] = args.readout
    model = BarcodeMAEForSequenceClassification.from_pretrained(args.model, local_files_only=True, **overrides)
    if args.freeze_encoder_layers:
        model.barcodemae.encoder.requires_grad_(False)
    return model


def already_trained(training_args: TrainingArguments) -> bool:
    """Whether the checkpoint to resume from already holds ``max_steps`` steps (logged): the Trainer would take one
    step more and save it, so a finished run started again trains nothing instead."""
    checkpoint = training_args.resume_from_checkpoint
    if not checkpoint or training_args.max_steps <= 0:
        return False
    done = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    if done < training_args.max_steps:
        return False
    logger.info("%s already has %d steps (max_steps %d): nothing to train", checkpoint, done, training_args.max_steps)
    return True


def parse_arguments(argv: Sequence[str]) -> tuple[FinetuneArguments, FinetuneTrainingArguments]:
    parser = HfArgumentParser(
        (FinetuneArguments, FinetuneTrainingArguments),
        prog="barcodemae finetune",
        description="Taxonomy-aware training of a BarcodeMAE encoder (any TrainingArguments flag works).",
    )
    args, training_args = parser.parse_args_into_dataclasses(list(argv))
    check_arguments(args)
    training_args.remove_unused_columns = False  # the collator reads dna_barcode and row
    training_args.label_names = ["labels"]
    # the batches come from the class-balanced sampler; this keeps the Trainer's samples/s and logs truthful
    training_args.per_device_train_batch_size = args.classes_per_batch * args.samples_per_class
    return args, training_args


def run_finetune(argv: Sequence[str]) -> Path:
    """`barcodemae finetune ...`: train, then write the classifier and ``OUTPUT_DIR/encoder/``."""
    from tokenization_barcodemae import BarcodeMAETokenizer

    args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if already_trained(training_args):
        return Path(training_args.output_dir)
    started = time.time()
    set_seed(training_args.seed)
    records, cleaning = load_records(args.data[0]) if len(args.data) == 1 else _load_many(args.data)
    train, label_names, probe_refs, probe_queries = build_datasets(records, args, training_args.seed)
    model = load_classifier(args, label_names)
    tokenizer = BarcodeMAETokenizer.from_pretrained(args.model, local_files_only=True)
    logger.info("%d %s labels, %d training barcodes", len(label_names), args.objective, len(train))
    probe = IdentificationProbe(probe_refs, probe_queries, tokenizer)
    sampler = ClassBalancedBatchSampler(
        train["labels"], args.classes_per_batch, args.samples_per_class, seed=training_args.seed
    )
    budget = [TimeBudgetCallback(training_args.max_train_minutes)] if training_args.max_train_minutes else None
    trainer = TaxonomyTrainer(
        model=model,
        args=training_args,
        data_collator=TaxonomyCollator(tokenizer, args.random_offset, args.min_crop_fraction, training_args.seed),
        train_dataset=train,
        eval_dataset=probe_queries["dna_barcode"],
        processing_class=tokenizer,
        callbacks=budget,
        sampler=sampler,
        probe=probe,
        objective=args.objective,
        supcon_temperature=args.supcon_temperature,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model()
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        write_encoder(trainer.model, tokenizer, output_dir / "encoder", args, len(train))
        info = {
            "command": " ".join(["barcodemae finetune", *argv]),
            "objective": args.objective,
            "labels": f"{len(label_names)} {'species' if args.objective == 'species' else 'genus'} labels",
            "label_splits": args.label_splits,
            "training_barcodes": len(train),
            "cleaning": cleaning,
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "final_eval": metrics,
            "wall_seconds": round(time.time() - started, 1),
            "device": str(training_args.device),
            "torch_threads": torch.get_num_threads(),
        }
        info["eval_history"] = [entry for entry in trainer.state.log_history if "eval_genus_1nn_per_species" in entry]
        (output_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (output_dir / "encoder" / "TRAINING.md").write_text(training_record(info, args))
    return output_dir


def training_record(info: dict, args: FinetuneArguments) -> str:
    """TRAINING.md of a fine-tuned encoder: command, data, labels, budget and the probe during training."""
    rows = [
        f"| {e['step']} | {e['eval_genus_1nn_per_species']:.2f} | {e['eval_genus_1nn_micro']:.2f} |"
        for e in info.get("eval_history", [])
    ]
    batch = args.classes_per_batch * args.samples_per_class
    return f"""# How this encoder was trained

* Command: `{info["command"]}`
* Start: `{args.model}` (its own TRAINING.md tells how it was pretrained).
* Labels: {info["labels"]} of {info["training_barcodes"]} unique (barcode, label) rows of the
  `{"`, `".join(info["label_splits"])}` partition(s) only (seen species; `val_unseen`, `test_unseen` and
  `pretrain` labels are refused by `barcodemae finetune`).
* Objective: `{info["objective"]}`; readout `{args.readout or "as loaded"}`; {info["global_step"]} steps of {batch}
  barcodes ({args.classes_per_batch} labels x {args.samples_per_class}), random start offset
  {"on" if args.random_offset else "off"}, crop fraction >= {args.min_crop_fraction}; final training loss
  {info["train_loss"]:.3f}.
* Wall time: {info["wall_seconds"] / 60:.1f} min (data loading and evaluations included), device `{info["device"]}`,
  {info.get("torch_threads", "?")} torch thread(s).
* Probe (genus 1-NN of all unique `{args.probe_split}` queries against {args.probe_references:,} unique `train`
  references; choose on the per-species number): final {info["final_eval"].get("eval_genus_1nn_per_species")} per
  species, {info["final_eval"].get("eval_genus_1nn_micro")} micro.

| step | probe per species (%) | probe micro (%) |
|---:|---:|---:|
{chr(10).join(rows)}
"""


def _load_many(paths: Sequence[str]) -> tuple[list[dict], dict]:
    records, cleaning = [], {}
    for path in paths:
        part, summary = load_records(path)
        records.extend(part)
        cleaning[path] = summary
    return records, cleaning


def write_encoder(model, tokenizer, folder: Path, args: FinetuneArguments, n_rows: int) -> None:
    """The encoder-only Hub folder of a fine-tuned classifier, with a model card naming its training labels."""
    from barcodemae.hub import write_model_card
    from modeling_barcodemae import ENCODER_AUTO_MAP

    encoder = model.barcodemae
    level = "species" if args.objective == "species" else "genus"
    encoder.config.trained_labels = (
        f"{encoder.config.num_labels} {level} labels of {n_rows} unique barcodes from the "
        f"`{'`, `'.join(args.label_splits)}` partition(s), seen species only (`barcodemae finetune --objective "
        f"{args.objective}`, class-balanced batches of {args.classes_per_batch} x {args.samples_per_class})"
    )
    encoder.config.auto_map = dict(ENCODER_AUTO_MAP)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_model_card(folder, source=f"fine-tuned from `{args.model}`")


if __name__ == "__main__":
    run_finetune(sys.argv[1:])
