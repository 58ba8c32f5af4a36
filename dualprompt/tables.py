"""Result rows -> the tables papers print, per protocol, and what a search's objective predicted.

Conventions (the field's): accuracies in percent, mean over seeds with the sample std (ddof=1: one seed has
no spread, which is not zero spread); failed jobs are left out of every mean and counted. Base-to-new: per
dataset HM of the seed-mean base and new; the Average row is the HM of the dataset-averaged base and new.
Cross-dataset and domain generalisation: source and target accuracies and the targets' mean. Few-shot:
accuracy per dataset and shots, and the mean over datasets. Final rows are grouped by `variant` (the best
searched configuration, the dual-view defaults, the next searched ones, baselines, ablations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def per_seed_average(ok: pd.DataFrame) -> pd.DataFrame:
    """Base-to-new per (variant, seed): base and new averaged over datasets and their HM. Only seeds that
    every dataset of the variant has are kept, so each seed's Average covers the same datasets."""
    out = []
    for variant, group in ok.groupby("variant"):
        datasets = set(group["dataset"])
        for seed, rows in group.groupby("seed"):
            if set(rows["dataset"]) != datasets:
                continue
            base, new = rows.groupby("dataset")[["acc_test_base", "acc_test_new"]].mean().mean()
            out.append({"variant": variant, "seed": seed, "base": base, "new": new, "hm": harmonic_mean(base, new)})
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


def objective_seed_noise(rows: pd.DataFrame, trial_ids, paired: bool = False) -> tuple[float, int]:
    """The variance a search trial's objective has from its few-shot seeds (`seed_noise` of the per-seed
    objectives of `trial_ids`, `paired` as there) and the fewest seeds one of them ran. Unlike the binomial
    SE, which counts only which validation images were drawn, this includes training noise. NaN with fewer
    than two search seeds per trial."""
    per_seed = objectives_by(rows, trial_ids, "seed")
    if per_seed.empty:
        return math.nan, 0
    return seed_noise(per_seed, paired), int(per_seed.notna().sum(axis=1).min())


def objectives_by(rows: pd.DataFrame, trial_ids, part: str | list[str]) -> pd.DataFrame:
    """Each search trial's objective on each value of `part` ("seed", "fold", or a list of columns such as
    CELL) alone: [trial, part] (empty without search rows)."""
    search = rows[(rows["stage"] == "search") & rows["trial_id"].isin(list(trial_ids))]
    if search.empty:
        return pd.DataFrame()
    objective = get_protocol(search["protocol"].iloc[0]).search.objective
    scores = search[objective].astype("float64").where(search["status"] == "ok", 0.0)  # as search_trials scores
    parts = [part] if isinstance(part, str) else part
    return scores.groupby([search["trial_id"], *(search[p] for p in parts)]).mean().unstack(parts)


@dataclass(frozen=True)
class HeldOutAgreement:
    """How alike a search's folds (each holding out other classes) and its seeds rank the complete trials."""

    trials: int
    folds: int
    seeds: int
    folds_agree: float  # mean Spearman over pairs of folds
    seeds_agree: float  # mean Spearman over pairs of seeds (NaN with one seed)
    reliability: float  # the fold mean's reliability with respect to the held-out classes (Spearman-Brown)


def held_out_agreement(rows: pd.DataFrame) -> HeldOutAgreement | None:
    """Whether a search's ranking is about the configurations or about which classes each fold held out.

    Validation rows only. Each fold of a pseudo split holds out other classes; if the folds rank the trials
    alike, the objective measures something about the configurations that carries from one set of held-out
    classes to another. Its reliability with respect to the held-out classes is the Spearman-Brown value of
    the folds' agreement, and no measure of the configurations on yet other classes (the final test on the
    true new classes included) can correlate with it beyond about the square root of that. None without two
    folds or with fewer than four complete trials."""
    trials = search_trials(rows)
    complete = trials.loc[trials["complete"].astype(bool), "trial_id"]
    if len(complete) < 4 or "fold" not in rows or rows.loc[rows["stage"] == "search", "fold"].nunique() < 2:
        return None
    per_fold, per_seed = objectives_by(rows, complete, "fold"), objectives_by(rows, complete, "seed")
    folds_agree = agreement(per_fold)
    return HeldOutAgreement(len(complete), per_fold.shape[1], per_seed.shape[1], folds_agree, agreement(per_seed),
                            spearman_brown(folds_agree, per_fold.shape[1]))


CELL = ["dataset", "fold", "seed"]  # one search job's coordinates inside a trial, as a search row names them


