"""A readable report of one sweep: the protocol's table as papers print it, what the search bought, whether its
objective predicted the final result, how the configuration was chosen, and where the time went.

    python -m dualprompt.report results/<protocol>/<name> [more sweep folders of that protocol] [--out DIR]

Writes `<first folder>/_report/REPORT.md` and its PNG figures. The folder name starts with "_" so that
pandas, pyarrow and `dualprompt.results` keep reading the sweep folder as pure Parquet. Bad input (no
Parquet files, a newer schema, sweeps of different backbones or protocols) is one sentence, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .data.catalogue import REAL_DATASETS
from .errors import DualpromptError
from .protocols import get_protocol
from .results import load_results
from .storage import open_storage, saved_settings
from .tables import (
    AVERAGE,
    TARGET_AVERAGE,
    best_search_trials,
    check_comparable,
    few_shot_summary,
    final_objective,
    per_seed_final,
    search_trials,
    searched_params,
    std_interval,
    summarise,
    transfer_summary,
    variant_label,
    variant_order,
)
from .validity import (
    VALIDITY_TARGET,
    SearchSize,
    cell_study,
    design_reliability,
    held_out_agreement,
    leak_free_ceiling,
    noise_ceiling,
    objective_seed_noise,
    objective_validity,
    one_se_pick,
    reliability,
    search_size,
    seed_noise,
    spearman,
    spearman_brown,
    spearman_interval,
)

# Published 11-dataset base-to-new averages (ViT-B/16, 16 shots, 3 seeds), quoted from the papers and READMEs
# (see the protocol notes). Reference numbers only: nothing here reproduces them.
PUBLISHED = {
    "CLIP": (69.34, 74.22, 71.70, "CoCoOp paper"),
    "CoOp": (82.69, 63.22, 71.66, "CoCoOp paper"),
    "KgCoOp": (80.73, 73.60, 77.00, "KgCoOp README"),
    "PromptSRC": (84.26, 76.10, 79.97, "PromptSRC README"),
}
PHASES = {"ray_startup_s": "Ray start-up", "backbone_load_s": "backbone load", "feature_s": "data and image features",
          "train_s": "training", "eval_s": "evaluation"}
HEADLINE = {"base2new": "Average HM", "cross_dataset": "target average accuracy",
            "domain_generalization": "target average accuracy", "few_shot": "Average accuracy at the most shots"}


def sweep_spec(folder: str) -> dict:
    """The sweep's saved plan (`storage.saved_settings`: search bounds, choices, samples requested) of a local
    results folder, or {}."""
    if "://" in folder:
        return {}
    try:
        found = saved_settings(*open_storage(folder))
    except (OSError, ValueError):
        return {}
    return found[0] if found else {}


def _cell(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def frame_markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def table_markdown(summary: pd.DataFrame, quoted: bool) -> str:
    """Base-to-new: rows datasets and Average; columns variants x Base / New / HM (mean ± std over seeds)."""
    variants = list(dict.fromkeys(summary["variant"]))
    head = "| Dataset | " + " | ".join(f"{variant_label(v)} {x}" for v in variants for x in ("Base", "New", "HM"))
    lines = [head + " |", "|---|" + "---:|" * (3 * len(variants))]
    by = summary.set_index(["dataset", "variant"])
    for dataset in dict.fromkeys(summary["dataset"]):
        cells = []
        for v in variants:
            if (dataset, v) not in by.index:
                cells += ["–"] * 3
                continue
            r = by.loc[(dataset, v)]
            cells += [_cell(r["base"], r["base_std"]), _cell(r["new"], r["new_std"]), _cell(r["hm"], r["hm_std"])]
        lines.append(f"| {'**Average**' if dataset == AVERAGE else dataset} | " + " | ".join(cells) + " |")
    out = "\n".join(lines) + _failed_note(summary)
    if quoted:
        out += ("\n\nReference rows, **quoted, not reproduced** (published 11-dataset averages, ViT-B/16, "
                "16 shots, 3 seeds; comparable to our Average only when all 11 datasets were run):\n\n"
                "| Method (quoted, not reproduced) | Base | New | HM | Source |\n|---|---:|---:|---:|---|\n")
        out += "\n".join(f"| {m} | {b:.2f} | {n:.2f} | {h:.2f} | {src} |" for m, (b, n, h, src) in PUBLISHED.items())
    return out


def wide_markdown(summary: pd.DataFrame, column: str) -> str:
    """Rows variants, columns the values of `column` (datasets, or shots), cells mean ± std."""
    keys = list(dict.fromkeys(summary[column]))
    lines = ["| Method | " + " | ".join(str(k) for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    by = summary.set_index(["variant", column])
    for variant in dict.fromkeys(summary["variant"]):
        cells = [_cell(by.loc[(variant, k), "acc"], by.loc[(variant, k), "acc_std"]) if (variant, k) in by.index
                 else "–" for k in keys]
        lines.append(f"| {variant_label(variant)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + _failed_note(summary)


def _failed_note(summary: pd.DataFrame) -> str:
    failed = summary[summary["n_failed"] > 0]
    if failed.empty:
        return ""
    return "\n\nFailed jobs, left out of the means: " + "; ".join(
        f"{variant_label(r.variant)} on {r.dataset}: {int(r.n_failed)} failed" for r in failed.itertuples()) + "."


def final_section(rows: pd.DataFrame, out: Path) -> list[str]:
    """The protocol's final table(s) and figure, as the papers print them."""
    protocol = rows["protocol"].iloc[0]
    if protocol == "base2new":
        summary = summarise(rows)
        plots.tradeoff(summary, out / "tradeoff.png")
        quoted = bool(set(rows["dataset"]) & set(REAL_DATASETS))
        return ["Base and new are tested as two separate closed-set problems; per dataset, HM is the harmonic "
                "mean of the mean base and mean new accuracy; **Average** is the HM of base and new averaged over "
                "the datasets (the field's convention, not the mean of per-dataset HMs); its ± is the std over "
                "seeds of the per-seed Average.", "", table_markdown(summary, quoted), "",
                "![base vs new](tradeoff.png)"]
    if protocol == "few_shot":
        summary = few_shot_summary(rows)
        plots.accuracy_vs_shots(summary, out / "accuracy_vs_shots.png")
        text = ["Test accuracy on all classes; rows methods, columns shots per class; **Average** is the mean "
                "over datasets (± std over seeds of the per-seed mean).", ""]
        for dataset in dict.fromkeys(summary["dataset"]):
            text += [f"**{'Average' if dataset == AVERAGE else dataset}**", "",
                     wide_markdown(summary[summary["dataset"] == dataset], "shots"), ""]
        return text + ["![accuracy vs shots](accuracy_vs_shots.png)"]
    summary = transfer_summary(rows)
    plots.transfer_bars(summary, out / "transfer.png")
    return [f"The prompt is trained on the source and evaluated untouched on every target (all of its classes, "
            f"test images); **{TARGET_AVERAGE}** is the mean over targets (± std over seeds of the per-seed "
            "mean).", "", wide_markdown(summary, "dataset"), "", "![source and targets](transfer.png)"]


