"""Summaries and the report command on small hand-built result tables (CPU, a few seconds)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dualprompt.config import Config
from dualprompt.protocols import get_protocol
from dualprompt.report import (
    _bought,
    _ceiling_words,
    _cell_words,
    _held_out_words,
    _leak_free_words,
    _one_se_words,
    _search_size_words,
    sweep_spec,
)
from dualprompt.results import ResultRow, load_results, rows_to_table, write_rows
from dualprompt.tables import (
    TablesError,
    best_search_trials,
    chi2_quantile,
    few_shot_summary,
    final_objective,
    per_seed_final,
    search_trials,
    std_interval,
    summarise,
    transfer_summary,
)
from dualprompt.validity import (
    SearchSize,
    agreement,
    cell_study,
    datasets_needed,
    design_reliability,
    held_out_agreement,
    leak_free_ceiling,
    noise_ceiling,
    objective_validity,
    one_se_pick,
    reliability,
    search_size,
    seed_noise,
    spearman,
    spearman_brown,
    spearman_interval,
    variance_shares,
)


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def final(variant: str, dataset: str, seed: int, base: float, new: float, failed: bool = False,
          sweep: str = "demo", search_trial: str | None = None, **cfg) -> ResultRow:
    method = variant if variant in ("zeroshot", "coop", "kgcoop") else "dualprompt"
    config = Config().replace(method=method, dataset=dataset, seed=seed, **cfg)
    common = dict(variant=variant, search_trial_id=search_trial)
    if failed:
        return ResultRow(sweep, "final", f"f-{variant}", config, status="failed", error="RuntimeError: boom", **common)
    return ResultRow(sweep, "final", f"f-{variant}", config, train_s=2.0, eval_s=0.5, feature_s=1.0,
                     ray_startup_s=0.5, wall_s=4.0, trial_wall_s=20.0, **common,
                     metrics={"acc_test_base": base, "acc_test_new": new, "hm_test": hm(base, new)})


def search(trial: int, mi_weight: float, n_ctx: int, variant: str, score: float, fold: int = 0,
           seed: int = 1, dataset: str = "synthetic_a") -> ResultRow:
    config = Config().replace(dataset=dataset, seed=seed, mi_weight=mi_weight, n_ctx=n_ctx, aug_variant=variant)
    metrics = {"acc_val_pseudobase": score + 5, "acc_val_pseudonew": score - 5, "hm_val": score}
    return ResultRow("demo", "search", f"s{trial:02d}", config, metrics=metrics, fold=fold, train_s=3.0,
                     counts={"n_val_pseudobase": 32, "n_val_pseudonew": 160}, standard_errors={"hm_val_se": 4.0},
                     feature_s=1.0, eval_s=0.2, ray_startup_s=1.0, wall_s=5.0, trial_wall_s=6.0)


def frame(rows: list[ResultRow]):
    return rows_to_table(rows).to_pandas()


def test_average_row_is_hm_of_averages_not_mean_of_hms():
    # Dataset a: base 90, new 10 (HM 18); dataset b: base 10, new 90 (HM 18). Mean of HMs = 18,
    # HM of averages = HM(50, 50) = 50: the conventions differ by 32 points.
    table = summarise(frame([final("coop", "a", 1, 90.0, 10.0), final("coop", "b", 1, 10.0, 90.0)]))
    average = table.set_index(["dataset", "variant"]).loc[("average", "coop")]
    assert average["base"] == pytest.approx(50.0) and average["new"] == pytest.approx(50.0)
    assert average["hm"] == pytest.approx(50.0)
    assert table["dataset"].iloc[-1] == "average"


def test_std_over_seeds_and_failed_rows_excluded_but_counted():
    rows = [final("coop", "a", 1, 80.0, 40.0), final("coop", "a", 2, 90.0, 50.0), final("coop", "a", 3, 0, 0, True)]
    row = summarise(frame(rows)).set_index(["dataset", "variant"]).loc[("a", "coop")]
    assert row["base"] == pytest.approx(85.0) and row["new"] == pytest.approx(45.0)  # failed seed left out
    assert row["base_std"] == pytest.approx(math.sqrt(50.0))  # sample std (ddof=1) of 80, 90
    assert row["hm"] == pytest.approx(hm(85.0, 45.0))
    assert row["hm_std"] == pytest.approx(abs(hm(80, 40) - hm(90, 50)) / math.sqrt(2))
    assert row["n_seeds"] == 2 and row["n_failed"] == 1


def test_average_std_is_the_spread_over_seeds_of_the_per_seed_average():
    rows = [final("coop", d, s, 70.0 + s + i, 50.0 + 2 * s) for i, d in enumerate("ab") for s in (1, 2, 3)]
    average = summarise(frame(rows)).set_index(["dataset", "variant"]).loc[("average", "coop")]
    per_seed = [hm((70.0 + s + 70.0 + s + 1) / 2, 50.0 + 2 * s) for s in (1, 2, 3)]
    mean = sum(per_seed) / 3
    assert average["hm_std"] == pytest.approx(math.sqrt(sum((h - mean) ** 2 for h in per_seed) / 2))
    assert average["base_std"] == pytest.approx(1.0)


def test_one_seed_has_no_std_rather_than_zero():
    row = summarise(frame([final("coop", "a", 1, 80.0, 40.0)])).iloc[0]
    assert math.isnan(row["base_std"]) and math.isnan(row["new_std"]) and math.isnan(row["hm_std"])
    from dualprompt.report import table_markdown
    text = table_markdown(summarise(frame([final("coop", "a", 1, 80.0, 40.0)])), quoted=False)
    assert "±" not in text and "80.00" in text


def test_search_trials_average_folds_and_failed_jobs_count_zero():
    rows = [search(1, 0.5, 4, "mix", 60.0, fold=0), search(1, 0.5, 4, "mix", 70.0, fold=1)]
    failed = ResultRow("demo", "search", "s02", Config().replace(dataset="synthetic_a", mi_weight=2.0), fold=0,
                       status="failed", error="RuntimeError: x")
    trials = search_trials(frame(rows + [failed, search(2, 2.0, 4, "mix", 80.0, fold=1)])).set_index("trial_id")
    assert trials.loc["s01", "objective"] == pytest.approx(65.0) and trials.loc["s01", "jobs"] == 2
    assert trials.loc["s01", "objective_se"] == pytest.approx(math.sqrt(2 * 4.0**2) / 2)  # two independent jobs
    assert trials.loc["s01", "n_val_pseudobase"] == 64
    assert trials.loc["s02", "objective"] == pytest.approx(40.0) and not trials.loc["s02", "complete"]
    best = best_search_trials(frame(rows + [failed, search(2, 2.0, 4, "mix", 80.0, fold=1)]), k=5)
    assert best["trial_id"].tolist() == ["s01"]  # an incomplete trial is never chosen


def test_objective_validity_pairs_each_searched_variant_with_its_trial():
    rows = [search(i, 0.1 * (i + 1), 2 + i, "mix", 50.0 + i) for i in range(4)]
    for variant, trial, base in (("best", "s03", 80.0), ("top2", "s02", 79.0), ("top3", "s01", 70.0),
                                 ("defaults", "s00", 75.0)):
        rows += [final(variant, d, s, base + s, 60.0, search_trial=trial) for d in "ab" for s in (1, 2)]
    rows += [final("coop", d, s, 90.0, 40.0) for d in "ab" for s in (1, 2)]
    table = objective_validity(frame(rows)).set_index("variant")
    assert sorted(table.index) == ["best", "defaults", "top2", "top3"]  # baselines are not searched configs
    assert table.loc["best", "objective"] == pytest.approx(53.0)
    assert table.loc["best", "final"] == pytest.approx(hm(81.5, 60.0))
    assert spearman(table["objective"], table["final"]) == pytest.approx(0.8)  # ranks 4,3,2,1 vs 4,3,1,2
    # Each objective has a binomial SE of 4 (variance 16) and the four objectives spread by var 1.67: the
    # noise alone covers that spread, so no correlation could show here, whatever 0.8 says.
    assert table["objective_se"].tolist() == [4.0] * 4
    words = " ".join(_ceiling_words(table.reset_index(), frame(rows)))
    assert "leaves 0% of their spread" in words and "at most about **0.00**" in words and "(2 seeds)" in words
    # Rows without an SE (pandas' nullable NA in the column): no ceiling line, no error.
    no_se = table.reset_index().assign(objective_se=pd.array([None] * 4, dtype="Float64"))
    assert _ceiling_words(no_se, frame(rows)) == []
    # The defaults' trial validated again under its rank counts once, as the defaults.
    rows += [final("top4", d, s, 75.0 + s, 60.0, search_trial="s00") for d in "ab" for s in (1, 2)]
    assert sorted(objective_validity(frame(rows))["variant"]) == ["best", "defaults", "top2", "top3"]


def test_noise_ceiling_uses_the_objectives_spread_over_search_seeds_when_a_trial_ran_several():
    # Trial i scores 50 + 4i - d_i on seed 1 and 50 + 4i + d_i + 2 on seed 2, d = (1, -1, 1, -1): seed 2 is
    # 2 points easier for every trial, which reorders none; what does is the interaction, residuals +-1 over
    # 3 x 1 degrees of freedom: variance 8/3, so a two-seed mean's noise is 4/3 against a spread of
    # var(51, 55, 59, 63) = 26.67 over the trials: 95% real. Unpaired it would be 92% (trial variances 8 and
    # 0); the binomial SE (4 per job, 2.83 per trial, variance 8) would leave only 70%.
    rows = [search(i, 0.1 * (i + 1), 2 + i, "mix", 50.0 + 4 * i + ((-1) ** i) * (1 if seed == 2 else -1)
                   + (2 if seed == 2 else 0), seed=seed)
            for i in range(4) for seed in (1, 2)]
    for variant, trial, base in (("best", "s03", 80.0), ("top2", "s02", 79.0), ("top3", "s01", 70.0),
                                 ("defaults", "s00", 75.0)):
        rows += [final(variant, d, s, base + s, 60.0, search_trial=trial) for d in "ab" for s in (1, 2)]
    table = objective_validity(frame(rows))
    words = " ".join(_ceiling_words(table, frame(rows)))
    assert "the objectives' spread over their 2 search seeds leaves 95% of their spread" in words
    assert "binomial" not in words
    one_seed = [r for r in rows if r.stage == "final" or r.config.to_flat()["seed"] == 1]
    # Seed 1 alone: objectives 49, 55, 57, 63 (variance 33.3), one job each with SE 4 (variance 16): 52%.
    assert "the objectives' binomial SE leaves 52%" in " ".join(_ceiling_words(objective_validity(frame(one_seed)),
                                                                              frame(one_seed)))


def _fold_rows(fold_1_scores: list[float]) -> list[ResultRow]:
    """Five trials on folds 0 and 1 and seeds 1 and 2: fold 0 scores 50, 52, ... 58 (seed 2 one point higher, the
    same order), fold 1 the given scores (seed 2 likewise)."""
    return [search(i, 0.1 * (i + 1), 2 + i, "mix", score + (seed == 2), fold=fold, seed=seed)
            for i in range(5) for fold, score in ((0, 50.0 + 2 * i), (1, fold_1_scores[i])) for seed in (1, 2)]


def test_held_out_agreement_compares_the_folds_rankings_by_hand():
    # Fold 1 ranks the five trials 2, 1, 3, 5, 4 where fold 0 ranks them 1..5: rank differences 1, 1, 0, 1, 1,
    # Spearman 1 - 6 x 4 / (5 x 24) = 0.8; two folds' mean has reliability 2 x 0.8 / 1.8 = 0.889.
    held_out = held_out_agreement(frame(_fold_rows([62.0, 60.0, 64.0, 68.0, 66.0])))
    assert (held_out.trials, held_out.folds, held_out.seeds) == (5, 2, 2)
    assert held_out.folds_agree == pytest.approx(0.8) and held_out.reliability == pytest.approx(16 / 18)
    # Seed 2 is one point higher on every job, so the seeds' per-trial means rank the trials alike.
    assert held_out.seeds_agree == pytest.approx(1.0)
    # Reversed: the folds disagree completely, and a mean of disagreeing parts is no measure at all.
    reversed_folds = held_out_agreement(frame(_fold_rows([68.0, 66.0, 64.0, 62.0, 60.0])))
    assert reversed_folds.folds_agree == pytest.approx(-1.0) and reversed_folds.reliability == 0.0
    one_fold = [r for r in _fold_rows([62.0, 60.0, 64.0, 68.0, 66.0]) if r.fold == 0]
    assert held_out_agreement(frame(one_fold)) is None


def _cell_rows() -> list[ResultRow]:
    """Five trials in 2 datasets x 2 folds x 2 seeds. Dataset x ranks them 1..5 on fold 0 and 2 1 3 4 5 on fold 1,
    dataset y 1 2 3 5 4 on both folds; the seeds repeat each cell's ranks."""
    ranks = {("x", 0): [1, 2, 3, 4, 5], ("x", 1): [2, 1, 3, 4, 5], ("y", 0): [1, 2, 3, 5, 4], ("y", 1): [1, 2, 3, 5, 4]}
    return [search(i, 0.1 * (i + 1), 2 + i, "mix", 50.0 + 2 * rank[i], fold=fold, seed=seed, dataset=dataset)
            for (dataset, fold), rank in ranks.items() for seed in (1, 2) for i in range(5)]


