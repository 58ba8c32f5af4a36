"""A readable report of one sweep's results: the base-to-new table, how the configuration was chosen, figures.

    python -m dualprompt.report results/base2new/<name> [more sweep folders] [--out DIR]

Writes `<first folder>/_report/REPORT.md` and its PNG figures. The folder name starts with "_" so that
pandas, pyarrow and `dualprompt.results` keep reading the sweep folder as pure Parquet. Bad input (no
Parquet files, an older schema version, sweeps of different backbones) is one sentence on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .data.catalogue import REAL_DATASETS  # noqa: E402
from .results import (AVERAGE, ResultsError, best_search_trials, check_comparable, harmonic_mean,  # noqa: E402
                      load_results, search_trials, searched_params, summarise)

# Published 11-dataset averages (ViT-B/16, 16 shots, 3 seeds), quoted from the papers and READMEs (see the
# protocol notes, section 7). They are reference numbers only: nothing here reproduces them.
PUBLISHED = {
    "CLIP": (69.34, 74.22, 71.70, "CoCoOp paper"),
    "CoOp": (82.69, 63.22, 71.66, "CoCoOp paper"),
    "KgCoOp": (80.73, 73.60, 77.00, "KgCoOp README"),
    "PromptSRC": (84.26, 76.10, 79.97, "PromptSRC README"),
}
METHOD_LABEL = {"zeroshot": "CLIP", "coop": "CoOp", "kgcoop": "KgCoOp", "dualprompt": "Dual-view (ours)"}
FIGURES = ("tradeoff.png", "best_so_far.png", "objective_vs_params.png", "importance.png")
OUTSIDE_TRAINING = {"ray_startup_s": "Ray start-up", "backbone_load_s": "backbone load",
                    "feature_s": "data and image features", "eval_s": "evaluation"}


def sweep_spec(folder: str) -> dict:
    """The sweep's saved plan (`_ray/sweep.json`: search bounds, choices, samples requested), or {}."""
    path = Path(folder) / "_ray" / "sweep.json"
    try:
        return json.loads(path.read_text()) if "://" not in folder and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _cell(mean: float, std: float) -> str:
    if mean != mean:
        return "–"
    return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