def search_section(rows: pd.DataFrame, out: Path, spec: dict) -> list[str]:
    """How the configuration was chosen, what the search bought, and whether its objective predicted."""
    protocol = get_protocol(rows["protocol"].iloc[0])
    trials, params = search_trials(rows), searched_params(rows)
    if trials.empty:
        return ["No search rows."]
    bounds = spec.get("bounds", {})
    done = trials[trials["complete"].astype(bool)]
    requested = f" (of {spec['num_samples']} requested)" if spec.get("num_samples") else ""
    md = [f"Objective: `{protocol.search.objective}` (leak-free: {_objective_words(protocol)}), averaged over each "
          f"trial's {int(trials['jobs'].median())} jobs. {len(trials)} search trials{requested} ran, {len(done)} with "
          f"every job ok; searched: {', '.join(params) or 'nothing'}. One trial's objective has a binomial standard "
          f"error of {done['objective_se'].median():.2f} points (median over trials; from the validation counts in "
          "each row, with the jobs taken as independent: jobs that evaluate some of the same images, the folds of "
          "a pseudo split or several search seeds drawing from one pool, make it a lower bound).", ""]
    if bounds or spec.get("choices"):
        md += ["Search space: " + "; ".join([f"{k} in [{lo:g}, {hi:g}] ({scale})" for k, (lo, hi, scale) in
                                             bounds.items()] + [f"{k} in {{{', '.join(map(str, v))}}}" for k, v in
                                                                spec.get("choices", {}).items()]) + ".", ""]
    md += _held_out_words(rows, protocol) + _bought(rows) + _validity(rows, out, protocol)
    best = best_search_trials(rows, k=5)
    if len(best):
        md += ["Best complete search trials (highest objective first):", "",
               frame_markdown(best.drop(columns=["finished_at", "complete"])), ""]
    plots.best_so_far(trials, out / "best_so_far.png")
    plots.objective_vs_params(trials, params, out / "objective_vs_params.png", bounds)
    values, how = param_importance(trials, params, bounds)
    plots.importance(values, how, out / "importance.png")
    return md + ["![best so far](best_so_far.png)", "", "![objective vs parameters](objective_vs_params.png)", "",
                 "![importance](importance.png)", "", f"Importance: {how}."]


