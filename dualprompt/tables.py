"""Result rows -> the tables papers print, per protocol (how well a search's objective predicted them:
`dualprompt.validity`).

Conventions (the field's): accuracies in percent, mean over seeds with the sample std (ddof=1: one seed has
no spread, which is not zero spread); failed jobs are left out of every mean and counted. Base-to-new: per
dataset HM of the seed-mean base and new; the Average row is the HM of the dataset-averaged base and new.
Cross-dataset and domain generalisation: source and target accuracies and the targets' mean. Few-shot:
accuracy per dataset and shots, and the mean over datasets. Final rows are grouped by `variant` (the best
searched configuration, the dual-view defaults, the next searched ones, baselines, ablations).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .errors import DualpromptError
from .evaluate import harmonic_mean, mean_se
from .protocols import get_protocol

AVERAGE = "average"  # the dataset name of the benchmark's average row
TARGET_AVERAGE = "target average"
VARIANT_LABEL = {"zeroshot": "CLIP", "coop": "CoOp", "kgcoop": "KgCoOp", "best": "Dual-view, searched",
                 "one_se": "Dual-view, one-SE pick", "defaults": "Dual-view, defaults",
                 "mi_only": "Dual-view, searched, MI only", "aug_only": "Dual-view, searched, augmentation only"}
BASELINE_VARIANTS = ("zeroshot", "coop", "kgcoop")
SUMMARY_COLUMNS = ["variant", "dataset", "base", "base_std", "new", "new_std", "hm", "hm_std", "n_seeds",
                   "n_failed"]


class TablesError(DualpromptError):
    """Rows that cannot be summarised together (e.g. different backbones)."""


def variant_label(variant: str) -> str:
    if variant.startswith("top"):
        return f"Dual-view, search rank {variant[3:]}"
    return VARIANT_LABEL.get(variant, variant)


def variant_order(variant: str) -> tuple[int, int, str]:
    """Baselines first (as the papers), then the dual-view defaults, best, the one-SE pick, ablations, the next
    ranks."""
    fixed = (*BASELINE_VARIANTS, "defaults", "best", "one_se", "mi_only", "aug_only")
    if variant in fixed:
        return (fixed.index(variant), 0, variant)
    rank = int(variant[3:]) if variant.startswith("top") and variant[3:].isdigit() else 999
    return (len(fixed), rank, variant)


def check_comparable(rows: pd.DataFrame) -> None:
    """Raise TablesError when rows come from more than one (backbone, pretrained) pair or protocol."""
    pairs = sorted({f"{b}/{p}" for b, p in zip(rows["backbone"], rows["pretrained"], strict=True)})
    if len(pairs) > 1:
        raise TablesError(f"These results mix backbones ({', '.join(pairs)}), and accuracies of different "
                          "backbones are not comparable, so they are not averaged; report each backbone's "
                          "sweeps separately.")
    protocols = sorted(set(rows["protocol"]))
    if len(protocols) > 1:
        raise TablesError(f"These results mix protocols ({', '.join(protocols)}); report each protocol's sweeps "
                          "separately.")


def _final_ok(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    final = rows[rows["stage"] == "final"]
    if not final.empty:
        check_comparable(final)
    return final[final["status"] == "ok"], final[final["status"] != "ok"]


def _ordered(table: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    table = table.assign(_d=table["dataset"].map({d: i for i, d in enumerate(datasets)}),
                         _v=table["variant"].map(variant_order))
    return table.sort_values(["_d", "_v"]).drop(columns=["_d", "_v"]).reset_index(drop=True)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Base-to-new: per (variant, dataset) base, new, hm with stds over seeds, plus each variant's Average row.

    Per dataset, hm is the HM of the mean base and mean new and hm_std the std of the per-seed hm_test. The
    Average row averages base and new over datasets and takes the HM of those (not the mean of HMs); its
    stds are the std over seeds of the per-seed Average (base, new and their HM), when every dataset has
    the same seeds.
    """
    ok, failed_rows = _final_ok(rows)
    if ok.empty and failed_rows.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    ok = ok.astype({m: "float64" for m in ("acc_test_base", "acc_test_new", "hm_test")})
    failed = failed_rows.groupby(["variant", "dataset"]).size()
    per = ok.groupby(["variant", "dataset"]).agg(
        base=("acc_test_base", "mean"), base_std=("acc_test_base", "std"), new=("acc_test_new", "mean"),
        new_std=("acc_test_new", "std"), hm_std=("hm_test", "std"), n_seeds=("seed", "nunique"))
    per = per.reindex(failed.index.union(per.index)).reset_index()  # an all-failed pair still gets a row
    per["n_seeds"] = per["n_seeds"].fillna(0).astype(int)
    per["hm"] = [harmonic_mean(b, n) if b == b and n == n else math.nan for b, n in zip(per["base"], per["new"],
                                                                                         strict=True)]
    per["n_failed"] = [int(failed.get((v, d), 0)) for v, d in zip(per["variant"], per["dataset"], strict=True)]
    average = per.groupby("variant").agg(base=("base", "mean"), new=("new", "mean"), n_seeds=("n_seeds", "min"),
                                         n_failed=("n_failed", "sum")).reset_index()
    average["hm"] = [harmonic_mean(b, n) if b == b and n == n else math.nan
                     for b, n in zip(average["base"], average["new"], strict=True)]
    spreads = per_seed_average(ok).groupby("variant")[["base", "new", "hm"]].std()
    for column in ("base", "new", "hm"):
        average[f"{column}_std"] = average["variant"].map(spreads[column]) if len(spreads) else math.nan
    average["dataset"] = AVERAGE
    datasets = list(dict.fromkeys(ok["dataset"].tolist() + failed_rows["dataset"].tolist())) + [AVERAGE]
    table = pd.concat([per, average], ignore_index=True).reindex(columns=SUMMARY_COLUMNS)
    numbers = ["base", "base_std", "new", "new_std", "hm", "hm_std"]
    return _ordered(table.astype({c: "float64" for c in numbers}), datasets)