def test_cell_study_splits_what_one_cell_shares_by_hand():
    # Spearman over 5 trials: one swapped pair 0.9, two 0.8. Another seed: every cell repeats itself (1).
    # Another fold: x's folds 0.9 (both seed pairings), y's 1: 0.95. Another dataset (different seeds): x fold 0
    # against y 0.9 (4 pairs), x fold 1 against y 0.8 (4): 0.85.
    study = cell_study(frame(_cell_rows()))
    assert study.agreements == pytest.approx({"another seed": 1.0, "another fold": 0.95, "another dataset": 0.85})
    # g = 0.85, d = 0.10, c = 0.05, n = 0: 0.85 / (0.85 + 0.10 / 2 + 0.05 / 4) over 2 datasets; one already gives
    # 0.85 / 0.975 = 0.87 >= 0.6.
    assert (study.datasets, study.folds, study.seeds) == (2, 2, 2)
    assert study.reliability == pytest.approx(0.85 / 0.9125) and study.datasets_needed == 1
    assert design_reliability({"another seed": 0.5, "another fold": 0.2, "another dataset": 0.1}, 5, 2, 2) == (
        pytest.approx(0.1 / (0.1 + 0.1 / 5 + 0.3 / 10 + 0.5 / 20)))
    assert design_reliability({"another seed": 0.5, "another fold": 0.2, "another dataset": -0.1}, 5, 2, 2) == 0.0
    # Cells of one dataset agreeing less than cells of others: the dataset's share is zero, not negative.
    assert variance_shares({"another seed": 0.3, "another fold": 0.04, "another dataset": 0.05}) == (
        pytest.approx((0.05, 0.0, 0.25, 0.7)))
    one_dataset = [r for r in _cell_rows() if r.config.to_flat()["dataset"] == "x"]
    assert cell_study(frame(one_dataset)) is None


