"""The report's figures, each a function from a summary table to a PNG file (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .tables import AVERAGE, variant_label  # noqa: E402
from .validity import spearman  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MARKERS = "os^Dvp*hXP<>"


def tradeoff(summary: pd.DataFrame, path: Path) -> None:
    """Base-to-new: base vs new accuracy, one marker per variant, one colour per dataset, HM iso-curves."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    data = summary.dropna(subset=["base", "new"])
    lo = max(0.0, math.floor(min(data["base"].min(), data["new"].min()) / 10) * 10 - 5) if len(data) else 0
    b = np.linspace(max(lo, 1), 100, 400)
    for h in range(10, 100, 10):
        with np.errstate(divide="ignore", invalid="ignore"):
            n = h * b / (2 * b - h)
        keep = (2 * b > h) & (n >= lo) & (n <= 100)
        if keep.any():
            ax.plot(b[keep], n[keep], color="0.85", lw=0.8, zorder=0)
            if h > lo:  # label where the curve crosses the diagonal base = new
                ax.annotate(f"HM {h}", (h, h), fontsize=7, color="0.5", ha="left", va="bottom")
    variants = dict.fromkeys(summary["variant"])  # a marker each, reused past 12 (e.g. --validate-top 16)
    markers = {variant: MARKERS[index % len(MARKERS)] for index, variant in enumerate(variants)}
    datasets = [d for d in dict.fromkeys(summary["dataset"]) if d != AVERAGE]
    colours = dict(zip(datasets, plt.cm.tab10.colors * 3, strict=False))
    for r in data.itertuples():
        avg = r.dataset == AVERAGE
        ax.scatter(r.base, r.new, marker=markers[r.variant], s=190 if avg else 55, zorder=4 if avg else 3,
                   facecolor="none" if avg else colours[r.dataset], edgecolor="black", lw=1.8 if avg else 0.6)
    handles = [Line2D([], [], ls="", marker=mk, color="0.3", label=variant_label(v)) for v, mk in markers.items()]
    handles += [Line2D([], [], ls="", marker="s", color=colours[d], label=d) for d in datasets]
    handles += [Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.8,
                       markersize=11, label="Average over datasets")]
    ax.legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.9)
    ax.set(xlim=(lo, 100), ylim=(lo, 100), xlabel="base-class accuracy (%)", ylabel="new-class accuracy (%)",
           title="Base vs new accuracy (mean over seeds); grey: iso-HM curves")
    ax.grid(alpha=0.2)
    _save(fig, path)


def accuracy_vs_shots(summary: pd.DataFrame, path: Path) -> None:
    """Few-shot: accuracy against shots (log2 axis), one line per variant, one panel per dataset + Average."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    cols = min(3, len(datasets))
    rows_n = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        for variant, group in summary[summary["dataset"] == dataset].groupby("variant", sort=False):
            group = group.sort_values("shots")
            ax.errorbar(group["shots"], group["acc"], yerr=group["acc_std"].fillna(0), marker="o", ms=4, capsize=2,
                        label=variant_label(variant))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set(title="Average over datasets" if dataset == AVERAGE else dataset, xlabel="shots per class",
               ylabel="accuracy (%)")
        ax.grid(alpha=0.2)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Few-shot accuracy vs shots (mean ± std over seeds)")
    _save(fig, path)


def transfer_bars(summary: pd.DataFrame, path: Path) -> None:
    """Cross-dataset / domain generalisation: accuracy per dataset (source, targets, target mean) per variant."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    variants = list(dict.fromkeys(summary["variant"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(datasets) * max(1, len(variants)) / 3), 4.5))
    width = 0.8 / max(1, len(variants))
    by = summary.set_index(["variant", "dataset"])
    for i, variant in enumerate(variants):
        means = [by.loc[(variant, d), "acc"] if (variant, d) in by.index else np.nan for d in datasets]
        stds = [by.loc[(variant, d), "acc_std"] if (variant, d) in by.index else np.nan for d in datasets]
        ax.bar(np.arange(len(datasets)) + i * width, means, width, yerr=np.nan_to_num(stds), capsize=2,
               label=variant_label(variant))
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Source and targets (mean ± std over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.2, axis="y")
    _save(fig, path)


def objective_validity(table: pd.DataFrame, path: Path, objective_name: str, final_name: str) -> None:
    """Search objective (± its binomial SE) vs the final headline (± std over seeds) of re-trained configs."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if len(table):
        ax.errorbar(table["objective"], table["final"], xerr=table["objective_se"].fillna(0),
                    yerr=table["final_std"].fillna(0), fmt="o", ms=5, capsize=2, color="tab:blue", alpha=0.8)
        for r in table.itertuples():
            ax.annotate(r.variant, (r.objective, r.final), fontsize=7, xytext=(3, 3), textcoords="offset points")
    rho = spearman(table["objective"], table["final"]) if len(table) else math.nan
    ax.set(xlabel=f"search objective: {objective_name} (%)", ylabel=f"final: {final_name} (%)",
           title=f"Did the search objective predict the final result? Spearman {rho:.2f} (n={len(table)})")
    ax.grid(alpha=0.2)
    _save(fig, path)


def best_so_far(trials: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = trials[trials["complete"].astype(bool)].reset_index(drop=True)
    x = np.arange(1, len(done) + 1)
    ax.errorbar(x, done["objective"], yerr=done["objective_se"].fillna(0), fmt="o", ms=3, alpha=0.5,
                color="tab:blue", label="trial objective ± SE")
    ax.step(x, done["objective"].cummax(), where="post", color="tab:red", label="best so far")
    ax.set(xlabel="search trial (in finishing order)", ylabel="objective (%)", title="Search progress")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.2)
    _save(fig, path)


def is_log(values: pd.Series, bounds: dict | None = None) -> bool:
    """Log scale if the sweep declared it; without a declared space, guess from the values' range."""
    if bounds and values.name in bounds:
        return bounds[values.name][2] == "log"
    v = values.astype("float64")
    return bool((v > 0).all() and v.max() / v.min() > 20)


def objective_vs_params(trials: pd.DataFrame, params: list[str], path: Path, bounds: dict) -> None:
    done = trials[trials["complete"].astype(bool)]
    cols = min(3, max(1, len(params)))
    rows_n = max(1, math.ceil(len(params) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax, p in zip(axes.flat, params, strict=False):
        values = done[p]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            ax.scatter(values.astype("float64"), done["objective"], s=18, alpha=0.7)
            if is_log(values, bounds):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        else:
            levels = sorted(values.astype(str).unique())
            xs = values.astype(str).map({v: i for i, v in enumerate(levels)})
            ax.scatter(xs + np.random.default_rng(0).uniform(-0.1, 0.1, len(xs)), done["objective"], s=18, alpha=0.7)
            ax.set_xticks(range(len(levels)), levels)
        ax.set(xlabel=p, ylabel="objective (%)")
        ax.grid(alpha=0.2)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    if not params:
        axes[0, 0].text(0.5, 0.5, "no searched hyperparameters", ha="center", va="center")
    fig.suptitle("Search objective vs each searched hyperparameter")
    _save(fig, path)


def importance(values: dict[str, float], how: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * max(3, len(values)) + 1.2))
    if values:
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set(xlabel="importance", xlim=(0, max(1e-9, max(values.values())) * 1.1))
    else:
        ax.text(0.5, 0.5, f"no importance: {how}", ha="center", va="center")
        ax.axis("off")
    ax.set_title(f"Hyperparameter importance\n({how})", fontsize=10)
    _save(fig, path)
