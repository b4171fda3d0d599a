"""The FLOPs per step that scripts/equal_flops.sh budgets with are those of the presets it trains, and the `small`
preset's MAE step is the cheaper one (issue 13's second target)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.common import load_preset
from benchmarks.pretrain_step import make_batch, step_flops, train_step
from modeling_barcodemae import BarcodeMAEForPreTraining

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "equal_flops.sh"


def budgeted_tflop(recipe: str) -> float:
    """The ``tflop=`` a step of 64 that the script gives ``recipe``."""
    match = re.search(rf"^\s*{re.escape(recipe)}\) tflop=([0-9.]+);", SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{recipe} not in {SCRIPT.name}"
    return float(match.group(1))


def preset_step_tflop(objective: str, batch_size: int = 4, preset: str = "small", **overrides) -> float:
    """Counted training FLOPs of one step of the preset, scaled to a batch of 64."""
    model = BarcodeMAEForPreTraining(load_preset(preset, objective=objective, **overrides))
    step = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), make_batch(batch_size, torch.device("cpu")))
    return step_flops(step) * (64 / batch_size) / 1e12


@pytest.fixture(scope="module")
def small_preset_tflop() -> dict[str, float]:
    return {objective: preset_step_tflop(objective) for objective in ("mae", "mlm")}


def test_the_script_budgets_the_small_presets_flops(small_preset_tflop):
    assert small_preset_tflop["mlm"] == pytest.approx(budgeted_tflop("mlm"), rel=0.02)
    assert small_preset_tflop["mae"] == pytest.approx(budgeted_tflop("mae-light-vis"), rel=0.02)


def test_the_small_presets_mae_step_is_cheaper_than_its_mlm_step(small_preset_tflop):
    assert small_preset_tflop["mae"] < 0.75 * small_preset_tflop["mlm"]


def test_the_script_budgets_the_paper_sizes_flops(monkeypatch):
    # the static slots of a compiled step: an eager step trims the Bernoulli masking's empty ones (fewer FLOPs)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    counted = {
        "paper-mlm": preset_step_tflop("mlm", preset="paper"),
        "paper-mae": preset_step_tflop("mae", preset="paper", mask_ratio=0.5),
        "paper-mae-vis": preset_step_tflop("mae", preset="paper", mask_ratio=0.5, visible_loss_weight=1.0),
    }
    for recipe, tflop in counted.items():
        assert tflop == pytest.approx(budgeted_tflop(recipe), rel=0.02), recipe


@pytest.mark.parametrize(
    ("recipe", "budget", "steps", "save_steps"),
    [
        ("mlm", 0.25, 1600, 100),  # long runs: a multiple of 16, sixteen checkpoints
        ("paper-mae", 0.25, 72, 9),  # short runs: a multiple of 8, eight checkpoints
    ],
)
def test_steps_meet_the_budget_within_three_percent(tmp_path, recipe, budget, steps, save_steps):
    run = subprocess.run(
        ["bash", str(SCRIPT), recipe, str(budget)],
        env={**os.environ, "RUNS": str(tmp_path), "PYTHON": "echo"},
        capture_output=True,
        text=True,
        check=True,
    )
    arguments = run.stdout.split()
    assert int(arguments[arguments.index("--max_steps") + 1]) == steps
    assert int(arguments[arguments.index("--save_steps") + 1]) == save_steps
    assert steps * budgeted_tflop(recipe) == pytest.approx(budget * 1000, rel=0.03)
    budget_json = json.loads((tmp_path / f"eqflop-{budget}-{recipe}" / "budget.json").read_text())
    assert budget_json["max_steps"] == steps
    assert budget_json["learning_rate"] == float(arguments[arguments.index("--learning_rate") + 1])


def test_another_seed_trains_into_its_own_run_and_records_it(tmp_path):
    run = subprocess.run(
        ["bash", str(SCRIPT), "mlm", "0.25"],
        env={**os.environ, "RUNS": str(tmp_path), "PYTHON": "echo", "SEED": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    arguments = run.stdout.split()
    assert arguments[arguments.index("--seed") + 1] == "1"
    assert arguments[arguments.index("--output_dir") + 1] == str(tmp_path / "eqflop-0.25-mlm-seed1")
    assert json.loads((tmp_path / "eqflop-0.25-mlm-seed1" / "budget.json").read_text())["seed"] == 1


def test_a_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    run_dir = tmp_path / "eqflop-0.25-mlm"
    for step, complete in ((100, True), (900, True), (1000, False)):  # checkpoint-1000 was cut off mid-save
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    run = subprocess.run(
        ["bash", str(SCRIPT), "mlm", "0.25"],
        env={**os.environ, "RUNS": str(tmp_path), "PYTHON": "echo"},
        capture_output=True,
        text=True,
        check=True,
    )
    arguments = run.stdout.split()
    assert arguments[arguments.index("--resume_from_checkpoint") + 1] == str(run_dir / "checkpoint-900")


def test_the_pair_script_trains_then_scores_the_mlm_and_then_the_mae(tmp_path):
    pair = SCRIPT.with_name("equal_flops_pair.sh")
    run = subprocess.run(
        ["bash", str(pair), "0.25"],
        env={**os.environ, "RUNS": str(tmp_path), "PYTHON": "echo", "SEED": "2", "BF16": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    order = [line.split()[1:] for line in run.stdout.splitlines() if line.split()[1] in ("training", "scoring")]
    runs = [str(tmp_path / f"eqflop-0.25-{name}-seed2") for name in ("mlm", "mae-light-vis")]
    assert order == [["training", runs[0]], ["scoring", runs[0]], ["training", runs[1]], ["scoring", runs[1]]]
    scoring = [line.split() for line in run.stdout.splitlines() if line.startswith("scripts/flop_curve.py")]
    assert [arguments[arguments.index("--runs") + 1] for arguments in scoring] == runs
    assert all(arguments[arguments.index("--precision") + 1] == "bf16" for arguments in scoring)
    trained = (tmp_path / "eqflop-0.25-mae-light-vis-seed2.log").read_text().split()
    assert trained[trained.index("--objective") + 1] == "mae" and trained[trained.index("--seed") + 1] == "2"