@dataclass(frozen=True)
class CellStudy:
    """What one cell of a search (a dataset, fold and seed) shares with others when ranking the trials, and the
    reliability it implies (a generalisability study: `cell_agreements`, `design_reliability`)."""

    agreements: dict[str, float]
    datasets: int
    folds: int
    seeds: int
    reliability: float  # of this search's objective, with respect to other datasets' classes
    datasets_needed: int | None  # for a reliability of 0.6 at the same folds and seeds; None: more than 1,000


def cell_study(rows: pd.DataFrame) -> CellStudy | None:
    """The cell study of a search's complete trials; None without two datasets, folds and seeds or four trials."""
    trials = search_trials(rows)
    complete = trials.loc[trials["complete"].astype(bool), "trial_id"]
    search = rows[rows["stage"] == "search"]
    if len(complete) < 4 or not set(CELL) <= set(search) or any(search[c].nunique() < 2 for c in CELL):
        return None
    agreements = cell_agreements(objectives_by(rows, complete, CELL))
    datasets, folds, seeds = (int(search[c].nunique()) for c in CELL)
    return CellStudy(agreements, datasets, folds, seeds, design_reliability(agreements, datasets, folds, seeds),
                     datasets_needed(agreements, folds, seeds))


def cell_agreements(cells: pd.DataFrame) -> dict[str, float]:
    """How alike single cells rank the configurations, by what two cells share. `cells` is [configuration,
    (dataset, fold, seed)]: mean Spearman over pairs of cells on different seeds that share the dataset and
    fold ("another seed"), only the dataset ("another fold"), or nothing ("another dataset"); pairs on one
    seed share its random stream, which is no property of a configuration. What cells of other datasets share
    is a configuration effect that carries to other classes; the rest of what a cell shares with itself on
    another seed is about its own classes and images."""
    pairs: dict[str, list[float]] = {"another seed": [], "another fold": [], "another dataset": []}
    for i, a in enumerate(cells.columns):
        for b in cells.columns[i + 1 :]:
            if a[2] != b[2]:
                relation = "another dataset" if a[0] != b[0] else "another fold" if a[1] != b[1] else "another seed"
                pairs[relation].append(spearman(cells[a], cells[b]))
    return {relation: float(np.mean(values)) if values else math.nan for relation, values in pairs.items()}


def design_reliability(agreements: dict[str, float], datasets: int, folds: int, seeds: int) -> float:
    """Reliability, with respect to other datasets' classes, of an objective averaging `datasets` x `folds`
    (disjoint held-out classes) x `seeds` cells, from `cell_agreements`.

    Of one cell's variance, what every cell shares is the configuration's own effect (g, what cells of other
    datasets share), what only cells of one dataset share is that dataset's (d = another fold - g), what only
    one cell's seeds share is its held-out classes' (c = another seed - another fold), and the rest the
    seed's (n = 1 - another seed). The mean keeps g whole and divides the others by the cells that average
    them: g / (g + d / D + c / (D F) + n / (D F S)); 0 where g <= 0, NaN where a share is."""
    g, d, c, n = variance_shares(agreements)
    if any(math.isnan(x) for x in (g, d, c)):
        return math.nan
    if g <= 0:
        return 0.0
    return g / (g + d / datasets + c / (datasets * folds) + n / (datasets * folds * seeds))


def variance_shares(agreements: dict[str, float]) -> tuple[float, float, float, float]:
    """(g, d, c, n) of `design_reliability`: the configuration's, its dataset's, its held-out classes' and the
    seed's shares of one cell's variance. A share estimated below zero (cells of one dataset agreeing less than
    cells of others, by chance) is set to zero, as a generalisability study does."""
    g = agreements["another dataset"]
    with_dataset = max(agreements["another fold"], g)
    with_classes = max(agreements["another seed"], with_dataset)
    return g, with_dataset - g, with_classes - with_dataset, 1 - with_classes


def datasets_needed(agreements: dict[str, float], folds: int, seeds: int, target: float = 0.6) -> int | None:
    """The fewest datasets (up to 1,000) whose cells at `folds` x `seeds` reach `target` reliability; None if
    none do (or the agreements cannot tell)."""
    return next((d for d in range(1, 1001) if design_reliability(agreements, d, folds, seeds) >= target), None)


NEW_HALVES = ("acc_test_new_first_half", "acc_test_new_second_half")  # base-to-new's final stage measures both


@dataclass(frozen=True)
class LeakFreeCeiling:
    """How much of a final ranking an objective that never sees the new classes could predict: `reliability` of
    the final numbers with respect to what does not depend on which classes are new, and its square root, the
    `ceiling` of such an objective's correlation with them, with a bootstrap 95% `interval` over the
    configurations."""

    agreements: dict[str, float]
    seeds: int
    reliability: float
    ceiling: float
    interval: tuple[float, float]