def table_markdown(summary: pd.DataFrame, quoted: bool) -> str:
    """Rows: datasets and Average; columns: methods x Base / New / HM (mean ± std over seeds)."""
    methods = list(dict.fromkeys(summary["method"]))
    head = "| Dataset | " + " | ".join(f"{METHOD_LABEL.get(m, m)} {x}" for m in methods for x in
                                        ("Base", "New", "HM")) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(methods))]
    by = summary.set_index(["dataset", "method"])
    for dataset in dict.fromkeys(summary["dataset"]):
        cells = []
        for m in methods:
            if (dataset, m) not in by.index:
                cells += ["–"] * 3
                continue
            r = by.loc[(dataset, m)]
            cells += [_cell(r["base"], r["base_std"]), _cell(r["new"], r["new_std"]), _cell(r["hm"], r["hm_std"])]
        name = "**Average**" if dataset == AVERAGE else dataset
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    failed = summary[summary["n_failed"] > 0]
    if not failed.empty:
        out += "\n\nFailed jobs, left out of the means: " + "; ".join(
            f"{METHOD_LABEL.get(r.method, r.method)} on {r.dataset}: {int(r.n_failed)} failed"
            for r in failed.itertuples() if r.dataset != AVERAGE) + "."
    if quoted:
        out += ("\n\nReference rows, **quoted, not reproduced** (published 11-dataset averages, ViT-B/16, "
                "16 shots, 3 seeds; comparable to our Average only when all 11 datasets were run):\n\n"
                "| Method (quoted, not reproduced) | Base | New | HM | Source |\n|---|---:|---:|---:|---|\n")
        out += "\n".join(f"| {m} | {b:.2f} | {n:.2f} | {h:.2f} | {src} |" for m, (b, n, h, src) in PUBLISHED.items())
    return out


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def _frame_markdown(frame: pd.DataFrame) -> str:
    fmt = _fmt
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def time_shares(rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """(sweep wall seconds summed over trials, seconds per phase incl. training and 'other')."""
    wall = rows.groupby(["stage", "trial_id"])["trial_wall_s"].max().astype("float64").sum()
    phases = {label: float(rows[col].astype("float64").sum()) for col, label in OUTSIDE_TRAINING.items()}
    phases["training"] = float(rows["train_s"].astype("float64").sum())
    phases["other (scheduling, writing rows)"] = max(0.0, wall - sum(phases.values()))
    return float(wall), phases


def plot_tradeoff(summary: pd.DataFrame, path: Path) -> None:
    """Base vs new accuracy, one marker per method, one colour per dataset, with HM iso-curves."""
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
    markers = dict(zip(dict.fromkeys(summary["method"]), "os^Dvp*h"))
    datasets = [d for d in dict.fromkeys(summary["dataset"]) if d != AVERAGE]
    colours = dict(zip(datasets, plt.cm.tab10.colors * 3))
    for r in data.itertuples():
        avg = r.dataset == AVERAGE
        ax.scatter(r.base, r.new, marker=markers[r.method], s=190 if avg else 55, zorder=4 if avg else 3,
                   facecolor="none" if avg else colours[r.dataset], edgecolor="black", lw=1.8 if avg else 0.6)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker=mk, color="0.3", label=METHOD_LABEL.get(m, m)) for m, mk in markers.items()]
    handles += [Line2D([], [], ls="", marker="s", color=colours[d], label=d) for d in datasets]
    handles += [Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.8,
                       markersize=11, label="Average over datasets")]
    ax.legend(handles=handles, fontsize=8, loc="lower left", framealpha=0.9)
    ax.set(xlim=(lo, 100), ylim=(lo, 100), xlabel="base-class accuracy (%)", ylabel="new-class accuracy (%)",
           title="Base vs new accuracy (mean over seeds); grey: iso-HM curves")
    ax.grid(alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_best_so_far(trials: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = trials[trials["complete"].astype(bool)].reset_index(drop=True)
    x = np.arange(1, len(done) + 1)
    ax.scatter(x, done["hm_val"], s=18, color="tab:blue", alpha=0.6, label="trial objective")
    ax.step(x, done["hm_val"].cummax(), where="post", color="tab:red", label="best so far")
    ax.set(xlabel="search trial (in finishing order)", ylabel="objective: HM of pseudo-base/new val acc (%)",
           title="Search progress")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_log(values: pd.Series, bounds: dict | None = None) -> bool:
    """Log scale if the sweep declared it; without a declared space, guess from the values' range."""
    if bounds and values.name in bounds:
        return bounds[values.name][2] == "log"
    v = values.astype("float64")
    return bool((v > 0).all() and v.max() / v.min() > 20)


def plot_objective_vs_params(trials: pd.DataFrame, params: list[str], path: Path, bounds: dict) -> None:
    done = trials[trials["complete"].astype(bool)]
    cols = min(3, max(1, len(params)))
    rows_n = max(1, math.ceil(len(params) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax, p in zip(axes.flat, params):
        values = done[p]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            ax.scatter(values.astype("float64"), done["hm_val"], s=18, alpha=0.7)
            if _is_log(values, bounds):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        else:
            levels = sorted(values.astype(str).unique())
            xs = values.astype(str).map({v: i for i, v in enumerate(levels)})
            ax.scatter(xs + np.random.default_rng(0).uniform(-0.1, 0.1, len(xs)), done["hm_val"], s=18, alpha=0.7)
            ax.set_xticks(range(len(levels)), levels)
        ax.set(xlabel=p, ylabel="objective (%)")
        ax.grid(alpha=0.2)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    if not params:
        axes[0, 0].text(0.5, 0.5, "no searched hyperparameters", ha="center", va="center")
    fig.suptitle("Search objective vs each searched hyperparameter")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def param_importance(trials: pd.DataFrame, params: list[str], bounds: dict) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA importances on a study rebuilt from the complete trials, with the sweep's declared
    distributions where known (else inferred from the values); fallback |Spearman rho|."""
    done = trials[trials["complete"].astype(bool)]
    if not params or len(done) < 2:
        return {}, "too few complete trials"
    try:
        import optuna
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        dists = {}
        for p in params:
            v = done[p]
            low, high = (min(bounds[p][0], v.min()), max(bounds[p][1], v.max())) if p in bounds else (v.min(), v.max())
            if pd.api.types.is_integer_dtype(v):
                dists[p] = IntDistribution(int(low), int(high))
            elif pd.api.types.is_float_dtype(v):
                dists[p] = FloatDistribution(float(low), float(high), log=_is_log(v, bounds))
            else:
                dists[p] = CategoricalDistribution(sorted(v.astype(str).unique()))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize")
        for r in done.itertuples():
            values = {p: (str(getattr(r, p)) if isinstance(dists[p], CategoricalDistribution) else
                          int(getattr(r, p)) if isinstance(dists[p], IntDistribution) else float(getattr(r, p)))
                      for p in params}
            study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(r.hm_val)))
        return dict(optuna.importance.get_param_importances(study)), "Optuna fANOVA importance"
    except Exception:  # noqa: BLE001 - too few distinct values and similar: fall back to a rank correlation
        out = {}
        for p in params:
            x = done[p].astype(str).rank() if not pd.api.types.is_numeric_dtype(done[p]) else done[p].astype(float)
            rho = pd.Series(x.to_numpy()).corr(pd.Series(done["hm_val"].to_numpy(dtype=float)), method="spearman")
            out[p] = 0.0 if rho != rho else abs(rho)
        return out, "|Spearman rank correlation| with the objective (fallback: Optuna's importance failed)"


def plot_importance(importance: dict[str, float], how: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * max(3, len(importance)) + 1.2))
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set(xlabel="importance", xlim=(0, max(1e-9, max(importance.values())) * 1.1))
    else:
        ax.text(0.5, 0.5, f"no importance: {how}", ha="center", va="center")
        ax.axis("off")
    ax.set_title(f"Hyperparameter importance\n({how})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(rows: pd.DataFrame, out: Path, sources: list[str], spec: dict | None = None) -> Path:
    """Write REPORT.md and every figure into `out`; return the markdown's path."""
    check_comparable(rows)
    spec = spec or {}
    bounds = spec.get("bounds", {})
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    trials = search_trials(rows)
    params = searched_params(rows)
    best = best_search_trials(rows, k=5)
    backbone = f"{rows['backbone'].iloc[0]} / {rows['pretrained'].iloc[0]}"
    quoted = bool(set(rows["dataset"]) & set(REAL_DATASETS))
    plot_tradeoff(summary, out / FIGURES[0])
    plot_best_so_far(trials, out / FIGURES[1])
    plot_objective_vs_params(trials, params, out / FIGURES[2], bounds)
    importance, how = param_importance(trials, params, bounds)
    plot_importance(importance, how, out / FIGURES[3])
    wall, phases = time_shares(rows)
    n_done = int(trials["complete"].astype(bool).sum()) if len(trials) else 0
    requested = f" (of {spec['num_samples']} requested)" if spec.get("num_samples") else ""
    md = [f"# Base-to-new report: {', '.join(sorted(set(rows['sweep'])))}", "",
          f"Backbone {backbone}; {len(rows)} result rows read from {', '.join(sources)}; datasets: "
          f"{', '.join(sorted(set(rows['dataset'])))}.", "",
          "## Final table (test accuracy, %, mean ± std over seeds)", "",
          "Base and new are tested as two separate closed-set problems; per dataset, HM is the harmonic mean "
          "of the mean base and mean new accuracy; **Average** is the HM of base and new averaged over the "
          "datasets (the field's convention, not the mean of per-dataset HMs). No ± means a single seed (the Average row has none, as in the papers).", "",
          table_markdown(summary, quoted) if len(summary) else "(no final-stage rows)", "",
          f"![base vs new]({FIGURES[0]})", "", "## How the configuration was chosen", "",
          f"Objective: `hm_val`, the HM of pseudo-base and pseudo-new validation accuracy inside the base "
          f"classes (new classes never seen), averaged over each trial's jobs. {len(trials)} search "
          f"trials{requested} ran, {n_done} with every job ok; searched: {', '.join(params) or 'nothing'}. Final configuration: the "
          "complete trial with the highest objective (ties: the earlier one).", ""]
    if bounds or spec.get("choices"):
        md += ["Search space: " + "; ".join([f"{k} in [{lo:g}, {hi:g}] ({scale})" for k, (lo, hi, scale) in
                                             bounds.items()] + [f"{k} in {{{', '.join(map(str, v))}}}" for k, v in
                                                                spec.get("choices", {}).items()]) + ".", ""]
    if len(best):
        md += ["Best complete search trials (highest objective first):", "",
               _frame_markdown(best.drop(columns=["finished_at", "complete"])), ""]
    used = rows[(rows["stage"] == "final") & (rows["method"] == "dualprompt")]
    if len(used) and params:
        chosen = ", ".join(f"{p}={_fmt(used[p].iloc[0])}" for p in params)
        md += [f"Configuration the final stage trained for the dual-view method: {chosen}.", ""]
    md += [f"![best so far]({FIGURES[1]})", "", f"![objective vs parameters]({FIGURES[2]})", "",
           f"![importance]({FIGURES[3]})", "", f"Importance: {how}.", "", "## Where the wall time went", ""]
    if wall > 0:
        outside = sum(v for k, v in phases.items() if k != "training")
        md += [f"Trial wall time summed over trials (machine time; concurrent trials overlap on the clock): "
               f"{wall:.0f} s; **{100 * outside / wall:.0f}%** of it was spent outside training.", "", "| Phase | Seconds | Share |", "|---|---:|---:|"]
        md += [f"| {k} | {v:.1f} | {100 * v / wall:.1f}% |" for k, v in phases.items()]
    else:
        md.append("No timing columns were recorded.")
    path = out / "REPORT.md"
    path.write_text("\n".join(md) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="sweep results folder(s), local or URI (s3://...)")
    parser.add_argument("--out", help="report folder (default: <first results folder>/_report)")
    args = parser.parse_args(argv)
    try:
        if args.out is None and "://" in args.results[0]:
            raise ResultsError("The results are remote; pass --out with a local folder for the report.")
        out = Path(args.out) if args.out else Path(args.results[0]) / "_report"
        rows = load_results(args.results)
        path = build_report(rows, out, args.results, sweep_spec(args.results[0]))
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {path} and {len(FIGURES)} figures in {path.parent}{os.sep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
