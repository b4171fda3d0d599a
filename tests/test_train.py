"""train.py end to end (subprocess, tiny preset, simulated barcodes): both objectives, exact resume, 2-process DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from barcodemae.simulate import simulate_barcodes, with_splits, write_tsv

ROOT = Path(__file__).resolve().parent.parent
COMMON = [
    "--preset", "tiny",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16",
    "--learning_rate", "1e-3",
    "--logging_steps", "1",
    "--use_cpu",
    "--seed", "3",
    "--disable_tqdm", "true",
    "--report_to", "none",
    "--dataloader_num_workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=3, species_per_genus=4, seed=5))
    return write_tsv(records, tmp_path_factory.mktemp("data") / "barcodes.tsv")


def run_train(args: list[str], launcher: list[str] | None = None, timeout: int = 600) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [*(launcher or [sys.executable]), str(ROOT / "train.py"), *args, *COMMON]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-4000:]


def losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.mark.parametrize("objective", ["mae", "mlm"])
def test_train_end_to_end_exports_a_loadable_encoder(tmp_path, data_file, objective):
    out = tmp_path / objective
    run_train(
        ["--data_file", str(data_file), "--objective", objective, "--output_dir", str(out), "--max_steps", "4"]
        + ["--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2"]
        + ["--load_best_model_at_end", "--metric_for_best_model", "genus_1nn_unseen", "--greater_is_better", "true"]
    )
    assert (out / "checkpoint-4" / "model.safetensors").exists()
    info = json.loads((out / "run_info.json").read_text())
    assert info["objective"] == objective and info["global_step"] == 4 and info["world_size"] == 1
    assert 0 <= info["final_eval"]["eval_masked_accuracy"] <= 100
    assert "eval_genus_1nn_unseen" in info["final_eval"] and "eval_effective_rank" in info["final_eval"]
    assert 0 <= info["final_eval"]["eval_genus_1nn_unseen_per_species"] <= 100
    report = json.loads((out / "data_report.json").read_text())
    assert report["n_kept"] > 0 and "excluded_split" in report["skipped"]
    assert (out / "loss_curve.png").stat().st_size > 0
    model = AutoModel.from_pretrained(out / "encoder", trust_remote_code=True, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "encoder", trust_remote_code=True, local_files_only=True)
    assert type(model).__name__ == "BarcodeMAEModel" and model.config.objective == objective
    with torch.no_grad():
        assert model(**tokenizer(["ACGTAC" * 20], return_tensors="pt")).pooler_output.shape == (1, 64)


def test_resume_continues_exactly(tmp_path, data_file):
    args = ["--data_file", str(data_file), "--objective", "mae", "--max_steps", "20", "--save_steps", "10"]
    args += ["--embedding_probe", "false", "--eval_strategy", "no"]
    uninterrupted = tmp_path / "full"
    run_train([*args, "--output_dir", str(uninterrupted)])
    # a run killed after step 10 leaves only what its checkpoint holds: resume from a copy of it
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoint-10", resumed / "checkpoint-10")
    run_train([*args, "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / "checkpoint-10")])
    full, continued = losses(uninterrupted), losses(resumed)
    assert set(range(11, 21)) <= set(continued)  # steps 1-10 come back from the checkpoint's log history
    for step in range(11, 21):
        assert continued[step] == pytest.approx(full[step], rel=1e-6, abs=1e-6), step
    # resuming a finished run trains nothing (the Trainer alone would take a 21st step and save it)
    info = (resumed / "run_info.json").read_text()
    run_train([*args, "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / "checkpoint-20")])
    assert not (resumed / "checkpoint-21").exists() and (resumed / "run_info.json").read_text() == info


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not available",
)
def test_two_process_data_parallel_on_cpu(tmp_path, data_file):
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run_train(
        ["--data_file", str(data_file), "--objective", "mae", "--output_dir", str(out), "--max_steps", "3"]
        + ["--embedding_probe", "false", "--eval_strategy", "no", "--ddp_backend", "gloo"],
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29533"],
    )
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["global_step"] == 3
    assert (out / "encoder" / "model.safetensors").exists()


@pytest.mark.parametrize("objective", ["mae", "mlm"])
def test_auxiliary_genus_loss_trains_on_train_labels_only_and_is_not_exported(tmp_path, data_file, objective):
    out = tmp_path / objective
    args = ["--data_file", str(data_file), "--objective", objective, "--output_dir", str(out), "--max_steps", "3"]
    run_train([*args, "--genus_loss_weight", "0.5", "--embedding_probe", "false", "--eval_strategy", "no"])
    config = json.loads((out / "config.json").read_text())
    train_genera = {r["genus"] for r in with_splits(simulate_barcodes(n_orders=1, genera_per_family=3, seed=5))}
    assert config["genus_loss_weight"] == 0.5 and 2 <= config["num_genus_labels"] <= len(train_genera)
    assert "auxiliary pretraining loss" in config["trained_labels"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert any(name.startswith("genus_head.") for name in weights.keys())  # noqa: SIM118
    with safe_open(str(out / "encoder" / "model.safetensors"), "pt") as weights:
        assert not any("genus_head" in name for name in weights.keys())  # noqa: SIM118
    refused = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, "--genus_loss_weight", "1", "--genus_label_splits", "test"]
        + COMMON,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert refused.returncode != 0 and "refused" in refused.stderr


def test_pretraining_takes_bioscan_other_heldout_rows_by_default(tmp_path):
    records = with_splits(simulate_barcodes(n_orders=1, genera_per_family=3, species_per_genus=4, seed=5))
    for record in records[:7]:
        record["split"] = "other_heldout"
    data = write_tsv(records, tmp_path / "bioscan.tsv")
    out = tmp_path / "run"
    run_train(["--data_file", str(data), "--output_dir", str(out), "--max_steps", "1", "--embedding_probe", "false"])
    report = json.loads((out / "data_report.json").read_text())
    expected = sum(r["split"] in ("pretrain", "other_heldout", "train") for r in records)
    assert (
        report["split_values"]["other_heldout"] == 7
        and report["n_kept"] + report["skipped"].get("duplicate_sequence", 0) == expected
    )
