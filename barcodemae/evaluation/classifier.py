"""Fine-tuned species classifiers: loading one and BIOSCAN-5M's fine-tune accuracy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barcodemae.evaluation.metrics import accuracy_with_interval
from barcodemae.evaluation.protocol import Protocol


def is_classifier(path: str | Path) -> bool:
    """Whether the folder holds a sequence classifier (e.g. ``barcodemae finetune``'s ``OUTPUT_DIR``)."""
    config = Path(path) / "config.json"
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") if config.is_file() else None
    return any(name.endswith("ForSequenceClassification") for name in architectures or ())


def load_classifier(path: str | Path):
    """``(classifier, tokenizer)`` of a local ``AutoModelForSequenceClassification`` folder (offline)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from barcodemae.embedding import pick_device

    options = {"trust_remote_code": True, "local_files_only": True}
    classifier = AutoModelForSequenceClassification.from_pretrained(str(path), **options)
    return classifier.to(pick_device()).eval(), AutoTokenizer.from_pretrained(str(path), **options)


@torch.inference_mode()
def classify(classifier, tokenizer, sequences: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """The label (``config.id2label``) each sequence's highest logit names."""
    device, names = next(classifier.parameters()).device, classifier.config.id2label
    predicted = []
    for start in range(0, len(sequences), batch_size):
        batch = tokenizer(
            list(sequences[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        )
        logits = classifier(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        predicted += logits.logits.argmax(-1).tolist()
    return np.array([names[i] for i in predicted], dtype=object)


def finetuned_species_accuracy(classifier, tokenizer, protocol: Protocol, seed: int = 0) -> dict[str, Any]:
    """BIOSCAN-5M's fine-tune column: species accuracy of a classifier fine-tuned on ``train`` species, on the rows
    the linear probe scores (``test`` rows whose species occurs in ``train``), with a bootstrap 95% interval. A
    classifier none of whose labels is a ``train`` species (e.g. a genus classifier) gets None and the reason."""
    ref_species = set(protocol.train.labels("species", protocol.train.has("species")))
    if not ref_species & {str(name) for name in classifier.config.id2label.values()}:
        return {"species_finetune_accuracy": None, "species_finetune_skipped": "its labels are not species of train"}
    rows = [i for i, species in enumerate(protocol.test.species) if species in ref_species]
    predicted = classify(classifier, tokenizer, [protocol.test.sequences[i] for i in rows])
    score, interval = accuracy_with_interval(predicted, [protocol.test.species[i] for i in rows], seed=seed)
    return {"species_finetune_accuracy": score, "species_finetune_accuracy_interval": interval}
