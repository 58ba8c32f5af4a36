"""Does a sweep's search objective rank configurations as the final protocol does on other class draws?

    python -m dualprompt.world.draws --sweep results/base2new/example --configs 6 --seeds 2
    python -m dualprompt.world.draws --smoke             # 1 dataset, 2 draws, 2 epochs, 4 shots: seconds
    python -m dualprompt.world.draws --from-json results/world/draws-9class-5seeds-*.json   # re-read, no training

Every base-to-new dataset of the offline world has four word-disjoint blocks of 9 classes, A B C D in label
order (`dualprompt.world.vocab`); the protocol makes A+B the base classes (pseudo-base A, pseudo-new B, and
the swap) and C+D the new ones. Any two blocks could have been base: the six choices (--draws, named by the
base blocks: AB is the world as committed) are six class draws of the same world, with the same images and
the same few-shot sample, each keeping the property that base and new share no word. For every draw and
configuration this runs the search stage's jobs (both folds) and the final stage's jobs through the
project's own runner, and prints per draw the objective next to the final Average base/new/HM,
Spearman(objective, final HM), Spearman(pseudo-new, final new), what the search bought (final HM of the
configuration with the highest objective minus the defaults') and, with two or more seeds, the noise
ceiling: the highest Spearman the two measures' seed noise would let a perfect objective show; then each
over draws (mean ± std).

Configurations: the sweep's dual-view defaults and `--configs` of its complete search trials at evenly
spaced ranks of their objective (the best first; a rank that is the defaults' own trial runs once, as the
defaults), each with the sweep's own settings. `--block 2x2`
keeps 2 colours x 2 shapes of every block (4 classes instead of 9, still word-disjoint; `2x3`: 6), to see
how the objective's validity depends on how many classes a block holds; `--json` keeps every job's
metrics, and `--from-json` prints the same tables and summary from one or more such files (draws run in
separate processes, summarised together) without training anything. This measures the
instrument and reads the true new classes' test images by design: never use it to choose a configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import pandas as pd

from dualprompt.world.vocab import BLOCK_SIZE, BLOCKS

LETTERS = "ABCD"[:BLOCKS]
DRAWS = tuple("".join(pair) for pair in combinations(LETTERS, 2))  # AB AC AD BC BD CD
CLASSES_PER_BLOCK = BLOCK_SIZE * BLOCK_SIZE
N_FOLDS = 2  # class folds of one search trial: pseudo-base A / pseudo-new B, and the swap
VARIED = ("dataset", "seed")  # what a draw's jobs vary; never a configuration's setting
SMOKE = {"datasets": ("synthetic_blurry",), "draws": ("AB", "CD"), "seeds": (1,),
         "config": {"epochs": 2, "shots": 4, "n_views": 2}}


FULL_BLOCK = (BLOCK_SIZE, BLOCK_SIZE)  # colours x shapes of a block


def smoke_configs() -> dict[str, dict]:
    """The smoke runs' configurations: the offline dual-view defaults at the smoke budget and two others."""
    from dualprompt.config import Config
    from dualprompt.data.synthetic import OFFLINE_TRAINING

    defaults = {**Config().to_flat(), **OFFLINE_TRAINING, "method": "dualprompt", **SMOKE["config"]}
    return {"defaults": defaults, "other 1": {**defaults, "n_ctx": 8, "mi_weight": 2.0},
            "other 2": {**defaults, "n_ctx": 2, "aug_strength": 0.0}}


def block_labels(letter: str, block: tuple[int, int] = FULL_BLOCK) -> list[int]:
    """Labels of block `letter` of the committed layout, keeping its first colours x first shapes where `block`
    = (colours, shapes) is smaller than the layout's (a block's labels are colour-major)."""
    colours, shapes = block
    return [LETTERS.index(letter) * CLASSES_PER_BLOCK + colour * BLOCK_SIZE + shape
            for colour in range(colours) for shape in range(shapes)]


def block_order(draw: str, block: tuple[int, int] = FULL_BLOCK) -> list[int]:
    """Labels of the committed layout in the order that makes `draw`'s two blocks base (first, in the
    order named, so fold 0's pseudo-base is the first letter) and the other two new. With `block` smaller
    than the layout's, each block keeps only its first colours x first shapes: a world of smaller blocks
    with the same properties."""
    blocks = list(draw) + [b for b in LETTERS if b not in draw]
    return [label for b in blocks for label in block_labels(b, block)]


