"""Results as Markdown tables: one row per model or baseline, and the robustness curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_COLUMNS = (
    ("species_finetune_accuracy", "species fine-tune acc", 2),
    ("species_linear_probe_accuracy", "species probe acc", 2),
    ("species_linear_probe_macro_f1", "species probe macro-F1", 2),
    ("genus_1nn_unseen_accuracy", "genus 1-NN unseen", 2),
    ("genus_1nn_unseen_per_species", "genus 1-NN unseen per species", 2),
    ("species_1nn_test_accuracy", "species 1-NN test", 2),
    ("harmonic_mean", "harmonic mean", 2),
    ("bin_ami", "BIN AMI", 3),
    ("species_ami", "species AMI", 3),
    ("effective_rank", "eff. rank", 1),
    ("mean_pairwise_cosine", "mean cos", 3),
    ("n_train", "n train", 0),
    ("n_test", "n test", 0),
    ("n_unseen", "n unseen", 0),
)
_OPTIONAL = {"species_finetune_accuracy"}  # columns shown only when a row has a value


def _cell(value: Any, digits: int, interval: Sequence[float] | None = None) -> str:
    """The value ('–' if missing), with its interval as `` [low, high]`` (one decimal) when there is one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:,}" if digits == 0 else f"{value:.{digits}f}"
    return text if interval is None else f"{text} [{interval[0]:.1f}, {interval[1]:.1f}]"


def results_to_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One row per model/baseline; metrics that do not apply show '–' (the fine-tune column only appears when a row
    has it); a row ``{"skipped": reason}`` shows the reason. Accuracies show their bootstrap 95% interval in
    brackets. A second table lists robustness curves (genus 1-NN unseen vs rate, with intervals) for rows that have
    them."""
    columns = [c for c in _COLUMNS if c[0] not in _OPTIONAL or any(r.get(c[0]) is not None for r in results.values())]
    header = "| model | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [header, "|---|" + "---:|" * len(columns)]
    for name, row in results.items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} |" + " |" * (len(columns) - 1))
            continue
        cells = (_cell(row.get(key), d, row.get(f"{key}_interval")) for key, _, d in columns)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = {name: row for name, row in results.items() if row.get("robustness")}
    if rows:
        lines += ["", _robustness_table(rows)]
    return "\n".join(lines) + "\n"


def _robustness_table(rows: dict[str, dict[str, Any]]) -> str:
    rates = sorted({rate for row in rows.values() for kind in row["robustness"].values() for rate in kind}, key=float)
    lines = [
        "| model | perturbation | " + " | ".join(f"{float(rate):g}" for rate in rates) + " |",
        "|---|---|" + "---:|" * len(rates),
    ]
    for name, row in rows.items():
        for kind, values in row["robustness"].items():
            intervals = row.get("robustness_interval", {}).get(kind, {})
            cells = (_cell(values.get(r), 2, intervals.get(r)) for r in rates)
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
