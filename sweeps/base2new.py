"""Base-to-new sweep: leak-free Optuna search of the dual-prompt method, then a final stage against baselines.

    python sweeps/base2new.py --num-samples 64          # offline world, 2-core laptop (see README timing)
    python sweeps/base2new.py --num-samples 8           # the quick demo
    python sweeps/base2new.py --smoke                   # 2 trials, tiny budget: checks the whole pipeline
    python sweeps/base2new.py --data-root ~/data --backbone ViT-B-16 --pretrained openai \
        --gpus-per-trial 1 --address auto --storage-path s3://bucket/sweeps --num-samples 64

Stage "search": each trial is one configuration drawn by multivariate TPE (the defaults first), trained on
the pseudo-base part of every dataset's base classes for the search seeds, scored by the HM of
pseudo-base and pseudo-new validation accuracy averaged over its jobs. True new classes are never seen.
Stage "final": the best configuration and the baselines (zero-shot CLIP, CoOp, KgCoOp), each trained on all
base classes for every dataset and seed, tested on base and new.

Writes one Parquet file per trial to results/base2new/<name>/ (or --storage-path/<name>/); rerunning the
same command (same --name) resumes an interrupted sweep. Bad input exits with code 2 before Ray starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualprompt.backbone import validate_backbone_name
from dualprompt.cluster import StorageError
from dualprompt.config import Config, ConfigError, parse_assignment, parse_value
from dualprompt.data.catalogue import REAL_DATASETS, default_data_root, get_spec
from dualprompt.data.check import check_dataset
from dualprompt.data.errors import DataError
from dualprompt.data.synthetic import SYNTHETIC_SPECS
from dualprompt.results import ResultsError, check_writable, list_result_files, open_storage

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = REPO / "results" / "base2new"

# Training defaults of the offline world (tiny CLIP, synthetic datasets); real backbones use Config's.
OFFLINE_DEFAULTS: dict[str, Any] = {"epochs": 20}
OFFLINE_BACKBONE = "tiny-synthetic"

# The search space: parameter -> (low, high, scale). Change a range with --bound name=low:high.
SEARCH_SPACE: dict[str, tuple[float, float, str]] = {
    "n_ctx": (2, 16, "int"),
    "mi_weight": (0.05, 10.0, "log"),
    "mi_temperature": (0.01, 1.0, "log"),
    "aug_strength": (0.1, 2.0, "linear"),
    "aug_weight": (0.1, 4.0, "log"),
}
SEARCH_CHOICES: dict[str, tuple[str, ...]] = {"aug_variant": ("mix", "virtual")}
SEARCH_SEEDS = (1,)  # few-shot seeds of the search stage; the final stage uses --seeds
FINAL_SEEDS = (1, 2, 3)
BASELINES = ("zeroshot", "coop", "kgcoop")
SWEEP_KEYS = ("dataset", "seed", "method")  # set by the sweep itself, never by --set
LOCAL_KEYS = (*SWEEP_KEYS, "data_root", "cache_dir")  # may differ between machines resuming one sweep
SMOKE = {"num_samples": 2, "datasets": ("synthetic_blurry",), "seeds": (1,),
         "config": {"epochs": 2, "warmup_epochs": 0, "shots": 4, "n_views": 2}}


def define_space(trial: Any, bounds: dict[str, tuple[float, float, str]], choices: dict[str, tuple]) -> None:
    """Optuna define-by-run space: only suggest_* calls (Ray's OptunaSearch calls it on the driver)."""
    for name, (low, high, scale) in bounds.items():
        if scale == "int":
            trial.suggest_int(name, int(low), int(high))
        else:
            trial.suggest_float(name, low, high, log=scale == "log")
    for name, options in choices.items():
        trial.suggest_categorical(name, list(options))


class UsageError(Exception):
    """Bad command-line input; printed as one sentence, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UsageError(f"{message[0].upper()}{message[1:]} (see --help).")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="base2new.py", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--num-samples", type=int, help="number of search trials (configurations); default 64")
    add("--datasets", help="comma-separated datasets; default: every real dataset ready under --data-root, "
        "else the offline world's synthetic ones")
    add("--seeds", help="comma-separated few-shot seeds of the final stage; default 1,2,3")
    add("--search-seeds", help="comma-separated few-shot seeds of each search trial; default 1")
    add("--data-root", help="folder holding the datasets; default $DUALPROMPT_DATA_ROOT or ~/.cache/dualprompt/data")
    add("--backbone", help=f"open_clip model name; default {OFFLINE_BACKBONE} (the offline world's tiny CLIP)")
    add("--pretrained", help="open_clip pretrained tag or checkpoint file; default: the backbone's own weights")
    add("--name", help="sweep name (results/base2new/<name>/); default derived from the settings; "
        "the same name resumes")
    add("--storage-path", help="folder or URI (s3://...) for results and Ray state; default results/base2new")
    add("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial, fractions allowed; default 0 (CPU)")
    add("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial; each job runs "
        "data-parallel on all of them (classes split, context gradient summed)")
    add("--cpus-per-worker", type=float, help="CPUs per Train worker; default: the machine's CPUs shared out")
    add("--max-concurrent", type=int, help="trials running at once; default: what the CPUs or GPUs allow")
    add("--epochs", type=int, help="training epochs per job (overrides the defaults and --set epochs)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, "
        "e.g. --set lr=0.004 (repeatable; a searched field set here is fixed, no longer searched)")
    add("--bound", action="append", default=[], metavar="KEY=LOW:HIGH", help="change a search range, "
        f"e.g. --bound n_ctx=4:8 (searched: {', '.join([*SEARCH_SPACE, *SEARCH_CHOICES])})")
    add("--stage", choices=("search", "final", "all"), default="all", help="which stage(s) to run; default all")
    add("--sampler-seed", type=int, default=0, help="seed of Optuna's TPE sampler; default 0")
    add("--address", default=os.environ.get("RAY_ADDRESS") or "local",
        help="Ray cluster to join (e.g. auto on a cluster head); default: start a private local Ray")
    add("--smoke", action="store_true", help="tiny budget (2 trials, 1 dataset, 1 seed, 2 epochs) to check "
        "the pipeline in a couple of minutes")
    return p


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, e.g. 1,2,3; got {text!r}.") from None
    if not values or len(set(values)) != len(values):
        raise UsageError(f"{flag} needs at least one seed and no repeats; got {text!r}.")
    return values


def _overrides(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    flat: dict[str, Any] = dict(OFFLINE_DEFAULTS) if backbone == OFFLINE_BACKBONE else {}
    if args.smoke:
        flat.update(SMOKE["config"])
    for item in args.set:
        key, value = parse_assignment(item)
        if key in SWEEP_KEYS:
            raise UsageError(f"--set {key} is not allowed: the sweep sets {key} itself (use --datasets, "
                             "--seeds; the method is dualprompt in search, plus the baselines in final).")
        flat[key] = value
    if args.epochs is not None:
        flat["epochs"] = args.epochs
    flat["backbone"] = backbone
    if args.pretrained:
        flat["pretrained"] = args.pretrained
    elif backbone != OFFLINE_BACKBONE:
        raise UsageError(f"--pretrained is needed with --backbone {backbone}, e.g. --pretrained openai.")
    return flat


def _bounds(items: list[str], fixed: dict[str, Any]) -> dict[str, tuple[float, float, str]]:
    bounds = dict(SEARCH_SPACE)
    for item in items:
        key, sep, text = item.partition("=")
        low_text, colon, high_text = text.partition(":")
        if not sep or not colon:
            raise UsageError(f"--bound takes KEY=LOW:HIGH, e.g. --bound n_ctx=4:8; got {item!r}.")
        if key not in SEARCH_SPACE:
            raise UsageError(f"--bound {key}: not a searched parameter; searched: {', '.join(SEARCH_SPACE)}.")
        scale = SEARCH_SPACE[key][2]
        try:
            low, high = (parse_value(key, t) for t in (low_text, high_text))
            Config().replace(**{key: low}), Config().replace(**{key: high})
        except ConfigError as error:
            raise UsageError(f"--bound {key}={text} is out of range: {error}") from None
        if not low < high or (scale == "log" and low <= 0):
            positive = " and LOW > 0 (log scale)" if scale == "log" else ""
            raise UsageError(f"--bound {key}={text} needs LOW < HIGH{positive}.")
        bounds[key] = (low, high, scale)
    return {k: v for k, v in bounds.items() if k not in fixed}


def _datasets(args: argparse.Namespace, data_root: Path) -> tuple[str, ...]:
    if args.datasets:
        names = tuple(n.strip() for n in args.datasets.split(",") if n.strip())
        if not names or len(set(names)) != len(names):
            raise UsageError(f"--datasets needs comma-separated names without repeats; got {args.datasets!r}.")
        for name in names:
            spec = get_spec(name)
            if spec.test_only:
                raise UsageError(f"{name} is a test-only dataset and cannot be split into base and new classes.")
            if not spec.synthetic:
                result = check_dataset(name, data_root)
                if not result.ok:
                    raise UsageError(f"Dataset {name} is not usable under {data_root}: {result.status}, "
                                     f"{result.detail}; fix it or pass the right --data-root.")
        return names
    if args.smoke:
        return SMOKE["datasets"]
    present = [n for n, s in REAL_DATASETS.items() if not s.test_only and (data_root / s.folder).is_dir()]
    ready = tuple(n for n in present if check_dataset(n, data_root).ok)
    if not ready and args.data_root:
        raise UsageError(f"--data-root {data_root} holds no ready base-to-new dataset (see python -m dualprompt.data "
                         "check); fix it, or name datasets with --datasets.")
    return ready or tuple(SYNTHETIC_SPECS)


def _changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs from the settings a sweep was started with. Config fields are compared where both have
    them, so a code update that adds a field (with a default) does not block resuming."""
    changed = [k for k, v in now.items() if k != "config" and saved.get(k) != v]
    old, new = saved.get("config", {}), now["config"]
    return changed + [f"{k} (config)" for k in sorted(set(old) & set(new)) if old[k] != new[k]]


@dataclass(frozen=True)
class Plan:
    """A validated command line: what to run, where, and the settings a resumed sweep must keep."""

    args: argparse.Namespace
    name: str
    storage: str
    base: Config  # every job's configuration before the sweep sets method, dataset, seed and searched fields
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    search_seeds: tuple[int, ...]
    num_samples: int
    bounds: dict[str, tuple[float, float, str]]
    choices: dict[str, tuple[str, ...]]
    defaults: dict[str, Any]  # the first search point
    settings: dict[str, Any]

    @property
    def rows_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"


def plan(argv: list[str]) -> Plan:
    """Parse and validate the command line; raise UsageError (or ConfigError/DataError) on bad input."""
    args = build_parser().parse_args(argv)
    num_samples = args.num_samples if args.num_samples is not None else (SMOKE["num_samples"] if args.smoke else 64)
    if num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1; got {num_samples}.")
    if args.workers_per_trial < 1:
        raise UsageError(f"--workers-per-trial must be at least 1; got {args.workers_per_trial}.")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1; got {args.max_concurrent}.")
    if args.gpus_per_trial < 0 or (args.cpus_per_worker is not None and args.cpus_per_worker <= 0):
        raise UsageError("--gpus-per-trial must be >= 0 and --cpus-per-worker > 0.")
    backbone = args.backbone or OFFLINE_BACKBONE
    overrides = _overrides(args, backbone)
    data_root = Path(args.data_root or overrides.get("data_root") or default_data_root()).expanduser().absolute()
    if args.data_root and not data_root.is_dir():
        raise UsageError(f"--data-root {data_root} is not a folder; create it or pass the folder holding the datasets.")
    overrides["data_root"] = str(data_root)
    if not overrides.get("cache_dir"):
        from dualprompt.features import default_cache_dir

        overrides["cache_dir"] = str(default_cache_dir().expanduser().absolute())
    base = Config().replace(**overrides)  # validates every value and cross-field rule
    fixed = {k: v for k, v in overrides.items() if k in SEARCH_SPACE or k in SEARCH_CHOICES}
    bounds = _bounds(args.bound, fixed)
    choices = {k: v for k, v in SEARCH_CHOICES.items() if k not in fixed}
    flat = base.to_flat()
    defaults = {k: min(max(flat[k], low), high) for k, (low, high, _) in bounds.items()}
    defaults.update({k: flat[k] for k in choices})
    datasets = _datasets(args, data_root)
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else (SMOKE["seeds"] if args.smoke else FINAL_SEEDS)
    search_seeds = _int_list(args.search_seeds, "--search-seeds") if args.search_seeds else SEARCH_SEEDS
    validate_backbone_name(base.backbone)
    settings = {"datasets": list(datasets), "seeds": list(seeds), "search_seeds": list(search_seeds),
                "num_samples": num_samples, "config": {k: v for k, v in flat.items() if k not in LOCAL_KEYS},
                "bounds": {k: list(v) for k, v in bounds.items()}, "choices": {k: list(v) for k, v in choices.items()},
                "sampler_seed": args.sampler_seed}
    # Named from what was asked for (not from every Config default), so the same command keeps its name.
    asked = {**settings, "config": {k: v for k, v in overrides.items() if k not in LOCAL_KEYS}}
    digest = hashlib.sha1(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:8]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone)
    name = args.name or f"{'smoke-' if args.smoke else ''}{tag}-{len(datasets)}ds-n{num_samples}-{digest}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"--name {name!r} may hold only letters, digits, '-', '_' and '.'.")
    storage = args.storage_path or str(DEFAULT_STORAGE)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().absolute())
    return Plan(args, name, storage, base, datasets, seeds, search_seeds, num_samples, bounds, choices, defaults,
                settings)


