"""`python -m dualprompt.bench --jobs-together`: a search trial's jobs trained one after another, then together.

A search trial of the offline default is ten small jobs (five datasets x two class folds, 9 classes each);
one text pass per step for all of them (`Experiment.run_jointly`) pays the per-op cost of a pass once
instead of once per job. Both ways run the very same jobs (same configuration, seeds, cached features, a
warm-up first so that neither pays the feature extraction), alternated over the repeats; the objective of
each way is printed next to the other, since they may differ by float round-off only.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ..backbone import load_backbone
from ..config import Config
from ..data.synthetic import OFFLINE_TRAINING
from ..experiment import Experiment, JobRequest
from ..protocols import get_protocol
from ..world.draws import N_FOLDS


def search_requests(args: argparse.Namespace) -> list[JobRequest]:
    """The search stage's jobs of one trial: the base-to-new offline datasets x both folds x the seeds."""
    cfg = Config().replace(backbone=args.backbone, pretrained=args.pretrained, n_ctx=args.n_ctx,
                           method=args.method, **OFFLINE_TRAINING)
    if args.data_root:
        cfg = cfg.replace(data_root=args.data_root)
    if args.smoke:
        cfg = cfg.replace(epochs=2, warmup_epochs=0, shots=4, n_views=2)
    datasets = get_protocol("base2new").default_offline_datasets[: 1 if args.smoke else None]
    return [JobRequest(cfg.replace(dataset=dataset, seed=seed), "search", "base2new", fold)
            for seed in range(1, args.trial_seeds + 1) for dataset in datasets for fold in range(N_FOLDS)]


def run_jobs_together(args: argparse.Namespace) -> dict:
    """Seconds for the trial's jobs one after another and together (median, min, max over the repeats),
    and each way's mean objective."""
    requests = search_requests(args)
    experiment = Experiment(load_backbone(requests[0].cfg.backbone, args.device))
    for request in requests:  # warm-up: the features of every job are cached before either way is timed
        experiment.prepare(request)
    seconds: dict[str, list[float]] = {"one after another": [], "together": []}
    objectives: dict[str, float] = {}
    for _ in range(args.repeats):
        for way in seconds:  # alternated, so a load change on a shared machine hits both alike
            start = time.perf_counter()
            if way == "together":
                results = experiment.run_jointly(requests)
            else:
                results = [experiment.run(**vars(request)) for request in requests]
            seconds[way].append(time.perf_counter() - start)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise failed[0]
            objectives[way] = statistics.fmean(r.metrics["hm_val"] for r in results)
    return {"jobs": len(requests), "seconds": seconds, "objectives": objectives}


def print_jobs_together(result: dict, args: argparse.Namespace) -> None:
    print(f"\n{result['jobs']} search jobs of one trial ({args.trial_seeds} seed(s) x the offline datasets x "
          f"{N_FOLDS} folds), n_ctx {args.n_ctx}, method {args.method}; {args.repeats} run(s) of each way\n")
    for way, values in result["seconds"].items():
        spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
        print(f"  {way:<20} {statistics.median(values):7.1f} s{spread:<14}  mean objective "
              f"{result['objectives'][way]:.2f}")
    one, together = (statistics.median(v) for v in result["seconds"].values())
    print(f"  together is x{one / together:.2f} faster")
