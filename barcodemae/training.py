"""Taxonomy-aware training of a pretrained encoder with the Hugging Face Trainer (`barcodemae finetune`).

The encoder gets a classification head per taxonomic rank over the labels of the *seen* partitions only, trained on
class-balanced batches of the deepest rank (``classes_per_batch`` labels x ``samples_per_class`` barcodes, as in
BarcodeMAE+), each barcode read from a random start offset (and optionally a random crop) so that one reading frame
suffices at inference. Objectives: ``genus`` / ``species`` (cross-entropy, by default through a cosine classifier
that trains the embedding for cosine search), several ranks from coarse to fine such as ``family+genus`` or
``order+family+genus`` (one head per rank on the same embedding, loss = the sum of the ranks' cross-entropies, a row
lacking a rank's label left out of that rank's term), ``supcon`` (supervised contrastive over the batch, genus
positives) and ``genus+supcon`` (any rank objective ``+supcon``, positives of its deepest rank).

Partitions: a table with BIOSCAN-5M ``split`` values must hold ``train`` (the labels), ``val_unseen`` (the probe's
queries) and any ``--label_splits``; one that lacks them is refused with an error naming them. A table without split
values (a lab's own library) is partitioned here, seeded by ``--seed``: ``barcodemae.data.assign_bioscan_splits``
holds out whole species as ``val_unseen`` (probe queries) and ``test_unseen`` (untouched; ``barcodemae evaluate``
assigns the same partition to the table when ``--seed 0``), and ``--holdout_genus_fraction`` of the genera of
families with >= 2 genera (every family keeping one) become ``novel_genus``, whole genera no label of which trains.
The held-out species and genera are logged and listed in ``run_info.json``.

Every evaluation scores genus 1-NN of all unique unseen-species queries (``val_unseen``) against a fixed set of unique
``train`` references, per species and micro, and, with held-out genera, family 1-NN of their unique barcodes, per
genus and micro. ``OUTPUT_DIR`` ends with the classifier (`AutoModelForSequenceClassification`, deepest-rank labels
in ``id2label``, coarser ranks' names in ``rank_labels`` and their heads under ``rank_classifiers.*``) and
``OUTPUT_DIR/encoder/``, the encoder-only Hub folder with a model card naming the labels that trained it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

from barcodemae.embedding import Embedder, default_model_path
from barcodemae.evaluation.metrics import IdentificationScore, identification_score
from barcodemae.evaluation.protocol import NOVEL_GENUS, hold_out, label_text, load_records, prepare_protocol
from barcodemae.search import nearest_neighbors

logger = logging.getLogger("barcodemae.training")

RANKS = ("order", "family", "genus", "species")  # coarse to fine; an objective's deepest rank is genus or species
LABEL_SPLITS = ("train", "val")  # seen species only: labels of unseen-species rows would leak into the evaluation
IGNORE_INDEX = -100  # a row's class at a rank it has no label for: left out of that rank's cross-entropy


@dataclass(frozen=True)
class Objective:
    """``--objective`` parsed: the ranks labelled (coarsest to deepest), whether each trains a classifier head, and
    whether SupCon (positives: the deepest rank) joins."""

    ranks: tuple[str, ...]
    classify: bool
    supcon: bool

    @classmethod
    def parse(cls, text: str) -> Objective:
        terms = text.split("+")
        supcon = terms[-1] == "supcon"
        ranks = tuple(terms[:-1] if supcon else terms)
        order = [RANKS.index(rank) if rank in RANKS else -1 for rank in ranks]
        valid = (supcon and not ranks) or (
            min(order, default=-1) >= 0 and order == sorted(set(order)) and ranks[-1] in ("genus", "species")
        )
        if not valid:
            raise ValueError(
                f"--objective must be ranks of {'+'.join(RANKS)} from coarse to fine ending in genus or species "
                f"(e.g. genus, family+genus), optionally +supcon, or supcon alone (got {text!r})"
            )
        return cls(ranks or ("genus",), classify=bool(ranks), supcon=supcon)

    @property
    def level(self) -> str:
        """The deepest rank: the labels of the balanced batches, of SupCon and of the model's own classifier."""
        return self.ranks[-1]


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
    random window of that fraction or more of its bases), tokenize and pad; ``labels`` stack as the rows hold them
    (one class, or one per rank). The randomness is seeded from the batch's rows, so a resumed run draws what an
    uninterrupted one would."""

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
        labels = torch.tensor([feature["labels"] for feature in features])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def regroup_learning_rate(optimizer: torch.optim.Optimizer, chosen: set[int], learning_rate: float) -> None:
    """Split each parameter group of a fresh ``optimizer`` in two: the parameters whose ``id`` is in ``chosen``
    (at ``learning_rate``) and the rest (at the group's rate); other settings (weight decay) stay per group."""
    groups, optimizer.param_groups = optimizer.param_groups, []
    for group in groups:
        for in_chosen in (True, False):
            params = [p for p in group["params"] if (id(p) in chosen) == in_chosen]
            if params:
                rate = learning_rate if in_chosen else group["lr"]
                optimizer.add_param_group({**group, "params": params, "lr": rate})


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


def coarser_rank_losses(model, embeddings: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy of each head of ``model.rank_classifiers`` (``labels``' columns, in order) on the dropped-out
    embeddings, over the rows labelled at that rank; a rank no row of the batch has adds no term."""
    return [
        F.cross_entropy(head(model.dropout(embeddings)).float(), target, ignore_index=IGNORE_INDEX)
        for head, target in zip(model.rank_classifiers.values(), labels.T)
        if (target != IGNORE_INDEX).any()
    ]


class IdentificationProbe:
    """Genus 1-NN of unseen-species queries against fixed seen-species references, per species and micro.
    ``references`` / ``queries``: columns ``dna_barcode``, ``genus`` (and ``species`` for the queries). With
    ``novel_genus`` (columns ``dna_barcode``, ``genus``, ``family``; the references then need ``family``), also
    family 1-NN of the barcodes of genera held out of training, per genus and micro."""

    def __init__(self, references, queries, tokenizer, novel_genus=None):
        self.references, self.queries, self.tokenizer, self.novel_genus = references, queries, tokenizer, novel_genus

    def embeddings(self, encoder) -> tuple[np.ndarray, ...]:
        """``(reference, query)`` embeddings (and those of ``novel_genus``), the encoder's train/eval mode left as
        it was."""
        was_training = encoder.training
        embed = Embedder(encoder, self.tokenizer, batch_size=256, precision="fp32")
        sets = (self.references, self.queries, *([self.novel_genus] if self.novel_genus else []))
        embeddings = tuple(embed(rows["dna_barcode"]) for rows in sets)
        encoder.train(was_training)
        return embeddings

    def score(self, reference_embeddings: np.ndarray, query_embeddings: np.ndarray) -> IdentificationScore:
        nearest, _ = nearest_neighbors(query_embeddings, reference_embeddings)
        predicted = np.asarray(self.references["genus"], dtype=object)[nearest[:, 0]]
        species = [s or g for s, g in zip(self.queries["species"], self.queries["genus"])]
        return identification_score(predicted, self.queries["genus"], species, resamples=1)

    def novel_genus_score(self, reference_embeddings: np.ndarray, novel_embeddings: np.ndarray) -> IdentificationScore:
        """Family 1-NN of the held-out genera's barcodes; ``per_species`` is the mean over their genera."""
        nearest, _ = nearest_neighbors(novel_embeddings, reference_embeddings)
        predicted = np.asarray(self.references["family"], dtype=object)[nearest[:, 0]]
        return identification_score(predicted, self.novel_genus["family"], self.novel_genus["genus"], resamples=1)

    def __call__(self, encoder) -> dict[str, float]:
        references, queries, *novel = self.embeddings(encoder)
        score = self.score(references, queries)
        metrics = {"genus_1nn_per_species": score.per_species, "genus_1nn_micro": score.micro}
        if novel:
            family = self.novel_genus_score(references, novel[0])
            metrics["novel_genus_family_1nn_per_genus"] = family.per_species
            metrics["novel_genus_family_1nn_micro"] = family.micro
        return metrics


class TaxonomyTrainer(Trainer):
    """Trainer with class-balanced training batches, the taxonomy objectives and the identification probe as its
    evaluation (``eval_dataset`` is the probe's query set). ``labels`` hold one class per rank of the objective,
    coarsest to deepest: the deepest trains the model's own classifier, each coarser one its head in
    ``model.rank_classifiers``."""

    def __init__(
        self,
        *args,
        sampler: ClassBalancedBatchSampler,
        probe: IdentificationProbe,
        objective: Objective,
        supcon_temperature: float,
        encoder_learning_rate: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.sampler, self.probe = sampler, probe
        self.objective, self.supcon_temperature = objective, supcon_temperature
        self.encoder_learning_rate = encoder_learning_rate

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer; with ``encoder_learning_rate`` the transformer layers get their own rate (the
        token embeddings, which the k-mer bag reads, and the heads keep ``learning_rate``)."""
        optimizer = super().create_optimizer(model)
        if self.encoder_learning_rate is not None:
            layers = self.accelerator.unwrap_model(self.model).barcodemae.encoder.parameters()
            regroup_learning_rate(optimizer, {id(p) for p in layers}, self.encoder_learning_rate)
        return optimizer
        layers = {id(p) for p in self.accelerator.unwrap_model(self.model).barcodemae.encoder.parameters()}
        groups, optimizer.param_groups = optimizer.param_groups, []
        for group in groups:
            for in_layers in (True, False):
                params = [p for p in group["params"] if (id(p) in layers) == in_layers]
                if params:
                    lr = self.encoder_learning_rate if in_layers else group["lr"]
                    optimizer.add_param_group({**group, "params": params, "lr": lr})
        return optimizer

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
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels[:, -1])
        losses = []
        if self.objective.classify:
            unwrapped = self.accelerator.unwrap_model(model)
            losses += [outputs.loss, *coarser_rank_losses(unwrapped, outputs.embeddings, labels[:, :-1])]
        if self.objective.supcon:
            losses.append(supervised_contrastive_loss(outputs.embeddings, labels[:, -1], self.supcon_temperature))
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
    data: list[str] = field(
        metadata={"help": "BIOSCAN-5M-style table(s) with genus, species (family, order) and optionally split columns"}
    )
    model: str = field(default_factory=default_model_path, metadata={"help": "BarcodeMAE encoder folder."})
    objective: str = field(
        default="genus",
        metadata={"help": "genus, species, ranks coarse to fine (family+genus, order+family+genus), X+supcon, supcon"},
    )
    label_splits: list[str] = field(
        default_factory=lambda: ["train"], metadata={"help": f"splits whose labels train (of {LABEL_SPLITS})"}
    )
    holdout_genus_fraction: float = field(
        default=0.1,
        metadata={"help": "tables without split values: share of the genera of families with >= 2 held out whole"},
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
    encoder_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the transformer layers (default: --learning_rate)"}
    )
    freeze_encoder_layers: bool = field(
        default=False, metadata={"help": "train only token embeddings and head (the transformer stays as loaded)"}
    )
    probe_split: str = "val_unseen"
    probe_references: int = field(default=20000, metadata={"help": "unique train references of the probe"})


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    max_train_minutes: float | None = field(default=None, metadata={"help": "wall-clock budget (minutes)"})


def check_arguments(args: FinetuneArguments) -> None:
    Objective.parse(args.objective)
    leaking = sorted(set(args.label_splits) - set(LABEL_SPLITS))
    if leaking:
        raise ValueError(
            f"--label_splits {leaking} refused: labels may only come from seen-species partitions {LABEL_SPLITS}"
            " (unseen-species or pretraining rows would leak into the open-world evaluation)"
        )
    if not 0.0 <= args.holdout_genus_fraction < 1.0:
        raise ValueError(f"--holdout_genus_fraction must be in [0, 1) (got {args.holdout_genus_fraction})")


def check_partitions(records: list[dict], args: FinetuneArguments, assigned: bool) -> None:
    """Refuse, in one message, the partitions the run needs (labels and probe queries) that the records lack."""
    present = Counter(label_text(r.get("split")) or "(none)" for r in records)
    needed = dict.fromkeys(["train", *args.label_splits, args.probe_split])
    missing = ", ".join(f"`{split}`" for split in needed if not present[split])
    if not missing:
        return
    found = ", ".join(f"{name} ({n:,})" for name, n in sorted(present.items()))
    if assigned:
        raise ValueError(
            f"holding out species left no {missing} rows ({found}): the unseen-species probe needs genera with >= 3 "
            "labelled species, and training needs seen species"
        )
    raise ValueError(
        f"the table's split column has no {missing} rows (split values: {found}); barcodemae finetune needs `train` "
        f"and --label_splits for the labels and `{args.probe_split}` (unseen species) for the probe. Without split "
        "values (drop the column or leave it empty) it holds out species and genera itself, seeded by --seed"
    )


def partitioned(records: list[dict], args: FinetuneArguments, seed: int) -> tuple[list[dict], dict | None]:
    """The records with the table's partitions (checked), or, where it has no split values, with species and genera
    held out here; and what was held out (None: the table's own partitions)."""
    holdout = None
    if not any(label_text(record.get("split")) for record in records):
        records, holdout = hold_out(records, args.holdout_genus_fraction, seed)
    check_partitions(records, args, assigned=holdout is not None)
    return records, holdout


def labelled_rows(records: list[dict], splits: Sequence[str], ranks: Sequence[str]) -> tuple[list[str], list[tuple]]:
    """Unique (barcode, deepest-rank label) pairs of the given splits, in input order, with each row's label at every
    rank ('' where it has none)."""
    seen, sequences, labels = set(), [], []
    for record in records:
        label = record.get(ranks[-1])
        if record.get("split") in splits and label and (record["dna_barcode"], label) not in seen:
            seen.add((record["dna_barcode"], label))
            sequences.append(record["dna_barcode"])
            labels.append(tuple(str(record.get(rank) or "") for rank in ranks))
    if not sequences:
        raise ValueError(f"no rows with a {ranks[-1]} label in splits {list(splits)}")
    return sequences, labels


def probe_sets(records: list[dict], args: FinetuneArguments, seed: int) -> tuple[dict, dict, dict | None]:
    """The probe's unique ``train`` references (at most ``probe_references``, with their genus's family), its
    unique ``probe_split`` queries and the unique barcodes of the novel genera that have a family (None: none)."""
    # the protocol's seen-species queries go unused: asking for the probe's split twice spares requiring `val`
    protocol = prepare_protocol(records, seen_split=args.probe_split, unseen_split=args.probe_split)
    references = protocol.train.subsample(args.probe_references, seed)
    family_of = {  # from `train` rows only: an unseen partition's labels never label a reference
        label_text(r.get("genus")): label_text(r.get("family"))
        for r in records
        if r.get("split") == "train" and label_text(r.get("family"))
    }
    probe_refs = {"dna_barcode": references.sequences, "genus": references.genus}
    probe_refs["family"] = [family_of.get(genus) for genus in references.genus]
    probe_queries = {name: getattr(protocol.unseen, name) for name in ("sequences", "genus", "species")}
    probe_queries["dna_barcode"] = probe_queries.pop("sequences")
    novel = {}
    for record in records:
        if record.get("split") == NOVEL_GENUS and label_text(record.get("family")):
            novel.setdefault(record["dna_barcode"], record)
    novel_queries = {
        column: [label_text(r[column]) for r in novel.values()] for column in ("dna_barcode", "genus", "family")
    }
    return probe_refs, probe_queries, novel_queries if novel else None


@dataclass
class FinetuneData:
    """What `barcodemae finetune` trains and probes on: ``train`` (a ``datasets.Dataset`` of ``dna_barcode``,
    ``labels``: one class per rank, coarsest to deepest, :data:`IGNORE_INDEX` where a row lacks the rank, and
    ``row``), each rank's class names, the probe's sets and what was held out (None: the table's partitions)."""

    train: object
    label_names: dict[str, list[str]]
    references: dict[str, list]
    queries: dict[str, list]
    novel_genus: dict[str, list] | None
    holdout: dict | None


def build_datasets(records: list[dict], args: FinetuneArguments, seed: int) -> FinetuneData:
    """Partition the records (:func:`partitioned`), then the training rows and the probe's sets."""
    import datasets

    records, holdout = partitioned(records, args, seed)
    ranks = Objective.parse(args.objective).ranks
    sequences, labels = labelled_rows(records, args.label_splits, ranks)
    names = {rank: sorted({row[i] for row in labels} - {""}) for i, rank in enumerate(ranks)}
    index = {rank: {name: i for i, name in enumerate(names[rank])} for rank in ranks}
    classes = [[index[rank].get(name, IGNORE_INDEX) for rank, name in zip(ranks, row)] for row in labels]
    train = datasets.Dataset.from_dict(
        {"dna_barcode": sequences, "labels": classes, "row": list(range(len(sequences)))}
    )
    return FinetuneData(train, names, *probe_sets(records, args, seed), holdout)


def rank_heads(model, rank_labels: dict[str, list[str]]) -> nn.ModuleDict:
    """One classifier per coarser rank, of the kind of the model's own head and initialised as the model does."""
    from modeling_barcodemae import CosineClassifier

    config, heads = model.config, nn.ModuleDict()
    for rank, names in rank_labels.items():
        if config.classifier_type == "cosine":
            heads[rank] = CosineClassifier(config.embedding_size, len(names), config.classifier_scale)
        else:
            heads[rank] = nn.Linear(config.embedding_size, len(names))
        model._init_weights(heads[rank])
    return heads


def load_classifier(args: FinetuneArguments, label_names: dict[str, list[str]]):
    """The classifier of the deepest rank, with the coarser ranks' heads as ``rank_classifiers`` (their class names
    in ``config.rank_labels``)."""
    from modeling_barcodemae import BarcodeMAEForSequenceClassification

    *coarser, level = Objective.parse(args.objective).ranks
    names = label_names[level]
    overrides = dict(
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        classifier_type=args.classifier_type,
        classifier_scale=args.classifier_scale,
        embedding_frames=args.embedding_frames,
        freeze_encoder=False,
    )
    if args.readout:
        overrides["readout"] = args.readout
    model = BarcodeMAEForSequenceClassification.from_pretrained(args.model, local_files_only=True, **overrides)
    rank_labels = {rank: label_names[rank] for rank in coarser}
    if rank_labels:
        model.config.rank_labels = rank_labels
    model.rank_classifiers = rank_heads(model, rank_labels)
    if args.freeze_encoder_layers:
        model.barcodemae.encoder.requires_grad_(False)
    return model


def label_summary(config, objective: Objective) -> str:
    """``12 family labels and 48 genus labels``: the classes of each rank the objective trains."""
    counts = [(len(config.rank_labels[rank]), rank) for rank in objective.ranks[:-1]]
    counts.append((config.num_labels, objective.level))
    return " and ".join(f"{n} {rank} labels" for n, rank in counts)


def evaluation_at_last_step(state) -> dict[str, float] | None:
    """The probe's metrics logged at the final step (an ``eval_steps`` multiple, or the time budget's last
    evaluation), so the run does not embed the probe twice; None when the last step was not evaluated."""
    for entry in reversed(state.log_history):
        if entry.get("step") == state.global_step and "eval_genus_1nn_per_species" in entry:
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return None


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
    data = build_datasets(records, args, training_args.seed)
    objective = Objective.parse(args.objective)
    model = load_classifier(args, data.label_names)
    tokenizer = BarcodeMAETokenizer.from_pretrained(args.model, local_files_only=True)
    logger.info("%s, %d training barcodes", label_summary(model.config, objective), len(data.train))
    probe = IdentificationProbe(data.references, data.queries, tokenizer, data.novel_genus)
    deepest = [row[-1] for row in data.train["labels"]]
    sampler = ClassBalancedBatchSampler(deepest, args.classes_per_batch, args.samples_per_class, training_args.seed)
    budget = [TimeBudgetCallback(training_args.max_train_minutes)] if training_args.max_train_minutes else None
    trainer = TaxonomyTrainer(
        model=model,
        args=training_args,
        data_collator=TaxonomyCollator(tokenizer, args.random_offset, args.min_crop_fraction, training_args.seed),
        train_dataset=data.train,
        eval_dataset=data.queries["dna_barcode"],
        processing_class=tokenizer,
        callbacks=budget,
        sampler=sampler,
        probe=probe,
        objective=objective,
        supcon_temperature=args.supcon_temperature,
        encoder_learning_rate=args.encoder_learning_rate,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    reused = None if training_args.load_best_model_at_end else evaluation_at_last_step(trainer.state)
    metrics = reused or trainer.evaluate()
    trainer.save_model()
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        write_encoder(trainer.model, tokenizer, output_dir / "encoder", args, len(data.train))
        info = {
            "command": " ".join(["barcodemae finetune", *argv]),
            "objective": args.objective,
            "labels": label_summary(model.config, objective),
            "label_splits": args.label_splits,
            "training_barcodes": len(data.train),
            "cleaning": cleaning,
            "holdout": data.holdout,
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


def holdout_record(holdout: dict | None) -> str:
    """TRAINING.md's line on the partitions held out by `barcodemae finetune` ('' where the table had its own)."""
    if not holdout:
        return ""
    return f"""* Partitions: the table has no split values, so `barcodemae finetune` held out (seed {holdout["seed"]})
  {len(holdout["val_unseen_species"])} species as `val_unseen` (the probe's queries) and
  {len(holdout["test_unseen_species"])} as `test_unseen` (untouched) with `barcodemae.data.assign_bioscan_splits`,
  and {len(holdout["novel_genera"])} genera whole as `{NOVEL_GENUS}` ({holdout["genus_fraction"]:.0%} of the genera of
  families with >= 2 genera; no label of theirs trains); `run_info.json` lists them.
"""


def training_record(info: dict, args: FinetuneArguments) -> str:
    """TRAINING.md of a fine-tuned encoder: command, data, labels, budget and the probe during training."""
    rows = [
        f"| {e['step']} | {e['eval_genus_1nn_per_species']:.2f} | {e['eval_genus_1nn_micro']:.2f} |"
        for e in info.get("eval_history", [])
    ]
    batch = args.classes_per_batch * args.samples_per_class
    final, partitions = info["final_eval"], holdout_record(info.get("holdout"))
    novel = (
        f" Family 1-NN of the held-out genera's barcodes: {final['eval_novel_genus_family_1nn_per_genus']} per genus,"
        f" {final['eval_novel_genus_family_1nn_micro']} micro."
        if "eval_novel_genus_family_1nn_micro" in final
        else ""
    )
    return f"""# How this encoder was trained

* Command: `{info["command"]}`
* Start: `{args.model}` (its own TRAINING.md tells how it was pretrained).
{partitions}* Labels: {info["labels"]} of {info["training_barcodes"]} unique (barcode, label) rows of the
  `{"`, `".join(info["label_splits"])}` partition(s) only (seen species; `val_unseen`, `test_unseen` and
  `pretrain` labels are refused by `barcodemae finetune`).
* Objective: `{info["objective"]}`; readout `{args.readout or "as loaded"}`; {info["global_step"]} steps of {batch}
  barcodes ({args.classes_per_batch} labels x {args.samples_per_class}), random start offset
  {"on" if args.random_offset else "off"}, crop fraction >= {args.min_crop_fraction}; final training loss
  {info["train_loss"]:.3f}.
* Wall time: {info["wall_seconds"] / 60:.1f} min (data loading and evaluations included), device `{info["device"]}`,
  {info.get("torch_threads", "?")} torch thread(s).
* Probe (genus 1-NN of all unique `{args.probe_split}` queries against {args.probe_references:,} unique `train`
  references; choose on the per-species number): final {final.get("eval_genus_1nn_per_species")} per
  species, {final.get("eval_genus_1nn_micro")} micro.{novel}

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
    encoder.config.trained_labels = (
        f"{label_summary(encoder.config, Objective.parse(args.objective))} of {n_rows} unique barcodes from the "
        f"`{'`, `'.join(args.label_splits)}` partition(s), seen species only (`barcodemae finetune --objective "
        f"{args.objective}`, class-balanced batches of {args.classes_per_batch} x {args.samples_per_class})"
    )
    encoder.config.auto_map = dict(ENCODER_AUTO_MAP)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_model_card(folder, source=f"fine-tuned from `{args.model}`")


if __name__ == "__main__":
    run_finetune(sys.argv[1:])