def _objective_words(protocol) -> str:
    if protocol.search.hm_of:
        return ("HM of the trained half's validation accuracy and the held-out half's accuracy, inside the "
                f"{_pool_words(protocol)} classes")
    return "validation accuracy, images never trained on"


def _held_out_words(rows: pd.DataFrame, protocol) -> list[str]:
    """Whether the search's ranking is about the configurations or about which classes its folds held out."""
    held_out = held_out_agreement(rows)
    if held_out is None or math.isnan(held_out.folds_agree):
        return []
    low, high = spearman_interval(held_out.folds_agree, held_out.trials)  # NaN only at |agreement| = 1
    ranged = not math.isnan(low)
    low_r, high_r = (spearman_brown(r, held_out.folds) for r in (low, high))
    asides = [f"95% interval {low:.2f} to {high:.2f}, Fisher's z"] if ranged else []
    if held_out.seeds > 1:
        asides.append(f"its {held_out.seeds} search seeds, which hold out the same classes, agree at "
                      f"{held_out.seeds_agree:.2f}")
    aside = "; ".join(asides)
    return [f"**Does the ranking carry to other held-out classes?** Each fold of the pseudo split holds out other "
            f"{_pool_words(protocol)} classes (and trains on the rest). Over the {held_out.trials} complete trials, "
            f"the {held_out.folds} folds' objectives rank the trials alike at Spearman **{held_out.folds_agree:.2f}**"
            f"{f' ({aside})' if aside else ''}. Their mean, the objective, then has a reliability of about "
            f"{held_out.reliability:.2f} with respect to which classes are held out (Spearman-Brown"
            f"{f'; {low_r:.2f} to {high_r:.2f} over that interval' if ranged else ''}), and its rank correlation "
            "with the configurations' results on any other classes, the final test on the new ones included, can "
            f"hardly exceed the square root of that: about **{math.sqrt(held_out.reliability):.2f}**"
            f"{f' ({math.sqrt(low_r):.2f} to {math.sqrt(high_r):.2f})' if ranged else ''}.{_cell_words(rows)} "
            "Validation rows only; `python -m dualprompt.world.draws` measures the same on other class draws of the "
            "offline world.", ""]


