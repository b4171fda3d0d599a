"""Figures: robustness curves (paper Fig. 3), t-SNE of under-represented genera (Fig. 2), training curves.

Matplotlib with the Agg backend; every PNG is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PERTURBATIONS = (("masking", "Token masking"), ("deletion", "Token deletion"))
READOUT_ORDER = ("mean", "mean_whitened", "kmer_bag")  # the paper's readout first
RUN_NAME = re.compile(r"eqflop-(?P<budget>[0-9.]+)-(?P<recipe>[a-z-]+?)(?:-seed(?P<seed>[0-9]+))?")


@dataclass(frozen=True)
class EqualFlopsRun:
    """What the name of a run of scripts/equal_flops.sh (``eqflop-BUDGET-RECIPE[-seedN]``) says."""

    budget: str
    recipe: str
    seed: int

    @classmethod
    def parse(cls, run: str) -> EqualFlopsRun | None:
        """The run's budget, recipe and seed (0 unless named ``-seedN``); None for another name."""
        name = RUN_NAME.fullmatch(run)
        return None if name is None else cls(name["budget"], name["recipe"], int(name["seed"] or 0))


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    os.close(handle)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_robustness(curves: dict[str, dict[str, dict[float, float]]], path: str | Path) -> Path:
    """Genus 1-NN accuracy (unseen) vs perturbation rate: two panels (masking, deletion), one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (kind, title) in zip(axes, PERTURBATIONS):
        for model, curve in curves.items():
            points = sorted((float(rate), acc) for rate, acc in curve.get(kind, {}).items())
            if points:
                axis.plot(*zip(*points), marker="o", label=model)
        axis.set(title=title, xlabel="rate at inference", ylabel="genus 1-NN accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def underrepresented_genera(genus_labels: Sequence[str | None], n_genera: int = 20, seed: int = 0) -> list[str]:
    """``n_genera`` random genera (sorted) among the under-represented ones: genera with at least 5 records whose
    count is at most the median count of such genera (the lower half). Falls back to all genera with ≥5 records
    when the lower half has fewer than ``n_genera``."""
    counts = Counter(g for g in genus_labels if g)
    eligible = {g: c for g, c in counts.items() if c >= 5}
    if not eligible:
        return []
    median = float(np.median(list(eligible.values())))
    pool = sorted(g for g, c in eligible.items() if c <= median)
    if len(pool) < n_genera:
        pool = sorted(eligible)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(pool, size=min(n_genera, len(pool)), replace=False).tolist())


def plot_tsne(
    embeddings_by_model: dict[str, tuple[np.ndarray, Sequence[str | None]]],
    path: str | Path,
    n_genera: int = 20,
    seed: int = 0,
    max_iter: int = 1000,
) -> Path:
    """t-SNE (scikit-learn) of the records of ``n_genera`` under-represented genera, one panel per model.

    The genera are chosen once (from the first model's labels) and used in every panel, with the same colours.
    ``max_iter``: t-SNE optimisation steps (scikit-learn's minimum is 250).
    """
    from sklearn.manifold import TSNE

    first_labels = next(iter(embeddings_by_model.values()))[1]
    genera = underrepresented_genera(first_labels, n_genera=n_genera, seed=seed)
    colours = {g: plt.get_cmap("tab20")(i % 20) for i, g in enumerate(genera)}
    fig, axes = plt.subplots(1, len(embeddings_by_model), figsize=(5 * len(embeddings_by_model), 5), squeeze=False)
    for axis, (model, (emb, labels)) in zip(axes[0], embeddings_by_model.items()):
        labels = np.asarray(labels, dtype=object)
        rows = np.flatnonzero(np.isin(labels, genera))
        if len(rows) > 3:
            perplexity = min(30.0, (len(rows) - 1) / 3)
            points = TSNE(perplexity=perplexity, init="pca", max_iter=max_iter, random_state=seed).fit_transform(
                np.asarray(emb, dtype=np.float32)[rows]
            )
            for genus in genera:
                mask = labels[rows] == genus
                axis.scatter(points[mask, 0], points[mask, 1], s=8, color=colours[genus], label=genus)
        axis.set(title=model, xticks=[], yticks=[])
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2)
    return _save(fig, path)


def plot_training_curves(log_history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss curves from ``trainer.state.log_history``: train ``loss`` and ``eval_loss`` vs step on the left,
    every other numeric ``eval_*`` metric (e.g. genus 1-NN) vs step on the right."""
    series: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if (key == "loss" or key.startswith("eval_")) and isinstance(value, (int, float)):
                series.setdefault(key, []).append((step, float(value)))
    skip = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_loss")
    metrics = {k: v for k, v in series.items() if k.startswith("eval_") and k not in skip}
    fig, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        if key in series:
            loss_axis.plot(*zip(*series[key]), marker="." if key == "eval_loss" else None, label=label)
    loss_axis.set(title="Loss", xlabel="step", ylabel="loss")
    for key, points in metrics.items():
        metric_axis.plot(*zip(*points), marker="o", label=key.removeprefix("eval_"))
    metric_axis.set(title="Evaluation metrics", xlabel="step")
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    return _save(fig, path)


def plot_flop_curves(runs: dict[str, dict[str, dict[str, Any]]], path: str | Path) -> Path:
    """Genus 1-NN per species (95% interval bars) against training FLOPs (log axis): one panel per readout (columns)
    and model size (rows: the ``paper-`` recipes apart), then the effective rank of the paper's readout (``mean``),
    where collapse shows; one line per run; a recipe keeps its colour, a budget its line style and a seed its marker
    (runs named ``eqflop-BUDGET-RECIPE[-seedN]``). The legend, below the panels, names recipes, budgets and markers
    once each rather than every run.
    ``runs``: ``{run: {step: {"training_tflop": x, readout: {"per_species": y, "per_species_interval": [lo, hi],
    "effective_rank": r}}}}``.
    """
    scored = {key for points in runs.values() for point in points.values() for key in point} - {"training_tflop"}
    readouts = sorted(
        scored, key=lambda readout: (READOUT_ORDER.index(readout) if readout in READOUT_ORDER else 9, readout)
    )
    panels = [(readout, "per_species") for readout in readouts]
    if any("effective_rank" in point.get("mean", {}) for points in runs.values() for point in points.values()):
        panels.append(("mean", "effective_rank"))
    sizes = {run: flop_curve_size(run) for run in runs}
    rows = list(dict.fromkeys(sizes.values()))
    styles = flop_curve_styles(list(runs))
    fig, axes = plt.subplots(
        len(rows), len(panels), figsize=(5 * len(panels), 3.8 * len(rows)), squeeze=False, sharex="col"
    )
    for row, size in enumerate(rows):
        for ax, (readout, metric) in zip(axes[row], panels):
            for run in (run for run in runs if sizes[run] == size):
                _draw_run(ax, runs[run], readout, metric, styles[run])
            ax.set_xscale("log")
            rank = metric == "effective_rank"
            ax.set_title(f"{size}, readout: {readout}{', effective rank' if rank else ''}", fontsize=10)
            ax.set_ylabel("effective rank" if rank else "genus 1-NN per species (%)")
            ax.grid(alpha=0.3, which="both")
    for ax in axes[-1]:
        ax.set_xlabel("training TFLOP (log)")
    handles = flop_curve_legend(list(runs), styles)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=6, fontsize=8, frameon=False)
    fig.suptitle("val_unseen genus 1-NN (95% intervals) and effective rank against training FLOPs", y=1.0)
    fig.tight_layout()
    return _save(fig, path)


def flop_curve_size(run: str) -> str:
    """The row a run is drawn in: the paper's size for ``paper-`` recipes, else the small size."""
    name = EqualFlopsRun.parse(run)
    return "paper's size" if name and name.recipe.startswith("paper-") else "small size"


def _draw_run(
    ax: plt.Axes, points: dict[str, dict[str, Any]], readout: str, metric: str, style: tuple[str, str, str]
) -> None:
    """One run's points of ``metric`` (``per_species`` with its interval bars, or ``effective_rank``)."""
    scored = [points[step] for step in sorted(points, key=int) if metric in points[step].get(readout, {})]
    if not scored:
        return
    color, line, marker = style
    y = np.array([point[readout][metric] for point in scored])
    if metric == "per_species":
        low, high = np.array([point[readout]["per_species_interval"] for point in scored]).T
        yerr = [y - low, high - y]
    else:
        yerr = None
    x = [point["training_tflop"] for point in scored]
    ax.errorbar(
        x, y, yerr=yerr, marker=marker, ms=4, capsize=2, elinewidth=0.8, alpha=0.85, linestyle=line, color=color
    )


def flop_curve_legend(runs: list[str], styles: dict[str, tuple[str, str, str]]) -> list[plt.Line2D]:
    """One entry per recipe (its colour), per budget (its line style) and per marker, in order of appearance."""
    names = {run: EqualFlopsRun.parse(run) for run in runs}
    recipes = {name.recipe if name else run: styles[run][0] for run, name in names.items()}
    budgets = {name.budget: styles[run][1] for run, name in names.items() if name}
    handles = [plt.Line2D([], [], color=color, lw=2, label=recipe) for recipe, color in recipes.items()]
    for budget, line in sorted(budgets.items(), key=lambda item: float(item[0])):
        handles.append(plt.Line2D([], [], color="k", linestyle=line, label=f"{budget} PFLOP"))
    handles.append(plt.Line2D([], [], color="k", marker="o", linestyle="", label="seed 0"))
    if any(name and name.seed for name in names.values()):
        handles.append(plt.Line2D([], [], color="k", marker="s", linestyle="", label="other seeds"))
    return handles


def flop_curve_styles(runs: list[str]) -> dict[str, tuple[str, str, str]]:
    """Each run's (colour, line style, marker): a colour per recipe, a line style per budget, circles for seed 0 and
    squares for other seeds; a name not of scripts/equal_flops.sh gets a colour of its own and a solid line."""
    names = {run: EqualFlopsRun.parse(run) for run in runs}
    recipes = list(dict.fromkeys(name.recipe if name else run for run, name in names.items()))
    budgets = sorted({name.budget for name in names.values() if name}, key=float, reverse=True)
    styles = {}
    for run, name in names.items():
        color = f"C{recipes.index(name.recipe if name else run) % 10}"
        line = ("-", "--", ":", "-.")[budgets.index(name.budget) % 4] if name else "-"
        styles[run] = (color, line, "s" if name and name.seed else "o")
    return styles