def final_half_cells(rows: pd.DataFrame, variants) -> pd.DataFrame:
    """Base-to-new, [variant, (seed, half)]: each seed's Average HM with the new accuracy of one half of the new
    classes only (datasets averaged first, as `per_seed_average` does; seeds every dataset has). Empty where
    the rows do not measure the halves (written before they were, or another protocol)."""
    ok, _ = _final_ok(rows)
    ok = ok[ok["variant"].isin(list(variants))]
    if ok.empty or any(c not in ok or ok[c].isna().all() for c in NEW_HALVES):
        return pd.DataFrame()
    cells = {}
    for (variant, seed), group in ok.groupby(["variant", "seed"]):
        if set(group["dataset"]) != set(ok.loc[ok["variant"] == variant, "dataset"]):
            continue
        means = group.astype({c: "float64" for c in ("acc_test_base", *NEW_HALVES)}).groupby("dataset")[
            ["acc_test_base", *NEW_HALVES]].mean().mean()
        for half, column in enumerate(NEW_HALVES, start=1):
            cells[(variant, seed, half)] = harmonic_mean(means["acc_test_base"], means[column])
    return pd.Series(cells).unstack([1, 2]) if cells else pd.DataFrame()


def leak_free_ceiling(rows: pd.DataFrame, variants, resamples: int = 1000) -> LeakFreeCeiling | None:
    """The ceiling of any leak-free objective's correlation with the final numbers of `variants`.

    A cell is one seed's number on one half of the new classes (`final_half_cells`). Cells on other seeds and
    halves share what the configuration does everywhere (g); cells on one seed also share that seed's training
    (s = another half - g), which a search may know too (it can train on the same few-shot seeds); cells on one
    half share what its classes do with the configuration (e = another seed - g), which no leak-free search
    sees, nor the rest (n, that seed's effect on those classes and test noise). The final numbers average S
    seeds and both halves, so the part a search could know is (g + s / S) / (g + s / S + e / 2 + n / (2 S)) of
    their spread; shares estimated below zero are set to zero. The interval resamples the configurations
    (`resamples` times, a fixed seed). None with fewer than four configurations or two seeds measured on both
    halves."""
    cells = final_half_cells(rows, variants)
    if cells.empty:
        return None
    cells = cells.dropna()
    seeds = len({seed for seed, _ in cells.columns})
    if len(cells) < 4 or seeds < 2:
        return None
    agreements, rel = _leak_free_reliability(cells)
    rng = np.random.default_rng(0)
    draws = [math.sqrt(_leak_free_reliability(cells.iloc[rng.integers(0, len(cells), len(cells))])[1])
             for _ in range(resamples)]
    low, high = np.nanpercentile(draws, [2.5, 97.5]) if resamples else (math.nan, math.nan)
    return LeakFreeCeiling(agreements, seeds, rel, math.sqrt(rel), (float(low), float(high)))