def test_report_says_what_one_cell_shares_and_how_many_datasets_would_do():
    words = _cell_words(frame(_cell_rows()))
    assert "ranks the trials as itself on another seed at 1.00, as its dataset's other folds at 0.95" in words
    assert "of these 2 datasets x 2 folds x 2 seeds has a reliability of 0.93" in words
    assert "would take about 1 dataset at these folds and seeds" in words
    # The same 8 jobs on 4 datasets with one seed: 0.85 / (0.85 + 0.10 / 4 + 0.05 / 8) = 0.96.
    assert "The same jobs spent on 4 datasets with one seed each would give 0.96." in words


def test_report_says_how_large_a_search_would_have_to_be_against_a_final():
    study = cell_study(frame(_cell_rows()))  # g = 0.85, d = 0.10, c = 0.05, n = 0; 2 datasets x 2 folds x 2 seeds
    # Against a final of reliability 0.37 an objective needs 0.36 / 0.37 = 0.973: 0.85 / (0.85 + 0.125 / D) reaches
    # it from D = 6 (0.976; 5 gives 0.971), whatever the seeds, since n = 0: 6 x 2 x 2 jobs are 3 times the
    # search's 8, 6 x 2 x 1 are 1.5 times.
    needed = 0.36 / 0.37
    assert datasets_needed(study.agreements, 2, 2, needed) == datasets_needed(study.agreements, 2, 1, needed) == 6
    words = _search_size_words(SearchSize(needed, study, {2: 6, 1: 6}, (3.0, math.inf)))
    assert "would need a reliability of at least 0.97 with respect to other classes" in words
    assert "against this search's 0.93" in words
    assert "about 6 datasets at 2 seeds each (3.0 times its jobs) or 6 datasets at 1 seed each (1.5 times" in words
    assert "(at one seed, 95% interval 3 to more than 1,000, resampling the search's trials" in words
    assert "no objective can have it" in _search_size_words(SearchSize(1.0, study, {2: None, 1: None}, (1, 1)))
    beyond = _search_size_words(SearchSize(0.99999, study, {2: None, 1: None}, (math.inf, math.inf)))
    assert "no number of datasets at the search's folds gives it" in beyond
    assert _search_size_words(None) == ""


