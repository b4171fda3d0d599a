"""The FLOPs per step that scripts/equal_flops.sh budgets with are those of the presets it trains, and the `small`
preset's MAE step is the cheaper one (issue 13's second target)."""

from __future__ import annotations

import re
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


def preset_step_tflop(objective: str, batch_size: int = 4) -> float:
    """Counted training FLOPs of one `small`-preset step, scaled to a batch of 64."""
    model = BarcodeMAEForPreTraining(load_preset("small", objective=objective))
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
