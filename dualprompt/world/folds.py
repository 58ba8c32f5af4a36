"""Would a base of four smaller blocks let a search's folds agree on which configurations are best?

    python -m dualprompt.world.folds --sweep results/base2new/example --json folds.json
    python -m dualprompt.world.folds --sweep results/base2new/example --shard 1/2 --json folds-1.json  # and 2/2
    python -m dualprompt.world.folds --from-json folds-1.json folds-2.json   # re-read, no training
    python -m dualprompt.world.folds --smoke                                 # seconds

A search scores a configuration on pseudo-new classes it held out of the base classes. If two folds,
holding out different classes, rank the configurations alike, the objective measures something that
carries from one set of held-out classes to another; the square root of its reliability with respect to
the held-out classes bounds how well it can predict results on yet other classes, the final test on the
true new classes included (`validity.held_out_agreement`; the report's "Does the ranking carry to other
held-out classes?"). The committed layout has two 9-class blocks in base (A, B), so a trial has two folds.

The *quarters* layout makes base four word-disjoint 4-class blocks instead, 2 colours x 2 shapes of each
of A, B, C and D (the same datasets and images, relabelled as `world.draws` does), so that a fold can hold
out any two of them: three pairings of the four blocks, each giving two complementary folds, six in all.
This trains the search stage's jobs of every complete trial of a sweep in that layout, on the sweep's own
search seeds, and prints, next to the sweep's own two folds over the same trials, how alike folds with no
held-out class in common rank the trials, how alike folds sharing one held-out block do, and the
reliability and bound of a search that averages 2, 4 or 6 folds (`class_reliability`), with bootstrap
95% intervals over the trials, then what one cell (a dataset, fold and seed) shares with others
(`validity.cell_agreements`; the sweep's report prints the same study of its own cells). It reads only the
few-shot train and val images of the classes each layout makes base (the quarters of C and D are new
classes of the committed layout, as `world.draws` makes other blocks base): never a test image, and never a
class its own layout holds out as new.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from dualprompt.world.draws import (
    LETTERS,
    N_FOLDS,
    SMOKE,
    block_labels,
    job_metrics,
    machine_paths,
    ranked_complete_trials,
    relabel_to,
    smoke_configs,
    trial_settings,
)

QUARTER = (2, 2)  # colours x shapes kept of each block
PAIRINGS = tuple(f"{LETTERS[0]}{b}|{''.join(x for x in LETTERS[1:] if x != b)}" for b in LETTERS[1:])  # AB|CD ...
COMMITTED = "committed"
RESAMPLES = 1000


def quarters_order(pairing: str) -> list[int]:
    """Labels making base the four quarters in `pairing`'s order ("AC|BD": A' C' then B' D', so fold 0 holds out
    B' and D' and fold 1 A' and C'), then four other classes of each block as new, so the ceil(n/2) rules cut
    base at the quarters and pseudo-base at the bar. The new classes are never read here."""
    quarters = [label for letter in pairing.replace("|", "") for label in block_labels(letter, QUARTER)]
    size = QUARTER[0] * QUARTER[1]
    return quarters + [label for letter in LETTERS
                       for label in [x for x in block_labels(letter) if x not in quarters][:size]]


def committed_split(fold: int) -> str:
    """The block a fold of the committed layout holds out: B for fold 0, A for fold 1."""
    return LETTERS[N_FOLDS - 1 - fold]


def held_out(pairing: str, fold: int) -> str:
    """The quarters a fold of `pairing` holds out, e.g. "CD" for fold 0 of "AB|CD"."""
    trained_first, second = pairing.split("|")
    return second if fold == 0 else trained_first


def run_trial(experiments: dict, trial_id: str, fields: dict, datasets: tuple[str, ...], seeds: tuple[int, ...],
              overrides: dict) -> list[dict]:
    """One trial's search jobs in every layout of `experiments` (a pairing, or COMMITTED: the world as it is),
    a seed's jobs trained together as in a sweep: one row per job (trial, dataset, seed, held-out split)."""
    from dualprompt.config import Config
    from dualprompt.experiment import JobRequest
    from dualprompt.protocols import get_protocol

    objective = get_protocol("base2new").search.objective
    rows = []
    for layout, experiment in experiments.items():
        for seed in seeds:
            cfgs = [Config.from_flat({**fields, **overrides, "dataset": d, "seed": seed}) for d in datasets]
            requests = [(cfg, f) for cfg in cfgs for f in range(N_FOLDS)]
            results = experiment.run_jointly([JobRequest(cfg, "search", fold=f) for cfg, f in requests])
            rows += [{"trial_id": trial_id, "layout": layout, "dataset": cfg.data.dataset, "seed": seed,
                      "split": committed_split(f) if layout == COMMITTED else held_out(layout, f),
                      "objective": job_metrics(result)[objective]}
                     for (cfg, f), result in zip(requests, results, strict=True)]
    return rows