def test_search_size_reads_the_cell_study_against_the_finals_halves():
    # The cell rows' five trials, validated by final rows whose halves have reliability 0.85 / 0.9 (the leak-free
    # test below): an objective needs 0.36 / 0.944 = 0.38, which one dataset of such cells already gives.
    ranks = {(1, 1): [1, 2, 3, 4, 5], (2, 1): [2, 1, 3, 4, 5], (1, 2): [1, 2, 3, 5, 4], (2, 2): [2, 1, 3, 5, 4]}
    finals = [r for r in _half_rows(ranks) if r.stage == "final"]
    rows = frame(_cell_rows() + finals)
    size = search_size(rows, objective_validity(rows)["variant"], resamples=200)
    assert size.needed == pytest.approx(0.36 / (0.85 / 0.9)) and size.datasets == {2: 1, 1: 1}
    assert size.study == cell_study(rows) and size.interval[0] == 1 and size.interval[1] >= 1
    # Halves that reverse each other leave nothing to know: no reliability is enough.
    reversed_halves = {key: [1, 2, 3, 4, 5] if key[1] == 1 else [5, 4, 3, 2, 1] for key in ranks}
    reversed_rows = frame(_cell_rows() + [r for r in _half_rows(reversed_halves) if r.stage == "final"])
    assert search_size(reversed_rows, objective_validity(rows)["variant"]).needed == math.inf
    # Without the cell study (one dataset) or without halves: nothing to say.
    one_dataset = rows[rows["dataset"].ne("y") | rows["stage"].eq("final")]
    assert search_size(one_dataset, objective_validity(rows)["variant"]) is None
    no_halves = rows.assign(acc_test_new_first_half=math.nan)
    assert search_size(no_halves, objective_validity(rows)["variant"]) is None


def _half_rows(ranks: dict[tuple[int, int], list[int]]) -> list[ResultRow]:
    """Five validated configurations (search trials s00-s04 scoring 50, 60, ... 90) on datasets a and b, seeds 1
    and 2: base 80 everywhere, and on (seed, half) configuration i scores 40 + 2 x ranks[seed, half][i] on that
    half of the new classes."""
    rows = [search(i, 0.1 * (i + 1), 2 + i, "mix", 50.0 + 10 * i) for i in range(5)]
    for i, variant in enumerate(("defaults", "top4", "top3", "top2", "best")):
        for seed in (1, 2):
            halves = [40.0 + 2 * ranks[seed, half][i] for half in (1, 2)]
            config = Config().replace(seed=seed)
            metrics = {"acc_test_base": 80.0, "acc_test_new": sum(halves) / 2, "hm_test": hm(80.0, sum(halves) / 2),
                       "acc_test_new_first_half": halves[0], "acc_test_new_second_half": halves[1]}
            rows += [ResultRow("demo", "final", f"f-{variant}", config.replace(dataset=d), variant=variant,
                               search_trial_id=f"s{i:02d}", metrics=metrics) for d in "ab"]
    return rows


