"""How well a search's objective predicted the final result, and how well any objective could.

A sweep's report reads these from its rows alone: the rank correlation between the objective and the final
headline number over the configurations the final stage re-trained (`objective_validity`, `spearman` with its
interval), the noise ceilings of both sides (`reliability`, `seed_noise`, `noise_ceiling`), how alike the
search's folds and cells rank its trials (`held_out_agreement`, `cell_study`: does the ranking carry to other
held-out classes?), how much of the final ranking depends on which classes are new (`leak_free_ceiling`),
how large a search would have to be for its objective to reach VALIDITY_TARGET (`search_size`), and the
one-standard-error rule of model selection (`one_se_pick`). Conventions as in `dualprompt.tables`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .protocols import get_protocol
from .tables import (
    best_search_trials,
    final_objective,
    per_seed_average,
    search_trials,
    searched_params,
    variant_order,
)


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
    complete = _complete_trials(rows)
    if len(complete) < 4 or "fold" not in rows or rows.loc[rows["stage"] == "search", "fold"].nunique() < 2:
        return None
    per_fold, per_seed = objectives_by(rows, complete, "fold"), objectives_by(rows, complete, "seed")
    folds_agree = agreement(per_fold)
    return HeldOutAgreement(len(complete), per_fold.shape[1], per_seed.shape[1], folds_agree, agreement(per_seed),
                            spearman_brown(folds_agree, per_fold.shape[1]))


def _complete_trials(rows: pd.DataFrame) -> pd.Series:
    """The ids of the search trials whose every job ran."""
    trials = search_trials(rows)
    return trials.loc[trials["complete"].astype(bool), "trial_id"]


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
    cells = search_cells(rows)
    return None if cells is None else _cell_study(cells)


def _cell_study(cells: pd.DataFrame) -> CellStudy:
    """`cell_study` of a `search_cells` table."""
    agreements = cell_agreements(cells)
    datasets, folds, seeds = (cells.columns.get_level_values(c).nunique() for c in CELL)
    return CellStudy(agreements, datasets, folds, seeds, design_reliability(agreements, datasets, folds, seeds),
                     datasets_needed(agreements, folds, seeds))


def search_cells(rows: pd.DataFrame) -> pd.DataFrame | None:
    """[trial, (dataset, fold, seed)]: each complete search trial's objective on each cell; None without two
    datasets, folds and seeds or four complete trials."""
    complete = _complete_trials(rows)
    search = rows[rows["stage"] == "search"]
    if len(complete) < 4 or not set(CELL) <= set(search) or any(search[c].nunique() < 2 for c in CELL):
        return None
    return objectives_by(rows, complete, CELL)


def _spearman_matrix(cells: pd.DataFrame) -> np.ndarray:
    """[column, column]: `spearman` of every pair of columns, in one call (NaN where a column has no ranks, as
    when a resample repeats one configuration)."""
    return cells.corr(method="spearman", min_periods=3).to_numpy()


def cell_agreements(cells: pd.DataFrame) -> dict[str, float]:
    """How alike single cells rank the configurations, by what two cells share. `cells` is [configuration,
    (dataset, fold, seed)]: mean Spearman over pairs of cells on different seeds that share the dataset and
    fold ("another seed"), only the dataset ("another fold"), or nothing ("another dataset"); pairs on one
    seed share its random stream, which is no property of a configuration. What cells of other datasets share
    is a configuration effect that carries to other classes; the rest of what a cell shares with itself on
    another seed is about its own classes and images."""
    corr = _spearman_matrix(cells)
    pairs: dict[str, list[float]] = {"another seed": [], "another fold": [], "another dataset": []}
    for i, a in enumerate(cells.columns):
        for j in range(i + 1, len(cells.columns)):
            b = cells.columns[j]
            if a[2] != b[2]:
                relation = "another dataset" if a[0] != b[0] else "another fold" if a[1] != b[1] else "another seed"
                pairs[relation].append(corr[i, j])
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


# The rank correlation between a search objective and the final numbers that makes the objective worth
# following over the configurations a search offers (the project's target for its sweeps' objectives).
VALIDITY_TARGET = 0.6

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
    classes only (`tables.per_seed_average` with that half's column). Empty where the rows do not measure the
    halves (written before they were, or another protocol)."""
    ok = rows[(rows["stage"] == "final") & (rows["status"] == "ok") & rows["variant"].isin(list(variants))]
    if ok.empty or any(c not in ok or ok[c].isna().all() for c in NEW_HALVES):
        return pd.DataFrame()
    halves = {half: per_seed_average(ok, new=column).set_index(["variant", "seed"])["hm"]
              for half, column in enumerate(NEW_HALVES, start=1)}
    return pd.concat(halves, axis=1).unstack("seed").swaplevel(axis=1).sort_index(axis=1)


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
    cells = _measured_half_cells(rows, variants)
    if cells is None:
        return None
    seeds = len({seed for seed, _ in cells.columns})
    agreements, rel = _leak_free_reliability(cells)
    rng = np.random.default_rng(0)
    draws = [math.sqrt(_leak_free_reliability(cells.iloc[rng.integers(0, len(cells), len(cells))])[1])
             for _ in range(resamples)]
    low, high = np.nanpercentile(draws, [2.5, 97.5]) if resamples else (math.nan, math.nan)
    return LeakFreeCeiling(agreements, seeds, rel, math.sqrt(rel), (float(low), float(high)))


