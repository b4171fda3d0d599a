"""Export the best checkpoint of a train.py run into pretrained/NAME/ with a TRAINING.md describing the run.

python scripts/ship_pretrained.py runs/small-mae pretrained/barcodemae-small [--results results/x/results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import torch

from barcodemae.hub import export_checkpoint


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def run_info_best(run: Path) -> str:
    info = json.loads((run / "run_info.json").read_text())
    return info["best_checkpoint"] or str(sorted(run.glob("checkpoint-*"))[-1])


def training_markdown(run: Path, out: Path) -> str:
    info = json.loads((run / "run_info.json").read_text())
    report = json.loads((run / "data_report.json").read_text())
    best = Path(run_info_best(run))
    rows = [
        f"| {e['step']} | {e['eval_loss']:.3f} | {e['eval_masked_accuracy']:.2f} "
        f"| {e.get('eval_genus_1nn_unseen', float('nan')):.1f} | {e.get('eval_effective_rank', float('nan')):.1f} |"
        for e in evaluations(run)
    ]
    skipped = ", ".join(f"{reason} {count}" for reason, count in report["skipped"].items())
    files = ", ".join(f"`{Path(f).name}` (sha256 `{sha256(f)}`)" for f in info["data_files"])
    command = info.get("command", "(not recorded)")
    return f"""# How {out.name} was trained

* Command: `{command}`
* Data: {files}; pretraining rows: `split` in pretrain/train, identical barcodes once:
  {report["n_kept"]} barcodes kept of {report["n_records"]} rows (left out: {skipped};
  truncated to 660 bases: {report["truncated"]}).
  Never `val`, `test`, `val_unseen` or `test_unseen` rows.
* Objective: `{info["objective"]}`, preset `{info["preset"]}` (see `config.json`); {info["global_step"]} steps of
  64 barcodes (final training loss {info["train_loss"]:.3f}).
* Wall time: {info["wall_seconds"] / 60:.0f} min on {cpu_name()} ({torch.get_num_threads()} cores, device
  `{info["device"]}`), sharing the machine with other jobs (see the results notes).
* Shipped checkpoint: `{best.name}`, the best by genus 1-NN of 1,000 `val_unseen` queries against 3,000 `train`
  references (`--metric_for_best_model genus_1nn_unseen`).

Validation during training (masked-token metrics on 1,000 `val` barcodes; genus 1-NN and effective rank of the
probe described above):

| step | val masked-token loss | val masked-token accuracy (%) | genus 1-NN val_unseen probe (%) | effective rank |
|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Export: `python scripts/ship_pretrained.py {run} {out}`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--results", help="evaluation results.json for the model card's model-index")
    parser.add_argument("--results-key", help="which model of results.json")
    args = parser.parse_args()
    export_checkpoint(
        run_info_best(args.run), args.out, results=args.results, results_key=args.results_key, overwrite=True
    )
    (args.out / "TRAINING.md").write_text(training_markdown(args.run, args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