def _leak_free_reliability(cells: pd.DataFrame) -> tuple[dict[str, float], float]:
    """`leak_free_ceiling`'s agreements (mean Spearman over the pairs of cells of each relation) and reliability
    for a [configuration, (seed, half)] table."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample can repeat one configuration: no ranks
        corr = np.corrcoef(cells.rank().to_numpy(), rowvar=False)  # Spearman of every pair of cells
    pairs: dict[str, list[float]] = {"another seed": [], "another half": [], "neither": []}
    columns = list(cells.columns)
    for i, a in enumerate(columns):
        for j in range(i + 1, len(columns)):
            b = columns[j]
            relation = "another seed" if a[1] == b[1] else "another half" if a[0] == b[0] else "neither"
            pairs[relation].append(corr[i, j])
    agreements = {relation: float(np.nanmean(values)) if not np.isnan(values).all() else math.nan
                  for relation, values in pairs.items()}
    if any(math.isnan(v) for v in agreements.values()):
        return agreements, math.nan
    g = max(agreements["neither"], 0.0)
    s = max(agreements["another half"] - g, 0.0)
    e = max(agreements["another seed"] - g, 0.0)
    n = max(1.0 - g - s - e, 0.0)
    k = len({seed for seed, _ in columns})
    known = g + s / k
    return agreements, known / (known + e / 2 + n / (2 * k)) if known > 0 else 0.0


def agreement(per_part: pd.DataFrame) -> float:
    """Mean Spearman over every pair of columns of a [configuration, part] table (rows with both values): how
    alike two parts of one measure rank the configurations. NaN with fewer than two columns."""
    pairs = [spearman(per_part[a], per_part[b]) for i, a in enumerate(per_part.columns)
             for b in per_part.columns[i + 1 :]]
    return float(np.mean(pairs)) if pairs else math.nan


def spearman_brown(agree: float, parts: int) -> float:
    """Reliability of the mean of `parts` parallel measures that correlate at `agree` with each other:
    k r / (1 + (k - 1) r), 0 where they do not agree at all (r <= 0), NaN where r is."""
    if math.isnan(agree):
        return math.nan
    return parts * agree / (1 + (parts - 1) * agree) if agree > 0 else 0.0


def seed_noise(per_seed: pd.DataFrame, paired: bool = False) -> float:
    """The variance one configuration's mean over seeds (a row's mean over its columns) has from seed noise.

    Unpaired: each row's variance over its seeds divided by how many it has, averaged over rows: how far one
    configuration's number would move on other seeds. Paired: only the configuration x seed interaction.
    When every configuration ran the same seeds, a seed that is easier for all of them (a few-shot sample,
    a validation draw) raises all alike and reorders none, so it is no noise for a comparison or a rank
    correlation between them: the residual mean square of the two-way table (rows with every seed), over
    (rows - 1) x (seeds - 1) degrees of freedom, divided by the seeds. NaN when a row has fewer than two
    seeds (paired: fewer than two complete rows)."""
    seeds = per_seed.notna().sum(axis=1)
    if per_seed.empty or seeds.min() < 2:
        return math.nan
    if not paired:
        return float((per_seed.var(axis=1, ddof=1) / seeds).mean())
    table = per_seed.dropna()
    n_rows, n_seeds = table.shape
    if n_rows < 2:
        return math.nan
    residual = table.sub(table.mean(axis=1), axis=0).sub(table.mean(axis=0), axis=1) + table.to_numpy().mean()
    return float((residual**2).to_numpy().sum() / ((n_rows - 1) * (n_seeds - 1)) / n_seeds)


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


PARSIMONY = "n_ctx"  # the one-SE rule's measure of a configuration's size: learned context vectors


@dataclass(frozen=True)
class OneSePick:
    """What the one-standard-error rule chose: the trial (or configuration) and its size (NaN when the size
    was not searched), the SE it used and where that SE came from, and how many lay within one SE of the
    best (the window it chose from)."""

    trial_id: str
    size: float
    se: float
    se_source: str
    window: int


def one_se_pick(rows: pd.DataFrame) -> OneSePick | None:
    """The one-standard-error rule of model selection (Breiman et al. 1984; Hastie, Tibshirani and Friedman,
    The Elements of Statistical Learning, 7.10) over a sweep's complete search trials (`one_se_choice`). The SE
    is one trial's objective's spread over its search seeds (pooled over the complete trials) where every
    trial ran two or more, else the best trial's binomial SE (a lower bound). None when no trial completed."""
    ranked = best_search_trials(rows, k=len(rows)).set_index("trial_id")
    if ranked.empty:
        return None
    sizes = ranked[PARSIMONY] if PARSIMONY in searched_params(rows) else None
    return one_se_choice(ranked["objective"], objectives_by(rows, ranked.index, "seed"), sizes,
                         float(ranked["objective_se"].iloc[0]))


def one_se_choice(objective: pd.Series, per_seed: pd.DataFrame, sizes: pd.Series | None,
                  best_binomial_se: float) -> OneSePick:
    """The rule on configurations ranked best first (`objective`, indexed by name, ties already broken), with
    their per-seed objectives [name, seed] and sizes (None: not searched). The SE is one configuration's
    spread over its seeds (`seed_noise`, unpaired, as the rule is stated) where each ran two or more, else
    the best's binomial SE. Those within one SE of the first are not told apart by the objective; of them,
    the smallest (ties: the higher rank), since a smaller prompt has less to overfit; without sizes or with
    a NaN SE, the first."""
    variance = seed_noise(per_seed.reindex(objective.index))
    if math.isnan(variance):
        se, source = best_binomial_se, "the best trial's binomial SE"
    else:
        se, source = math.sqrt(variance), "one trial's spread over its search seeds"
    within = objective >= objective.iloc[0] - (0.0 if math.isnan(se) else se)
    chosen = objective.index[0] if sizes is None else sizes[within].astype("float64").idxmin()  # first of ties
    size = math.nan if sizes is None else float(sizes[chosen])
    return OneSePick(str(chosen), size, se, source, int(within.sum()))