def test_leak_free_ceiling_splits_the_final_by_seed_and_half_by_hand():
    # Spearman over five: one swapped pair 0.9, two 0.8. Seed 2 swaps configurations 0 and 1 on both halves,
    # half 2 swaps 3 and 4 on both seeds: another seed (same half) 0.9, another half (same seed) 0.9, neither
    # 0.8. So g = 0.8, the seed's share s = 0.1, the half's e = 0.1, noise 0: of the mean of 2 seeds x 2 halves,
    # (0.8 + 0.1 / 2) / (0.8 + 0.1 / 2 + 0.1 / 2) = 0.944 is what does not depend on the halves; ceiling 0.972.
    ranks = {(1, 1): [1, 2, 3, 4, 5], (2, 1): [2, 1, 3, 4, 5], (1, 2): [1, 2, 3, 5, 4], (2, 2): [2, 1, 3, 5, 4]}
    rows = frame(_half_rows(ranks))
    table = objective_validity(rows)
    ceiling = leak_free_ceiling(rows, table["variant"])
    assert ceiling.agreements == pytest.approx({"another seed": 0.9, "another half": 0.9, "neither": 0.8})
    assert ceiling.seeds == 2 and ceiling.reliability == pytest.approx(0.85 / 0.9)
    assert ceiling.ceiling == pytest.approx(math.sqrt(0.85 / 0.9))
    low, high = ceiling.interval  # resampled configurations: repeats tie, and a share can only move
    assert 0.0 <= low <= ceiling.ceiling <= high <= 1.0 and low < high
    words = " ".join(_leak_free_words(table, rows))
    assert "as itself on another seed at 0.90, as the other half on the same seed at 0.90" in words
    assert "as the other half on another seed at 0.80" in words and "is 94% of the final numbers' spread" in words
    assert f"about **0.97** at most (95% interval {low:.2f} to {high:.2f}, resampling the configurations)" in words
    # The objectives 50 ... 90 (variance 250) with a binomial SE of 4 (variance 16): reliability 0.936, and
    # together sqrt(0.936 x 0.944) = 0.94.
    assert "with the objective's own noise above, about **0.94**" in words
    # Halves that reverse each other: nothing carries from one set of new classes to another.
    reversed_halves = {(1, 1): [1, 2, 3, 4, 5], (2, 1): [1, 2, 3, 4, 5], (1, 2): [5, 4, 3, 2, 1],
                       (2, 2): [5, 4, 3, 2, 1]}
    assert leak_free_ceiling(frame(_half_rows(reversed_halves)), table["variant"]).ceiling == 0.0
    # Every cell ranking the configurations alike: everything carries, in every resample too.
    alike = {key: [1, 2, 3, 4, 5] for key in ranks}
    assert leak_free_ceiling(frame(_half_rows(alike)), table["variant"]).interval == (1.0, 1.0)
    # Rows written before the halves were measured, or one seed: nothing to say.
    older = rows.assign(acc_test_new_first_half=math.nan, acc_test_new_second_half=math.nan)
    assert leak_free_ceiling(older, table["variant"]) is None and _leak_free_words(table, older) == []
    assert leak_free_ceiling(rows[rows["seed"] == 1], table["variant"]) is None


def test_agreement_averages_every_pair_and_spearman_brown_by_hand():
    # Columns a, b agree fully, c reverses both: pairs +1, -1, -1, mean -1/3.
    table = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0], "c": [3.0, 2.0, 1.0]})
    assert agreement(table) == pytest.approx(-1 / 3) and math.isnan(agreement(table[["a"]]))
    assert spearman_brown(0.2, 2) == pytest.approx(1 / 3) and spearman_brown(0.5, 3) == pytest.approx(0.75)
    assert spearman_brown(-0.4, 2) == 0.0 and math.isnan(spearman_brown(math.nan, 2))


def test_report_says_how_far_the_folds_ranking_carries():
    words = " ".join(_held_out_words(frame(_fold_rows([62.0, 60.0, 64.0, 68.0, 66.0])), get_protocol("base2new")))
    assert "Each fold of the pseudo split holds out other base classes" in words
    assert "the 2 folds' objectives rank the trials alike at Spearman **0.80**" in words
    assert "its 2 search seeds, which hold out the same classes, agree at 1.00" in words
    assert "reliability of about 0.89" in words and "about **0.94**" in words  # sqrt(0.889)


def test_paired_seed_noise_counts_only_what_can_reorder_configurations():
    # Seed 2 is 3 points easier for both configurations: unpaired, each row varies by 4.5 over its seeds (its
    # two-seed mean by 2.25); paired, nothing can reorder them.
    offset = pd.DataFrame({1: [10.0, 20.0], 2: [13.0, 23.0]})
    assert seed_noise(offset) == pytest.approx(4.5 / 2) and seed_noise(offset, paired=True) == pytest.approx(0.0)
    # Rows m_i -+ d_i with d = (1, -1, 0): residuals +-1, +-1, 0 over (3 - 1) x (2 - 1) = 2 degrees of freedom,
    # variance 2, so a two-seed mean has noise 1 (unpaired: variances 2, 2, 0, halved, mean 2/3).
    crossed = pd.DataFrame({1: [49.0, 61.0, 70.0], 2: [51.0, 59.0, 70.0]})
    assert seed_noise(crossed, paired=True) == pytest.approx(1.0) and seed_noise(crossed) == pytest.approx(2 / 3)
    assert math.isnan(seed_noise(crossed[[1]], paired=True)) and math.isnan(seed_noise(crossed.iloc[:1], paired=True))


def _one_se_rows(seeds=(1, 2), same_n_ctx: bool = False):
    """Four trials, one job a seed: n_ctx 4, 16, 8, 2 with objectives 61, 70, 69, 67 (seed 1 one point below,
    seed 2 one above: each trial's seed variance 2, so a two-seed mean has SE 1; one job alone has SE 4)."""
    spec = ((4, 61.0), (16, 70.0), (8, 69.0), (2, 67.0))
    return [search(i, 0.5, 4 if same_n_ctx else n_ctx, "mix", score + (1 if seed == 2 else -1), seed=seed)
            for i, (n_ctx, score) in enumerate(spec) for seed in seeds]