def _measured_half_cells(rows: pd.DataFrame, variants) -> pd.DataFrame | None:
    """`final_half_cells` of the configurations measured on every cell; None with fewer than four of them or
    two seeds."""
    cells = final_half_cells(rows, variants)
    if cells.empty:
        return None
    cells = cells.dropna()
    if len(cells) < 4 or len({seed for seed, _ in cells.columns}) < 2:
        return None
    return cells


@dataclass(frozen=True)
class SearchSize:
    """How large a search like this one would have to be for its objective to reach VALIDITY_TARGET against a
    final stage's numbers (`search_size`)."""

    needed: float  # the objective's reliability with respect to the final's classes that it takes (>= 1: none)
    study: CellStudy
    datasets: dict[int, int | None]  # search seeds a dataset -> datasets at the study's folds (None: over 1,000)
    interval: tuple[float, float]  # 95% bootstrap interval of the one-seed count (inf: no count would do)


def search_size(rows: pd.DataFrame, variants, resamples: int = 1000) -> SearchSize | None:
    """The datasets of search cells an objective would need for a rank correlation of VALIDITY_TARGET with the
    final numbers of `variants`.

    A correlation is at most the square root of the product of the two sides' reliabilities, so against a
    final whose leak-free reliability is R (`leak_free_ceiling`) the objective needs VALIDITY_TARGET ** 2 / R
    with respect to other classes, which `design_reliability` turns into datasets from the search's cell study.
    Counted at the search's own seeds and at one seed a dataset (fewer jobs). The interval resamples the
    search's complete trials and the configurations independently (`resamples` times, a fixed seed). None
    without a cell study or measured halves. The search's trials spread wider than a search's top does, so for
    the top these counts are lower bounds."""
    cells, final = search_cells(rows), _measured_half_cells(rows, variants)
    if cells is None or final is None:
        return None
    study = _cell_study(cells)
    needed = _needed_reliability(_leak_free_reliability(final)[1])
    datasets = {seeds: datasets_needed(study.agreements, study.folds, seeds, needed) if needed < 1 else None
                for seeds in sorted({study.seeds, 1}, reverse=True)}
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(resamples):
        agreements = cell_agreements(cells.iloc[rng.integers(0, len(cells), len(cells))])
        need = _needed_reliability(_leak_free_reliability(final.iloc[rng.integers(0, len(final), len(final))])[1])
        count = datasets_needed(agreements, study.folds, 1, need) if need < 1 else None
        counts.append(math.inf if count is None else count)
    low, high = (np.quantile(counts, [0.025, 0.975], method="inverted_cdf") if resamples else (math.nan,) * 2)
    return SearchSize(needed, study, datasets, (float(low), float(high)))


def _needed_reliability(final_reliability: float) -> float:
    """The objective's reliability that a final of `final_reliability` asks for VALIDITY_TARGET (inf: none)."""
    return VALIDITY_TARGET**2 / final_reliability if final_reliability > 0 else math.inf


def _leak_free_reliability(cells: pd.DataFrame) -> tuple[dict[str, float], float]:
    """`leak_free_ceiling`'s agreements (mean Spearman over the pairs of cells of each relation) and reliability
    for a [configuration, (seed, half)] table."""
    corr = _spearman_matrix(cells)
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