def _cell_words(rows: pd.DataFrame) -> str:
    """What one cell of the search shares with the others, and how many datasets a reliable objective needs."""
    study = cell_study(rows)
    if study is None or math.isnan(study.reliability):
        return ""
    shares = study.agreements
    if study.datasets_needed is None:
        needed = "no number of datasets at these folds and seeds would reach 0.6"
    else:
        count = study.datasets_needed
        needed = f"0.6 (a bound of 0.77) would take about {count} dataset{'s' * (count != 1)} at these folds and seeds"
    spread = study.datasets * study.seeds  # the same jobs, one seed each
    trade = (f" The same jobs spent on {spread} datasets with one seed each would give "
             f"{design_reliability(shares, spread, study.folds, 1):.2f}." if study.seeds > 1 else "")
    return (f" One cell of the search (a dataset, fold and seed) ranks the trials as itself on another seed at "
            f"{shares['another seed']:.2f}, as its dataset's other folds at {shares['another fold']:.2f} and as "
            f"other datasets' cells at {shares['another dataset']:.2f} (pairs on different seeds): only what "
            "cells of other datasets share carries to other classes. Read as a generalisability study, the objective "
            f"of these {study.datasets} datasets x {study.folds} folds x {study.seeds} seeds has a reliability of "
            f"{study.reliability:.2f} with respect to other datasets' classes; {needed}.{trade}")


def _pool_words(protocol) -> str:
    """The classes a pseudo-split search works inside: the base classes, or all of a source dataset's."""
    return "base" if protocol.search.pool == "base" else "source"


def _bought(rows: pd.DataFrame) -> list[str]:
    """The final headline of the searched configuration next to the dual-view defaults and the baselines."""
    headline = final_objective(rows[rows["stage"] == "final"]) if (rows["stage"] == "final").any() else None
    if headline is None or headline.empty:
        return []
    what = HEADLINE[rows["protocol"].iloc[0]]
    per_seed = per_seed_final(rows)  # [variant, seed]: the seed counts, and every paired difference below
    seeds = per_seed.notna().sum(axis=1).reindex(headline["variant"]).to_numpy()
    intervals = [std_interval(std, n) for std, n in zip(headline["final_std"], seeds, strict=True)]
    shown = [f"{low:.2f} to {high:.2f}" if not math.isnan(low) else "–" for low, high in intervals]
    table = headline.assign(method=headline["variant"].map(variant_label), seeds=seeds, interval=shown)
    table = table[["method", "final", "final_std", "seeds", "interval"]]
    md = [f"**What the search bought** ({what}, mean ± std over seeds; the std's 95% interval assumes normal "
          "seed-to-seed variation, and is wide with few seeds):", "", frame_markdown(
        table.rename(columns={"final": what, "final_std": "std over seeds", "interval": "95% interval of the std"})),
        ""]
    by = headline.set_index("variant")
    if {"best", "defaults"} <= set(by.index):
        diff = by.loc["best", "final"] - by.loc["defaults", "final"]
        md += [f"Searched minus defaults: {diff:+.2f} points{_difference_noise(per_seed, 'best', 'defaults', diff)}.",
               ""]
    return md + _one_se_words(rows, by, per_seed)


def _difference_noise(per_seed: pd.DataFrame, a: str, b: str, diff: float) -> str:
    """How far a difference between two final variants stands from their seed noise. Both ran the same seeds, so
    the noise is the per-seed difference's spread (a seed easier for both moves neither), and the mean over n
    seeds has that spread over sqrt(n) as its standard error."""
    paired = (per_seed.loc[a] - per_seed.loc[b]).dropna()
    if len(paired) < 2:
        return f" ({len(paired)} seed: no seed spread to judge it by)"
    spread = paired.std(ddof=1)
    se = spread / math.sqrt(len(paired))
    verdict = "within two standard errors of zero: no measurable difference" if not abs(diff) > 2 * se else (
        "more than two standard errors from zero")
    return (f"; paired by seed, the per-seed difference spreads by {spread:.2f} over {len(paired)} seeds, a standard "
            f"error of {se:.2f}, so it is {verdict}")