def per_seed_average(ok: pd.DataFrame, new: str = "acc_test_new") -> pd.DataFrame:
    """Base-to-new per (variant, seed): base and new averaged over datasets and their HM. Only seeds that
    every dataset of the variant has are kept, so each seed's Average covers the same datasets. `new`: the
    column read as the new accuracy (a half of the new classes: `validity.final_half_cells`)."""
    out = []
    for variant, group in ok.groupby("variant"):
        datasets = set(group["dataset"])
        for seed, rows in group.groupby("seed"):
            if set(rows["dataset"]) != datasets:
                continue
            base, new_acc = rows.groupby("dataset")[["acc_test_base", new]].mean().mean()
            out.append({"variant": variant, "seed": seed, "base": base, "new": new_acc,
                        "hm": harmonic_mean(base, new_acc)})
    return pd.DataFrame(out, columns=["variant", "seed", "base", "new", "hm"])


def transfer_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Cross-dataset / domain generalisation: per (variant, dataset) acc_test mean and std over seeds (source
    first, then targets), plus each variant's mean over targets (std over seeds of the per-seed mean)."""
    ok, failed_rows = _final_ok(rows)
    columns = ["variant", "dataset", "role", "acc", "acc_std", "n_seeds", "n_failed"]
    if ok.empty and failed_rows.empty:
        return pd.DataFrame(columns=columns)
    ok = ok.astype({"acc_test": "float64"}).assign(role=lambda f: np.where(f["dataset"] == f["source_dataset"],
                                                                           "source", "target"))
    per = ok.groupby(["variant", "dataset", "role"]).agg(acc=("acc_test", "mean"), acc_std=("acc_test", "std"),
                                                         n_seeds=("seed", "nunique")).reset_index()
    failed = failed_rows.groupby(["variant", "dataset"]).size()
    per["n_failed"] = [int(failed.get((v, d), 0)) for v, d in zip(per["variant"], per["dataset"], strict=True)]
    targets = ok[ok["role"] == "target"]
    by_seed = targets.groupby(["variant", "seed"])["acc_test"].mean().groupby("variant")
    mean = pd.DataFrame({"acc": targets.groupby(["variant", "dataset"])["acc_test"].mean().groupby("variant").mean(),
                         "acc_std": by_seed.std(), "n_seeds": by_seed.size()}).reset_index()
    mean["dataset"], mean["role"], mean["n_failed"] = TARGET_AVERAGE, "average", 0
    sources = sorted(set(ok.loc[ok["role"] == "source", "dataset"]))
    order = sources + list(dict.fromkeys(targets["dataset"])) + [TARGET_AVERAGE]
    return _ordered(pd.concat([per, mean], ignore_index=True)[columns], order)


