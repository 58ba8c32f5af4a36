"""Which selection rule picks configurations that generalise, on class draws the search never saw?

    python -m dualprompt.world.picks --sweep results/base2new/example --json picks.json   # draws AC..CD
    python -m dualprompt.world.picks --from-json results/world/picks-*.json              # re-read, no training
    python -m dualprompt.world.picks --smoke                                             # seconds

A sweep searched on one class draw (AB, the world as committed). On each other draw (`world.draws`: the
same datasets and images, two other blocks as base) this scores every complete search trial of the sweep
as a search would (its configuration's search jobs, both folds, `--search-seeds`), lets each rule pick:
the highest objective, and the one-standard-error rule (`validity.one_se_choice`: the fewest context vectors
within one SE of the best, the SE being one trial's spread over its search seeds, or the best's binomial
SE with one seed), then trains the final stage of the dual-view defaults and of each pick over `--seeds`.
Printed per draw and over draws: each pick's final Average HM and the paired difference between the rules.
It reads the true new classes' test images by design: it measures the rules, never use it to choose a
configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from dualprompt.world.draws import (
    DRAWS,
    N_FOLDS,
    SMOKE,
    job_metrics,
    machine_paths,
    relabel_for,
    smoke_configs,
    sweep_configs,
)

RULES = ("highest", "one_se")
HELD_OUT = tuple(d for d in DRAWS if d != "AB")  # the draws a sweep of the committed world never saw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.world.picks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="a finished base-to-new sweep's folder (its complete search trials are the "
                        "candidates)")
    parser.add_argument("--draws", default=",".join(HELD_OUT),
                        help=f"comma-separated draws (default {','.join(HELD_OUT)})")
    parser.add_argument("--search-seeds", default="1,2", help="few-shot seeds of a search trial (default 1,2, the "
                        "offline sweep's)")
    parser.add_argument("--seeds", type=int, default=3, help="final-stage seeds 1..N (default 3)")
    parser.add_argument("--data-root", help="data root (default $DUALPROMPT_DATA_ROOT or ~/.cache/dualprompt/data)")
    parser.add_argument("--cache-dir", help="feature cache (default $DUALPROMPT_CACHE_DIR or "
                        "~/.cache/dualprompt/features)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="also write every job (and each draw's picks) to this file, after each draw")
    parser.add_argument("--from-json", nargs="+", metavar="FILE", help="summarise files that --json wrote")
    parser.add_argument("--smoke", action="store_true", help="3 configurations, 1 dataset, draws AC and BD, 2 epochs")
    args = parser.parse_args(argv)
    if args.from_json:
        missing = [p for p in args.from_json if not Path(p).is_file()]
        if missing or args.sweep or args.smoke:
            parser.error(f"--from-json: {missing[0]} is not a file." if missing else
                         "--from-json re-reads finished runs; drop --sweep and --smoke.")
        return args
    args.draws = tuple(d.strip() for d in args.draws.split(",") if d.strip())
    bad = [d for d in args.draws if d not in DRAWS]
    if bad:
        parser.error(f"--draws: {bad[0]!r} is not a draw; use some of {','.join(DRAWS)}.")
    try:
        args.search_seeds = tuple(int(s) for s in args.search_seeds.split(","))
    except ValueError:
        parser.error(f"--search-seeds: {args.search_seeds!r} is not comma-separated integers (e.g. 1,2).")
    if not args.smoke and not (args.sweep and Path(args.sweep).is_dir()):
        parser.error("--sweep: name a finished base-to-new sweep's folder (e.g. results/base2new/example), or pass "
                     "--smoke or --from-json.")
    if args.seeds < 1 or args.threads < 1 or len(set(args.search_seeds)) != len(args.search_seeds):
        parser.error("--seeds and --threads must be at least 1, and --search-seeds distinct.")
    return args


def pick(search: pd.DataFrame, configs: dict[str, dict]) -> dict:
    """Each rule's pick from one draw's search jobs (variant, seed, hm_val, hm_val_se), ranked as a sweep ranks
    trials (objective = mean over a configuration's jobs; ties: the earlier configuration)."""
    from dualprompt.evaluate import mean_se
    from dualprompt.validity import PARSIMONY, one_se_choice

    objective = search.groupby("variant")["hm_val"].mean().reindex(list(configs))
    ranked = objective.sort_values(ascending=False, kind="stable")
    best_jobs = search[search["variant"] == ranked.index[0]]
    best_se = mean_se(best_jobs["hm_val_se"].tolist()) if "hm_val_se" in best_jobs else math.nan
    sizes = pd.Series({name: configs[name].get(PARSIMONY) for name in ranked.index}, dtype="float64")
    chosen = one_se_choice(ranked, search.groupby(["variant", "seed"])["hm_val"].mean().unstack(), sizes, best_se)
    return {"highest": ranked.index[0], "one_se": chosen.trial_id, "se": chosen.se, "window": chosen.window,
            "objective": objective.to_dict()}


def run_draw(experiment, configs: dict[str, dict], datasets: tuple[str, ...], search_seeds: tuple[int, ...],
             final_seeds: tuple[int, ...], overrides: dict) -> list[dict]:
    """One draw: every configuration's search jobs, the picks, then the final jobs of the defaults and picks."""
    from dualprompt.config import Config
    from dualprompt.experiment import JobRequest

    def jobs(name: str, seed: int, stage: str) -> list[dict]:
        cfgs = [Config.from_flat({**configs[name], **overrides, "dataset": d, "seed": seed}) for d in datasets]
        requests = [(c, f) for c in cfgs for f in (range(N_FOLDS) if stage == "search" else (0,))]
        results = experiment.run_jointly([JobRequest(c, stage, fold=f) for c, f in requests])
        return [{"variant": name, "dataset": c.data.dataset, "seed": seed, "stage": stage, "fold": f,
                 **job_metrics(r), **r.standard_errors} for (c, f), r in zip(requests, results, strict=True)]

    rows = [row for name in configs for seed in search_seeds for row in jobs(name, seed, "search")]
    picks = pick(pd.DataFrame(rows), configs)
    for name in dict.fromkeys(["defaults", *(picks[rule] for rule in RULES)]):
        rows += [row for seed in final_seeds for row in jobs(name, seed, "final")]
    return rows + [{"stage": "picks", **picks}]


def draw_summary(rows: list[dict]) -> dict[str, float | str]:
    """Final Average HM (mean over seeds) of the defaults and each rule's pick, and the paired differences."""
    from dualprompt.tables import per_seed_average

    picks = next(r for r in rows if r["stage"] == "picks")
    final = per_seed_average(pd.DataFrame([r for r in rows if r["stage"] == "final"]))
    hm = final.set_index(["variant", "seed"])["hm"].unstack()
    out = {f"{rule}_pick": picks[rule] for rule in RULES} | {"se": picks["se"], "window": picks["window"]}
    out |= {"defaults_hm": hm.loc["defaults"].mean()} | {f"{rule}_hm": hm.loc[picks[rule]].mean() for rule in RULES}
    out["one_se_minus_highest"] = (hm.loc[picks["one_se"]] - hm.loc[picks["highest"]]).mean()
    out |= {f"{rule}_minus_defaults": (hm.loc[picks[rule]] - hm.loc["defaults"]).mean() for rule in RULES}
    return out


def print_summaries(summaries: dict[str, dict], configs: dict[str, dict]) -> None:
    for draw, s in summaries.items():
        sizes = {rule: configs[s[f"{rule}_pick"]].get("n_ctx") for rule in RULES}
        print(f"draw {draw}: SE {s['se']:.2f}, {s['window']} within one SE; highest objective: {s['highest_pick']} "
              f"(n_ctx {sizes['highest']}) final HM {s['highest_hm']:.2f}; one-SE: {s['one_se_pick']} (n_ctx "
              f"{sizes['one_se']}) {s['one_se_hm']:.2f}; defaults {s['defaults_hm']:.2f}", flush=True)
    print(f"\nOver {len(summaries)} draws (mean ± std; SE = std / sqrt(draws)):")
    for key in ("one_se_minus_highest", "highest_minus_defaults", "one_se_minus_defaults"):
        values = [s[key] for s in summaries.values()]
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        print(f"  {key:<24} {statistics.fmean(values):+6.2f} ± {std:4.2f} (SE {std / math.sqrt(len(values)):.2f})   "
              + "  ".join(f"{d} {v:+.2f}" for d, v in zip(summaries, values, strict=True)))


def read_records(paths: list[str]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """draw -> its rows, and the configurations, from files that `--json` wrote; a file of another shape is one
    sentence."""
    from dualprompt.errors import UsageError

    by_draw, configs = {}, {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            draws, named = dict(record["draws"]), dict(record["configs"])
            if not all(any(r.get("stage") == "picks" for r in rows) for rows in draws.values()):
                raise KeyError("picks")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"--from-json: {path} is not a file that `world.picks --json` wrote ({error!r}); pass "
                             "such files.") from error
        by_draw.update(draws)
        configs.update(named)
    return by_draw, configs


def main(argv: list[str] | None = None) -> int:
    from dualprompt.errors import DualpromptError

    args = parse_args(argv)
    try:
        if args.from_json:
            by_draw, configs = read_records(args.from_json)
            print_summaries({d: draw_summary(rows) for d, rows in by_draw.items()}, configs)
            return 0
        return run(args)
    except DualpromptError as error:
        print(f"python -m dualprompt.world.picks: error: {error}", file=sys.stderr)
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
    datasets, draws, seeds = BASE_TO_NEW_DATASETS, args.draws, tuple(range(1, args.seeds + 1))
    if args.smoke:
        datasets, draws, seeds, configs = SMOKE["datasets"], ("AC", "BD"), SMOKE["seeds"], smoke_configs()
    else:
        configs = sweep_configs(args.sweep, 10**6)  # the defaults, then every complete trial by objective rank
    print(f"Draws {','.join(draws)} x {len(configs)} configurations x search seeds "
          f"{','.join(map(str, args.search_seeds))} x {len(datasets)} datasets; finals on seeds 1-{len(seeds)}",
          flush=True)
    backbone = load_backbone(Config.from_flat({**configs["defaults"], **overrides}).backbone)
    by_draw, summaries, start = {}, {}, time.perf_counter()
    for draw in draws:
        by_draw[draw] = run_draw(Experiment(backbone, relabel_for(draw)), configs, datasets, args.search_seeds,
                                 seeds, overrides)
        summaries[draw] = draw_summary(by_draw[draw])
        if args.json:  # after every draw, so an interrupted run keeps the draws it finished
            record = {"configs": configs, "draws": by_draw}
            write_bytes_atomically(json.dumps(record, default=str).encode(), args.json)
        print(f"draw {draw} done, {time.perf_counter() - start:.0f} s", flush=True)
    print_summaries(summaries, configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