def _one_se_words(rows: pd.DataFrame, by: pd.DataFrame, per_seed: pd.DataFrame) -> list[str]:
    """Which trial the one-SE rule picked, from how many, and its final number against the highest objective's
    and the defaults' (under whichever final variant trained that trial)."""
    pick = one_se_pick(rows)
    if pick is None:
        return []
    final = rows[(rows["stage"] == "final") & (rows["search_trial_id"] == pick.trial_id)]
    if final.empty:
        return []
    variant = min(final["variant"].unique(), key=variant_order)
    words = [f"**One-SE pick**: of the {pick.window} complete trials whose objective lies within one SE "
             f"({pick.se:.2f} points, {pick.se_source}) of the highest, the one with the fewest context vectors"
             f"{'' if math.isnan(pick.size) else f' ({int(pick.size)})'}: {variant_label(variant)}."]
    for other in ("best", "defaults"):
        if other != variant and {other, variant} <= set(by.index):
            diff = by.loc[variant, "final"] - by.loc[other, "final"]
            noise = _difference_noise(per_seed, variant, other, diff)
            words.append(f"Minus {variant_label(other).lower()}: {diff:+.2f} points{noise}.")
    words.append("One sweep is one class split: `python -m dualprompt.world.picks` measures the rule against the "
                 "highest objective on class draws the search never saw.")
    return [" ".join(words), ""]


def _validity(rows: pd.DataFrame, out: Path, protocol) -> list[str]:
    table = objective_validity(rows)
    if table.empty:
        return []
    rho = spearman(table["objective"], table["final"])
    low, high = spearman_interval(rho, table[["objective", "final"]].dropna().shape[0])
    interval = f"; 95% interval {low:.2f} to {high:.2f}, Fisher's z" if not math.isnan(low) else ""
    what = HEADLINE[protocol.name]
    plots.objective_validity(table, out / "objective_validity.png", protocol.search.objective, what)
    shown = table.assign(variant=table["variant"].map(variant_label))
    return [f"**Did the objective predict the final result?** The final stage re-trained {len(table)} searched "
            f"configurations on the final protocol; Spearman rank correlation between their search objective and "
            f"their final {what}: **{rho:.2f}** (n = {len(table)}{interval}).", "",
            *_ceiling_words(table, rows), *_leak_free_words(table, rows),
            frame_markdown(shown.drop(columns=["search_trial_id"])), "",
            "![objective vs final](objective_validity.png)", "",
            f"To re-train more of this search's configurations: `python sweeps/{protocol.name}.py --name "
            f"{rows['sweep'].iloc[0]} --stage final --validate-top K` (or `--validate-spread K`), with the sweep's "
            "other flags; only the variants without rows train.", ""]


def _objective_reliability(table: pd.DataFrame, rows: pd.DataFrame) -> tuple[float, str, str]:
    """The validated configurations' objectives: the share of their spread that is not noise, where that noise
    was measured, and a caveat. Every configuration ran the same seeds, so the noise that can reorder them is
    the configuration x seed interaction (`validity.seed_noise`, paired), measured over search seeds where every
    trial ran two or more, else taken from the binomial SE (a lower bound: it leaves out training noise)."""
    measured, search_seeds = objective_seed_noise(rows, table["search_trial_id"], paired=True)
    if math.isnan(measured):
        noise, source = (table["objective_se"] ** 2).mean(), "the objectives' binomial SE"
        caveat = (" (training noise, not in the binomial SE, would lower it further; a sweep with two or more "
                  "`--search-seeds` measures it)")
    else:
        noise, source, caveat = measured, f"the objectives' spread over their {search_seeds} search seeds", ""
    return reliability(table["objective"], noise), source, caveat