def test_one_se_pick_takes_the_fewest_context_vectors_within_one_se_of_the_best():
    pick = one_se_pick(frame(_one_se_rows()))
    # Within 70 - 1: s01 (16 vectors) and s02 (8): the smaller prompt. s03 (2 vectors, 67) is outside.
    assert (pick.trial_id, pick.se, pick.window) == ("s02", pytest.approx(1.0), 2)
    assert pick.se_source == "one trial's spread over its search seeds"
    # One search seed: the best trial's binomial SE (4), a window down to 65 that holds s03.
    one_seed = one_se_pick(frame(_one_se_rows(seeds=(1,))))
    assert (one_seed.trial_id, one_seed.se, one_seed.window) == ("s03", pytest.approx(4.0), 3)
    assert one_seed.se_source == "the best trial's binomial SE"
    # The context length not searched: nothing is simpler, so the rule is the highest objective.
    assert one_se_pick(frame(_one_se_rows(same_n_ctx=True))).trial_id == "s01"
    assert one_se_pick(frame([final("coop", "a", 1, 80.0, 60.0)])) is None  # no search trial


def test_report_names_the_one_se_pick_and_what_it_bought():
    rows = _one_se_rows()
    for variant, trial, base in (("best", "s01", 70.0), ("one_se", "s02", 74.0), ("defaults", "s00", 72.0)):
        rows += [final(variant, "a", s, base + s, 60.0, search_trial=trial) for s in (1, 2)]
    table = frame(rows)
    by = final_objective(table[table["stage"] == "final"]).set_index("variant")
    words = " ".join(_one_se_words(table, by, per_seed_final(table)))
    assert "of the 2 complete trials whose objective lies within one SE (1.00 points" in words
    assert "the fewest context vectors (8): Dual-view, one-SE pick." in words
    expected = hm(75.5, 60.0) - hm(71.5, 60.0)
    assert f"Minus dual-view, searched: {expected:+.2f} points" in words and "Minus dual-view, defaults" in words


def test_what_the_search_bought_judges_a_difference_by_its_paired_seed_noise():
    # Base = new, so each seed's headline is its base accuracy. Seeds move both variants alike (70, 74, 78): that
    # common shift reorders nothing. Paired differences 1, 1, 2: mean 1.33, spread 0.58, SE 0.33, beyond 2 SE
    # (the unpaired spread, about 6, would have called it noise).
    rows = [(seed, final(variant, "a", seed, acc + extra, acc + extra, search_trial=trial))
            for variant, trial, extras in (("defaults", "s00", (0, 0, 0)), ("best", "s01", (1, 1, 2)))
            for seed, acc, extra in zip((1, 2, 3), (70.0, 74.0, 78.0), extras, strict=True)]
    words = " ".join(_bought(frame([row for _, row in rows])))
    assert ("Searched minus defaults: +1.33 points; paired by seed, the per-seed difference spreads by 0.58 over 3 "
            "seeds, a standard error of 0.33, so it is more than two standard errors from zero.") in words
    one_seed = " ".join(_bought(frame([row for seed, row in rows if seed == 1])))
    assert "Searched minus defaults: +1.00 points (1 seed: no seed spread to judge it by)." in one_seed


def test_a_seed_std_comes_with_its_chi_square_interval():
    # Chi-square quantiles from the tables: 2 df is the exponential with mean 2, -2 ln(1 - p), exactly.
    assert chi2_quantile(0.025, 2) == pytest.approx(-2 * math.log(0.975), rel=1e-9)
    assert chi2_quantile(0.975, 2) == pytest.approx(-2 * math.log(0.025), rel=1e-9)
    assert (chi2_quantile(0.025, 19), chi2_quantile(0.975, 19)) == pytest.approx((8.9065, 32.8523), abs=1e-4)
    assert chi2_quantile(0.5, 1) == pytest.approx(0.45494, abs=1e-5) and chi2_quantile(0.975, 99) == pytest.approx(
        128.422, abs=1e-3)
    # Three seeds: a std of 1 is anywhere from 0.52 to 6.3; twenty narrow it to 0.76 to 1.46.
    assert std_interval(1.0, 3) == pytest.approx((0.5207, 6.2847), abs=1e-4)
    assert std_interval(1.0, 20) == pytest.approx((0.7605, 1.4606), abs=1e-4)
    assert all(math.isnan(v) for v in std_interval(1.0, 1)) and std_interval(0.0, 5) == (0.0, 0.0)
    # The report's table shows it next to each variant's std, with the seeds it rests on.
    rows = [final(variant, "a", seed, acc, acc, search_trial=trial)
            for variant, trial, accs in (("defaults", "s00", (70.0, 71.0, 72.0)), ("best", "s01", (75.0, 75.0, 75.0)))
            for seed, acc in zip((1, 2, 3), accs, strict=True)]
    text = "\n".join(_bought(frame(rows)))
    assert "| std over seeds | seeds | 95% interval of the std |" in text
    assert "| Dual-view, defaults | 71 | 1 | 3 | 0.52 to 6.28 |" in text and "| 0 | 3 | 0.00 to 0.00 |" in text


