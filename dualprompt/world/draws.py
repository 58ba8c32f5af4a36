"""Does a sweep's search objective rank configurations as the final protocol does on other class draws?

    python -m dualprompt.world.draws --sweep results/base2new/example --configs 6 --seeds 2
    python -m dualprompt.world.draws --smoke             # 1 dataset, 2 draws, 2 epochs, 4 shots: seconds

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
spaced ranks of their objective (the best first), each with the sweep's own settings. `--block 2x2`
keeps 2 colours x 2 shapes of every block (4 classes instead of 9, still word-disjoint; `2x3`: 6), to see
how the objective's validity depends on how many classes a block holds; `--json` keeps every job's
metrics. This measures the
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
N_FOLDS = 2
SMOKE = {"datasets": ("synthetic_blurry",), "draws": ("AB", "CD"), "seeds": (1,),
         "config": {"epochs": 2, "shots": 4, "n_views": 2}}


FULL_BLOCK = (BLOCK_SIZE, BLOCK_SIZE)  # colours x shapes of a block


def block_order(draw: str, block: tuple[int, int] = FULL_BLOCK) -> list[int]:
    """Labels of the committed layout in the order that makes `draw`'s two blocks base (first, in the
    order named, so fold 0's pseudo-base is the first letter) and the other two new. With `block` =
    (colours, shapes) smaller than the layout's, each block keeps only its first colours x first shapes (a
    block's labels are colour-major): a world of smaller blocks with the same properties."""
    blocks = list(draw) + [b for b in LETTERS if b not in draw]
    colours, shapes = block
    return [LETTERS.index(b) * CLASSES_PER_BLOCK + colour * BLOCK_SIZE + shape
            for b in blocks for colour in range(colours) for shape in range(shapes)]


def relabel_for(draw: str, block: tuple[int, int] = FULL_BLOCK):
    """The `Experiment(relabel=...)` function of a draw; a dataset of another size is one sentence."""
    from dualprompt.data.errors import DataError
    from dualprompt.data.sampling import restrict_to_labels

    order = block_order(draw, block)
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
                        "objective ranks, besides the defaults (default 6)")
    parser.add_argument("--seeds", type=int, default=2, help="few-shot seeds 1..N (default 2)")
    parser.add_argument("--draws", default=",".join(DRAWS), help=f"comma-separated draws (default {','.join(DRAWS)})")
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
    parser.add_argument("--smoke", action="store_true", help="the offline defaults and two other configurations, "
                        "1 dataset, 2 draws, 1 seed, 2 epochs, 4 shots")
    args = parser.parse_args(argv)
    args.draws = tuple(d.strip() for d in args.draws.split(",") if d.strip())
    bad = [d for d in args.draws if d not in DRAWS]
    if bad:
        parser.error(f"--draws: {bad[0]!r} is not a draw; use two of the blocks {LETTERS} in order, e.g. "
                     f"{','.join(DRAWS)}.")
    if not args.smoke and not args.sweep:
        parser.error("--sweep: name a finished base-to-new sweep's folder (e.g. results/base2new/example), "
                     "or pass --smoke.")
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
    return args