def _ceiling_words(table: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """How high that correlation could be, given the noise of the objective and of the final numbers."""
    rel_objective, source, caveat = _objective_reliability(table, rows)
    final = per_seed_final(rows).reindex(table["variant"])
    rel_final = reliability(table["final"], seed_noise(final, paired=True))
    if math.isnan(rel_objective) or math.isnan(rel_final):
        return []
    return [f"Noise ceiling: {source} leaves {rel_objective:.0%} of their spread over these configurations to "
            f"real differences, the final numbers' seed spread ({final.shape[1]} seeds) leaves {rel_final:.0%} of "
            f"theirs (both counting only what differs between configurations on the same seed), so even a "
            f"perfect predictor would show a correlation of at most about "
            f"**{noise_ceiling(rel_objective, rel_final):.2f}** here{caveat}. Far below it, the objective "
            "ranks differently; near it, more seeds or more distinct configurations are what would show more.", ""]


def _leak_free_words(table: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """How much of the final ranking depends on which classes are new, which no leak-free objective can see."""
    ceiling = leak_free_ceiling(rows, table["variant"])
    if ceiling is None:
        return []
    shares = ceiling.agreements
    rel_objective, _, _ = _objective_reliability(table, rows)
    both = noise_ceiling(rel_objective, ceiling.reliability)
    with_noise = f"; with the objective's own noise above, about **{both:.2f}**" if not math.isnan(both) else ""
    return [f"Which classes are new: the final stage also scores the new classes' test images in two halves "
            f"(the first ceil(n/2) new labels and the rest, classified among all new classes). One seed's "
            f"{HEADLINE['base2new']} on one half ranks these configurations as itself on another seed at "
            f"{shares['another seed']:.2f}, as the other half on the same seed at {shares['another half']:.2f}, and "
            f"as the other half on another seed at {shares['neither']:.2f}. What the halves do not share depends on "
            f"which classes are new, which no leak-free search sees; what they share (the seeds' part counted as "
            f"knowable, since a search may train on the same few-shot seeds) is {ceiling.reliability:.0%} of the "
            f"final numbers' spread over {ceiling.seeds} seeds, so an objective that knew all of it would rank these "
            f"configurations as the final does at about **{ceiling.ceiling:.2f}** at most (95% interval "
            f"{ceiling.interval[0]:.2f} to {ceiling.interval[1]:.2f}, resampling the configurations){with_noise}."
            f"{_search_size_words(search_size(rows, table['variant']))}", ""]


def _search_size_words(size: SearchSize | None) -> str:
    """How large a search of this kind would have to be for its objective to reach VALIDITY_TARGET against
    these final numbers (`validity.search_size`)."""
    if size is None or math.isnan(size.study.reliability):
        return ""
    intro = (f" For a Spearman of {VALIDITY_TARGET} against these final numbers an objective would need a "
             f"reliability of at least {size.needed:.2f} with respect to other classes")
    if size.needed >= 1:
        return f"{intro}: no objective can have it, so none can reach {VALIDITY_TARGET} here."
    study, designs = size.study, []
    for seeds, count in size.datasets.items():
        if count is not None:
            jobs = count * seeds / (study.datasets * study.seeds)
            designs.append(f"{count} dataset{'s' * (count != 1)} at {seeds} seed{'s' * (seeds != 1)} each "
                           f"({jobs:.1f} times its jobs)")
    if not designs:
        return f"{intro}; by the cell study above no number of datasets at the search's folds gives it."
    low, high = (f"{x:.0f}" if math.isfinite(x) else "more than 1,000" for x in size.interval)
    return (f"{intro}, against this search's {study.reliability:.2f}; by the cell study above that takes about "
            f"{' or '.join(designs)} at its {study.folds} folds (at one seed, 95% interval {low} to {high}, "
            "resampling the search's trials and these configurations), and more among configurations that differ "
            "less than the search's trials do.")


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
                dists[p] = FloatDistribution(float(low), float(high), log=plots.is_log(v, bounds))
            else:
                dists[p] = CategoricalDistribution(sorted(v.astype(str).unique()))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize")
        for r in done.itertuples():
            values = {p: (str(getattr(r, p)) if isinstance(dists[p], CategoricalDistribution) else
                          int(getattr(r, p)) if isinstance(dists[p], IntDistribution) else float(getattr(r, p)))
                      for p in params}
            study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(r.objective)))
        return dict(optuna.importance.get_param_importances(study)), "Optuna fANOVA importance"
    except Exception:  # noqa: BLE001 - too few distinct values and similar: fall back to a rank correlation
        out = {}
        for p in params:
            x = done[p].astype(str).rank() if not pd.api.types.is_numeric_dtype(done[p]) else done[p].astype(float)
            rho = spearman(pd.Series(x.to_numpy()), done["objective"])
            out[p] = 0.0 if rho != rho else abs(rho)
        return out, "|Spearman rank correlation| with the objective (fallback: Optuna's importance failed)"