def evenly_spaced_ranks(n_trials: int, k: int) -> list[int]:
    """k positions (0-based, the best first) evenly spaced over n_trials ranked trials, from the best to the
    worst inclusive; fewer when n_trials < k. A validity measurement over them spans the objective's range,
    where one over the top ranks alone sees configurations within their noise."""
    points = min(k, n_trials)
    return sorted({round(i * (n_trials - 1) / max(points - 1, 1)) for i in range(points)}) if points > 0 else []


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN with fewer than 3 pairs."""
    pairs = pd.DataFrame({"x": x.to_numpy(dtype=float), "y": y.to_numpy(dtype=float)}).dropna()
    if len(pairs) < 3 or pairs["x"].nunique() < 2 or pairs["y"].nunique() < 2:
        return math.nan
    return float(np.corrcoef(pairs["x"].rank(), pairs["y"].rank())[0, 1])


def spearman_interval(rho: float, n: int, z_score: float = 1.96) -> tuple[float, float]:
    """Approximate 95% interval of a Spearman correlation over `n` pairs: Fisher's z with Bonett and Wright's
    (2000) variance (1 + rho^2 / 2) / (n - 3). Few configurations make it wide (n = 6, rho = 0: -0.81 to
    0.81), which is what a reader of one correlation needs to know. NaN below 4 pairs and at |rho| = 1,
    where the approximation degenerates to a point."""
    if n < 4 or math.isnan(rho) or abs(rho) >= 1.0:
        return math.nan, math.nan
    half_width = z_score * math.sqrt((1 + rho**2 / 2) / (n - 3))
    return math.tanh(math.atanh(rho) - half_width), math.tanh(math.atanh(rho) + half_width)


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


def reliability(means: pd.Series, noise_variance: float) -> float:
    """Share of the spread of `means` (one value per configuration) that is not noise:
    1 - noise_variance / var(means), clipped to [0, 1]. `noise_variance` is the variance one mean would have
    from noise alone (its SE squared, or the seed variance divided by the seeds averaged). NaN with fewer
    than 3 configurations, no spread or a missing noise variance (NaN or pandas' NA: a sweep whose rows
    record no SE)."""
    values = pd.Series(means, dtype="float64").dropna()
    return share_beyond_noise(values.var(ddof=1) if len(values) >= 3 else math.nan, noise_variance)


def share_beyond_noise(spread: float, noise_variance: float) -> float:
    """1 - noise_variance / spread, clipped to [0, 1]: `reliability` once the spread (a variance over
    configurations) is known, e.g. averaged over several class draws. NaN without spread or noise."""
    if pd.isna(spread) or spread == 0 or pd.isna(noise_variance):
        return math.nan
    return min(1.0, max(0.0, 1.0 - float(noise_variance) / float(spread)))


def noise_ceiling(reliability_x: float, reliability_y: float) -> float:
    """The correlation two noisy measures of the same configurations would show if their true values agreed
    perfectly: sqrt(rel_x * rel_y) (Spearman's attenuation, exact for Pearson's correlation, close for
    rank correlations). A measured correlation near it is as high as the noise allows."""
    return math.sqrt(reliability_x * reliability_y)


def objective_validity(rows: pd.DataFrame) -> pd.DataFrame:
    """For each final variant that came from a search trial (best, defaults, top-K): its search objective and
    SE next to its final headline number; `spearman(table.objective, table.final)` measures the prediction.
    A search trial trained under two names (the defaults' trial also a validated rank) counts once, under
    the first name in `variant_order`."""
    final = rows[(rows["stage"] == "final") & rows["search_trial_id"].notna()]
    columns = ["variant", "search_trial_id", "objective", "objective_se", "final", "final_std"]
    if final.empty:
        return pd.DataFrame(columns=columns)
    trials = search_trials(rows).set_index("trial_id")
    headline = final_objective(rows[rows["stage"] == "final"])
    links = final.groupby("variant")["search_trial_id"].first()
    links = links[[v not in ("mi_only", "aug_only") for v in links.index]]  # ablations are not searched configs
    links = links[sorted(links.index, key=variant_order)].drop_duplicates()  # keeps the first name of a trial
    table = pd.DataFrame({"variant": links.index, "search_trial_id": links.to_numpy()})
    table["objective"] = table["search_trial_id"].map(trials["objective"])
    table["objective_se"] = table["search_trial_id"].map(trials["objective_se"])
    headline = headline.set_index("variant")
    table["final"], table["final_std"] = table["variant"].map(headline["final"]), table["variant"].map(
        headline["final_std"])
    return table.sort_values("objective", ascending=False).reset_index(drop=True)[columns]
