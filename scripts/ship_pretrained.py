"""Export the best checkpoint of a train.py run into pretrained/NAME/ with a TRAINING.md describing the run.

python scripts/ship_pretrained.py runs/small-mae pretrained/barcodemae-small [--results results/x/results.json]

For an equal-FLOP run (scripts/equal_flops.sh, a ``budget.json`` in the run folder) TRAINING.md states the budget
and the schedule; ``--checkpoint`` and ``--selection`` say which checkpoint ships and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from barcodemae.hub import export_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_data_file(path: str) -> str:
    """Name and sha256 of a run's data file (looked up in ../shared/data when the run used a copy elsewhere)."""
    here = next((c for c in (Path(path), SHARED_DATA / Path(path).name) if c.is_file()), None)
    return f"`{Path(path).name}` (sha256 `{sha256(here)}`)" if here else f"`{path}` (not present here)"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def evaluations(run: Path) -> list[dict]:
    """Evaluation log of the whole run (the run folder's state, else its latest checkpoint's)."""
    candidates = [run / "trainer_state.json"] + sorted(
        run.glob("checkpoint-*/trainer_state.json"), key=lambda p: -int(p.parent.name.split("-")[1])
    )
    state = json.loads(next(p for p in candidates if p.is_file()).read_text())
    return [entry for entry in state["log_history"] if "eval_loss" in entry]


def best_source(run: Path) -> Path:
    """The run's best checkpoint; else its ``encoder/`` export (which ``load_best_model_at_end`` made from it)."""
    info = json.loads((run / "run_info.json").read_text())
    best = Path(info["best_checkpoint"] or "")
    if info["best_checkpoint"] and best.is_dir():
        return best
    if (run / "encoder" / "config.json").is_file():
        return run / "encoder"
    return sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]


def recorded_arguments(command: str) -> tuple[Any, argparse.Namespace]:
    """The data arguments and the batch size / time budget of a recorded ``python train.py ...`` (parsed without
    building `TrainingArguments`, which would refuse a GPU run's flags on this machine)."""
    from transformers import HfArgumentParser

    from train import DataArguments, ModelArguments

    parser = HfArgumentParser((ModelArguments, DataArguments))
    _, data_args, rest = parser.parse_args_into_dataclasses(shlex.split(command)[2:], return_remaining_strings=True)
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--per_device_train_batch_size", type=int, default=8)
    training.add_argument("--max_train_minutes", type=float)
    return data_args, training.parse_known_args(rest)[0]


def budget_markdown(run: Path, steps: int, batch: int) -> str:
    """The equal-FLOP budget of a scripts/equal_flops.sh run, or "" for another run."""
    if not (run / "budget.json").is_file():
        return ""
    budget = json.loads((run / "budget.json").read_text())
    tflop = budget["tflop_per_step_at_batch_64"] * batch / 64
    return (
        f"* Budget: {budget['budget_pflop']:g} PFLOP of training FLOPs (`scripts/equal_flops.sh {budget['recipe']} "
        f"{budget['budget_pflop']:g}`; {tflop:.3g} TFLOP a step of {batch} counted by `torch.utils.flop_counter`,"
        f" `benchmarks/pretrain_step.py`): {steps} steps = {steps * tflop / 1000:.3g} PFLOP, warm-up 5% then a"
        " cosine schedule that reaches 0 at the last step; `scripts/equal_flops.sh` started again resumes a run from"
        " its last complete checkpoint.\n"
    )


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def training_markdown(
    run: Path, out: Path, hardware: str | None, export_command: str, shipped: Path, selection: str | None
) -> str:
    info = json.loads((run / "run_info.json").read_text())
    report = json.loads((run / "data_report.json").read_text())
    data_args, training_args = recorded_arguments(info["command"])
    best = shipped.name if shipped.name.startswith("checkpoint-") else (info["best_checkpoint"] or "final")
    best_step = best.rsplit("-", 1)[-1]
    rows = [
        f"| {e['step']} | {e['eval_loss']:.3f} | {e['eval_masked_accuracy']:.2f} "
        f"| {_number(e.get('eval_genus_1nn_unseen'))} | {_number(e.get('eval_effective_rank'))} |"
        for e in evaluations(run)
    ]
    skipped = ", ".join(f"{reason} {count}" for reason, count in report["skipped"].items())
    files = ", ".join(describe_data_file(f) for f in info["data_files"])
    batch = training_args.per_device_train_batch_size * info["world_size"]
    budget = (
        f", stopped by its {training_args.max_train_minutes:g}-minute budget" if training_args.max_train_minutes else ""
    )
    machine = hardware or f"{cpu_name()} ({torch.get_num_threads()} cores)"
    chosen = selection or (
        f"the best by genus 1-NN of {data_args.probe_queries:,} `val_unseen` queries against "
        f"{data_args.probe_references:,} `train` references (`--metric_for_best_model genus_1nn_unseen`)"
    )
    return f"""# How {out.name} was trained

* Command: `{info["command"]}`
* Data: {files}; pretraining rows: `split` in pretrain/train, identical barcodes once:
  {report["n_kept"]} barcodes kept of {report["n_records"]} rows (left out: {skipped}; truncated to 660 bases:
  {report["truncated"]}). Never `val`, `test`, `val_unseen` or `test_unseen` rows.
* Objective: `{info["objective"]}`, preset `{info["preset"]}` with the command's overrides (see `config.json`);
  {info["global_step"]} steps of {batch} barcodes{budget} (training loss {info["train_loss"]:.3f}: the mean over the
  last segment).
{budget_markdown(run, info["global_step"], batch)}\
* Wall time: {info["wall_seconds"] / 60:.1f} min (data loading and evaluations included; the last segment of a
  resumed run) on {machine}, device `{info["device"]}`.
* Shipped: step {best_step}, {chosen}.

Validation during training (masked-token metrics on {data_args.max_eval_samples:,} `val` barcodes; with
`visible_loss_weight > 0` the loss also holds the visible-token term; genus 1-NN and effective rank of the probe
described above):

| step | val loss | val masked-token accuracy (%) | genus 1-NN val_unseen probe (%) | effective rank |
|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

The preset file is read when the run starts; `config.json` holds the configuration the run actually used (the
`small` preset may have changed since). The readout (`readout`, `embedding_frames`) is set at export.

Export: `` {export_command} ``.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--results", help="evaluation results.json for the model card's model-index")
    parser.add_argument("--results-key", help="which model of results.json")
    parser.add_argument("--hardware", help="where it ran, for TRAINING.md (default: this machine's CPU)")
    parser.add_argument("--embedding-frames", type=int, help="readout: reading frames pooled (config.embedding_frames)")
    parser.add_argument("--readout", help="readout: mean, kmer_bag or mean+kmer_bag (config.readout)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint to ship (default: the run's best)")
    parser.add_argument("--selection", help="why this checkpoint, for TRAINING.md (default: the run's probe)")
    args = parser.parse_args()
    shipped = args.checkpoint or best_source(args.run)
    export_checkpoint(
        shipped,
        args.out,
        results=args.results,
        results_key=args.results_key,
        overwrite=True,
        embedding_frames=args.embedding_frames,
        readout=args.readout,
    )
    export_command = shlex.join(["python", "scripts/ship_pretrained.py", *sys.argv[1:]])
    training = training_markdown(args.run, args.out, args.hardware, export_command, shipped, args.selection)
    (args.out / "TRAINING.md").write_text(training)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