def few_shot_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Few-shot: per (variant, dataset, shots) acc_test mean and std over seeds, plus the mean over datasets
    per (variant, shots) with the std over seeds of the per-seed mean."""
    ok, failed_rows = _final_ok(rows)
    columns = ["variant", "dataset", "shots", "acc", "acc_std", "n_seeds", "n_failed"]
    if ok.empty and failed_rows.empty:
        return pd.DataFrame(columns=columns)
    ok = ok.astype({"acc_test": "float64", "shots": "int64"})
    per = ok.groupby(["variant", "dataset", "shots"]).agg(acc=("acc_test", "mean"), acc_std=("acc_test", "std"),
                                                          n_seeds=("seed", "nunique")).reset_index()
    failed = failed_rows.groupby(["variant", "dataset", "shots"]).size()
    per["n_failed"] = [int(failed.get(key, 0)) for key in zip(per["variant"], per["dataset"], per["shots"],
                                                               strict=True)]
    by_seed = ok.groupby(["variant", "shots", "seed"])["acc_test"].mean().groupby(["variant", "shots"])
    mean = pd.DataFrame({"acc": per.groupby(["variant", "shots"])["acc"].mean(), "acc_std": by_seed.std(),
                         "n_seeds": by_seed.size()}).reset_index()
    mean["dataset"], mean["n_failed"] = AVERAGE, 0
    table = pd.concat([per, mean], ignore_index=True)[columns]
    datasets = list(dict.fromkeys(ok["dataset"])) + [AVERAGE]
    return _ordered(table.sort_values("shots", kind="stable"), datasets)


def final_objective(rows: pd.DataFrame) -> pd.DataFrame:
    """Each final variant's headline number (what a search should predict) and its std over seeds:
    base-to-new Average HM, the target average (cross-dataset, domain generalisation) or the few-shot
    Average at the largest shot count. Columns: variant, final, final_std."""
    protocol = rows["protocol"].iloc[0]
    if protocol == "base2new":
        table = summarise(rows)
        table = table[table["dataset"] == AVERAGE].rename(columns={"hm": "final", "hm_std": "final_std"})
    elif protocol == "few_shot":
        table = few_shot_summary(rows)
        table = table[(table["dataset"] == AVERAGE) & (table["shots"] == table["shots"].max())]
        table = table.rename(columns={"acc": "final", "acc_std": "final_std"})
    else:
        table = transfer_summary(rows)
        table = table[table["dataset"] == TARGET_AVERAGE].rename(columns={"acc": "final", "acc_std": "final_std"})
    return table[["variant", "final", "final_std"]].reset_index(drop=True)


def searched_params(rows: pd.DataFrame) -> list[str]:
    """The Config fields that vary between search trials (what the search tuned)."""
    from .config import FIELD_TYPE, MACHINE_LOCAL_FIELDS

    search = rows[rows["stage"] == "search"]
    fixed = {"method", "dataset", "seed", *MACHINE_LOCAL_FIELDS}  # rows of older versions recorded the paths
    return [n for n in FIELD_TYPE if n in search and n not in fixed and search[n].nunique(dropna=True) > 1]


def search_trials(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per search trial in finishing order: `objective` (the mean of its jobs' stage objective, a
    failed job counting 0, as the sweep scores it), `objective_se` (binomial SE of that mean), its parts,
    jobs, failed jobs, images behind the objective, `complete` (all jobs ok) and the searched parameters."""
    search = rows[rows["stage"] == "search"]
    params = searched_params(rows)
    columns = ["trial_id", "objective", "objective_se", "jobs", "failed", "complete", "finished_at", *params]
    if search.empty:
        return pd.DataFrame(columns=columns)
    stage = get_protocol(search["protocol"].iloc[0]).search
    parts = [e.metric for e in stage.evaluations if e.metric != stage.objective]
    search = search.astype({m: "float64" for m in (stage.objective, f"{stage.objective}_se", *parts)})
    out = []
    for trial_id, group in search.groupby("trial_id", sort=False):
        ok = group["status"] == "ok"
        scores = group[stage.objective].where(ok, 0.0)
        record = {"trial_id": trial_id, "objective": scores.mean(),
                  "objective_se": mean_se(group.loc[ok, f"{stage.objective}_se"].tolist()) if ok.all() else math.nan,
                  "jobs": len(group), "failed": int((~ok).sum()), "complete": bool(ok.all()),
                  "finished_at": group["finished_at"].max()}
        record.update({p: group.loc[ok, p].mean() for p in parts})
        record.update({e.count_column: group[e.count_column].astype("float64").sum() for e in stage.evaluations})
        record.update({p: group[p].iloc[0] for p in params})
        out.append(record)
    trials = pd.DataFrame(out).sort_values("finished_at").reset_index(drop=True)
    return trials[columns[:6] + parts + [e.count_column for e in stage.evaluations] + columns[6:]]