def relabel_for(draw: str, block: tuple[int, int] = FULL_BLOCK):
    """The `Experiment(relabel=...)` function of a draw."""
    return relabel_to(block_order(draw, block))


def relabel_to(order: list[int]):
    """The `Experiment(relabel=...)` function that keeps the committed layout's labels `order`, in that order;
    a dataset of another size is one sentence."""
    from dualprompt.data.errors import DataError
    from dualprompt.data.sampling import restrict_to_labels

    expected = BLOCKS * CLASSES_PER_BLOCK

    def relabel(splits):
        if len(splits.classnames) != expected:
            raise DataError(f"{splits.name} has {len(splits.classnames)} classes, not the {expected} of the "
                            "offline world's four-block layout; class draws apply to the base-to-new "
                            "synthetic datasets only.")
        return restrict_to_labels(splits, order)

    return relabel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.world.draws", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="a finished base-to-new sweep's folder (its search rows name the "
                        "configurations)")
    parser.add_argument("--configs", type=int, default=6, help="searched configurations, at evenly spaced "
                        "objective ranks, besides the defaults (default 6; one fewer where the defaults' own "
                        "trial is among them)")
    parser.add_argument("--seeds", type=int, default=2, help="few-shot seeds 1..N (default 2)")
    parser.add_argument("--draws", help=f"comma-separated draws (default {','.join(DRAWS)}; with --from-json, every "
                        "draw the files hold)")
    parser.add_argument("--datasets", help="comma-separated datasets (default: BASE_TO_NEW_DATASETS)")
    parser.add_argument("--data-root", help="data root (default $DUALPROMPT_DATA_ROOT or ~/.cache/dualprompt/data)")
    parser.add_argument("--cache-dir", help="feature cache (default $DUALPROMPT_CACHE_DIR or "
                        "~/.cache/dualprompt/features)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--block", default=f"{BLOCK_SIZE}x{BLOCK_SIZE}",
                        help=f"COLOURSxSHAPES of each block to keep, 2 to {BLOCK_SIZE} each (default "
                        f"{BLOCK_SIZE}x{BLOCK_SIZE}, the whole block): smaller blocks, to see how validity depends "
                        "on a block's classes")
    parser.add_argument("--json", help="also write every job's metrics (draw, configuration, dataset, seed, stage, "
                        "fold) to this file, rewritten after each draw")
    parser.add_argument("--objective-seeds", help="comma-separated counts K of search seeds: also print, per draw, "
                        "Spearman(objective on K seeds, final HM on all), averaged over every K of the seeds (how "
                        "the objective's validity grows with a sweep's --search-seeds)")
    parser.add_argument("--from-json", nargs="+", metavar="FILE", help="summarise the jobs that earlier runs' --json "
                        "wrote (one or more files, each draw in one of them) instead of running any")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field "
                        "in every configuration (e.g. ctx_fill=random: the sweep's configurations with another fill)")
    parser.add_argument("--smoke", action="store_true", help="the offline defaults and two other configurations, "
                        "1 dataset, 2 draws, 1 seed, 2 epochs, 4 shots")
    args = parser.parse_args(argv)
    from dualprompt.config import MACHINE_LOCAL_FIELDS, ConfigError, parse_assignment

    try:
        args.set = dict(parse_assignment(pair) for pair in args.set)
    except ConfigError as error:
        parser.error(f"--set: {error}")
    if set(VARIED) & set(args.set):
        parser.error("--set: dataset and seed are what the draws vary; use --datasets and --seeds.")
    if set(MACHINE_LOCAL_FIELDS) & set(args.set):
        parser.error("--set: data_root and cache_dir are this machine's, not a configuration's; use --data-root and "
                     "--cache-dir.")
    args.draws = tuple(d.strip() for d in (args.draws or "").split(",") if d.strip()) or None
    counts = [c.strip() for c in (args.objective_seeds or "").split(",") if c.strip()]
    if not all(c.isdigit() and int(c) >= 1 for c in counts):
        parser.error(f"--objective-seeds: {args.objective_seeds!r} is not a comma-separated list of counts >= 1 "
                     "(e.g. 1,2,3).")
    args.objective_seeds = tuple(int(c) for c in counts)
    bad = [d for d in args.draws or () if d not in DRAWS]
    if bad:
        parser.error(f"--draws: {bad[0]!r} is not a draw; use two of the blocks {LETTERS} in order, e.g. "
                     f"{','.join(DRAWS)}.")
    if args.from_json:
        if args.sweep or args.smoke or args.set:
            parser.error("--from-json: it re-reads finished runs; drop --sweep, --smoke and --set, which start new "
                         "ones.")
        missing = [path for path in args.from_json if not Path(path).is_file()]
        if missing:
            parser.error(f"--from-json: {missing[0]} is not a file; pass files that `--json` wrote.")
        return args
    args.draws = args.draws or DRAWS
    if not args.smoke and not args.sweep:
        parser.error("--sweep: name a finished base-to-new sweep's folder (e.g. results/base2new/example), "
                     "or pass --smoke or --from-json.")
    if args.sweep and not Path(args.sweep).is_dir():
        parser.error(f"--sweep: {args.sweep} is not a folder; pass a sweep's results folder.")
    from dualprompt.data.synthetic import BASE_TO_NEW_DATASETS

    args.datasets = tuple(n.strip() for n in (args.datasets or "").split(",") if n.strip()) or BASE_TO_NEW_DATASETS
    unknown = [n for n in args.datasets if n not in BASE_TO_NEW_DATASETS]
    if unknown:
        parser.error(f"--datasets: {unknown[0]} has no class blocks; use some of {', '.join(BASE_TO_NEW_DATASETS)}.")
    sides = args.block.lower().split("x")
    if len(sides) != 2 or not all(side.isdigit() and 2 <= int(side) <= BLOCK_SIZE for side in sides):
        parser.error(f"--block: {args.block!r} is not COLOURSxSHAPES with each between 2 and {BLOCK_SIZE} (e.g. "
                     "2x3); a block needs two colours and two shapes so that no single word names a class.")
    args.block = (int(sides[0]), int(sides[1]))
    if args.configs < 1 or args.seeds < 1 or args.threads < 1:
        parser.error("--configs, --seeds and --threads must be at least 1.")
    if any(k > (len(SMOKE["seeds"]) if args.smoke else args.seeds) for k in args.objective_seeds):
        parser.error(f"--objective-seeds: {max(args.objective_seeds)} is more seeds than the run trains; lower it "
                     "or raise --seeds.")
    return args