def test_spearman_interval_is_fisher_z_with_bonett_wright_variance():
    # By hand: z = atanh(0.5) = 0.5493, SE = sqrt(1.125 / 7) = 0.4009, tanh(0.5493 -+ 1.96 x 0.4009).
    assert spearman_interval(0.5, 10) == pytest.approx((-0.2321, 0.8705), abs=1e-4)
    low, high = spearman_interval(0.0, 6)
    assert low == pytest.approx(-high) and high == pytest.approx(0.8116, abs=1e-4)
    assert all(math.isnan(v) for v in (*spearman_interval(0.5, 3), *spearman_interval(1.0, 8)))


def test_reliability_and_noise_ceiling_by_hand():
    # Means 1, 2, 3 (variance 1) with noise variance 0.25: 75% of the spread is real; sqrt(0.75 x 0.48) = 0.6.
    assert reliability(pd.Series([1.0, 2.0, 3.0]), 0.25) == pytest.approx(0.75)
    assert noise_ceiling(0.75, 0.48) == pytest.approx(0.6)
    assert reliability(pd.Series([1.0, 2.0, 3.0]), 4.0) == 0.0  # all of the spread is noise: clipped, not < 0
    assert math.isnan(reliability(pd.Series([1.0, 2.0]), 0.1))  # too few configurations
    assert math.isnan(reliability(pd.Series([2.0, 2.0, 2.0]), 0.1))  # no spread


def test_transfer_and_few_shot_tables():
    rows = []
    for seed in (1, 2):
        cfg = Config().replace(method="coop", dataset="src", seed=seed)
        rows.append(ResultRow("x", "final", "t", cfg, protocol="cross_dataset", variant="coop",
                              metrics={"acc_test": 70.0 + seed}))
        for target, acc in (("t1", 50.0), ("t2", 60.0)):
            rows.append(ResultRow("x", "final", "t", cfg.replace(dataset=target), protocol="cross_dataset",
                                  variant="coop", source_dataset="src", steps=0, metrics={"acc_test": acc + seed}))
    table = transfer_summary(frame(rows)).set_index(["variant", "dataset"])
    assert table.loc[("coop", "src"), "role"] == "source" and table.loc[("coop", "t1"), "role"] == "target"
    assert table.loc[("coop", "target average"), "acc"] == pytest.approx(56.5)
    assert table.loc[("coop", "target average"), "acc_std"] == pytest.approx(math.sqrt(0.5))
    shots = [ResultRow("x", "final", "f", Config().replace(method="coop", dataset=d, seed=1, shots=k),
                       protocol="few_shot", variant="coop", metrics={"acc_test": 10.0 * k + i})
             for i, d in enumerate("ab") for k in (1, 2)]
    curve = few_shot_summary(frame(shots)).set_index(["dataset", "shots"])["acc"]
    assert curve[("average", 1)] == pytest.approx(10.5) and curve[("average", 2)] == pytest.approx(20.5)