def sweep_configs(folder: str, n: int) -> dict[str, dict]:
    """name -> flat Config fields: the sweep's defaults, then `n` complete search trials at evenly spaced
    objective ranks (best first), each with every setting its search rows recorded."""
    from dualprompt.config import FIELD_TYPE, MACHINE_LOCAL_FIELDS, Config
    from dualprompt.errors import UsageError
    from dualprompt.results import load_results
    from dualprompt.tables import search_trials, searched_params

    rows = load_results(folder)
    search = rows[rows["stage"] == "search"]
    if search.empty or search["protocol"].iloc[0] != "base2new":
        raise UsageError(f"{folder}: no base-to-new search rows; pass the folder of a base2new sweep.")
    trials = search_trials(rows)
    trials = trials[trials["complete"].astype(bool)].sort_values("objective", ascending=False)
    ranks = sorted({round(i * (len(trials) - 1) / max(n - 1, 1)) for i in range(min(n, len(trials)))})
    keep = [k for k in FIELD_TYPE if k in search and k not in ("dataset", "seed", *MACHINE_LOCAL_FIELDS)]

    def flat(row: pd.Series) -> dict:
        return {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in keep if not pd.isna(row[k])}

    final_defaults = rows[(rows["stage"] == "final") & (rows["variant"] == "defaults")]
    if final_defaults.empty:  # a search without its final stage: the first search row, at Config's defaults
        defaults = {**flat(search.iloc[0]), **{p: Config().to_flat()[p] for p in searched_params(rows)}}
    else:
        defaults = flat(final_defaults.iloc[0])
    configs = {"defaults": defaults}
    for rank in ranks:
        trial_id = trials["trial_id"].iloc[rank]
        configs[f"rank {rank + 1}"] = flat(search[search["trial_id"] == trial_id].iloc[0])
    return configs


def run_draw(experiment, configs: dict[str, dict], datasets: tuple[str, ...], seeds: tuple[int, ...],
             overrides: dict) -> tuple[pd.DataFrame, list[dict]]:
    """One row per configuration: objective (mean HM over its search jobs), pseudo-base, pseudo-new, and
    the final Average base/new/HM (`tables.per_seed_average`, the sweep report's Average, then the mean
    over seeds); and every job's metrics, one dict each (stage, fold, configuration, dataset, seed)."""
    from dualprompt.config import Config
    from dualprompt.tables import per_seed_average

    search, final = [], []
    for name, fields in configs.items():
        for seed in seeds:
            for dataset in datasets:
                cfg = Config.from_flat({**fields, **overrides, "dataset": dataset, "seed": seed})
                job = {"variant": name, "dataset": dataset, "seed": seed}
                search += [{**job, "stage": "search", "fold": f, **experiment.run(cfg, "search", fold=f).metrics}
                           for f in range(N_FOLDS)]
                final.append({**job, "stage": "final", **experiment.run(cfg, "final").metrics})
    parts = pd.DataFrame(search).groupby("variant", sort=False).agg(
        objective=("hm_val", "mean"), pseudo_base=("acc_val_pseudobase", "mean"),
        pseudo_new=("acc_val_pseudonew", "mean"))
    average = per_seed_average(pd.DataFrame(final)).groupby("variant")[["base", "new", "hm"]].mean()
    return parts.join(average.add_prefix("final_")).rename_axis("config").reset_index(), search + final


def draw_summary(table: pd.DataFrame) -> dict[str, float]:
    """What one draw says about the objective: rank agreement and what the search bought."""
    from dualprompt.tables import spearman

    searched = table[table["config"] != "defaults"]
    best = searched.sort_values("objective", ascending=False).iloc[0]
    defaults = table[table["config"] == "defaults"].iloc[0]
    return {"spearman_objective_final_hm": spearman(table["objective"], table["final_hm"]),
            "spearman_pseudo_new_final_new": spearman(table["pseudo_new"], table["final_new"]),
            "spearman_pseudo_base_final_base": spearman(table["pseudo_base"], table["final_base"]),
            "best_minus_defaults_objective": best["objective"] - defaults["objective"],
            "best_minus_defaults_final_hm": best["final_hm"] - defaults["final_hm"]}