def sweep_configs(folder: str, n: int) -> dict[str, dict]:
    """name -> flat Config fields: the sweep's defaults, then `n` complete search trials at evenly spaced
    objective ranks (best first), each with every setting its search rows recorded; a rank that is the
    defaults' own trial is left out (the defaults stand for it)."""
    from dualprompt.config import Config
    from dualprompt.tables import evenly_spaced_ranks, searched_params

    rows, trials = ranked_complete_trials(folder)
    search = rows[rows["stage"] == "search"]
    final_defaults = rows[(rows["stage"] == "final") & (rows["variant"] == "defaults")]
    if final_defaults.empty:  # a search without its final stage: the first search row, at Config's defaults
        defaults = {**flat_settings(search.iloc[0]), **{p: Config().to_flat()[p] for p in searched_params(rows)}}
    else:
        defaults = flat_settings(final_defaults.iloc[0])
    configs = {"defaults": defaults}
    searched = searched_params(rows)
    for rank in evenly_spaced_ranks(len(trials), n):
        fields = trial_settings(search, trials["trial_id"].iloc[rank])
        if all(fields.get(p) == defaults.get(p) for p in searched):
            continue  # the defaults' own search trial: trained once, as "defaults", so it counts once
        configs[f"rank {rank + 1}"] = fields
    return configs