def time_shares(rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """(trial wall seconds summed over trials, seconds per phase incl. 'other')."""
    wall = float(rows.groupby(["stage", "trial_id"])["trial_wall_s"].max().astype("float64").sum())
    phases = {label: float(rows[col].astype("float64").sum()) for col, label in PHASES.items()}
    phases["other (scheduling, writing rows)"] = max(0.0, wall - sum(phases.values()))
    return wall, phases


def time_split_line(rows: pd.DataFrame) -> str:
    """One line: where the summed trial time went (the sweep prints it when it ends)."""
    wall, phases = time_shares(rows)
    if wall <= 0:
        return "No timing was recorded."
    work = sum(phases[p] for p in ("data and image features", "training", "evaluation"))
    parts = ", ".join(f"{name} {100 * seconds / wall:.0f}%" for name, seconds in phases.items())
    return (f"Trial time {wall:.0f} s over {rows.groupby(['stage', 'trial_id']).ngroups} trials: {parts} "
            f"({100 * work / wall:.0f}% doing work: features, training, evaluation).")


def console_table(rows: pd.DataFrame) -> str:
    """The final table in plain text, for the terminal at the end of a sweep."""
    final = rows[rows["stage"] == "final"]
    if final.empty:
        return "(no final rows)"
    protocol = final["protocol"].iloc[0]
    if protocol == "base2new":
        summary = summarise(final)
        lines = ["Final base-to-new table (test accuracy %, mean over seeds; average = HM of mean base and new):",
                 f"{'dataset':<24} {'method':<40} {'base':>6} {'new':>6} {'HM':>6}  seeds"]
        lines += [f"{r.dataset:<24} {variant_label(r.variant):<40} {r.base:6.1f} {r.new:6.1f} {r.hm:6.1f}  "
                  f"{r.n_seeds}{f'  ({r.n_failed} failed)' if r.n_failed else ''}" for r in summary.itertuples()]
        return "\n".join(lines)
    summary = few_shot_summary(final) if protocol == "few_shot" else transfer_summary(final)
    key = "shots" if protocol == "few_shot" else "dataset"
    lines = [f"Final {get_protocol(protocol).title.lower()} table (test accuracy %, mean over seeds):"]
    for dataset, group in summary.groupby("dataset", sort=False) if protocol == "few_shot" else [(None, summary)]:
        if dataset is not None:
            lines.append(f"-- {dataset}")
        wide = group.pivot(index="variant", columns=key, values="acc").reindex(dict.fromkeys(group["variant"]))
        lines.append(wide.rename(index=variant_label).round(1).to_string())
    return "\n".join(lines)


def build_report(rows: pd.DataFrame, out: Path, sources: list[str], spec: dict | None = None) -> Path:
    """Write REPORT.md and its figures into `out`; return the markdown's path."""
    check_comparable(rows)
    protocol = get_protocol(rows["protocol"].iloc[0])
    spec = spec or {}
    out.mkdir(parents=True, exist_ok=True)
    backbone = f"{rows['backbone'].iloc[0]} / {rows['pretrained'].iloc[0]}"
    final = rows[rows["stage"] == "final"]
    md = [f"# {protocol.title} report: {', '.join(sorted(set(rows['sweep'])))}", "",
          f"Backbone {backbone}; {len(rows)} result rows read from {', '.join(sources)}; datasets: "
          f"{', '.join(sorted(set(rows['dataset'])))}.", "", "## Final table (test accuracy, %, mean ± std over seeds)",
          ""]
    md += final_section(final, out) if len(final) else ["(no final-stage rows)"]
    md += ["", "## How the configuration was chosen", ""] + search_section(rows, out, spec)
    md += ["", "## Where the wall time went", ""]
    wall, phases = time_shares(rows)
    if wall > 0:
        md += [time_split_line(rows), "", "| Phase | Seconds | Share |", "|---|---:|---:|"]
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
            raise DualpromptError("The results are remote; pass --out with a local folder for the report.")
        out = Path(args.out) if args.out else Path(args.results[0]) / "_report"
        path = build_report(load_results(args.results), out, args.results, sweep_spec(args.results[0]))
    except DualpromptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    figures = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"Wrote {path} and {len(figures)} figures in {path.parent}{os.sep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