def draw_reliability(jobs: list[dict]) -> dict[str, float]:
    """How much of the configurations' spread in the objective and in the final HM is more than seed noise
    (`tables.reliability`, the noise being each configuration's variance over seeds divided by the seeds),
    and the highest Spearman(objective, final HM) that noise allows (`tables.noise_ceiling`). NaN with one
    seed."""
    from dualprompt.tables import noise_ceiling, per_seed_average, reliability

    frame = pd.DataFrame(jobs)
    per_seed = {  # [configuration, seed]
        "objective": frame[frame["stage"] == "search"].groupby(["variant", "seed"])["hm_val"].mean().unstack(),
        "final": per_seed_average(frame[frame["stage"] == "final"]).set_index(["variant", "seed"])["hm"].unstack(),
    }
    out = {}
    for name, table in per_seed.items():
        noise = table.var(axis=1, ddof=1).mean() / table.shape[1] if table.shape[1] > 1 else float("nan")
        out[f"reliability_{name}"] = reliability(table.mean(axis=1), noise)
    out["noise_ceiling"] = noise_ceiling(out["reliability_objective"], out["reliability_final"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.data.synthetic import OFFLINE_TRAINING
    from dualprompt.errors import DualpromptError
    from dualprompt.experiment import Experiment
    from dualprompt.report import frame_markdown
    from dualprompt.storage import write_bytes_atomically
    from dualprompt.tables import spearman_interval

    torch.set_num_threads(args.threads)
    datasets, seeds, draws = args.datasets, tuple(range(1, args.seeds + 1)), args.draws
    overrides = {k: v for k, v in (("data_root", args.data_root), ("cache_dir", args.cache_dir)) if v}
    try:
        if args.smoke:
            datasets, draws, seeds = SMOKE["datasets"], SMOKE["draws"], SMOKE["seeds"]
            defaults = {**Config().to_flat(), **OFFLINE_TRAINING, "method": "dualprompt", **SMOKE["config"]}
            configs = {"defaults": defaults, "other 1": {**defaults, "n_ctx": 8, "mi_weight": 2.0},
                       "other 2": {**defaults, "n_ctx": 2, "aug_strength": 0.0}}
        else:
            configs = sweep_configs(args.sweep, args.configs)
    except DualpromptError as error:
        print(f"python -m dualprompt.world.draws: error: {error}", file=sys.stderr)
        return 2
    side = "" if args.block == FULL_BLOCK else f", blocks cut to {args.block[0]} colours x {args.block[1]} shapes"
    print(f"Class draws {','.join(draws)} (base blocks; AB is the committed world{side}) x {len(configs)} "
          f"configurations ({', '.join(configs)}) x seeds {','.join(map(str, seeds))} x {len(datasets)} datasets",
          flush=True)
    backbone = load_backbone(Config.from_flat({**configs["defaults"], **overrides}).backbone)
    summaries, jobs, start = {}, [], time.perf_counter()
    for draw in draws:
        experiment = Experiment(backbone, relabel_for(draw, args.block))
        table, draw_jobs = run_draw(experiment, configs, datasets, seeds, overrides)
        summaries[draw] = {**draw_summary(table), **draw_reliability(draw_jobs)}
        jobs += [{"draw": draw, **job} for job in draw_jobs]
        if args.json:  # after every draw, so an interrupted run keeps the draws it finished
            record = {"configs": configs, "datasets": datasets, "seeds": seeds, "rows": jobs}
            write_bytes_atomically(json.dumps(record, indent=1, default=str).encode(), args.json)
        print(f"\nDraw {draw} (base = blocks {' + '.join(draw)}; {time.perf_counter() - start:.0f} s so far):\n")
        print(frame_markdown(table.round(2)))
        print(f"  draw {draw}: " + "; ".join(f"{k} {v:+.2f}" for k, v in summaries[draw].items()))
        low, high = spearman_interval(summaries[draw]["spearman_objective_final_hm"], len(table))
        print(f"  draw {draw}: 95% interval of Spearman(objective, final HM) over {len(table)} configurations: "
              f"{low:+.2f} to {high:+.2f} (Fisher's z)", flush=True)
    print(f"\nOver {len(draws)} draws (mean ± std):\n")
    for key in next(iter(summaries.values())):
        values = pd.Series([s[key] for s in summaries.values()], dtype="float64")
        print(f"  {key:<34} {values.mean():+6.2f} ± {values.std():4.2f}   "
              + "  ".join(f"{d} {s[key]:+.2f}" for d, s in summaries.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