def check_storage(p: Plan) -> None:
    """Writable storage; a resumed sweep keeps its settings; the final stage alone needs search rows."""
    rows_dir = p.rows_dir
    check_writable(rows_dir)
    import pyarrow.fs as pafs

    fs, root = open_storage(rows_dir)
    if p.args.stage == "final" and not any(os.path.basename(f).startswith("search-")
                                              for f in list_result_files(rows_dir)):
        raise UsageError(f"--stage final needs the search rows of sweep {p.name!r} in {rows_dir}; "
                         "run --stage search (or all) first.")
    settings_path = f"{root}/_ray/sweep.json"
    if fs.get_file_info(settings_path).type == pafs.FileType.File:
        with fs.open_input_stream(settings_path) as stream:
            saved = json.loads(stream.read())
        changed = _changed_settings(saved, p.settings)
        if changed:
            raise UsageError(f"Sweep {p.name!r} in {rows_dir} was started with different {', '.join(changed)}; "
                             "rerun it with its original settings to resume, or pick a new --name.")
    else:
        fs.create_dir(f"{root}/_ray", recursive=True)
        with fs.open_output_stream(settings_path) as stream:
            stream.write(json.dumps(p.settings, indent=1, sort_keys=True).encode())


def resources(p: Plan) -> tuple[float, int]:
    """(CPUs per worker, concurrent trials); on a local machine also checks that asked-for GPUs exist."""
    args, cpus = p.args, os.cpu_count() or 1
    workers, gpus = args.workers_per_trial, args.gpus_per_trial
    if gpus > 0 and workers > 1 and gpus / workers < 1:
        raise UsageError(f"--gpus-per-trial {gpus:g} over {workers} workers gives each a fraction of a GPU, "
                         "which NCCL rejects; give each worker a whole GPU or use --workers-per-trial 1.")
    if args.address != "local":
        return args.cpus_per_worker or 1.0, args.max_concurrent or 4
    if gpus > 0:
        import torch

        available = torch.cuda.device_count()
        if available == 0:
            raise UsageError(f"--gpus-per-trial {gpus:g} asks for GPUs but this machine has none; "
                             "pass --gpus-per-trial 0 or --address of a cluster with GPUs.")
        if gpus > available:
            raise UsageError(f"--gpus-per-trial {gpus:g} is more than the {available} GPU(s) of this machine.")
        concurrent = args.max_concurrent or max(1, int(available // gpus))
    else:
        concurrent = args.max_concurrent or max(1, cpus // workers)
    per_worker = args.cpus_per_worker or max(1.0, float(cpus // (concurrent * workers)))
    if per_worker * workers > cpus:
        raise UsageError(f"A trial needs {per_worker * workers:g} CPUs but this machine has {cpus}; "
                         "lower --workers-per-trial or --cpus-per-worker.")
    return per_worker, concurrent


def check_cluster_gpus(address: str, gpus: float) -> None:
    """On a cluster, refuse GPU trials when it has no GPU at all (after joining it; nothing is started)."""
    import ray

    if gpus > 0 and address != "local" and not ray.cluster_resources().get("GPU"):
        from dualprompt.cluster import autoscaler_can_add

        if autoscaler_can_add("GPU"):  # a `ray up` cluster whose GPU nodes scale up from zero
            print("No GPU node is up yet: the autoscaler adds GPU nodes as trials wait for them "
                  "(a few minutes).", flush=True)
            return
        raise UsageError(f"--gpus-per-trial {gpus:g} asks for GPUs but the Ray cluster at {address} has none "
                         "(GPU nodes must be up; set min_workers >= 1 for them), or pass --gpus-per-trial 0.")


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, also through a pipe
    try:
        p = plan(sys.argv[1:] if argv is None else argv)
        cpus_per_worker, concurrent = resources(p)
        check_storage(p)
    except (UsageError, ConfigError, DataError, ResultsError) as error:
        print(f"base2new.py: error: {error}", file=sys.stderr)
        return 2
    from functools import partial

    from dualprompt.sweep import SweepSpec, check_storage_reachable, init_ray, run_sweep

    args = p.args
    spec = SweepSpec(
        name=p.name, storage=p.storage,
        stages=("search", "final") if args.stage == "all" else (args.stage,),
        base_config={k: v for k, v in p.base.to_flat().items() if k not in ("dataset", "seed")},
        datasets=p.datasets, seeds=p.seeds, search_seeds=p.search_seeds, num_samples=p.num_samples,
        space=partial(define_space, bounds=p.bounds, choices=p.choices), defaults=p.defaults,
        baselines=BASELINES, sampler_seed=args.sampler_seed, gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=args.workers_per_trial, cpus_per_worker=cpus_per_worker, max_concurrent=concurrent,
        address=args.address,
    )
    jobs = len(spec.datasets) * len(spec.search_seeds)
    print(f"Sweep {spec.name}: {spec.num_samples} search trials x {jobs} job(s), then "
          f"{1 + len(BASELINES)} final trials x {len(spec.datasets) * len(spec.seeds)} job(s); "
          f"datasets {','.join(spec.datasets)}; up to {concurrent} trial(s) at once; rows in {spec.rows_dir}",
          flush=True)
    try:
        init_ray(spec)
        check_cluster_gpus(args.address, args.gpus_per_trial)
        check_storage_reachable(spec.rows_dir, args.address)
    except (UsageError, StorageError) as error:
        print(f"base2new.py: error: {error}", file=sys.stderr)
        return 2
    return run_sweep(spec)


if __name__ == "__main__":
    sys.exit(main())