def committed_rows(rows: pd.DataFrame, trial_ids: list[str]) -> list[dict]:
    """The sweep's own search jobs of `trial_ids` in the same shape (split = the block each fold holds out)."""
    from dualprompt.protocols import get_protocol

    objective = get_protocol("base2new").search.objective
    search = rows[(rows["stage"] == "search") & rows["trial_id"].isin(trial_ids)]
    return [{"trial_id": r.trial_id, "layout": COMMITTED, "dataset": r.dataset, "seed": int(r.seed),
             "split": committed_split(int(r.fold)), "objective": float(getattr(r, objective))}
            for r in search.itertuples()]


def split_tables(jobs: pd.DataFrame, seeds: tuple[int, ...]) -> dict[str, pd.DataFrame]:
    """Each trial's objective on each split alone, over its datasets: [trial, split] for the committed layout
    (all seeds), the quarters layout on all seeds and on the first seed alone; the trials both layouts hold,
    in one order (a bootstrap resamples rows of all three alike)."""
    def table(kept: pd.DataFrame) -> pd.DataFrame:
        return kept.groupby(["trial_id", "split"])["objective"].mean().unstack()

    committed, quarters = jobs[jobs["layout"] == COMMITTED], jobs[jobs["layout"] != COMMITTED]
    trials = sorted(set(committed["trial_id"]) & set(quarters["trial_id"]))
    return {COMMITTED: table(committed).loc[trials], "all seeds": table(quarters).loc[trials],
            "first seed": table(quarters[quarters["seed"] == seeds[0]]).loc[trials]}


def split_agreements(table: pd.DataFrame) -> tuple[float, float]:
    """Mean Spearman over pairs of splits with no held-out class in common, and over pairs sharing some."""
    from dualprompt.validity import spearman

    disjoint, shared = [], []
    for a, b in combinations(table.columns, 2):
        (shared if set(a) & set(b) else disjoint).append(spearman(table[a], table[b]))
    return (float(np.mean(disjoint)) if disjoint else math.nan), (float(np.mean(shared)) if shared else math.nan)


def cells_of(jobs: pd.DataFrame) -> pd.DataFrame:
    """Each trial's objective in each cell (dataset, split, seed) alone, for `validity.cell_agreements`."""
    cells = ["dataset", "split", "seed"]
    return jobs.groupby(["trial_id", *cells])["objective"].mean().unstack(cells)


def class_reliability(disjoint: float, shared: float, folds: int) -> float:
    """Reliability, with respect to the held-out classes, of the mean over `folds` folds that hold out every
    block equally often, from how alike folds without (r_d) and with (r_s) a held-out block in common rank.

    Model (unit variance per fold): a fold's objective is the configuration's own value (variance r_d, all
    that two disjoint folds share), plus half of each of its two held-out blocks' effects (a block's effect
    has variance v: two folds sharing a block share v / 4, so v / 4 = r_s - r_d), plus what no two folds
    share (1 - r_d - v / 2). The mean over the folds has every block's effect at weight 1/4 (v / 4 in all)
    and the rest divided by the folds: r_d / (r_d + (r_s - r_d) + (1 - 2 r_s + r_d) / folds). With two
    complementary folds this is the Spearman-Brown value of r_d, whatever r_s is; 0 where r_d <= 0."""
    if math.isnan(disjoint):
        return math.nan
    if disjoint <= 0:
        return 0.0
    shared = disjoint if folds == 2 or math.isnan(shared) else shared
    return min(1.0, disjoint / (shared + (1 - 2 * shared + disjoint) / folds))