def per_seed_final(rows: pd.DataFrame) -> pd.DataFrame:
    """Each final variant's headline number (`final_objective`) on each seed alone: [variant, seed]."""
    final = rows[rows["stage"] == "final"]
    columns = {seed: final_objective(group).set_index("variant")["final"] for seed, group in final.groupby("seed")}
    return pd.DataFrame(columns)


def best_search_trials(rows: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The k complete search trials with the highest objective, with their configurations (ties: earlier)."""
    trials = search_trials(rows)
    trials = trials[trials["complete"].astype(bool)]
    return trials.sort_values(["objective", "finished_at"], ascending=[False, True]).head(k).reset_index(drop=True)


def evenly_spaced_ranks(n_trials: int, k: int) -> list[int]:
    """k positions (0-based, the best first) evenly spaced over n_trials ranked trials, from the best to the
    worst inclusive; fewer when n_trials < k. A validity measurement over them spans the objective's range,
    where one over the top ranks alone sees configurations within their noise."""
    points = min(k, n_trials)
    return sorted({round(i * (n_trials - 1) / max(points - 1, 1)) for i in range(points)}) if points > 0 else []


def std_interval(std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of a standard deviation over `n` normal draws: s * sqrt((n - 1) / chi2 quantiles). Few seeds
    make it wide (n = 3: 0.52 s to 6.3 s), which is what a reader of a three-seed std needs to know. NaN below
    2 draws."""
    if n < 2 or math.isnan(std):
        return math.nan, math.nan
    tail = (1 - level) / 2
    df = n - 1
    return (std * math.sqrt(df / chi2_quantile(1 - tail, df)), std * math.sqrt(df / chi2_quantile(tail, df)))


def chi2_quantile(p: float, df: int) -> float:
    """The chi-square distribution's p-quantile (df degrees of freedom), by bisection on its CDF."""
    low, high = 0.0, df + 20.0 * math.sqrt(2.0 * df) + 20.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if _chi2_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def _chi2_cdf(x: float, df: int) -> float:
    """P(df/2, x/2), the regularised lower incomplete gamma function, by its power series (exact to float
    round-off for the degrees of freedom a seed count gives)."""
    a, half = df / 2.0, x / 2.0
    if half <= 0:
        return 0.0
    term = total = 1.0 / a
    for n in range(1, 2000):
        term *= half / (a + n)
        total += term
        if term < total * 1e-15:
            break
    return min(1.0, math.exp(a * math.log(half) - half - math.lgamma(a)) * total)