def test_tradeoff_plot_takes_more_variants_than_it_has_markers(tmp_path):
    from dualprompt.plots import MARKERS, tradeoff

    variants = ["zeroshot", "coop", "kgcoop", "defaults", "best", *(f"top{k}" for k in range(2, 18))]  # validate-top 16
    assert len(variants) > len(MARKERS)
    rows = [final(v, "synthetic_a", 1, 60.0 + i, 50.0 + i / 2) for i, v in enumerate(variants)]
    tradeoff(summarise(frame(rows)), tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 5000


def test_mixed_backbones_are_refused():
    rows = [final("coop", "a", 1, 80.0, 40.0),
            final("coop", "b", 1, 80.0, 40.0, backbone="ViT-B-16", pretrained="openai")]
    with pytest.raises(TablesError, match="mix backbones"):
        summarise(frame(rows))


def test_load_results_is_typed_and_reads_many_sweeps(tmp_path):
    write_rows([final("coop", "a", 1, 80.0, 40.0)], tmp_path / "one", "final-1.parquet")
    write_rows([final("coop", "a", 1, 70.0, 40.0, sweep="two")], tmp_path / "two", "final-1.parquet")
    rows = load_results([str(tmp_path / "one"), str(tmp_path / "two")])
    assert len(rows) == 2 and set(rows["sweep"]) == {"demo", "two"}
    assert str(rows["seed"].dtype) == "Int64" and str(rows["acc_test_base"].dtype) == "float64"
    assert str(rows["finished_at"].dtype).startswith("datetime64")


def sweep_dir(root, sweep: str = "demo"):
    """A small results folder in the shape the sweep writes: search trials, then a final stage."""
    folder = root / sweep
    variants = ("mix", "virtual")
    for i in range(8):
        write_rows([search(i, 0.05 * 2 ** i, 2 + i, variants[i % 2], 40.0 + 3 * math.sin(i) + i)], folder,
                   f"search-{i:02d}.parquet")
    links = {"best": "s07", "defaults": "s00", "top2": "s06"}
    for k, v in enumerate(("zeroshot", "coop", "kgcoop", "defaults", "best", "top2")):
        rows = [final(v, d, s, 60.0 + 5 * k + s, 70.0 - 4 * k + s + j, search_trial=links.get(v))
                for j, d in enumerate(("synthetic_a", "synthetic_b")) for s in (1, 2)]
        if v == "coop":
            rows.append(final(v, "synthetic_a", 3, 0, 0, failed=True))
        write_rows(rows, folder, f"final-{v}.parquet")
    # The sweep's saved plan: declared bounds give Optuna the true distributions.
    (folder / "_sweep.json").write_text(json.dumps(
        {"bounds": {"mi_weight": [0.05, 10.0, "log"], "n_ctx": [2, 16, "int"]},
         "choices": {"aug_variant": ["mix", "virtual"]}, "num_samples": 8}))
    return folder


def test_the_saved_plan_is_read_next_to_the_rows_or_where_earlier_sweeps_kept_it(tmp_path):
    assert sweep_spec(str(tmp_path)) == {}
    (tmp_path / "_ray").mkdir()
    (tmp_path / "_ray" / "sweep.json").write_text('{"num_samples": 64}')
    assert sweep_spec(str(tmp_path)) == {"num_samples": 64}
    (tmp_path / "_sweep.json").write_text('{"num_samples": 8}')
    assert sweep_spec(str(tmp_path)) == {"num_samples": 8}


def report(*args: str):
    return subprocess.run([sys.executable, "-m", "dualprompt.report", *args], capture_output=True, text=True,
                          timeout=120)


def test_report_command_writes_markdown_and_every_figure(tmp_path):
    folder = sweep_dir(tmp_path)
    done = report(str(folder))
    assert done.returncode == 0, done.stderr
    out = folder / "_report"
    text = (out / "REPORT.md").read_text()
    for name in ("tradeoff.png", "best_so_far.png", "objective_vs_params.png", "importance.png",
                 "objective_validity.png"):
        assert (out / name).stat().st_size > 5000, name
        assert f"({name})" in text
    assert "**Average**" in text and "±" in text and "8 search trials (of 8 requested)" in text and "hm_val" in text
    assert "CoOp on synthetic_a: 1 failed" in text
    assert "quoted, not reproduced" not in text  # synthetic datasets get no published reference rows
    assert "Spearman rank correlation" in text and "(n = 3)" in text
    assert "`python sweeps/base2new.py --name demo --stage final --validate-top K`" in text
    assert "What the search bought" in text and "Searched minus defaults" in text
    assert "doing work" in text and "mi_weight in [0.05, 10] (log)" in text
    assert "Importance: Optuna fANOVA importance" in text and "standard error of 4.00 points" in text
    assert "Best complete search trials" in text and "| s07 |" in text
    import pandas as pd
    assert len(pd.read_parquet(folder)) == 8 + 6 * 4 + 1  # the report does not disturb plain pandas reads


def test_report_quotes_published_numbers_for_real_datasets(tmp_path):
    folder = tmp_path / "real"
    write_rows([final(v, "dtd", 1, 70.0, 60.0) for v in ("coop", "best")], folder, "final-x.parquet")
    done = report(str(folder))
    assert done.returncode == 0, done.stderr
    text = (folder / "_report" / "REPORT.md").read_text()
    assert "quoted, not reproduced" in text and "79.97" in text and "71.70" in text


def one_sentence_exit_2(done) -> str:
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(".")
    return lines[0]


def test_bad_inputs_exit_2_with_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "No Parquet result files" in one_sentence_exit_2(report(str(tmp_path / "empty")))

    newer = tmp_path / "newer"
    newer.mkdir()
    table = rows_to_table([final("coop", "a", 1, 80.0, 40.0)])
    pq.write_table(table.replace_schema_metadata({"dualprompt_schema_version": "99"}), newer / "final-x.parquet")
    assert "newer than this dualprompt reads" in one_sentence_exit_2(report(str(newer)))

    write_rows([final("coop", "a", 1, 80.0, 40.0)], tmp_path / "tiny", "final-x.parquet")
    write_rows([final("coop", "a", 1, 80.0, 40.0, sweep="big", backbone="ViT-B-16", pretrained="openai")],
               tmp_path / "big", "final-x.parquet")
    message = one_sentence_exit_2(report(str(tmp_path / "tiny"), str(tmp_path / "big")))
    assert "mix backbones" in message and "not comparable" in message


README = Path(__file__).resolve().parent.parent / "results" / "README.md"
EXAMPLE = README.parent / "base2new" / "example"


def test_results_readme_documents_every_column_the_config_does_not():
    # Configuration columns follow Config (documented where each field is declared, dualprompt/config.py),
    # so a new field needs no README edit; every other column is the results' own and must be described.
    from dualprompt.config import FIELD_TYPE
    from dualprompt.results import LEADING_CONFIG, SCHEMA
    text = README.read_text()
    own = [n for n in SCHEMA.names if n not in FIELD_TYPE or n in LEADING_CONFIG]
    assert [n for n in own if f"| `{n}` |" not in text] == []
    assert "python sweeps/base2new.py --num-samples 64 --name example" in text


def test_results_readme_snippets_run_on_the_example():
    import pandas as pd
    if not list(EXAMPLE.glob("final-*.parquet")):
        pytest.skip("the example sweep has no final rows yet")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 4
    assert len(pd.read_parquet(EXAMPLE)) > 0
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120,
                              cwd=README.parent.parent)
        assert done.returncode == 0, done.stderr