def designs(tables: dict[str, pd.DataFrame], seeds: tuple[int, ...]) -> dict[str, tuple[int, float, float]]:
    """design -> (jobs per dataset and trial, agreement of folds with no held-out class in common, reliability
    of the design's mean): the committed layout's two folds, and the quarters layout's 2, 4 and 6 folds."""
    r_committed, _ = split_agreements(tables[COMMITTED])
    out = {f"committed: {N_FOLDS} folds x {_count(len(seeds), 'seed')}": (
        N_FOLDS * len(seeds), r_committed, class_reliability(r_committed, math.nan, N_FOLDS))}
    for folds, which in ((2, "all seeds"), (4, "first seed"), (6, "first seed"), (6, "all seeds")):
        used = len(seeds) if which == "all seeds" else 1
        if folds == 2:  # one pairing's two folds: their agreement, averaged over the three pairings
            r_d = float(np.mean([split_agreements(tables[which][[held_out(p, 0), held_out(p, 1)]])[0]
                                 for p in PAIRINGS]))
            r_s = math.nan
        else:
            r_d, r_s = split_agreements(tables[which][[held_out(p, f) for p in PAIRINGS[: folds // 2]
                                                       for f in range(N_FOLDS)]])
        name = f"quarters: {folds} folds x {_count(used, 'seed')}"
        out[name] = (folds * used, r_d, class_reliability(r_d, r_s, folds))
    return out


def model_check(jobs: pd.DataFrame, agreements: dict[str, float], seeds: int) -> str:
    """The committed folds' agreement over k of the datasets (mean over every subset of k) next to what the
    cell study predicts for it: the two fold means share the configuration's effect g and their datasets' d,
    so r(k) = (g + d / k) / (g + d / k + c / k + n / (k S))."""
    from dualprompt.validity import spearman, variance_shares

    committed = jobs[jobs["layout"] == COMMITTED]
    names = sorted(committed["dataset"].unique())
    g, d, c, n = variance_shares(agreements)
    parts = []
    for k in range(1, len(names) + 1):
        measured = []
        for subset in combinations(names, k):
            table = committed[committed["dataset"].isin(subset)].groupby(["trial_id", "split"])["objective"].mean()
            measured.append(spearman(table.unstack()["A"], table.unstack()["B"]))
        shared = g + d / k
        parts.append(f"{k}: {np.mean(measured):.2f} ({shared / (shared + c / k + n / (k * seeds)):.2f})")
    return ("The committed folds' agreement over k datasets, measured (predicted by the cell study): "
            + ", ".join(parts) + ".")


def _datasets_needed(agreements: dict[str, float], datasets: int, seeds: int) -> str:
    """The committed search's reliability over other datasets' classes, and how many datasets 0.6 would take."""
    from dualprompt.validity import datasets_needed, design_reliability

    design = f"a committed search of {_count(datasets, 'dataset')} x {N_FOLDS} folds x {_count(seeds, 'seed')}"
    reliability = design_reliability(agreements, datasets, N_FOLDS, seeds)
    if math.isnan(reliability):
        return f"The reliability of {design} needs cells of two or more datasets and seeds to estimate."
    needed = datasets_needed(agreements, N_FOLDS, seeds)
    return (f"So {design} has reliability {reliability:.2f} with respect to other datasets' classes "
            "(`validity.design_reliability`); 0.6 (a bound of 0.77) would take "
            + (f"{needed} such datasets." if needed else "more than 1,000 such datasets."))


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def bootstrap(tables: dict[str, pd.DataFrame], seeds: tuple[int, ...], resamples: int = RESAMPLES) -> dict:
    """design -> 95% percentile intervals of its agreement, its reliability and its reliability minus the
    committed layout's, resampling the trials (the same resample for every design: paired differences)."""
    rng = np.random.default_rng(0)
    n = len(tables[COMMITTED])
    values: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(resamples):
        rows = rng.integers(0, n, size=n)
        measured = designs({k: t.iloc[rows] for k, t in tables.items()}, seeds)
        committed = next(iter(measured.values()))[2]
        for name, (_, r_d, rel) in measured.items():
            values.setdefault(name, []).append((r_d, rel, rel - committed))
    return {name: [tuple(np.nanpercentile(column, [2.5, 97.5])) for column in zip(*v, strict=True)]
            for name, v in values.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.world.folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="a finished base-to-new sweep's folder: its complete search trials, its "
                        "search seeds and its own folds' rows")
    parser.add_argument("--shard", default="1/1", help="I/N: only every N-th trial by objective rank, from the I-th "
                        "(run N processes side by side, then --from-json on their files; default 1/1)")
    parser.add_argument("--data-root", help="data root (default $DUALPROMPT_DATA_ROOT or ~/.cache/dualprompt/data)")
    parser.add_argument("--cache-dir", help="feature cache (default $DUALPROMPT_CACHE_DIR or "
                        "~/.cache/dualprompt/features)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="also write every job's objective to this file, rewritten after each trial")
    parser.add_argument("--from-json", nargs="+", metavar="FILE", help="summarise files that --json wrote (one or "
                        "more shards) instead of training")
    parser.add_argument("--smoke", action="store_true", help="four configurations, 1 dataset, 2 seeds, 2 epochs, "
                        "4 shots; the committed layout's folds trained too")
    args = parser.parse_args(argv)
    if args.from_json:
        missing = [path for path in args.from_json if not Path(path).is_file()]
        if args.sweep or args.smoke:
            parser.error("--from-json: it re-reads finished runs; drop --sweep and --smoke.")
        if missing:
            parser.error(f"--from-json: {missing[0]} is not a file; pass files that `--json` wrote.")
        return args
    if not args.smoke and not (args.sweep and Path(args.sweep).is_dir()):
        parser.error("--sweep: name a finished base-to-new sweep's folder (e.g. results/base2new/example), or pass "
                     "--smoke or --from-json.")
    parts = args.shard.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
        parser.error(f"--shard: {args.shard!r} is not I/N with 1 <= I <= N (e.g. 1/2).")
    args.shard = (int(parts[0]), int(parts[1]))
    if args.threads < 1:
        parser.error("--threads must be at least 1.")
    return args


def sweep_trials(folder: str, shard: tuple[int, int]) -> tuple[dict[str, dict], list[dict], tuple[int, ...]]:
    """The shard's complete search trials (trial_id -> settings, by objective rank), the sweep's own jobs of
    them and its search seeds."""
    rows, trials = ranked_complete_trials(folder)
    search = rows[rows["stage"] == "search"]
    index, count = shard
    trial_ids = list(trials["trial_id"])[index - 1 :: count]
    configs = {trial_id: trial_settings(search, trial_id) for trial_id in trial_ids}
    return configs, committed_rows(rows, trial_ids), tuple(sorted(int(s) for s in search["seed"].unique()))


def smoke_trials() -> dict[str, dict]:
    configs = smoke_configs()
    return {**configs, "other 3": {**configs["defaults"], "n_ctx": 4, "mi_weight": 0.5}}


def summarise(jobs: pd.DataFrame, configs: dict[str, dict], seeds: tuple[int, ...],
              resamples: int = RESAMPLES) -> str:
    """The designs' table, the cell study, then how each layout's whole objective ranks the trials against the
    other's and against their context lengths."""
    from dualprompt.validity import spearman

    tables = split_tables(jobs, seeds)
    _, r_shared = split_agreements(tables["all seeds"])
    committed, quarters = tables[COMMITTED].mean(axis=1), tables["all seeds"].mean(axis=1)
    n_ctx = pd.Series([configs[t]["n_ctx"] for t in committed.index], index=committed.index)
    lines = [f"{len(tables[COMMITTED])} trials, {_count(jobs['dataset'].nunique(), 'dataset')}, search seeds "
             f"{','.join(map(str, seeds))}; search jobs only (no test image). 95% intervals: {resamples} "
             "bootstrap resamples of the trials.", "", *designs_table(tables, seeds, resamples), "",
             *cell_lines(jobs[jobs["trial_id"].isin(committed.index)], len(seeds)), "",
             f"Quarters' folds sharing one held-out block agree at {r_shared:.2f} (all seeds). Over its folds "
             f"and seeds, the committed layout's objective ranks the trials against the quarters' at "
             f"{spearman(committed, quarters):.2f}; against the number of context vectors, the committed "
             f"layout's at {spearman(committed, n_ctx):.2f} and the quarters' at {spearman(quarters, n_ctx):.2f}."]
    return "\n".join(lines)


def designs_table(tables: dict[str, pd.DataFrame], seeds: tuple[int, ...], resamples: int) -> list[str]:
    """Per design: agreement of folds with no held-out class in common, reliability, its bound and the
    difference from the committed layout, each with its bootstrap interval over the trials."""
    measured, intervals = designs(tables, seeds), bootstrap(tables, seeds, resamples)
    committed = next(iter(measured.values()))[2]
    lines = ["| design | jobs a dataset | disjoint folds agree | reliability | bound | reliability - committed |",
             "|---|---|---|---|---|---|"]
    for name, (jobs_per, r_d, rel) in measured.items():
        (r_lo, r_hi), (l_lo, l_hi), (d_lo, d_hi) = intervals[name]
        lines.append(f"| {name} | {jobs_per} | {r_d:.2f} ({r_lo:.2f} to {r_hi:.2f}) | {rel:.2f} ({l_lo:.2f} to "
                     f"{l_hi:.2f}) | {math.sqrt(rel):.2f} | {rel - committed:+.2f} ({d_lo:+.2f} to {d_hi:+.2f}) |")
    return lines


def cell_lines(jobs: pd.DataFrame, seeds: int) -> list[str]:
    """What one cell of each layout shares, the committed search's reliability and datasets needed, and the
    committed folds' agreement over k datasets beside its prediction."""
    from dualprompt.validity import cell_agreements

    lines, shares = [], {}
    for layout, kept in (("committed layout", jobs[jobs["layout"] == COMMITTED]),
                         ("quarters", jobs[jobs["layout"] != COMMITTED])):
        shares[layout] = cells = cell_agreements(cells_of(kept))
        lines.append(f"One cell of the {layout} (a dataset, fold and seed) ranks the trials as the same cell on "
                     f"another seed at {cells['another seed']:.2f}, as another fold of its dataset at "
                     f"{cells['another fold']:.2f}, as another dataset's cells at "
                     f"{cells['another dataset']:.2f} (pairs on different seeds).")
    lines.append(_datasets_needed(shares["committed layout"], jobs["dataset"].nunique(), seeds))
    if not any(math.isnan(share) for share in shares["committed layout"].values()):
        lines.append(model_check(jobs, shares["committed layout"], seeds))
    return lines


def read_records(paths: list[str]) -> tuple[pd.DataFrame, dict[str, dict], tuple[int, ...], int]:
    """Every job of files that `--json` wrote, their trials' settings, search seeds and bootstrap resamples; a
    file of another shape is one sentence."""
    from dualprompt.errors import UsageError

    jobs, configs, seeds, resamples = [], {}, set(), RESAMPLES
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            jobs += list(record["jobs"])
            configs.update(record["configs"])
            seeds.add(tuple(record["seeds"]))
            resamples = int(record.get("resamples", RESAMPLES))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(f"--from-json: {path} is not a file that `world.folds --json` wrote ({error!r}); pass "
                             "such files.") from error
    if len(seeds) != 1:
        raise UsageError(f"--from-json: the files ran different search seeds ({sorted(seeds)}); summarise one run's "
                         "shards together.")
    return pd.DataFrame(jobs), configs, seeds.pop(), resamples


def main(argv: list[str] | None = None) -> int:
    from dualprompt.errors import DualpromptError

    args = parse_args(argv)
    try:
        if args.from_json:
            print(summarise(*read_records(args.from_json)))
            return 0
        return run(args)
    except DualpromptError as error:
        print(f"python -m dualprompt.world.folds: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.data.synthetic import BASE_TO_NEW_DATASETS
    from dualprompt.experiment import Experiment
    from dualprompt.storage import write_bytes_atomically

    torch.set_num_threads(args.threads)
    overrides = machine_paths(args)
    if args.smoke:
        configs, jobs, seeds, datasets = smoke_trials(), [], (1, 2), SMOKE["datasets"]
    else:
        (configs, jobs, seeds), datasets = sweep_trials(args.sweep, args.shard), BASE_TO_NEW_DATASETS
    backbone = load_backbone(Config.from_flat({**next(iter(configs.values())), **overrides}).backbone)
    experiments = {p: Experiment(backbone, relabel_to(quarters_order(p))) for p in PAIRINGS}
    if args.smoke:
        experiments[COMMITTED] = Experiment(backbone)
    print(f"{len(configs)} trials x search seeds {','.join(map(str, seeds))} x {len(datasets)} datasets x pairings "
          f"{', '.join(PAIRINGS)} of the quarters", flush=True)
    start, resamples = time.perf_counter(), 100 if args.smoke else RESAMPLES
    for done, (trial_id, fields) in enumerate(configs.items(), 1):
        jobs += run_trial(experiments, trial_id, fields, datasets, seeds, overrides)
        if args.json:  # after every trial, so an interrupted run keeps what it trained
            record = {"seeds": seeds, "datasets": datasets, "resamples": resamples, "configs": configs, "jobs": jobs}
            write_bytes_atomically(json.dumps(record, indent=1, default=str).encode(), args.json)
        print(f"trial {done}/{len(configs)} done, {time.perf_counter() - start:.0f} s", flush=True)
    print(summarise(pd.DataFrame(jobs), configs, seeds, resamples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