def ranked_complete_trials(folder: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A base-to-new sweep's rows and its complete search trials, the highest objective first; a folder
    without such rows is one sentence."""
    from dualprompt.errors import UsageError
    from dualprompt.results import load_results
    from dualprompt.tables import search_trials

    rows = load_results(folder)
    search = rows[rows["stage"] == "search"]
    if search.empty or search["protocol"].iloc[0] != "base2new":
        raise UsageError(f"{folder}: no base-to-new search rows; pass the folder of a base2new sweep.")
    trials = search_trials(rows)
    return rows, trials[trials["complete"].astype(bool)].sort_values("objective", ascending=False)


def trial_settings(search: pd.DataFrame, trial_id: str) -> dict:
    """Flat Config fields of one search trial, as its first row recorded them."""
    return flat_settings(search[search["trial_id"] == trial_id].iloc[0])


def flat_settings(row: pd.Series) -> dict:
    """The Config fields a result row recorded, less what a draw varies and this machine's paths."""
    from dualprompt.config import FIELD_TYPE, MACHINE_LOCAL_FIELDS

    keep = [k for k in FIELD_TYPE if k in row and k not in (*VARIED, *MACHINE_LOCAL_FIELDS)]
    return {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in keep if not pd.isna(row[k])}


def configurations(args: argparse.Namespace) -> dict[str, dict]:
    """The configurations a run trains (the smoke's, or the sweep's), each with the `--set` overrides, so
    the JSON records them as trained."""
    configs = smoke_configs() if args.smoke else sweep_configs(args.sweep, args.configs)
    return {name: {**fields, **args.set} for name, fields in configs.items()}


def run_jobs(experiment, configs: dict[str, dict], datasets: tuple[str, ...], seeds: tuple[int, ...],
             overrides: dict) -> list[dict]:
    """Every job of one draw: the search stage's (both folds) and the final stage's, one dict of metrics each
    (stage, fold, configuration as `variant`, dataset, seed). A configuration's jobs of one seed and stage
    train together, as in a sweep's trial (`Experiment.run_jointly`), so the rows are a sweep's to the digit."""
    from dualprompt.config import Config
    from dualprompt.experiment import JobRequest

    jobs = []
    for name, fields in configs.items():
        for seed in seeds:
            cfgs = [Config.from_flat({**fields, **overrides, "dataset": d, "seed": seed}) for d in datasets]
            search = [(cfg, f) for cfg in cfgs for f in range(N_FOLDS)]
            results = experiment.run_jointly([JobRequest(cfg, "search", fold=f) for cfg, f in search])
            jobs += [{"variant": name, "dataset": cfg.data.dataset, "seed": seed, "stage": "search", "fold": f,
                      **job_metrics(result)} for (cfg, f), result in zip(search, results, strict=True)]
            results = experiment.run_jointly([JobRequest(cfg, "final") for cfg in cfgs])
            jobs += [{"variant": name, "dataset": cfg.data.dataset, "seed": seed, "stage": "final",
                      **job_metrics(result)} for cfg, result in zip(cfgs, results, strict=True)]
    return jobs


def machine_paths(args: argparse.Namespace) -> dict:
    """`--data-root` and `--cache-dir` as Config fields, where given: this machine's paths for every job."""
    return {k: v for k, v in (("data_root", args.data_root), ("cache_dir", args.cache_dir)) if v}


def job_metrics(result) -> dict:
    """A job's metrics; a failed job stops the measurement (a draw's table needs every job)."""
    if isinstance(result, Exception):
        raise result
    return result.metrics


def draw_table(jobs: list[dict]) -> pd.DataFrame:
    """One row per configuration (in the jobs' order): objective (mean HM over its search jobs), pseudo-base,
    pseudo-new, and the final Average base/new/HM (`tables.per_seed_average`, the sweep report's Average,
    then the mean over seeds)."""
    from dualprompt.tables import per_seed_average

    frame = pd.DataFrame(jobs)
    parts = frame[frame["stage"] == "search"].groupby("variant", sort=False).agg(
        objective=("hm_val", "mean"), pseudo_base=("acc_val_pseudobase", "mean"),
        pseudo_new=("acc_val_pseudonew", "mean"))
    average = per_seed_average(frame[frame["stage"] == "final"]).groupby("variant")[["base", "new", "hm"]].mean()
    return parts.join(average.add_prefix("final_")).rename_axis("config").reset_index()


def draw_summary(table: pd.DataFrame) -> dict[str, float]:
    """What one draw says about the objective: rank agreement and what the search bought."""
    from dualprompt.validity import spearman

    searched = table[table["config"] != "defaults"]
    best = searched.sort_values("objective", ascending=False).iloc[0]
    defaults = table[table["config"] == "defaults"].iloc[0]
    return {"spearman_objective_final_hm": spearman(table["objective"], table["final_hm"]),
            "spearman_pseudo_new_final_new": spearman(table["pseudo_new"], table["final_new"]),
            "spearman_pseudo_base_final_base": spearman(table["pseudo_base"], table["final_base"]),
            "best_minus_defaults_objective": best["objective"] - defaults["objective"],
            "best_minus_defaults_final_hm": best["final_hm"] - defaults["final_hm"]}


def per_seed_measures(jobs: list[dict]) -> dict[str, pd.DataFrame]:
    """The objective (mean over a seed's search jobs) and the final Average HM, each [configuration, seed]."""
    from dualprompt.tables import per_seed_average

    frame = pd.DataFrame(jobs)
    return {
        "objective": frame[frame["stage"] == "search"].groupby(["variant", "seed"])["hm_val"].mean().unstack(),
        "final": per_seed_average(frame[frame["stage"] == "final"]).set_index(["variant", "seed"])["hm"].unstack(),
    }


def spread_and_noise(jobs: list[dict]) -> dict[str, tuple[float, float]]:
    """For the objective and the final HM: (variance of the configurations' means over seeds, the variance
    one such mean has from the seed noise that can reorder them: `validity.seed_noise`, paired, since every
    configuration runs the same seeds). The noise is NaN with one seed."""
    from dualprompt.validity import seed_noise

    out = {}
    for name, table in per_seed_measures(jobs).items():
        means = table.mean(axis=1)
        out[name] = (means.var(ddof=1) if len(means) >= 3 else float("nan"), seed_noise(table, paired=True))
    return out


def ceiling_from(parts: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each measure's reliability (`validity.share_beyond_noise`) and the highest Spearman(objective, final
    HM) that their noise allows (`validity.noise_ceiling`)."""
    from dualprompt.validity import noise_ceiling, share_beyond_noise

    out = {f"reliability_{name}": share_beyond_noise(*parts[name]) for name in ("objective", "final")}
    out["noise_ceiling"] = noise_ceiling(out["reliability_objective"], out["reliability_final"])
    return out


def objective_seed_validity(jobs: list[dict], k: int) -> float:
    """Spearman(objective over k seeds' search jobs, final HM over all seeds), averaged over every k-subset of
    the seeds: what a search with k seeds per trial would have predicted, the final HM held fixed."""
    from dualprompt.validity import spearman

    measures = per_seed_measures(jobs)
    objective, final = measures["objective"], measures["final"].mean(axis=1).reindex(measures["objective"].index)
    subsets = list(combinations(objective.columns, k))
    return float(pd.Series([spearman(objective[list(c)].mean(axis=1), final) for c in subsets]).mean())


def draw_reliability(jobs: list[dict]) -> dict[str, float]:
    """How much of the configurations' spread in the objective and in the final HM is more than seed noise,
    and the highest Spearman(objective, final HM) that noise allows. NaN with one seed."""
    return ceiling_from(spread_and_noise(jobs))


def folds_agreement(jobs: list[dict]) -> float:
    """Spearman between the objective's two folds (each holds out the other base block) over the configurations:
    the validation side's own measure of how far a ranking carries to other held-out classes."""
    from dualprompt.validity import agreement

    search = pd.DataFrame(jobs).query("stage == 'search'")
    return agreement(search.groupby(["variant", "fold"])["hm_val"].mean().unstack())  # [config, fold]


def summarise_draw(jobs: list[dict], objective_seeds: tuple[int, ...]) -> tuple[pd.DataFrame, dict[str, float]]:
    """A draw's table and everything printed about it."""
    table = draw_table(jobs)
    summary = {**draw_summary(table), **draw_reliability(jobs), "spearman_fold_0_fold_1": folds_agreement(jobs)}
    summary.update({f"spearman_objective_{k}_seeds_final_hm": objective_seed_validity(jobs, k)
                    for k in objective_seeds})
    return table, summary


def pooled_reliability(jobs_by_draw: dict[str, list[dict]]) -> dict[str, float]:
    """`draw_reliability` with each measure's spread and seed noise averaged over the draws first: the
    ceiling of the measurement as a whole, steadier than the per-draw ceilings' mean."""
    parts = [spread_and_noise(jobs) for jobs in jobs_by_draw.values()]
    return ceiling_from({name: tuple(pd.Series([p[name][i] for p in parts], dtype="float64").mean()
                                     for i in (0, 1)) for name in ("objective", "final")})


def between_draws(tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """How alike the draws (other classes new) rank the configurations, from each draw's `draw_table`: the
    mean Spearman over pairs of draws of the final HM and of the objective, and Spearman of the two, each
    averaged over the draws first. One draw's final HM is one sample of new classes; where two draws' finals
    rank the configurations unalike, no objective can agree with one draw's final by more than that, however
    valid it is over draws."""
    from dualprompt.validity import agreement, spearman

    by_config = {draw: table.set_index("config") for draw, table in tables.items()}
    final = pd.DataFrame({draw: table["final_hm"] for draw, table in by_config.items()})  # [config, draw]
    objective = pd.DataFrame({draw: table["objective"] for draw, table in by_config.items()})
    return {"final_hm_draw_vs_draw": agreement(final), "objective_draw_vs_draw": agreement(objective),
            "mean_objective_vs_mean_final_hm": spearman(objective.mean(axis=1), final.mean(axis=1))}


def read_jobs(paths: list[str], draws: tuple[str, ...] | None) -> dict[str, list[dict]]:
    """draw -> its jobs, from files that `--json` wrote, in the order of DRAWS. Every file must come from the
    same configurations, datasets and seeds, and hold each draw at most once across the files."""
    from dualprompt.errors import UsageError

    by_draw, source, first = {}, {}, None
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            setup = {k: record[k] for k in ("configs", "datasets", "seeds")}
            rows = record["rows"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(f"--from-json: {path} is not a file that `world.draws --json` wrote ({error!r}); "
                             "pass such files.") from error
        if first is None:
            first = (path, setup)
        elif setup != first[1]:
            raise UsageError(f"--from-json: {path} and {first[0]} ran different configurations, datasets or "
                             "seeds; summarise them separately.")
        for draw in sorted({row.get("draw") for row in rows if isinstance(row, dict)}):
            if draw not in DRAWS:
                raise UsageError(f"--from-json: {path} holds rows whose draw is {draw!r}, not one of "
                                 f"{','.join(DRAWS)}; pass files that `world.draws --json` wrote.")
            if draw in source:
                raise UsageError(f"--from-json: draw {draw} is in both {source[draw]} and {path}; pass each "
                                 "draw's file once.")
            source[draw] = path
            by_draw[draw] = [{k: v for k, v in row.items() if k != "draw"} for row in rows if row["draw"] == draw]
    missing = [d for d in draws or () if d not in by_draw]
    if missing:
        raise UsageError(f"--draws: {missing[0]} is in none of the --from-json files; they hold "
                         f"{','.join(sorted(by_draw))}.")
    return {d: by_draw[d] for d in DRAWS if d in by_draw and (draws is None or d in draws)}


def print_draw(draw: str, table: pd.DataFrame, summary: dict[str, float], note: str) -> None:
    from dualprompt.report import frame_markdown
    from dualprompt.validity import spearman_interval

    print(f"\nDraw {draw} (base = blocks {' + '.join(draw)}{note}):\n")
    print(frame_markdown(table.round(2)))
    print(f"  draw {draw}: " + "; ".join(f"{k} {v:+.2f}" for k, v in summary.items()))
    low, high = spearman_interval(summary["spearman_objective_final_hm"], len(table))
    print(f"  draw {draw}: 95% interval of Spearman(objective, final HM) over {len(table)} configurations: "
          f"{low:+.2f} to {high:+.2f} (Fisher's z)", flush=True)


def print_over_draws(summaries: dict[str, dict[str, float]], jobs_by_draw: dict[str, list[dict]],
                     tables: dict[str, pd.DataFrame]) -> None:
    print(f"\nOver {len(summaries)} draws (mean ± std):\n")
    for key in next(iter(summaries.values())):
        values = pd.Series([s[key] for s in summaries.values()], dtype="float64")
        print(f"  {key:<38} {values.mean():+6.2f} ± {values.std():4.2f}   "
              + "  ".join(f"{d} {s[key]:+.2f}" for d, s in summaries.items()))
    pooled = pooled_reliability(jobs_by_draw)
    print("\nPooled over the draws (spreads and seed noise averaged first): "
          + "; ".join(f"{k} {v:.2f}" for k, v in pooled.items()))
    if len(jobs_by_draw) > 1:
        between = between_draws(tables)
        print(f"Between draws (mean Spearman over the {len(jobs_by_draw) * (len(jobs_by_draw) - 1) // 2} pairs): "
              + "; ".join(f"{k} {v:+.2f}" for k, v in between.items()))


def summarise(paths: list[str], draws: tuple[str, ...] | None, objective_seeds: tuple[int, ...]) -> int:
    """--from-json: every draw's table and the summary over draws, from saved jobs; nothing is trained."""
    from dualprompt.errors import UsageError

    jobs_by_draw = read_jobs(paths, draws)
    first = next(iter(jobs_by_draw.values()))
    seeds = sorted({job["seed"] for job in first})
    if any(k > len(seeds) for k in objective_seeds):
        raise UsageError(f"--objective-seeds: {max(objective_seeds)} is more seeds than the files hold "
                         f"({len(seeds)}); lower it.")
    datasets = list(dict.fromkeys(job["dataset"] for job in first))
    configs = list(dict.fromkeys(job["variant"] for job in first))
    print(f"Class draws {','.join(jobs_by_draw)} from {len(paths)} file(s) x {len(configs)} configurations "
          f"({', '.join(configs)}) x seeds {','.join(map(str, seeds))} x {len(datasets)} datasets")
    summaries, tables = {}, {}
    for draw, jobs in jobs_by_draw.items():
        tables[draw], summaries[draw] = summarise_draw(jobs, objective_seeds)
        print_draw(draw, tables[draw], summaries[draw], "")
    print_over_draws(summaries, jobs_by_draw, tables)
    return 0


def main(argv: list[str] | None = None) -> int:
    from dualprompt.errors import DualpromptError

    args = parse_args(argv)
    try:
        return summarise(args.from_json, args.draws, args.objective_seeds) if args.from_json else run(args)
    except DualpromptError as error:
        print(f"python -m dualprompt.world.draws: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Train every draw's jobs, printing each draw as it finishes, then the summary over draws."""
    import torch

    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.experiment import Experiment
    from dualprompt.storage import write_bytes_atomically

    torch.set_num_threads(args.threads)
    datasets, seeds, draws = args.datasets, tuple(range(1, args.seeds + 1)), args.draws
    overrides = machine_paths(args)
    if args.smoke:
        datasets, draws, seeds = SMOKE["datasets"], SMOKE["draws"], SMOKE["seeds"]
    configs = configurations(args)
    side = "" if args.block == FULL_BLOCK else f", blocks cut to {args.block[0]} colours x {args.block[1]} shapes"
    print(f"Class draws {','.join(draws)} (base blocks; AB is the committed world{side}) x {len(configs)} "
          f"configurations ({', '.join(configs)}) x seeds {','.join(map(str, seeds))} x {len(datasets)} datasets",
          flush=True)
    backbone = load_backbone(Config.from_flat({**configs["defaults"], **overrides}).backbone)
    summaries, jobs_by_draw, tables, start = {}, {}, {}, time.perf_counter()
    for draw in draws:
        jobs_by_draw[draw] = run_jobs(Experiment(backbone, relabel_for(draw, args.block)), configs, datasets, seeds,
                                      overrides)
        tables[draw], summaries[draw] = summarise_draw(jobs_by_draw[draw], args.objective_seeds)
        if args.json:  # after every draw, so an interrupted run keeps the draws it finished
            rows = [{"draw": d, **job} for d, jobs in jobs_by_draw.items() for job in jobs]
            record = {"configs": configs, "datasets": datasets, "seeds": seeds, "rows": rows}
            write_bytes_atomically(json.dumps(record, indent=1, default=str).encode(), args.json)
        print_draw(draw, tables[draw], summaries[draw], f"; {time.perf_counter() - start:.0f} s so far")
    print_over_draws(summaries, jobs_by_draw, tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
