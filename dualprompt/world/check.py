"""Does the offline world show the field's regime? Trains the baselines and prints the criteria.

    python -m dualprompt.world.check --seeds 5          # the calibration check (tens of minutes on 2 CPUs)
    python -m dualprompt.world.check --smoke            # 1 dataset, 1 seed, 2 epochs, 4 shots: seconds
    python -m dualprompt.world.check --seeds 3 --draw CD    # another class draw: blocks C + D are base

For every default base-to-new dataset (`BASE_TO_NEW_DATASETS`) and few-shot seed it runs zero-shot CLIP,
CoOp and KgCoOp (weight 8) through the project's own job runner with the offline training budget
(`OFFLINE_TRAINING`), prints the per-dataset table and the Average rows (base/new/HM, mean +- std over
seeds; a seed's Average HM is the HM of its dataset-averaged base and new accuracies, as the field
reports it), then each criterion of the field's regime with its measured value, threshold and PASS/FAIL:

  - tuning raises base well above zero-shot:      CoOp base >= zero-shot base + 10
  - tuning loses new-class accuracy:              CoOp new  <= zero-shot new  - 3
  - knowledge guidance wins part of it back:      KgCoOp HM >= CoOp HM + 2
  - the Average row can be trusted:               seed std of every method's Average HM <= 1.0
  - one search trial's objective can be trusted:  its binomial standard error <= 1 HM point, for a trial
    averaging CoOp's search-stage HM over the datasets, the two class folds (pseudo-base A / pseudo-new B,
    and the swap) and the sweep's offline search seeds (two), from each job's accuracies and counts

Below the criteria, information rather than criteria: on how many datasets each of the first three effects
holds on its own (means over seeds), since an Average can pass on one dataset's effect.

Differences are paired by seed (the same few-shot sample), then averaged. Only the baselines run here:
the world is calibrated on them, never on the dual-view method. Exit code 1 if a criterion fails
(never with --smoke, whose budget cannot meet them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dualprompt.evaluate import harmonic_mean, mean_se
from dualprompt.sweep_cli import SEARCH_SEEDS_OFFLINE
from dualprompt.world.draws import DRAWS, N_FOLDS, relabel_for

METHODS = ("zeroshot", "coop", "kgcoop")
# The field's regime: (name, method a, method b, metric, threshold): a's metric minus b's must reach it.
REGIME = (("CoOp base - zero-shot base", "coop", "zeroshot", "base", 10.0),
          ("zero-shot new - CoOp new", "zeroshot", "coop", "new", 3.0),
          ("KgCoOp HM - CoOp HM", "kgcoop", "coop", "hm", 2.0))
METRIC_COLUMNS = {"base": "acc_test_base", "new": "acc_test_new", "hm": "hm_test"}


def method_labels(kg_weight: float) -> dict[str, str]:
    """Each method's name in the tables; KgCoOp's carries its weight (8, the field's, unless --set changes it)."""
    return {"zeroshot": "zero-shot CLIP", "coop": "CoOp", "kgcoop": f"KgCoOp (weight {kg_weight:g})"}


# The default sweep: 64 trials x 5 datasets x 2 folds (a quarter of the classes each) x the search seeds.
SWEEP_SEARCH_JOBS = 64 * 5 * N_FOLDS * len(SEARCH_SEEDS_OFFLINE)
SWEEP_FINAL_TRAINED_JOBS = 8 * 5 * 3  # about 9 variants (8 trained, zero-shot free) x 5 datasets x 3 seeds
SMOKE = {"datasets": ("synthetic_blurry",), "seeds": (1,), "config": {"epochs": 2, "shots": 4, "n_views": 2}}


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float
    spread: float  # std over seeds (nan where it does not apply)
    threshold: float
    higher_is_better: bool
    unit: str = "points"

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    @property
    def status(self) -> str:
        return "n/a " if math.isnan(self.value) else "PASS" if self.passed else "FAIL"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def fmt(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:5.1f} ± {std:3.1f}" if not math.isnan(std) else f"{mean:5.1f}      "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.world.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="few-shot seeds 1..N (default 5)")
    parser.add_argument("--datasets", help="comma-separated datasets (default: BASE_TO_NEW_DATASETS)")
    parser.add_argument("--epochs", type=int, help="override the budget's epochs")
    parser.add_argument("--shots", type=int, help="override the budget's shots")
    parser.add_argument("--batch-size", type=int, help="override the budget's batch size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any other config field, e.g. --set lr=0.004 (repeatable)")
    parser.add_argument("--pretrained", help="checkpoint of the tiny CLIP (default: the committed one)")
    parser.add_argument("--data-root", help="data root (default $DUALPROMPT_DATA_ROOT or ~/.cache/dualprompt/data)")
    parser.add_argument("--cache-dir", help="feature cache (default $DUALPROMPT_CACHE_DIR or "
                        "~/.cache/dualprompt/features)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-objective", action="store_true", help="skip the search-stage jobs (objective SE)")
    parser.add_argument("--draw", default="AB", help="which two of the four class blocks are base (default AB, "
                        "the world as committed; see python -m dualprompt.world.draws)")
    parser.add_argument("--json", type=Path, help="also write every job's metrics and timings to this file")
    parser.add_argument("--smoke", action="store_true", help="1 dataset, 1 seed, 2 epochs, 4 shots")
    args = parser.parse_args(argv)
    if args.draw not in DRAWS:
        parser.error(f"--draw: {args.draw!r} is not a class draw; use one of {', '.join(DRAWS)}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config, parse_assignment
    from dualprompt.data.synthetic import BASE_TO_NEW_DATASETS, GENERATOR_VERSION, OFFLINE_TRAINING
    from dualprompt.experiment import Experiment

    torch.set_num_threads(args.threads)
    overrides: dict = dict(OFFLINE_TRAINING)
    datasets = tuple(BASE_TO_NEW_DATASETS)
    seeds = tuple(range(1, args.seeds + 1))
    if args.smoke:
        overrides.update(SMOKE["config"])
        datasets, seeds = SMOKE["datasets"], SMOKE["seeds"]
    if args.datasets:
        datasets = tuple(name.strip() for name in args.datasets.split(",") if name.strip())
    for key, value in (("epochs", args.epochs), ("shots", args.shots), ("batch_size", args.batch_size)):
        if value is not None:
            overrides[key] = value
    for text in args.set:
        key, value = parse_assignment(text)
        overrides[key] = value
    for key, value in (("pretrained", args.pretrained), ("data_root", args.data_root), ("cache_dir", args.cache_dir)):
        if value:
            overrides[key] = value
    cfg = Config().replace(**overrides)
    budget = f"epochs={cfg.optim.epochs}, batch_size={cfg.optim.batch_size}, shots={cfg.data.shots}"
    extra = {k: v for k, v in overrides.items() if k not in ("epochs", "batch_size", "shots")}
    print(f"Offline world check: backbone {cfg.backbone.backbone} ({cfg.backbone.pretrained}), generator version "
          f"{GENERATOR_VERSION}; budget {budget}" + (f"; also {extra}" if extra else "")
          + f"; seeds {','.join(map(str, seeds))}; datasets {', '.join(datasets)}"
          + (f"; class draw {args.draw} (base = blocks {' + '.join(args.draw)})" if args.draw != "AB" else ""),
          flush=True)

    experiment = Experiment(load_backbone(cfg.backbone), None if args.draw == "AB" else relabel_for(args.draw))
    rows: list[dict] = []
    start = time.perf_counter()
    for dataset in datasets:
        zero_shot = None
        for seed in seeds:
            for method in METHODS:
                job = cfg.replace(method=method, dataset=dataset, seed=seed)
                if method == "zeroshot" and zero_shot is not None:
                    result = zero_shot  # zero-shot does not depend on the few-shot seed: its test set is fixed
                else:
                    result = experiment.run(job, "final")
                    zero_shot = result if method == "zeroshot" else zero_shot
                rows.append(_row("final", method, dataset, seed, result))
            if not args.no_objective:
                for fold in range(N_FOLDS):
                    result = experiment.run(cfg.replace(method="coop", dataset=dataset, seed=seed), "search", fold=fold)
                    rows.append({**_row("search", "coop", dataset, seed, result), "fold": fold})
        print(f"  {dataset}: done ({time.perf_counter() - start:.0f} s so far)", flush=True)
    if args.json:
        from dualprompt.storage import write_bytes_atomically

        record = {"overrides": {k: str(v) for k, v in overrides.items()}, "seeds": seeds, "datasets": datasets,
                  "rows": rows}
        write_bytes_atomically(json.dumps(record, indent=1).encode(), str(args.json))
    criteria = report(rows, datasets, seeds, method_labels(cfg.method.kg_weight))
    failed = [c for c in criteria if not c.passed]
    print(f"\n{len(criteria) - len(failed)} of {len(criteria)} criteria pass"
          + (" (smoke budget: not expected to pass)" if args.smoke else "") + ".")
    return 0 if args.smoke or not failed else 1


def _row(stage: str, method: str, dataset: str, seed: int, result) -> dict:
    return {"stage": stage, "method": method, "dataset": dataset, "seed": seed, **result.metrics,
            **result.standard_errors,
            "steps": result.steps, "train_s": round(result.train_s, 3), "eval_s": round(result.eval_s, 3),
            "feature_s": round(result.feature_s, 3), "n_train_images": result.n_train_images,
            "n_train_classes": result.n_train_classes}


def report(rows: list[dict], datasets: tuple[str, ...], seeds: tuple[int, ...],
           labels: dict[str, str]) -> list[Criterion]:
    """Print the tables and the criteria; return the criteria."""
    final = {(r["method"], r["dataset"], r["seed"]): r for r in rows if r["stage"] == "final"}
    print("\nTest accuracy (percent), mean ± std over seeds; base and new are separate closed-set problems.\n")
    w = max(18, *map(len, labels.values()))  # the method column, wider only for a long KgCoOp weight
    print(f"| {'dataset':<20} | {'method':<{w}} | {'base':>11} | {'new':>11} | {'HM':>11} |")
    print(f"|{'-' * 22}|{'-' * (w + 2)}|{'-' * 13}|{'-' * 13}|{'-' * 13}|")
    for dataset in datasets:
        for method in METHODS:
            cells = [[final[method, dataset, s][key] for s in seeds] for key in METRIC_COLUMNS.values()]
            print(f"| {dataset:<20} | {labels[method]:<{w}} | " + " | ".join(fmt(c) for c in cells) + " |")
    average: dict[str, dict[str, list[float]]] = {}
    for method in METHODS:
        base = [statistics.fmean(final[method, d, s]["acc_test_base"] for d in datasets) for s in seeds]
        new = [statistics.fmean(final[method, d, s]["acc_test_new"] for d in datasets) for s in seeds]
        hm = [harmonic_mean(b, n) for b, n in zip(base, new, strict=True)]
        average[method] = {"base": base, "new": new, "hm": hm}
    print(f"\nAverage over {len(datasets)} datasets (per seed: HM of the averaged base and new), "
          f"mean ± std over {len(seeds)} seeds:\n")
    print(f"| {'method':<{w}} | {'base':>11} | {'new':>11} | {'HM':>11} |")
    print(f"|{'-' * (w + 2)}|{'-' * 13}|{'-' * 13}|{'-' * 13}|")
    for method in METHODS:
        print(f"| {labels[method]:<{w}} | " + " | ".join(fmt(average[method][k]) for k in ("base", "new", "hm")) + " |")

    def paired(a: list[float], b: list[float]) -> tuple[float, float]:
        return mean_std([x - y for x, y in zip(a, b, strict=True)])

    criteria = [Criterion(name, *paired(average[a][metric], average[b][metric]), threshold, True)
                for name, a, b, metric, threshold in REGIME]
    for method in METHODS:
        std = mean_std(average[method]["hm"])[1]
        criteria.append(Criterion(f"seed std of {labels[method]} Average HM", std, float("nan"), 1.0, False))
    search = [r for r in rows if r["stage"] == "search"]
    if search:
        criteria.append(_objective_criterion(search, datasets, seeds))
    print("\nCriteria of the field's regime (Average row, paired by seed; value ± std over seeds):\n")
    for c in criteria:
        value = f"{c.value:6.2f}" + (f" ± {c.spread:4.2f}" if not math.isnan(c.spread) else "       ")
        sign = ">=" if c.higher_is_better else "<="
        note = ", needs 2 seeds or more" if math.isnan(c.value) else ""
        print(f"  {c.status}  {c.name:<74} {value}  (needs {sign} {c.threshold:g}{note})")
    print("\nPer dataset, mean over seeds (information, not criteria: an Average can pass on one dataset's effect):\n")
    for name, threshold, values in per_dataset_regime(final, datasets, seeds):
        reached = sum(value >= threshold for value in values.values())
        print(f"  {name} >= {threshold:g} on {reached} of {len(values)}: "
              + ", ".join(f"{d.removeprefix('synthetic_')} {v:+.1f}" for d, v in values.items()))
    _print_costs(rows, labels, w)
    return criteria


def per_dataset_regime(final: dict, datasets: tuple[str, ...], seeds: tuple[int, ...],
                       ) -> list[tuple[str, float, dict[str, float]]]:
    """Each effect of `REGIME` on each dataset alone: (name, threshold, {dataset: mean over seeds of a - b}),
    from `final[method, dataset, seed]` rows (a dataset's HM is the HM of its own base and new)."""
    out = []
    for name, a, b, metric, threshold in REGIME:
        column = METRIC_COLUMNS[metric]
        values = {d: statistics.fmean(final[a, d, s][column] - final[b, d, s][column] for s in seeds)
                  for d in datasets}
        out.append((name, threshold, values))
    return out


def _objective_criterion(search: list[dict], datasets: tuple[str, ...], seeds: tuple[int, ...]) -> Criterion:
    """Binomial SE of one search trial's objective, the mean of HM over its (dataset, fold, search seed) jobs
    with the sweep's offline default search seeds (k of them): `evaluate.mean_se` of the jobs' `hm_val_se`,
    as a sweep's report computes it. Every k of the check's seeds make one trial: mean +- std over those."""
    job_ses = {seed: [r["hm_val_se"] for r in search if r["seed"] == seed] for seed in seeds}
    k = min(len(SEARCH_SEEDS_OFFLINE), len(seeds))
    per_trial = [mean_se([se for seed in trial for se in job_ses[seed]]) for trial in itertools.combinations(seeds, k)]
    mean, std = mean_std(per_trial)
    return Criterion(f"SE of one search trial's objective ({len(datasets)} datasets x {N_FOLDS} folds x {k} "
                     "seeds, CoOp)", mean, std, 1.0, False, "HM points")


def _print_costs(rows: list[dict], labels: dict[str, str], width: int) -> None:
    """Steps/s and seconds per job, and what the default sweep's jobs cost at this budget."""
    print("\nCost per job (this machine, these threads; train = the training loop only):\n")
    per: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["steps"]:
            per.setdefault((r["stage"], r["method"]), []).append(r)
    for (stage, method), jobs in per.items():
        train_s = statistics.fmean(r["train_s"] for r in jobs)
        steps = statistics.fmean(r["steps"] for r in jobs)
        eval_s = statistics.fmean(r["eval_s"] for r in jobs)
        print(f"  {stage:<6} {labels[method]:<{width}} {steps:5.0f} steps, {train_s:6.2f} s training "
              f"({steps / train_s:5.1f} steps/s), {eval_s:5.2f} s eval, {len(jobs)} jobs")
    search = per.get(("search", "coop"))
    final = per.get(("final", "coop"), []) + per.get(("final", "kgcoop"), [])
    if search and final:
        job_s = lambda jobs: statistics.fmean(r["train_s"] + r["eval_s"] for r in jobs)  # noqa: E731
        total = SWEEP_SEARCH_JOBS * job_s(search) + SWEEP_FINAL_TRAINED_JOBS * job_s(final)
        print(f"\n  The default 64-sample sweep's jobs at this budget ({SWEEP_SEARCH_JOBS} search jobs, about "
              f"{SWEEP_FINAL_TRAINED_JOBS} trained final jobs), trained one at a time: {total / 60:.0f} CPU-minutes "
              f"of training and evaluation, {total / 120:.0f} minutes on 2 cores (no start-up, features or Ray "
              "overhead; a sweep trains a seed's jobs together, which takes a search trial about half as long).")


if __name__ == "__main__":
    sys.exit(main())
